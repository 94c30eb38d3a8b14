"""A benchmark task as a gymnasium environment whose actions are action chunks.

The energy models score (observation history, action chunk) pairs, so reinforcement learning
on their reward acts at the same granularity: one environment step is one chunk, of which the
first ``executed_steps`` actions are applied to the task, as the policy node does. The agent
outputs ``u`` in [-1, 1]^(K x A): a velocity per segment of the chunk, the H ticks split into
K equal segments (``knots``); the chunk it stands for is a path from the robot's current
position (the task's first A observation values), ``chunk_t = anchor + sum_{s<=t} v_s * scale``
with v_s the velocity of tick s's segment and ``scale`` chosen from the demonstrations so that
every expert step is representable (:func:`chunk_scale`). K = H can express any chunk; a small
K (one or two velocities per chunk) gives the agent a low-dimensional action, and expert
chunks are then represented by their per-segment mean velocity. Episodes have a fixed length
(``max_ticks``, no early termination): ending an episode at success would tell a learned
reward's agent when it did well, which it must learn from the reward alone (the ``seals``
convention for imitation benchmarks).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium
import numpy as np

from energyflow_ros.data.dataset import DemoSet, make_windows
from energyflow_ros.sim.base import Task
from energyflow_ros.sim.registry import make_task

__all__ = ['ChunkEnvConfig', 'ChunkEnv', 'ChunkReward', 'chunk_scale', 'encode_chunk',
           'decode_chunk', 'progress', 'at_goal', 'true_reward']

# (observation history (n_obs * frame,), chunk (H, A) raw) -> reward of executing the chunk.
ChunkReward = Callable[[np.ndarray, np.ndarray], float]

COLLISION_PENALTY = 0.2  # obstacles2d true reward: per chunk that touched an obstacle
GOAL_BONUS = 0.2         # obstacles2d true reward: per chunk that ends within goal tolerance


@dataclass(frozen=True)
class ChunkEnvConfig:
    """Shape of the chunk-level environment.

    Attributes:
        task: registered task name (``obstacles2d`` or ``pusht``).
        task_kwargs: task constructor arguments.
        n_obs: observation frames stacked into the agent's observation, oldest first.
        horizon: actions per chunk (the energy model's horizon).
        executed_steps: actions applied per environment step.
        max_ticks: fixed episode length in task ticks (rounded up to whole chunks).
        scale: (A,) largest per-tick move one unit of ``u`` stands for (raw action units).
        knots: velocity segments per chunk (must divide ``horizon``); the action has
            ``knots * A`` values.
    """

    task: str
    task_kwargs: dict[str, Any]
    n_obs: int
    horizon: int
    executed_steps: int
    max_ticks: int
    scale: tuple[float, ...]
    knots: int = 0

    def __post_init__(self) -> None:
        if self.knots == 0:
            object.__setattr__(self, 'knots', self.horizon)
        if self.knots < 1 or self.horizon % self.knots:
            raise ValueError(f'ChunkEnvConfig.knots = {self.knots} is invalid: expected a '
                             f'divisor of horizon ({self.horizon})')
        if not 1 <= self.executed_steps <= self.horizon:
            raise ValueError(f'ChunkEnvConfig.executed_steps = {self.executed_steps} is '
                             f'invalid: expected 1 .. horizon ({self.horizon})')
        if self.n_obs < 1 or self.max_ticks < 1:
            raise ValueError('ChunkEnvConfig.n_obs and max_ticks must be >= 1; got '
                             f'{self.n_obs} and {self.max_ticks}')
        if not all(s > 0 for s in self.scale):
            raise ValueError(f'ChunkEnvConfig.scale = {self.scale} is invalid: expected '
                             'positive values')

    @property
    def n_chunks(self) -> int:
        """Environment steps per episode."""
        return -(-self.max_ticks // self.executed_steps)


def chunk_scale(demos: DemoSet, n_obs: int, horizon: int, margin: float = 1.25) -> np.ndarray:
    """(A,) per-tick step scale that represents every demonstration chunk within [-1, 1].

    The first step of a chunk is measured from the robot's position (the first A values of the
    newest observation frame), the others from the previous action of the chunk.
    """
    obs, chunks = make_windows(demos, n_obs, horizon)
    a = chunks.shape[2]
    anchor = obs[:, -demos.obs.shape[1]:][:, :a]
    steps = np.diff(np.concatenate([anchor[:, None], chunks], axis=1), axis=1)
    return margin * np.maximum(np.abs(steps).max(axis=(0, 1)), 1e-6)


def decode_chunk(u: np.ndarray, anchor: np.ndarray, scale: np.ndarray,
                 horizon: int | None = None) -> np.ndarray:
    """(H, A) raw chunk from the agent's (K * A,) output u in [-1, 1] (K velocity segments).

    ``horizon`` defaults to K (one velocity per tick).
    """
    scale = np.asarray(scale, dtype=np.float64)
    knots = np.clip(np.asarray(u, dtype=np.float64).reshape(-1, scale.size), -1.0, 1.0)
    steps = np.repeat(knots, (horizon or len(knots)) // len(knots), axis=0)
    return np.asarray(anchor, dtype=np.float64)[: scale.size] + np.cumsum(steps * scale, axis=0)


def encode_chunk(chunk: np.ndarray, anchor: np.ndarray, scale: np.ndarray,
                 knots: int | None = None) -> np.ndarray:
    """(K * A,) float32 action for a raw (H, A) chunk: each segment's mean velocity, clipped to
    [-1, 1]; with K = H (the default) the exact inverse of :func:`decode_chunk`."""
    scale = np.asarray(scale, dtype=np.float64)
    start = np.asarray(anchor, dtype=np.float64)[None, : scale.size]
    steps = np.diff(np.concatenate([start, np.asarray(chunk, dtype=np.float64)]), axis=0)
    segments = steps.reshape(knots or len(steps), -1, scale.size).mean(axis=1)
    return np.clip(segments / scale, -1.0, 1.0).reshape(-1).astype(np.float32)


def progress(task: Task, start: np.ndarray) -> float:
    """The task's true progress now: obstacles2d 1 - distance/start distance, pusht coverage."""
    if task.info.name == 'obstacles2d':
        full = float(np.linalg.norm(task.goal - start))
        return 1.0 - float(np.linalg.norm(task.goal - task.position)) / max(full, 1e-9)
    if task.info.name == 'pusht':
        return float(task.episode_metrics()['final_coverage'])
    raise ValueError(f'no true reward is defined for task {task.info.name!r}; expected '
                     'obstacles2d or pusht')


def at_goal(task: Task) -> bool:
    """obstacles2d: the robot is within the goal tolerance now (False for other tasks)."""
    if task.info.name != 'obstacles2d':
        return False
    return bool(np.linalg.norm(task.goal - task.position) <= task.config.goal_tolerance)


def true_reward(task: Task, before: float, after: float, collided: bool) -> float:
    """The hand-written task reward of one chunk step.

    obstacles2d: progress gained towards the goal, minus ``COLLISION_PENALTY`` when the chunk
    touched an obstacle, plus ``GOAL_BONUS`` when it ends within the goal tolerance (success
    needs 2 cm: progress alone left SAC hovering a few centimetres short). pusht: the
    coverage at the end of the chunk (gym-pusht's own dense reward, per chunk).
    """
    if task.info.name == 'obstacles2d':
        return (after - before - COLLISION_PENALTY * float(collided)
                + GOAL_BONUS * float(at_goal(task)))
    return after


class ChunkEnv(gymnasium.Env):
    """Chunk-level, fixed-length episodes of a task, rewarded by a chosen reward function.

    ``info`` of every step holds ``true_reward``, ``progress``, ``success`` (sticky: the goal
    was reached at some tick) and ``collision`` (obstacles2d: some tick so far touched an
    obstacle), so a learned-reward agent is always scored on the task's own terms.
    """

    metadata: dict[str, Any] = {'render_modes': []}

    def __init__(self, config: ChunkEnvConfig, reward: ChunkReward | None = None,
                 seed: int = 0) -> None:
        """Build the task.

        Args:
            config: environment shape.
            reward: reward of a (history, chunk) pair; None uses :func:`true_reward`.
            seed: first episode seed; every reset without a seed takes the next one.
        """
        super().__init__()
        self.config = config
        self.task = make_task(config.task, **config.task_kwargs)
        info = self.task.info
        self.scale = np.asarray(config.scale, dtype=np.float64)
        if self.scale.size != info.action_dim:
            raise ValueError(f'ChunkEnvConfig.scale has {self.scale.size} values for '
                             f'{info.action_dim} action dims of {info.name}')
        self.reward_fn = reward
        self.observation_space = gymnasium.spaces.Box(
            -np.inf, np.inf, (config.n_obs * info.obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Box(
            -1.0, 1.0, (config.knots * info.action_dim,), np.float32)
        self._next_seed = int(seed)
        self._history: deque[np.ndarray] = deque(maxlen=config.n_obs)
        self._start = np.zeros(info.obs_dim)
        self._chunks = 0
        self._progress = 0.0
        self._success = self._collision = False

    def history(self) -> np.ndarray:
        """(n_obs * frame,) the stacked observation history, oldest first (float64)."""
        return np.concatenate(list(self._history))

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the next episode (or the one of ``seed``)."""
        super().reset(seed=seed)
        episode_seed = self._next_seed if seed is None else int(seed)
        self._next_seed = episode_seed + 1
        obs = self.task.reset(episode_seed)
        self._history.clear()
        self._history.extend([np.asarray(obs, dtype=np.float64)] * self.config.n_obs)
        self._start = np.asarray(obs, dtype=np.float64)[:2]
        self._chunks, self._success, self._collision = 0, False, False
        self._progress = progress(self.task, self._start)
        return self.history().astype(np.float32), {'seed': episode_seed}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the first ``executed_steps`` actions of the chunk ``action`` stands for."""
        before_hist = self.history()
        frame = self._history[-1]
        chunk = decode_chunk(action, frame, self.scale, self.config.horizon)
        collided = False
        for target in chunk[: self.config.executed_steps]:
            result = self.task.step(target)
            self._history.append(np.asarray(result.obs, dtype=np.float64))
            self._success |= bool(result.success)
            collided |= bool(result.info.get('collision', False))
        self._collision |= collided
        before, self._progress = self._progress, progress(self.task, self._start)
        true = true_reward(self.task, before, self._progress, collided)
        reward = true if self.reward_fn is None else float(self.reward_fn(before_hist, chunk))
        self._chunks += 1
        truncated = self._chunks >= self.config.n_chunks
        info = {'true_reward': true, 'progress': self._progress, 'success': self._success,
                'collision': self._collision}
        return self.history().astype(np.float32), reward, False, truncated, info

    def close(self) -> None:
        """Release the simulator."""
        self.task.close()
