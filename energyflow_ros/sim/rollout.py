"""Run a policy in a task: one episode (:func:`rollout`) or a seeded evaluation.

A policy is any callable ``obs -> action`` in raw units. If it has a ``reset()`` method, that
is called at the start of every episode (learned policies keep an observation history and a
queue of planned actions). A scripted expert becomes a policy through :class:`ExpertPolicy`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from energyflow_ros.sim.base import Expert, Policy, Task
from energyflow_ros.sim.registry import make_expert, make_task

__all__ = ['ExpertPolicy', 'make_expert_policy', 'rollout', 'summarize_metrics',
           'evaluate_policy']


class ExpertPolicy:
    """A scripted expert behind the policy interface.

    Attributes:
        expert: the wrapped expert.
        seed: seed given to the expert at the next :meth:`reset`; it then counts up, so
            successive episodes draw different modes.
    """

    def __init__(self, expert: Expert, seed: int = 0) -> None:
        """Wrap ``expert``; its first episode uses ``seed``."""
        self.expert = expert
        self.seed = int(seed)

    def reset(self) -> None:
        """Start the expert's next episode."""
        self.expert.reset(self.seed)
        self.seed += 1

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The expert's action for ``obs``."""
        return self.expert.act(obs)


def make_expert_policy(task: Task) -> ExpertPolicy:
    """The registered expert of ``task`` as a policy (a ``make_policy`` for evaluation)."""
    return ExpertPolicy(make_expert(task))


def rollout(task: Task, policy: Policy, seed: int, max_steps: int | None = None,
            fixed_ticks: int | None = None) -> dict[str, Any]:
    """Run one episode.

    Args:
        task: the task; reset with ``seed``.
        policy: callable obs -> action (raw units); its ``reset()`` is called after the task's.
        seed: episode seed.
        max_steps: stop after this many ticks (default and upper bound: the task's limit).
        fixed_ticks: run exactly this many ticks instead, going on after the task says done
            (the expert holds at its goal): a fixed-horizon episode. ``success`` then means
            the task succeeded at some tick.

    Returns:
        ``obs`` (T, obs_dim) observations the actions were chosen from, ``actions``
        (T, action_dim) the actions as the policy returned them, ``final_obs`` (obs_dim,),
        ``metrics`` (the task's episode metrics), ``success`` (bool), ``n_steps``, ``seed``
        and ``wall_s`` (seconds the episode took).

    Raises:
        ValueError: the policy returned an action of the wrong shape or with NaN/inf.
    """
    limit = task.info.max_steps if max_steps is None else min(max_steps, task.info.max_steps)
    limit = limit if fixed_ticks is None else fixed_ticks
    start = time.perf_counter()
    obs = task.reset(seed)
    if callable(getattr(policy, 'reset', None)):
        policy.reset()
    observations, actions = [], []
    success = False
    for _ in range(limit):
        action = np.asarray(policy(obs), dtype=np.float64)
        observations.append(obs)
        actions.append(action)
        result = task.step(action)
        obs, success = result.obs, success or result.success
        if result.done and fixed_ticks is None:
            break
    shape = (0, task.info.obs_dim), (0, task.info.action_dim)
    return {
        'obs': np.array(observations) if observations else np.zeros(shape[0]),
        'actions': np.array(actions) if actions else np.zeros(shape[1]),
        'final_obs': np.asarray(obs, dtype=np.float64),
        'metrics': task.episode_metrics(),
        'success': bool(success),
        'n_steps': len(actions),
        'seed': int(seed),
        'wall_s': time.perf_counter() - start,
    }


def summarize_metrics(episodes: list[dict[str, float]]) -> dict[str, float]:
    """Mean and standard deviation of every metric over episodes.

    Args:
        episodes: one metrics dict per episode (as :meth:`Task.episode_metrics` returns).

    Returns:
        ``<metric>_mean`` and ``<metric>_std`` for every metric; where episodes report
        ``first_obstacle_side`` (obstacles2d) also ``first_side_above`` and
        ``first_side_below``, the fractions of episodes passing the first obstacle above (+1)
        and below (-1), and where they report ``mode``, ``n_modes``, the number of distinct
        complete modes.
    """
    if not episodes:
        raise ValueError('no episodes to summarise')
    summary: dict[str, float] = {}
    for key in episodes[0]:
        values = np.array([float(ep[key]) for ep in episodes])
        summary[f'{key}_mean'] = float(values.mean())
        summary[f'{key}_std'] = float(values.std())
    if 'first_obstacle_side' in episodes[0]:
        sides = np.array([ep['first_obstacle_side'] for ep in episodes])
        summary['first_side_above'] = float(np.mean(sides > 0))
        summary['first_side_below'] = float(np.mean(sides < 0))
    if 'mode' in episodes[0]:
        summary['n_modes'] = float(len({ep['mode'] for ep in episodes if ep['mode'] >= 0}))
    return summary


def evaluate_policy(task_name: str, make_policy: Callable[[Task], Policy], n_episodes: int,
                    seed: int = 0, max_steps: int | None = None,
                    task_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a policy over ``n_episodes`` seeded episodes of a registered task.

    Args:
        task_name: registry name of the task.
        make_policy: builds the policy for the task (called once; the policy is reset
            before every episode; an :class:`ExpertPolicy` is given the episode's seed, so it
            acts as in the demonstrations collected on that episode).
        n_episodes: number of episodes; episode i uses seed ``seed + i``.
        seed: first episode seed.
        max_steps: optional per-episode tick limit below the task's.
        task_kwargs: keyword arguments for the task's constructor.

    Returns:
        The :func:`summarize_metrics` entries plus ``task``, ``n_episodes``, ``seed``,
        ``wall_s_per_episode`` and ``episodes`` (the per-episode metrics, in seed order).
    """
    if not (isinstance(n_episodes, int) and n_episodes > 0):
        raise ValueError(f'n_episodes = {n_episodes!r} is invalid: expected a positive integer')
    task = make_task(task_name, **(task_kwargs or {}))
    try:
        policy = make_policy(task)
        results = []
        for i in range(n_episodes):
            if isinstance(policy, ExpertPolicy):   # as in its demonstrations of that episode
                policy.seed = seed + i
            results.append(rollout(task, policy, seed + i, max_steps))
    finally:
        task.close()
    episodes = [r['metrics'] for r in results]
    return {
        'task': task_name,
        'n_episodes': n_episodes,
        'seed': seed,
        **summarize_metrics(episodes),
        'wall_s_per_episode': float(np.mean([r['wall_s'] for r in results])),
        'episodes': episodes,
    }
