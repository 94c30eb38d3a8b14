"""Does the extracted reward measure what the task wants? Two checks on held-out rollouts.

1. Correlation with true progress: roll out a family of policies from the expert to clearly
   failing ones (the expert, the expert with growing action noise, the expert stalling part
   way, a straight-at-the-goal driver that hits the obstacles, a random walk), score every
   chunk the policy executed with the extracted reward, and compute the Spearman rank
   correlation between each rollout's mean reward and the progress it achieved
   (:func:`~energyflow_ros.rl.rollouts.rollout_progress`), and also its true return in the
   chunk environment, which charges obstacles2d collisions
   (:func:`~energyflow_ros.rl.rollouts.rollout_return`).
2. Expert outranks perturbed: in every state of held-out expert rollouts, compare the reward
   of the expert's chunk with copies of it perturbed by Gaussian noise of several sizes (in
   units of the demonstrations' action standard deviation); report how often the expert wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy.stats import spearmanr

from energyflow_ros.rl.chunk_env import ChunkEnvConfig
from energyflow_ros.rl.rollouts import (
    chunk_pairs, expert_policy, HoldAfter, NoisyPolicy, RandomWalk, rollout_progress,
    rollout_return, StraightToGoal, tick_rollout,
)
from energyflow_ros.sim.base import Policy, Task
from energyflow_ros.sim.registry import make_task

__all__ = ['BatchReward', 'RewardCheck', 'policy_families', 'check_reward', 'check_rewards']

# (histories (B, n_obs * D), chunks (B, H, A)) raw -> (B,) rewards.
BatchReward = Callable[[np.ndarray, np.ndarray], np.ndarray]
PERTURB_SCALES = (0.05, 0.1, 0.2, 0.5)   # noise std in units of the action std


@dataclass
class RewardCheck:
    """Results of :func:`check_reward` for one task and reward.

    Attributes:
        spearman: rank correlation of rollout mean reward with rollout progress.
        spearman_return: rank correlation of rollout mean reward with rollout true return.
        expert_outranks_pct: % of (state, perturbation) pairs where the expert chunk scores
            higher than the perturbed one, over all scales.
        outranks_by_scale: the same per noise scale.
        families: per policy family: rollouts, mean progress, mean true return, mean reward.
        n_rollouts: rollouts in the correlation.
        n_pairs: comparisons in the outranking check.
    """

    spearman: float
    spearman_return: float
    expert_outranks_pct: float
    outranks_by_scale: dict[str, float] = field(default_factory=dict)
    families: dict[str, dict[str, float]] = field(default_factory=dict)
    n_rollouts: int = 0
    n_pairs: int = 0


def policy_families(task: Task) -> dict[str, Callable[[int], Policy]]:
    """Policies from expert to failing for ``task``, each built from an episode seed."""
    low, high = task.info.action_low[0], task.info.action_high[0]
    span = high - low
    families: dict[str, Callable[[int], Policy]] = {
        'expert': lambda s: expert_policy(task, s)}
    for frac in (0.01, 0.02, 0.04, 0.08):
        families[f'expert+noise{frac:g}'] = (
            lambda s, f=frac: NoisyPolicy(expert_policy(task, s), f * span, s))
    stall = task.info.max_steps // 8
    families['expert_stalls'] = lambda s: HoldAfter(expert_policy(task, s), stall)
    if task.info.name == 'obstacles2d':
        families['straight_to_goal'] = lambda s: StraightToGoal()
    families['random_walk'] = lambda s: RandomWalk(0.03 * span, s, low, high)
    return families


def _correlation(task: Task, config: ChunkEnvConfig, rewards: dict[str, BatchReward],
                 seeds: list[int]) -> dict[str, tuple[float, float, dict[str, Any]]]:
    """Per reward: Spearman with progress, with return, and per-family means."""
    n_ticks = config.n_chunks * config.executed_steps
    progress, returns = [], []
    scores: dict[str, list[float]] = {name: [] for name in rewards}
    family_of: list[str] = []
    for family, make in policy_families(task).items():
        for seed in seeds:
            run = tick_rollout(task, make(seed), seed, n_ticks)
            hist, chunks, _ = chunk_pairs(run, config.n_obs, config.horizon,
                                          config.executed_steps)
            for name, reward in rewards.items():
                scores[name].append(float(np.mean(reward(hist, chunks))))
            returns.append(rollout_return(task.info.name, run, config.executed_steps))
            progress.append(rollout_progress(task.info.name, run))
            family_of.append(family)
    fams = np.array(family_of)
    out = {}
    for name, values in scores.items():
        v = np.array(values)
        families = {f: {'rollouts': int(np.sum(fams == f)),
                        'progress': float(np.mean(np.array(progress)[fams == f])),
                        'true_return': float(np.mean(np.array(returns)[fams == f])),
                        'mean_reward': float(np.mean(v[fams == f]))}
                    for f in dict.fromkeys(family_of)}
        out[name] = (float(spearmanr(v, progress).statistic),
                     float(spearmanr(v, returns).statistic), families)
    return out


def _outranking(task: Task, config: ChunkEnvConfig, rewards: dict[str, BatchReward],
                seeds: list[int], action_std: np.ndarray
                ) -> dict[str, tuple[dict[str, float], int]]:
    """Per reward: % wins of the expert chunk per noise scale, and the comparisons made."""
    n_ticks = config.n_chunks * config.executed_steps
    rng = np.random.default_rng(0)
    wins: dict[str, dict[str, list[np.ndarray]]] = {
        name: {f'{s:g}': [] for s in PERTURB_SCALES} for name in rewards}
    for seed in seeds:
        run = tick_rollout(task, expert_policy(task, seed), seed, n_ticks)
        # Score only the chunks before the goal is reached: afterwards the expert idles.
        moving = np.flatnonzero(run.progress[:-1] < run.progress.max() - 1e-6)
        hist, chunks, starts = chunk_pairs(run, config.n_obs, config.horizon,
                                           config.executed_steps)
        keep = np.isin(starts, moving) if len(moving) else np.ones(len(starts), bool)
        hist, chunks = hist[keep], chunks[keep]
        noisy = {f'{s:g}': chunks + rng.normal(size=chunks.shape) * s * action_std
                 for s in PERTURB_SCALES}
        for name, reward in rewards.items():
            expert = reward(hist, chunks)
            for scale, perturbed in noisy.items():
                wins[name][scale].append(expert > reward(hist, perturbed))
    out = {}
    for name, by_scale in wins.items():
        pct = {k: 100.0 * float(np.mean(np.concatenate(v))) for k, v in by_scale.items()}
        out[name] = (pct, sum(len(np.concatenate(v)) for v in by_scale.values()))
    return out


def check_rewards(config: ChunkEnvConfig, rewards: dict[str, BatchReward],
                  action_std: np.ndarray, correlation_seeds: list[int],
                  outrank_seeds: list[int]) -> dict[str, RewardCheck]:
    """Run both checks (module doc) of every reward on ``config``'s task, on the same rollouts.

    Args:
        config: the chunk environment the rollouts are cut for.
        rewards: name -> batched reward of raw (history, chunk) pairs.
        action_std: (A,) the demonstrations' per-dimension action standard deviation.
        correlation_seeds: episode seeds of every policy family.
        outrank_seeds: episode seeds of the expert rollouts whose states are perturbed.
    """
    task = make_task(config.task, **config.task_kwargs)
    try:
        corr = _correlation(task, config, rewards, correlation_seeds)
        ranks = _outranking(task, config, rewards, outrank_seeds, np.asarray(action_std))
    finally:
        task.close()
    results = {}
    for name in rewards:
        rho, rho_return, families = corr[name]
        by_scale, n_pairs = ranks[name]
        n_rollouts = sum(f['rollouts'] for f in families.values())
        results[name] = RewardCheck(rho, rho_return, float(np.mean(list(by_scale.values()))),
                                    by_scale, families, n_rollouts, n_pairs)
    return results


def check_reward(config: ChunkEnvConfig, reward: BatchReward, action_std: np.ndarray,
                 correlation_seeds: list[int], outrank_seeds: list[int]) -> RewardCheck:
    """:func:`check_rewards` for a single reward."""
    return check_rewards(config, {'reward': reward}, action_std, correlation_seeds,
                         outrank_seeds)['reward']
