"""Receding-horizon action queue: the plan the control tick reads from (numpy only, no ROS).

A plan is an action chunk (H, A) in raw units together with the time of its first step; step
``i`` is the target for ``start_time + i * period``. :meth:`ChunkQueue.action_at` interpolates
linearly between steps, so the control tick can run faster than the model's control period.

Latency compensation comes from the timing alone: a chunk planned from an observation stamped
``t_obs`` is inserted with ``start_time`` derived from ``t_obs``; when it arrives late, reading
it at the current time skips the steps whose time has passed.

Temporal ensembling (optional, as in ACT): the queue keeps the last ``ensemble_size`` chunks
and averages every chunk that covers ``t``, weighting the ``k``-th newest by
``exp(-ensemble_decay * k)``; with ``ensemble_size == 1`` only the newest chunk counts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math

import numpy as np

__all__ = ['Plan', 'ChunkQueue']


@dataclass(frozen=True)
class Plan:
    """One planned chunk.

    Attributes:
        actions: (H, A) raw-unit targets.
        start_time: time (seconds) of step 0.
        energy: energy of the chunk (nan when unknown).
    """

    actions: np.ndarray
    start_time: float
    energy: float = float('nan')

    def position(self, t: float, period: float) -> float:
        """Fractional step index of time ``t``."""
        return (t - self.start_time) / period

    def end_time(self, period: float) -> float:
        """Time of the last step."""
        return self.start_time + (len(self.actions) - 1) * period

    def interpolate(self, t: float, period: float) -> np.ndarray:
        """Target at ``t``: linear between steps, the first/last step outside the chunk."""
        s = self.position(t, period)
        last = len(self.actions) - 1
        if s <= 0.0:
            return self.actions[0]
        if s >= last:
            return self.actions[last]
        i = int(s)
        w = s - i
        return (1.0 - w) * self.actions[i] + w * self.actions[i + 1]


class ChunkQueue:
    """Holds the current plan (and, with ensembling, the few before it).

    Attributes:
        action_dim: A.
        period: seconds between chunk steps (the model's control period).
        ensemble_size: chunks kept for temporal ensembling (1 = newest only).
        ensemble_decay: weight decay per older chunk.
    """

    def __init__(self, action_dim: int, period: float, ensemble_size: int = 1,
                 ensemble_decay: float = 0.0) -> None:
        """Create an empty queue.

        Raises:
            ValueError: non-positive sizes or period, or a negative decay.
        """
        if action_dim < 1:
            raise ValueError(f'action_dim = {action_dim} must be >= 1')
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f'period = {period} must be a positive number of seconds')
        if ensemble_size < 1:
            raise ValueError(f'ensemble_size = {ensemble_size} must be >= 1')
        if not ensemble_decay >= 0:
            raise ValueError(f'ensemble_decay = {ensemble_decay} must be >= 0')
        self.action_dim = int(action_dim)
        self.period = float(period)
        self.ensemble_size = int(ensemble_size)
        self.ensemble_decay = float(ensemble_decay)
        self._plans: deque[Plan] = deque(maxlen=self.ensemble_size)

    @property
    def current(self) -> Plan | None:
        """The newest plan, or None."""
        return self._plans[-1] if self._plans else None

    def __len__(self) -> int:
        """Number of plans held."""
        return len(self._plans)

    def clear(self) -> None:
        """Forget every plan."""
        self._plans.clear()

    def replace(self, actions: np.ndarray, start_time: float,
                energy: float = float('nan')) -> Plan:
        """Make ``actions`` the current plan (older ones stay only for ensembling).

        Args:
            actions: (H, A) raw-unit targets, finite.
            start_time: time of step 0.
            energy: the chunk's energy, for diagnostics.

        Raises:
            ValueError: wrong shape or non-finite values (the queue is left unchanged).
        """
        chunk = np.array(actions, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim or len(chunk) < 1:
            raise ValueError(f'chunk has shape {chunk.shape}; expected (H, {self.action_dim})')
        if not np.all(np.isfinite(chunk)):
            raise ValueError('chunk holds non-finite values')
        plan = Plan(chunk, float(start_time), float(energy))
        self._plans.append(plan)
        return plan

    def action_at(self, t: float) -> np.ndarray | None:
        """The (ensembled) target at time ``t``, or None when the queue is empty."""
        if not self._plans:
            return None
        newest = self._plans[-1]
        if self.ensemble_size == 1:
            return np.array(newest.interpolate(t, self.period))
        total = np.zeros(self.action_dim)
        weight_sum = 0.0
        for k, plan in enumerate(reversed(self._plans)):
            if k > 0 and t > plan.end_time(self.period):
                continue
            w = math.exp(-self.ensemble_decay * k)
            total += w * plan.interpolate(t, self.period)
            weight_sum += w
        return total / weight_sum

    def steps_elapsed(self, t: float) -> float:
        """Fractional steps of the current plan whose time has passed at ``t`` (0 if none)."""
        plan = self.current
        return 0.0 if plan is None else max(0.0, plan.position(t, self.period))

    def exhausted(self, t: float) -> bool:
        """True when there is no plan or ``t`` is past the current plan's last step."""
        plan = self.current
        return plan is None or t > plan.end_time(self.period)

    def remaining(self, t: float) -> np.ndarray | None:
        """The current plan from the step at ``t`` on, padded with its last step to length H.

        This is the warm start for the next plan: the old chunk advanced by the elapsed steps.
        """
        plan = self.current
        if plan is None:
            return None
        h = len(plan.actions)
        first = min(int(round(self.steps_elapsed(t))), h - 1)
        tail = np.repeat(plan.actions[-1:], first, axis=0)
        return np.concatenate([plan.actions[first:], tail], axis=0)
