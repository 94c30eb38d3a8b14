"""Tick-level rollouts of scripted and perturbed policies, cut into chunk-level pairs.

The reward checks and the adversarial baselines' demonstrations both need what a policy did
as (observation history, action chunk) pairs at the chunk environment's boundaries. A rollout
runs a policy tick by tick for a fixed number of ticks (no early stop, like
:class:`~energyflow_ros.rl.chunk_env.ChunkEnv`) and :func:`chunk_pairs` cuts it; replaying
the first ``executed_steps`` actions of each chunk in the chunk environment reproduces the
rollout exactly, because the tasks are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from energyflow_ros.rl.chunk_env import (at_goal, ChunkEnvConfig, COLLISION_PENALTY,
                                         encode_chunk, GOAL_BONUS, progress)
from energyflow_ros.sim.base import Policy, Task
from energyflow_ros.sim.registry import make_expert, make_task
from energyflow_ros.sim.rollout import ExpertPolicy

__all__ = ['TickRollout', 'tick_rollout', 'chunk_pairs', 'NoisyPolicy', 'HoldAfter',
           'StraightToGoal', 'RandomWalk', 'expert_policy', 'expert_trajectories',
           'rollout_return', 'rollout_progress']

# Builds a policy for a task and an episode seed.
PolicyFactory = Callable[[Task, int], Policy]


@dataclass
class TickRollout:
    """One fixed-length episode.

    Attributes:
        obs: (T + 1, D) observations, the last one after the final action.
        actions: (T, A) raw actions applied.
        progress: (T + 1,) the task's true progress after each tick (index 0: at reset).
        collided: (T,) whether each tick touched an obstacle.
        at_goal: (T,) whether the robot was within the goal tolerance after each tick.
        success: the goal was reached at some tick.
    """

    obs: np.ndarray
    actions: np.ndarray
    progress: np.ndarray
    collided: np.ndarray
    at_goal: np.ndarray
    success: bool


def tick_rollout(task: Task, policy: Policy, seed: int, n_ticks: int) -> TickRollout:
    """Run ``policy`` for exactly ``n_ticks`` ticks from the task's ``seed`` state."""
    obs = task.reset(seed)
    start = np.asarray(obs, dtype=np.float64)[:2]
    if callable(getattr(policy, 'reset', None)):
        policy.reset()
    observations, actions = [np.asarray(obs, dtype=np.float64)], []
    prog, collided, goal, success = [progress(task, start)], [], [], False
    for _ in range(n_ticks):
        action = np.asarray(policy(observations[-1]), dtype=np.float64)
        result = task.step(action)
        actions.append(action)
        observations.append(np.asarray(result.obs, dtype=np.float64))
        prog.append(progress(task, start))
        collided.append(bool(result.info.get('collision', False)))
        goal.append(at_goal(task))
        success |= bool(result.success)
    return TickRollout(np.array(observations), np.array(actions), np.array(prog),
                       np.array(collided), np.array(goal), success)


def chunk_pairs(rollout: TickRollout, n_obs: int, horizon: int,
                executed_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(observation history, chunk) at every chunk boundary 0, E, 2E, ... of a rollout.

    Returns:
        histories: (C, n_obs * D), the first frame repeated before the episode starts.
        chunks: (C, H, A) the actions taken from each boundary on (the last one repeated past
            the end).
        starts: (C,) tick index of each boundary.
    """
    t_max = len(rollout.actions)
    starts = np.arange(0, t_max, executed_steps)
    hist = np.clip(starts[:, None] + np.arange(-n_obs + 1, 1)[None, :], 0, t_max)
    fut = np.clip(starts[:, None] + np.arange(horizon)[None, :], 0, t_max - 1)
    return rollout.obs[hist].reshape(len(starts), -1), rollout.actions[fut], starts


def rollout_return(task_name: str, rollout: TickRollout, executed_steps: int) -> float:
    """The chunk environment's true return of a rollout (see ``chunk_env.true_reward``)."""
    ends = np.minimum(np.arange(executed_steps, len(rollout.actions) + executed_steps,
                                executed_steps), len(rollout.actions))
    if task_name == 'obstacles2d':
        starts = ends - executed_steps
        hits = [rollout.collided[max(s, 0):e].any() for s, e in zip(starts, ends)]
        return float(rollout.progress[-1] - rollout.progress[0]
                     - COLLISION_PENALTY * np.sum(hits)
                     + GOAL_BONUS * np.sum(rollout.at_goal[ends - 1]))
    return float(rollout.progress[ends].sum())


def rollout_progress(task_name: str, rollout: TickRollout) -> float:
    """The task progress a rollout achieved: obstacles2d the final fraction of the way to the
    goal, pusht the highest coverage (the task's headline metric)."""
    return float(rollout.progress.max() if task_name == 'pusht' else rollout.progress[-1])


class NoisyPolicy:
    """Another policy's actions plus Gaussian noise of ``std`` (raw units) per tick."""

    def __init__(self, policy: Policy, std: float, seed: int) -> None:
        """Wrap ``policy``; ``seed`` seeds the noise."""
        self.policy, self.std, self.seed = policy, float(std), seed
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Reset the wrapped policy and the noise."""
        if callable(getattr(self.policy, 'reset', None)):
            self.policy.reset()
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = np.asarray(self.policy(obs), dtype=np.float64)
        return action + self._rng.normal(0.0, self.std, action.shape)


class HoldAfter:
    """Another policy until tick ``stop``, then the position it had reached (a stalled robot)."""

    def __init__(self, policy: Policy, stop: int) -> None:
        """Wrap ``policy``."""
        self.policy, self.stop = policy, int(stop)
        self._tick, self._hold = 0, None

    def reset(self) -> None:
        """Reset the wrapped policy and the tick count."""
        if callable(getattr(self.policy, 'reset', None)):
            self.policy.reset()
        self._tick, self._hold = 0, None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self._tick += 1
        if self._tick <= self.stop:
            return np.asarray(self.policy(obs), dtype=np.float64)
        if self._hold is None:
            self._hold = np.asarray(obs[:2], dtype=np.float64).copy()
        return self._hold


class StraightToGoal:
    """obstacles2d: drive straight at the goal at the expert's mean speed (hits obstacles)."""

    def __init__(self, speed: float = 0.027) -> None:
        """Move ``speed`` metres per tick."""
        self.speed = speed

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        pos, goal = np.asarray(obs[:2]), np.asarray(obs[2:4])
        gap = goal - pos
        dist = float(np.linalg.norm(gap))
        return goal if dist <= self.speed else pos + gap * self.speed / dist


class RandomWalk:
    """Random position targets around the robot, ``step`` raw units away on average."""

    def __init__(self, step: float, seed: int, low: float, high: float) -> None:
        """Uniformly random directions; targets clipped to [low, high]."""
        self.step, self.seed, self.low, self.high = step, seed, low, high
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Restart the random sequence."""
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        angle = self._rng.uniform(0, 2 * np.pi)
        move = self.step * np.array([np.cos(angle), np.sin(angle)])
        return np.clip(np.asarray(obs[:2]) + move, self.low, self.high)


def expert_policy(task: Task, seed: int) -> Policy:
    """The task's scripted expert with its episode choices drawn from ``seed``."""
    return ExpertPolicy(make_expert(task), seed)


def expert_trajectories(config: ChunkEnvConfig, seeds: list[int],
                        only_success: bool = True) -> list[dict[str, np.ndarray]]:
    """The scripted expert's episodes in the chunk environment's observation/action spaces.

    With fewer knots than the horizon an expert chunk is represented by its mean velocities
    (:func:`~energyflow_ros.rl.chunk_env.encode_chunk`), so the observations are the expert's
    own and replaying the actions follows them only approximately.

    Returns:
        One dict per kept episode: ``obs`` (C + 1, n_obs * D) float32 and ``acts`` (C, H * A)
        float32 encoded with the config's scale, as ``imitation``'s trajectories expect.
    """
    task = make_task(config.task, **config.task_kwargs)
    scale = np.asarray(config.scale)
    episodes = []
    try:
        n_ticks = config.n_chunks * config.executed_steps
        for seed in seeds:
            run = tick_rollout(task, expert_policy(task, seed), seed, n_ticks)
            if only_success and not run.success:
                continue
            hist, chunks, starts = chunk_pairs(run, config.n_obs, config.horizon,
                                               config.executed_steps)
            frame = run.obs.shape[1]
            acts = np.stack([encode_chunk(c, h[-frame:], scale, config.knots)
                             for h, c in zip(hist, chunks)])
            last = np.clip(n_ticks + np.arange(-config.n_obs + 1, 1), 0, n_ticks)
            obs = np.concatenate([hist, run.obs[last].reshape(1, -1)])
            episodes.append({'obs': obs.astype(np.float32), 'acts': acts})
    finally:
        task.close()
    return episodes
