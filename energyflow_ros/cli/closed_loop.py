"""``energyflow-closed-loop``: the whole loop over real DDS, without the ``ros2`` CLI.

Starts the simulated robot (``sim_node``), the energy policy (``policy_node``) and the reward
node (``reward_node``) as separate processes with the package's parameter files — what
``ros2 launch energyflow_ros policy.launch.py`` starts — watches them for a few episodes, then
prints the task success, the achieved control rate, tick latency, deadline misses and the
reward trace, and saves a PNG of the trajectories and rewards plus a JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String

from energyflow_ros.cli.node_process import start_node, stop_nodes
from energyflow_ros.cli.results_files import write_files
from energyflow_ros.nodes.params import latched_qos, reliable_qos

__all__ = ['package_file', 'LoopMonitor', 'run_closed_loop', 'main']

DEFAULT_MODEL = 'obstacles2d_energyflow.onnx'
TOPICS = {'episodes': '/task/episodes', 'status': '/task/status', 'joints': '/joint_states',
          'reward': '/energyflow/reward', 'diagnostics': '/diagnostics',
          'command': '/forward_position_controller/commands'}


RESET_JUMP = 0.2  # joint jump (joint units) that marks an episode reset in the path plot


def package_file(folder: str, name: str) -> str:
    """A shipped file: from the source tree when run from it, else from the installed share."""
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), folder, name)
    if os.path.exists(source):
        return source
    try:
        from ament_index_python.packages import get_package_share_directory
        return os.path.join(get_package_share_directory('energyflow_ros'), folder, name)
    except (ImportError, LookupError):
        return source


class LoopMonitor(Node):
    """Listens to the loop: episode results, positions, rewards, commands, diagnostics."""

    def __init__(self) -> None:
        """Subscribe to every topic the report needs."""
        super().__init__('closed_loop_monitor')
        self.episodes: list[dict[str, Any]] = []
        self.episode = 0
        self.paths: dict[int, list[list[float]]] = {}
        self.rewards: list[tuple[float, int, float]] = []
        self.command_times: list[float] = []
        self.policy_diag: dict[str, str] = {}
        self.t0 = time.monotonic()
        self.create_subscription(String, TOPICS['episodes'], self._on_episode,
                                 _depth(latched_qos(), 100))
        self.create_subscription(String, TOPICS['status'], self._on_status, reliable_qos())
        self.create_subscription(JointState, TOPICS['joints'], self._on_joints, 50)
        self.create_subscription(Float64, TOPICS['reward'], self._on_reward, 50)
        self.create_subscription(Float64MultiArray, TOPICS['command'], self._on_command, 50)
        self.create_subscription(DiagnosticArray, TOPICS['diagnostics'], self._on_diag, 10)

    def now(self) -> float:
        """Seconds since the monitor started."""
        return time.monotonic() - self.t0

    def _on_episode(self, msg: String) -> None:
        self.episodes.append(json.loads(msg.data))

    def _on_status(self, msg: String) -> None:
        self.episode = int(json.loads(msg.data)['episode'])

    def _on_joints(self, msg: JointState) -> None:
        path = self.paths.setdefault(self.episode, [])
        point = list(msg.position)
        if path and len(path[-1]) == len(point) and np.max(np.abs(np.subtract(
                path[-1], point))) > RESET_JUMP:
            # a reset teleports the robot before the status names the new episode
            path.append([float('nan')] * len(point))
        path.append(point)

    def _on_reward(self, msg: Float64) -> None:
        self.rewards.append((self.now(), self.episode, float(msg.data)))

    def _on_command(self, _msg: Float64MultiArray) -> None:
        self.command_times.append(self.now())

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(': policy'):
                self.policy_diag = {kv.key: kv.value for kv in status.values}
                self.policy_diag['level_message'] = status.message


def _depth(qos: Any, depth: int) -> Any:
    qos.depth = depth
    return qos


def _achieved_rate(times: list[float]) -> float:
    """Commands per second over the steady part (the middle 80 %) of the run."""
    if len(times) < 10:
        return 0.0
    t = np.asarray(times)
    lo, hi = np.quantile(t, [0.1, 0.9])
    inside = int(np.sum((t >= lo) & (t <= hi)))
    return float((inside - 1) / (hi - lo)) if hi > lo else 0.0


def run_closed_loop(args: argparse.Namespace) -> dict[str, Any]:
    """Start the three nodes, watch ``args.episodes`` episodes, stop them, return the report."""
    os.makedirs(args.out, exist_ok=True)
    overrides = {'model_path': args.model, 'autostart': True}
    rclpy.init()
    procs: list[subprocess.Popen] = []
    try:
        monitor = LoopMonitor()
        executor = SingleThreadedExecutor()
        executor.add_node(monitor)
        procs.append(start_node('policy_node', {
            **overrides, 'control_rate_hz': float(args.control_rate)}, args.out, args.config))
        if args.reward:
            procs.append(start_node('reward_node', overrides, args.out, args.config))
        deadline = time.monotonic() + args.timeout
        # the robot starts once the policy is active (model loaded and warmed up), so the
        # first episode is driven, and watched, from its first step
        while monitor.policy_diag.get('state') != 'active' and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            _check_alive(procs, args.out)
        if monitor.policy_diag.get('state') != 'active':
            raise RuntimeError(f'policy_node was not active after --timeout {args.timeout:g} s '
                               f"(last diagnostics: {monitor.policy_diag.get('level_message')}"
                               f"); see {os.path.join(args.out, 'policy_node.log')}")
        procs.append(start_node('sim_node', {'episodes': args.episodes, 'seed': args.seed},
                                args.out, args.sim_config))
        while len(monitor.episodes) < args.episodes and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            _check_alive(procs, args.out)
        if len(monitor.episodes) < args.episodes:
            raise RuntimeError(f'only {len(monitor.episodes)} of {args.episodes} episodes '
                               f'finished within --timeout {args.timeout:g} s; no report written')
        for _ in range(20):  # collect the last diagnostics
            executor.spin_once(timeout_sec=0.05)
        report = _report(monitor, args)
    finally:
        rclpy.try_shutdown()
        stop_nodes(procs)
    write_files(args.out, {'closed_loop.json': json.dumps(report, indent=2)})
    try:
        _plot(monitor, report, os.path.join(args.out, 'closed_loop.png'))
    except Exception as exc:  # noqa: BLE001  (a missing matplotlib must not lose the report)
        print(f'energyflow-closed-loop: warning: closed_loop.png not written '
              f'({type(exc).__name__}: {exc})', file=sys.stderr)
    return report


def _check_alive(procs: list[subprocess.Popen], log_dir: str) -> None:
    for proc in procs:
        if proc.poll() is not None:
            name = proc.args[2].rsplit('.', 1)[-1]
            raise RuntimeError(f'{name} exited with code {proc.returncode}; see '
                               f'{os.path.join(log_dir, name + ".log")}')


def _float(diag: dict[str, str], key: str) -> float | None:
    try:
        return float(diag[key])
    except (KeyError, ValueError):
        return None


def _report(monitor: LoopMonitor, args: argparse.Namespace) -> dict[str, Any]:
    episodes = monitor.episodes[:args.episodes]
    diag = monitor.policy_diag
    ticks, misses = _float(diag, 'ticks'), _float(diag, 'deadline_misses')
    per_episode = {}
    for _, ep, r in monitor.rewards:
        per_episode.setdefault(ep, []).append(r)
    return {
        'model': args.model, 'episodes': len(episodes),
        'success': float(np.mean([e['success'] for e in episodes])) if episodes else 0.0,
        'episode_results': episodes,
        'control_rate_hz': float(args.control_rate),
        'achieved_command_rate_hz': _achieved_rate(monitor.command_times),
        'tick_latency_p99_ms': _float(diag, 'tick_latency_p99_ms'),
        'plan_latency_p99_ms': _float(diag, 'plan_latency_p99_ms'),
        'deadline_misses': misses, 'ticks': ticks,
        'deadline_miss_pct': 100.0 * misses / ticks if ticks and misses is not None else None,
        'provider': diag.get('provider'), 'policy_state': diag.get('level_message'),
        'reward_mean_per_episode': {str(k): float(np.mean(v)) for k, v in
                                    sorted(per_episode.items())},
        'reward_messages': len(monitor.rewards),
        'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
    }


def _plot(monitor: LoopMonitor, report: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    results = {int(e['episode']): e for e in monitor.episodes}
    for ep, points in sorted(monitor.paths.items()):
        xy = np.asarray(points)
        if xy.ndim == 2 and xy.shape[1] >= 2 and ep in results:
            ok = 'success' if results[ep]['success'] else 'failure'
            left.plot(xy[:, 0], xy[:, 1], label=f'episode {ep} ({ok})')
    _draw_task(left, monitor.episodes)
    left.set_title(f"trajectories, success {report['success']:.2f}")
    left.set_xlabel('joint 0')
    left.set_ylabel('joint 1')
    left.legend(fontsize=7, loc='lower left')
    if monitor.rewards:
        t, ep, r = np.asarray(monitor.rewards).T
        right.scatter(t, r, c=ep, s=4, cmap='viridis')
        low, high = np.percentile(r, [5, 100])  # chunks spanning a reset score far lower
        right.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    right.set_title('extracted reward (reward_node)')
    right.set_xlabel('time (s)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_task(axes: Any, episodes: list[dict[str, Any]]) -> None:
    """Obstacles of obstacles2d as circles (other tasks: nothing)."""
    if not episodes or episodes[0].get('task') != 'obstacles2d':
        return
    from matplotlib.patches import Circle
    from energyflow_ros.sim.registry import make_task
    task = make_task('obstacles2d')
    for centre, radius in zip(task.centres, task.radii):
        axes.add_patch(Circle(tuple(centre), float(radius), color='0.8', zorder=0))
    axes.set_aspect('equal')


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='energyflow-closed-loop',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--model', default=package_file('models', DEFAULT_MODEL))
    parser.add_argument('--config', default=package_file('config', 'policy.yaml'),
                        help='parameter file of policy_node and reward_node')
    parser.add_argument('--sim-config', default=package_file('config', 'sim.yaml'))
    parser.add_argument('--episodes', type=int, default=3)
    parser.add_argument('--seed', type=int, default=1000, help='first episode seed')
    parser.add_argument('--control-rate', type=float, default=50.0, help='policy rate (Hz)')
    parser.add_argument('--no-reward', dest='reward', action='store_false')
    parser.add_argument('--timeout', type=float, default=300.0, help='give up after (s)')
    parser.add_argument('--out', default='outputs/closed_loop')
    args = parser.parse_args(argv)
    for label, path in (('model', args.model), ('config', args.config),
                        ('sim config', args.sim_config)):
        if not os.path.isfile(path):
            parser.error(f'{label} file not found: {path}')
    if args.episodes < 1 or args.control_rate <= 0:
        parser.error('--episodes must be >= 1 and --control-rate > 0')
    return args


def _print(report: dict[str, Any]) -> None:
    fmt = (lambda v: 'n/a' if v is None else f'{v:.2f}')
    print(f"episodes {report['episodes']}: success {report['success']:.2f}")
    for e in report['episode_results']:
        collided = e.get('metrics', {}).get('collision')
        print(f"  episode {e['episode']} (seed {e['seed']}): success {e['success']}, "
              f"{e['step']} steps" + ('' if collided is None else
                                      ', collided' if collided else ', no collision'))
    print(f"control rate {report['control_rate_hz']:g} Hz, achieved "
          f"{report['achieved_command_rate_hz']:.1f} Hz; tick latency p99 "
          f"{fmt(report['tick_latency_p99_ms'])} ms; plan latency p99 "
          f"{fmt(report['plan_latency_p99_ms'])} ms; deadline misses "
          f"{report['deadline_misses']} of {report['ticks']} ticks; provider "
          f"{report['provider']}")
    print(f"reward per episode (mean): {report['reward_mean_per_episode']} "
          f"({report['reward_messages']} messages)")


def failures(report: dict[str, Any]) -> list[str]:
    """What makes a finished run a failed demonstration of the loop (empty: it worked)."""
    problems = []
    if report['success'] <= 0:
        problems.append(f"no episode of {report['episodes']} reached the goal")
    rate, asked = report['achieved_command_rate_hz'], report['control_rate_hz']
    if rate < 0.5 * asked:
        problems.append(f'commands reached the simulator at {rate:.1f} Hz, under half the '
                        f'{asked:g} Hz control rate')
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the loop and print the report; exit 1 when it could not run, or when no episode
    succeeded or commands flowed at under half the control rate (the report is written)."""
    args = _parse(argv)
    try:
        report = run_closed_loop(args)
    except (RuntimeError, OSError) as exc:
        print(f'energyflow-closed-loop: error: {exc}', file=sys.stderr)
        return 1
    _print(report)
    print(f"wrote {os.path.join(args.out, 'closed_loop.json')} and closed_loop.png")
    problems = failures(report)
    for problem in problems:
        print(f'energyflow-closed-loop: error: {problem}', file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
