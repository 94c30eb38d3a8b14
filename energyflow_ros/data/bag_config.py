"""What to read from a rosbag2 recording: the YAML spec as validated dataclasses.

A :class:`BagSpec` names the observation streams (concatenated in the order given), the action
stream, how frames are clocked and aligned, and how the recording splits into episodes::

    rate_hz: 10.0              # omit to make every action message one frame
    align: hold                # hold (last value, causal) | asof (nearest within the limit)
    tolerance_s: 0.1           # default max_age_s of every stream
    observations:
      - topic: /joint_states
        type: sensor_msgs/msg/JointState
        joints: [shoulder, elbow, wrist]      # matched by name, never by index
        fields: [position, velocity]          # default [position]
        stamp: header                         # header | receive
        max_age_s: 0.05
      - topic: /tool_pose
        type: geometry_msgs/msg/PoseStamped
        fields: [position, orientation]       # default: both (x y z, qx qy qz qw)
      - topic: /gripper/state
        type: std_msgs/msg/Float64MultiArray
        size: 2                               # no header: stamp is always receive
    action:
      topic: /forward_position_controller/commands
      type: std_msgs/msg/Float64MultiArray    # positional, in the controller's joint order
      joints: [shoulder, elbow, wrist]
    episodes:
      gap_s: 1.0                              # or: topic: /episode, type: std_msgs/msg/Bool

Every class checks its fields on construction and raises :class:`BagSpecError` naming the
field, the value and what is allowed; :meth:`BagSpec.from_dict` also rejects unknown keys by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
import math
import os
from typing import Any, Mapping

import yaml

from energyflow_ros.core.config import config_to_dict, ConfigError
from energyflow_ros.data.dataset import DemoError

__all__ = [
    'BagSpecError', 'HEADINGS', 'POSE_AXES', 'heading_values', 'StreamSpec', 'ActionSpec',
    'EpisodeSpec', 'BagSpec', 'load_bag_spec',
    'JOINT_STATE', 'MULTI_ARRAY', 'POSE_STAMPED', 'POINT_CLOUD', 'JOINT_TRAJECTORY', 'BOOL',
    'INT32',
]

JOINT_STATE = 'sensor_msgs/msg/JointState'
MULTI_ARRAY = 'std_msgs/msg/Float64MultiArray'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
JOINT_TRAJECTORY = 'trajectory_msgs/msg/JointTrajectory'
BOOL = 'std_msgs/msg/Bool'
INT32 = 'std_msgs/msg/Int32'

POINT_CLOUD = 'sensor_msgs/msg/PointCloud2'
OBS_TYPES = (JOINT_STATE, MULTI_ARRAY, POSE_STAMPED, POINT_CLOUD)
ACTION_TYPES = (MULTI_ARRAY, JOINT_TRAJECTORY, JOINT_STATE)
MARKER_TYPES = (BOOL, INT32)
HEADERLESS = (MULTI_ARRAY, BOOL, INT32)
HEADINGS = ('yaw', 'yaw_2pi', 'yaw_cos', 'yaw_sin')


def heading_values(qx: float, qy: float, qz: float, qw: float) -> dict[str, float]:
    """A quaternion's heading about z under each name in :data:`HEADINGS`: ``yaw`` in
    [-pi, pi), ``yaw_2pi`` in [0, 2 pi), ``yaw_cos`` and ``yaw_sin`` (no jump anywhere).

    The one definition the bag reader, the recorder and the nodes' pose streams share.
    """
    yaw = math.atan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))
    return {'yaw': yaw, 'yaw_2pi': yaw % (2.0 * math.pi), 'yaw_cos': math.cos(yaw),
            'yaw_sin': math.sin(yaw)}


# PoseStamped fields and the dimensions each contributes; 'yaw' is the heading about z
# (planar poses such as a pushed block; yaw_cos / yaw_sin give it without a jump), the single
# axes pick one coordinate.
POSE_AXES = {'position': ('x', 'y', 'z'), 'orientation': ('x', 'y', 'z', 'w'),
             'x': ('',), 'y': ('',), 'z': ('',), **{name: ('',) for name in HEADINGS}}
FIELD_CHOICES = {JOINT_STATE: ('position', 'velocity', 'effort'),
                 POSE_STAMPED: tuple(POSE_AXES)}
DEFAULT_FIELDS = {JOINT_STATE: ('position',), POSE_STAMPED: ('position', 'orientation'),
                  POINT_CLOUD: ('x', 'y', 'z'),
                  MULTI_ARRAY: ()}
ALIGN_MODES = ('hold', 'asof')
STAMP_SOURCES = ('header', 'receive')
LEFT_OUT: dict[str, str] = {}  # types we recognise but do not read, with the reason


class BagSpecError(ConfigError, DemoError):
    """A bag spec field holds a value that is not allowed (both a ConfigError and a DemoError)."""


def _fail(owner: str, name: str, value: Any, allowed: str) -> None:
    raise BagSpecError(f'{owner}.{name} = {value!r} is invalid: expected {allowed}')


def _normalize_type(owner: str, value: Any, allowed: tuple[str, ...]) -> str:
    """'sensor_msgs/JointState' or 'sensor_msgs/msg/JointState' -> 'sensor_msgs/msg/JointState'."""
    if isinstance(value, str):
        parts = value.strip().split('/')
        full = f'{parts[0]}/msg/{parts[1]}' if len(parts) == 2 else '/'.join(parts)
        if full in allowed:
            return full
        if full in LEFT_OUT:
            _fail(owner, 'type', value, f'one of {list(allowed)}; {LEFT_OUT[full]}')
    _fail(owner, 'type', value, f'one of {list(allowed)}')
    return ''


def _check_topic(owner: str, topic: Any) -> None:
    if not (isinstance(topic, str) and topic.startswith('/') and len(topic) > 1):
        _fail(owner, 'topic', topic, "an absolute topic name such as '/joint_states'")


def _check_limit(owner: str, name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        _fail(owner, name, value, 'a finite positive number of seconds'
              + (' or null' if optional else ''))


def _check_names(owner: str, name: str, value: tuple[Any, ...], required: bool) -> None:
    if not value and not required:
        return
    ok = len(value) > 0 and all(isinstance(v, str) and v for v in value)
    if not ok or len(set(value)) != len(value):
        _fail(owner, name, list(value), 'a non-empty list of distinct names')


def _resolve_stamp(owner: str, msg_type: str, stamp: Any, default: str) -> str:
    if stamp is None:
        return 'receive' if msg_type in HEADERLESS else default
    if stamp not in STAMP_SOURCES:
        _fail(owner, 'stamp', stamp, f'one of {list(STAMP_SOURCES)}')
    if stamp == 'header' and msg_type in HEADERLESS:
        _fail(owner, 'stamp', stamp, f"'receive' ({msg_type} has no header)")
    return stamp


@dataclass(frozen=True)
class StreamSpec:
    """One observation stream; its values are appended to the observation vector in this order.

    Attributes:
        topic: absolute topic name.
        type: sensor_msgs/msg/JointState, std_msgs/msg/Float64MultiArray or
            geometry_msgs/msg/PoseStamped (the short form 'pkg/Type' is accepted).
        joints: JointState only: joint names, matched by name in every message.
        fields: JointState: any of position, velocity, effort (default position);
            PoseStamped: any of position (x y z), orientation (qx qy qz qw), or the single
            values x, y, z, yaw (heading about z in [-pi, pi)), yaw_2pi (the same in
            [0, 2 pi)), yaw_cos and yaw_sin (its cosine and sine: no jump where the heading
            wraps round) (default position and orientation).
            PointCloud2: point field names (default x y z).
        size: Float64MultiArray only: the length every message must have.
        n_points: PointCloud2 only: 0 (default) for the centroid of the finite points, k for
            the first k finite points, flattened.
        stamp: 'header' or 'receive' (the recorder's receive time); default header when the
            type has one, receive otherwise.
        max_age_s: how old (hold) or how far (asof) a message may be from the frame time;
            default the spec's ``tolerance_s``.
    """

    topic: str
    type: str
    joints: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    size: int | None = None
    stamp: str | None = None
    max_age_s: float | None = None
    n_points: int = 0

    def __post_init__(self) -> None:
        owner = f'observation {self.topic}'
        _check_topic('observation', self.topic)
        msg_type = _normalize_type(owner, self.type, OBS_TYPES)
        object.__setattr__(self, 'type', msg_type)
        object.__setattr__(self, 'joints', tuple(self.joints))
        object.__setattr__(self, 'fields', tuple(self.fields) or DEFAULT_FIELDS[msg_type])
        _check_names(owner, 'joints', self.joints, required=msg_type == JOINT_STATE)
        if self.joints and msg_type != JOINT_STATE:
            _fail(owner, 'joints', list(self.joints), f'no joints for {msg_type}')
        self._check_fields_and_size(owner, msg_type)
        object.__setattr__(self, 'stamp', _resolve_stamp(owner, msg_type, self.stamp, 'header'))
        _check_limit(owner, 'max_age_s', self.max_age_s)

    def _check_fields_and_size(self, owner: str, msg_type: str) -> None:
        if msg_type == MULTI_ARRAY:
            if self.size is None or isinstance(self.size, bool) or not isinstance(
                    self.size, int) or self.size <= 0:
                _fail(owner, 'size', self.size, f'a positive integer (required for {msg_type})')
            if self.fields:
                _fail(owner, 'fields', list(self.fields), f'no fields for {msg_type}')
            return
        if self.size is not None:
            _fail(owner, 'size', self.size, f'no size for {msg_type}')
        bad_count = isinstance(self.n_points, bool) or not isinstance(
            self.n_points, int) or self.n_points < 0
        if bad_count or (self.n_points and msg_type != POINT_CLOUD):
            _fail(owner, 'n_points', self.n_points, 'an integer >= 0, PointCloud2 only')
        if msg_type == POINT_CLOUD:
            if not all(isinstance(f, str) and f for f in self.fields) or len(
                    set(self.fields)) != len(self.fields):
                _fail(owner, 'fields', list(self.fields), 'distinct point field names')
            return
        choices = FIELD_CHOICES[msg_type]
        if any(f not in choices for f in self.fields) or len(set(self.fields)) != len(
                self.fields):
            _fail(owner, 'fields', list(self.fields), f'distinct entries of {list(choices)}')

    @property
    def dim(self) -> int:
        """Number of observation dimensions this stream contributes."""
        if self.type == JOINT_STATE:
            return len(self.joints) * len(self.fields)
        if self.type == MULTI_ARRAY:
            return int(self.size or 0)
        if self.type == POINT_CLOUD:
            return len(self.fields) * max(self.n_points, 1)
        return sum(len(POSE_AXES[f]) for f in self.fields)

    def names(self) -> list[str]:
        """One name per dimension, e.g. '/joint_states/elbow/position'."""
        if self.type == JOINT_STATE:
            return [f'{self.topic}/{j}/{f}' for j in self.joints for f in self.fields]
        if self.type == MULTI_ARRAY:
            return [f'{self.topic}/{i}' for i in range(self.dim)]
        if self.type == POINT_CLOUD:
            points = ['centroid'] if self.n_points == 0 else [
                f'p{i}' for i in range(self.n_points)]
            return [f'{self.topic}/{p}/{f}' for p in points for f in self.fields]
        return [f'{self.topic}/{f}/{a}'.rstrip('/') for f in self.fields for a in POSE_AXES[f]]


@dataclass(frozen=True)
class ActionSpec:
    """The action stream: one action per frame, named by joint.

    Attributes:
        topic: absolute topic name.
        type: std_msgs/msg/Float64MultiArray (forward_command_controller: positional, in the
            order of ``joints``), trajectory_msgs/msg/JointTrajectory (by name, first point's
            positions) or sensor_msgs/msg/JointState (by name, positions; use with
            ``shift_steps: 1`` to learn the measured position of the next frame).
        joints: joint names, in the order the actions are stored.
        stamp: 'header' or 'receive'; default header for JointState (as its observation
            stream), receive for commands (their headers are often zero).
        max_age_s: limit for aligning actions to a fixed-rate clock; default ``tolerance_s``.
        shift_steps: the action of frame k is this stream's value at frame k + shift_steps of
            the same episode; the last ``shift_steps`` frames of every episode are dropped.
    """

    topic: str
    type: str
    joints: tuple[str, ...] = ()
    stamp: str | None = None
    max_age_s: float | None = None
    shift_steps: int = 0

    def __post_init__(self) -> None:
        owner = f'action {self.topic}'
        _check_topic('action', self.topic)
        msg_type = _normalize_type(owner, self.type, ACTION_TYPES)
        object.__setattr__(self, 'type', msg_type)
        object.__setattr__(self, 'joints', tuple(self.joints))
        _check_names(owner, 'joints', self.joints, required=True)
        # a JointState action (the measured position) is stamped like the JointState it is
        # observed as; commands keep receive time (their headers are often zero)
        default = 'header' if msg_type == JOINT_STATE else 'receive'
        object.__setattr__(self, 'stamp', _resolve_stamp(owner, msg_type, self.stamp, default))
        _check_limit(owner, 'max_age_s', self.max_age_s)
        if isinstance(self.shift_steps, bool) or not isinstance(
                self.shift_steps, int) or self.shift_steps < 0:
            _fail(owner, 'shift_steps', self.shift_steps, 'an integer >= 0')


@dataclass(frozen=True)
class EpisodeSpec:
    """How the recording splits into episodes: a time gap, or an episode marker topic.

    Attributes:
        gap_s: a new episode starts where consecutive action messages are more than this many
            seconds apart (the default, 1.0 s, when no topic is given).
        topic: episode marker topic instead of a gap. std_msgs/msg/Bool: true while an episode
            runs, every false -> true change starts a new one. std_msgs/msg/Int32: the episode
            number, a change starts a new episode, a negative value means between episodes.
            Markers are timed by receive time and hold until the next marker.
        type: the marker's type, std_msgs/msg/Bool (default) or std_msgs/msg/Int32.
    """

    gap_s: float | None = None
    topic: str | None = None
    type: str = BOOL

    def __post_init__(self) -> None:
        if self.topic is None:
            object.__setattr__(self, 'gap_s', 1.0 if self.gap_s is None else self.gap_s)
            _check_limit('episodes', 'gap_s', self.gap_s, optional=False)
            return
        if self.gap_s is not None:
            _fail('episodes', 'gap_s', self.gap_s, 'null when an episode topic is given '
                  '(choose gap_s or topic)')
        _check_topic('episodes', self.topic)
        object.__setattr__(self, 'type', _normalize_type('episodes', self.type, MARKER_TYPES))


@dataclass(frozen=True)
class BagSpec:
    """Everything :func:`energyflow_ros.data.rosbag.read_rosbag` needs to turn a bag into frames.

    Attributes:
        observations: the observation streams, concatenated in this order.
        action: the action stream.
        rate_hz: fixed frame rate; None makes every action message (in each episode) a frame.
        align: 'hold' (last message at or before the frame time, at most max_age_s old) or
            'asof' (the nearest message, before or after, at most max_age_s away).
        tolerance_s: default ``max_age_s`` for every stream that does not set its own.
        episodes: how the recording splits into episodes.
    """

    observations: tuple[StreamSpec, ...]
    action: ActionSpec
    rate_hz: float | None = None
    align: str = 'hold'
    tolerance_s: float = 0.1
    episodes: EpisodeSpec = field(default_factory=EpisodeSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'observations', tuple(self.observations))
        if not self.observations or not all(
                isinstance(s, StreamSpec) for s in self.observations):
            _fail('BagSpec', 'observations', self.observations, 'a non-empty list of streams')
        if not isinstance(self.action, ActionSpec):
            _fail('BagSpec', 'action', self.action, 'an action stream')
        if not isinstance(self.episodes, EpisodeSpec):
            _fail('BagSpec', 'episodes', self.episodes, 'an episode spec')
        for stream in self.observations:
            if stream.topic == self.action.topic and stream.stamp != self.action.stamp:
                _fail('BagSpec', 'action.stamp', self.action.stamp,
                      f"the stamp source of the observation stream on {stream.topic} "
                      f"({stream.stamp!r}): with two clocks on one topic, a frame's "
                      'observation can be a later message than its action')
        if self.rate_hz is not None:
            _check_limit('BagSpec', 'rate_hz', self.rate_hz)
        if self.align not in ALIGN_MODES:
            _fail('BagSpec', 'align', self.align, f'one of {list(ALIGN_MODES)}')
        _check_limit('BagSpec', 'tolerance_s', self.tolerance_s, optional=False)

    @property
    def obs_dim(self) -> int:
        """Length of one observation vector."""
        return sum(s.dim for s in self.observations)

    def obs_names(self) -> list[str]:
        """One name per observation dimension, in order."""
        return [n for s in self.observations for n in s.names()]

    def limit_s(self, max_age_s: float | None) -> float:
        """A stream's alignment limit: its own ``max_age_s`` or the spec's ``tolerance_s``."""
        return self.tolerance_s if max_age_s is None else max_age_s

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe form (tuples become lists); ``from_dict`` reads it back."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BagSpec:
        """Build a spec from a mapping such as a parsed YAML file.

        Raises:
            BagSpecError: naming an unknown or missing key, or a value that is not allowed.
        """
        top = _fields_of(cls, data, 'bag spec')
        if 'observations' not in top or 'action' not in top:
            missing = [k for k in ('observations', 'action') if k not in top]
            raise BagSpecError(f'bag spec: missing required key(s) {missing}')
        obs = top['observations']
        if not isinstance(obs, (list, tuple)):
            _fail('BagSpec', 'observations', obs, 'a list of streams')
        top['observations'] = tuple(
            StreamSpec(**_fields_of(StreamSpec, s, f'observations[{i}]'))
            for i, s in enumerate(obs))
        top['action'] = ActionSpec(**_fields_of(ActionSpec, top['action'], 'action'))
        if 'episodes' in top:
            top['episodes'] = EpisodeSpec(**_fields_of(EpisodeSpec, top['episodes'] or {},
                                                       'episodes'))
        return cls(**top)


def _fields_of(cls: type, data: Any, where: str) -> dict[str, Any]:
    """Check ``data`` is a mapping with only ``cls``'s field names (and its required ones)."""
    if not isinstance(data, Mapping):
        raise BagSpecError(f'{where} must be a mapping of keys, got {type(data).__name__}')
    names = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise BagSpecError(f'{where}: unknown key(s) {unknown}; allowed: {names}')
    if cls in (StreamSpec, ActionSpec):
        missing = [k for k in ('topic', 'type') if k not in data]
        if missing:
            raise BagSpecError(f'{where}: missing required key(s) {missing}')
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def load_bag_spec(path: str | os.PathLike[str]) -> BagSpec:
    """Read a :class:`BagSpec` from a YAML file.

    Raises:
        BagSpecError: the file is missing, not YAML, or not a valid spec.
    """
    try:
        with open(path, encoding='utf-8') as stream:
            data = yaml.safe_load(stream)
    except OSError as exc:
        raise BagSpecError(f'cannot read bag spec {os.fspath(path)!r}: {exc}') from exc
    except yaml.YAMLError as exc:
        raise BagSpecError(f'bag spec {os.fspath(path)!r} is not valid YAML: {exc}') from exc
    try:
        return BagSpec.from_dict(data if data is not None else {})
    except BagSpecError as exc:
        raise BagSpecError(f'{os.fspath(path)}: {exc}') from exc
