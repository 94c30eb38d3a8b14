"""Message <-> array conversions shared by the nodes (rclpy message classes, numpy, no torch).

Joint states are always matched **by name**: the order of names on ``/joint_states`` is not
guaranteed. Pose fields are named (``x``, ``y``, ``z``, ``yaw``, ``yaw_2pi``, ``yaw_cos``,
``yaw_sin``, ``roll``, ``pitch``, ``qx`` .. ``qw``) so a planar object pose reads as the
simulator's numbers.
PointCloud2 is decoded by :func:`~energyflow_ros.data.pointcloud.cloud_points`, the bag
reader's decoder, which reads clouds of mixed field types (``sensor_msgs_py``'s
``read_points_numpy`` refuses them) and needs no ``sensor_msgs_py``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import PoseStamped
import numpy as np
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from energyflow_ros.data.bag_config import HEADINGS, heading_values
from energyflow_ros.data.pointcloud import cloud_points, cloud_summary

__all__ = [
    'POSE_FIELDS', 'stamp_to_sec', 'sec_to_stamp', 'sec_to_duration', 'duration_to_sec',
    'yaw_to_quaternion', 'pose_values', 'check_pose_fields', 'JointIndexer', 'array_values',
    'pointcloud_values', 'make_joint_state', 'make_pose_stamped', 'make_float64_array',
    'make_chunk_array', 'make_joint_trajectory', 'trajectory_by_name',
]

POSE_FIELDS = ('x', 'y', 'z', *HEADINGS, 'roll', 'pitch', 'qx', 'qy', 'qz', 'qw')
"""Names :func:`pose_values` understands; ``yaw`` is in [-pi, pi), ``yaw_2pi`` in [0, 2 pi);
``yaw_cos`` and ``yaw_sin`` give the heading without a jump anywhere."""


def stamp_to_sec(stamp: Time) -> float:
    """builtin_interfaces/Time -> seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_stamp(t: float) -> Time:
    """Seconds -> builtin_interfaces/Time (t >= 0)."""
    sec = math.floor(t)
    nanosec = min(int(round((t - sec) * 1e9)), 999_999_999)
    return Time(sec=int(sec), nanosec=nanosec)


def sec_to_duration(t: float) -> Duration:
    """Seconds -> builtin_interfaces/Duration (t >= 0)."""
    stamp = sec_to_stamp(max(t, 0.0))
    return Duration(sec=stamp.sec, nanosec=stamp.nanosec)


def duration_to_sec(d: Duration) -> float:
    """builtin_interfaces/Duration -> seconds."""
    return d.sec + d.nanosec * 1e-9


def yaw_to_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation by ``yaw`` about z."""
    return 0.0, 0.0, math.sin(0.5 * yaw), math.cos(0.5 * yaw)


def _roll_pitch(q: Any) -> tuple[float, float]:
    """(roll, pitch) of a geometry_msgs/Quaternion (ZYX convention; the heading about z:
    :func:`~energyflow_ros.data.bag_config.heading_values`)."""
    roll = math.atan2(2.0 * (q.w * q.x + q.y * q.z), 1.0 - 2.0 * (q.x * q.x + q.y * q.y))
    sinp = float(np.clip(2.0 * (q.w * q.y - q.z * q.x), -1.0, 1.0))  # keeps a NaN a NaN
    return roll, math.asin(sinp)


def check_pose_fields(fields: Sequence[str]) -> None:
    """Raise ValueError naming any field :func:`pose_values` does not know."""
    unknown = [f for f in fields if f not in POSE_FIELDS]
    if unknown:
        raise ValueError(f'unknown pose fields {unknown}: expected names from {list(POSE_FIELDS)}')


def pose_values(msg: PoseStamped, fields: Sequence[str]) -> np.ndarray:
    """The named fields of a pose, in the order asked for."""
    p, q = msg.pose.position, msg.pose.orientation
    roll, pitch = _roll_pitch(q)
    table = {'x': p.x, 'y': p.y, 'z': p.z, **heading_values(q.x, q.y, q.z, q.w), 'roll': roll,
             'pitch': pitch, 'qx': q.x, 'qy': q.y, 'qz': q.z, 'qw': q.w}
    return np.array([table[f] for f in fields], dtype=np.float64)


class JointIndexer:
    """Pick the positions of named joints out of JointState messages, whatever their order.

    The index map is cached per distinct name list, so a steady stream costs one list compare.

    Attributes:
        names: the joints wanted, in output order.
    """

    def __init__(self, names: Sequence[str]) -> None:
        """Look up ``names`` in every message."""
        self.names = tuple(names)
        self._cached_names: list[str] | None = None
        self._index: np.ndarray | None = None
        self._missing: list[str] = []

    def _refresh(self, msg_names: list[str]) -> None:
        lookup = {name: i for i, name in enumerate(msg_names)}
        if len(lookup) != len(msg_names):
            repeated = sorted({n for n in msg_names if msg_names.count(n) > 1})
            raise ValueError(f'JointState names joints {repeated} more than once (it has '
                             f'{msg_names}): which position is meant is ambiguous')
        self._missing = [n for n in self.names if n not in lookup]
        self._index = np.array([lookup.get(n, -1) for n in self.names], dtype=np.int64)
        self._cached_names = list(msg_names)

    def positions(self, msg: JointState) -> np.ndarray:
        """(J,) positions of :attr:`names`.

        Raises:
            ValueError: a wanted joint is missing, a joint is named twice, or names and
                positions differ in length; the message names the joints.
        """
        names = list(msg.name)
        if names != self._cached_names:
            self._refresh(names)
        if self._missing:
            raise ValueError(f'JointState lacks joints {self._missing} (it has {names})')
        position = msg.position
        if len(position) != len(names):
            raise ValueError(f'JointState has {len(names)} names but {len(position)} '
                             'positions')
        return np.asarray(position, dtype=np.float64)[self._index]


def array_values(msg: Float64MultiArray, expected: int) -> np.ndarray:
    """The data of a Float64MultiArray after its ``data_offset``.

    Raises:
        ValueError: it does not hold exactly ``expected`` values.
    """
    data = np.asarray(msg.data, dtype=np.float64)[msg.layout.data_offset:]
    if data.shape != (expected,):
        raise ValueError(f'Float64MultiArray holds {data.size} values, expected {expected}')
    return data


def pointcloud_values(msg: Any, fields: Sequence[str], n_points: int) -> np.ndarray:
    """Summarise a sensor_msgs/PointCloud2 as a fixed-length vector.

    Args:
        msg: the cloud (any field types; only ``fields`` are read).
        fields: point fields to read, e.g. ``('x', 'y', 'z')``.
        n_points: 0 for the centroid of the finite points (len(fields) values); k > 0 for the
            first k finite points flattened (k * len(fields) values).

    Raises:
        ValueError: the cloud has too few finite points, lacks a field or is malformed.
    """
    points = cloud_points(msg, fields)
    summary = cloud_summary(points, n_points)
    if summary is None:
        raise ValueError(f'PointCloud2 has {len(points)} finite points, need '
                         f'{max(n_points, 1)}')
    return summary


def make_joint_state(names: Sequence[str], positions: np.ndarray, stamp: Time,
                     velocities: np.ndarray | None = None) -> JointState:
    """A JointState with positions (and optionally velocities) of ``names``."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(v) for v in positions]
    if velocities is not None:
        msg.velocity = [float(v) for v in velocities]
    return msg


def make_pose_stamped(x: float, y: float, yaw: float, stamp: Time,
                      frame_id: str = 'world') -> PoseStamped:
    """A planar pose (z = 0) as PoseStamped."""
    msg = PoseStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose.position.x, msg.pose.position.y = float(x), float(y)
    qx, qy, qz, qw = yaw_to_quaternion(float(yaw))
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = qx, qy, qz, qw
    return msg


def make_float64_array(values: np.ndarray, label: str = '') -> Float64MultiArray:
    """A 1-D Float64MultiArray (forward_command_controller's command format)."""
    msg = Float64MultiArray()
    msg.data = [float(v) for v in values]
    if label:
        msg.layout.dim = [MultiArrayDimension(label=label, size=len(msg.data),
                                              stride=len(msg.data))]
    return msg


def make_chunk_array(chunk: np.ndarray, energy: float) -> Float64MultiArray:
    """An (H, A) chunk plus its energy: ``data[0]`` = energy (``data_offset`` 1), then the chunk
    row-major with dims ``steps`` (H) and ``joints`` (A)."""
    h, a = chunk.shape
    msg = Float64MultiArray()
    msg.layout.data_offset = 1
    msg.layout.dim = [MultiArrayDimension(label='steps', size=h, stride=h * a),
                      MultiArrayDimension(label='joints', size=a, stride=a)]
    msg.data = [float(energy)] + [float(v) for v in chunk.reshape(-1)]
    return msg


def make_joint_trajectory(names: Sequence[str], positions: np.ndarray,
                          time_from_start_s: float) -> JointTrajectory:
    """A one-point JointTrajectory (header stamp zero = start now, as the controller reads it)."""
    msg = JointTrajectory()
    msg.joint_names = list(names)
    point = JointTrajectoryPoint()
    point.positions = [float(v) for v in positions]
    point.time_from_start = sec_to_duration(time_from_start_s)
    msg.points = [point]
    return msg


def trajectory_by_name(msg: JointTrajectory, names: Sequence[str]) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Times (s from start) and positions of a trajectory, columns ordered as ``names``.

    Returns:
        ``(times (P,), positions (P, J))``.

    Raises:
        ValueError: unknown or missing joints, no points, ragged or non-finite positions,
            times that do not increase.
    """
    got = list(msg.joint_names)
    unknown = [n for n in got if n not in names]
    missing = [n for n in names if n not in got]
    if unknown or missing or len(set(got)) != len(got):
        raise ValueError(f'JointTrajectory joints {got} do not match {list(names)} '
                         f'(unknown {unknown}, missing {missing})')
    if not msg.points:
        raise ValueError('JointTrajectory has no points')
    order = [got.index(n) for n in names]
    rows, times = [], []
    for point in msg.points:
        if len(point.positions) != len(got):
            raise ValueError(f'JointTrajectory point has {len(point.positions)} positions for '
                             f'{len(got)} joints')
        rows.append([point.positions[i] for i in order])
        times.append(duration_to_sec(point.time_from_start))
    positions = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(positions)):
        raise ValueError('JointTrajectory holds non-finite positions')
    if np.any(np.diff(times) <= 0):
        raise ValueError(f'JointTrajectory time_from_start must increase from point to point '
                         f'(got {[round(t, 6) for t in times]} s)')
    return np.array(times), positions
