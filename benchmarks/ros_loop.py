"""The policy node's control loop over real DDS: achieved rate, latency, deadline misses.

For every control rate (default 100, 250 and 500 Hz) a fresh ``policy_node`` process runs the
model while this process plays the robot: it publishes ``/joint_states`` and the object pose at
``--obs-rate`` Hz (header stamped at publication) and records every command it receives. The
policy is warmed up, its statistics are reset by a deactivate/activate cycle, and then it is
measured for ``--duration`` seconds:

* ``achieved_hz``: commands received per second;
* ``p99_obs_to_cmd_ms``: 99th percentile, measured in the node, of the time from an
  observation's header stamp (set by the publisher) to the publication of the first command
  computed after it arrived — DDS transport + waiting for the next tick + the tick itself;
* ``deadline_miss_pct``: control ticks that did not happen on time (timer intervals longer
  than 1.5 periods count the ticks they skipped), as a percentage of the ticks due;
* also ``tick_p99_ms`` (the tick's own compute), ``received_gap_pct`` (command gaps longer
  than 1.5 periods seen by the subscriber, which adds DDS jitter) and the planner's latency.

Results: ``<out>/ros_loop-<device>.json`` and ``.md``. The planner runs on ``--device`` (an
onnxruntime provider device); the control loop itself is Python on the CPU.

Usage: ``python benchmarks/ros_loop.py [--rates 100,250,500] [--duration 10] [--model M]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
import yaml  # noqa: E402

from energyflow_ros.cli.results_files import refuse_other_settings, write_files  # noqa: E402

DEFAULT_MODEL = os.path.join(ROOT, 'models', 'obstacles2d_energyflow.onnx')
COMMANDS = '/forward_position_controller/commands'


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument('--rates', default='100,250,500', help='control rates (Hz)')
    parser.add_argument('--duration', type=float, default=10.0, help='seconds per rate')
    parser.add_argument('--warmup', type=float, default=3.0, help='seconds before measuring')
    parser.add_argument('--obs-rate', type=float, default=100.0,
                        help='joint state publication rate (Hz)')
    parser.add_argument('--model', default=DEFAULT_MODEL)
    parser.add_argument('--device', default='cpu', help='planner device: cpu | cuda')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results'))
    parser.add_argument('--note', default='', help='free text stored with the results')
    parser.add_argument('--force', action='store_true',
                        help='replace a results file of other settings (refused otherwise)')
    return parser.parse_args(argv)


class Robot(Node):
    """Publishes joint states and the goal; records the commands and policy diagnostics."""

    def __init__(self, obs_rate: float) -> None:
        """Create publishers, the command and diagnostics subscriptions, the obs timer."""
        super().__init__('ros_loop_bench')
        self.joint_pub = self.create_publisher(JointState, '/joint_states', 10)
        self.pose_pub = self.create_publisher(PoseStamped, '/task/object_pose', 10)
        self.command_times: list[float] = []
        self.diagnostics: dict[str, str] = {}
        self.lock = threading.Lock()
        self.create_subscription(Float64MultiArray, COMMANDS, self._on_command, 10)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.create_timer(1.0 / obs_rate, self._publish)

    def _publish(self) -> None:
        stamp = self.get_clock().now().to_msg()
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.pose.position.x, pose.pose.position.y, pose.pose.orientation.w = 0.9, 0.5, 1.0
        self.pose_pub.publish(pose)
        joint = JointState(name=['robot_x', 'robot_y'], position=[0.1, 0.5])
        joint.header.stamp = stamp
        self.joint_pub.publish(joint)

    def _on_command(self, _msg: Float64MultiArray) -> None:
        with self.lock:
            self.command_times.append(time.monotonic())

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id == 'policy_node':
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics['_received'] = str(time.monotonic())

    def lifecycle(self, transition: int) -> bool:
        """Call policy_node's change_state service."""
        client = self.create_client(ChangeState, '/policy_node/change_state')
        try:
            if not client.wait_for_service(timeout_sec=10.0):
                return False
            request = ChangeState.Request()
            request.transition.id = transition
            future = client.call_async(request)
            end = time.monotonic() + 10.0
            while not future.done() and time.monotonic() < end:
                time.sleep(0.01)
            return bool(future.done() and future.result().success)
        finally:
            self.destroy_client(client)


class _QuotingDumper(yaml.SafeDumper):
    """Quotes every string: rcl's YAML reads a bare ``y`` as a boolean."""


_QuotingDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar('tag:yaml.org,2002:str', value,
                                                       style="'"))


def policy_params(args: argparse.Namespace, rate: float) -> dict[str, Any]:
    """The shipped policy_node parameters at ``rate``, diagnostics once a second."""
    with open(os.path.join(ROOT, 'config', 'policy.yaml'), encoding='utf-8') as handle:
        params = yaml.safe_load(handle)['policy_node']['ros__parameters']
    params.update(model_path=os.path.abspath(args.model), control_rate_hz=float(rate),
                  diagnostics_period_s=1.0, autostart=True)
    params['provider']['device'] = args.device
    return params


def start_policy(params: dict[str, Any], folder: str, rate: float) -> subprocess.Popen:
    """Run policy_node as a subprocess with ``params``."""
    path = os.path.join(folder, f'policy_{int(rate)}.yaml')
    with open(path, 'w', encoding='utf-8') as handle:
        yaml.dump({'/**': {'ros__parameters': params}}, handle, Dumper=_QuotingDumper)
    log = open(os.path.join(folder, f'policy_{int(rate)}.log'), 'w', encoding='utf-8')
    cmd = [sys.executable, '-m', 'energyflow_ros.nodes.policy_node', '--ros-args',
           '--params-file', path]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))


def _wait(predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def measure(robot: Robot, args: argparse.Namespace, rate: float, folder: str) -> dict:
    """One rate: start, warm up, reset the statistics, measure, stop."""
    proc = start_policy(policy_params(args, rate), folder, rate)
    try:
        if not _wait(lambda: len(robot.command_times) > 20, 60):
            raise RuntimeError(f'policy_node sent no commands at {rate} Hz (see {folder})')
        time.sleep(args.warmup)
        for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
            if not robot.lifecycle(transition):   # re-activation resets the node's statistics
                raise RuntimeError(f'policy_node refused lifecycle transition {transition} at '
                                   f'{rate} Hz: its statistics were not reset (see {folder})')
        t0 = time.monotonic()
        time.sleep(args.duration)
        t1 = time.monotonic()
        _wait(lambda: float(robot.diagnostics.get('_received', 0)) > t1, 3.0)
        with robot.lock:
            times = np.array([t for t in robot.command_times if t0 + 0.2 <= t <= t1])
            diag = dict(robot.diagnostics)
    finally:
        proc.send_signal(2)
        proc.wait(20)
        with robot.lock:
            robot.command_times.clear()
    # where the planner ran, as the node reports it (a CUDA request can fall back to the CPU)
    return record(rate, times, diag, diag.get('provider', f'{args.device} (requested)'))


def record(rate: float, times: np.ndarray, diag: dict[str, str], device: str) -> dict:
    """The result row of one rate."""
    gaps = np.diff(times)
    ticks, misses = float(diag.get('ticks', 'nan')), float(diag.get('deadline_misses', 'nan'))
    return {
        'rate_hz': rate,
        'achieved_hz': float((len(times) - 1) / (times[-1] - times[0])),
        'p99_obs_to_cmd_ms': float(diag.get('obs_to_cmd_p99_ms', 'nan')),
        'p50_obs_to_cmd_ms': float(diag.get('obs_to_cmd_p50_ms', 'nan')),
        'deadline_miss_pct': 100.0 * misses / (ticks + misses),
        'tick_p50_ms': float(diag.get('tick_latency_p50_ms', 'nan')),
        'tick_p99_ms': float(diag.get('tick_latency_p99_ms', 'nan')),
        'received_gap_pct': 100.0 * float(np.mean(gaps > 1.5 / rate)),
        'plan_p50_ms': float(diag.get('plan_latency_p50_ms', 'nan')),
        'plan_p99_ms': float(diag.get('plan_latency_p99_ms', 'nan')),
        'planning_overruns': int(float(diag.get('planning_overruns', 'nan'))),
        'plans': int(float(diag.get('plans', 'nan'))),
        'device': device,
    }


def machine(args: argparse.Namespace) -> dict[str, Any]:
    """Where the numbers come from."""
    load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
    return {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
            'python': platform.python_version(), 'model': os.path.relpath(args.model, ROOT),
            'obs_rate_hz': args.obs_rate, 'duration_s': args.duration,
            'load_average_at_start': list(load), 'note': args.note,
            'date_utc': time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}


def markdown(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The human-readable results file."""
    load = ', '.join(f'{v:.2f}' for v in info['load_average_at_start'])
    lines = ['# policy_node control loop over DDS', '',
             f"{info['date_utc']} UTC, {info['cpu_count']} CPUs, {info['platform']}, model "
             f"`{info['model']}`, joint states at {info['obs_rate_hz']:g} Hz, "
             f"{info['duration_s']:g} s per rate, planner on `{rows[0]['device']}`. "
             f"Load average at start: {load}. {info['note']}", '',
             '| rate (Hz) | achieved (Hz) | obs->cmd p50 / p99 (ms) | deadline misses (%) | '
             'tick p50 / p99 (ms) | received gaps > 1.5 T (%) | plan p50 / p99 (ms) |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['rate_hz']:g} | {r['achieved_hz']:.1f} | {r['p50_obs_to_cmd_ms']:.2f}"
                     f" / {r['p99_obs_to_cmd_ms']:.2f} | {r['deadline_miss_pct']:.2f} | "
                     f"{r['tick_p50_ms']:.3f} / {r['tick_p99_ms']:.3f} | "
                     f"{r['received_gap_pct']:.2f} | {r['plan_p50_ms']:.2f} / "
                     f"{r['plan_p99_ms']:.2f} |")
    lines += ['', 'obs->cmd: from an observation\'s header stamp to the publication of the first '
              'command after it arrived (measured in the node). Deadline misses: timer '
              'ticks skipped (intervals > 1.5 periods), in % of the ticks due. Received gaps: '
              'the same seen by the subscriber, through DDS.', '']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every rate; write the JSON and Markdown results."""
    args = _parse(argv)
    compared = {k: v for k, v in vars(args).items() if k not in ('out', 'force', 'note')}
    stem = f'ros_loop-{args.device}'
    if refuse_other_settings('ros_loop', os.path.join(args.out, stem + '.json'), compared,
                             args.force):
        return 2                        # said before the rates run, not after
    rates = [float(r) for r in args.rates.split(',')]
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault('ROS_LOG_DIR', os.path.join(tempfile.gettempdir(), 'ros_loop_logs'))
    rclpy.init()
    robot = Robot(args.obs_rate)
    executor = SingleThreadedExecutor()
    executor.add_node(robot)
    spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
    spinner.start()
    info = machine(args)
    rows = []
    try:
        folder = tempfile.mkdtemp(prefix='ros_loop-')
        print(f'node logs in {folder}', flush=True)
        for rate in rates:
            rows.append(measure(robot, args, rate, folder))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        executor.shutdown()
        robot.destroy_node()
        rclpy.try_shutdown()
    write_files(args.out, {stem + '.json': json.dumps({'machine': info, 'settings': compared,
                                                       'results': rows}, indent=2) + '\n',
                           stem + '.md': markdown(info, rows)})
    print(f'wrote {os.path.join(args.out, stem)}.json and .md')
    return 0


def _spin(executor: SingleThreadedExecutor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


if __name__ == '__main__':
    sys.exit(main())
