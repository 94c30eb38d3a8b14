"""Time alignment of message streams onto a frame clock, the read report and its summary.

Pure numpy, no ROS: the rosbag reader turns messages into :class:`Stream` objects (stamps in
integer nanoseconds, one row of values per message) and this module resamples them.

Alignment of one stream at a frame time t (``limit`` is the stream's max_age_s):

* ``hold``: the last message with stamp <= t; the frame is dropped when there is none
  ('no message yet') or when t - stamp > limit ('older than max_age_s'). Causal, as at run time.
* ``asof``: the nearest message, before or after t (ties go to the earlier one); the frame is
  dropped when it is more than ``limit`` away ('none within max_age_s').

A frame whose aligned observation message holds a non-finite value is dropped ('non-finite
value'). Each dropped frame is counted once, under the first failing stream in spec order
(observations, then action), so the counts add up to the frames dropped. Frames that survive
form contiguous runs; a drop inside an episode splits it, so no training window spans a hole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from typing import Sequence

import numpy as np

from energyflow_ros.data.dataset import DemoError, DemoSet

__all__ = [
    'Stream', 'ReadReport', 'Ticks', 'summarize', 'align_hold', 'align_asof', 'gap_segments',
    'marker_segments', 'clock_ticks', 'assemble_frames', 'kept_runs', 'NS',
]

NS = 1_000_000_000
OK, NO_MESSAGE, TOO_OLD, TOO_FAR, NON_FINITE, NO_LATER, BEFORE_EPISODE = range(7)
_LOG = logging.getLogger(__name__)


@dataclass
class Stream:
    """Time-stamped values of one stream.

    Attributes:
        label: what drop reasons and errors call it (e.g. the topic).
        stamps: (n,) int64 nanoseconds, non-decreasing.
        values: (n, d) float64, one row per message.
        limit_s: max_age_s used when aligning this stream.
    """

    label: str
    stamps: np.ndarray
    values: np.ndarray
    limit_s: float = 0.1

    def __post_init__(self) -> None:
        self.stamps = np.asarray(self.stamps, dtype=np.int64).reshape(-1)
        self.values = np.asarray(self.values, dtype=np.float64).reshape(len(self.stamps), -1)
        back = np.flatnonzero(np.diff(self.stamps) < 0)
        if len(back):
            i = int(back[0])
            raise DemoError(f'{self.label}: stamps are not sorted: message {i + 1} is stamped '
                            f'{self.stamps[i + 1]} ns, before message {i} at {self.stamps[i]} '
                            'ns (use stamp: receive, or re-stamp the recording)')

    @property
    def finite(self) -> np.ndarray:
        """(n,) bool, True where every value of the message is finite."""
        return np.isfinite(self.values).all(axis=1)

    @property
    def limit_ns(self) -> int:
        """``limit_s`` in nanoseconds."""
        return int(round(self.limit_s * NS))


@dataclass
class ReadReport:
    """What a reader read and everything it did not turn into frames, counted by reason.

    Attributes:
        source: the file or directory read.
        frames_considered: frame times examined (kept + dropped).
        dropped: reason -> number of frames dropped for it.
        messages: topic or key -> messages (rows) read.
        notes: other things worth knowing (ignored features, split episodes, ...).
    """

    source: str = ''
    frames_considered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def count_drop(self, reason: str, n: int) -> None:
        """Add ``n`` frames dropped for ``reason``."""
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(n)

    def note(self, text: str) -> None:
        """Record and log a note."""
        self.notes.append(text)
        _LOG.info('%s: %s', self.source, text)

    @property
    def frames_dropped(self) -> int:
        """Total frames dropped."""
        return sum(self.dropped.values())


def align_hold(stamps: np.ndarray, times: np.ndarray,
               limit_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Last message at or before each time, at most ``limit_ns`` old.

    Args:
        stamps: (n,) sorted message stamps.
        times: (m,) frame times.
        limit_ns: maximum age.

    Returns:
        index: (m,) message index per frame (clipped to 0 where there is none).
        code: (m,) OK, NO_MESSAGE or TOO_OLD.
    """
    idx = np.searchsorted(stamps, times, side='right') - 1
    code = np.full(len(times), OK, dtype=np.int8)
    code[idx < 0] = NO_MESSAGE
    idx = np.maximum(idx, 0)
    if len(stamps):
        code[(code == OK) & (times - stamps[idx] > limit_ns)] = TOO_OLD
    return idx, code


def align_asof(stamps: np.ndarray, times: np.ndarray,
               limit_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest message to each time (earlier on ties), at most ``limit_ns`` away.

    Returns:
        index: (m,) message index per frame.
        code: (m,) OK or TOO_FAR.
    """
    if not len(stamps):
        return np.zeros(len(times), dtype=np.int64), np.full(len(times), TOO_FAR, np.int8)
    right = np.clip(np.searchsorted(stamps, times, side='left'), 0, len(stamps) - 1)
    left = np.maximum(right - 1, 0)
    take_left = np.abs(times - stamps[left]) <= np.abs(stamps[right] - times)
    idx = np.where(take_left, left, right)
    code = np.where(np.abs(times - stamps[idx]) > limit_ns, TOO_FAR, OK).astype(np.int8)
    return idx, code


def gap_segments(stamps: np.ndarray, gap_ns: int) -> list[tuple[int, int]]:
    """Split sorted stamps where consecutive ones are more than ``gap_ns`` apart.

    Returns:
        Half-open time intervals [first stamp, last stamp + 1) of every segment.
    """
    if not len(stamps):
        return []
    cuts = np.flatnonzero(np.diff(stamps) > gap_ns) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(stamps)]])
    return [(int(stamps[a]), int(stamps[b - 1]) + 1) for a, b in zip(starts, stops)]


def marker_segments(stamps: np.ndarray, ids: np.ndarray, active: np.ndarray,
                    end_ns: int) -> list[tuple[int, int]]:
    """Intervals during which an episode marker is active with the same episode id.

    Args:
        stamps: (n,) sorted marker times.
        ids: (n,) episode id per marker.
        active: (n,) whether an episode runs from that marker on.
        end_ns: end of the last interval when the recording stops inside an episode
            (exclusive).

    Returns:
        Half-open time intervals, one per episode.
    """
    out: list[tuple[int, int]] = []
    state = list(zip(active.tolist(), ids.tolist()))
    change = [i for i in range(len(state)) if i == 0 or state[i] != state[i - 1]]
    for k, i in enumerate(change):
        if not state[i][0]:
            continue
        stop = int(stamps[change[k + 1]]) if k + 1 < len(change) else max(end_ns, int(
            stamps[i]) + 1)
        if stop > int(stamps[i]):
            out.append((int(stamps[i]), stop))
    return out


@dataclass
class Ticks:
    """Frame times of one episode segment.

    Attributes:
        times: (m,) frame times in nanoseconds.
        action_index: (m,) index of the action message of each frame when the action topic is
            the clock, else None (the action is aligned like any stream).
    """

    times: np.ndarray
    action_index: np.ndarray | None = None


def clock_ticks(segments: Sequence[tuple[int, int]], rate_hz: float | None,
                action_stamps: np.ndarray) -> tuple[list[Ticks], int]:
    """Frame times of every segment: each action message in it, or a fixed-rate grid.

    Returns:
        ticks: one :class:`Ticks` per segment that has at least one frame.
        outside: action messages outside every segment (action clock only; 0 otherwise).
    """
    out: list[Ticks] = []
    inside = 0
    for start, stop in segments:
        if rate_hz is None:
            lo, hi = np.searchsorted(action_stamps, [start, stop], side='left')
            index = np.arange(lo, hi)
            inside += len(index)
            if len(index):
                out.append(Ticks(action_stamps[index], index))
            continue
        count = int(np.floor((stop - 1 - start) * rate_hz / NS)) + 1
        times = start + np.round(np.arange(count) * (NS / rate_hz)).astype(np.int64)
        out.append(Ticks(times[times < stop]))
    outside = len(action_stamps) - inside if rate_hz is None else 0
    return out, outside


def kept_runs(keep: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in ``keep`` as half-open (start, stop) index pairs."""
    padded = np.concatenate([[False], keep, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _reason(stream: Stream, code: int, shift: int) -> str:
    return {
        NO_MESSAGE: f'{stream.label}: no message yet',
        TOO_OLD: f'{stream.label}: last message older than max_age_s ({stream.limit_s} s)',
        TOO_FAR: f'{stream.label}: no message within max_age_s ({stream.limit_s} s)',
        NON_FINITE: f'{stream.label}: non-finite value',
        NO_LATER: f'{stream.label}: no frame {shift} step(s) later in the episode',
        BEFORE_EPISODE: f'{stream.label}: only a message from before the episode began',
    }[code]


def _align(stream: Stream, times: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    aligner = align_hold if mode == 'hold' else align_asof
    idx, code = aligner(stream.stamps, times, stream.limit_ns)
    if len(stream.stamps):
        code[(code == OK) & ~stream.finite[idx]] = NON_FINITE
    return idx, code


def _shift(idx: np.ndarray, code: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    if steps == 0:
        return idx, code
    idx = np.concatenate([idx[steps:], np.zeros(min(steps, len(idx)), dtype=idx.dtype)])
    code = np.concatenate([code[steps:], np.full(min(steps, len(code)), NO_LATER, np.int8)])
    return idx, code


def assemble_frames(ticks: Sequence[Ticks], observations: Sequence[Stream], action: Stream,
                    mode: str, shift_steps: int,
                    report: ReadReport) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align every stream on every segment's ticks, drop and count bad frames, cut episodes.

    Returns:
        obs: (T, obs_dim) concatenated observations, streams in the given order.
        actions: (T, action_dim) actions (of frame k + shift_steps).
        episode_ends: (E,) exclusive end of every run of kept frames.
    """
    streams = [*observations, action]
    obs_rows, act_rows, lengths, splits = [], [], [], 0
    for tick in ticks:
        picks = [_align(s, tick.times, mode) for s in observations]
        if tick.action_index is None:
            idx, code = _align(action, tick.times, mode)
            if len(action.stamps):  # held over from the previous episode (marker splits)
                code[(code == OK) & (action.stamps[idx] < tick.times[0])] = BEFORE_EPISODE
            picks.append(_shift(idx, code, shift_steps))
        else:
            picks.append(_shift(tick.action_index, np.zeros(len(tick.times), np.int8),
                                shift_steps))
        first_bad = np.full(len(tick.times), -1)
        for k, (_, code) in enumerate(picks):
            hit = (first_bad < 0) & (code != OK)
            first_bad[hit] = k
            for c in np.unique(code[hit]):
                report.count_drop(_reason(streams[k], int(c), shift_steps),
                                  int(np.sum(code[hit] == c)))
        report.frames_considered += len(tick.times)
        runs = kept_runs(first_bad < 0)
        splits += max(len(runs) - 1, 0)
        for a, b in runs:
            obs_rows.append(np.concatenate([s.values[i[a:b]] for s, (i, _) in zip(
                observations, picks[:-1])], axis=1))
            act_rows.append(action.values[picks[-1][0][a:b]])
            lengths.append(b - a)
    if splits:
        report.note(f'{splits} episode(s) split where frames were dropped mid-episode')
    if not lengths:
        raise DemoError(f'{report.source}: no frame survived alignment; dropped: '
                        f'{report.dropped or "nothing (no frame times)"}')
    return np.concatenate(obs_rows), np.concatenate(act_rows), np.cumsum(lengths)


def _dim_lines(names: Sequence[str], x: np.ndarray) -> list[str]:
    width = min(max((len(n) for n in names), default=4), 48)
    lines = [f'    {"name":<{width}}  {"min":>10}  {"max":>10}  {"mean":>10}  {"std":>10}']
    for j, name in enumerate(names):
        col = x[:, j]
        flag = '  (constant)' if col.min() == col.max() else ''
        lines.append(f'    {name:<{width}}  {col.min():>10.4g}  {col.max():>10.4g}  '
                     f'{col.mean():>10.4g}  {col.std():>10.4g}{flag}')
    return lines


def summarize(demos: DemoSet, report: ReadReport | None = None) -> str:
    """Human-readable summary to print before training.

    Lists episodes and their lengths, frames kept and dropped with every reason, the reader's
    notes, and the range, mean and spread of every observation and action dimension.
    """
    lengths = np.diff(np.concatenate([[0], demos.episode_ends]))
    source = (report.source if report and report.source else demos.meta.get('source', '?'))
    lines = [f'Demonstrations from {source}',
             f'  episodes: {demos.n_episodes}  frames: {len(demos.obs)}  (episode length min '
             f'{lengths.min()}, median {int(np.median(lengths))}, max {lengths.max()})']
    if report is not None:
        lines.append(f'  frames dropped: {report.frames_dropped} of '
                     f'{max(report.frames_considered, len(demos.obs))}')
        for reason, n in sorted(report.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f'    {n:>7}  {reason}')
        if report.messages:
            read = ', '.join(f'{k} {v}' for k, v in report.messages.items())
            lines.append(f'  read: {read}')
        lines += [f'  note: {n}' for n in report.notes]
    lines.append(f'  observation dims ({demos.obs.shape[1]}):')
    lines += _dim_lines(demos.obs_names, demos.obs)
    lines.append(f'  action dims ({demos.actions.shape[1]}):')
    lines += _dim_lines(demos.action_names, demos.actions)
    return '\n'.join(lines)
