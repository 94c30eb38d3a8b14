"""Parameter declarations and small helpers shared by the nodes.

Every parameter is declared once, in the node's ``__init__``, with a ``ParameterDescriptor``
(description, and a range for numbers) through :func:`declare`.

Observation streams (policy and reward nodes) are parameters too::

    observation:
      joint_state: {topic: /joint_states, joints: [robot_x, robot_y], max_age_s: 0.25}
      streams: [object_pose]
      object_pose: {type: pose, topic: /task/object_pose, fields: [x, y],
                    obs_names: [goal_x, goal_y], max_age_s: 0.5, stamp_source: header}

``joints`` are names on ``/joint_states``; ``obs_names`` (default: the joint names) are the model
observation names they fill. Stream ``type`` is ``pose`` (geometry_msgs/PoseStamped, fields
from :data:`energyflow_ros.nodes.messages.POSE_FIELDS`), ``array``
(std_msgs/Float64MultiArray, positional; no header, so stamped on receipt) or ``pointcloud``
(sensor_msgs/PointCloud2, ``fields`` are point fields, ``n_points`` 0 = centroid).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Sequence

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

from energyflow_ros.nodes.messages import check_pose_fields

__all__ = ['declare', 'StreamConfig', 'declare_observation_params', 'observation_params',
           'STREAM_TYPES',
           'STAMP_SOURCES', 'sensor_qos', 'command_qos', 'latched_qos', 'reliable_qos',
           'resolve_joint_obs']

STREAM_TYPES = ('joint_state', 'pose', 'array', 'pointcloud')
STAMP_SOURCES = ('header', 'receive')

_ARRAY_TYPES = {
    str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY,
    int: Parameter.Type.INTEGER_ARRAY,
}


def _descriptor(description: str, value_range: tuple[float, float] | None,
                kind: type, read_only: bool) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=description, read_only=read_only)
    if value_range is not None and kind is float:
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(value_range[0]), to_value=float(value_range[1]), step=0.0)]
    elif value_range is not None and kind is int:
        desc.integer_range = [IntegerRange(from_value=int(value_range[0]),
                                           to_value=int(value_range[1]), step=1)]
    return desc


def declare(node: Node, name: str, default: Any, description: str,
            value_range: tuple[float, float] | None = None, read_only: bool = False,
            element_type: type = str) -> Any:
    """Declare one parameter with a descriptor and return its value.

    Args:
        node: the node.
        name: parameter name (dots group parameters in YAML).
        default: default value; its Python type fixes the parameter type. For lists pass
            ``element_type`` (an empty list has no element to infer the type from).
        value_range: inclusive (low, high) for int/float parameters.
        description: one line for ``ros2 param describe``.
        read_only: refuse changes after declaration. Lifecycle nodes read their parameters in
            ``on_configure``, so most stay writable: change them, then cleanup + configure.
        element_type: element type of list parameters.

    Returns:
        The parameter's value (the override from the command line/YAML if one was given).
    """
    if isinstance(default, (list, tuple)):
        ptype = _ARRAY_TYPES[element_type]
        desc = _descriptor(description, None, element_type, False)
        value = node.declare_parameter(name, ptype, desc).value
        if value is None:  # typed but unset: give it the (possibly empty) default
            node.set_parameters([Parameter(name, ptype, list(default))])
            return list(default)
        return list(value)
    desc = _descriptor(description, value_range, type(default), read_only)
    return node.declare_parameter(name, default, desc).value


@dataclass(frozen=True)
class StreamConfig:
    """One observation stream as configured.

    Attributes:
        name: stream name (``joint_state`` for the joint states).
        type: one of :data:`STREAM_TYPES`.
        topic: topic to subscribe to.
        fields: joint names (joint_state), pose fields (pose), point fields (pointcloud);
            unused for array.
        obs_names: model observation names the stream fills, in value order.
        max_age_s: older samples make the observation stale.
        stamp_source: ``header`` or ``receive``.
        n_points: pointcloud only: 0 = centroid, k = first k points.
    """

    name: str
    type: str
    topic: str
    fields: tuple[str, ...]
    obs_names: tuple[str, ...]
    max_age_s: float
    stamp_source: str = 'header'
    n_points: int = 0

    def __post_init__(self) -> None:
        where = f'observation.{self.name}'
        if self.type not in STREAM_TYPES:
            raise ValueError(f'{where}.type = {self.type!r}: expected one of {STREAM_TYPES}')
        if self.stamp_source not in STAMP_SOURCES:
            raise ValueError(f'{where}.stamp_source = {self.stamp_source!r}: expected one of '
                             f'{STAMP_SOURCES}')
        if self.type == 'array' and self.stamp_source != 'receive':
            raise ValueError(f'{where}: Float64MultiArray has no header; set stamp_source: '
                             'receive')
        if not self.topic:
            raise ValueError(f'{where}.topic is empty')
        if not (self.max_age_s > 0 and math.isfinite(self.max_age_s)):
            raise ValueError(f'{where}.max_age_s = {self.max_age_s} must be > 0')
        if self.type == 'pose':
            check_pose_fields(self.fields)
        if self.type in ('joint_state', 'pose') and len(self.fields) != len(self.obs_names):
            raise ValueError(f'{where}: {len(self.fields)} fields {list(self.fields)} for '
                             f'{len(self.obs_names)} obs_names {list(self.obs_names)}')

    @property
    def size(self) -> int:
        """Values the stream delivers per sample."""
        return len(self.obs_names)


def declare_observation_params(node: Node) -> list[str]:
    """Declare the ``observation.*`` parameters (once, in ``__init__``).

    Returns:
        The extra stream names (``observation.streams``); their parameters are declared too.
    """
    declare(node, 'observation.joint_state.topic', '/joint_states',
            'JointState topic (joints matched by name)')
    declare(node, 'observation.joint_state.joints', [], 'joints whose positions are model '
            'observations (default: the model observation names that are joint names)')
    declare(node, 'observation.joint_state.obs_names', [],
            'model observation names those joints fill (default: the same)')
    declare(node, 'observation.joint_state.max_age_s', 0.25,
            'joint states older than this are stale', (1e-3, 60.0))
    declare(node, 'observation.joint_state.stamp_source', 'header',
            "stamp: 'header' or 'receive' time")
    names = declare(node, 'observation.streams', [],
                    'names of extra observation streams, each configured under its name (fixed '
                    'at start-up)')
    for name in names:
        p = f'observation.{name}'
        declare(node, f'{p}.type', 'pose', "'pose', 'array' or 'pointcloud'")
        declare(node, f'{p}.topic', '', 'topic of the stream')
        declare(node, f'{p}.fields', [], 'pose or point fields to read')
        declare(node, f'{p}.obs_names', [], 'model observation names filled')
        declare(node, f'{p}.max_age_s', 0.5, 'max sample age', (1e-3, 60.0))
        declare(node, f'{p}.stamp_source', 'header', "'header' or 'receive'")
        declare(node, f'{p}.n_points', 0, 'pointcloud: 0 centroid, k points', (0, 100000))
    return list(names)


def observation_params(node: Node, stream_names: Sequence[str],
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Current values of the ``observation.*`` parameters (read at configure time).

    Returns:
        ``(joint_state, streams)``: raw values, turned into :class:`StreamConfig` by
        :func:`resolve_joint_obs` once the model is known.
    """
    def value(name: str) -> Any:
        return node.get_parameter(name).value

    keys = ('topic', 'joints', 'obs_names', 'max_age_s', 'stamp_source')
    joint = {k: value(f'observation.joint_state.{k}') for k in keys}
    keys = ('type', 'topic', 'fields', 'obs_names', 'max_age_s', 'stamp_source', 'n_points')
    streams = [{'name': name, **{k: value(f'observation.{name}.{k}') for k in keys}}
               for name in stream_names]
    return joint, streams


def resolve_joint_obs(joint: dict[str, Any], streams: list[dict[str, Any]],
                      obs_names: Sequence[str], joint_names: Sequence[str]) -> list[StreamConfig]:
    """Turn the raw observation parameters into stream configs for a model.

    Args:
        joint: the ``observation.joint_state`` values.
        streams: the extra streams' values.
        obs_names: the model's observation names.
        joint_names: the commanded joints (default source of joint observations).

    Raises:
        ValueError: a stream is misconfigured (the message names the parameter).
    """
    joints = list(joint['joints']) or [n for n in obs_names if n in joint_names]
    if not joints:
        raise ValueError('observation.joint_state.joints is empty and no model observation '
                         f'name {list(obs_names)} is a joint name {list(joint_names)}')
    out = [StreamConfig('joint_state', 'joint_state', joint['topic'], tuple(joints),
                        tuple(joint['obs_names'] or joints), float(joint['max_age_s']),
                        joint['stamp_source'])]
    for s in streams:
        out.append(StreamConfig(s['name'], s['type'], s['topic'], tuple(s['fields']),
                                tuple(s['obs_names']), float(s['max_age_s']),
                                s['stamp_source'], int(s['n_points'])))
    return out


def sensor_qos() -> QoSProfile:
    """Sensor-data QoS (best effort, keep last 5) for observation subscriptions."""
    return qos_profile_sensor_data


def command_qos() -> QoSProfile:
    """Reliable, keep last 1: commands are only useful when fresh."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Reliable, volatile, keep last ``depth`` (status and diagnostics)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Reliable + transient local, depth 1: late subscribers still get the last message."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def control_rate_override(text: str) -> list[dict[str, float]]:
    """The launch file's ``control_rate`` argument as a parameters entry: none when empty (the
    config's ``control_rate_hz`` stands), else ``[{'control_rate_hz': rate}]``.

    Raises:
        ValueError: the text is not a positive number of Hz.
    """
    if not text.strip():
        return []
    try:
        rate = float(text)
    except ValueError:
        rate = float('nan')
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f'control_rate:={text!r} is not a positive rate in Hz')
    return [{'control_rate_hz': rate}]
