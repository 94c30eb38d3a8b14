"""A trained method as a closed-loop policy: observation history in, one raw action out.

:class:`ChunkPolicy` is what the trainer's periodic evaluation and ``energyflow-eval`` roll out
in the benchmark tasks (through :func:`energyflow_ros.sim.rollout.evaluate_policy`). It mirrors
what the robot-side runtime does with an exported model: stack the last ``n_obs`` observations,
normalise, sample an action chunk, execute its first ``executed_steps`` actions, then replan.
"""

from __future__ import annotations

from collections import deque
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from energyflow_ros.core.methods import Method
from energyflow_ros.core.samplers import shift_chunk
from energyflow_ros.runtime.planner import WARM_EXTRAPOLATION
from energyflow_ros.data.dataset import Normalizer
from energyflow_ros.training.checkpoint import use_weights

__all__ = ['ChunkPolicy', 'evaluate_chunk_policy']


class ChunkPolicy:
    """Receding-horizon policy around a method's sampler.

    Attributes:
        method: the trained method (its sampler is built once).
        n_obs: observation frames stacked into the model input, oldest first.
        executed_steps: actions executed from every sampled chunk before replanning.
        warm_start: start every replan from the previous chunk shifted by the executed steps.
        n_plans: chunks sampled since construction.
    """

    def __init__(self, method: Method, obs_normalizer: Normalizer,
                 action_normalizer: Normalizer, n_obs: int, executed_steps: int,
                 action_low: Sequence[float] | None = None,
                 action_high: Sequence[float] | None = None, warm_start: bool = False,
                 warm_particles: int | None = None, seed: int = 0,
                 device: str | torch.device = 'cpu',
                 warm_extrapolation: float = WARM_EXTRAPOLATION) -> None:
        """Wrap ``method``.

        Args:
            method: the trained method (put in eval mode here).
            obs_normalizer: statistics of the stacked observation (n_obs * obs_dim,).
            action_normalizer: statistics of one action (A,).
            n_obs: frames per model input.
            executed_steps: actions taken from each chunk, 1 .. horizon.
            action_low: raw lower bound of one action; actions are clipped to it.
            action_high: raw upper bound of one action.
            warm_start: pass the previous chunk, shifted, as the sampler's initial particles.
            warm_particles: copies of that chunk passed (default: the cold-start particle
                count of the episode).
            seed: seed of the sampling generator (reset() does not reseed it).
            device: where the method runs.
            warm_extrapolation: refill speed of the shifted chunk, as the runtime planner's.

        Raises:
            ValueError: inconsistent sizes or an executed_steps outside 1 .. horizon.
        """
        horizon, action_dim = method.chunk_shape
        if not 1 <= executed_steps <= horizon:
            raise ValueError(f'executed_steps = {executed_steps} must be in [1, {horizon}]')
        obs_dim = np.size(obs_normalizer.mean)
        if n_obs < 1 or obs_dim % n_obs or obs_dim != method.spec.obs_dim:
            raise ValueError(f'obs normaliser of size {obs_dim} does not fit n_obs = {n_obs} '
                             f'and the model input of size {method.spec.obs_dim}')
        if np.size(action_normalizer.mean) != action_dim:
            raise ValueError(f'action normaliser of size {np.size(action_normalizer.mean)} for '
                             f'{action_dim} action dims')
        self.device = torch.device(device)
        self.method = method.to(self.device).eval()
        self.sampler = method.sampler()
        self.obs_normalizer, self.action_normalizer = obs_normalizer, action_normalizer
        self.n_obs, self.frame_dim = n_obs, obs_dim // n_obs
        self.executed_steps, self.warm_start = executed_steps, warm_start
        self.warm_particles = warm_particles
        self.warm_extrapolation = float(warm_extrapolation)
        low = -np.inf if action_low is None else np.asarray(action_low, dtype=np.float64)
        high = np.inf if action_high is None else np.asarray(action_high, dtype=np.float64)
        self.low, self.high = low, high
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.n_plans = 0
        self.last_energy = float('nan')
        self.reset()

    def reset(self) -> None:
        """Forget the observation history, the queued actions and the warm-start chunk."""
        self._history: deque[np.ndarray] = deque(maxlen=self.n_obs)
        self._queue: deque[np.ndarray] = deque()
        self._previous: torch.Tensor | None = None
        self._cold_particles: int | None = None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The next action (raw units, clipped to the bounds) for observation ``obs``."""
        frame = np.asarray(obs, dtype=np.float64).reshape(-1)
        if frame.shape != (self.frame_dim,):
            raise ValueError(f'observation has {frame.size} values; the model expects '
                             f'{self.frame_dim} per frame')
        if not self._history:
            self._history.extend([frame] * self.n_obs)
        else:
            self._history.append(frame)
        if not self._queue:
            self._queue.extend(self.plan())
        return self._queue.popleft()

    def _initial_particles(self) -> torch.Tensor | None:
        if not self.warm_start or self._previous is None:
            return None
        shifted = shift_chunk(self._previous, self.executed_steps, self.warm_extrapolation)
        count = self.warm_particles or self._cold_particles or 1
        return shifted.unsqueeze(1).expand(shifted.shape[0], count, *shifted.shape[1:])

    def plan(self) -> list[np.ndarray]:
        """Sample a chunk for the current history; returns the actions to execute (raw)."""
        stacked = np.concatenate(list(self._history))
        z = self.obs_normalizer.normalize(stacked)
        obs_t = torch.as_tensor(z, dtype=torch.float32, device=self.device).unsqueeze(0)
        init = self._initial_particles()
        result = self.sampler.sample(obs_t, self.generator, init=init)
        if init is None:
            self._cold_particles = int(result.particles.shape[1])
        chunk = result.actions.detach()
        self._previous = chunk
        self.last_energy = float(result.energy.detach()[0])
        self.n_plans += 1
        raw = self.action_normalizer.denormalize(chunk[0].double().cpu().numpy())
        raw = np.clip(raw, self.low, self.high)
        return [raw[i] for i in range(self.executed_steps)]

    @classmethod
    def from_checkpoint(cls, loaded: Any, use_ema: bool = True, **kwargs: Any) -> 'ChunkPolicy':
        """Build the policy a trainer checkpoint describes.

        Args:
            loaded: a :class:`~energyflow_ros.training.checkpoint.LoadedCheckpoint` whose
                payload holds the trainer's ``train_meta``.
            use_ema: load the checkpoint's EMA weights when it has them.
            **kwargs: further :class:`ChunkPolicy` arguments (warm_start, seed, device, ...).

        Raises:
            KeyError: the checkpoint was not written by the trainer (no ``train_meta``).
        """
        meta = loaded.payload['train_meta']
        use_weights(loaded, use_ema)
        method = loaded.method
        kwargs.setdefault('action_low', meta['action_low'])
        kwargs.setdefault('action_high', meta['action_high'])
        return cls(method, loaded.obs_normalizer, loaded.action_normalizer, meta['n_obs'],
                   meta['executed_steps'], **kwargs)


def evaluate_chunk_policy(task_name: str, make_policy: Callable[[Any], ChunkPolicy],
                          n_episodes: int, seed: int, max_steps: int | None = None,
                          task_kwargs: dict[str, Any] | None = None) -> dict[str, float]:
    """Seeded closed-loop evaluation that leaves the global torch and numpy RNGs untouched.

    Training can therefore evaluate at any step without changing what it draws afterwards.

    Args:
        task_name: registry name of the task.
        make_policy: builds the policy for the task.
        n_episodes: episodes; episode i uses seed ``seed + i``.
        seed: first episode seed.
        max_steps: optional per-episode tick limit.
        task_kwargs: the task's constructor arguments.

    Returns:
        ``eval_<metric>`` for every task metric averaged over episodes, ``eval_n_modes`` where
        the task reports modes, ``eval_first_side_above`` / ``_below`` where it reports the
        first obstacle's side (obstacles2d), and ``eval_wall_s`` (seconds the evaluation took).
    """
    from energyflow_ros.sim.rollout import evaluate_policy

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    numpy_state, start = np.random.get_state(), time.perf_counter()
    try:
        with torch.random.fork_rng(devices=devices):
            result = evaluate_policy(task_name, make_policy, n_episodes, seed, max_steps,
                                     task_kwargs)
    finally:
        np.random.set_state(numpy_state)
    row = {f'eval_{k[:-5]}': v for k, v in result.items() if k.endswith('_mean')}
    for key in ('n_modes', 'first_side_above', 'first_side_below'):
        if key in result:
            row[f'eval_{key}'] = result[key]
    row['eval_wall_s'] = round(time.perf_counter() - start, 3)
    return row
