"""sim_node: a benchmark task behind a ros2_control-like interface.

The task's actions are its joints (obstacles2d: ``robot_x``, ``robot_y``; pusht: ``agent_x``,
``agent_y``), with the task's action bounds as joint limits. Every control period (the task's
rate) the node steps the task with the latest valid command, then publishes:

* ``/joint_states`` (sensor_msgs/JointState, by name; also at ``publish_rate_hz`` if faster);
* ``/task/object_pose`` (geometry_msgs/PoseStamped): the rest of the observation (obstacles2d:
  the goal x, y; pusht: the block x, y and its yaw, from the angle's cosine and sine);
* ``/task/status`` (std_msgs/String, JSON): episode, seed, step, done, success, metrics, and
  ``state_stamp_ns``, the header stamp of the joint state and pose that step published (later
  republications between steps carry the same state with newer stamps);
* ``/task/episodes`` (std_msgs/String, JSON, transient local): one summary per finished
  episode, so late subscribers still see every result.

Commands: ``/forward_position_controller/commands`` (std_msgs/Float64MultiArray, positional in
joint order) and ``/joint_trajectory_controller/joint_trajectory`` (trajectory_msgs/
JointTrajectory, by name, sampled at each step by time from its start). A command of the wrong
length, with unknown joints or non-finite values is rejected with a log line; the previous
target is kept. Episodes reset with the next seed when done (``episodes`` > 0 stops after that
many); ``~/reset`` (std_msgs/Empty topic, plus a std_srvs/Trigger service where std_srvs is
installed) starts a new episode at once — after the last one too: that episode runs, and the
node holds again at its end. With ``wait_for_commands`` the first episode is held
(its state published, not stepped) until a command publisher is connected, so that a driver
started alongside sees it from its first step.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Empty, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from energyflow_ros.nodes.messages import (array_values, make_joint_state, make_pose_stamped,
                                           stamp_to_sec, trajectory_by_name)
from energyflow_ros.nodes.params import command_qos, declare, latched_qos, reliable_qos
from energyflow_ros.nodes.runner import spin_until_interrupted
from energyflow_ros.sim.base import Task
from energyflow_ros.sim.registry import make_task, task_names

__all__ = ['POSE_OBS', 'TIME_SCALE_RANGE', 'SimNode', 'main']

TIME_SCALE_RANGE = (0.1, 20.0)  # simulated seconds per wall-clock second

POSE_OBS = {
    'obstacles2d': ('goal_x', 'goal_y', ''),
    'pusht': ('block_x', 'block_y', 'block_angle_cos', 'block_angle_sin'),
}
"""Per task, the observation names published as the pose's x, y and yaw: a third name is the
yaw itself, a third and fourth its cosine and sine ('' = 0)."""


class SimNode(Node):
    """Steps a registered task at its control rate with the commands it receives."""

    def __init__(self, node_name: str = 'sim_node', **kwargs: Any) -> None:
        """Declare parameters, build the task, create the interfaces and timers."""
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        p = self.params
        self.task: Task = make_task(p['task'], **({'max_steps': p['max_steps']}
                                                   if p['max_steps'] > 0 else {}))
        info = self.task.info
        self.joint_names = tuple(info.action_names)
        missing = [n for n in self.joint_names if n not in info.obs_names]
        if missing:
            raise ValueError(f'task {info.name!r} observes no position of its joints {missing} '
                             f'(observations: {list(info.obs_names)}): it cannot publish them '
                             'as joint states')
        self._joint_idx = [info.obs_names.index(n) for n in self.joint_names]
        self._pose_idx = self._pose_indices(p['pose_obs_names'] or POSE_OBS.get(p['task'], ()))
        self.lower, self.upper = self._limits(info)
        self.period = 1.0 / (info.control_hz * p['time_scale'])
        self.episode = 0
        self.finished = False
        self.rejected = 0
        self._target: np.ndarray | None = None
        self._trajectory: tuple[float, np.ndarray, np.ndarray] | None = None
        self._waiting = bool(p['wait_for_commands'])
        self._create_interfaces()
        self._reset_episode()
        self.create_timer(self.period, self._step)
        step_hz = info.control_hz * p['time_scale']
        publish_hz = max(p['publish_rate_hz'], step_hz)
        self._last_publish = -np.inf
        if publish_hz > step_hz:
            self._publish_period = 1.0 / publish_hz
            self.create_timer(self._publish_period, self._publish_between_steps)
        self.get_logger().info(
            f'task {info.name}: joints {list(self.joint_names)}, limits {self.lower.tolist()} '
            f'.. {self.upper.tolist()}, {info.control_hz:g} Hz x {p["time_scale"]:g}, '
            f'seed {p["seed"]}')
        if self._waiting:
            self.get_logger().info(
                f'wait_for_commands: holding episode 0 until a publisher on '
                f'{p["forward_command_topic"]} or {p["trajectory_topic"]} is connected')

    def _declare_parameters(self) -> None:
        self.params: dict[str, Any] = {
            'task': declare(self, 'task', 'obstacles2d', f'task name: one of {task_names()}',
                            read_only=True),
            'seed': declare(self, 'seed', 0, 'seed of the first episode (then +1 per episode)',
                            (0, 2**31 - 1)),
            'episodes': declare(self, 'episodes', 0, 'stop after this many episodes (0: never)',
                                (0, 1_000_000)),
            'max_steps': declare(self, 'max_steps', 0, 'episode tick limit (0: the task\'s)',
                                 (0, 1_000_000), read_only=True),
            'publish_rate_hz': declare(self, 'publish_rate_hz', 0.0, 'joint state rate if '
                                       'faster than the task rate (0: task rate)', (0.0, 2000.0)),
            'joint_lower': declare(self, 'joint_lower', [], 'joint lower limits (default: '
                                   'task action bounds)', element_type=float),
            'joint_upper': declare(self, 'joint_upper', [], 'joint upper limits',
                                   element_type=float),
            'pose_obs_names': declare(self, 'pose_obs_names', [], 'observation names sent '
                                      'as pose x, y[, yaw] or x, y, cos yaw, sin yaw (default '
                                      'per task)'),
            'joint_states_topic': declare(self, 'joint_states_topic', '/joint_states',
                                          'JointState output'),
            'pose_topic': declare(self, 'pose_topic', '/task/object_pose', 'PoseStamped output'),
            'status_topic': declare(self, 'status_topic', '/task/status', 'JSON status output'),
            'episodes_topic': declare(self, 'episodes_topic', '/task/episodes',
                                      'JSON per finished episode (transient local)'),
            'forward_command_topic': declare(self, 'forward_command_topic',
                                             '/forward_position_controller/commands',
                                             'Float64MultiArray command input'),
            'trajectory_topic': declare(self, 'trajectory_topic',
                                        '/joint_trajectory_controller/joint_trajectory',
                                        'JointTrajectory command input'),
            'frame_id': declare(self, 'frame_id', 'world', 'frame of the object pose'),
            'time_scale': declare(self, 'time_scale', 1.0, 'simulated seconds per wall-clock '
                                  'second (> 1 records demonstrations faster than real time)',
                                  TIME_SCALE_RANGE, read_only=True),
            'reset_pause_s': declare(self, 'reset_pause_s', 0.5, 'state is published but not '
                                     'stepped this long after a reset', (0.0, 60.0)),
            'wait_for_commands': declare(self, 'wait_for_commands', False, 'hold the first '
                                         'episode until a command publisher is connected '
                                         '(then pause reset_pause_s)'),
        }

    def _pose_indices(self, names: Any) -> tuple[int, ...]:
        names = tuple(names)
        if len(names) not in (2, 3, 4):
            raise ValueError(f'task {self.task.info.name!r} has no pose mapping: set '
                             'pose_obs_names to [x_name, y_name], [x, y, yaw] or '
                             '[x, y, yaw_cos, yaw_sin]')
        obs = self.task.info.obs_names
        unknown = [n for n in names if n and n not in obs]
        if unknown:
            raise ValueError(f'pose_obs_names {list(names)}: {unknown} are not observations '
                             f'of task {self.task.info.name!r} ({list(obs)})')
        return tuple(obs.index(n) if n else -1 for n in names)

    def _limits(self, info: Any) -> tuple[np.ndarray, np.ndarray]:
        """The joint limits: the parameters', else the task's action bounds (checked)."""
        p, n = self.params, len(self.joint_names)
        lower = np.array(p['joint_lower'] or info.action_low, dtype=np.float64)
        upper = np.array(p['joint_upper'] or info.action_high, dtype=np.float64)
        for name, values in (('joint_lower', lower), ('joint_upper', upper)):
            if values.shape != (n,) or not np.all(np.isfinite(values)):
                raise ValueError(f'{name} = {values.tolist()} is invalid: expected {n} finite '
                                 f'values, one per joint {list(self.joint_names)}')
        if np.any(lower > upper):
            raise ValueError(f'joint_lower {lower.tolist()} exceeds joint_upper '
                             f'{upper.tolist()}')
        return lower, upper

    def _create_interfaces(self) -> None:
        p = self.params
        self.joint_pub = self.create_publisher(JointState, p['joint_states_topic'], 10)
        self.pose_pub = self.create_publisher(PoseStamped, p['pose_topic'], 10)
        self.status_pub = self.create_publisher(String, p['status_topic'], reliable_qos())
        self.episode_pub = self.create_publisher(String, p['episodes_topic'], latched_qos_depth())
        self.create_subscription(Float64MultiArray, p['forward_command_topic'],
                                 self._on_forward, command_qos())
        self.create_subscription(JointTrajectory, p['trajectory_topic'], self._on_trajectory,
                                 command_qos())
        self.create_subscription(Empty, '~/reset', lambda _msg: self.next_episode(), 10)
        self._create_reset_service()

    def _create_reset_service(self) -> None:
        try:
            from std_srvs.srv import Trigger  # not in every install
        except ImportError:
            self.get_logger().info('std_srvs not installed: reset through the ~/reset topic')
            return

        def _reset(_request: Any, response: Any) -> Any:
            self.next_episode()
            response.success, response.message = True, f'episode {self.episode}'
            return response
        self.create_service(Trigger, '~/reset', _reset)

    def _stamp(self) -> Any:
        return self.get_clock().now().to_msg()

    def next_episode(self) -> None:
        """Abandon the current episode and start the next one (next seed) now."""
        if not self.finished:   # past the limit, the counter already names the next one
            self.episode += 1
        self.finished = False
        self._reset_episode()

    def _reset_episode(self) -> None:
        seed = self.params['seed'] + self.episode
        self._obs = np.asarray(self.task.reset(seed), dtype=np.float64)
        self._seed, self._step_count, self._done = seed, 0, False
        self._success = False
        self._target, self._trajectory = None, None
        self._pause_until = self.get_clock().now().nanoseconds * 1e-9 + self.params[
            'reset_pause_s']
        self._state_stamp_ns = self._publish_state()
        self._publish_status()

    def _on_forward(self, msg: Float64MultiArray) -> None:
        try:
            values = array_values(msg, len(self.joint_names))
            if not np.all(np.isfinite(values)):
                raise ValueError(f'non-finite values {values.tolist()}')
        except ValueError as exc:
            self._reject(f'forward command rejected, keeping the previous target: {exc}')
            return
        self._target, self._trajectory = np.clip(values, self.lower, self.upper), None

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            times, positions = trajectory_by_name(msg, self.joint_names)
        except ValueError as exc:
            self._reject(f'trajectory rejected, keeping the previous target: {exc}')
            return
        start = stamp_to_sec(msg.header.stamp)
        if start == 0.0:
            start = self.get_clock().now().nanoseconds * 1e-9
        self._trajectory = (start, times, np.clip(positions, self.lower, self.upper))

    def _reject(self, text: str) -> None:
        self.rejected += 1
        self.get_logger().warning(text, throttle_duration_sec=1.0)

    def _current_target(self, now: float) -> np.ndarray | None:
        if self._trajectory is None:
            return self._target
        start, times, positions = self._trajectory
        t = now - start
        columns = [np.interp(t, times, positions[:, j]) for j in range(positions.shape[1])]
        return np.array(columns)

    def joint_positions(self) -> np.ndarray:
        """Current joint positions, in joint order."""
        return self._obs[self._joint_idx]

    def _command_publishers(self) -> int:
        p = self.params
        return (self.count_publishers(p['forward_command_topic'])
                + self.count_publishers(p['trajectory_topic']))

    def _step(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        if self._waiting and self._command_publishers():
            self._waiting = False
            self._pause_until = now + self.params['reset_pause_s']
            self.get_logger().info('a command publisher is connected: starting')
        if self.finished or self._waiting or now < self._pause_until:
            self._publish_state()
            self._publish_status()
            return
        if self._done:
            self.episode += 1
            episodes = self.params['episodes']
            if episodes and self.episode >= episodes:
                self.finished = True
                self.get_logger().info(f'{episodes} episodes done; holding')
            else:
                self._reset_episode()
            return
        target = self._current_target(now)
        action = self.joint_positions() if target is None else target
        result = self.task.step(action)
        self._obs = np.asarray(result.obs, dtype=np.float64)
        self._step_count += 1
        self._done, self._success = bool(result.done), bool(result.success)
        self._state_stamp_ns = self._publish_state()
        self._publish_status()
        if self._done:
            self._publish_episode()

    def _status(self) -> dict[str, Any]:
        return {'task': self.task.info.name, 'episode': self.episode, 'seed': self._seed,
                'step': self._step_count, 'done': self._done, 'success': self._success,
                'finished': self.finished, 'commands_rejected': self.rejected,
                'state_stamp_ns': self._state_stamp_ns,
                'metrics': self.task.episode_metrics()}

    def _publish_between_steps(self) -> None:
        now = self.get_clock().now().nanoseconds * 1e-9
        if now - self._last_publish >= 0.75 * self._publish_period:
            self._publish_state()

    def _publish_state(self) -> int:
        """Publish the joint state and pose; returns their header stamp (ns)."""
        stamp = self._stamp()
        self._last_publish = stamp.sec + stamp.nanosec * 1e-9
        self.joint_pub.publish(make_joint_state(self.joint_names, self.joint_positions(),
                                                stamp))
        values = [self._obs[i] if i >= 0 else 0.0 for i in self._pose_idx]
        if len(values) == 4:
            yaw = math.atan2(values[3], values[2])
        else:
            yaw = values[2] if len(values) == 3 else 0.0
        self.pose_pub.publish(make_pose_stamped(values[0], values[1], yaw, stamp,
                                                self.params['frame_id']))
        return stamp.sec * 10**9 + stamp.nanosec

    def _publish_status(self) -> None:
        self.status_pub.publish(String(data=json.dumps(self._status())))

    def _publish_episode(self) -> None:
        summary = self._status()
        self.episode_pub.publish(String(data=json.dumps(summary)))
        self.get_logger().info(f'episode {self.episode} (seed {self._seed}) done after '
                               f'{self._step_count} steps: success {self._success}')

    def destroy_node(self) -> None:
        """Close the task (when it was built), then the node."""
        task = getattr(self, 'task', None)
        if task is not None:
            task.close()
        super().destroy_node()


def latched_qos_depth(depth: int = 100) -> Any:
    """Transient-local QoS keeping ``depth`` messages (every episode summary)."""
    qos = latched_qos()
    qos.depth = depth
    return qos


def main(args: list[str] | None = None) -> None:
    """Run the simulated robot until Ctrl-C / SIGTERM; a bad parameter exits with code 2."""
    try:
        spin_until_interrupted(SimNode, args)
    except (ValueError, ParameterException) as exc:
        print(f'sim_node: {exc}', file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == '__main__':
    main()
