"""Observation history at the model's control period, with staleness and ordering checks.

Pure numpy: the nodes feed it arrays and stamps (seconds), so every rule here is testable
without ROS.

A model frame is assembled from several *streams* (the joint states, an object pose, ...);
each stream fills some of the model's observation names and has its own maximum age. Samples
arrive at whatever rate the robot publishes; :meth:`ObservationHistory.stacked` resamples them
onto the model's grid: frame ``k`` (0 = newest) is, for every stream, its sample stamped nearest
to ``t_ref - k * period``, where ``t_ref`` is the newest stamp of the reference stream (the
first one); nearest, not newest-before, so a few milliseconds of publication jitter do not
shift a frame by a whole period. Before enough history exists the oldest sample is repeated,
as the training rollouts pad a fresh episode.

Rejected samples (reasons returned by :meth:`ObservationHistory.update`): wrong size,
non-finite values, a stamp older than the stream's previous one (out of order), or a stamp in
the future beyond ``future_tolerance_s``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math
from typing import Sequence

import numpy as np

__all__ = ['StreamSpec', 'ObservationStatus', 'ObservationHistory']


@dataclass(frozen=True)
class StreamSpec:
    """One observation source.

    Attributes:
        name: stream name used in :meth:`ObservationHistory.update` and in messages.
        obs_names: the model observation names its values fill, in value order.
        max_age_s: the stream is stale when its newest sample is older than this.
    """

    name: str
    obs_names: tuple[str, ...]
    max_age_s: float

    def __post_init__(self) -> None:
        if not self.obs_names:
            raise ValueError(f'stream {self.name!r} fills no observation names')
        if not (self.max_age_s > 0 and math.isfinite(self.max_age_s)):
            raise ValueError(f'stream {self.name!r}: max_age_s = {self.max_age_s} must be a '
                             'positive number of seconds')


@dataclass(frozen=True)
class ObservationStatus:
    """Whether a model input can be built now.

    Attributes:
        ok: every stream has fresh data.
        level: 'ok', 'no_data' (a stream never delivered), 'stale' (a stream is too old) or
            'clock_back' (the clock went back behind a stream's newest sample).
        age_s: age of the oldest stream's newest sample (inf when a stream has none).
        message: human-readable detail naming the offending stream.
    """

    ok: bool
    level: str
    age_s: float
    message: str = ''


class _Buffer:
    """Time-ordered samples of one stream."""

    def __init__(self, spec: StreamSpec, indices: np.ndarray, keep_s: float) -> None:
        self.spec = spec
        self.indices = indices
        self.keep_s = keep_s
        self.stamps: deque[float] = deque(maxlen=4096)
        self.values: deque[np.ndarray] = deque(maxlen=4096)
        self.rejected = 0

    def add(self, values: np.ndarray, stamp: float) -> None:
        """Append a sample; drop samples older than ``keep_s`` (always keeping one)."""
        self.stamps.append(stamp)
        self.values.append(values)
        while len(self.stamps) > 1 and self.stamps[1] < stamp - self.keep_s:
            self.stamps.popleft()
            self.values.popleft()

    def at(self, t: float) -> np.ndarray:
        """The sample stamped nearest to ``t`` (the oldest one before the buffer starts)."""
        best, best_gap = self.values[-1], abs(self.stamps[-1] - t)
        for stamp, values in zip(reversed(self.stamps), reversed(self.values)):
            gap = abs(stamp - t)
            if gap < best_gap:
                best, best_gap = values, gap
            elif stamp < t:
                break
        return best


class ObservationHistory:
    """Latest samples of every stream, resampled to ``n_obs`` frames spaced ``period_s``.

    Attributes:
        obs_names: the model's frame layout.
        n_obs: frames per model input.
        period_s: spacing of the frames (the model's control period).
        streams: stream specs; the first is the reference stream.
        future_tolerance_s: how far in the future a stamp may be (clock skew).
        clock_resets: times the clock went back behind the history, which was then forgotten.
    """

    def __init__(self, obs_names: Sequence[str], n_obs: int, period_s: float,
                 streams: Sequence[StreamSpec], future_tolerance_s: float = 0.05) -> None:
        """Check that the streams fill every observation name exactly once.

        Raises:
            ValueError: an observation name is filled by no stream or by several, a stream
                names an observation the model does not have, or sizes are invalid.
        """
        if n_obs < 1 or not (period_s > 0 and math.isfinite(period_s)):
            raise ValueError(f'n_obs = {n_obs} and period_s = {period_s} must be positive')
        if not streams:
            raise ValueError('no observation streams configured')
        self.obs_names = tuple(obs_names)
        self.n_obs, self.period_s = int(n_obs), float(period_s)
        self.streams = tuple(streams)
        self.future_tolerance_s = float(future_tolerance_s)
        self.clock_resets = 0
        keep = (self.n_obs + 1) * self.period_s
        self._buffers = {s.name: _Buffer(s, self._indices(s), keep) for s in self.streams}
        if len(self._buffers) != len(self.streams):
            raise ValueError(f'duplicate stream names in {[s.name for s in self.streams]}')
        self._check_coverage()

    def _indices(self, spec: StreamSpec) -> np.ndarray:
        unknown = [n for n in spec.obs_names if n not in self.obs_names]
        if unknown:
            raise ValueError(f'stream {spec.name!r} fills {unknown}, which are not model '
                             f'observation names {list(self.obs_names)}')
        return np.array([self.obs_names.index(n) for n in spec.obs_names], dtype=np.int64)

    def _check_coverage(self) -> None:
        filled = [n for s in self.streams for n in s.obs_names]
        missing = [n for n in self.obs_names if n not in filled]
        twice = sorted({n for n in filled if filled.count(n) > 1})
        if missing:
            raise ValueError(f'model observation names {missing} are filled by no stream '
                             f'(streams: { {s.name: list(s.obs_names) for s in self.streams} })')
        if twice:
            raise ValueError(f'model observation names {twice} are filled by several streams')

    @property
    def frame_dim(self) -> int:
        """Values per frame."""
        return len(self.obs_names)

    def reset(self) -> None:
        """Forget every sample (rejection counters too)."""
        self._forget()
        for buf in self._buffers.values():
            buf.rejected = 0

    def _forget(self) -> None:
        for buf in self._buffers.values():
            buf.stamps.clear()
            buf.values.clear()

    def _ahead_of(self, now: float) -> _Buffer | None:
        """A stream whose newest sample is further ahead of ``now`` than the tolerance."""
        for buf in self._buffers.values():
            if buf.stamps and buf.stamps[-1] > now + self.future_tolerance_s:
                return buf
        return None

    def rejected(self, stream: str) -> int:
        """Samples of ``stream`` rejected so far."""
        return self._buffers[stream].rejected

    def newest_stamp(self, stream: str) -> float | None:
        """Stamp of the newest accepted sample of ``stream``."""
        stamps = self._buffers[stream].stamps
        return stamps[-1] if stamps else None

    def update(self, stream: str, values: np.ndarray, stamp: float, now: float) -> str:
        """Offer one sample.

        Args:
            stream: a configured stream name.
            values: one value per observation name of the stream.
            stamp: the sample's time (seconds).
            now: the current time on the same clock.

        Returns:
            '' when accepted, otherwise why it was rejected.

        When the clock has gone back behind the newest sample of any stream (a simulation
        reset, a replayed bag), every sample is forgotten first and :attr:`clock_resets`
        counts it: the new timeline's samples would otherwise all be refused as out of order.
        """
        buf = self._buffers[stream]
        if self._ahead_of(now) is not None:
            self._forget()
            self.clock_resets += 1
        reason = self._reject_reason(buf, values, stamp, now)
        if reason:
            buf.rejected += 1
            return reason
        buf.add(np.array(values, dtype=np.float64), float(stamp))
        return ''

    def _reject_reason(self, buf: _Buffer, values: np.ndarray, stamp: float, now: float) -> str:
        array = np.asarray(values, dtype=np.float64)
        expected = len(buf.spec.obs_names)
        if array.shape != (expected,):
            return (f'stream {buf.spec.name!r}: {array.size} values, expected {expected} '
                    f'({list(buf.spec.obs_names)})')
        if not np.all(np.isfinite(array)):
            return f'stream {buf.spec.name!r}: non-finite values {array.tolist()}'
        if not math.isfinite(stamp):
            return f'stream {buf.spec.name!r}: non-finite stamp'
        if buf.stamps and stamp < buf.stamps[-1]:
            return (f'stream {buf.spec.name!r}: stamp {stamp:.6f} is older than the previous '
                    f'{buf.stamps[-1]:.6f} (out of order)')
        if stamp > now + self.future_tolerance_s:
            return (f'stream {buf.spec.name!r}: stamp {stamp:.6f} is {stamp - now:.3f} s in '
                    'the future')
        return ''

    def status(self, now: float) -> ObservationStatus:
        """Whether every stream has a sample younger than its ``max_age_s`` at ``now``."""
        worst_age, worst = 0.0, ObservationStatus(True, 'ok', 0.0)
        ahead = self._ahead_of(now)
        if ahead is not None:
            lead = ahead.stamps[-1] - now
            return ObservationStatus(False, 'clock_back', -lead,
                                     f'the clock went back: stream {ahead.spec.name!r} has a '
                                     f'sample {lead:.3f} s ahead of it (waiting for samples '
                                     'of the new timeline)')
        for buf in self._buffers.values():
            if not buf.stamps:
                return ObservationStatus(False, 'no_data', math.inf,
                                         f'no valid sample on stream {buf.spec.name!r} yet')
            age = now - buf.stamps[-1]
            worst_age = max(worst_age, age)
            if age > buf.spec.max_age_s and worst.ok:
                worst = ObservationStatus(False, 'stale', age,
                                          f'stream {buf.spec.name!r} is {age:.3f} s old '
                                          f'(max {buf.spec.max_age_s:.3f} s)')
        if worst.ok:
            return ObservationStatus(True, 'ok', worst_age)
        return ObservationStatus(False, worst.level, worst_age, worst.message)

    def stacked(self, now: float) -> tuple[np.ndarray, float] | None:
        """The model input: ``n_obs`` frames, oldest first, flattened.

        Returns:
            ``(obs, t_ref)`` with obs of shape (n_obs * frame_dim,) and ``t_ref`` the stamp of
            the newest frame, or None when :meth:`status` is not ok at ``now``.
        """
        if not self.status(now).ok:
            return None
        t_ref = self._buffers[self.streams[0].name].stamps[-1]
        out = np.empty(self.n_obs * self.frame_dim)
        for slot in range(self.n_obs):
            t_k = t_ref - (self.n_obs - 1 - slot) * self.period_s
            frame = out[slot * self.frame_dim:(slot + 1) * self.frame_dim]
            for buf in self._buffers.values():
                frame[buf.indices] = buf.at(t_k)
        return out, t_ref
