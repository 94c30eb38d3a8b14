"""The trainer's data: where demonstrations come from, and how they become training pairs.

:func:`load_demos` reads the source a :class:`DataConfig` names; :func:`prepare_data` cuts the
demonstrations into normalised (observation history, action chunk) windows and records the
checkpoint's ``train_meta``; :class:`BatchOrder` deals the windows out in a resumable order.

Sources:
    expert: episodes of a benchmark task's scripted expert (:func:`collect_demos`), cached as an
        npz under ``cache_dir`` keyed by task, episode count, seed and task arguments.
    npz: a file written by :meth:`DemoSet.save_npz` (or any npz with obs/actions/episode_ends).
    rosbag: a rosbag2 recording read with a bag-spec YAML (:mod:`energyflow_ros.data.bag_config`).
    robomimic: an hdf5 file; ``obs_keys`` name the observation arrays.
    lerobot: a local LeRobot dataset directory.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np
import torch

from energyflow_ros.core.config import ConfigError
from energyflow_ros.data.dataset import DemoError, DemoSet, make_windows, Normalizer

__all__ = ['SOURCES', 'TRAIN_META_KEYS', 'DataConfig', 'load_demos', 'expert_cache_path',
           'control_rate_hz', 'TrainingData', 'prepare_data', 'BatchOrder']

SOURCES = ('expert', 'npz', 'rosbag', 'robomimic', 'lerobot')
# The checkpoint's ``train_meta``: exactly these keys (read by the ONNX exporter).
TRAIN_META_KEYS = ('task', 'obs_names', 'action_names', 'joint_names', 'n_obs', 'horizon',
                   'executed_steps', 'control_period_s', 'action_low', 'action_high',
                   'data_sha256')


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ConfigError(f'DataConfig.{name} = {value!r} is invalid: expected {allowed}')


@dataclass(frozen=True)
class DataConfig:
    """The training demonstrations.

    Attributes:
        source: one of :data:`SOURCES`.
        path: the npz file, bag (directory or storage file), hdf5 file or LeRobot directory;
            unused by ``expert``.
        bag_spec: ``rosbag`` only: the YAML file saying which topics become obs and actions.
        obs_keys: ``robomimic``/``lerobot``: observation arrays, concatenated in this order
            (LeRobot default: ``[observation.state]``).
        action_key: ``robomimic``/``lerobot``: the action array (default ``actions`` /
            ``action``).
        filter_key: ``robomimic`` only: a mask under ``mask/`` selecting demos.
        n_episodes: ``expert`` only: successful expert episodes to collect.
        seed: ``expert`` only: seed of the first episode (episode i uses seed + i).
        cache_dir: ``expert`` only: folder of cached collections; null disables the cache.
        episode_ticks: ``expert`` only: record every episode for exactly this many ticks, the
            expert holding at its goal after success (null: stop at success). Use the RL
            environment's episode length when the model is a reward for it
            (``energyflow-reward-eval``), so its demonstrations cover what the agent's
            fixed-length episodes do after arriving.
        control_hz: the data's control rate; null takes it from the task or the data's meta.
    """

    source: str = 'expert'
    path: str | None = None
    bag_spec: str | None = None
    obs_keys: tuple[str, ...] = ()
    action_key: str | None = None
    filter_key: str | None = None
    n_episodes: int = 100
    seed: int = 0
    cache_dir: str | None = 'outputs/demo_cache'
    episode_ticks: int | None = None
    control_hz: float | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            _fail('source', self.source, f'one of {list(SOURCES)}')
        if self.source != 'expert' and not (isinstance(self.path, str) and self.path):
            _fail('path', self.path, f'the location of the {self.source} data')
        if self.source == 'rosbag' and not (isinstance(self.bag_spec, str) and self.bag_spec):
            _fail('bag_spec', self.bag_spec, 'the bag-spec YAML file of the rosbag source')
        object.__setattr__(self, 'obs_keys', tuple(self.obs_keys))
        if self.source == 'robomimic' and not self.obs_keys:
            _fail('obs_keys', list(self.obs_keys), 'a non-empty list of obs/<key> names')
        if not (isinstance(self.n_episodes, int) and self.n_episodes > 0):
            _fail('n_episodes', self.n_episodes, 'a positive integer')
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            _fail('seed', self.seed, 'an integer')
        ticks = self.episode_ticks
        if ticks is not None and not (isinstance(ticks, int) and not isinstance(ticks, bool)
                                      and ticks > 0):
            _fail('episode_ticks', ticks, 'a positive integer or null')
        rate = self.control_hz
        if rate is not None and not (isinstance(rate, (int, float)) and 0 < rate < float('inf')):
            _fail('control_hz', rate, 'a finite positive number or null')


def expert_cache_path(cfg: DataConfig, task: str, task_kwargs: dict[str, Any],
                      info: Any = None) -> str | None:
    """The npz file caching an expert collection (None when caching is off); ``info``: the
    task's TaskInfo when the caller has it (else the task is built to read it)."""
    if cfg.source != 'expert' or not cfg.cache_dir:
        return None
    if info is None:
        from energyflow_ros.sim.registry import task_info

        info = task_info(task, **task_kwargs)
    revision = info.revision   # the task changed what its seeds produce: collect again
    key = json.dumps({'task': task, 'kwargs': task_kwargs, 'revision': revision},
                     sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    ticks = f'_t{cfg.episode_ticks}' if cfg.episode_ticks else ''
    name = f'{task}_n{cfg.n_episodes}_s{cfg.seed}{ticks}_{digest}.npz'
    return os.path.join(cfg.cache_dir, name)


def _layout_matches(demos: DemoSet, task: str, task_kwargs: dict[str, Any],
                    info: Any = None) -> bool:
    """Whether a cached collection has the task's current observation and action names."""
    if info is None:
        from energyflow_ros.sim.registry import task_info

        info = task_info(task, **task_kwargs)
    return (tuple(demos.obs_names) == tuple(info.obs_names)
            and tuple(demos.action_names) == tuple(info.action_names))


def _expert(cfg: DataConfig, task: str, task_kwargs: dict[str, Any], info: Any) -> DemoSet:
    from energyflow_ros.sim.demos import collect_demos

    cache = expert_cache_path(cfg, task, task_kwargs, info)
    if cache and os.path.exists(cache):
        demos = DemoSet.load_npz(cache)
        if _layout_matches(demos, task, task_kwargs, info):  # else: an older layout: collect
            demos.meta.update(task=task, source='scripted_expert (cached)')
            return demos
    demos = collect_demos(task, cfg.n_episodes, seed=cfg.seed, task_kwargs=task_kwargs,
                          episode_ticks=cfg.episode_ticks)
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        demos.save_npz(cache)
    return demos


def _rosbag(cfg: DataConfig) -> tuple[DemoSet, Any]:
    from energyflow_ros.data.bag_config import load_bag_spec
    from energyflow_ros.data.rosbag import read_rosbag

    return read_rosbag(cfg.path, load_bag_spec(cfg.bag_spec))


def _robomimic(cfg: DataConfig) -> tuple[DemoSet, Any]:
    from energyflow_ros.data.robomimic import read_robomimic

    return read_robomimic(cfg.path, cfg.obs_keys, cfg.filter_key, cfg.action_key or 'actions')


def _lerobot(cfg: DataConfig) -> tuple[DemoSet, Any]:
    from energyflow_ros.data.lerobot import read_lerobot

    if not os.path.isdir(cfg.path):
        raise DemoError(f'LeRobot dataset directory not found: {cfg.path}')
    return read_lerobot(cfg.path, cfg.obs_keys or ('observation.state',),
                        cfg.action_key or 'action')


def load_demos(cfg: DataConfig, task: str, task_kwargs: dict[str, Any] | None = None,
               info: Any = None) -> DemoSet:
    """Read (or collect) the demonstrations ``cfg`` describes (see :func:`read_demos`)."""
    return read_demos(cfg, task, task_kwargs, info)[0]


def read_demos(cfg: DataConfig, task: str, task_kwargs: dict[str, Any] | None = None,
               info: Any = None) -> tuple[DemoSet, Any]:
    """Read (or collect) the demonstrations ``cfg`` describes, with the reader's report
    (frames dropped and why, notes; None for ``expert`` and ``npz``) for
    :func:`~energyflow_ros.data.align.summarize`.

    Args:
        cfg: the data section of the train config.
        task: the task name (the expert's task for ``expert``).
        task_kwargs: the task's constructor arguments (``expert`` only).
        info: the task's :class:`~energyflow_ros.sim.base.TaskInfo` when the caller has it
            (``expert`` only: a cached collection is checked against its names; without it
            the task is built once to read them).

    Raises:
        DemoError: missing, unreadable or invalid data, naming the file and the problem.
        ValueError: an unknown task for the ``expert`` source.
    """
    task_kwargs = dict(task_kwargs or {})
    if cfg.source == 'expert':
        return _expert(cfg, task, task_kwargs, info), None
    if cfg.source != 'npz' and not os.path.exists(cfg.path):
        raise DemoError(f'{cfg.source} data not found: {cfg.path}')
    if cfg.source == 'npz':
        return DemoSet.load_npz(cfg.path), None
    return {'rosbag': _rosbag, 'robomimic': _robomimic, 'lerobot': _lerobot}[cfg.source](cfg)


def control_rate_hz(cfg: DataConfig, demos: DemoSet, task_hz: float | None) -> float:
    """The control rate of the data: the config's, else the task's, else the data's meta.

    Raises:
        DemoError: no rate is known (set ``data.control_hz``).
    """
    for rate in (cfg.control_hz, task_hz, demos.meta.get('rate_hz'),
                 demos.meta.get('control_hz')):
        if isinstance(rate, (int, float)) and rate > 0:
            return float(rate)
    raise DemoError(f'the control rate of the {cfg.source} data is unknown: set '
                    'data.control_hz')


@dataclass
class TrainingData:
    """Normalised training pairs and what the checkpoint records about them.

    Attributes:
        obs: (N, n_obs * obs_dim) normalised stacked observations (float32).
        chunks: (N, H, A) normalised action chunks (float32).
        obs_normalizer: statistics of the stacked observations.
        action_normalizer: per-action-dimension statistics.
        meta: the checkpoint's ``train_meta`` (keys :data:`TRAIN_META_KEYS`).
        n_frames: frames in the demonstrations.
        n_episodes: episodes in the demonstrations.
    """

    obs: torch.Tensor
    chunks: torch.Tensor
    obs_normalizer: Normalizer
    action_normalizer: Normalizer
    meta: dict[str, Any]
    n_frames: int = 0
    n_episodes: int = 0


def _check_dims(demos: DemoSet, info: Any, task: str) -> None:
    for what, got, names in (('observation', demos.obs.shape[1], info.obs_names),
                             ('action', demos.actions.shape[1], info.action_names)):
        if got != len(names):
            raise DemoError(f'the data has {got} {what} dims but task {task!r} has '
                            f'{len(names)} ({", ".join(names)})')


def _in_task_order(demos: DemoSet, info: Any) -> DemoSet:
    """``demos`` with its columns in the task's order when its names are the task's in
    another order: the task's bounds, its simulator's observations and the exported joint
    names are all in the task's order (names that are not the task's keep their positions)."""
    def order(have: list[str], want: tuple[str, ...]) -> list[int] | None:
        if list(have) == list(want) or sorted(have) != sorted(want):
            return None
        return [list(have).index(name) for name in want]

    obs_order = order(demos.obs_names, info.obs_names)
    act_order = order(demos.action_names, info.action_names)
    if obs_order is None and act_order is None:
        return demos
    obs = demos.obs if obs_order is None else demos.obs[:, obs_order]
    actions = demos.actions if act_order is None else demos.actions[:, act_order]
    return DemoSet(obs=obs, actions=actions, episode_ends=demos.episode_ends,
                   obs_names=list(demos.obs_names if obs_order is None else info.obs_names),
                   action_names=list(demos.action_names if act_order is None
                                     else info.action_names), meta=dict(demos.meta))


def prepare_data(demos: DemoSet, cfg: DataConfig, task: str, n_obs: int, horizon: int,
                 executed_steps: int, info: Any = None) -> TrainingData:
    """Windows, normalisers and the checkpoint's ``train_meta`` for training on ``demos``.

    Args:
        demos: validated demonstrations.
        cfg: the data section of the train config (for the control rate).
        task: the task or dataset name.
        n_obs: observation frames per window.
        horizon: actions per chunk.
        executed_steps: actions executed per chunk (recorded for the runtime).
        info: the task's :class:`TaskInfo` (None for datasets of unregistered tasks).

    Raises:
        DemoError: the data does not fit the task's observation or action size.
    """
    if info is not None:
        _check_dims(demos, info, task)
        demos = _in_task_order(demos, info)
    obs, chunks = make_windows(demos, n_obs, horizon)
    obs_norm, act_norm = Normalizer.fit(obs), Normalizer.fit(demos.actions)
    low = info.action_low if info is not None else demos.actions.min(axis=0)
    high = info.action_high if info is not None else demos.actions.max(axis=0)
    rate = control_rate_hz(cfg, demos, info.control_hz if info is not None else None)
    meta = {'task': task, 'obs_names': list(demos.obs_names),
            'action_names': list(demos.action_names),
            'joint_names': list(demos.action_names), 'n_obs': n_obs,
            'horizon': horizon, 'executed_steps': executed_steps,
            'control_period_s': 1.0 / rate,
            'action_low': [float(v) for v in low], 'action_high': [float(v) for v in high],
            'data_sha256': demos.fingerprint()}
    return TrainingData(torch.as_tensor(obs_norm.normalize(obs), dtype=torch.float32),
                        torch.as_tensor(act_norm.normalize(chunks), dtype=torch.float32),
                        obs_norm, act_norm, meta, len(demos.obs), demos.n_episodes)


class BatchOrder:
    """Batches without replacement from a fixed permutation per epoch (seeded by seed, epoch).

    The state is two integers, so a resumed run draws exactly the batches it would have drawn.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        """Order ``n`` training pairs into batches of ``batch_size``."""
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch = self.position = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next(self) -> np.ndarray:
        """Indices of the next global batch (crossing into the next epoch when needed)."""
        parts, needed = [], self.batch_size
        while needed:
            take = self._perm[self.position:self.position + needed]
            parts.append(take)
            needed -= len(take)
            self.position += len(take)
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        return np.concatenate(parts)

    def state_dict(self) -> dict[str, int]:
        """Where the order stands."""
        return {'epoch': self.epoch, 'position': self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a :meth:`state_dict`."""
        self.epoch, self.position = int(state['epoch']), int(state['position'])
        self._perm = self._permutation(self.epoch)
