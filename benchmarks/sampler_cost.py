"""Per-chunk cost at equal quality: EnergyFlow cold / warm-started and R-NCE vs diffusion.

The latency benchmark times untrained graphs; this one asks what a robot pays for a chunk at a
given success. Trained checkpoints of the same task (the quality benchmark's runs: same data,
matched parameter counts) are exported to the ONNX families the policy node runs, with several
step counts K of the cold and the warm-start sampler (EnergyFlow), particle and step counts of
R-NCE's sampler (its learned proposal's draws refined by K Langevin steps and ranked by the
energy) and step counts of DDIM (diffusion), and each setting drives the task in closed loop
through the runtime's :class:`ChunkPlanner` (normalise, fused sampler graph, denormalise)
exactly as the node does. Per setting: success, collisions, the task's headline metric (Push-T:
max coverage) and the planner's wall time per chunk. The task is the checkpoints' own. Episodes
are interleaved across settings (episode i of every setting, then episode i + 1), so background
load on a shared machine hits every setting alike; compare settings by ratios within one run.
Episode i has seed ``--episode-seed`` + i (default: the trainer's evaluation seeds); settings
chosen on one range are checked on another (``--warm-at N:K:t`` names a few warm settings).

Results: ``<out>/sampler_cost-<task>-<device>.json`` (one record per setting with keys
``setting, method, n_particles, cold_steps, warm_steps, warm_extrapolation, warm_start_t (None:
the model's own), episodes, success, collision (None where the task has none), metric_name,
metric_mean, metric_std, plans, p50_ms, p99_ms, mean_ms, warm_plans, warm_mean_ms``) and ``.md``
with the same-run ratios the inference issue asks for: warm vs cold per-chunk cost at equal
quality; the cheapest setting of each energy-based method (EnergyFlow, R-NCE) that reaches the
diffusion baseline's quality vs the cheapest diffusion setting at that quality; and whether any
diffusion setting reaches EnergyFlow's default quality. Equal quality: equal success, no more
collisions (obstacles2d) and, where the task scores more than success (Push-T's max coverage,
BlockPush's p1), an equal headline metric.

Usage: ``python benchmarks/sampler_cost.py [--episodes 50] [--energy CKPT] [--diffusion CKPT]
[--rnce CKPT]`` (``--rnce-settings ''`` leaves R-NCE out; ``make bench-sampler-cost``:
obstacles2d, about 4 minutes on 2 CPU cores; ``make bench-sampler-cost-pusht``: the Push-T
runs, about 30 minutes).
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass, field
import json
import os
import platform
import sys
import tempfile
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from energyflow_ros.cli.results_files import refuse_other_settings, write_files  # noqa: E402
from energyflow_ros.export.onnx_export import export_checkpoint  # noqa: E402
from energyflow_ros.runtime import load_model, ProviderConfig  # noqa: E402
from energyflow_ros.runtime.providers import (  # noqa: E402
    NODE_ALLOW_SPINNING, NODE_INTRA_OP_THREADS,
)
from energyflow_ros.runtime.planner import ChunkPlanner, WARM_EXTRAPOLATION  # noqa: E402
from energyflow_ros.sim.registry import make_task  # noqa: E402
from energyflow_ros.sim.rollout import rollout  # noqa: E402
from energyflow_ros.training.checkpoint import load_checkpoint  # noqa: E402

RUNS = 'outputs/eval_runs/cpu10k/full/obstacles2d'
TRAIN_DEFAULTS = ('make eval ARGS="--tasks obstacles2d --methods energyflow,rnce,diffusion '
                  '--seeds 1 --runs-dir outputs/eval_runs/cpu10k --out outputs/quality_cpu10k '
                  'device=cpu"')
EVAL_SEED = 100_000          # the trainer's evaluation seeds: never a demonstration's
# Headline metrics that grade an episode beyond success (higher is better); obstacles2d's
# path_cost is a cost among successful paths, not a quality gate, so it is only reported.
QUALITY_METRICS = ('max_score', 'max_coverage', 'p1')   # max_coverage: older records
EBM_METHODS = {'energyflow': 'EnergyFlow', 'rnce': 'R-NCE'}     # method -> name in the text


@dataclass
class Setting:
    """One exported sampler configuration and what it measured."""

    name: str
    method: str
    checkpoint: str
    n_particles: int | None
    cold_steps: int
    warm_steps: int | None      # None: cold start every chunk
    extrapolation: float = WARM_EXTRAPOLATION   # warm-start refill speed (0: hold)
    warm_start_t: float | None = None           # EnergyFlow warm-start time (None: trained)
    planner: ChunkPlanner | None = None
    success: list[float] = field(default_factory=list)
    collision: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)
    plan_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)


class PlannerPolicy:
    """The runtime planner as a simulation policy: replans every ``executed_steps`` ticks."""

    def __init__(self, planner: ChunkPlanner, seed: int) -> None:
        meta = planner.metadata
        self.planner, self.seed = planner, seed
        self.n_obs, self.executed = meta.n_obs, meta.executed_steps
        self.times_ms: list[float] = []
        self.warm_ms: list[float] = []
        self.reset()

    def reset(self) -> None:
        """New episode: empty history and queue, cold start, the episode's own noise seed."""
        self.history: deque[np.ndarray] = deque(maxlen=self.n_obs)
        self.queue: deque[np.ndarray] = deque()
        self.planner.reset(self.seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The next action for ``obs`` (raw units)."""
        frame = np.asarray(obs, dtype=np.float64)
        self.history.extend([frame] * (self.n_obs if not self.history else 1))
        if not self.queue:
            plan = self.planner.plan(np.stack(self.history))
            self.times_ms.append(1000.0 * plan.latency_s)
            if plan.warm:
                self.warm_ms.append(1000.0 * plan.latency_s)
            self.queue.extend(plan.actions[: self.executed])
        return self.queue.popleft()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    parser.add_argument('--energy', default=f'{RUNS}/energyflow/seed0/final.pt',
                        help='EnergyFlow checkpoint (trainer output)')
    parser.add_argument('--diffusion', default=f'{RUNS}/diffusion/seed0/final.pt',
                        help='diffusion-policy checkpoint of the same task and data')
    parser.add_argument('--episodes', type=int, default=50, help='episodes per setting')
    parser.add_argument('--episode-seed', type=int, default=EVAL_SEED,
                        help='seed of the first episode (episode i: this + i); another range '
                        'than the default checks settings chosen on the default episodes on '
                        'held-out ones')
    parser.add_argument('--cold-steps', default='20,10,5', help='EnergyFlow cold K values')
    parser.add_argument('--warm-steps', default='5,3,2',
                        help='warm-start K values (first chunk of an episode: cold K=20)')
    parser.add_argument('--hold-steps', default='3',
                        help='warm-start K values also run with the refill holding the last '
                        'action (extrapolation 0), to compare with the default refill')
    parser.add_argument('--warm-extrapolation', type=float, default=WARM_EXTRAPOLATION,
                        help='refill speed of the shifted warm-start chunk')
    parser.add_argument('--ddim-steps', default='10,5,3', help='DDIM step counts')
    parser.add_argument('--particles', type=int, default=16, help='EnergyFlow particles N')
    parser.add_argument('--warm-start-times', default='',
                        help='warm-start K values also run with each of these EnergyFlow '
                        'warm-start times (comma-separated; the model\'s own always runs)')
    parser.add_argument('--warm-particles', default='',
                        help='particle counts N the --warm-start-times settings also run with '
                        '(comma-separated; default: only --particles)')
    parser.add_argument('--lean-warm', default='4:3,4:2,4:1,8:1,4:2:5,2:2:5,2:3:5,1:3:5',
                        help='extra warm-start settings with fewer particles, as N:K or N:K:C '
                        '(C: the cold K of each episode\'s first chunk, default 20; the '
                        'per-chunk cost scales with N x K)')
    parser.add_argument('--warm-at', default='',
                        help='explicit warm-start settings as N:K:t (particles, warm K, '
                        'warm-start time), comma-separated, e.g. 4:3:0.6; unlike '
                        '--warm-start-times, no product with the other lists')
    parser.add_argument('--rnce', default=f'{RUNS}/rnce/seed0/final.pt',
                        help='R-NCE checkpoint of the same task and data')
    parser.add_argument('--rnce-settings', default='32:5,8:1,2:1,32:0,8:0,4:0,2:0',
                        help='R-NCE settings as N:K (proposal draws, Langevin steps; K = 0: '
                        'the draws are only ranked by the energy); empty: no R-NCE settings')
    parser.add_argument('--threads', type=int, default=NODE_INTRA_OP_THREADS,
                        help="onnxruntime intra-op threads (default: the policy node's)")
    parser.add_argument('--out', default='benchmarks/results')
    parser.add_argument('--tag', default='',
                        help='results file suffix: sampler_cost-<task>-<tag>-<device>.md (runs '
                        'of other checkpoints or episodes keep their own files)')
    parser.add_argument('--force', action='store_true',
                        help='replace a results file of other settings (refused otherwise)')
    args = parser.parse_args(argv)
    try:
        _lean_warm(args.lean_warm)
        _warm_at(args.warm_at)
        _rnce_settings(args.rnce_settings)
        _floats(args.warm_start_times)
        _counts(args.warm_particles, '--warm-particles', ('N',))
    except ValueError as err:
        parser.error(str(err))
    needed = ['energy'] + ['diffusion'] * bool(_ints(args.ddim_steps)) + \
        ['rnce'] * bool(_rnce_settings(args.rnce_settings))
    for name in needed:
        if not os.path.exists(getattr(args, name)):
            parser.error(f'--{name} {getattr(args, name)}: no such checkpoint (pass one, or '
                         f'train the default ones: {TRAIN_DEFAULTS})')
    if args.episodes < 1:
        parser.error('--episodes must be >= 1')
    if args.episode_seed < 0:
        parser.error(f'--episode-seed {args.episode_seed}: expected a seed >= 0')
    if args.threads < 1:
        parser.error(f'--threads {args.threads}: expected at least 1 thread')
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(',') if v]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(',') if v]
    except ValueError:
        raise ValueError(f'--warm-start-times: {text!r} is not a list of numbers') from None


def _counts(text: str, option: str, forms: tuple[str, ...],
            least: tuple[int, ...] = (1, 1, 1)) -> list[tuple[int, ...]]:
    """Comma-separated items of colon-separated integers, one of ``forms`` each, every part
    at least its entry of ``least``."""
    items = []
    lengths = {form.count(':') + 1 for form in forms}
    for item in (v for v in text.split(',') if v):
        parts = item.split(':')
        if len(parts) not in lengths or not all(p.isdigit() and int(p) >= low
                                                for p, low in zip(parts, least)):
            kind = 'positive' if min(least) else 'non-negative'
            raise ValueError(f'{option}: {item!r} is not {" or ".join(forms)} with {kind} '
                             'integers' + ('' if min(least) else ' (N >= 1)'))
        items.append(tuple(map(int, parts)))
    return items


def _lean_warm(text: str) -> list[tuple[int, ...]]:
    """``--lean-warm`` items as (N, warm K, cold K)."""
    return [(*item, 20)[:3] for item in _counts(text, '--lean-warm', ('N:K', 'N:K:C'))]


def _warm_at(text: str) -> list[tuple[int, int, float]]:
    """``--warm-at`` items as (N, warm K, warm-start time)."""
    items = []
    for item in (v for v in text.split(',') if v):
        parts = item.split(':')
        try:
            n, k, t = int(parts[0]), int(parts[1]), float(parts[2])
            ok = len(parts) == 3 and n >= 1 and k >= 1 and 0.0 < t <= 1.0
        except (ValueError, IndexError):
            ok = False
        if not ok:
            raise ValueError(f'--warm-at: {item!r} is not N:K:t with positive integers N, K '
                             'and a warm-start time t in (0, 1]')
        items.append((n, k, t))
    return items


def _rnce_settings(text: str) -> list[tuple[int, ...]]:
    """``--rnce-settings`` items as (N, K); K = 0: proposal draws ranked, no Langevin step."""
    return _counts(text, '--rnce-settings', ('N:K',), least=(1, 0))


def build_settings(args: argparse.Namespace) -> list[Setting]:
    """Every setting to run, cheapest-last within each family."""
    settings = [Setting(f'energyflow cold K={k}', 'energyflow', args.energy, args.particles, k,
                        None) for k in _ints(args.cold_steps)]
    settings += [Setting(f'energyflow warm K={k}', 'energyflow', args.energy, args.particles,
                         20, k, args.warm_extrapolation) for k in _ints(args.warm_steps)]
    settings += [Setting(f'energyflow warm K={k} hold', 'energyflow', args.energy,
                         args.particles, 20, k, 0.0) for k in _ints(args.hold_steps)]
    settings += [Setting(f'energyflow warm K={k} N={n}' + (f' cold K={c}' if c != 20 else ''),
                         'energyflow', args.energy, n, c, k, args.warm_extrapolation)
                 for n, k, c in _lean_warm(args.lean_warm)]
    timed = [(n, k, t) for n in _ints(args.warm_particles) or [args.particles]
             for t in _floats(args.warm_start_times) for k in _ints(args.warm_steps)]
    settings += [Setting(f'energyflow warm K={k} t={t:g}' + (f' N={n}' if n != args.particles
                                                             else ''),
                         'energyflow', args.energy, n, 20, k, args.warm_extrapolation, t)
                 for n, k, t in timed + _warm_at(args.warm_at)]
    settings += [Setting(f'rnce N={n} K={k}', 'rnce', args.rnce, n, k, None)
                 for n, k in _rnce_settings(args.rnce_settings)]
    settings += [Setting(f'diffusion DDIM-{k}', 'diffusion', args.diffusion, None, k, None)
                 for k in _ints(args.ddim_steps)]
    return settings


def export_settings(settings: list[Setting], folder: str, threads: int) -> None:
    """Export each setting's model family and build its planner.

    Settings whose graphs are the same (one checkpoint, step counts and warm-start time; the
    particle count is a dynamic axis, and refilling is the planner's) share one export, each
    with a session of its own.
    """
    exported: dict[tuple[Any, ...], str] = {}
    for s in settings:
        key = (s.checkpoint, s.cold_steps, s.warm_steps, s.warm_start_t)
        path = exported.get(key)
        if path is None:
            path = exported[key] = os.path.join(folder, f'setting{len(exported)}.onnx')
            export_checkpoint(s.checkpoint, path, n_particles=s.n_particles,
                              n_steps=s.cold_steps, warm_steps=s.warm_steps,
                              warm_start_t=s.warm_start_t)
        # Not spinning, as the node: here it also keeps one setting's idle threads from slowing
        # the next setting's call (the settings alternate).
        model = load_model(path, providers=ProviderConfig(intra_op_threads=threads,
                                                          allow_spinning=NODE_ALLOW_SPINNING))
        s.planner = ChunkPlanner(model, n_particles=s.n_particles,
                                 warm_start=s.warm_steps is not None,
                                 warm_extrapolation=s.extrapolation)


def run(settings: list[Setting], task_name: str, episodes: int,
        first_seed: int = EVAL_SEED) -> str:
    """Episode i (seed ``first_seed + i``) of every setting, then episode i + 1 (interleaved
    against load).

    Returns the task's headline metric name.
    """
    task = make_task(task_name)
    metric_name = task.info.metric_name
    try:
        for episode in range(episodes):
            seed = first_seed + episode
            for s in settings:
                policy = PlannerPolicy(s.planner, seed)
                result = rollout(task, policy, seed)
                s.success.append(float(result['success']))
                s.collision.append(float(result['metrics'].get('collision', np.nan)))
                s.metric.append(float(result['metrics'].get(metric_name, np.nan)))
                s.plan_ms += policy.times_ms
                s.warm_ms += policy.warm_ms
            print(f'episode {episode + 1}/{episodes}: ' + ', '.join(
                f'{s.name} {np.mean(s.success):.2f}' for s in settings), flush=True)
    finally:
        task.close()
    return metric_name


def record(s: Setting, metric_name: str) -> dict[str, Any]:
    """The result record of one setting."""
    times = np.asarray(s.plan_ms)
    metric = np.asarray(s.metric, dtype=np.float64)
    return {'setting': s.name, 'method': s.method, 'n_particles': s.planner.n_particles,
            'cold_steps': s.cold_steps, 'warm_steps': s.warm_steps,
            'warm_extrapolation': s.extrapolation if s.warm_steps else None,
            'warm_start_t': s.warm_start_t,
            'episodes': len(s.success),
            'success': float(np.mean(s.success)),
            'collision': None if np.isnan(s.collision).all() else float(np.nanmean(s.collision)),
            'metric_name': metric_name, 'metric_mean': float(metric.mean()),
            'metric_std': float(metric.std()),
            'plans': int(times.size), 'p50_ms': float(np.percentile(times, 50)),
            'p99_ms': float(np.percentile(times, 99)), 'mean_ms': float(times.mean()),
            'warm_plans': len(s.warm_ms),
            'warm_mean_ms': float(np.mean(s.warm_ms)) if s.warm_ms else None}


def _at_least(a: float, b: float, n: int) -> bool:
    """Rate ``a`` is ``b`` or more, or below by less than one binomial standard error."""
    p = (a + b) / 2
    return a >= b - max(np.sqrt(2 * p * (1 - p) / n), 1.0 / n)


def equal_success(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Success rates within one binomial standard error of their difference (or a >= b)."""
    return _at_least(a['success'], b['success'], min(a['episodes'], b['episodes']))


def equal_collision(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Collision rates within one binomial standard error (or a <= b); True without any."""
    if a.get('collision') is None or b.get('collision') is None:
        return True
    return _at_least(1.0 - a['collision'], 1.0 - b['collision'],
                     min(a['episodes'], b['episodes']))


def equal_metric(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Headline metric within one standard error of the difference of means (or a >= b)."""
    if a.get('metric_name') not in QUALITY_METRICS:
        return True
    n = min(a['episodes'], b['episodes'])
    se = np.sqrt((a['metric_std'] ** 2 + b['metric_std'] ** 2) / n)
    return a['metric_mean'] >= b['metric_mean'] - max(se, 0.01)


def equal_quality(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is as good as ``b``: equal success, no more collisions, and equal headline metric
    where the task grades more than success (Push-T's coverage, BlockPush's p1)."""
    return equal_success(a, b) and equal_collision(a, b) and equal_metric(a, b)


def _quality(r: dict[str, Any]) -> str:
    text = f"success {r['success']:.2f}"
    if r.get('collision') is not None:
        text += f", collision {r['collision']:.2f}"
    if r.get('metric_name') in QUALITY_METRICS:
        text += f", {r['metric_name']} {r['metric_mean']:.3f}"
    return text


def comparisons(recs: list[dict[str, Any]]) -> list[str]:
    """The same-run ratios: warm vs cold default, cheapest EBM at the baseline's quality."""
    cold = next((r for r in recs if r['method'] == 'energyflow' and r['warm_steps'] is None),
                None)
    lines = [] if cold else ['- No cold EnergyFlow setting ran (`--cold-steps`), so there are no '
                             'warm-vs-cold ratios.']
    warm = [r for r in recs if r['warm_steps'] is not None] if cold is not None else []
    for r in warm:
        same = equal_quality(r, cold)
        lines.append(f"- {r['setting']} vs {cold['setting']}: per-chunk cost "
                     f"{cold['mean_ms'] / r['mean_ms']:.2f}x lower (mean; p99 "
                     f"{cold['p99_ms'] / r['p99_ms']:.2f}x; the warm-started chunks alone "
                     f"{cold['mean_ms'] / r['warm_mean_ms']:.2f}x) at {_quality(r)} vs "
                     f"{_quality(cold)} ({'equal' if same else 'lower'} quality).")
    diffusion = [r for r in recs if r['method'] == 'diffusion']
    if diffusion:
        # the first DDIM setting (most steps) sets the quality; the baseline pays what its
        # cheapest setting at that quality costs, so fewer DDIM steps count in its favour too
        ref = diffusion[0]
        base = min((r for r in diffusion if equal_quality(r, ref)), key=lambda r: r['mean_ms'])
        for method, label in EBM_METHODS.items():
            if not any(r['method'] == method for r in recs):
                continue
            ebm = [r for r in recs if r['method'] == method and equal_quality(r, ref)]
            if not ebm:
                lines.append(f"- No {label} setting reached {ref['setting']}'s quality "
                             f"({_quality(ref)}).")
                continue
            best = min(ebm, key=lambda r: r['mean_ms'])
            lines.append(f"- Cheapest {label} setting at {ref['setting']}'s quality "
                         f"({_quality(ref)}): {best['setting']} ({_quality(best)}), "
                         f"{best['mean_ms']:.2f} ms per chunk vs {base['mean_ms']:.2f} ms for "
                         f"the cheapest diffusion setting at that quality ({base['setting']}, "
                         f"{_quality(base)}) = {best['mean_ms'] / base['mean_ms']:.2f}x the "
                         "baseline's cost.")
    if diffusion and cold is not None:
        # and the other way round: what the baseline pays for EnergyFlow's default quality
        at_cold = [r for r in diffusion if equal_quality(r, cold)]
        if at_cold:
            best = min(at_cold, key=lambda r: r['mean_ms'])
            lines.append(f"- Cheapest diffusion setting at {cold['setting']}'s quality "
                         f"({_quality(cold)}): {best['setting']} ({_quality(best)}), "
                         f"{best['mean_ms']:.2f} ms per chunk.")
        else:
            lines.append(f"- No diffusion setting reached {cold['setting']}'s quality "
                         f"({_quality(cold)}).")
    return lines


def markdown(info: dict[str, Any], recs: list[dict[str, Any]], lines: list[str]) -> str:
    """The results table and the ratios."""
    metric = recs[0]['metric_name'].replace('_', ' ')
    out = [f"# Per-chunk cost at equal quality on {info['task']} ({info['device']})", '',
           f"{info['machine']}; torch {info['torch']}, onnxruntime {info['onnxruntime']} "
           f"({info['threads']} intra-op threads); load average {info['load_start']} at start / "
           f"{info['load_end']} at end. Checkpoints: EnergyFlow `{info['energy']}`"
           + (f", diffusion `{info['diffusion']}`" if info.get('diffusion') else '')
           + (f", R-NCE `{info['rnce']}`" if info.get('rnce') else '') +
           f". {info['episodes']} episodes per setting (seeds from "
           f"{info.get('episode_seed', EVAL_SEED)}, interleaved across settings); time = the "
           'runtime planner call (normalise, fused ONNX sampler, denormalise) per chunk.', '',
           f"| setting | N | cold K | warm K | refill | success | collision | {metric} | "
           'plans | p50 ms | p99 ms | mean ms |', '|' + '---|' * 12]
    for r in recs:
        out.append(f"| {r['setting']} | {r['n_particles']} | {r['cold_steps']} | "
                   f"{r['warm_steps'] or '-'} | {_refill(r)} | {r['success']:.2f} | "
                   f"{_rate(r['collision'])} | {r['metric_mean']:.3f} ± {r['metric_std']:.3f} | "
                   f"{r['plans']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                   f"{r['mean_ms']:.2f} |")
    notes = ['Warm settings start each episode cold (K in the cold K column: 20 unless the '
             'setting names another) and every later chunk from the '
             'previous one, shifted by the executed steps, refilled at the end by continuing '
             'its last step at the given fraction of its speed ("hold": 0, the last action '
             'repeated) and re-noised; their mean includes the cold first chunk.',
             "'Equal quality': success within one binomial standard error of the difference (or "
             'higher), collisions within one (or fewer), and, for max coverage and p1, the mean '
             'within one standard error of the difference (or higher); the metric column is '
             "mean ± std over episodes; '-': the task has no collisions.",
             "onnxruntime runs as in the policy node by default (one intra-op thread, no "
             "spinning: a graph call never competes with the control tick for a core); "
             "`--threads` changes the thread count."]
    if info.get('rnce'):
        notes.insert(1, 'R-NCE settings plan every chunk cold: N draws from the learned '
                     'proposal (one proposal-graph call), K Langevin steps of the trained step '
                     'size on all of them, the lowest energy taken; with K = 0 one graph draws '
                     'from the proposal and ranks the draws.')
    return '\n'.join(out + ['', '## Same-run ratios', ''] + lines + ['', '## Notes', ''] +
                     [f'- {n}' for n in notes]) + '\n'


def _rate(value: float | None) -> str:
    return '-' if value is None else f'{value:.2f}'


def _refill(r: dict[str, Any]) -> str:
    extrapolation = r.get('warm_extrapolation')
    return '-' if extrapolation is None else 'hold' if extrapolation == 0 else f'{extrapolation:g}'


def main(argv: list[str] | None = None) -> int:
    """Export, run, write ``sampler_cost-<task>-<device>.json`` / ``.md``."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    task_name = load_checkpoint(args.energy).payload['train_meta']['task']
    tag = f'-{args.tag}' if args.tag else ''
    compared = {k: v for k, v in vars(args).items() if k not in ('out', 'force', 'tag')}
    # a checkpoint no setting uses is not a difference (older files record None for it)
    compared['diffusion'] = args.diffusion if _ints(args.ddim_steps) else None
    compared['rnce'] = args.rnce if _rnce_settings(args.rnce_settings) else None
    if refuse_other_settings('sampler_cost', os.path.join(
            args.out, f'sampler_cost-{task_name}{tag}-cpu.json'), compared, args.force):
        return 2                        # said before the episodes run, not after
    settings = build_settings(args)
    info = {'task': task_name, 'device': 'cpu', 'energy': args.energy,
            'diffusion': compared['diffusion'], 'rnce': compared['rnce'],
            'episodes': args.episodes, 'episode_seed': args.episode_seed,
            'threads': args.threads,
            'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}',
            'torch': torch.__version__, 'onnxruntime': ort.__version__,
            'load_start': [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as folder:
        export_settings(settings, folder, args.threads)
        info['device'] = settings[0].planner.model.provider
        metric_name = run(settings, task_name, args.episodes, args.episode_seed)
    info['load_end'] = [round(v, 2) for v in os.getloadavg()]
    recs = [record(s, metric_name) for s in settings]
    lines = comparisons(recs)
    text = markdown(info, recs, lines)
    stem = f"sampler_cost-{task_name}{tag}-{info['device']}"
    write_files(args.out, {stem + '.json': json.dumps(
        {'info': info, 'settings': compared, 'records': recs, 'comparisons': lines},
        indent=1) + '\n',
        stem + '.md': text})
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
