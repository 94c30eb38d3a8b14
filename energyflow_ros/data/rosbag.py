"""Read demonstrations from a rosbag2 recording (MCAP or sqlite3) without ROS.

Uses the pure-Python ``rosbags`` library: message definitions come from the bag itself, and from
rosbags' ROS 2 Kilted typestore for bags that carry none. The :class:`BagSpec` says which topics
become observations and actions; :mod:`energyflow_ros.data.align` resamples them onto the frame
clock (each action message, or a fixed rate) and counts every frame it drops by reason.

Errors (:class:`~energyflow_ros.data.dataset.DemoError`) name the bag, the topic and, where it
applies, the joint and the time into the bag: a missing or empty topic, a topic of another type,
a joint absent from a message, unsorted header stamps, a zero header stamp, an array of the wrong
length, and any non-finite action value. Non-finite observation values are not errors: the
frames that would use them are dropped and counted ('<topic>: non-finite value').
"""

from __future__ import annotations

import abc
from collections import defaultdict
from contextlib import contextmanager
import functools
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from energyflow_ros.data.align import (
    NS, ReadReport, Stream, assemble_frames, clock_ticks, gap_segments, marker_segments)
from energyflow_ros.data.bag_config import (
    BOOL, JOINT_STATE, JOINT_TRAJECTORY, POINT_CLOUD, POSE_AXES, POSE_STAMPED, ActionSpec,
    BagSpec, heading_values, StreamSpec, load_bag_spec)
from energyflow_ros.data.dataset import DemoError, DemoSet
from energyflow_ros.data.pointcloud import cloud_points, cloud_summary

__all__ = ['read_rosbag', 'pose_field_values']


@functools.lru_cache(maxsize=1)
def _fallback_typestore() -> Typestore:
    return get_typestore(Stores.ROS2_KILTED)


class _Extractor(abc.ABC):
    """Collects (stamp, values) of one spec entry from the messages of its topic."""

    def __init__(self, bag: str, topic: str, stamp: str, start_ns: int, is_action: bool):
        self.bag, self.topic, self.stamp = bag, topic, stamp
        self.start_ns, self.is_action = start_ns, is_action
        self.stamps: list[int] = []
        self.rows: list[np.ndarray] = []

    def where(self, recv_ns: int) -> str:
        """'<bag>: <topic> at <s> s into the bag' for error messages."""
        return f'{self.bag}: {self.topic} at {(recv_ns - self.start_ns) / NS:.3f} s into the bag'

    def add(self, msg: Any, recv_ns: int) -> None:
        """Take one message received at ``recv_ns``."""
        if self.stamp == 'receive':
            stamp = recv_ns
        else:
            stamp = int(msg.header.stamp.sec) * NS + int(msg.header.stamp.nanosec)
            if stamp == 0:
                raise DemoError(f'{self.where(recv_ns)}: header stamp is zero; use '
                                'stamp: receive for this stream')
        row = np.asarray(self.values(msg, recv_ns), dtype=np.float64)
        if self.is_action and not np.isfinite(row).all():
            bad = int(np.flatnonzero(~np.isfinite(row))[0])
            raise DemoError(f'{self.where(recv_ns)} (stamp {stamp} ns): non-finite action value '
                            f'{row[bad]} for {self.dim_names()[bad]!r}')
        self.stamps.append(stamp)
        self.rows.append(row)

    @abc.abstractmethod
    def values(self, msg: Any, recv_ns: int) -> np.ndarray:
        """The values of one message, in the spec's order."""

    @abc.abstractmethod
    def dim_names(self) -> list[str]:
        """Names of the values, for error messages."""

    def stream(self, label: str, limit_s: float) -> Stream:
        """Everything collected, as a :class:`Stream` (checks the stamps are sorted)."""
        if not self.stamps:
            raise DemoError(f'{self.bag}: topic {self.topic!r} has no messages')
        values = np.stack(self.rows) if self.rows else np.zeros((0, 0))
        try:
            return Stream(label, np.array(self.stamps, dtype=np.int64), values, limit_s)
        except DemoError as exc:
            raise DemoError(f'{self.bag}: {exc}') from exc


class _ByName(_Extractor):
    """Named joints picked by name from a message's name list (JointState, JointTrajectory)."""

    def __init__(self, joints: tuple[str, ...], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.joints = joints
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def indices(self, names: list[str], recv_ns: int) -> np.ndarray:
        """Position of every configured joint in ``names``; DemoError naming a missing one."""
        key = tuple(names)
        idx = self._cache.get(key)
        if idx is None:
            pos = {n: i for i, n in enumerate(names)}
            missing = [j for j in self.joints if j not in pos]
            if missing:
                raise DemoError(f'{self.where(recv_ns)}: joint {missing[0]!r} is missing from '
                                f'the message (it names {list(names)})')
            idx = self._cache[key] = np.array([pos[j] for j in self.joints], dtype=np.int64)
        return idx

    def pick(self, array: np.ndarray, names: list[str], what: str, recv_ns: int) -> np.ndarray:
        """``array[indices]`` after checking it has one value per name."""
        if len(array) != len(names):
            raise DemoError(f'{self.where(recv_ns)}: {what} has {len(array)} values for '
                            f'{len(names)} joint names')
        return np.asarray(array, dtype=np.float64)[self.indices(names, recv_ns)]


class _JointStateValues(_ByName):
    def __init__(self, fields: tuple[str, ...], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields = fields

    def values(self, msg: Any, recv_ns: int) -> np.ndarray:
        cols = [self.pick(getattr(msg, f), msg.name, f, recv_ns) for f in self.fields]
        return np.stack(cols, axis=1).reshape(-1)

    def dim_names(self) -> list[str]:
        return [f'{j}/{f}' for j in self.joints for f in self.fields]


class _TrajectoryValues(_ByName):
    def values(self, msg: Any, recv_ns: int) -> np.ndarray:
        if not msg.points:
            raise DemoError(f'{self.where(recv_ns)}: JointTrajectory has no points')
        return self.pick(msg.points[0].positions, msg.joint_names, 'points[0].positions',
                         recv_ns)

    def dim_names(self) -> list[str]:
        return list(self.joints)


class _MultiArrayValues(_Extractor):
    def __init__(self, names: list[str], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.names = names

    def values(self, msg: Any, recv_ns: int) -> np.ndarray:
        if len(msg.data) != len(self.names):
            raise DemoError(f'{self.where(recv_ns)}: Float64MultiArray has {len(msg.data)} '
                            f'values, the spec expects {len(self.names)}')
        return msg.data

    def dim_names(self) -> list[str]:
        return self.names


def pose_field_values(pose: Any, fields: tuple[str, ...] | list[str]) -> np.ndarray:
    """The named fields (see ``bag_config.POSE_AXES``) of a geometry_msgs Pose, in order.

    Shared with the recorder so that what it saves and what is read back agree bit for bit.
    """
    p, q = pose.position, pose.orientation
    parts = {'position': [p.x, p.y, p.z], 'orientation': [q.x, q.y, q.z, q.w],
             'x': [p.x], 'y': [p.y], 'z': [p.z],
             **{name: [v] for name, v in heading_values(q.x, q.y, q.z, q.w).items()}}
    return np.array([v for f in fields for v in parts[f]], dtype=np.float64)


class _PoseValues(_Extractor):
    def __init__(self, fields: tuple[str, ...], *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields = fields

    def values(self, msg: Any, recv_ns: int) -> np.ndarray:
        return pose_field_values(msg.pose, self.fields)

    def dim_names(self) -> list[str]:
        return [f'{f}/{a}'.rstrip('/') for f in self.fields for a in POSE_AXES[f]]


class _CloudValues(_Extractor):
    def __init__(self, fields: tuple[str, ...], n_points: int, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields, self.n_points = fields, n_points

    def values(self, msg: Any, recv_ns: int) -> np.ndarray:
        try:
            points = cloud_points(msg, self.fields)
        except ValueError as exc:
            raise DemoError(f'{self.where(recv_ns)}: {exc}') from exc
        summary = cloud_summary(points, self.n_points)
        if summary is None:  # too few points: a non-finite frame, dropped and counted
            return np.full(len(self.fields) * max(self.n_points, 1), np.nan)
        return summary

    def dim_names(self) -> list[str]:
        points = ['centroid'] if self.n_points == 0 else [f'p{i}' for i in range(self.n_points)]
        return [f'{p}/{f}' for p in points for f in self.fields]


class _MarkerValues(_Extractor):
    def values(self, msg: Any, recv_ns: int) -> np.ndarray:
        return np.array([float(msg.data)])

    def dim_names(self) -> list[str]:
        return ['data']


def _observation_extractor(s: StreamSpec, bag: str, start_ns: int) -> _Extractor:
    common = (bag, s.topic, s.stamp, start_ns, False)
    if s.type == JOINT_STATE:
        return _JointStateValues(s.fields, s.joints, *common)
    if s.type == POSE_STAMPED:
        return _PoseValues(s.fields, *common)
    if s.type == POINT_CLOUD:
        return _CloudValues(s.fields, s.n_points, *common)
    return _MultiArrayValues(s.names(), *common)


def _action_extractor(a: ActionSpec, bag: str, start_ns: int) -> _Extractor:
    common = (bag, a.topic, a.stamp, start_ns, True)
    if a.type == JOINT_STATE:
        return _JointStateValues(('position',), a.joints, *common)
    if a.type == JOINT_TRAJECTORY:
        return _TrajectoryValues(a.joints, *common)
    return _MultiArrayValues(list(a.joints), *common)


@contextmanager
def _open_bag(path: Path) -> Iterator[AnyReader]:
    if not path.exists():
        raise DemoError(f'rosbag not found: {path}')
    try:
        reader = AnyReader([path], default_typestore=_fallback_typestore())
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as exc:
        raise DemoError(f'{path}: not a readable rosbag2 recording ({exc})') from exc
    try:
        yield reader
    finally:
        reader.close()


def _check_topics(reader: AnyReader, bag: str, spec: BagSpec) -> None:
    """DemoError for an empty bag, a missing topic, or a topic of another type."""
    if reader.message_count == 0:
        raise DemoError(f'{bag}: the bag is empty (no messages)')
    have = {c.topic: c.msgtype for c in reader.connections}
    wanted = [('observation', s.topic, s.type) for s in spec.observations]
    wanted.append(('action', spec.action.topic, spec.action.type))
    if spec.episodes.topic is not None:
        wanted.append(('episode marker', spec.episodes.topic, spec.episodes.type))
    for role, topic, msg_type in wanted:
        if topic not in have:
            raise DemoError(f'{bag}: {role} topic {topic!r} is not in the bag; it has '
                            f'{sorted(have)}')
        if have[topic] != msg_type:
            raise DemoError(f'{bag}: {role} topic {topic!r} has type {have[topic]}, but the '
                            f'spec says {msg_type}')


def _deserialize(reader: AnyReader, raw: bytes, msg_type: str) -> Any:
    if msg_type in reader.typestore.fielddefs:
        return reader.deserialize(raw, msg_type)
    return _fallback_typestore().deserialize_cdr(raw, msg_type)


def _read_topics(path: Path, spec: BagSpec,
                 report: ReadReport) -> tuple[list[_Extractor], _Extractor | None]:
    """One pass over the bag, feeding every message to the extractors of its topic."""
    bag = str(path)
    with _open_bag(path) as reader:
        _check_topics(reader, bag, spec)
        start = reader.start_time
        extractors = [_observation_extractor(s, bag, start) for s in spec.observations]
        extractors.append(_action_extractor(spec.action, bag, start))
        marker = None
        if spec.episodes.topic is not None:
            marker = _MarkerValues(bag, spec.episodes.topic, 'receive', start, False)
        by_topic: dict[str, list[_Extractor]] = defaultdict(list)
        for ex in extractors + ([marker] if marker else []):
            by_topic[ex.topic].append(ex)
        connections = [c for c in reader.connections if c.topic in by_topic]
        counts: dict[str, int] = defaultdict(int)
        for conn, recv_ns, raw in reader.messages(connections=connections):
            msg = _deserialize(reader, raw, conn.msgtype)
            counts[conn.topic] += 1
            for ex in by_topic[conn.topic]:
                ex.add(msg, recv_ns)
    report.messages.update({t: counts.get(t, 0) for t in by_topic})
    return extractors, marker


def _episode_segments(spec: BagSpec, action: Stream, marker: _Extractor | None,
                      bag: str) -> list[tuple[int, int]]:
    """Time intervals of the episodes: split at action gaps, or by the marker topic."""
    if marker is None:
        return gap_segments(action.stamps, int(round(float(spec.episodes.gap_s) * NS)))
    markers = marker.stream('episode marker', 0.0)
    value = markers.values[:, 0]
    if spec.episodes.type == BOOL:
        active = value > 0.5
        ids = np.cumsum(active & ~np.concatenate([[False], active[:-1]]))
    else:
        active, ids = value >= 0, value.astype(np.int64)
    segments = marker_segments(markers.stamps, ids, active, int(action.stamps[-1]) + 1)
    if not segments:
        raise DemoError(f'{bag}: episode topic {spec.episodes.topic!r} never marks an episode '
                        'as running')
    return segments


def _as_spec(spec: BagSpec | Mapping[str, Any] | str | os.PathLike[str]) -> BagSpec:
    if isinstance(spec, BagSpec):
        return spec
    if isinstance(spec, Mapping):
        return BagSpec.from_dict(spec)
    return load_bag_spec(spec)


def read_rosbag(bag_path: str | os.PathLike[str],
                spec: BagSpec | Mapping[str, Any] | str | os.PathLike[str]
                ) -> tuple[DemoSet, ReadReport]:
    """Read a rosbag2 recording (directory, .mcap or .db3) into frames of demonstrations.

    Args:
        bag_path: the bag directory (with metadata.yaml) or a single storage file.
        spec: a :class:`BagSpec`, its dictionary form, or the path of its YAML file.

    Returns:
        demos: observations (streams concatenated in spec order), actions (joint order of the
            spec), episode ends; ``meta`` holds the source, the spec and the frame rate.
        report: messages read per topic and every dropped frame counted by reason.

    Raises:
        DemoError: naming the bag, topic, joint or time of what is missing or wrong.
    """
    spec = _as_spec(spec)
    path = Path(bag_path)
    report = ReadReport(source=str(path))
    extractors, marker = _read_topics(path, spec, report)
    observations = [ex.stream(s.topic, spec.limit_s(s.max_age_s))
                    for ex, s in zip(extractors, spec.observations)]
    action = extractors[-1].stream(f'action {spec.action.topic}',
                                   spec.limit_s(spec.action.max_age_s))
    segments = _episode_segments(spec, action, marker, str(path))
    ticks, outside = clock_ticks(segments, spec.rate_hz, action.stamps)
    report.frames_considered += outside
    report.count_drop('action message outside an episode (episode marker)', outside)
    obs, actions, ends = assemble_frames(ticks, observations, action, spec.align,
                                         spec.action.shift_steps, report)
    gaps = np.concatenate([np.diff(t.times) for t in ticks])
    rate = spec.rate_hz or (NS / float(np.median(gaps)) if len(gaps) and np.median(gaps) > 0
                            else None)
    meta = {'source': str(path.resolve()), 'format': 'rosbag2', 'spec': spec.to_dict(),
            'rate_hz': rate, 'clock': 'fixed rate' if spec.rate_hz else 'action messages'}
    demos = DemoSet(obs=obs, actions=actions, episode_ends=ends, obs_names=spec.obs_names(),
                    action_names=list(spec.action.joints), meta=meta)
    return demos, report
