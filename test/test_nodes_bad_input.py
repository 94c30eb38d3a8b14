"""policy_node under bad input: every case is its own test.

For each: no unsafe command is ever published (finite, inside the joint limits, every step
rate-limited or a hold at the last valid measured pose), the node logs a clear line, its
diagnostics go to ERROR naming the problem, and it stays alive. Observations come from the
test (:class:`FakeRobot` for joint states; the goal as a Float64MultiArray stream, so wrong
array lengths can be sent). Configuration failures (missing or corrupt model file, joints that
do not match the model) run in a second, unconfigured node driven through its services.
"""

import math
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
import numpy as np
import pytest
from rclpy.parameter import Parameter
from std_msgs.msg import Float64MultiArray

from test.ros_helpers import domain_id, FakeRobot, NodeProcess, Probe, tiny_model, wait_until
from test.test_nodes_policy import assert_safe, commands_since, policy_params

DOMAIN = domain_id(__name__)
FORWARD = '/forward_position_controller/commands'
MEASURED = np.array([0.3, 0.6])


class GoalSource:
    """Publishes the goal as Float64MultiArray at 50 Hz; ``values`` may be swapped for bad ones."""

    def __init__(self, probe):
        self.pub = probe.publisher(Float64MultiArray, '/task/goal')
        self.values = [0.9, 0.5]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.pub.publish(Float64MultiArray(data=list(self.values)))
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join(2)


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    probe = Probe(DOMAIN, 'bad_input_probe')
    robot = FakeRobot(probe, {'robot_x': MEASURED[0], 'robot_y': MEASURED[1]})
    goal = GoalSource(probe)
    params = policy_params(tiny_model())
    params['observation']['streams'] = ['goal']
    params['observation']['goal'] = {'type': 'array', 'topic': '/task/goal',
                                     'obs_names': ['goal_x', 'goal_y'], 'max_age_s': 0.1,
                                     'stamp_source': 'receive'}
    del params['observation']['object_pose']
    node = NodeProcess('policy_node', params, DOMAIN, str(tmp_path_factory.mktemp('bad')))
    rec = {'cmd': probe.record(Float64MultiArray, FORWARD),
           'diag': probe.record(DiagnosticArray, '/diagnostics')}
    assert wait_until(lambda: len(rec['cmd']) > 20, 40), node.log()
    yield probe, robot, goal, node, rec
    assert node.interrupt() == 0, node.log()
    goal.stop()
    robot.stop()
    probe.close()


def inject(rig, bad, duration=0.8):
    """Run ``bad(robot, goal)`` (it installs the fault), wait, restore; returns the start time."""
    probe, robot, goal, node, rec = rig
    robot.order, robot.override = ['robot_x', 'robot_y'], None
    time.sleep(0.3)
    t0 = time.monotonic()
    try:
        bad(robot, goal)
        time.sleep(duration)
    finally:
        robot.override, goal.values = None, [0.9, 0.5]
        robot.order = ['robot_x', 'robot_y']
    return t0


def check_rejected(rig, t0, text):
    """The common assertions: safe commands, a log line, a diagnostics ERROR, alive."""
    probe, robot, goal, node, rec = rig
    assert_safe(rec, t0 - 0.3, MEASURED)
    assert node.wait_for_log(text, 5), node.log()[-2000:]
    errors = [m.status[0] for m in rec['diag'].since(t0)
              if m.status[0].hardware_id == 'policy_node'
              and m.status[0].level == DiagnosticStatus.ERROR]
    assert any(text in s.message for s in errors), [s.message for s in errors]
    assert node.alive()
    t1 = time.monotonic()
    assert wait_until(lambda: len(commands_since(rec, t1)) > 5, 3)


def test_nan_joint_positions_hold_the_last_valid_measurement(rig):
    def bad(robot, goal):
        robot.override = lambda joint, pose: joint.position.__setitem__(0, math.nan)
    t0 = inject(rig, bad)
    held = commands_since(rig[4], t0 + 0.3)[:10]
    assert len(held) >= 5, 'the node went silent instead of holding'
    np.testing.assert_array_equal(held, np.tile(MEASURED, (len(held), 1)))
    check_rejected(rig, t0, 'non-finite joint positions')


def test_inf_in_an_observation_stream(rig):
    def bad(robot, goal):
        goal.values = [math.inf, 0.5]
    check_rejected(rig, inject(rig, bad), 'non-finite values')


def test_unknown_joint_names(rig):
    def bad(robot, goal):
        robot.override = lambda joint, pose: setattr(joint, 'name', ['arm_1', 'arm_2'])
    check_rejected(rig, inject(rig, bad), "lacks joints ['robot_x', 'robot_y']")


def test_missing_joint(rig):
    def bad(robot, goal):
        def drop_y(joint, pose):
            joint.name, joint.position = ['robot_x'], [MEASURED[0]]
        robot.override = drop_y
    check_rejected(rig, inject(rig, bad), "lacks joints ['robot_y']")


def test_reordered_joints_still_work(rig):
    probe, robot, goal, node, rec = rig
    before = {}

    def input_errors(since):
        msgs = [m.status[0] for m in rec['diag'].since(since)
                if m.status[0].hardware_id == 'policy_node']
        return int({kv.key: kv.value for kv in msgs[-1].values}['input_errors'])

    def bad(robot, goal):
        before['errors'] = input_errors(time.monotonic() - 0.25)
        robot.order = ['robot_y', 'robot_x']
    t0 = inject(rig, bad)
    assert input_errors(t0 + 0.3) == before['errors']
    assert len(assert_safe(rec, t0, MEASURED)) > 20


def test_wrong_array_length(rig):
    def bad(robot, goal):
        goal.values = [0.9, 0.5, 0.1]
    check_rejected(rig, inject(rig, bad), 'holds 3 values, expected 2')


def test_out_of_order_stamps(rig):
    def bad(robot, goal):
        def older(joint, pose):
            joint.header.stamp.sec -= 1
        robot.override = older
    check_rejected(rig, inject(rig, bad), 'out of order')


# ---------------------------------------------------------------- configuration failures
@pytest.fixture(scope='module')
def unconfigured(rig, tmp_path_factory):
    probe = rig[0]
    params = policy_params(tiny_model(), autostart=False, forward_command_topic='/cfg/cmd')
    node = NodeProcess('policy_node', params, DOMAIN, str(tmp_path_factory.mktemp('cfg')),
                       node_name='cfg_policy')
    cmds = probe.record(Float64MultiArray, '/cfg/cmd')
    # a loaded 2-core machine can take a while to import and start the node
    ready = probe.call(GetState, '/cfg_policy/get_state', GetState.Request(), timeout=30,
                       attempts=3)
    assert ready is not None, node.log()
    yield probe, node, cmds
    assert node.interrupt() == 0, node.log()


def configure_with(unconfigured, **params):
    probe, node, cmds = unconfigured
    request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                for k, v in params.items()])
    response = probe.call(SetParameters, '/cfg_policy/set_parameters', request, attempts=3)
    assert response is not None and all(r.successful for r in response.results)
    diag = probe.record(DiagnosticArray, '/diagnostics')
    change = ChangeState.Request()
    change.transition.id = Transition.TRANSITION_CONFIGURE
    result = probe.call(ChangeState, '/cfg_policy/change_state', change, timeout=30)
    state = probe.call(GetState, '/cfg_policy/get_state', GetState.Request(), attempts=3)
    assert wait_until(lambda: any(m.status[0].hardware_id == 'cfg_policy' and
                                  m.status[0].level == DiagnosticStatus.ERROR
                                  for m in diag.since(0.0)), 5)
    errors = [m.status[0].message for m in diag.since(0.0)
              if m.status[0].hardware_id == 'cfg_policy'
              and m.status[0].level == DiagnosticStatus.ERROR]
    return result, state.current_state.label, errors


def check_config_failure(unconfigured, result, label, errors, text):
    probe, node, cmds = unconfigured
    assert result is not None and not result.success
    assert label == 'unconfigured' and node.alive()
    assert any(text in e for e in errors), errors
    assert node.wait_for_log(text, 5)
    assert 'configure failed' in node.log()
    assert len(cmds) == 0  # never commanded anything


def test_missing_model_file(unconfigured, tmp_path):
    path = str(tmp_path / 'nowhere.onnx')
    out = configure_with(unconfigured, model_path=path)
    check_config_failure(unconfigured, *out, f'model file not found: {path}')


def test_corrupt_model_file(unconfigured, tmp_path):
    path = tmp_path / 'corrupt.onnx'
    path.write_bytes(b'\x08\x07 this is not a protobuf' * 50)
    out = configure_with(unconfigured, model_path=str(path))
    check_config_failure(unconfigured, *out, 'not an ONNX model')


def test_model_joint_mismatch(unconfigured):
    out = configure_with(unconfigured, model_path=tiny_model(),
                         joint_names=['robot_x', 'elbow'])
    check_config_failure(unconfigured, *out, "['robot_x', 'elbow']")
    assert "['robot_x', 'robot_y']" in out[2][-1]  # both sides are named


def test_max_velocity_must_be_positive(unconfigured):
    for velocity in ([-0.6], [0.6, 0.0]):
        out = configure_with(unconfigured, model_path=tiny_model(),
                             joint_names=['robot_x', 'robot_y'], max_velocity=velocity)
        check_config_failure(unconfigured, *out, f'max_velocity {velocity} is invalid')
