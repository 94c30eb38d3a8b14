"""The fit loop: demonstrations -> normalised windows -> a method trained with AdamW and EMA.

One :class:`TrainConfig` (read from YAML with :func:`load_train_config`) describes a run. The
loop is deterministic given the seed: parameters are initialised from ``seed``, batches follow a
fixed permutation per epoch, and the loss's randomness comes from one generator per rank whose
state travels in every checkpoint with the optimiser, scheduler, EMA and global RNG states. A
run killed at any point and resumed from ``<out_dir>/checkpoint.pt`` therefore ends with
exactly the weights of an uninterrupted run (on CPU, tested; on CUDA cuDNN is asked for
deterministic algorithms, :func:`deterministic_backends`).

Files in ``out_dir`` (written by rank 0 only, each atomically): ``train_config.yaml``,
``metrics.csv`` (step, loss, lr, wall time, evaluation results), ``checkpoint.pt`` (latest,
for ``--resume``) and ``final.pt`` (whose ``state_dict`` holds the EMA weights).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
import functools
import io
import math
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm
import yaml

from energyflow_ros.core.config import (
    ChunkSpec, ConfigError, config_from_dict, config_to_dict,
)
from energyflow_ros.core.methods import BackboneConfig, build_method, Method, METHODS
from energyflow_ros.core.networks import count_parameters
from energyflow_ros.data.align import summarize
from energyflow_ros.data.dataset import DemoSet
from energyflow_ros.training.checkpoint import save_checkpoint, set_action_limits
from energyflow_ros.training.data_source import (
    BatchOrder, DataConfig, prepare_data, read_demos, TRAIN_META_KEYS, TrainingData,
)
from energyflow_ros.training.distributed import (
    all_reduce_gradients, broadcast_module, DEVICES, DistContext, gather_rng_state,
    init_distributed, restore_rng_state, shutdown,
)
from energyflow_ros.training.ema import ExponentialMovingAverage
from energyflow_ros.training.policy import ChunkPolicy, evaluate_chunk_policy

__all__ = [
    'TrainError', 'OptimConfig', 'EvalConfig', 'TrainConfig', 'TRAIN_META_KEYS',
    'load_train_config', 'apply_overrides', 'lr_factor', 'TrainingData', 'prepare_data',
    'BatchOrder', 'build_training_method', 'deterministic_backends', 'Trainer', 'TrainResult',
    'train',
]

# Fields that may change between a run and its resumption (they do not affect the weights).
RESUMABLE_CHANGES = ('eval', 'progress', 'device', 'checkpoint_every', 'log_every', 'out_dir')
# What a checkpoint written by Trainer.save holds besides the weights (checked on resume).
RESUME_KEYS = ('state_dict', 'ema_state_dict', 'ema_updates', 'optimizer', 'scheduler', 'step',
               'batch_order', 'rng', 'train_config', 'metrics', 'running_metrics', 'elapsed_s',
               'train_meta')
# The same inside ``method_config``, as (method, section, field): how EnergyFlow samples (its
# flow settings only drive the sampler, never the loss).
RESUMABLE_METHOD_CHANGES = (('energyflow', 'flow', 'warm_start_t'),
                            ('energyflow', 'flow', 'warm_steps'),
                            ('energyflow', 'flow', 'n_particles'),
                            ('energyflow', 'flow', 'n_steps'),
                            ('energyflow', 'flow', 'clamp'))


def _weight_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config dictionary without the fields a resumed run may change."""
    out = {k: v for k, v in cfg.items() if k not in RESUMABLE_CHANGES}
    methods = {m: dict(v) if isinstance(v, dict) else v
               for m, v in (out.get('method_config') or {}).items()}
    for method, section, name in RESUMABLE_METHOD_CHANGES:
        part = methods.get(method)
        if isinstance(part, dict) and isinstance(part.get(section), dict):
            part[section] = {k: v for k, v in part[section].items() if k != name}
    # an empty section or method entry reads as absent (a section of only resumable fields)
    for method, part in list(methods.items()):
        if isinstance(part, dict):
            part = {k: v for k, v in part.items() if v != {}}
            methods[method] = part
        if part == {}:
            del methods[method]
    out['method_config'] = methods
    return out


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the fields added since it was written at their defaults
    (``backbone.mlp.energy_head``, say), so that a run from before them still resumes; as
    written when it no longer parses (it is then compared as it is)."""
    try:
        return config_to_dict(config_from_dict(TrainConfig, saved, 'config'))
    except ConfigError:
        return saved


def _eval_results_differ(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether two configs' final evaluations would differ (not only in when they run)."""
    def settings(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (cfg.get('eval') or {}).items() if k not in ('every', 'final')}
    return settings(saved) != settings(now)


class TrainError(RuntimeError):
    """A run that cannot start or continue, with the reason."""


class _YAMLLoader(yaml.SafeLoader):
    """Safe YAML that also reads ``1e-3`` as a float (YAML 1.2), as users write learning rates."""


_YAMLLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+'
               r'|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$'),
    list('-+0123456789.'))


def _check(ok: bool, owner: str, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f'{owner}.{name} = {value!r} is invalid: expected {allowed}')


def _is_int(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        batch_size: global batch (split evenly over the ranks of a distributed run).
        steps: optimiser steps of the whole run.
        warmup_steps: steps of linear warm-up from lr / warmup_steps to lr.
        min_lr_ratio: the cosine ends at lr * min_lr_ratio.
        grad_clip: clip the global gradient norm to this value; null disables clipping.
    """

    lr: float = 1e-4
    weight_decay: float = 1e-6
    batch_size: int = 256
    steps: int = 100_000
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        _check(_is_number(self.lr) and self.lr > 0, 'OptimConfig', 'lr', self.lr,
               'a finite positive number')
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, 'OptimConfig',
               'weight_decay', self.weight_decay, 'a finite number >= 0')
        for name in ('batch_size', 'steps'):
            _check(_is_int(getattr(self, name)), 'OptimConfig', name, getattr(self, name),
                   'a positive integer')
        _check(_is_int(self.warmup_steps, 0), 'OptimConfig', 'warmup_steps', self.warmup_steps,
               'an integer >= 0')
        _check(_is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, 'OptimConfig',
               'min_lr_ratio', self.min_lr_ratio, 'a number in [0, 1]')
        _check(self.grad_clip is None or (_is_number(self.grad_clip) and self.grad_clip > 0),
               'OptimConfig', 'grad_clip', self.grad_clip, 'a positive number or null')


@dataclass(frozen=True)
class EvalConfig:
    """Closed-loop rollouts of the EMA model in the task during and after training.

    Attributes:
        every: evaluate every this many steps; 0 disables periodic evaluation.
        final: evaluate once more after the last step.
        episodes: episodes per evaluation (episode i uses seed ``seed + i``).
        seed: first episode seed (far from the demonstration seeds by default).
        max_steps: per-episode tick limit below the task's; null keeps the task's.
        warm_start: replan from the previous chunk (see :class:`ChunkPolicy`).
    """

    every: int = 0
    final: bool = True
    episodes: int = 20
    seed: int = 100_000
    max_steps: int | None = None
    warm_start: bool = False

    def __post_init__(self) -> None:
        _check(_is_int(self.every, 0), 'EvalConfig', 'every', self.every, 'an integer >= 0')
        _check(isinstance(self.final, bool), 'EvalConfig', 'final', self.final, 'true or false')
        _check(_is_int(self.episodes), 'EvalConfig', 'episodes', self.episodes,
               'a positive integer')
        _check(_is_int(self.seed, 0), 'EvalConfig', 'seed', self.seed, 'an integer >= 0')
        _check(self.max_steps is None or _is_int(self.max_steps), 'EvalConfig', 'max_steps',
               self.max_steps, 'a positive integer or null')
        _check(isinstance(self.warm_start, bool), 'EvalConfig', 'warm_start', self.warm_start,
               'true or false')

    @property
    def enabled(self) -> bool:
        """True when the run evaluates at all."""
        return self.every > 0 or self.final


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Attributes:
        task: a registered benchmark task, or (with evaluation off) a name for the dataset.
        task_kwargs: constructor arguments of the task (expert collection and evaluation).
        data: where the demonstrations come from.
        n_obs: observation frames stacked into the policy input.
        horizon: actions per predicted chunk.
        executed_steps: actions executed from each chunk before replanning.
        method: one of ``energyflow``, ``rnce``, ``irnce``, ``ibc``, ``diffusion``, ``mse``.
        method_config: config fields per method name (each method's dataclass in
            ``core.methods``); the entry of ``method`` is used, so one file serves every
            method and ``method=ibc`` on the command line switches method.
        backbone: network family and size.
        optim: optimiser and schedule.
        ema_decay: decay of the weight average that is evaluated and exported.
        eval: closed-loop evaluation.
        checkpoint_every: steps between checkpoints (the most a kill can lose).
        log_every: steps between metrics rows.
        out_dir: folder of the checkpoints and metrics.
        seed: seed of the initialisation, the batch order and the loss noise.
        device: ``cpu``, ``cuda`` or ``auto``.
        progress: show a progress bar.
    """

    task: str = 'obstacles2d'
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    n_obs: int = 2
    horizon: int = 8
    executed_steps: int = 4
    method: str = 'rnce'
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float = 0.999
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint_every: int = 1000
    log_every: int = 50
    out_dir: str = 'outputs/train'
    seed: int = 0
    device: str = 'auto'
    progress: bool = True

    def __post_init__(self) -> None:
        from energyflow_ros.sim.registry import TASKS
        _check(isinstance(self.task, str) and bool(self.task), 'TrainConfig', 'task', self.task,
               'a task or dataset name')
        needs_sim = self.data.source == 'expert' or self.eval.enabled
        _check(self.task in TASKS or not needs_sim, 'TrainConfig', 'task', self.task,
               f'one of {sorted(TASKS)} (expert data and evaluation need a registered task; '
               'set eval.every: 0 and eval.final: false for other data)')
        _check(isinstance(self.task_kwargs, dict), 'TrainConfig', 'task_kwargs',
               self.task_kwargs, 'a mapping of task constructor arguments')
        for name in ('n_obs', 'horizon', 'executed_steps', 'checkpoint_every', 'log_every'):
            _check(_is_int(getattr(self, name)), 'TrainConfig', name, getattr(self, name),
                   'a positive integer')
        _check(self.executed_steps <= self.horizon, 'TrainConfig', 'executed_steps',
               self.executed_steps, f'at most horizon = {self.horizon}')
        _check(self.method in METHODS, 'TrainConfig', 'method', self.method,
               f'one of {sorted(METHODS)}')
        _check(isinstance(self.method_config, dict) and all(
            k in METHODS for k in self.method_config), 'TrainConfig', 'method_config',
            self.method_config, f'a mapping from method names {sorted(METHODS)} to fields')
        for name, fields in self.method_config.items():
            config_from_dict(METHODS[name].config_class, fields, f'config.method_config.{name}')
        if self.backbone.kind == 'unet' and self.method != 'mse':
            self.backbone.unet.check_horizon(self.horizon)
        _check(_is_number(self.ema_decay) and 0 <= self.ema_decay < 1, 'TrainConfig',
               'ema_decay', self.ema_decay, 'a number in [0, 1)')
        _check(isinstance(self.out_dir, str) and bool(self.out_dir), 'TrainConfig', 'out_dir',
               self.out_dir, 'a folder path')
        _check(_is_int(self.seed, 0), 'TrainConfig', 'seed', self.seed, 'an integer >= 0')
        _check(self.device in DEVICES, 'TrainConfig', 'device', self.device,
               f'one of {list(DEVICES)}')
        _check(isinstance(self.progress, bool), 'TrainConfig', 'progress', self.progress,
               'true or false')


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``key.sub=value`` entries (value parsed as YAML) in a nested config mapping.

    Raises:
        ConfigError: an override without ``=``, with an empty key, or below a non-mapping.
    """
    for item in overrides:
        key, sep, text = item.partition('=')
        parts = key.strip().split('.')
        if not sep or not all(parts):
            raise ConfigError(f'bad override {item!r}: expected key.sub=value')
        try:
            value = yaml.load(text, Loader=_YAMLLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f'bad override {item!r}: the value is not YAML ({exc})') from exc
        node = data
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'bad override {item!r}: {".".join(parts[:i + 1])} is not '
                                  'a mapping')
        node[parts[-1]] = value
    return data


def load_train_config(path: str | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a train config YAML (None: the defaults) and apply command-line overrides.

    Raises:
        ConfigError: an unreadable file, invalid YAML, an unknown field, a bad value.
    """
    data: Any = {}
    if path is not None:
        try:
            with open(path, encoding='utf-8') as stream:
                data = yaml.load(stream, Loader=_YAMLLoader)
        except OSError as exc:
            raise ConfigError(f'cannot read config {path}: {exc.strerror}') from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f'config {path} is not valid YAML: {exc}') from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f'config {path} must be a mapping of fields')
    return config_from_dict(TrainConfig, apply_overrides(data, overrides), 'config')


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _task_info(cfg: TrainConfig) -> Any:
    from energyflow_ros.sim.registry import task_info, TASKS
    if cfg.task not in TASKS:
        return None
    try:
        return task_info(cfg.task, **cfg.task_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f'task_kwargs {cfg.task_kwargs} rejected by task {cfg.task!r}: '
                          f'{exc}') from exc


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a kill leaves the old or the new."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w', newline='', encoding='utf-8') as handle:
        handle.write(text)
    os.replace(tmp, path)


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, out.getvalue())


def deterministic_backends(device: torch.device | str) -> None:
    """On CUDA, make cuDNN pick deterministic convolution algorithms and not benchmark them
    per shape: otherwise the U-Net's convolutions differ from run to run, and so do a seed's
    weights. (Not verified on a GPU here; CUDA ops with atomics can still vary.)"""
    if torch.device(device).type == 'cuda':
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def build_training_method(cfg: TrainConfig, data: TrainingData) -> Method:
    """The untrained method of ``cfg``, initialised from ``cfg.seed``, sized for ``data``.

    IBC's uniform negatives span the data's normalised action range plus a 5 % margin;
    EnergyFlow gets the actuators' limits its sampler may clamp particles to (``flow.clamp``).
    """
    torch.manual_seed(cfg.seed)
    spec = ChunkSpec(obs_dim=data.obs.shape[1], action_dim=data.chunks.shape[2],
                     horizon=cfg.horizon)
    method = build_method(cfg.method, spec, cfg.backbone, cfg.method_config.get(cfg.method))
    if hasattr(method, 'set_action_bounds'):
        flat = data.chunks.reshape(-1, spec.action_dim)
        low, high = flat.min(0).values, flat.max(0).values
        margin = 0.05 * (high - low)
        method.set_action_bounds(low - margin, high + margin)
    set_action_limits(method, data.meta, data.action_normalizer)
    return method


def _read_checkpoint(path: str, ctx: DistContext) -> dict[str, Any]:
    """The checkpoint to resume from; rank 0 first deletes what a killed write left behind."""
    folder = os.path.dirname(path) or '.'
    for name in os.listdir(folder) if ctx.is_main else ():
        if name.startswith('.ckpt-'):
            os.unlink(os.path.join(folder, name))
    try:
        payload = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise TrainError(f'{path}: not a readable checkpoint ({exc}); delete it to restart '
                         'or restore a copy') from exc
    missing = [k for k in RESUME_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise TrainError(f'{path}: not a trainer checkpoint to resume (it lacks {missing}); '
                         'delete it to restart or choose another out_dir')
    return payload


class Trainer:
    """One run's state: the method, its EMA, the optimiser, the batch order and the metrics.

    Attributes:
        cfg: the run's config.
        data: the training pairs.
        ctx: this process's place in a (possibly distributed) job.
        method: the model being trained.
        ema: its weight average (evaluated and saved as the final weights).
        step: optimiser steps done.
        metrics: one row per logged step (what ``metrics.csv`` holds).
    """

    def __init__(self, cfg: TrainConfig, data: TrainingData, ctx: DistContext,
                 metric_name: str = 'success', log: Callable[[str], None] = print) -> None:
        """Build the method, optimiser and schedule from ``cfg``, initialised from its seed.

        Args:
            cfg: the run.
            data: its training pairs.
            ctx: this process's place in the job.
            metric_name: the task's headline metric, printed after every evaluation.
            log: where evaluation lines go when there is no progress bar.
        """
        if cfg.optim.batch_size % ctx.world_size:
            raise ConfigError(f'OptimConfig.batch_size = {cfg.optim.batch_size} is invalid: '
                              f'expected a multiple of the {ctx.world_size} processes')
        self.cfg, self.data, self.ctx = cfg, data, ctx
        deterministic_backends(ctx.device)
        self.method = build_training_method(cfg, data).to(ctx.device)
        broadcast_module(self.method, ctx)
        self.optimizer = torch.optim.AdamW(self.method.parameters(), lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay)
        schedule = functools.partial(lr_factor, warmup=cfg.optim.warmup_steps,
                                     total=cfg.optim.steps, min_ratio=cfg.optim.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.ema = ExponentialMovingAverage(self.method, cfg.ema_decay)
        self.order = BatchOrder(len(data.obs), cfg.optim.batch_size, cfg.seed)
        self.generator = torch.Generator(ctx.device).manual_seed(cfg.seed * 7919 + ctx.rank)
        self.obs, self.chunks = data.obs.to(ctx.device), data.chunks.to(ctx.device)
        self.step, self.metrics, self.elapsed_s = 0, [], 0.0
        self._sums: dict[str, float] = {}
        self._count, self._lr = 0, cfg.optim.lr
        self.metric_name, self.log = metric_name, log
        # resumed with other sampler settings: final.pt must be written again with them
        self._stale_final = False
        # a finished run resumed with other evaluation or sampler settings: evaluate it again
        self._stale_eval = False

    def path(self, name: str) -> str:
        """A file in the run's output folder."""
        return os.path.join(self.cfg.out_dir, name)

    def train_step(self) -> dict[str, float]:
        """One optimiser step on this rank's shard of the next global batch."""
        idx = torch.as_tensor(self.order.next()[self.ctx.rank::self.ctx.world_size])
        idx = idx.to(self.ctx.device)
        self.method.train()
        loss, info = self.method.loss(self.obs[idx], self.chunks[idx], self.generator)
        if not torch.isfinite(loss):
            raise TrainError(f'the loss became {loss.item()} at step {self.step + 1}; lower '
                             'optim.lr or set optim.grad_clip')
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(self.method.parameters(), self.ctx)
        if self.cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
        self._lr = self.optimizer.param_groups[0]['lr']
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.method)
        self.step += 1
        for key, value in info.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._count += 1
        return info

    def evaluate(self) -> dict[str, Any]:
        """Closed-loop rollouts of the EMA model (see :func:`evaluate_chunk_policy`)."""
        cfg, data = self.cfg, self.data

        def make_policy(task: Any) -> ChunkPolicy:
            return ChunkPolicy(self.ema.model, data.obs_normalizer, data.action_normalizer,
                               cfg.n_obs, cfg.executed_steps, data.meta['action_low'],
                               data.meta['action_high'], warm_start=cfg.eval.warm_start,
                               seed=cfg.eval.seed, device=self.ctx.device)

        return evaluate_chunk_policy(cfg.task, make_policy, cfg.eval.episodes, cfg.eval.seed,
                                     cfg.eval.max_steps, cfg.task_kwargs)

    def _row(self, elapsed: float) -> dict[str, Any]:
        row: dict[str, Any] = {'step': self.step, 'epoch': self.order.epoch}
        row.update({k: v / max(self._count, 1) for k, v in self._sums.items()})
        row.update(lr=self._lr, wall_s=round(elapsed, 3))
        self._sums, self._count = {}, 0
        return row

    def extra(self, elapsed: float, gather: bool = True) -> dict[str, Any]:
        """Everything besides the weights that a checkpoint keeps (collective in DDP).

        ``gather=False`` keeps only this rank's generator state and is not collective.
        """
        rng_ctx = self.ctx if gather else replace(self.ctx, rank=0, world_size=1)
        return {
            'ema_state_dict': self.ema.state_dict(), 'ema_updates': self.ema.updates,
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'step': self.step, 'batch_order': self.order.state_dict(),
            'rng': gather_rng_state(rng_ctx, self.generator),
            'train_config': config_to_dict(self.cfg), 'metrics': list(self.metrics),
            'running_metrics': {'sums': dict(self._sums), 'count': self._count},
            'elapsed_s': elapsed, 'world_size': self.ctx.world_size,
            'train_meta': dict(self.data.meta), 'params': count_parameters(self.method),
        }

    def save(self, elapsed: float, final: bool = False) -> None:
        """Write ``checkpoint.pt`` (and ``final.pt`` with the EMA weights) from rank 0."""
        extra = self.extra(elapsed)
        if not self.ctx.is_main:
            return
        norms = (self.data.obs_normalizer, self.data.action_normalizer)
        save_checkpoint(self.path('checkpoint.pt'), self.method, *norms, extra)
        if final:
            self._save_final(extra)

    def _save_final(self, extra: dict[str, Any]) -> None:
        norms = (self.data.obs_normalizer, self.data.action_normalizer)
        extra = {**extra, 'raw_state_dict': self.method.state_dict(), 'weights': 'ema'}
        save_checkpoint(self.path('final.pt'), self.ema.model, *norms, extra)
        self._stale_final = False

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save` for the same config and data.

        Raises:
            TrainError: the checkpoint belongs to another config or other data.
        """
        config = config_to_dict(self.cfg)
        written = _with_defaults(payload['train_config'])
        saved, now = _weight_fields(written), _weight_fields(config)
        changed = sorted(k for k in now if saved.get(k) != now[k])
        self._stale_final = written.get('method_config') != config['method_config']
        last_eval = next((row for row in reversed(payload['metrics'])
                          if 'eval_success' in row), {})
        self._stale_eval = int(payload['step']) >= self.cfg.optim.steps and (
            _eval_results_differ(written, config) or self._stale_final
            # evaluated before the task reported its headline metric (Push-T's max_score)
            or bool(last_eval) and f'eval_{self.metric_name}' not in last_eval)
        if changed:
            raise TrainError(f'{self.path("checkpoint.pt")} was written with different '
                             f'{changed}; resume with the same config or use another out_dir')
        if payload['train_meta']['data_sha256'] != self.data.meta['data_sha256']:
            raise TrainError(f'{self.path("checkpoint.pt")} was trained on other data '
                             '(data_sha256 differs)')
        self.method.load_state_dict(payload['state_dict'])
        self.ema.load_state_dict(payload['ema_state_dict'], payload['ema_updates'])
        self.optimizer.load_state_dict(payload['optimizer'])
        self.scheduler.load_state_dict(payload['scheduler'])
        self.order.load_state_dict(payload['batch_order'])
        if len(payload['rng']['generators']) != self.ctx.world_size:
            raise TrainError(f'the checkpoint was written by {len(payload["rng"]["generators"])}'
                             f' process(es); resume it with as many, not {self.ctx.world_size}')
        self.step, self.metrics = int(payload['step']), list(payload['metrics'])
        reseed = self.cfg.seed * 7919 + self.ctx.rank + 1_000_003 * self.step
        if not restore_rng_state(payload['rng'], self.ctx, self.generator, reseed):
            self.log(f"trainer: the checkpoint's random state was saved on "
                     f"{payload['rng'].get('device', 'another device')}; continuing on "
                     f'{self.ctx.device.type} with a generator seeded from the seed and step '
                     '(not bit-identical to an uninterrupted run)')
        self._sums = dict(payload['running_metrics']['sums'])
        self._count = int(payload['running_metrics']['count'])
        self.elapsed_s = float(payload['elapsed_s'])

    def _log_step(self, elapsed: float, bar: tqdm) -> None:
        cfg, last = self.cfg, self.step == self.cfg.optim.steps
        evaluate = (cfg.eval.every and self.step % cfg.eval.every == 0) or (
            last and cfg.eval.final)
        if self.step % cfg.log_every and not evaluate and not last:
            return
        row = self._row(elapsed)
        bar.set_postfix(loss=f'{row.get("loss", float("nan")):.4f}', lr=f'{row["lr"]:.2e}')
        if evaluate and self.ctx.is_main:
            row.update(self.evaluate())
            shown = dict.fromkeys(('success', self.metric_name, 'n_modes'))
            line = f'step {self.step}: eval ' + ', '.join(
                f'{k} {row[f"eval_{k}"]:.3f}' for k in shown if f'eval_{k}' in row)
            (self.log if bar.disable else bar.write)(line)
        self.metrics.append(row)
        if self.ctx.is_main:
            _write_csv(self.path('metrics.csv'), self.metrics)

    def fit(self, stop_after: int | None = None) -> None:
        """Train until ``optim.steps`` (or until step ``stop_after``, leaving a checkpoint).

        Checkpoints every ``checkpoint_every`` steps and at the end; writes ``final.pt`` when
        the last step is done (also when resuming a finished run whose ``final.pt`` is missing).
        """
        cfg, total = self.cfg, self.cfg.optim.steps
        end = total if stop_after is None else min(total, stop_after)
        start = time.perf_counter() - self.elapsed_s
        bar = tqdm(total=total, initial=self.step, disable=not (cfg.progress and self.ctx.is_main),
                   desc=f'{cfg.method} {cfg.task}', dynamic_ncols=True, file=sys.stderr)
        with bar:
            while self.step < end:
                self.train_step()
                elapsed = time.perf_counter() - start
                self._log_step(elapsed, bar)
                if self.step % cfg.checkpoint_every == 0 or self.step == end:
                    self.save(elapsed, final=self.step == total)
                bar.update(1)
        self.elapsed_s = time.perf_counter() - start
        if self.step == total and self._stale_eval and cfg.eval.final:
            self._evaluate_again()
        if self.step == total and self.ctx.is_main and (
                self._stale_final or not os.path.exists(self.path('final.pt'))):
            # killed after the last checkpoint, before final.pt, or a finished run resumed with
            # other warm-start settings (final.pt is what gets exported): rank 0 writes it alone
            # (no collective; final.pt is not resumed from, so its own generator state suffices)
            self._save_final(self.extra(self.elapsed_s, gather=False))

    def _evaluate_again(self) -> None:
        """A finished run resumed with other evaluation or sampler settings (or evaluated
        before its task's headline metric existed): evaluate the final weights again, log it as
        a row of the last step and keep it in the checkpoint (collective in DDP, like
        :meth:`save`; rank 0 evaluates)."""
        row = {'step': self.step, 'epoch': self.order.epoch, 'wall_s': round(self.elapsed_s, 3)}
        if self.ctx.is_main:
            row.update(self.evaluate())
            self.log(f'trainer: finished run evaluated again with the new settings: '
                     f"success {row.get('eval_success', float('nan')):.3f}")
        self.metrics.append(row)
        if self.ctx.is_main:
            _write_csv(self.path('metrics.csv'), self.metrics)
        self.save(self.elapsed_s, final=True)
        self._stale_eval = self._stale_final = False


def _check_eval_seeds(cfg: TrainConfig, demo_seeds: Any) -> None:
    """Refuse to evaluate on the episodes the demonstrations were recorded on."""
    if not (cfg.eval.every or cfg.eval.final):
        return
    shared = sorted(set(range(cfg.eval.seed, cfg.eval.seed + cfg.eval.episodes))
                    & {int(s) for s in demo_seeds})
    _check(not shared, 'TrainConfig', 'eval.seed', cfg.eval.seed,
           f'evaluation episodes that are not demonstration episodes; {len(shared)} of '
           f'{cfg.eval.episodes} are (seeds {shared[:3]}{" ..." if len(shared) > 3 else ""}; '
           f'demonstrations: data.seed = {cfg.data.seed} onwards)')


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        trainer: the finished run (method, EMA, data, metrics).
        final_path: ``<out_dir>/final.pt`` when the run completed, else None.
        checkpoint_path: ``<out_dir>/checkpoint.pt``.
    """

    trainer: Trainer
    final_path: str | None
    checkpoint_path: str


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None,
          demos: DemoSet | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Run (or continue) training as ``cfg`` says; joins a torchrun job when launched by one.

    Args:
        cfg: the run.
        resume: continue from ``<out_dir>/checkpoint.pt`` when it exists.
        stop_after: stop after this global step with a checkpoint written (time-boxed jobs).
        demos: use these demonstrations instead of loading ``cfg.data``.
        log: where progress lines go (rank 0 only).

    Raises:
        ConfigError, DemoError, TrainError: bad config, data, or checkpoint state; nothing is
            written to ``out_dir`` when they are raised before training starts.
    """
    ctx = init_distributed(cfg.device)
    say = log if ctx.is_main else (lambda _: None)
    try:
        checkpoint = os.path.join(cfg.out_dir, 'checkpoint.pt')
        if os.path.exists(checkpoint) and not resume:
            raise TrainError(f'{checkpoint} exists; pass --resume to continue that run or '
                             'choose another out_dir')
        info = _task_info(cfg)
        report, given = None, demos is not None
        if not given:
            demos, report = read_demos(cfg.data, cfg.task, cfg.task_kwargs, info)
        _check_eval_seeds(cfg, demos.meta.get('episode_seeds', ()))
        data = prepare_data(demos, cfg.data, cfg.task, cfg.n_obs, cfg.horizon,
                            cfg.executed_steps, info)
        if not given:   # valid data (bad data is one error line): what was read, before training
            say(summarize(demos, report))
        trainer = Trainer(cfg, data, ctx, info.metric_name if info else 'success', say)
        if resume and os.path.exists(checkpoint):
            trainer.restore(_read_checkpoint(checkpoint, ctx))
            say(f'trainer: resuming {checkpoint} at step {trainer.step}')
        say(f'trainer: {cfg.method} on {cfg.task}: {data.n_episodes} episodes, '
            f'{data.n_frames} frames, {len(data.obs)} windows, '
            f'{count_parameters(trainer.method)} parameters, {ctx.world_size} process(es) on '
            f'{ctx.device}')
        if ctx.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)
            _write_atomic(os.path.join(cfg.out_dir, 'train_config.yaml'),
                          yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        trainer.fit(stop_after)
        done = trainer.step >= cfg.optim.steps
        final = os.path.join(cfg.out_dir, 'final.pt') if done else None
        say(f'trainer: step {trainer.step}/{cfg.optim.steps} in {trainer.elapsed_s:.1f} s; '
            f'wrote {final or checkpoint}')
        return TrainResult(trainer, final, checkpoint)
    finally:
        shutdown(ctx)
