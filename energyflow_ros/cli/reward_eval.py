"""``energyflow-reward-eval``: is the reward extracted from an energy model good enough for RL?

Two parts, per task (each task needs an exported EnergyFlow model, ``--model task=path``):

1. Reward checks (seconds to minutes): Spearman correlation of the extracted reward with true
   progress over rollouts from expert to failing, and how often the expert's chunk outranks
   perturbed chunks in the same state (``energyflow_ros/rl/reward_checks.py``), for every
   reward variant.
2. Downstream RL (hours on a CPU): SAC on the extracted reward and on the true reward, GAIL and
   AIRL (``imitation``) on the same demonstrations, equal environment steps, several seeds
   (``energyflow_ros/rl/train.py``).

Results: ``<out>/reward.json`` ({settings, checks, rl}) and ``<out>/reward.md``.

    energyflow-reward-eval --smoke                     # seconds: checks the pipeline
    energyflow-reward-eval --tasks obstacles2d --no-rl  # only the reward checks
    energyflow-reward-eval                              # everything (long)
"""

from __future__ import annotations

import os

# imitation's round loop uses tqdm; its environment switch is read when tqdm is imported.
os.environ.setdefault('TQDM_DISABLE', '1')

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from energyflow_ros.cli.results_files import (  # noqa: E402
    load_results, merge_records, write_files,
)
from energyflow_ros.rl.chunk_env import ChunkEnvConfig, chunk_scale  # noqa: E402
from energyflow_ros.rl.reward_checks import check_rewards  # noqa: E402
from energyflow_ros.rl.rollouts import expert_trajectories  # noqa: E402
from energyflow_ros.rl.train import (  # noqa: E402
    evaluate_agent, REWARD_SOURCES, SACConfig, scaled_energy_reward, train_agent,
)
from energyflow_ros.runtime import EnergyReward, load_model  # noqa: E402
from energyflow_ros.runtime.model_format import ModelMetadata  # noqa: E402
from energyflow_ros.runtime.onnx_model import ModelLoadError, OnnxModel  # noqa: E402
from energyflow_ros.runtime.reward import REWARD_VARIANTS  # noqa: E402
from energyflow_ros.sim.demos import collect_demos  # noqa: E402
from energyflow_ros.sim.registry import task_info  # noqa: E402

PROG = 'energyflow-reward-eval'
DEFAULT_GAMMA = SACConfig().gamma   # records written before gamma was a setting used it
LEGACY_TRAIN_FREQ = 2   # records written before the update rate was a setting used it
TASK_TICKS = {'obstacles2d': 60, 'pusht': 300}   # fixed episode length of the RL environment
# Velocity segments per chunk in the RL action (chunk_env.py): obstacles2d's expert walks
# straight legs, one velocity per 0.8 s chunk; Push-T's turns within a 1.6 s chunk.
TASK_KNOTS = {'obstacles2d': 1, 'pusht': 2}
DEFAULT_MODELS = {'obstacles2d': 'models/obstacles2d_energyflow.onnx',
                  'pusht': 'outputs/reward_models/pusht_energyflow/model.onnx'}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0])
    parser.add_argument('--tasks', help='comma-separated tasks (default: obstacles2d,pusht; '
                                        '--smoke: obstacles2d)')
    parser.add_argument('--model', action='append', default=[], metavar='TASK=PATH',
                        help=f'exported EnergyFlow model per task (defaults: {DEFAULT_MODELS})')
    parser.add_argument('--rl-variant', default='policy_value', choices=REWARD_VARIANTS,
                        help='reward variant SAC is trained on')
    parser.add_argument('--sigmas', default='min,rank',
                        help="noise scales the checks evaluate the energy at: 'min' (the "
                             "model's reward_sigma, sigma_min), 'rank' (the sampler's ranking "
                             'sigma) or numbers')
    parser.add_argument('--rl-sigma', default='rank', help='noise scale of the RL reward')
    parser.add_argument('--seeds', type=int, default=3, help='RL seeds per reward source')
    parser.add_argument('--gamma', type=float, default=0.99,
                        help='SAC discount per chunk step, the same for every reward source')
    parser.add_argument('--train-freq', type=int, default=SACConfig().train_freq,
                        help='environment steps per SAC update, the same for every reward '
                        'source (default: one update per step, as stable-baselines3\'s; '
                        'records without it ran at 2)')
    parser.add_argument('--env-steps', type=int, default=20000,
                        help='environment (chunk) steps per RL run')
    parser.add_argument('--eval-episodes', type=int, default=30)
    parser.add_argument('--demo-episodes', type=int, default=200,
                        help='expert episodes given to GAIL/AIRL (the EBM saw 200)')
    parser.add_argument('--check-rollouts', type=int, default=20,
                        help='rollouts per policy family in the reward checks')
    parser.add_argument('--sources', default=','.join(REWARD_SOURCES),
                        help='comma-separated RL reward sources')
    parser.add_argument('--rl-tasks', help='tasks that get the RL part (default: all tasks)')
    parser.add_argument('--no-rl', action='store_true', help='only the reward checks')
    parser.add_argument('--no-checks', action='store_true', help='only the RL part')
    parser.add_argument('--smoke', action='store_true', help='tiny settings for a CI check')
    parser.add_argument('--out', help='where results go (default: benchmarks/results; '
                                      '--smoke: outputs/reward_smoke, never the committed files)')
    args = parser.parse_args(argv)
    args.out = args.out or ('outputs/reward_smoke' if args.smoke else 'benchmarks/results')
    if not 0.0 <= args.gamma < 1.0:
        parser.error(f'--gamma {args.gamma}: expected 0 <= gamma < 1')
    tasks = args.tasks or ('obstacles2d' if args.smoke else ','.join(TASK_TICKS))
    args.tasks, args.sources = tasks.split(','), args.sources.split(',')
    args.rl_tasks = [] if args.no_rl else (args.rl_tasks.split(',') if args.rl_tasks
                                           else args.tasks)
    models = dict(DEFAULT_MODELS)
    for item in args.model:
        task, sep, path = item.partition('=')
        if not sep:
            parser.error(f'--model {item!r}: expected TASK=PATH')
        models[task] = path
    args.models = models
    for label, chosen, allowed in (('task', args.tasks, list(TASK_TICKS)),
                                   ('--rl-tasks task', args.rl_tasks, list(TASK_TICKS)),
                                   ('--model task', list(models), list(TASK_TICKS)),
                                   ('source', args.sources, list(REWARD_SOURCES))):
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            parser.error(f'unknown {label}(s) {unknown}; allowed: {allowed}')
    for name in ('seeds', 'train_freq', 'env_steps', 'eval_episodes', 'demo_episodes',
                 'check_rollouts'):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} = {getattr(args, name)}: expected a "
                         'positive integer')
    if args.smoke:
        args.seeds, args.env_steps, args.eval_episodes = 1, 120, 2
        args.demo_episodes, args.check_rollouts = 5, 2
    return args


def env_config(task: str, model: OnnxModel, n_demos: int) -> ChunkEnvConfig:
    """The chunk environment of ``task`` shaped like the model, its scale from expert demos."""
    meta = model.metadata
    if meta.task and meta.task != task:
        raise ValueError(f'{model.path} is a {meta.task} model, given for task {task}')
    obs_names = task_info(task).obs_names  # before collecting the demonstrations (slow)
    if tuple(meta.obs_names) != tuple(obs_names):
        raise ValueError(f'{model.path} observes {list(meta.obs_names)} but task {task} observes '
                         f'{list(obs_names)}: retrain the model on the task as it is now')
    demos = collect_demos(task, n_demos, seed=0)
    scale = chunk_scale(demos, meta.n_obs, meta.horizon)
    return ChunkEnvConfig(task, {}, meta.n_obs, meta.horizon, meta.executed_steps,
                          TASK_TICKS[task], tuple(float(s) for s in scale), TASK_KNOTS[task])


def resolve_sigma(name: str, meta: ModelMetadata) -> float:
    """'min' -> the model's reward_sigma, 'rank' -> its sampler's rank_sigma, else a number."""
    if name == 'min':
        return float(meta.reward_sigma)
    if name == 'rank':
        return float(meta.sampler.rank_sigma)
    try:
        return float(name)
    except ValueError:
        raise ValueError(f"sigma {name!r}: expected 'min', 'rank' or a number") from None


def run_checks(task: str, model: OnnxModel, config: ChunkEnvConfig, n_rollouts: int,
               sigmas: list[str]) -> list[dict[str, Any]]:
    """The reward checks for every variant and noise scale: one record each.

    ``occupancy`` is checked only for a model whose energy is a joint density.
    """
    action_std = np.asarray(model.metadata.action_std)
    variants = [v for v in REWARD_VARIANTS
                if v != 'occupancy' or model.metadata.joint_density]
    keys = [(v, name, resolve_sigma(name, model.metadata)) for name in sigmas
            for v in variants]
    rewards = {f'{v}@{name}': EnergyReward(model, variant=v, sigma=sigma)
               for v, name, sigma in keys}
    results = check_rewards(config, rewards, action_std,
                            list(range(500_000, 500_000 + n_rollouts)),
                            list(range(600_000, 600_000 + n_rollouts)))
    records = []
    for (variant, name, sigma), result in zip(keys, results.values()):
        record = {'task': task, 'model': model.path, 'reward_variant': variant,
                  'sigma_name': name, 'sigma': sigma,
                  'spearman': result.spearman, **dataclasses.asdict(result)}
        print(f'  {task:<12} {variant:<13} sigma {name}={sigma:g}  '
              f'Spearman(progress) {result.spearman:+.3f}  '
              f'Spearman(return) {result.spearman_return:+.3f}  expert outranks '
              f'{result.expert_outranks_pct:.1f} %  ({result.n_rollouts} rollouts, '
              f'{result.n_pairs} pairs)', flush=True)
        records.append(record)
    return records


def run_rl(task: str, model: OnnxModel, config: ChunkEnvConfig, args: argparse.Namespace
           ) -> list[dict[str, Any]]:
    """Every reward source x seed: one aggregated record per source."""
    sac = SACConfig(gamma=args.gamma, train_freq=args.train_freq)
    if args.smoke:
        sac = dataclasses.replace(sac, learning_starts=50)
    demos = expert_trajectories(config, list(range(args.demo_episodes)))
    reward = scaled_energy_reward(model, config, args.rl_variant,
                                  resolve_sigma(args.rl_sigma, model.metadata),
                                  2 if args.smoke else 10)
    records = []
    for source in args.sources:
        runs = []
        for seed in range(args.seeds):
            agent, train_s = train_agent(source, config, args.env_steps, seed, sac,
                                         reward=reward, demos=demos)
            runs.append({**evaluate_agent(agent, config, args.eval_episodes),
                         'train_s': train_s})
        per_seed = {key: [r[key] for r in runs] for key in ('success', 'collision',
                                                             'safe_success')}
        record = {'task': task, 'reward_source': source, 'seeds': list(range(args.seeds)),
                  'env_steps': args.env_steps,
                  **{f'{key}_mean': statistics.fmean(v) for key, v in per_seed.items()},
                  'success_std': statistics.pstdev(per_seed['success']),
                  **{f'{key}_per_seed': v for key, v in per_seed.items()},
                  'progress_mean': statistics.fmean(r['progress'] for r in runs),
                  'train_s': statistics.fmean(r['train_s'] for r in runs),
                  'eval_episodes': args.eval_episodes, 'demo_episodes': args.demo_episodes,
                  'gamma': args.gamma, 'train_freq': args.train_freq}
        if source == 'energyflow':
            record.update(rl_variant=args.rl_variant, rl_sigma=args.rl_sigma, model=model.path)
        print(f"  {task:<12} {source:<11} success {record['success_mean']:.3f} ± "
              f"{record['success_std']:.3f}  progress {record['progress_mean']:.3f}  "
              f"collision {record['collision_mean']:.2f}  without collision "
              f"{record['safe_success_mean']:.3f}  train {record['train_s']:.0f} s",
              flush=True)
        records.append(record)
    return records


def _markdown(result: dict[str, Any]) -> str:
    lines = ['# Extracted reward: checks and downstream RL', '',
             f'Produced by `{PROG}`. What the rows were run with (each record in reward.json '
             'carries its own; the demonstration count sets the RL action scale and the '
             "expert data GAIL and AIRL learn from):", '']
    runs: dict[tuple, list[int]] = {}
    for part, key in (('checks', 0), ('rl', 1)):
        for r in result[part]:
            runs.setdefault((r['task'], *(r.get(k, '?') for k in RUN_KEYS)), [0, 0])[key] += 1
    for (task, mode, demos, machine, version), (n_checks, n_rl) in runs.items():
        lines.append(f'- {task} ({mode}): {demos} demonstrations; {machine}, torch {version} '
                     f'({n_checks} check rows, {n_rl} RL rows).')
    lines += ['', '## Reward checks', '',
              '| task | model | variant | sigma | Spearman (progress) | Spearman (return) | '
              'expert outranks % | by noise scale (% wins) | rollouts | pairs |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for r in result['checks']:
        scales = ', '.join(f'{k}: {v:.1f}' for k, v in r['outranks_by_scale'].items())
        lines.append(f"| {r['task']} | `{r.get('model')}` | {r['reward_variant']} | "
                     f"{r['sigma_name']} = {r['sigma']:g} | {r['spearman']:+.3f} | "
                     f"{r['spearman_return']:+.3f} | {r['expert_outranks_pct']:.1f} | "
                     f"{scales} | {r['n_rollouts']} | {r['n_pairs']} |")
    lines += ['', 'Targets: Spearman >= 0.7, expert outranks >= 90 %.', '',
              '## Downstream RL', '', 'SAC in every row; success and progress are means over '
              'seeds of each seed\'s evaluation episodes (each seed\'s value in brackets '
              'where recorded).', '',
              '| task | reward source | gamma | env steps | steps per update | seeds | '
              'eval episodes | success | final progress | collision | success without '
              'collision | train s |',
              '|---' * 12 + '|']
    for r in result['rl']:
        source = r['reward_source']
        if source == 'energyflow':
            source += (f" (`{r.get('rl_variant')}` at sigma {r.get('rl_sigma')}"
                       + (f", `{r['model']}`" if r.get('model') else '') + ')')
        lines.append(f"| {r['task']} | {source} | {r.get('gamma', DEFAULT_GAMMA)} | "
                     f"{r['env_steps']} | {r.get('train_freq', LEGACY_TRAIN_FREQ)} | "
                     f"{len(r['seeds'])} | "
                     f"{r.get('eval_episodes')} | "
                     f"{r['success_mean']:.3f} ± {r['success_std']:.3f}{_per_seed(r)} | "
                     f"{r['progress_mean']:.3f} | "
                     f"{r['collision_mean']:.2f}{_per_seed(r, 'collision_per_seed')} | "
                     f"{_safe_success(r)} | "
                     f"{r['train_s']:.0f} |")
    lines += ['', '## Targets', '', 'Reward checks: Spearman >= 0.7 against progress and the '
              'expert outranking perturbed chunks >= 90 %. RL: the best extracted reward '
              "reaches >= 0.8 x the true reward's success and beats GAIL and AIRL in the same "
              'budget (success is the mean over seeds).', '', *target_status(result)]
    return '\n'.join(lines) + '\n'


SPEARMAN_TARGET, OUTRANKS_TARGET, RL_RATIO_TARGET = 0.7, 90.0, 0.8


def target_status(result: dict[str, Any]) -> list[str]:
    """Lines saying, per task, whether the issue's targets are met and by which records.

    Checks: some reward (variant, sigma, model) with Spearman >= 0.7 against progress and the
    expert outranking perturbed chunks >= 90 % of the time. RL, within one budget (discount,
    environment steps, update rate): the best extracted reward's success >= 0.8 x the true
    reward's and above GAIL's and AIRL's.
    """
    lines = []
    for task in sorted({r['task'] for r in result['checks'] + result['rl']}):
        checks = [r for r in result['checks'] if r['task'] == task]
        good = [r for r in checks if r['spearman'] >= SPEARMAN_TARGET
                and r['expert_outranks_pct'] >= OUTRANKS_TARGET]
        best = max(good or checks, key=lambda r: r['spearman'], default=None)
        if best is None:
            verdict = 'no checks run'
        else:
            verdict = ('**met**' if good else '**missed**') + (
                f" ({len(good)} of {len(checks)} rows; " if good else ' (best ') + (
                f"{best['reward_variant']} at sigma {best['sigma_name']}, "
                f"`{best.get('model')}`: Spearman {best['spearman']:+.3f}, expert outranks "
                f"{best['expert_outranks_pct']:.1f} %)")
        lines.append(f'- {task}, reward checks: {verdict}.')
        lines += [f'- {task}, RL at gamma {budget[0]}, {budget[1]} steps, {budget[2]} per '
                  f'update: {text}.' for budget, text in _rl_status(task, result['rl'])]
    return lines


def _rl_status(task: str, records: list[dict[str, Any]]) -> list[tuple[tuple, str]]:
    """Per budget of ``task``: the RL verdict on success, and on success without collision
    where every source recorded it (obstacles2d: reaching the goal through an obstacle)."""
    budgets: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r['task'] == task:
            budgets.setdefault((r.get('gamma', DEFAULT_GAMMA), r['env_steps'],
                                r.get('train_freq', LEGACY_TRAIN_FREQ)), []).append(r)
    out = []
    for budget, rows in sorted(budgets.items()):
        missing = [s for s in ('energyflow', 'true', 'gail', 'airl')
                   if all(r['reward_source'] != s for r in rows)]
        if missing:
            out.append((budget, f"not comparable ({', '.join(missing)} not run)"))
            continue
        texts = [_rl_verdict(rows, key, label) for key, label in (
            ('success_mean', 'success'), ('safe_success_mean', 'success without collision'))
            if all(key in r for r in rows)]
        out.append((budget, '; '.join(texts)))
    return out


def _rl_verdict(rows: list[dict[str, Any]], key: str, label: str) -> str:
    best = {s: max(r[key] for r in rows if r['reward_source'] == s)
            for s in ('energyflow', 'true', 'gail', 'airl')}
    ours = best['energyflow']
    misses = [f"{ours:.3f} < {RL_RATIO_TARGET} x true {best['true']:.3f}"
              ] if ours < RL_RATIO_TARGET * best['true'] else []
    misses += [f'not above {s} {best[s]:.3f}' for s in ('gail', 'airl') if not ours > best[s]]
    if best['true'] <= 0.0:
        misses.append('the true reward reaches none in this budget either')
    return (f"{label} **{'missed' if misses else 'met'}**: extracted {ours:.3f}, true "
            f"{best['true']:.3f}, GAIL {best['gail']:.3f}, AIRL {best['airl']:.3f}"
            + (f" ({'; '.join(misses)})" if misses else ''))


def _safe_success(record: dict[str, Any]) -> str:
    """Success without collision, or '-' for records written before it was measured."""
    if 'safe_success_mean' not in record:
        return '-'
    return (f"{record['safe_success_mean']:.3f}"
            f"{_per_seed(record, 'safe_success_per_seed')}")


def _per_seed(record: dict[str, Any], key: str = 'success_per_seed') -> str:
    """' (1.00 / 0.95 / 0.00)' when the record has per-seed values (older ones do not)."""
    values = record.get(key)
    return f" ({' / '.join(f'{v:.2f}' for v in values)})" if values else ''


def _order(name: str) -> int:
    names = [*REWARD_VARIANTS, *REWARD_SOURCES]
    return names.index(name) if name in names else len(names)


# What every record carries about the run that made it (older records take their task's
# settings when read): smoke and full runs, and runs on other demonstration sets, are
# different rows, never one replacing the other.
RUN_KEYS = ('mode', 'demo_episodes', 'machine', 'torch')


def _check_key(record: dict[str, Any]) -> tuple:
    return (record['task'], record['reward_variant'], record['sigma_name'], record.get('model'),
            record.get('mode'), record.get('demo_episodes'))


def _rl_key(record: dict[str, Any]) -> tuple:
    budget = (record.get('gamma', DEFAULT_GAMMA), record.get('env_steps'),
              record.get('train_freq', LEGACY_TRAIN_FREQ), record.get('mode'),
              record.get('demo_episodes'))
    if record['reward_source'] != 'energyflow':
        return record['task'], record['reward_source'], *budget
    return (record['task'], 'energyflow', record.get('rl_variant'), record.get('rl_sigma'),
            record.get('model'), *budget)


def write_results(result: dict[str, Any], out: str) -> None:
    """Merge ``result`` into ``<out>/reward.json`` and rewrite ``reward.md`` (atomically).

    A record replaces an earlier one with the same task, variant, sigma and model (checks) or
    task, reward source, discount, environment steps and update rate (RL; for ``energyflow``
    also its variant, sigma and model), both also of the same mode and demonstration count
    (:data:`RUN_KEYS`); the others are kept, so tasks, sources, reward models and budgets can
    be run by separate commands into the same folder. Every record carries the settings it
    was run with (:data:`RUN_KEYS` are added here from ``result['settings']``).

    Raises:
        ValueError: ``reward.json`` is of a layout this does not know (named; nothing is
            written, so its records are not lost).
    """
    path = os.path.join(out, 'reward.json')
    old = load_results(path) or {'settings': {}, 'checks': [], 'rl': []}
    settings = old.get('settings')
    if not isinstance(settings, dict) or not all(isinstance(v, dict)
                                                 for v in settings.values()):
        raise ValueError(f'{path} keeps its settings in a layout this version does not know '
                         '(not one dict per task); move it away or write to another --out')

    def stamped(records: list[dict[str, Any]], sources: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**{k: sources.get(r['task'], {}).get(k) for k in RUN_KEYS
                    if k in sources.get(r['task'], {})}, **r} for r in records]

    merged: dict[str, Any] = {'settings': {**settings, **result['settings']}}
    for key, ident in (('checks', _check_key), ('rl', _rl_key)):
        merged[key] = merge_records(stamped(old.get(key, []), settings),
                                    stamped(result[key], result['settings']), ident)
        merged[key].sort(key=lambda r: (r['task'], r.get('sigma_name', ''),
                                        _order(r.get('reward_variant') or r['reward_source'])))
    write_files(out, {'reward.json': json.dumps(merged, indent=2) + '\n',
                      'reward.md': _markdown(merged)})


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the checks (and RL), print a line per record, write the results."""
    args = _parse(argv)
    torch.set_num_threads(1)
    common = {'mode': 'smoke' if args.smoke else 'full', 'rl_variant': args.rl_variant,
              'rl_sigma': args.rl_sigma, 'sigmas': args.sigmas,
              'seeds': list(range(args.seeds)), 'env_steps': args.env_steps,
              'eval_episodes': args.eval_episodes, 'demo_episodes': args.demo_episodes,
              'gamma': args.gamma, 'train_freq': args.train_freq,
              'check_rollouts': args.check_rollouts,
              'machine': f'{platform.machine()}, {os.cpu_count()} CPUs',
              'torch': torch.__version__}
    print(f'{PROG}: tasks {args.tasks} ({common["mode"]})', flush=True)
    try:
        load_results(os.path.join(args.out, 'reward.json'))  # unreadable: say so before work
        for task in args.tasks:
            path = args.models[task]
            result: dict[str, Any] = {'settings': {task: {**common, 'model': path,
                                                          'rl': task in args.rl_tasks}},
                                      'checks': [], 'rl': []}
            model = load_model(path)
            config = env_config(task, model, args.demo_episodes)
            if not args.no_checks:
                result['checks'] = run_checks(task, model, config, args.check_rollouts,
                                              args.sigmas.split(','))
                write_results(result, args.out)
            if task in args.rl_tasks:
                result['rl'] = run_rl(task, model, config, args)
                write_results(result, args.out)
    except (ModelLoadError, OSError, ValueError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(args.out, 'reward.md')} and reward.json")
    return 0


if __name__ == '__main__':
    sys.exit(main())
