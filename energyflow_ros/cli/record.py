"""``energyflow-record``: demonstrate a task over ROS topics and record them as a rosbag2 bag.

It starts ``sim_node`` (the simulated arm) in its own process, drives it with the task's
scripted expert over real DDS — reading ``/joint_states`` and ``/task/object_pose``, sending
``/forward_position_controller/commands`` — and records what ``ros2 bag record`` would have
recorded (every message with its receive time; the driver's own commands with their send time,
as the recorder is the process that sends them) with the ``rosbags`` writer. Next to the bag it
writes ``bag_spec.yaml`` (how the trainer reads it) and ``demos.npz`` (the observation/action
pairs the expert actually used), and it checks that reading the bag gives identical arrays.

One command per simulator step: the expert acts when the status of a new step has arrived
together with the joint state and pose of that step (equal header stamps, not older than the
step's ``state_stamp_ns`` and newer than the last ones used), and publishes the episode
number on ``/demo/episode`` (once per episode, received back before the episode's first command
is sent).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Iterator

from geometry_msgs.msg import PoseStamped
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, Int32, String
import yaml

from energyflow_ros.cli.node_process import start_node, stop_nodes
from energyflow_ros.data.bag_writer import BagRecorder, STORAGES
from energyflow_ros.data.dataset import DemoSet
from energyflow_ros.data.rosbag import pose_field_values, read_rosbag
from energyflow_ros.nodes.params import command_qos, reliable_qos
from energyflow_ros.nodes.sim_node import TIME_SCALE_RANGE
from energyflow_ros.sim.registry import make_expert, make_task, task_info, task_names

__all__ = ['POSE_FIELDS', 'ExpertDriver', 'bag_spec_for', 'record', 'main']

# Per task, the PoseStamped fields that carry the non-joint part of the observation.
POSE_FIELDS = {'obstacles2d': ('x', 'y'), 'pusht': ('x', 'y', 'yaw_cos', 'yaw_sin')}
TOPICS = {'joints': '/joint_states', 'pose': '/task/object_pose', 'status': '/task/status',
          'command': '/forward_position_controller/commands', 'episode': '/demo/episode'}
TYPES = {'joints': 'sensor_msgs/msg/JointState', 'pose': 'geometry_msgs/msg/PoseStamped',
         'status': 'std_msgs/msg/String', 'command': 'std_msgs/msg/Float64MultiArray',
         'episode': 'std_msgs/msg/Int32'}


def bag_spec_for(task_name: str) -> dict[str, Any]:
    """The bag spec (``data.bag_config`` YAML form) that reads a recording of ``task_name``."""
    info = task_info(task_name)
    joints = list(info.action_names)
    return {
        'align': 'hold', 'tolerance_s': 0.5,
        'observations': [
            {'topic': TOPICS['joints'], 'type': TYPES['joints'], 'joints': joints,
             'fields': ['position'], 'stamp': 'header'},
            {'topic': TOPICS['pose'], 'type': TYPES['pose'],
             'fields': list(POSE_FIELDS[task_name]), 'stamp': 'header'}],
        'action': {'topic': TOPICS['command'], 'type': TYPES['command'], 'joints': joints},
        'episodes': {'topic': TOPICS['episode'], 'type': TYPES['episode']},
    }


class ExpertDriver(Node):
    """Drives sim_node with the scripted expert and records every message it sees."""

    def __init__(self, task_name: str, recorder: BagRecorder) -> None:
        """Build the expert for ``task_name`` and subscribe to the simulator's topics."""
        super().__init__('expert_driver')
        self.task = make_task(task_name)
        self.expert = make_expert(self.task)
        self.joints = list(self.task.info.action_names)
        self.pose_fields = POSE_FIELDS[task_name]
        self.recorder = recorder
        self.latest: dict[str, Any] = {}
        self.status: dict[str, Any] | None = None
        self.acted: tuple[int, int] | None = None
        self.marked: int | None = None
        self.last_stamp = -1
        self.frames: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.joined_late: list[int] = []  # episodes whose first frame is past their step 0
        self.finished = threading.Event()
        self.command_pub = self.create_publisher(Float64MultiArray, TOPICS['command'],
                                                 command_qos())
        self.episode_pub = self.create_publisher(Int32, TOPICS['episode'], reliable_qos())
        for key, cls, qos in (('joints', JointState, 10), ('pose', PoseStamped, 10),
                              ('status', String, reliable_qos()),
                              ('episode', Int32, reliable_qos())):
            self.create_subscription(cls, TOPICS[key], self._callback(key, cls), qos, raw=True)

    def _callback(self, key: str, cls: type) -> Any:
        # raw subscriptions hand over the CDR bytes as they came off the wire, which is what
        # ros2 bag record stores (the driver's own commands are serialised as they are sent).
        def on_message(raw: bytes) -> None:
            now = self.get_clock().now().nanoseconds
            self.recorder.add(TOPICS[key], TYPES[key], now, raw)
            msg = deserialize_message(raw, cls)
            if key in ('joints', 'pose'):
                self.latest[key] = msg
            elif key == 'status':
                self.status = json.loads(msg.data)
                if self.status.get('finished'):
                    self.finished.set()
            elif key == 'episode':
                self.marked = msg.data
            self._maybe_act()
        return on_message

    def _state(self) -> tuple[int, np.ndarray] | None:
        js, pose = self.latest.get('joints'), self.latest.get('pose')
        if js is None or pose is None:
            return None
        stamp = js.header.stamp.sec * 10**9 + js.header.stamp.nanosec
        if stamp != pose.header.stamp.sec * 10**9 + pose.header.stamp.nanosec:
            return None
        lookup = dict(zip(js.name, js.position))
        obs = np.r_[[lookup[j] for j in self.joints], pose_field_values(pose.pose,
                                                                          self.pose_fields)]
        return stamp, obs

    def _maybe_act(self) -> None:
        status, state = self.status, self._state()
        if status is None or state is None or status['done'] or status['finished']:
            return
        key = (int(status['episode']), int(status['step']))
        stamp, obs = state
        if (key == self.acted or stamp <= self.last_stamp
                or stamp < int(status.get('state_stamp_ns', 0))):
            return  # acted on this step already, or the state predates the step
        if self.marked != key[0]:
            # announce the episode and act once its marker has come back, so that the
            # marker's receive time precedes the first command's in the recording
            self.episode_pub.publish(Int32(data=key[0]))
            return
        if self.acted is None or key[0] != self.acted[0]:
            self.expert.reset(int(status['seed']))
            if key[1] > 0:
                self.joined_late.append(key[0])
        action = np.asarray(self.expert.act(obs), dtype=np.float64)
        command = Float64MultiArray(data=[float(v) for v in action])
        self.command_pub.publish(command)
        # logged as sent, so that the bag orders it after the state it answers (its loop-back
        # can arrive after the next state under load, which would pair it with that state)
        self.recorder.add(TOPICS['command'], TYPES['command'],
                          self.get_clock().now().nanoseconds, serialize_message(command))
        self.acted, self.last_stamp = key, stamp
        self.frames.append((key[0], obs, action))

    def demos(self) -> DemoSet:
        """The frames the expert acted on, split by episode."""
        if not self.frames:
            raise RuntimeError('the expert never acted: is sim_node running on this domain?')
        episodes = np.array([f[0] for f in self.frames])
        ends = np.r_[np.flatnonzero(np.diff(episodes)) + 1, len(episodes)]
        info = self.task.info
        return DemoSet(obs=np.array([f[1] for f in self.frames]),
                       actions=np.array([f[2] for f in self.frames]), episode_ends=ends,
                       obs_names=list(info.obs_names), action_names=list(info.action_names),
                       meta={'task': info.name, 'control_hz': info.control_hz})


def record(args: argparse.Namespace) -> dict[str, Any]:
    """Record ``args.episodes`` expert episodes; returns the paths and the read-back check."""
    os.makedirs(args.out, exist_ok=True)
    bag_path = os.path.join(args.out, f'bag_{args.storage}')
    recorder = BagRecorder(bag_path, args.storage)
    rclpy.init()
    driver = sim = None
    try:
        # the simulator holds its first episode until the driver's command publisher is
        # connected, so that the driver sees that episode from its first step
        driver = ExpertDriver(args.task, recorder)
        executor = SingleThreadedExecutor()
        executor.add_node(driver)
        sim = None if args.no_sim else start_node('sim_node', {
            'task': args.task, 'seed': args.seed, 'episodes': args.episodes,
            'reset_pause_s': 0.3, 'time_scale': args.time_scale, 'wait_for_commands': True})
        deadline = time.monotonic() + args.timeout
        while not driver.finished.is_set() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if sim is not None and sim.poll() is not None:
                raise RuntimeError(f'sim_node exited with code {sim.returncode} before the '
                                   'recording ended (its messages are above)')
        if not driver.finished.is_set():
            raise RuntimeError(f'no end of recording after {args.timeout:g} s')
        demos = driver.demos()
    except (RuntimeError, KeyboardInterrupt, ExternalShutdownException) as exc:
        # keep what was recorded, as ros2 bag record does when stopped (Ctrl-C or SIGTERM)
        frames = len(driver.frames) if driver is not None else 0
        interrupted = isinstance(exc, (KeyboardInterrupt, ExternalShutdownException))
        with _signals_ignored():
            kept = recorder.close()
        raise RuntimeError(f"{'interrupted' if interrupted else exc}; the "
                           f'{len(recorder.messages)} messages recorded so far ({frames} expert '
                           f'frames) are kept in {kept}') from exc
    finally:
        rclpy.try_shutdown()
        if sim is not None:
            stop_nodes([sim])
    with _signals_ignored():
        outputs = _write_outputs(args, recorder, demos)
    return {**outputs, 'episodes_joined_late': driver.joined_late}


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the bag is written: cut there, it would lack its index
    and metadata.yaml and could not be read."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_outputs(args: argparse.Namespace, recorder: BagRecorder,
                   demos: DemoSet) -> dict[str, Any]:
    bag = recorder.close()
    spec = bag_spec_for(args.task)
    spec_path = os.path.join(args.out, 'bag_spec.yaml')
    with open(spec_path, 'w', encoding='utf-8') as handle:
        yaml.safe_dump(spec, handle, sort_keys=False)
    npz_path = os.path.join(args.out, 'demos.npz')
    demos.save_npz(npz_path)
    read, report = read_rosbag(bag, spec)
    identical = (np.array_equal(read.obs, demos.obs) and np.array_equal(
        read.actions, demos.actions) and np.array_equal(read.episode_ends, demos.episode_ends))
    return {'bag': str(bag), 'bag_spec': spec_path, 'npz': npz_path,
            'episodes': demos.n_episodes, 'frames': len(demos.obs),
            'messages': recorder.topics(), 'bag_matches_npz': bool(identical),
            'frames_dropped_on_read': report.frames_dropped}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='energyflow-record', description=__doc__.split('\n')[0])
    parser.add_argument('--task', default='obstacles2d', choices=sorted(POSE_FIELDS))
    parser.add_argument('--episodes', type=int, default=10, help='episodes to record')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first episode')
    parser.add_argument('--out', default='outputs/record', help='output folder')
    parser.add_argument('--storage', default='mcap', choices=sorted(STORAGES))
    parser.add_argument('--time-scale', type=float, default=1.0,
                        help='run the simulator this many times faster than real time')
    parser.add_argument('--timeout', type=float, default=600.0, help='give up after (s)')
    parser.add_argument('--no-sim', action='store_true',
                        help='drive an already running sim_node instead of starting one')
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error('--episodes must be >= 1')
    low, high = TIME_SCALE_RANGE
    if not low <= args.time_scale <= high:
        parser.error(f'--time-scale {args.time_scale:g}: expected {low:g} .. {high:g} '
                     "(sim_node's range)")
    if args.task not in task_names():
        parser.error(f'unknown task {args.task!r}')
    return args


def main(argv: list[str] | None = None) -> int:
    """Record, then print a JSON summary; exit 1 when the bag does not read back identically."""
    args = _parse(argv)
    try:
        summary = record(args)
    except (RuntimeError, ValueError, OSError) as exc:
        print(f'energyflow-record: error: {exc}', file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0 if summary['bag_matches_npz'] else 1


if __name__ == '__main__':
    sys.exit(main())
