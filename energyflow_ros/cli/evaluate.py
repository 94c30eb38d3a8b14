"""``energyflow-eval``: train and evaluate every method on every task over several seeds.

Each run is the trainer on ``config/train_<task>.yaml`` with the method switched, the seed
changed and the network width chosen so that every method has about as many parameters as the
reference method (same data, same budget). Results go to ``<out>/quality.json`` (one record per
task x method) and ``<out>/quality.md``. Finished runs are kept under ``--runs-dir`` and reused
when the benchmark is run again with the same settings.

    energyflow-eval --smoke                      # tiny, seconds: checks the pipeline
    energyflow-eval --tasks obstacles2d --seeds 3
    energyflow-eval                              # the full benchmark (GPU recommended)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

from energyflow_ros.cli.results_files import load_results, merge_records, write_files
from energyflow_ros.core.config import (ChunkSpec, config_from_dict, config_to_dict,
                                        ConfigError)
from energyflow_ros.core.methods import BackboneConfig, build_method, METHODS
from energyflow_ros.core.networks import count_parameters
from energyflow_ros.data.dataset import DemoError
from energyflow_ros.sim.registry import task_info, task_names
from energyflow_ros.training.trainer import load_train_config, train, TrainConfig, TrainError

PROG = 'energyflow-eval'
TASK_ORDER = ('obstacles2d', 'pusht', 'blockpush')   # the table's order (the issue's)
METHOD_ORDER = ('energyflow', 'rnce', 'irnce', 'ibc', 'diffusion', 'mse')
RECORD_KEYS = ('task', 'method', 'seeds', 'success_mean', 'success_std', 'metric_name',
               'metric_mean', 'metric_std', 'params', 'train_s', 'infer_ms')
# --smoke: a tiny MLP, a few steps and short episodes; small sampler settings per method.
SMOKE = ['data.n_episodes=10', 'optim.steps=10', 'optim.batch_size=32', 'optim.warmup_steps=2',
         'optim.lr=1e-3', 'backbone.kind=mlp', 'backbone.mlp.depth=2', 'eval.episodes=2',
         'eval.max_steps=20', 'checkpoint_every=10', 'log_every=10']
SMOKE_METHODS = {
    'energyflow': {'flow': {'n_particles': 4, 'n_steps': 4}},
    'rnce': {'n_negatives': 8, 'proposal': {'n_components': 2, 'hidden': 16, 'depth': 1},
             'langevin': {'n_particles': 8, 'n_scales': 1, 'steps_per_scale': 2,
                          'step_size': 1e-3, 'noise': 0.0}},
    'irnce': {'n_negatives': 8, 'proposal': {'n_components': 2, 'hidden': 16, 'depth': 1},
              'langevin': {'n_particles': 8, 'n_scales': 2, 'steps_per_scale': 2}},
    'ibc': {'n_negatives': 16, 'dfo': {'n_samples': 32, 'iterations': 2}},
    'diffusion': {'ddim': {'train_steps': 20, 'sample_steps': 4}},
    'mse': {},
}
SMOKE_PARAMS = 5_000
# Metrics besides success and the task's headline metric that the table shows per task: the
# ones its targets name (obstacles2d: collisions and the share of each first-obstacle side).
TASK_COLUMNS = {'obstacles2d': ('collision', 'first_side_above', 'first_side_below', 'n_modes')}
TASK_TARGETS = {
    'obstacles2d': 'EnergyFlow and R-NCE success >= 0.95 with each side of the first obstacle '
                   '>= 0.25 and collision <= 0.03; IBC visibly worse.',
    'pusht': "EnergyFlow or I-R-NCE max_score (Diffusion Policy's and the R-NCE paper's "
             "score: the episode's best clip(coverage / 0.95, 0, 1)) >= 0.88 and at least the "
             "diffusion baseline's. Rows recorded before max_score existed show max_coverage, "
             'the raw coverage (a success: ~0.96, not 1), and are not graded.',
    'blockpush': 'best EBM p2 (both blocks in targets: the success column) >= 0.90.',
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
    parser.add_argument('--tasks', help=f'comma-separated subset of {task_names()} '
                                        '(default: all; --smoke: obstacles2d)')
    parser.add_argument('--methods', default=','.join(METHOD_ORDER),
                        help='comma-separated subset of the methods')
    parser.add_argument('--seeds', type=int, default=3, help='training seeds per method')
    parser.add_argument('--first-seed', type=int, default=0,
                        help='seeds run are first-seed .. first-seed + seeds - 1; records of '
                             'other seeds already in quality.json with the same settings are '
                             'pooled with them (seeds split across commands or machines)')
    parser.add_argument('--smoke', action='store_true', help='tiny settings for a CI check')
    parser.add_argument('--reference', default='energyflow',
                        help='method whose parameter count every method is matched to')
    parser.add_argument('--config-dir', help='folder of train_<task>.yaml (default: the '
                                             "package's config folder)")
    parser.add_argument('--out', help='where results go (default: benchmarks/results; '
                                      '--smoke: outputs/eval_smoke, never the committed table)')
    parser.add_argument('--runs-dir', default='outputs/eval_runs', help='training runs')
    parser.add_argument('--merge', action='append', default=[], metavar='QUALITY_JSON',
                        help="fold another quality.json's records (seeds run on another "
                             'machine, or an experiment written to its own --out) into '
                             "--out's table, each with the settings it was run with, and "
                             'train nothing; repeatable')
    parser.add_argument('overrides', nargs='*', metavar='key.sub=value',
                        help='train config overrides applied to every run')
    args = parser.parse_intermixed_args(argv)
    if args.merge and (args.overrides or args.tasks or args.smoke):
        parser.error('--merge trains nothing: it takes no --tasks, --smoke or overrides')
    args.out = args.out or ('outputs/eval_smoke' if args.smoke else 'benchmarks/results')
    tasks = args.tasks or ('obstacles2d' if args.smoke else ','.join(task_names()))
    args.tasks, args.methods = tasks.split(','), args.methods.split(',')
    for label, chosen, allowed in (('task', args.tasks, task_names()),
                                   ('method', args.methods + [args.reference], list(METHODS))):
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            parser.error(f'unknown {label}(s) {unknown}; allowed: {sorted(allowed)}')
    if args.seeds < 1:
        parser.error('--seeds must be >= 1')
    if args.first_seed < 0:
        parser.error('--first-seed must be >= 0')
    return args


def config_path(task: str, config_dir: str | None) -> str:
    """``train_<task>.yaml`` in ``config_dir``, the checkout, or the installed share folder."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folders = [config_dir] if config_dir else [
        os.path.join(here, 'config'), os.path.join(sys.prefix, 'share', 'energyflow_ros',
                                                   'config')]
    for folder in folders:
        path = os.path.join(folder, f'train_{task}.yaml')
        if os.path.exists(path):
            return path
    raise ConfigError(f'no train_{task}.yaml in {folders}')


def task_chunk_spec(cfg: TrainConfig) -> ChunkSpec:
    """The chunk shapes of ``cfg``'s task (stacked observation, action, horizon)."""
    info = task_info(cfg.task, **cfg.task_kwargs)
    return ChunkSpec(cfg.n_obs * info.obs_dim, info.action_dim, cfg.horizon)


def method_parameters(cfg: TrainConfig, spec: ChunkSpec, method: str,
                      backbone: dict[str, Any]) -> int:
    """Trainable parameters of ``method`` (with its config in ``cfg``) on ``backbone``."""
    return count_parameters(build_method(method, spec, backbone, cfg.method_config.get(method)))


def _backbone_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {'kind': cfg.backbone.kind, 'mlp': vars(cfg.backbone.mlp).copy(),
            'unet': {**vars(cfg.backbone.unet), 'channels': list(cfg.backbone.unet.channels)}}


def matched_backbone(cfg: TrainConfig, spec: ChunkSpec, method: str, target: int
                     ) -> dict[str, Any]:
    """The backbone of ``cfg`` resized so that ``method`` has about ``target`` parameters.

    MLPs (and MSE, which is always an MLP) change their hidden width; U-Nets scale their
    channels (kept divisible by the GroupNorm groups).
    """
    base = _backbone_dict(cfg)
    if cfg.backbone.kind == 'mlp' or method == 'mse':
        low, high = 4, 8192
        while low < high:
            mid = (low + high) // 2
            trial = {**base, 'mlp': {**base['mlp'], 'hidden': mid}}
            if method_parameters(cfg, spec, method, trial) < target:
                low = mid + 1
            else:
                high = mid
        options = [{**base, 'mlp': {**base['mlp'], 'hidden': h}} for h in (max(4, low - 1), low)]
    else:
        groups = base['unet']['groups']
        options = [{**base, 'unet': {**base['unet'], 'channels': [
            max(groups, groups * round(c * s / 16 / groups)) for c in cfg.backbone.unet.channels
        ]}} for s in range(4, 33)]
    return min(options, key=lambda b: abs(method_parameters(cfg, spec, method, b) - target))


def _infer_ms(trainer: Any, repeats: int = 10) -> float:
    """Median milliseconds to sample one chunk for one observation with the EMA model."""
    sampler = trainer.ema.model.sampler()
    obs = trainer.obs[:1]
    gen = torch.Generator(obs.device).manual_seed(0)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        sampler.sample(obs, gen)
        if obs.device.type == 'cuda':
            torch.cuda.synchronize()
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def run_one(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or reuse) one run and return its final evaluation, size and timings."""
    result = train(cfg, resume=True, log=lambda line: None)
    trainer = result.trainer
    final = next((row for row in reversed(trainer.metrics) if 'eval_success' in row), None)
    if final is None:
        raise TrainError(f'{cfg.out_dir}: the run has no closed-loop evaluation to report '
                         '(eval.final = false?)')
    eval_s = sum(row.get('eval_wall_s', 0.0) for row in trainer.metrics)
    return {'row': final, 'params': count_parameters(trainer.method),
            'train_s': max(0.0, trainer.elapsed_s - eval_s), 'infer_ms': _infer_ms(trainer)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def aggregate(task: str, method: str, seeds: list[int], runs: list[dict[str, Any]],
              metric_name: str) -> dict[str, Any]:
    """One quality record from the runs of every seed.

    The keys are :data:`RECORD_KEYS` followed by ``metrics``: mean and std over the seeds of
    every evaluation metric all runs report (``eval_<name>`` in their metrics log), e.g.
    obstacles2d's collision rate and first-obstacle sides, which its targets name.
    """
    success = _mean_std([r['row']['eval_success'] for r in runs])
    metric = _mean_std([r['row'].get(f'eval_{metric_name}', float('nan')) for r in runs])
    names = [k[5:] for k, v in runs[0]['row'].items() if k.startswith('eval_')
             and k != 'eval_wall_s' and isinstance(v, (int, float))
             and all(isinstance(r['row'].get(k), (int, float)) for r in runs)]
    metrics = {name: dict(zip(('mean', 'std'), _mean_std([r['row'][f'eval_{name}']
                                                          for r in runs])))
               for name in names}
    return {**dict(zip(RECORD_KEYS, (
        task, method, seeds, success[0], success[1], metric_name, metric[0], metric[1],
        runs[0]['params'], statistics.fmean(r['train_s'] for r in runs),
        statistics.fmean(r['infer_ms'] for r in runs)))), 'metrics': metrics}


EBMS = ('energyflow', 'rnce', 'irnce', 'ibc')


def _metric(record: dict[str, Any], name: str) -> dict[str, float] | None:
    """``{'mean', 'std'}`` of a record's metric ``name`` (its headline or one of its
    ``metrics``), or None when the record has none of that name."""
    if record['metric_name'] == name:
        return {'mean': record['metric_mean'], 'std': record['metric_std']}
    return record.get('metrics', {}).get(name)


def target_status(task: str, records: list[dict[str, Any]]) -> str:
    """The line under a task's table saying whether its target is met, and what is missing.

    Checked on the table's means (:data:`TASK_TARGETS` says the targets in words); methods
    the target names but the table lacks count as missing, and are named.
    """
    rows = {r['method']: r for r in records if r['task'] == task}

    def value(method: str, name: str) -> float:
        if name == 'success':
            return rows[method]['success_mean']
        found = _metric(rows[method], name)
        return found['mean'] if found else float('nan')

    misses: list[str] = []
    if task == 'obstacles2d':
        for m in ('energyflow', 'rnce'):
            if m not in rows:
                misses.append(f'{m} not run')
                continue
            misses += [f'{m} {name} {value(m, name):.3f} {op} {bound}'
                       for name, op, bound, ok in (
                           ('success', '<', 0.95, lambda v: v >= 0.95),
                           ('first_side_above', '<', 0.25, lambda v: v >= 0.25),
                           ('first_side_below', '<', 0.25, lambda v: v >= 0.25),
                           ('collision', '>', 0.03, lambda v: v <= 0.03))
                       if not ok(value(m, name))]
        ebms = [m for m in ('energyflow', 'rnce') if m in rows]
        if 'ibc' not in rows:
            misses.append('ibc not run')
        elif ebms and not all(value('ibc', 'success') <= value(m, 'success') - 0.2
                              or value('ibc', 'collision') >= value(m, 'collision') + 0.2
                              for m in ebms):
            misses.append('ibc not visibly worse (success 0.2 lower or collision 0.2 higher)')
    elif task in ('pusht', 'blockpush'):
        candidates = [m for m in (('energyflow', 'irnce') if task == 'pusht' else EBMS)
                      if m in rows]
        name, bound = ('max_score', 0.88) if task == 'pusht' else ('p2', 0.90)
        best = max(candidates, default=None,
                   key=lambda m: value(m, name) if value(m, name) >= 0.0 else float('-inf'))
        if best is None:
            misses.append('no EBM run')
        elif math.isnan(value(best, name)):
            misses.append(f'{name} not recorded (the {", ".join(candidates)} rows predate it)')
        elif not value(best, name) >= bound:
            misses.append(f'best {best} {name} {value(best, name):.3f} < {bound:.2f}')
        if task == 'pusht' and best is not None:
            if 'diffusion' not in rows:
                misses.append('diffusion not run')
            elif value(best, name) < value('diffusion', name):
                misses.append(f"below diffusion's {value('diffusion', name):.3f}")
    else:
        return ''
    absent = [m for m in METHOD_ORDER if m not in rows]
    return ((f'Target **missed**: {"; ".join(misses)}.' if misses else 'Target **met**.')
            + (f' Methods without a row here: {", ".join(absent)}.' if absent else ''))


def _task_configs(task: str, args: argparse.Namespace) -> dict[str, TrainConfig]:
    """The train config of every method on ``task``, widths matched to the reference."""
    extra = [*(SMOKE if args.smoke else []), 'eval.every=0', 'eval.final=true',
             'progress=false', *args.overrides]
    if args.smoke:
        extra.append(f'method_config={json.dumps(SMOKE_METHODS)}')
    base = load_train_config(config_path(task, args.config_dir), extra)
    spec = task_chunk_spec(base)
    target = SMOKE_PARAMS if args.smoke else method_parameters(
        base, spec, args.reference, _backbone_dict(base))
    return {method: dataclasses.replace(base, method=method, backbone=config_from_dict(
        BackboneConfig, matched_backbone(base, spec, method, target), 'backbone'))
        for method in args.methods}


def pool(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """One record over the seeds of ``old`` and ``new`` (disjoint), as if run together.

    Means are weighted by the seed counts and the population standard deviations pooled
    exactly (what :func:`aggregate` computes over all the runs at once); train s and infer ms
    are the seed-weighted means.
    """
    n_old, n_new = len(old['seeds']), len(new['seeds'])

    def both(m_old: float, s_old: float, m_new: float, s_new: float) -> tuple[float, float]:
        mean = (n_old * m_old + n_new * m_new) / (n_old + n_new)
        second = (n_old * (s_old ** 2 + m_old ** 2) + n_new * (s_new ** 2 + m_new ** 2)) / (
            n_old + n_new)
        return mean, max(0.0, second - mean ** 2) ** 0.5

    success = both(old['success_mean'], old['success_std'], new['success_mean'],
                   new['success_std'])
    metric = both(old['metric_mean'], old['metric_std'], new['metric_mean'], new['metric_std'])
    metrics = {name: dict(zip(('mean', 'std'), both(old['metrics'][name]['mean'],
                                                    old['metrics'][name]['std'], m['mean'],
                                                    m['std'])))
               for name, m in new.get('metrics', {}).items() if name in old.get('metrics', {})}
    weighted = {key: (n_old * old[key] + n_new * new[key]) / (n_old + n_new)
                for key in ('train_s', 'infer_ms')}
    seeds = sorted(old['seeds'] + new['seeds'])
    pooled = {**new, 'seeds': seeds, 'success_mean': success[0],
              'success_std': success[1], 'metric_mean': metric[0], 'metric_std': metric[1],
              **weighted, 'metrics': metrics}
    if 'settings' in new:              # seeds split across machines: name every one
        both_runs = (old.get('settings', {}), new['settings'])
        pooled['settings'] = {**new['settings'], 'seeds': seeds, **{
            key: '; '.join(dict.fromkeys(str(s[key]) for s in both_runs if key in s))
            for key in ('machine', 'torch') if key in new['settings']}}
    return pooled


# The settings that make one experiment: records of different seeds that agree on them are
# pooled, and rows that agree share a label in the table (machine and torch may differ: seeds
# split across machines). config_sha256 covers the YAML (another --config-dir); a record
# written before it was kept is an experiment of its own. task_revision is the task's
# (sim.TaskInfo.revision): records written before it was kept ran revision 1, the only one any
# task had then.
POOL_SETTINGS = ('mode', 'reference', 'overrides', 'episodes', 'device', 'steps',
                 'observation', 'config_sha256', 'task_revision')
# Config fields that differ between the runs of one record, or do not change its results.
_UNHASHED = ('seed', 'out_dir', 'progress', 'checkpoint_every', 'log_every', 'method',
             'backbone')


def config_digest(cfg: TrainConfig) -> str:
    """SHA-256 of what a run's results depend on besides its seed, method and width."""
    fields = {k: v for k, v in config_to_dict(cfg).items() if k not in _UNHASHED}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _pool_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The :data:`POOL_SETTINGS` of a record's ``settings``."""
    return {k: settings.get(k, 1 if k == 'task_revision' else None) for k in POOL_SETTINGS}


def experiment(record: dict[str, Any]) -> str:
    """The key of ``record``'s experiment: its task, method and :data:`POOL_SETTINGS`."""
    return json.dumps([record['task'], record['method'],
                       _pool_settings(record.get('settings', {}))], default=str)


def _poolable(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``old`` and ``new`` (one experiment) are disjoint seeds of the same network."""
    return (not set(old['seeds']) & set(new['seeds']) and old['params'] == new['params']
            and old['metric_name'] == new['metric_name'])


def _cell(mean: float, std: float) -> str:
    return f'{mean:.3f} ± {std:.3f}'


def _metric_cell(record: dict[str, Any], name: str) -> str:
    found = _metric(record, name)
    return _cell(found['mean'], found['std']) if found else '—'


def _describe(s: dict[str, Any], digest: bool = False) -> str:
    return (f'{s.get("mode", "?")} run on {s.get("machine", "?")}, torch {s.get("torch", "?")}, '
            f'device {s.get("device", "?")}; {s.get("steps", "?")} training steps, '
            f'{s.get("episodes", "?")} evaluation episodes per seed, task revision '
            f'{s.get("task_revision", 1)}, reference '
            f'`{s.get("reference", "?")}`, overrides {s.get("overrides", [])}.'
            + (f' Observed per frame: {", ".join(s["observation"])}.' if 'observation' in s
               else '')
            + (f' Train config digest {s["config_sha256"][:12]}.' if digest
               and s.get('config_sha256') else ' Train config digest not recorded.'
               if digest else ''))


def _setting_groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``rows`` grouped by experiment settings (:data:`POOL_SETTINGS`), in table order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = json.dumps(_pool_settings(r.get('settings', {})), default=str)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _group_settings(group: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings of a group's rows, with every machine and torch version they ran on."""
    return {**group[0].get('settings', {}), **{
        key: '; '.join(dict.fromkeys(part for r in group
                                     for part in str(r['settings'][key]).split('; ')))
        for key in ('machine', 'torch') if all(key in r.get('settings', {}) for r in group)}}


def _markdown(records: list[dict[str, Any]]) -> str:
    """The table: per task, its rows under the settings they were run with. Rows of one task
    run with different settings (a method run again with more steps) are labelled (a), (b),
    ... in a run column, each label described, and the target graded within each label."""
    lines = ['# Policy quality: every method on every task', '', (
        f'Generated by `{PROG}`. Each cell is the mean ± std over the training seeds of the '
        'final closed-loop evaluation of the EMA weights. Network widths are chosen so every '
        'method has about as many parameters as the reference method; train s excludes '
        'evaluation; infer ms is one chunk for one observation on the training device.'), '']
    for task in dict.fromkeys(r['task'] for r in records):
        rows = [r for r in records if r['task'] == task]
        groups = _setting_groups(rows)
        label = {id(r): chr(ord('a') + i) for i, g in enumerate(groups) for r in g}
        extra = [m for m in TASK_COLUMNS.get(task, ()) if all(m in r.get('metrics', {})
                                                              for r in rows)]
        headline = list(dict.fromkeys(r['metric_name'] for r in rows))  # older rows: another
        columns = ['success', *headline, *extra]
        lines += [f'## {task}', '']
        if len(groups) == 1:
            lines += [_describe(_group_settings(rows)), '']
        else:
            lines += ['Rows run with different settings; the run column says which:', '',
                      *(f'- ({chr(ord("a") + i)}) {_describe(_group_settings(g), True)}'
                        for i, g in enumerate(groups)), '']
        if task in TASK_TARGETS:
            lines += [f'Targets: {TASK_TARGETS[task]}', '']
            for i, g in enumerate(groups):
                if len(groups) > 1 and not any(r['method'] in EBMS for r in g):
                    continue                       # no row the target grades
                status = target_status(task, g)
                prefix = f'({chr(ord("a") + i)}) ' if len(groups) > 1 else ''
                lines += [prefix + status, ''] if status else []
        run = ['run'] if len(groups) > 1 else []
        lines += ['| method | ' + ''.join(f'{c} | ' for c in run) + 'seeds | '
                  + ' | '.join(columns) + ' | params | train s | infer ms |',
                  '|---' * (len(columns) + 5 + len(run)) + '|']
        for r in rows:
            cells = [_cell(r['success_mean'], r['success_std']),
                     *(_metric_cell(r, m) for m in headline),
                     *(_cell(r['metrics'][m]['mean'], r['metrics'][m]['std']) for m in extra)]
            lines.append(f'| {r["method"]} | ' + (f'{label[id(r)]} | ' if run else '')
                         + f'{len(r["seeds"])} | ' + ' | '.join(cells)
                         + f' | {r["params"]:,} | '
                         f'{r["train_s"]:.2f} | {r["infer_ms"]:.2f} |')
        lines.append('')
    return '\n'.join(lines)


def recorded(data: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """The records of the quality results ``data`` (read from ``path``), each with its settings.

    Raises:
        ValueError: ``data`` is of a layout this does not know (named).
    """
    old_settings = data.get('settings', {})
    records = data.get('records', [])
    if not isinstance(old_settings, dict) or not all(isinstance(v, dict)
                                                     for v in old_settings.values()):
        raise ValueError(f'{path} keeps its settings in a layout this version does not know '
                         '(not one dict per task); move it away or write to another --out')
    if not isinstance(records, list) or not all(isinstance(r, dict) and 'task' in r
                                                for r in records):
        raise ValueError(f'{path} keeps its records in a layout this version does not know '
                         '(not a list of task records)')
    # records from before each kept its own settings were all run with their task's
    return [{**r, 'settings': r.get('settings', old_settings.get(r['task'], {}))}
            for r in records]


def write_results(records: list[dict[str, Any]], settings: dict[str, dict[str, Any]] | None,
                  out: str) -> list[dict[str, Any]]:
    """Merge ``records`` into ``<out>/quality.json`` and rewrite ``quality.md`` (atomically).

    ``settings`` are per task (the command's), or None for records that carry their own
    (:func:`merge_files`); each record keeps its own copy, so tasks,
    methods and settings can be run by separate commands (and machines) into one table, every
    row described and graded by what it was run with. A record of the same task, method and
    settings (:func:`experiment`) as an earlier one is pooled with it when their seeds are
    disjoint (:func:`pool`) and replaces it otherwise (said, with the seeds dropped); one of
    other settings is a row of its own. Returns ``records`` as written.

    Raises:
        ValueError: ``quality.json`` is of a layout this does not know (named; nothing is
            written, so its records are not lost).
    """
    path = os.path.join(out, 'quality.json')
    old_records = recorded(load_results(path) or {}, path)
    if settings is not None:
        records = [{**r, 'settings': {**settings.get(r['task'], {}), 'seeds': r['seeds']}}
                   for r in records]
    earlier = {experiment(r): r for r in old_records}
    written: dict[str, dict[str, Any]] = {}
    for r in records:               # in order: a later record pools with an earlier one
        before = earlier.get(experiment(r))
        if before is not None and _poolable(before, r):
            r = pool(before, r)
        elif before is not None and not set(before['seeds']) <= set(r['seeds']):
            print(f"{PROG}: {r['task']} {r['method']}: seeds {r['seeds']} replace the "
                  f"recorded seeds {before['seeds']} of the same settings"
                  + (' (another network size)' if before['params'] != r['params'] else ''),
                  flush=True)
        earlier[experiment(r)] = written[experiment(r)] = r
    merged = merge_records(old_records, list(written.values()), experiment)
    merged.sort(key=lambda r: (_task_order(r['task']), _method_order(r['method'])))
    write_files(out, {'quality.json': json.dumps({'records': merged}, indent=2) + '\n',
                      'quality.md': _markdown(merged)})
    return list(written.values())


def merge_files(paths: list[str], out: str) -> list[dict[str, Any]]:
    """Fold the records of the quality results in ``paths`` into ``<out>``'s table.

    Each record keeps the settings it was run with, so it pools with the table's records of
    the same experiment and other seeds, and is a row of its own otherwise. Returns the
    records as written.

    Raises:
        ValueError: a file is missing, not a quality results file, or ``out``'s own file.
    """
    target = os.path.realpath(os.path.join(out, 'quality.json'))
    records = []
    for path in paths:
        if os.path.realpath(path) == target:
            raise ValueError(f'{path} is the table merged into (--out); name another file')
        data = load_results(path)
        if data is None or not data.get('records'):
            raise ValueError(f'{path}: no quality records there (an energyflow-eval '
                             'quality.json is expected)')
        records += recorded(data, path)
    return write_results(records, None, out)


def _task_order(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def _method_order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def _evaluate_task(task: str, args: argparse.Namespace, common: dict[str, Any]) -> None:
    """Train and evaluate every method on ``task``; the results files grow after each."""
    configs = _task_configs(task, args)
    # the observation these runs see: every method gets the command's task_kwargs
    info = task_info(task, **next(iter(configs.values())).task_kwargs)
    for method, cfg in configs.items():
        runs, seeds = [], list(range(args.first_seed, args.first_seed + args.seeds))
        for seed in seeds:
            out_dir = os.path.join(args.runs_dir, common['mode'], task, method, f'seed{seed}')
            runs.append(run_one(dataclasses.replace(cfg, seed=seed, out_dir=out_dir)))
        record = aggregate(task, method, seeds, runs, info.metric_name)
        print(f"  {task:<12} {method:<11} success {record['success_mean']:.3f} ± "
              f"{record['success_std']:.3f}  {info.metric_name} {record['metric_mean']:.3f}  "
              f"params {record['params']:,}  train {record['train_s']:.1f} s  "
              f"infer {record['infer_ms']:.2f} ms", flush=True)
        settings = {**common, 'episodes': cfg.eval.episodes, 'device': cfg.device,
                    'steps': cfg.optim.steps, 'observation': list(info.obs_names),
                    'config_sha256': config_digest(cfg), 'task_revision': info.revision}
        written = write_results([record], {task: settings}, args.out)[0]
        if written['seeds'] != seeds:
            print(f"  {'':<12} {'':<11} pooled with the recorded seeds: seeds "
                  f"{written['seeds']}, success {written['success_mean']:.3f} ± "
                  f"{written['success_std']:.3f}  {info.metric_name} "
                  f"{written['metric_mean']:.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: train and evaluate the grid, print a line per record, write the results."""
    args = _parse(argv)
    if args.merge:
        try:
            written = merge_files(args.merge, args.out)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        for r in written:
            print(f"  {r['task']:<12} {r['method']:<11} seeds {r['seeds']}  "
                  f"{r['metric_name']} {r['metric_mean']:.3f}", flush=True)
        print(f"wrote {os.path.join(args.out, 'quality.md')} and quality.json")
        return 0
    common = {'mode': 'smoke' if args.smoke else 'full',
              'seeds': list(range(args.first_seed, args.first_seed + args.seeds)),
              'reference': args.reference, 'overrides': list(args.overrides),
              'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
              'torch': torch.__version__}
    print(f'{PROG}: {len(args.tasks)} task(s) x {len(args.methods)} method(s) x '
          f'{args.seeds} seed(s) ({common["mode"]})', flush=True)
    try:
        load_results(os.path.join(args.out, 'quality.json'))  # unreadable: say so before work
        for task in args.tasks:
            _evaluate_task(task, args, common)
    except (ConfigError, DemoError, TrainError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(args.out, 'quality.md')} and quality.json")
    return 0


if __name__ == '__main__':
    sys.exit(main())
