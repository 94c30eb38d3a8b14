"""Last line of defence between a policy and a position-controlled arm (numpy only, no ROS).

:class:`JointCommandFilter` turns whatever the policy proposes into a command that is safe to
send to a position controller:

* non-finite or wrongly-sized targets are rejected and replaced by *hold*: the last measured
  position (never zeros: under position control zeros slam the arm to its zero pose);
* every joint is clamped to its limits;
* the change from the previous command is limited to ``max_step`` per tick, and that limit
  ramps up linearly over ``ramp_ticks`` ticks after :meth:`JointCommandFilter.start` so the arm
  eases in from its measured pose at activation.

Hold commands bypass the rate limit on purpose: they command the arm where it already is, so
they never move it; the rate limiter then continues from the held position. A measured pose
more than one step outside the limits can be neither held (that is outside the limits) nor
clamped (that jumps the arm to the limit): then nothing is commanded and
:attr:`FilterStatus.fault` names the joints, until the arm is measured within reach again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ['JointLimits', 'FilterStatus', 'JointCommandFilter']


@dataclass(frozen=True)
class JointLimits:
    """Position limits and the largest change per tick of a set of joints (raw units).

    Attributes:
        names: joint names, in command order.
        lower: (J,) lower position limits.
        upper: (J,) upper position limits.
        max_step: (J,) largest change of the command between two ticks (> 0).
    """

    names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    max_step: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise ValueError('JointLimits.names is empty: expected at least one joint')
        for field in ('lower', 'upper', 'max_step'):
            values = getattr(self, field)
            if len(values) != n:
                raise ValueError(f'JointLimits.{field} has {len(values)} values for {n} joints '
                                 f'{list(self.names)}')
            if not all(np.isfinite(values)):
                raise ValueError(f'JointLimits.{field} = {list(values)} holds non-finite values')
        bad = [name for name, lo, hi in zip(self.names, self.lower, self.upper) if lo > hi]
        if bad:
            raise ValueError(f'JointLimits: lower > upper for joints {bad}')
        if not all(s > 0 for s in self.max_step):
            raise ValueError(f'JointLimits.max_step = {list(self.max_step)} must be > 0')

    @classmethod
    def from_arrays(cls, names: Sequence[str], lower: Sequence[float], upper: Sequence[float],
                    max_step: float | Sequence[float]) -> 'JointLimits':
        """Build limits; a scalar ``max_step`` applies to every joint."""
        steps = np.broadcast_to(np.asarray(max_step, dtype=np.float64), (len(names),))
        return cls(tuple(str(n) for n in names), tuple(float(v) for v in lower),
                   tuple(float(v) for v in upper), tuple(float(v) for v in steps))


@dataclass
class FilterStatus:
    """What the filter did to the last command.

    Attributes:
        held: the command is the hold pose (no valid target, or :meth:`hold` was called).
        rejected: the target was refused (non-finite values or the wrong size).
        clamped: at least one joint was clamped to its limits.
        rate_limited: at least one joint's change was cut to the per-tick limit.
        reason: why a target was rejected ('' when it was not).
        fault: why nothing at all is commanded ('' normally): the measured pose is more than
            one step outside the limits.
    """

    held: bool = False
    rejected: bool = False
    clamped: bool = False
    rate_limited: bool = False
    reason: str = ''
    fault: str = ''


class JointCommandFilter:
    """Clamp, rate-limit and sanity-check joint position commands; hold on bad input.

    Typical use, once per control tick::

        filt.update_measured(q)             # whenever a finite measurement arrives
        cmd = filt.apply(target)            # or filt.hold() when there is nothing to execute

    Attributes:
        limits: the joint limits in command order.
        ramp_ticks: ticks over which the rate limit ramps from ~0 to ``max_step``.
        status: what the last :meth:`apply` / :meth:`hold` did.
    """

    def __init__(self, limits: JointLimits, ramp_ticks: int = 0) -> None:
        """Create a filter with no measurement yet.

        Args:
            limits: joint limits and per-tick step limits.
            ramp_ticks: after :meth:`start`, the per-tick limit grows linearly over this many
                ticks (0 disables the ramp).
        """
        if ramp_ticks < 0:
            raise ValueError(f'ramp_ticks = {ramp_ticks} must be >= 0')
        self.limits = limits
        self.ramp_ticks = int(ramp_ticks)
        self.status = FilterStatus()
        self._lower = np.array(limits.lower, dtype=np.float64)
        self._upper = np.array(limits.upper, dtype=np.float64)
        self._max_step = np.array(limits.max_step, dtype=np.float64)
        self._measured: np.ndarray | None = None
        self._last: np.ndarray | None = None
        self._out = np.zeros(len(limits.names))
        self._ticks_since_start = 0

    @property
    def dim(self) -> int:
        """Number of joints."""
        return len(self.limits.names)

    @property
    def measured(self) -> np.ndarray | None:
        """The last finite measurement (a copy), or None before the first."""
        return None if self._measured is None else self._measured.copy()

    @property
    def last_command(self) -> np.ndarray | None:
        """The last command returned (a copy), or None before the first."""
        return None if self._last is None else self._last.copy()

    def update_measured(self, positions: np.ndarray) -> bool:
        """Record a measured position; ignores (and returns False for) bad measurements."""
        q = np.asarray(positions, dtype=np.float64)
        if q.shape != (self.dim,) or not np.all(np.isfinite(q)):
            return False
        if self._measured is None:
            self._measured = q.copy()
        else:
            self._measured[:] = q
        return True

    def start(self) -> None:
        """Begin (again) from the measured pose: the next command is rate-limited from it."""
        reachable = self._measured is not None and not self._out_of_reach()
        self._last = self._clamp(self._measured.copy()) if reachable else None
        self._ticks_since_start = 0

    def hold(self) -> np.ndarray | None:
        """The hold command: the last measured position clamped to the limits.

        Returns:
            (J,) command, or None when nothing was ever measured or the measured pose is more
            than one step outside the limits (then send nothing; :attr:`status` says why).
        """
        self.status = FilterStatus(held=True)
        if self._measured is None:
            return None
        fault = self._out_of_reach()
        if fault:
            self.status = FilterStatus(held=True, fault=fault)
            self._last = None
            return None
        held = self._clamp(self._measured.copy())
        self._last = held.copy()
        return held

    def apply(self, target: np.ndarray | None) -> np.ndarray | None:
        """Filter one proposed command.

        Args:
            target: (J,) proposed joint positions, or None for "nothing to execute".

        Returns:
            (J,) safe command (a fresh array), or None when nothing was ever measured (a filter
            never commands an arm it has not measured) or when starting from a measured pose
            more than one step outside the limits. :attr:`status` tells what happened.
        """
        reason = self._reject_reason(target)
        if reason:
            out = self.hold()
            refused = target is not None and self._measured is not None
            self.status = FilterStatus(held=True, rejected=refused, reason=reason,
                                       fault=self.status.fault)
            return out
        if self._last is None:
            fault = self._out_of_reach()
            if fault:
                self.status = FilterStatus(held=True, fault=fault)
                return None
            self.start()
        goal = np.asarray(target, dtype=np.float64)
        clamped = np.clip(goal, self._lower, self._upper, out=self._out)
        status = FilterStatus(clamped=bool(np.any(clamped != goal)))
        step = self._max_step * self._ramp_fraction()
        delta = np.clip(clamped - self._last, -step, step)
        status.rate_limited = bool(np.any(np.abs(clamped - self._last) > step))
        clamped = self._clamp(self._last + delta)
        self._ticks_since_start += 1
        self._last = np.array(clamped, dtype=np.float64)
        self.status = status
        return self._last.copy()

    def _ramp_fraction(self) -> float:
        if self.ramp_ticks <= 0:
            return 1.0
        return min(1.0, (self._ticks_since_start + 1) / self.ramp_ticks)

    def _reject_reason(self, target: np.ndarray | None) -> str:
        if self._measured is None:
            return 'no measurement yet'
        if target is None:
            return 'no target'
        try:
            goal = np.asarray(target, dtype=np.float64)
        except (TypeError, ValueError):
            return 'target is not numeric'
        if goal.shape != (self.dim,):
            return f'target has shape {goal.shape}; expected ({self.dim},)'
        if not np.all(np.isfinite(goal)):
            return 'target holds non-finite values'
        return ''

    def _clamp(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q, self._lower, self._upper)

    def _out_of_reach(self) -> str:
        """Why the measured pose cannot be held or clamped without a jump ('' when it can)."""
        q = self._measured
        if q is None:
            return ''
        gap = np.maximum(self._lower - q, q - self._upper)
        far = np.flatnonzero(gap > self._max_step)
        if far.size == 0:
            return ''
        joints = ', '.join(f'{self.limits.names[i]} at {q[i]:.6g} (limits '
                           f'[{self._lower[i]:.6g}, {self._upper[i]:.6g}])' for i in far)
        return (f'measured {joints}: more than one step outside the limits, so nothing is '
                'commanded (holding there leaves the limits, clamping jumps the arm); move '
                'the arm within the limits or widen joint_lower / joint_upper')
