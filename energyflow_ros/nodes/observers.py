"""Observation subscriptions shared by the policy and reward nodes.

:class:`ObservationInputs` turns the ``observation.*`` parameters and a model's metadata into
an :class:`~energyflow_ros.runtime.observation.ObservationHistory` and the subscriptions that
feed it. Every rejected message (missing joints, wrong sizes, non-finite values, out-of-order
or future stamps, unreadable clouds) goes to ``on_error`` with a message naming the stream and
the problem; nothing from it reaches the history or the measured position.

Stamps: ``stamp_source: header`` uses the message header (an all-zero stamp means "unset" and
falls back to the receive time), ``receive`` the node clock at reception.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState, PointCloud2
from std_msgs.msg import Float64MultiArray

from energyflow_ros.nodes.messages import (array_values, JointIndexer, pointcloud_values,
                                           pose_values, stamp_to_sec)
from energyflow_ros.nodes.model_loader import ConfigError
from energyflow_ros.nodes.params import resolve_joint_obs, sensor_qos, StreamConfig
from energyflow_ros.runtime.model_format import ModelMetadata
from energyflow_ros.runtime.observation import ObservationHistory, StreamSpec

__all__ = ['ObservationInputs']


class ObservationInputs:
    """Observation streams of one model, with their history and validation.

    Attributes:
        streams: the resolved stream configs (``joint_state`` first).
        history: samples resampled to the model's period.
        measured: last accepted positions of the commanded joints (None before the first).
    """

    def __init__(self, node: Node, meta: ModelMetadata, command_joints: tuple[str, ...],
                 obs_params: tuple[dict[str, Any], list[dict[str, Any]]],
                 lock: threading.Lock, on_error: Callable[[str], None],
                 jump_threshold: float = 0.0,
                 on_measured: Callable[[np.ndarray], Any] | None = None,
                 on_restart: Callable[[], None] | None = None) -> None:
        """Resolve the streams against the model.

        ``on_restart`` is called when what was planned from the history no longer applies: the
        measured joints jumped by more than ``jump_threshold``, or the clock went back.

        Raises:
            ConfigError: a stream is misconfigured or the streams do not cover the model's
                observation names (the message names them).
        """
        self.node, self.lock, self.on_error = node, lock, on_error
        self.on_measured, self.on_restart = on_measured, on_restart
        self.jump_threshold = float(jump_threshold)
        try:
            self.streams = resolve_joint_obs(obs_params[0], obs_params[1], meta.obs_names,
                                             meta.joint_names)
            specs = [StreamSpec(s.name, s.obs_names, s.max_age_s) for s in self.streams]
            self.history = ObservationHistory(meta.obs_names, meta.n_obs, meta.control_period_s,
                                              specs)
        except ValueError as exc:
            raise ConfigError(f'observation streams do not fit model observations '
                              f'{list(meta.obs_names)}: {exc}') from exc
        joint = self.streams[0]
        self._obs_joints = JointIndexer(joint.fields)
        self._cmd_joints = JointIndexer(command_joints)
        self.measured: np.ndarray | None = None
        self._pending_stamp: float | None = None

    def subscribe(self) -> list[Any]:
        """Create one subscription per stream (sensor-data QoS); returns them."""
        callbacks = {'joint_state': (JointState, self._on_joint_state),
                     'pose': (PoseStamped, self._on_pose),
                     'array': (Float64MultiArray, self._on_array),
                     'pointcloud': (PointCloud2, self._on_cloud)}
        subs = []
        for stream in self.streams:
            msg_type, callback = callbacks[stream.type]
            subs.append(self.node.create_subscription(
                msg_type, stream.topic, lambda msg, s=stream, cb=callback: cb(s, msg),
                sensor_qos()))
        return subs

    def take_pending_stamp(self) -> float | None:
        """Stamp of the oldest joint state not yet followed by a command (then cleared)."""
        stamp, self._pending_stamp = self._pending_stamp, None
        return stamp

    def _stamp(self, stream: StreamConfig, header: Any) -> tuple[float, float]:
        now = self.node.get_clock().now().nanoseconds * 1e-9
        if stream.stamp_source == 'header' and header is not None:
            stamp = stamp_to_sec(header.stamp)
            if stamp != 0.0:
                return stamp, now
        return now, now

    def _offer(self, stream: StreamConfig, values: np.ndarray, header: Any) -> float | None:
        stamp, now = self._stamp(stream, header)
        with self.lock:
            resets = self.history.clock_resets
            reason = self.history.update(stream.name, values, stamp, now)
            clock_back = self.history.clock_resets != resets
        if clock_back:
            self.node.get_logger().warning(
                f'the clock went back behind the observation history (now {now:.3f} s): '
                'history and plan forgotten, holding until every stream delivers on the new '
                'timeline')
            if self.on_restart is not None:  # the plan's times are on the old timeline
                self.on_restart()
        if reason:
            self.on_error(reason)
            return None
        return stamp

    def _on_joint_state(self, stream: StreamConfig, msg: JointState) -> None:
        try:
            obs = self._obs_joints.positions(msg)
            cmd = self._cmd_joints.positions(msg)
        except ValueError as exc:
            self.on_error(f'{stream.topic}: {exc}')
            return
        if not np.all(np.isfinite(cmd)):
            self.on_error(f'{stream.topic}: non-finite joint positions {cmd.tolist()}')
            return
        stamp = self._offer(stream, obs, msg.header)
        if stamp is None:
            return
        jumped = self._is_jump(cmd)
        self.measured = cmd
        if self.on_measured is not None:
            self.on_measured(cmd)
        if jumped:
            self.node.get_logger().warning(
                f'measured joints jumped by more than {self.jump_threshold:g}: restarting '
                'the observation history and the plan')
            with self.lock:
                self.history.reset()
                self.history.update(stream.name, obs, stamp, stamp)
            if self.on_restart is not None:
                self.on_restart()
        if self._pending_stamp is None:
            self._pending_stamp = stamp

    def _is_jump(self, cmd: np.ndarray) -> bool:
        if self.jump_threshold <= 0 or self.measured is None:
            return False
        return bool(np.max(np.abs(cmd - self.measured)) > self.jump_threshold)

    def _on_pose(self, stream: StreamConfig, msg: PoseStamped) -> None:
        self._offer(stream, pose_values(msg, stream.fields), msg.header)

    def _on_array(self, stream: StreamConfig, msg: Float64MultiArray) -> None:
        try:
            values = array_values(msg, stream.size)
        except ValueError as exc:
            self.on_error(f'{stream.topic}: {exc}')
            return
        self._offer(stream, values, None)

    def _on_cloud(self, stream: StreamConfig, msg: Any) -> None:
        try:
            values = pointcloud_values(msg, stream.fields, stream.n_points)
        except ValueError as exc:
            self.on_error(f'{stream.topic}: {exc}')
            return
        self._offer(stream, values, msg.header)
