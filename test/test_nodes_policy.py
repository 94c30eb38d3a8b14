"""policy_node over real DDS: commands, safety, observation loss, lifecycle, closed loop.

One policy process (a small exported model) is shared by most tests; the test process plays
the robot (:class:`FakeRobot`). The closed-loop test runs sim_node with the shipped model.
"""

import copy
import json
import os
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
import pytest
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory
import yaml

from energyflow_ros.nodes.params import latched_qos
from test.ros_helpers import (domain_id, FakeRobot, flat_params, NodeProcess, Probe, REPO,
                              tiny_model, wait_until)

DOMAIN = domain_id(__name__)
FORWARD = '/forward_position_controller/commands'
RATE_HZ = 50.0
MAX_VELOCITY = 0.6
MAX_STEP = MAX_VELOCITY / RATE_HZ
MODEL_PERIOD = 0.1


def policy_params(model, **overrides):
    """config/policy.yaml's policy_node parameters, for tests."""
    with open(os.path.join(REPO, 'config', 'policy.yaml'), encoding='utf-8') as handle:
        params = yaml.safe_load(handle)['policy_node']['ros__parameters']
    params = copy.deepcopy(params)
    params.update(model_path=model, control_rate_hz=RATE_HZ, max_velocity=[MAX_VELOCITY],
                  ramp_in_s=0.2, diagnostics_period_s=0.2)
    params['observation']['joint_state']['max_age_s'] = 0.1
    params.update(overrides)
    return params


@pytest.fixture(scope='module')
def probe():
    probe = Probe(DOMAIN, 'policy_probe')
    yield probe
    probe.close()


@pytest.fixture(scope='module')
def robot(probe):
    robot = FakeRobot(probe, {'robot_x': 0.2, 'robot_y': 0.8})
    yield robot
    robot.stop()


@pytest.fixture(scope='module')
def policy(probe, robot, tmp_path_factory):
    node = NodeProcess('policy_node', policy_params(tiny_model()), DOMAIN,
                       str(tmp_path_factory.mktemp('policy')))
    rec = {'cmd': probe.record(Float64MultiArray, FORWARD),
           'diag': probe.record(DiagnosticArray, '/diagnostics'),
           'chunk': probe.record(Float64MultiArray, '/policy_node/chunk')}
    assert wait_until(lambda: len(rec['cmd']) > 20, 40), node.log()
    yield node, rec
    assert node.interrupt() == 0, node.log()


def reset_robot(robot, order=('robot_x', 'robot_y'), x=0.2, y=0.8):
    robot.order = list(order)
    robot.positions = {'robot_x': x, 'robot_y': y}
    robot.override = None
    robot.publishing.set()


def commands_since(rec, t):
    return np.array([m.data for m in rec['cmd'].since(t)])


def latest_status(rec, since=0.0, name='policy_node'):
    msgs = [m for m in rec['diag'].since(since) if m.status[0].hardware_id == name]
    return msgs[-1].status[0] if msgs else None


def values(status):
    return {kv.key: kv.value for kv in status.values}


def assert_safe(rec, since, measured, limits=((0.0, 0.0), (1.0, 1.0))):
    """Commands received after ``since``: finite, in the limits, never faster than the limit.

    Every change between two received commands is a hold at the measured pose or at most
    MAX_STEP per control tick elapsed between them (a command lost on the way, under load,
    legitimately lets two received ones differ by more than one step).
    """
    timed = rec['cmd'].timed_since(since)
    commands = np.array([m.data for _, m in timed])
    times = np.array([t for t, _ in timed])
    assert len(commands) and np.all(np.isfinite(commands))
    assert np.all(commands >= limits[0]) and np.all(commands <= limits[1])
    for k in range(1, len(commands)):
        held = np.allclose(commands[k], measured, atol=1e-12)
        ticks = max(1, int(round((times[k] - times[k - 1]) * RATE_HZ)))
        step = np.max(np.abs(commands[k] - commands[k - 1]))
        assert held or step <= ticks * MAX_STEP + 1e-9, (commands[k - 1], commands[k], ticks)
    return commands


def test_model_info_is_latched_for_late_subscribers(policy, probe):
    late = probe.record(String, '/policy_node/model_info', latched_qos())
    assert wait_until(lambda: len(late) > 0, 10)
    info = json.loads(late.last().data)
    assert info['joint_names'] == ['robot_x', 'robot_y']
    assert info['obs_names'] == ['robot_x', 'robot_y', 'goal_x', 'goal_y']
    assert info['provider'] == 'cpu' and info['horizon'] == 8


def test_commands_are_safe_and_diagnostics_report_timing(policy, robot):
    node, rec = policy
    reset_robot(robot)
    t0 = time.monotonic()
    time.sleep(1.5)
    cmds = assert_safe(rec, t0, np.array([0.2, 0.8]))
    assert len(cmds) > 0.7 * 1.5 * RATE_HZ  # ~50 Hz arrive
    status = latest_status(rec, t0)
    v = values(status)
    assert status.level == DiagnosticStatus.OK, status.message
    assert v['state'] == 'active' and int(v['plans']) > 0 and v['provider'] == 'cpu'
    for key in ('tick_latency_p50_ms', 'tick_latency_p99_ms', 'obs_to_cmd_p99_ms',
                'observation_age_s', 'best_energy', 'deadline_misses'):
        assert np.isfinite(float(v[key])), key


def test_chunk_topic_carries_energy_and_layout(policy):
    node, rec = policy
    assert wait_until(lambda: len(rec['chunk']) > 0, 5)
    msg = rec['chunk'].last()
    dims = [(d.label, d.size) for d in msg.layout.dim]
    assert dims == [('steps', 8), ('joints', 2)] and msg.layout.data_offset == 1
    assert len(msg.data) == 1 + 16 and np.all(np.isfinite(msg.data))


def test_observation_loss_holds_the_measured_pose_then_recovers(policy, robot):
    node, rec = policy
    reset_robot(robot, order=('robot_y', 'robot_x'), x=0.3, y=0.7)  # reordered on purpose
    time.sleep(1.0)
    robot.publishing.clear()
    time.sleep(0.05)
    t_stop = robot.last_published
    time.sleep(0.8)
    held = commands_since(rec, t_stop + 2 * MODEL_PERIOD)
    assert len(held) > 10
    np.testing.assert_array_equal(held, np.tile([0.3, 0.7], (len(held), 1)))  # by name
    status = latest_status(rec, t_stop + 0.3)
    assert status.level == DiagnosticStatus.ERROR and 'holding' in status.message
    t_resume = time.monotonic()
    robot.publishing.set()
    assert wait_until(lambda: len(commands_since(rec, t_resume + 0.3)) > 10, 5)
    time.sleep(1.0)
    moved = assert_safe(rec, t_resume, np.array([0.3, 0.7]))
    assert np.max(np.abs(moved - [0.3, 0.7])) > 1e-6  # the policy drives again
    assert latest_status(rec, time.monotonic() - 0.3).level == DiagnosticStatus.OK


def test_extra_unknown_joints_are_ignored(policy, robot):
    node, rec = policy
    reset_robot(robot)
    robot.positions['gripper'] = 0.01
    robot.order = ['gripper', 'robot_y', 'robot_x']
    t0 = time.monotonic()
    time.sleep(0.8)
    assert latest_status(rec, t0 + 0.3).level == DiagnosticStatus.OK
    assert_safe(rec, t0, np.array([0.2, 0.8]))
    reset_robot(robot)


def test_deactivate_holds_once_and_activate_resumes(policy, probe, robot):
    node, rec = policy
    reset_robot(robot, x=0.25, y=0.75)
    time.sleep(0.6)
    change = ChangeState.Request()
    change.transition.id = Transition.TRANSITION_DEACTIVATE
    t0 = time.monotonic()
    assert probe.call(ChangeState, '/policy_node/change_state', change).success
    time.sleep(0.6)
    after = commands_since(rec, t0)
    np.testing.assert_array_equal(after[-1], [0.25, 0.75])  # the hold, published once
    t1 = time.monotonic()
    time.sleep(0.5)
    assert len(commands_since(rec, t1)) == 0
    state = probe.call(GetState, '/policy_node/get_state', GetState.Request(), attempts=3)
    assert state.current_state.label == 'inactive'
    change.transition.id = Transition.TRANSITION_ACTIVATE
    assert probe.call(ChangeState, '/policy_node/change_state', change).success
    assert wait_until(lambda: len(commands_since(rec, t1)) > 10, 5)


def test_trajectory_interface_by_name_and_hold_on_shutdown(probe, robot, tmp_path):
    reset_robot(robot, x=0.4, y=0.6)
    params = policy_params(tiny_model(), command_interface='trajectory',
                           joint_names=['robot_y', 'robot_x'])
    node = NodeProcess('policy_node', params, DOMAIN, str(tmp_path), node_name='traj_policy')
    traj = probe.record(JointTrajectory, '/joint_trajectory_controller/joint_trajectory')
    try:
        assert wait_until(lambda: len(traj) > 20, 40), node.log()
        msg = traj.last()
        assert list(msg.joint_names) == ['robot_y', 'robot_x'] and len(msg.points) == 1
        assert msg.points[0].time_from_start.nanosec == pytest.approx(1e9 / RATE_HZ, abs=1)
    finally:
        assert node.interrupt() == 0, node.log()
    # the final hold, by name (delivery may lag on a loaded machine)
    assert wait_until(lambda: list(traj.last().points[0].positions) == [0.6, 0.4], 5)
    assert 'holding the last measured position' in node.log()


def test_a_goal_read_from_a_lidar_cloud_drives_the_arm_and_a_bad_cloud_holds_it(
        probe, robot, tmp_path):
    """The goal as the centroid of a mixed-type PointCloud2, over DDS; a malformed cloud is
    rejected by name and the node stays up."""
    from sensor_msgs.msg import PointCloud2

    from energyflow_ros.nodes.messages import sec_to_stamp

    params = policy_params(tiny_model(), forward_command_topic='/cloud_policy/commands')
    params['observation'] = {
        'joint_state': params['observation']['joint_state'], 'streams': ['goal_cloud'],
        'goal_cloud': {'type': 'pointcloud', 'topic': '/goal_cloud', 'fields': ['x', 'y'],
                       'obs_names': ['goal_x', 'goal_y'], 'max_age_s': 0.5,
                       'stamp_source': 'receive', 'n_points': 0}}
    reset_robot(robot, x=0.3, y=0.3)
    good = make_cloud(LIDAR, [(0.8, 0.6, 0.0, 5.0, 1), (1.0, 0.4, 0.0, 5.0, 2),
                              (float('nan'), 0.0, 0.0, 0.0, 3)], point_step=18)
    bad = make_cloud(LIDAR, [(0.9, 0.5, 0.0, 5.0, 1)] * 3, point_step=18)
    bad.data = bytes(20)  # shorter than its width x point_step
    pub = probe.publisher(PointCloud2, '/goal_cloud')
    rec = {'cmd': probe.record(Float64MultiArray, '/cloud_policy/commands'),
           'diag': probe.record(DiagnosticArray, '/diagnostics')}
    node = NodeProcess('policy_node', params, DOMAIN, str(tmp_path), node_name='cloud_policy')

    def publish_for(seconds, cloud):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            cloud.header.stamp = sec_to_stamp(time.time())
            pub.publish(cloud)
            time.sleep(0.05)
    try:
        t0 = time.monotonic()
        deadline = time.monotonic() + 40
        while len(commands_since(rec, t0)) < 20 and time.monotonic() < deadline:
            publish_for(0.5, good)
        t1 = time.monotonic()
        publish_for(2.0, good)
        moved = assert_safe(rec, t1, np.array([0.3, 0.3]))
        assert np.max(np.abs(moved - [0.3, 0.3])) > 1e-3  # driven towards the cloud's goal
        status = latest_status(rec, t1 + 0.5, 'cloud_policy')
        assert status.level == DiagnosticStatus.OK, status.message
        t2 = time.monotonic()
        publish_for(1.0, bad)
        status = latest_status(rec, t2 + 0.3, 'cloud_policy')
        assert status.level == DiagnosticStatus.ERROR, status.message
        assert '/goal_cloud: PointCloud2 data holds 20 bytes' in status.message
        assert node.alive(), node.log()  # still running
    finally:
        assert node.interrupt() == 0, node.log()


# ---------------------------------------------------------------- message conversions
def test_pose_fields_by_name_and_yaw_ranges():
    from energyflow_ros.nodes.messages import make_pose_stamped, pose_values, sec_to_stamp

    msg = make_pose_stamped(1.5, -2.0, 5.5, sec_to_stamp(12.25))
    x, y, yaw, yaw_2pi, c, s = pose_values(msg, ['x', 'y', 'yaw', 'yaw_2pi', 'yaw_cos',
                                                 'yaw_sin'])
    assert (x, y) == (1.5, -2.0)
    assert yaw == pytest.approx(5.5 - 2 * np.pi) and yaw_2pi == pytest.approx(5.5)
    assert (c, s) == pytest.approx((np.cos(5.5), np.sin(5.5)))
    assert msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 250_000_000


def test_joint_indexer_matches_by_name_and_names_what_is_missing():
    from sensor_msgs.msg import JointState

    from energyflow_ros.nodes.messages import JointIndexer

    indexer = JointIndexer(['a', 'b'])
    msg = JointState(name=['c', 'b', 'a'], position=[9.0, 2.0, 1.0])
    np.testing.assert_array_equal(indexer.positions(msg), [1.0, 2.0])
    msg.name = ['b', 'c', 'a']  # a new order re-indexes
    np.testing.assert_array_equal(indexer.positions(msg), [1.0, 9.0])
    with pytest.raises(ValueError, match=r"lacks joints \['b'\]"):
        indexer.positions(JointState(name=['a'], position=[1.0]))
    with pytest.raises(ValueError, match='2 names but 1 positions'):
        indexer.positions(JointState(name=['a', 'b'], position=[1.0]))
    with pytest.raises(ValueError, match=r"names joints \['a'\] more than once"):
        indexer.positions(JointState(name=['a', 'b', 'a'], position=[0.3, 0.6, 0.9]))
    np.testing.assert_array_equal(  # the repeat is refused on every message, not cached
        indexer.positions(JointState(name=['b', 'a'], position=[2.0, 1.0])), [1.0, 2.0])
    with pytest.raises(ValueError, match='more than once'):
        indexer.positions(JointState(name=['a', 'b', 'a'], position=[0.3, 0.6, 0.9]))


def test_float64_array_honours_data_offset_and_length():
    from energyflow_ros.nodes.messages import array_values, make_chunk_array

    msg = make_chunk_array(np.arange(6.0).reshape(3, 2), energy=-1.5)
    assert msg.data[0] == -1.5
    np.testing.assert_array_equal(array_values(msg, 6), np.arange(6.0))
    with pytest.raises(ValueError, match='holds 6 values, expected 4'):
        array_values(msg, 4)


def test_trajectory_by_name_reorders_and_rejects_unknown_joints():
    from trajectory_msgs.msg import JointTrajectoryPoint

    from energyflow_ros.nodes.messages import (make_joint_trajectory, sec_to_duration,
                                               trajectory_by_name)

    msg = JointTrajectory(joint_names=['b', 'a'])
    msg.points = [JointTrajectoryPoint(positions=[2.0, 1.0],
                                       time_from_start=sec_to_duration(0.5))]
    times, positions = trajectory_by_name(msg, ['a', 'b'])
    np.testing.assert_array_equal(positions, [[1.0, 2.0]])
    assert times.tolist() == [0.5]
    msg.joint_names = ['b', 'elbow']
    with pytest.raises(ValueError, match=r"unknown \['elbow'\], missing \['a'\]"):
        trajectory_by_name(msg, ['a', 'b'])
    msg = make_joint_trajectory(['a', 'b'], [1.0, 2.0], 0.5)
    msg.points = [msg.points[0], copy.deepcopy(msg.points[0])]  # both at 0.5 s
    with pytest.raises(ValueError, match=r'time_from_start must increase .*\[0.5, 0.5\]'):
        trajectory_by_name(msg, ['a', 'b'])


def make_cloud(fields, rows, point_step, height=1, row_step=None, pad=0):
    """A PointCloud2 built by hand: ``fields`` (name, offset, datatype), ``rows`` of values."""
    from sensor_msgs.msg import PointCloud2, PointField

    codes = {2: 'u1', 4: 'u2', 7: 'f4', 8: 'f8'}
    width = len(rows) // height
    row_step = width * point_step + pad if row_step is None else row_step
    data = bytearray(height * row_step)
    for i, row in enumerate(rows):
        base = (i // width) * row_step + (i % width) * point_step
        for (name, offset, code), value in zip(fields, row):
            cell = np.array([value], dtype='<' + codes[code]).tobytes()
            data[base + offset:base + offset + len(cell)] = cell
    return PointCloud2(height=height, width=width, point_step=point_step, row_step=row_step,
                       is_bigendian=False, is_dense=False, data=bytes(data),
                       fields=[PointField(name=n, offset=o, datatype=c, count=1)
                               for n, o, c in fields])


LIDAR = [('x', 0, 7), ('y', 4, 7), ('z', 8, 7), ('intensity', 12, 7), ('ring', 16, 4)]


def test_pointcloud_centroid_and_first_points_of_a_mixed_type_lidar_cloud():
    from energyflow_ros.nodes.messages import pointcloud_values

    rows = [(1.0, 2.0, 3.0, 9.0, 1), (3.0, 4.0, 5.0, 9.0, 2), (float('nan'), 0.0, 0.0, 0.0, 3)]
    cloud = make_cloud(LIDAR, rows, point_step=18)  # float32 x/y/z/intensity + uint16 ring
    np.testing.assert_allclose(pointcloud_values(cloud, ['x', 'y', 'z'], 0), [2.0, 3.0, 4.0])
    np.testing.assert_allclose(pointcloud_values(cloud, ['x', 'y'], 2), [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(pointcloud_values(cloud, ['ring'], 0), [2.0])
    with pytest.raises(ValueError, match='need 3'):
        pointcloud_values(cloud, ['x'], 3)
    with pytest.raises(ValueError, match="lacks fields \\['rgb'\\]"):
        pointcloud_values(cloud, ['rgb'], 0)
    # organised 2 x 2 with 6 padding bytes per row: the padding is skipped
    organised = make_cloud(LIDAR, rows[:2] * 2, point_step=18, height=2, pad=6)
    np.testing.assert_allclose(pointcloud_values(organised, ['x', 'y', 'z'], 4),
                               [1, 2, 3, 3, 4, 5, 1, 2, 3, 3, 4, 5])


@pytest.mark.parametrize('change, match', [
    ({'data': bytes(20)}, 'data holds 20 bytes, height 1 x row_step 54 = 54 expected'),
    ({'row_step': 30}, 'row_step 30 is shorter than width 3 x point_step 18'),
    ({'point_step': 14}, "field 'ring' \\(offset 16, 2 bytes\\) lies outside the 14-byte point"),
    ({'fields': 'unknown type'}, "field 'x' has unknown datatype 42"),
])
def test_a_malformed_pointcloud_is_a_value_error_naming_the_problem(change, match):
    from sensor_msgs.msg import PointField

    from energyflow_ros.nodes.messages import pointcloud_values

    cloud = make_cloud(LIDAR, [(1.0, 2.0, 3.0, 0.0, 1)] * 3, point_step=18)
    for key, value in change.items():
        if key == 'fields':
            value = [PointField(name='x', offset=0, datatype=42, count=1)]
        if key == 'point_step':
            cloud.row_step = 0
        setattr(cloud, key, value)
    with pytest.raises(ValueError, match=match):
        pointcloud_values(cloud, ['x', 'ring'] if key == 'point_step' else ['x'], 0)


def test_a_nan_orientation_gives_nan_angles_not_a_finite_pitch():
    from energyflow_ros.nodes.messages import make_pose_stamped, pose_values, sec_to_stamp

    msg = make_pose_stamped(0.1, 0.2, 0.3, sec_to_stamp(1.0))
    msg.pose.orientation.y = float('nan')
    values = pose_values(msg, ['x', 'roll', 'pitch'])
    assert values[0] == pytest.approx(0.1) and np.isnan(values[1:]).all()


def test_a_model_whose_warm_up_plan_is_not_finite_is_refused(monkeypatch):
    import dataclasses

    from energyflow_ros.nodes import model_loader
    from energyflow_ros.nodes.model_loader import ConfigError, load_policy_model

    params = {'model_path': tiny_model(), 'provider.device': 'cpu', 'provider.device_id': 0,
              'provider.intra_op_threads': 1, 'provider.allow_spinning': False,
              'provider.cuda_graphs': False, 'provider.trt_fp16': False,
              'sampler.n_particles': 0, 'sampler.warm_start': True,
              'sampler.warm_extrapolation': 0.5, 'seed': 0}
    assert load_policy_model(params).metadata.joint_names  # loads while the plan is finite
    original = model_loader.ChunkPlanner.plan

    def nan_plan(self, obs, **kwargs):
        plan = original(self, obs, **kwargs)
        return dataclasses.replace(plan, actions=np.full_like(plan.actions, np.nan))
    monkeypatch.setattr(model_loader.ChunkPlanner, 'plan', nan_plan)
    with pytest.raises(ConfigError, match='warm-up plan .* holds non-finite values'):
        load_policy_model(params)


class InProcessNode:
    """A policy node in this process on simulated time, ticked and planned by hand.

    Commands are collected in :attr:`cmds` instead of being published (None: nothing sent).
    """

    def __init__(self, **overrides):
        import rclpy
        from rclpy.parameter import Parameter

        from energyflow_ros.nodes.policy_node import PolicyNode

        params = flat_params(policy_params(tiny_model(), autostart=False, freeze_gc=False,
                                           **overrides))
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id(__name__ + '.in_process'))
        self.node = PolicyNode(context=self.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()] + [
            Parameter('use_sim_time', value=True)])
        self.t = 100.0
        self.at(self.t)
        self.cmds = []

    def activate(self):
        node = self.node
        node.trigger_configure()
        node._worker._run = lambda stop: stop.wait()  # an idle thread: planned in run()
        node._worker._poll_s = 0.0
        node._publish = self.cmds.append
        node.trigger_activate()
        return node._loaded.metadata

    def at(self, t):
        from rclpy.time import Time

        self.t = t
        self.node.get_clock().set_ros_time_override(Time(nanoseconds=int(round(t * 1e9))))

    def run(self, ticks, joints=(0.5, 0.5)):
        """``ticks`` control periods: joint state and goal pose, planning when due, a tick."""
        from energyflow_ros.nodes.messages import (make_joint_state, make_pose_stamped,
                                                   sec_to_stamp)
        node = self.node
        joint_stream, goal_stream = node._inputs.streams[:2]
        for _ in range(ticks):
            self.at(self.t + 1.0 / RATE_HZ)
            stamp = sec_to_stamp(self.t)
            node._inputs._on_joint_state(joint_stream, make_joint_state(
                ('robot_x', 'robot_y'), list(joints), stamp))
            node._inputs._on_pose(goal_stream, make_pose_stamped(0.9, 0.5, 0.0, stamp))
            if node._worker.due(self.t):
                node._worker.plan_once()
            node._tick()

    def close(self):
        import rclpy

        if self.node._worker is not None:
            self.node._worker.stop()  # the idle planning thread
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_a_sampler_that_never_plans_is_reported_as_an_error_naming_why():
    with InProcessNode() as harness:
        node, horizon = harness.node, harness.activate().horizon
        node._worker.plan_fn = lambda obs, shift: (np.full((horizon, 2), np.nan), 0.0)
        harness.run(10)
        level, message = node._level()
        assert level == 'error', message
        assert 'measured position: the sampler failed 10 times since the last plan' in message
        assert 'non-finite' in message
        np.testing.assert_allclose(harness.cmds[-1], [0.5, 0.5])  # held where it is
        # one good plan, then failures: at its end the node rests on its final target
        good = iter([(np.full((horizon, 2), 0.55), 0.0)])
        node._worker.plan_fn = lambda obs, shift: next(
            good, (np.full((horizon, 2), np.nan), 0.0))
        harness.run(2)
        assert node._worker.stats.plans == 1 and node._level()[0] != 'error'
        harness.run(int(RATE_HZ * 1.5 * horizon * node._loaded.metadata.control_period_s))
        level, message = node._level()
        assert level == 'error' and "last plan's final target: the sampler failed" in message


def test_an_arm_far_outside_its_limits_gets_no_command_and_an_error_naming_the_joint():
    with InProcessNode(joint_lower=[0.8, 0.0]) as harness:  # the arm is measured at x = 0.5
        harness.activate()
        harness.run(5)
        assert harness.cmds and all(cmd is None for cmd in harness.cmds)  # nothing sent
        level, message = harness.node._level()
        assert level == 'error' and 'robot_x at 0.5 (limits [0.8, 1])' in message, message
        sent = len(harness.cmds)
        harness.run(5, joints=(0.795, 0.5))  # back within one step of the limit
        resumed = [cmd for cmd in harness.cmds[sent:] if cmd is not None]
        assert resumed and resumed[0][0] == pytest.approx(0.8, abs=0.012)  # eased in from it
        assert 'outside the limits' not in harness.node._level()[1]


def test_after_the_clock_goes_back_the_old_plan_is_dropped_and_planning_resumes():
    with InProcessNode() as harness:
        node = harness.node
        harness.activate()
        harness.run(10)
        plans = node._worker.stats.plans
        assert plans and harness.cmds[-1] is not None
        harness.at(1.0)  # a simulator reset: ROS time 100 s -> 1 s
        harness.run(20)
        assert node._worker.stats.plans > plans  # planned again on the new timeline
        assert node.queue.current.start_time < 5.0  # a plan of the new timeline
        assert node._level() == ('ok', 'running')


def test_statistics_count_from_each_activation():
    with InProcessNode() as harness:
        node = harness.node
        harness.activate()
        harness.run(10)
        assert node._worker.stats.plans > 0 and node.ticks > 0
        node.trigger_deactivate()
        node.trigger_activate()       # what ros_loop does to measure without the warm-up
        assert node._worker.stats.plans == 0 and node.ticks == 0
        harness.run(10)
        assert node._worker.stats.plans > 0


def test_a_stopped_planning_thread_holds_the_arm_and_says_so():
    with InProcessNode() as harness:
        node = harness.node
        harness.activate()
        harness.run(5)
        assert node._worker.stop()  # as if the thread had died
        harness.run(3)
        level, message = node._level()
        assert level == 'error' and 'planning thread has stopped' in message, message
        np.testing.assert_allclose(harness.cmds[-1], [0.5, 0.5])  # the measured position
