"""Demonstrations from the scripted experts, as a :class:`DemoSet`.

Attempt i runs the task and the expert with seed ``seed + i``, so a collection is fully
determined by ``(task_name, n_episodes, seed, only_success, task_kwargs)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from energyflow_ros.data.dataset import DemoError, DemoSet
from energyflow_ros.sim.base import TaskInfo
from energyflow_ros.sim.registry import make_expert, make_task
from energyflow_ros.sim.rollout import ExpertPolicy, rollout

__all__ = ['collect_demos', 'expert_success_rate']


def _expert_episodes(task_name: str, seed: int, max_attempts: int, wanted: int,
                     only_success: bool,
                     task_kwargs: dict[str, Any] | None, episode_ticks: int | None = None,
                     ) -> tuple[list[dict[str, Any]], int, int, TaskInfo]:
    """Run expert episodes with seeds ``seed, seed + 1, ...`` until enough are kept.

    Returns:
        kept: the rollouts kept (all, or only the successful ones).
        attempts: episodes run.
        successes: successful episodes among them.
        info: the task's description.
    """
    task = make_task(task_name, **(task_kwargs or {}))
    kept: list[dict[str, Any]] = []
    attempts = successes = 0
    try:
        policy = ExpertPolicy(make_expert(task))
        while len(kept) < wanted and attempts < max_attempts:
            episode_seed = seed + attempts
            policy.seed = episode_seed
            result = rollout(task, policy, episode_seed, fixed_ticks=episode_ticks)
            attempts += 1
            successes += int(result['success'])
            if (result['success'] or not only_success) and result['n_steps'] > 0:
                kept.append(result)
    finally:
        task.close()
    return kept, attempts, successes, task.info


def collect_demos(task_name: str, n_episodes: int, seed: int = 0, only_success: bool = True,
                  max_attempts: int | None = None,
                  task_kwargs: dict[str, Any] | None = None,
                  episode_ticks: int | None = None) -> DemoSet:
    """Record ``n_episodes`` episodes of a task's scripted expert.

    Args:
        task_name: registry name of the task.
        n_episodes: number of episodes to return.
        seed: seed of the first attempt; attempt i uses ``seed + i`` for task and expert.
        only_success: keep only episodes that met the task's success criterion.
        max_attempts: give up after this many episodes (default: ``2 * n_episodes + 10``
            when only successes are kept, else ``n_episodes``).
        task_kwargs: keyword arguments for the task's constructor.
        episode_ticks: record every episode for exactly this many ticks, the expert going on
            (holding at its goal) after success, instead of stopping at success: the
            occupancy of a fixed-horizon episode, which is what an RL agent in
            :mod:`energyflow_ros.rl.chunk_env` is compared with.

    Returns:
        A validated DemoSet; ``meta`` holds ``task``, ``task_kwargs``, ``seed``,
        ``control_hz``, ``max_steps``, ``source``, ``n_attempts``, ``expert_success_rate``
        (successes / attempts) and ``episode_seeds``.

    Raises:
        ValueError: ``n_episodes``, ``max_attempts`` or ``episode_ticks`` is not a positive
            integer, or the task name is unknown.
        DemoError: fewer than ``n_episodes`` usable episodes within ``max_attempts``.
    """
    if not (isinstance(n_episodes, int) and n_episodes > 0):
        raise ValueError(f'n_episodes = {n_episodes!r} is invalid: expected a positive integer')
    if max_attempts is None:
        max_attempts = 2 * n_episodes + 10 if only_success else n_episodes
    if not (isinstance(max_attempts, int) and max_attempts > 0):
        raise ValueError(f'max_attempts = {max_attempts!r} is invalid: expected a positive '
                         'integer')
    if episode_ticks is not None and (isinstance(episode_ticks, bool) or not (
            isinstance(episode_ticks, int) and episode_ticks > 0)):
        raise ValueError(f'episode_ticks = {episode_ticks!r} is invalid: expected a positive '
                         'integer or None')
    kept, attempts, successes, info = _expert_episodes(task_name, seed, max_attempts,
                                                       n_episodes, only_success, task_kwargs,
                                                       episode_ticks)
    if len(kept) < n_episodes:
        raise DemoError(f'{task_name}: only {len(kept)} of {n_episodes} expert episodes were '
                        f'usable after {attempts} attempts (success rate '
                        f'{successes / max(attempts, 1):.2f}); raise max_attempts')
    return DemoSet(
        obs=np.concatenate([r['obs'] for r in kept]),
        actions=np.concatenate([r['actions'] for r in kept]),
        episode_ends=np.cumsum([r['n_steps'] for r in kept]),
        obs_names=list(info.obs_names), action_names=list(info.action_names),
        meta={'task': task_name, 'task_kwargs': dict(task_kwargs or {}), 'seed': seed,
              'control_hz': info.control_hz, 'max_steps': info.max_steps,
              'source': 'scripted_expert', 'only_success': only_success,
              'episode_ticks': episode_ticks,
              'n_attempts': attempts, 'expert_success_rate': successes / attempts,
              'episode_seeds': [r['seed'] for r in kept]})


def expert_success_rate(task_name: str, n: int, seed: int = 0,
                        task_kwargs: dict[str, Any] | None = None) -> float:
    """Fraction of ``n`` expert episodes (seeds ``seed .. seed + n - 1``) that succeed.

    Uses the same seeds as :func:`collect_demos`, so it predicts how many attempts a
    collection needs.
    """
    if not (isinstance(n, int) and n > 0):
        raise ValueError(f'n = {n!r} is invalid: expected a positive integer')
    _, attempts, successes, _ = _expert_episodes(task_name, seed, n, n, False, task_kwargs)
    return successes / attempts
