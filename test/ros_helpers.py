"""Helpers for the node tests: isolated DDS domains, node subprocesses, an in-test probe node.

Every test module gets its own ``ROS_DOMAIN_ID`` (derived from the pid and the module name)
and localhost-only discovery, so concurrent runs never cross-talk. Nodes run as real
subprocesses (``python -m energyflow_ros.nodes.<name> --ros-args --params-file ...``); the test
talks to them over real DDS through a :class:`Probe`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from typing import Any, Callable

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def domain_id(module: str) -> int:
    """A DDS domain for one test module of this process (10 .. 209)."""
    return 10 + (os.getpid() * 31 + zlib.crc32(module.encode())) % 200


def ros_env(domain: int) -> dict[str, str]:
    """Environment for node subprocesses (and this process) on ``domain``."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONUNBUFFERED='1', RCUTILS_COLORIZED_OUTPUT='0',
               ROS_LOG_DIR=os.environ.get('ROS_LOG_DIR', os.path.join(
                   tempfile.gettempdir(), 'energyflow_ros_test_logs')))
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


class _QuotingDumper(yaml.SafeDumper):
    """Quotes every string: rcl's YAML reads a bare ``y`` or ``n`` as a boolean."""


_QuotingDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar('tag:yaml.org,2002:str', value,
                                                       style="'"))


class NodeProcess:
    """One node running as a subprocess; its output goes to a log file.

    Attributes:
        name: node module name (``policy_node``, ``sim_node``, ``reward_node``).
        log_path: file holding the process's stdout and stderr.
    """

    def __init__(self, name: str, params: dict[str, Any], domain: int, workdir: str,
                 node_name: str | None = None, extra_args: list[str] | None = None) -> None:
        """Start ``energyflow_ros.nodes.<name>`` with ``params`` (nested dicts allowed)."""
        self.name = name
        tag = node_name or name
        params_path = os.path.join(workdir, f'{tag}_params.yaml')
        with open(params_path, 'w', encoding='utf-8') as handle:
            yaml.dump({'/**': {'ros__parameters': params}}, handle, Dumper=_QuotingDumper)
        self.log_path = os.path.join(workdir, f'{tag}.log')
        args = [sys.executable, '-m', f'energyflow_ros.nodes.{name}', '--ros-args',
                '--params-file', params_path]
        if node_name:
            args += ['-r', f'__node:={node_name}']
        args += extra_args or []
        self._log = open(self.log_path, 'w', encoding='utf-8')
        self.proc = subprocess.Popen(args, cwd=REPO, env=ros_env(domain), stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def log(self) -> str:
        """Everything the process has written so far."""
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path, encoding='utf-8', errors='replace') as handle:
            return handle.read()

    def wait_for_log(self, text: str, timeout: float = 20.0) -> bool:
        """Wait until ``text`` appears in the log (False on timeout or exit)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log():
                return True
            if not self.alive():
                return text in self.log()
            time.sleep(0.05)
        return False

    def interrupt(self, timeout: float = 10.0) -> int:
        """Send SIGINT and wait for exit; kill after ``timeout``. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Recorder:
    """Messages of one subscription with their receive times (monotonic seconds)."""

    def __init__(self) -> None:
        """Start empty."""
        self.messages: list[Any] = []
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, msg: Any) -> None:
        """Subscription callback."""
        with self.lock:
            self.messages.append(msg)
            self.times.append(time.monotonic())

    def since(self, t: float) -> list[Any]:
        """Messages received after monotonic time ``t``."""
        with self.lock:
            return [m for m, r in zip(self.messages, self.times) if r > t]

    def timed_since(self, t: float) -> list[tuple[float, Any]]:
        """(receive time, message) pairs received after ``t``."""
        with self.lock:
            return [(r, m) for m, r in zip(self.messages, self.times) if r > t]

    def last(self) -> Any:
        """The newest message (None when none)."""
        with self.lock:
            return self.messages[-1] if self.messages else None

    def __len__(self) -> int:
        """Messages received."""
        with self.lock:
            return len(self.messages)


class Probe:
    """An rclpy node in the test process, spun on a background thread, in its own context."""

    def __init__(self, domain: int, name: str = 'test_probe') -> None:
        """Create the context, node and executor on ``domain``."""
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def record(self, msg_type: type, topic: str, qos: Any = 10) -> Recorder:
        """Subscribe to ``topic``; returns the recorder its messages go to."""
        recorder = Recorder()
        self.node.create_subscription(msg_type, topic, recorder, qos)
        return recorder

    def publisher(self, msg_type: type, topic: str, qos: Any = 10) -> Any:
        """A publisher on ``topic``."""
        return self.node.create_publisher(msg_type, topic, qos)

    def now(self) -> Any:
        """Current time as builtin_interfaces/Time."""
        return self.node.get_clock().now().to_msg()

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 10.0,
             attempts: int = 1) -> Any:
        """Call a service; returns the response (None when every attempt timed out).

        ``attempts`` > 1 re-sends an idempotent request whose reply did not arrive: under load
        a server can answer before its reply writer has matched this client, and DDS then
        drops the reply.
        """
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                return None
            for _ in range(attempts):
                future = client.call_async(request)
                end = time.monotonic() + timeout
                while not future.done() and time.monotonic() < end:
                    time.sleep(0.01)
                if future.done():
                    return future.result()
                client.remove_pending_request(future)
            return None
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Shut the executor, node and context down."""
        self.executor.shutdown(timeout_sec=1.0)
        self._thread.join(5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def flat_params(tree: dict, prefix: str = '') -> dict:
    """A node's nested YAML parameters as dotted names (``{'a': {'b': 1}}`` -> ``{'a.b': 1}``)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flat_params(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(period)
    return predicate()


def tiny_model(task: str = 'obstacles2d', horizon: int = 8, executed_steps: int = 4,
               n_obs: int = 2) -> str:
    """Path of a small untrained EnergyFlow model exported for ``task`` (cached on disk).

    Good for node mechanics (shapes, timing, safety), not for solving the task. The cache key
    covers the exporter's sources, so a changed exporter re-exports.
    """
    import numpy as np

    from energyflow_ros.sim.registry import make_task

    export_dir = os.path.join(REPO, 'energyflow_ros', 'export')
    sources = sorted(os.path.join(export_dir, f) for f in os.listdir(export_dir)
                     if f.endswith('.py'))
    sources.append(os.path.join(REPO, 'energyflow_ros', 'runtime', 'model_format.py'))
    digest = hashlib.sha256()
    for path in sources:
        with open(path, 'rb') as handle:
            digest.update(handle.read())
    digest.update(f'{task}-{horizon}-{executed_steps}-{n_obs}'.encode())
    folder = os.path.join(tempfile.gettempdir(), 'energyflow_ros_test_models',
                          f'{task}_{digest.hexdigest()[:16]}')
    path = os.path.join(folder, f'{task}.onnx')
    if os.path.exists(path):
        return path
    info = make_task(task).info
    obs_dim = len(info.obs_names) * n_obs
    low, high = np.array(info.action_low), np.array(info.action_high)
    # export into a private folder, then rename it into place in one step: concurrent test
    # runs never see a half-written family (or files of two different exports)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix='.export-', dir=os.path.dirname(folder))
    _export_tiny(os.path.join(scratch, f'{task}.onnx'), info, obs_dim, horizon,
                 executed_steps, n_obs, low, high)
    try:
        os.rename(scratch, folder)
    except OSError:  # another run got there first; its model is as good
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def _export_tiny(path: str, info: Any, obs_dim: int, horizon: int, executed_steps: int,
                 n_obs: int, low: Any, high: Any) -> None:
    import numpy as np
    import torch

    from energyflow_ros.core.config import ChunkSpec
    from energyflow_ros.core.methods import build_method
    from energyflow_ros.data.dataset import Normalizer
    from energyflow_ros.export.onnx_export import export_method

    torch.manual_seed(0)
    spec = ChunkSpec(obs_dim=obs_dim, action_dim=len(info.action_names), horizon=horizon)
    method = build_method('energyflow', spec, {'kind': 'mlp', 'mlp': {'hidden': 32,
                                                                     'depth': 2}}, {})
    centre, scale = (low + high) / 2, (high - low) / 4
    frame_mean = np.zeros(len(info.obs_names))
    frame_std = np.ones(len(info.obs_names))
    for i, name in enumerate(info.obs_names):
        if name in info.action_names:
            j = info.action_names.index(name)
            frame_mean[i], frame_std[i] = centre[j], scale[j]
    meta = {'obs_names': list(info.obs_names), 'action_names': list(info.action_names),
            'n_obs': n_obs, 'horizon': horizon, 'executed_steps': executed_steps,
            'control_period_s': 1.0 / info.control_hz, 'action_low': low.tolist(),
            'action_high': high.tolist(), 'task': info.name}
    obs_norm = Normalizer(mean=np.tile(frame_mean, n_obs), std=np.tile(frame_std, n_obs))
    export_method(method, obs_norm, Normalizer(mean=centre, std=scale), meta, path,
                  n_particles=8, n_steps=4)


class FakeRobot:
    """Publishes JointState (+ an object pose) from the test process, like a robot would.

    Attributes:
        positions: joint name -> position published.
        order: the order names are published in (matching must not depend on it).
        goal: (x, y) published as the object pose.
        publishing: cleared to simulate observation loss.
        override: when set, called with (JointState, PoseStamped) before publishing; may
            mutate them (bad-input injection) or return False to publish nothing.
    """

    def __init__(self, probe: Probe, positions: dict[str, float], goal=(0.9, 0.5),
                 rate_hz: float = 50.0, joint_topic: str = '/joint_states',
                 pose_topic: str = '/task/object_pose') -> None:
        """Start publishing at ``rate_hz`` on a background thread."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        self.probe = probe
        self.positions = dict(positions)
        self.order = list(positions)
        self.goal = tuple(goal)
        self.period = 1.0 / rate_hz
        self.override: Callable[[Any, Any], Any] | None = None
        self.publishing = threading.Event()
        self.publishing.set()
        self.last_published = 0.0
        self._joint_pub = probe.publisher(JointState, joint_topic)
        self._pose_pub = probe.publisher(PoseStamped, pose_topic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def messages(self) -> tuple[Any, Any]:
        """The JointState and PoseStamped that would be published now."""
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState

        stamp = self.probe.now()
        joint = JointState(name=list(self.order),
                           position=[float(self.positions[n]) for n in self.order])
        joint.header.stamp = stamp
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.pose.position.x, pose.pose.position.y = map(float, self.goal)
        pose.pose.orientation.w = 1.0
        return joint, pose

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.publishing.is_set():
                joint, pose = self.messages()
                hook = self.override
                if hook is None or hook(joint, pose) is not False:
                    self._pose_pub.publish(pose)
                    self._joint_pub.publish(joint)
                    self.last_published = time.monotonic()
            time.sleep(self.period)

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(2.0)
