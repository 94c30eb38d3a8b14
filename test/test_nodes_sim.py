"""sim_node over real DDS: state publication, both command interfaces, rejection, episodes."""

import json
import math
import subprocess
import sys
import time

from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Empty, Float64MultiArray, MultiArrayDimension, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from energyflow_ros.nodes.params import latched_qos
from test.ros_helpers import domain_id, NodeProcess, Probe, REPO, ros_env, wait_until

DOMAIN = domain_id(__name__)
FORWARD = '/forward_position_controller/commands'
TRAJECTORY = '/joint_trajectory_controller/joint_trajectory'


@pytest.fixture(scope='module')
def probe():
    probe = Probe(DOMAIN, 'sim_probe')
    yield probe
    probe.close()


@pytest.fixture(scope='module')
def sim(probe, tmp_path_factory):
    params = {'task': 'obstacles2d', 'seed': 3, 'publish_rate_hz': 20.0, 'reset_pause_s': 0.0,
              'max_steps': 1000}
    node = NodeProcess('sim_node', params, DOMAIN, str(tmp_path_factory.mktemp('sim')))
    rec = {'joints': probe.record(JointState, '/joint_states'),
           'pose': probe.record(PoseStamped, '/task/object_pose'),
           'status': probe.record(String, '/task/status')}
    assert wait_until(lambda: len(rec['joints']) > 3 and len(rec['status']) > 0, 30), node.log()
    yield node, rec
    assert node.interrupt() == 0, node.log()


def status(rec):
    return json.loads(rec['status'].last().data)


def joints(rec):
    msg = rec['joints'].last()
    return dict(zip(msg.name, msg.position))


def send_until(probe, pub, msg, done, timeout=8.0):
    """Publish ``msg`` at 20 Hz until ``done()``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pub.publish(msg)
        if done():
            return True
        time.sleep(0.05)
    return done()


def test_publishes_joint_states_by_name_pose_and_status(sim):
    node, rec = sim
    msg = rec['joints'].last()
    assert list(msg.name) == ['robot_x', 'robot_y'] and len(msg.position) == 2
    assert msg.header.stamp.sec > 0
    pose = rec['pose'].last()
    st = status(rec)
    assert st['task'] == 'obstacles2d' and st['seed'] == 3 and st['episode'] == 0
    assert 0.88 <= pose.pose.position.x <= 0.95  # the goal of obstacles2d
    assert pose.pose.orientation.w == pytest.approx(1.0)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
              for m in rec['joints'].since(0.0)[-10:]]
    assert 0.03 < np.median(np.diff(stamps)) < 0.08  # publish_rate_hz 20 (faster than 10)


def test_forward_command_moves_the_robot_and_is_clamped(sim, probe):
    node, rec = sim
    pub = probe.publisher(Float64MultiArray, FORWARD)
    msg = Float64MultiArray(data=[0.3, 1.7])  # y beyond the upper limit 1.0
    assert send_until(probe, pub, msg, lambda: abs(joints(rec)['robot_x'] - 0.3) < 1e-6
                      and abs(joints(rec)['robot_y'] - 1.0) < 1e-6), joints(rec)
    assert status(rec)['step'] > 0


def test_bad_forward_commands_are_rejected_and_the_target_kept(sim, probe):
    node, rec = sim
    pub = probe.publisher(Float64MultiArray, FORWARD)
    assert send_until(probe, pub, Float64MultiArray(data=[0.2, 0.2]),
                      lambda: abs(joints(rec)['robot_x'] - 0.2) < 1e-6)
    before = status(rec)['commands_rejected']
    for bad in ([0.9, math.nan], [0.9], [0.9, 0.9, 0.9], [math.inf, 0.5]):
        for _ in range(5):
            pub.publish(Float64MultiArray(data=bad))
            time.sleep(0.03)
    time.sleep(0.4)
    assert status(rec)['commands_rejected'] >= before + 4
    q = joints(rec)
    assert q['robot_x'] == pytest.approx(0.2) and q['robot_y'] == pytest.approx(0.2)
    assert node.alive() and 'forward command rejected' in node.log()


def test_forward_command_honours_the_data_offset(sim, probe):
    node, rec = sim
    pub = probe.publisher(Float64MultiArray, FORWARD)
    msg = Float64MultiArray(data=[99.0, 0.4, 0.45])
    msg.layout.data_offset = 1
    msg.layout.dim = [MultiArrayDimension(label='joints', size=2, stride=2)]
    assert send_until(probe, pub, msg, lambda: abs(joints(rec)['robot_x'] - 0.4) < 1e-6)


def test_trajectory_matches_joints_by_name(sim, probe):
    node, rec = sim
    pub = probe.publisher(JointTrajectory, TRAJECTORY)
    msg = JointTrajectory(joint_names=['robot_y', 'robot_x'])  # reordered on purpose
    msg.points = [JointTrajectoryPoint(positions=[0.65, 0.55])]
    assert send_until(probe, pub, msg, lambda: abs(joints(rec)['robot_x'] - 0.55) < 1e-6
                      and abs(joints(rec)['robot_y'] - 0.65) < 1e-6), joints(rec)


def test_trajectory_with_unknown_joints_is_rejected(sim, probe):
    node, rec = sim
    pub = probe.publisher(JointTrajectory, TRAJECTORY)
    good = JointTrajectory(joint_names=['robot_x', 'robot_y'])
    good.points = [JointTrajectoryPoint(positions=[0.5, 0.5])]
    assert send_until(probe, pub, good, lambda: abs(joints(rec)['robot_x'] - 0.5) < 1e-6)
    bad = JointTrajectory(joint_names=['robot_x', 'elbow'])
    bad.points = [JointTrajectoryPoint(positions=[0.9, 0.9])]
    for _ in range(5):
        pub.publish(bad)
        time.sleep(0.05)
    time.sleep(0.3)
    assert joints(rec)['robot_x'] == pytest.approx(0.5)
    assert 'trajectory rejected' in node.log() and "'elbow'" in node.log()


def test_reset_topic_starts_the_next_episode_with_the_next_seed(sim, probe):
    node, rec = sim
    episode = status(rec)['episode']
    pub = probe.publisher(Empty, '/sim_node/reset')
    assert send_until(probe, pub, Empty(), lambda: status(rec)['episode'] > episode
                      or status(rec)['seed'] == 3 + episode + 1, timeout=5.0)


def test_finished_episodes_are_reported_and_the_limit_stops_the_sim(probe, tmp_path):
    # a second sim on its own topics: 2 episodes of 3 ticks each
    params = {'task': 'obstacles2d', 'episodes': 2, 'max_steps': 3, 'reset_pause_s': 0.0,
              'status_topic': '/short/status', 'episodes_topic': '/short/episodes',
              'joint_states_topic': '/short/joint_states', 'pose_topic': '/short/pose',
              'forward_command_topic': '/short/cmd', 'trajectory_topic': '/short/traj'}
    node = NodeProcess('sim_node', params, DOMAIN, str(tmp_path), node_name='short_sim')
    try:
        status_rec = probe.record(String, '/short/status')
        assert wait_until(lambda: len(status_rec) and json.loads(
            status_rec.last().data)['finished'], 30), node.log()
        qos = latched_qos()
        qos.depth = 100
        late = probe.record(String, '/short/episodes', qos)  # subscribes after the fact
        assert wait_until(lambda: len(late) == 2, 10), node.log()
        summaries = [json.loads(m.data) for m in late.since(0.0)]
        assert [s['seed'] for s in summaries] == [0, 1]
        assert all(s['done'] and s['step'] == 3 for s in summaries)
        assert 'path_cost' in summaries[0]['metrics']
        # a reset after the limit runs one more episode, then holds again
        pub = probe.publisher(Empty, '/short_sim/reset')
        assert wait_until(lambda: pub.get_subscription_count() > 0, 10)
        pub.publish(Empty())   # once: each reset abandons the episode it interrupts
        assert wait_until(lambda: len(late) == 3, 10), node.log()
        assert json.loads(late.last().data)['seed'] == 2
        assert wait_until(lambda: json.loads(status_rec.last().data)['finished'], 10)
        time.sleep(0.5)
        assert len(late) == 3
    finally:
        assert node.interrupt() == 0


def test_wait_for_commands_holds_the_first_episode_until_a_commander_connects(probe, tmp_path):
    params = {'task': 'obstacles2d', 'seed': 4, 'max_steps': 5, 'reset_pause_s': 0.0,
              'wait_for_commands': True, 'status_topic': '/wait/status',
              'episodes_topic': '/wait/episodes', 'joint_states_topic': '/wait/joint_states',
              'pose_topic': '/wait/pose', 'forward_command_topic': '/wait/cmd',
              'trajectory_topic': '/wait/traj'}
    node = NodeProcess('sim_node', params, DOMAIN, str(tmp_path), node_name='wait_sim')
    try:
        status_rec = probe.record(String, '/wait/status')
        states = probe.record(JointState, '/wait/joint_states')
        assert wait_until(lambda: len(status_rec) > 10, 30), node.log()
        time.sleep(1.0)  # 10 control periods: a sim that did not wait would have stepped
        held = [json.loads(m.data) for m in status_rec.since(0.0)]
        assert all(s['step'] == 0 and s['episode'] == 0 for s in held), held[-1]
        assert 'holding episode 0 until a publisher on /wait/cmd' in node.log()
        probe.publisher(Float64MultiArray, '/wait/cmd')
        assert wait_until(lambda: json.loads(status_rec.last().data)['step'] > 0
                          or json.loads(status_rec.last().data)['episode'] > 0, 10), node.log()
        assert 'a command publisher is connected: starting' in node.log()
        # a step's status names the header stamp of the state that step published
        time.sleep(0.3)
        stepped = [s for s in (json.loads(m.data) for m in status_rec.since(0.0))
                   if s['step'] > 0]
        stamps = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
                  for m in states.since(0.0)}
        assert stepped and all(s['state_stamp_ns'] in stamps for s in stepped), stepped
    finally:
        assert node.interrupt() == 0


def test_pusht_pose_carries_the_block_angle(probe, tmp_path):
    pytest.importorskip('gym_pusht', reason='gym-pusht is not installed')
    params = {'task': 'pusht', 'seed': 1, 'reset_pause_s': 60.0,  # never steps: obs = reset
              'joint_states_topic': '/pusht/joint_states',
              'pose_topic': '/pusht/pose', 'status_topic': '/pusht/status',
              'forward_command_topic': '/pusht/cmd', 'trajectory_topic': '/pusht/traj'}
    node = NodeProcess('sim_node', params, DOMAIN, str(tmp_path), node_name='pusht_sim')
    try:
        poses = probe.record(PoseStamped, '/pusht/pose')
        states = probe.record(JointState, '/pusht/joint_states')
        assert wait_until(lambda: len(poses) > 2 and len(states) > 2, 30), node.log()
        from energyflow_ros.sim.pusht import PushTTask
        task = PushTTask()
        obs = task.reset(1)
        task.close()
        pose, joint = poses.last().pose, states.last()
        assert list(joint.name) == ['agent_x', 'agent_y']
        np.testing.assert_allclose(joint.position, obs[:2], atol=1e-6)
        yaw = 2 * math.atan2(pose.orientation.z, pose.orientation.w)
        assert [pose.position.x, pose.position.y] == pytest.approx(obs[2:4])
        assert [math.cos(yaw), math.sin(yaw)] == pytest.approx(obs[4:6], abs=1e-9)
    finally:
        assert node.interrupt() == 0


@pytest.mark.parametrize('params, match', [
    ({'joint_lower': [0.5]}, r'joint_lower = \[0.5\] is invalid: expected 2 finite values'),
    ({'joint_upper': [1.0, float('nan')]}, 'joint_upper .* expected 2 finite values'),
    ({'joint_lower': [0.8, 0.0], 'joint_upper': [0.2, 1.0]}, 'exceeds joint_upper'),
    ({'pose_obs_names': ['goal_x', 'goal_z']}, r"\['goal_z'\] are not observations"),
    ({'task': 'blockpush'}, 'observes no position of its joints'),
])
def test_bad_parameters_name_what_is_wrong(params, match):
    import rclpy
    from rclpy.parameter import Parameter

    from energyflow_ros.nodes.sim_node import SimNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(__name__ + '.in_process'))
    try:
        with pytest.raises(ValueError, match=match):
            SimNode(context=context, parameter_overrides=[
                Parameter(k, value=v) for k, v in params.items()])
    finally:
        rclpy.shutdown(context=context)


def test_an_out_of_range_parameter_exits_2_with_one_message():
    proc = subprocess.run([sys.executable, '-m', 'energyflow_ros.nodes.sim_node', '--ros-args',
                           '-p', 'time_scale:=50.0'], cwd=REPO,
                          env=ros_env(domain_id(__name__ + '.range')), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert 'time_scale' in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
