"""reward_node over real DDS: the reward of executed chunks, its stamp, delay and value."""

import copy
import os
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray
import yaml

from energyflow_ros.runtime.onnx_model import load_model
from energyflow_ros.runtime.reward import EnergyReward
from test.ros_helpers import (domain_id, FakeRobot, flat_params, NodeProcess, Probe, REPO,
                              tiny_model, wait_until)

DOMAIN = domain_id(__name__)
COMMAND = (0.35, 0.65)
POSITION = {'robot_x': 0.3, 'robot_y': 0.7}
GOAL = (0.9, 0.45)


def reward_params(model):
    with open(os.path.join(REPO, 'config', 'policy.yaml'), encoding='utf-8') as handle:
        params = copy.deepcopy(yaml.safe_load(handle)['reward_node']['ros__parameters'])
    params['model_path'] = model
    return params


class CommandSource:
    """Publishes a constant forward command at 50 Hz while ``on`` is set."""

    def __init__(self, probe):
        self.pub = probe.publisher(Float64MultiArray, '/forward_position_controller/commands')
        self.on = threading.Event()
        self.on.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if self.on.is_set():
                self.pub.publish(Float64MultiArray(data=list(COMMAND)))
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join(2)


@pytest.fixture(scope='module')
def loop(tmp_path_factory):
    probe = Probe(DOMAIN, 'reward_probe')
    robot = FakeRobot(probe, POSITION, goal=GOAL)
    commands = CommandSource(probe)
    rec = {'reward': probe.record(Float64, '/energyflow/reward'),
           'stamped': probe.record(PointStamped, '/energyflow/reward_stamped'),
           'joints': probe.record(JointState, '/joint_states', 100),
           'diag': probe.record(DiagnosticArray, '/diagnostics')}
    node = NodeProcess('reward_node', reward_params(tiny_model()), DOMAIN,
                       str(tmp_path_factory.mktemp('reward')))
    assert wait_until(lambda: len(rec['stamped']) >= 5, 40), node.log()
    yield node, rec, commands
    assert node.interrupt() == 0, node.log()
    commands.stop()
    robot.stop()
    probe.close()


def expected_reward():
    model = load_model(tiny_model(), graphs=['sampler', 'energy'])
    meta = model.metadata
    frame = [POSITION['robot_x'], POSITION['robot_y'], *GOAL]
    obs = np.tile(frame, meta.n_obs)
    chunk = np.tile(COMMAND, (meta.horizon, 1))
    return EnergyReward(model)(obs, chunk), meta


def test_reward_value_matches_the_runtime_reward(loop):
    node, rec, _ = loop
    want, _ = expected_reward()
    msg = rec['stamped'].last()
    assert msg.point.x == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert msg.point.x == pytest.approx(msg.point.z - msg.point.y, abs=1e-9)
    plain = rec['reward'].last().data
    assert plain == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_reward_is_stamped_with_its_observation_and_emitted_after_the_chunk(loop):
    node, rec, _ = loop
    _, meta = expected_reward()
    joint_stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
                             for m in rec['joints'].since(0.0)])
    timed = rec['stamped'].timed_since(0.0)[-5:]
    for received_mono, msg in timed:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        # an observation's stamp (to float64 precision of epoch seconds, < 1 us)
        assert np.min(np.abs(joint_stamps - stamp)) < 1e-6
    wall_now, mono_now = time.time(), time.monotonic()
    delays = [(received - mono_now + wall_now) - (m.header.stamp.sec
                                                  + m.header.stamp.nanosec * 1e-9)
              for received, m in timed]
    chunk_s = meta.horizon * meta.control_period_s
    assert all(chunk_s - 0.02 <= d <= chunk_s + 3 * meta.control_period_s for d in delays)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in timed]
    assert np.all(np.diff(stamps) > 0.5 * meta.control_period_s)  # one per control period


def test_no_reward_without_executed_commands(loop):
    node, rec, commands = loop
    commands.on.clear()
    try:
        time.sleep(1.6)  # the last windows that still had commands drain
        t0 = time.monotonic()
        time.sleep(1.0)
        assert len(rec['stamped'].since(t0)) == 0
        diag = [m.status[0] for m in rec['diag'].since(t0)
                if m.status[0].name == 'reward_node: reward']
        assert diag and int({kv.key: kv.value for kv in diag[-1].values}[
            'skipped_windows']) > 0
    finally:
        commands.on.set()
    t1 = time.monotonic()
    assert wait_until(lambda: len(rec['stamped'].since(t1)) > 0, 5)


@pytest.mark.parametrize('method', ['diffusion', 'mse'])
def test_a_model_without_energy_is_refused_by_name(tmp_path, method):
    import rclpy
    from rclpy.parameter import Parameter

    from energyflow_ros.nodes.model_loader import ConfigError
    from energyflow_ros.nodes.reward_node import RewardNode
    from test.export_fixtures import export_tiny

    path, _ = export_tiny(str(tmp_path), method)

    params = flat_params({**reward_params(path), 'autostart': False})
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(__name__ + '.in_process'))
    node = RewardNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()])
    try:
        with pytest.raises(ConfigError, match=f"a '{method}' model has no energy, so it has "
                                              'no reward'):
            node._configure()
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_after_the_clock_goes_back_rewards_resume_on_the_new_timeline(monkeypatch):
    """A simulator reset (ROS time 30 s -> 1 s): the old timeline's windows and commands are
    dropped, so the new one is scored at once and never paired with the old one's commands."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.time import Time

    from energyflow_ros.nodes.messages import (make_float64_array, make_joint_state,
                                               make_pose_stamped, sec_to_stamp)
    from energyflow_ros.nodes.reward_node import RewardNode

    params = flat_params({**reward_params(tiny_model()), 'autostart': False})
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(__name__ + '.clock_back'))
    node = RewardNode(context=context, parameter_overrides=[
        Parameter(k, value=v) for k, v in params.items()] + [
        Parameter('use_sim_time', value=True)])
    published = []
    try:
        assert node._configure() is None
        node.reward_pub.publish = lambda msg: published.append(msg.data)
        node.stamped_pub.publish = lambda msg: published.append(
            ('stamp', msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))
        joint, goal = node._inputs.streams[:2]
        period = node.period

        def run(start, seconds):
            t = start
            while t < start + seconds:
                node.get_clock().set_ros_time_override(Time(nanoseconds=int(round(t * 1e9))))
                stamp = sec_to_stamp(t)
                node._inputs._on_joint_state(joint, make_joint_state(
                    ('robot_x', 'robot_y'), [0.3, 0.7], stamp))
                node._inputs._on_pose(goal, make_pose_stamped(*GOAL, 0.0, stamp))
                node._on_forward(make_float64_array(COMMAND))
                node._tick()
                t += period
        run(20.0, 10.0)
        stamps = [v for k, v in (p for p in published if isinstance(p, tuple))]
        assert stamps and max(stamps) < 30.0
        before = len(stamps)
        run(1.0, 3.0)  # the new timeline: scored once its first chunks have been executed
        new = [v for k, v in (p for p in published if isinstance(p, tuple))][before:]
        assert new and all(1.0 <= s < 4.0 for s in new), new[:5]
        assert all(np.isfinite(v) for v in published if not isinstance(v, tuple))
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
