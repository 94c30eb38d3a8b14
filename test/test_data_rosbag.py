"""rosbag2 reader: small MCAP and sqlite3 bags written here with the rosbags writer (no ROS)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from energyflow_ros.data.align import align_asof, align_hold, marker_segments, summarize
from energyflow_ros.data.bag_config import BagSpec, BagSpecError, load_bag_spec
from energyflow_ros.data.dataset import DemoError
from energyflow_ros.data.rosbag import read_rosbag

TS = get_typestore(Stores.ROS2_KILTED)
NS = 1_000_000_000
T0 = 1_700_000_000 * NS
JOINTS = ['shoulder', 'elbow', 'wrist']
JS, F64 = 'sensor_msgs/msg/JointState', 'std_msgs/msg/Float64MultiArray'
TRAJ, POSE, BOOL = ('trajectory_msgs/msg/JointTrajectory', 'geometry_msgs/msg/PoseStamped',
                    'std_msgs/msg/Bool')


def header(ns: int) -> Any:
    stamp = TS.types['builtin_interfaces/msg/Time'](sec=ns // NS, nanosec=ns % NS)
    return TS.types['std_msgs/msg/Header'](stamp=stamp, frame_id='base')


def joint_state(ns: int, names: list[str], pos: list[float]) -> Any:
    return TS.types[JS](header=header(ns), name=list(names), position=np.array(pos, float),
                        velocity=np.array([0.1 * p for p in pos]), effort=np.array([]))


def multi_array(values: list[float]) -> Any:
    layout = TS.types['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)
    return TS.types[F64](layout=layout, data=np.array(values, float))


def trajectory(names: list[str], pos: list[float]) -> Any:
    duration = TS.types['builtin_interfaces/msg/Duration'](sec=0, nanosec=0)
    point = TS.types['trajectory_msgs/msg/JointTrajectoryPoint'](
        positions=np.array(pos, float), velocities=np.array([]), accelerations=np.array([]),
        effort=np.array([]), time_from_start=duration)
    return TS.types[TRAJ](header=header(0), joint_names=list(names), points=[point])


def pose(ns: int, k: float) -> Any:
    g = 'geometry_msgs/msg/'
    p = TS.types[g + 'Pose'](position=TS.types[g + 'Point'](x=k, y=2 * k, z=0.5),
                             orientation=TS.types[g + 'Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0))
    return TS.types[POSE](header=header(ns), pose=p)


def write_bag(path: Path, messages: list[tuple[str, str, int, Any]],
              storage: str = 'mcap') -> Path:
    """Write (topic, type, receive ns, message) tuples; topics registered in first-seen order."""
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns: dict[str, Any] = {}
        for topic, msg_type, ns, msg in sorted(messages, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msg_type, typestore=TS)
            writer.write(conns[topic], ns, TS.serialize_cdr(msg, msg_type))
    return path


def arm_messages(n: int = 20, dt: float = 0.1, gap_after: int | None = None,
                 shuffle_names: bool = False, nan_obs_at: int | None = None,
                 nan_action_at: int | None = None) -> list[tuple[str, str, int, Any]]:
    """Joint states every dt with a command 10 ms later; an optional 5 s gap after a step."""
    msgs, rng = [], np.random.default_rng(0)
    for i in range(n):
        t = T0 + int(i * dt * NS) + (5 * NS if gap_after is not None and i > gap_after else 0)
        pos = [math.sin(0.3 * i), math.cos(0.2 * i), 0.01 * i]
        if nan_obs_at == i:
            pos[1] = float('nan')
        order = rng.permutation(3) if shuffle_names else np.arange(3)
        msgs.append(('/joint_states', JS, t + 2_000_000,
                     joint_state(t, [JOINTS[k] for k in order], [pos[k] for k in order])))
        cmd = [p + 0.05 for p in pos] if nan_obs_at != i else [0.0, 0.0, 0.0]
        if nan_action_at == i:
            cmd[2] = float('inf')
        msgs.append(('/commands', F64, t + 10_000_000, multi_array(cmd)))
    return msgs


SPEC = {
    'observations': [{'topic': '/joint_states', 'type': 'sensor_msgs/msg/JointState',
                      'joints': JOINTS, 'fields': ['position', 'velocity'],
                      'stamp': 'header', 'max_age_s': 0.05}],
    'action': {'topic': '/commands', 'type': 'std_msgs/msg/Float64MultiArray',
               'joints': JOINTS},
    'episodes': {'gap_s': 1.0},
}


def test_mcap_and_sqlite3_give_identical_arrays(tmp_path: Path) -> None:
    msgs = arm_messages()
    a, rep_a = read_rosbag(write_bag(tmp_path / 'm', msgs, 'mcap'), SPEC)
    b, rep_b = read_rosbag(write_bag(tmp_path / 's', msgs, 'sqlite3'), SPEC)
    for name in ('obs', 'actions', 'episode_ends'):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.obs.shape == (20, 6) and a.actions.shape == (20, 3)
    assert a.obs_names[:2] == ['/joint_states/shoulder/position',
                               '/joint_states/shoulder/velocity']
    assert a.action_names == JOINTS
    assert rep_a.dropped == rep_b.dropped == {}
    assert a.meta['rate_hz'] == pytest.approx(10.0)
    np.testing.assert_allclose(a.obs[:, 0], np.sin(0.3 * np.arange(20)))
    np.testing.assert_allclose(a.actions[:, 1], np.cos(0.2 * np.arange(20)) + 0.05)


def test_single_storage_file_is_read(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / 'm', arm_messages(), 'mcap')
    demos, _ = read_rosbag(next(bag.glob('*.mcap')), SPEC)
    assert len(demos.obs) == 20


def test_missing_topic_is_named(tmp_path: Path) -> None:
    msgs = [m for m in arm_messages() if m[0] != '/commands']
    bag = write_bag(tmp_path / 'b', msgs)
    with pytest.raises(DemoError, match=r"action topic '/commands' is not in the bag") as err:
        read_rosbag(bag, SPEC)
    assert str(bag) in str(err.value)


def test_missing_joint_is_named(tmp_path: Path) -> None:
    msgs = arm_messages(n=5)
    msgs[4] = ('/joint_states', JS, msgs[4][2], joint_state(T0, ['shoulder', 'wrist'], [0, 0]))
    with pytest.raises(DemoError, match=r"/joint_states at .*joint 'elbow' is missing"):
        read_rosbag(write_bag(tmp_path / 'b', msgs), SPEC)


def test_reordered_joint_names_match_ordered(tmp_path: Path) -> None:
    ordered, _ = read_rosbag(write_bag(tmp_path / 'a', arm_messages()), SPEC)
    shuffled, _ = read_rosbag(write_bag(tmp_path / 'b', arm_messages(shuffle_names=True)), SPEC)
    np.testing.assert_array_equal(ordered.obs, shuffled.obs)
    np.testing.assert_array_equal(ordered.actions, shuffled.actions)


def test_time_gap_starts_new_episode(tmp_path: Path) -> None:
    demos, report = read_rosbag(write_bag(tmp_path / 'b', arm_messages(gap_after=11)), SPEC)
    assert demos.episode_ends.tolist() == [12, 20]
    assert report.dropped == {}


def test_nan_observation_frame_is_dropped_and_counted(tmp_path: Path) -> None:
    demos, report = read_rosbag(write_bag(tmp_path / 'b', arm_messages(nan_obs_at=7)), SPEC)
    assert report.dropped == {'/joint_states: non-finite value': 1}
    assert len(demos.obs) == 19 and np.isfinite(demos.obs).all()
    assert demos.episode_ends.tolist() == [7, 19]  # the hole splits the episode
    text = summarize(demos, report)
    assert 'non-finite value' in text and 'frames dropped: 1 of 20' in text


def test_nan_action_is_an_error_naming_topic_and_time(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / 'b', arm_messages(nan_action_at=3))
    with pytest.raises(DemoError, match=r'/commands at 0\.3\d\d s into the bag.*non-finite '
                                        r"action value inf for 'wrist'"):
        read_rosbag(bag, SPEC)


def test_empty_bag_is_a_clear_error(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / 'empty', [])
    with pytest.raises(DemoError, match='the bag is empty'):
        read_rosbag(bag, SPEC)
    with pytest.raises(DemoError, match='rosbag not found'):
        read_rosbag(tmp_path / 'nowhere', SPEC)


def test_unsorted_header_stamps_are_an_error(tmp_path: Path) -> None:
    msgs = arm_messages(n=6)
    topic, msg_type, recv, _ = msgs[6]
    msgs[6] = (topic, msg_type, recv, joint_state(T0 - NS, JOINTS, [0.0, 0.0, 0.0]))
    with pytest.raises(DemoError, match='/joint_states: stamps are not sorted'):
        read_rosbag(write_bag(tmp_path / 'b', msgs), SPEC)


def test_fixed_rate_hold_counts_stale_frames(tmp_path: Path) -> None:
    msgs = [m for m in arm_messages(n=30) if not (m[0] == '/joint_states' and 10 <= (
        m[2] - T0) // (NS // 10) < 15)]
    spec = {**SPEC, 'rate_hz': 20.0, 'observations': [
        {**SPEC['observations'][0], 'max_age_s': 0.15}]}
    demos, report = read_rosbag(write_bag(tmp_path / 'b', msgs), spec)
    assert report.frames_considered == 59
    stale = report.dropped.pop('/joint_states: last message older than max_age_s (0.15 s)')
    assert stale == 9 and report.dropped == {}  # grid 1.06 .. 1.46 s, last message 0.9 s
    assert len(demos.obs) == 59 - stale and demos.n_episodes == 2
    assert demos.meta['rate_hz'] == 20.0


def test_episode_marker_topic_and_trajectory_action(tmp_path: Path) -> None:
    msgs = [m for m in arm_messages(n=30) if m[0] == '/joint_states']
    for i in range(30):
        msgs.append(('/traj', TRAJ, T0 + i * NS // 10 + 5_000_000,
                     trajectory(JOINTS[::-1], [3.0, 2.0, float(i)])))
    marks = {0: True, 10: False, 15: True}
    msgs += [('/episode', BOOL, T0 + i * NS // 10 + 1_000_000,
              TS.types[BOOL](data=v)) for i, v in marks.items()]
    spec = {**SPEC, 'action': {'topic': '/traj', 'type': 'trajectory_msgs/JointTrajectory',
                               'joints': JOINTS},
            'episodes': {'topic': '/episode', 'type': 'std_msgs/Bool'}}
    demos, report = read_rosbag(write_bag(tmp_path / 'b', msgs), spec)
    assert demos.episode_ends.tolist() == [10, 25]
    assert report.dropped == {'action message outside an episode (episode marker)': 5}
    np.testing.assert_array_equal(demos.actions[:, 0], np.full(25, float(0)) + np.r_[
        np.arange(10), np.arange(15, 30)])
    np.testing.assert_array_equal(demos.actions[:, 2], 3.0)


def test_shifted_joint_state_action_and_pose(tmp_path: Path) -> None:
    msgs = [m for m in arm_messages(n=12) if m[0] == '/joint_states']
    msgs += [('/tool', POSE, T0 + i * NS // 10 + 3_000_000, pose(T0 + i * NS // 10, float(i)))
             for i in range(12)]
    spec = {'rate_hz': 10.0, 'align': 'asof', 'tolerance_s': 0.02,
            'observations': [{'topic': '/tool', 'type': 'geometry_msgs/PoseStamped',
                              'fields': ['position']}],
            'action': {'topic': '/joint_states', 'type': 'sensor_msgs/JointState',
                       'joints': JOINTS, 'stamp': 'header', 'shift_steps': 1}}
    demos, report = read_rosbag(write_bag(tmp_path / 'b', msgs), spec)
    assert report.dropped == {'action /joint_states: no frame 1 step(s) later in the episode': 1}
    np.testing.assert_allclose(demos.obs[:, 0], np.arange(11.0))
    np.testing.assert_allclose(demos.actions[:, 0], np.sin(0.3 * np.arange(1, 12)))
    assert demos.obs_names == ['/tool/position/x', '/tool/position/y', '/tool/position/z']


def test_the_next_measured_position_is_the_action_under_transport_latency(tmp_path: Path):
    # /joint_states as observation and, shifted one frame, as action, received 15 ms after
    # their stamps at 100 Hz: with the defaults both are read on the stamps' clock, so the
    # action of frame k is message k + 1 and the observation message k
    msgs = [('/joint_states', JS, T0 + i * 10_000_000 + 15_000_000,
             joint_state(T0 + i * 10_000_000, JOINTS, [float(i), 0.0, 0.0])) for i in range(50)]
    spec = {'observations': [{'topic': '/joint_states', 'type': JS, 'joints': JOINTS}],
            'action': {'topic': '/joint_states', 'type': JS, 'joints': JOINTS,
                       'shift_steps': 1}}
    demos, _ = read_rosbag(write_bag(tmp_path / 'b', msgs), spec)
    np.testing.assert_array_equal(demos.obs[:, 0], np.arange(49.0))
    np.testing.assert_array_equal(demos.actions[:, 0], np.arange(1.0, 50.0))
    mixed = {**spec, 'action': {**spec['action'], 'stamp': 'receive'}}
    with pytest.raises(DemoError, match="stamp source of the observation stream on "
                                        "/joint_states \\('header'\\)"):
        read_rosbag(tmp_path / 'b', mixed)


def test_a_fixed_rate_episode_never_takes_the_previous_episodes_command(tmp_path: Path):
    # Int32 markers; episode 1's first command comes 30 ms after its marker: its first frame
    # (at the marker) would hold episode 0's last command, so it is dropped, not mixed
    i32 = 'std_msgs/msg/Int32'
    msgs = [('/episode', i32, T0, TS.types[i32](data=0)),
            ('/episode', i32, T0 + 2 * NS + 5_000_000, TS.types[i32](data=1))]
    for i in range(40):
        t = T0 + i * NS // 10
        msgs.append(('/joint_states', JS, t + 2_000_000, joint_state(t, JOINTS,
                                                                     [float(i), 0.0, 0.0])))
        msgs.append(('/cmd', F64, t + (40_000_000 if i == 20 else 10_000_000),
                     multi_array([1000.0 + i if i >= 20 else float(i), 0.0, 0.0])))
    spec = {'rate_hz': 10.0,
            'observations': [{'topic': '/joint_states', 'type': JS, 'joints': JOINTS}],
            'action': {'topic': '/cmd', 'type': F64, 'joints': JOINTS},
            'episodes': {'topic': '/episode', 'type': i32}}
    demos, report = read_rosbag(write_bag(tmp_path / 'b', msgs), spec)
    assert report.dropped['action /cmd: only a message from before the episode began'] == 1
    second = demos.actions[demos.episode_ends[0]:, 0]
    assert np.all(second >= 1000.0), second[:3]


def test_planar_pose_fields_give_x_y_and_yaw(tmp_path: Path) -> None:
    g = 'geometry_msgs/msg/'
    yaws = [0.3 * i - 1.2 for i in range(8)]
    msgs = []
    for i, yaw in enumerate(yaws):
        q = TS.types[g + 'Quaternion'](x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))
        p = TS.types[g + 'Pose'](position=TS.types[g + 'Point'](x=float(i), y=-2.0 * i, z=9.0),
                                 orientation=q)
        ns = T0 + i * NS // 10
        msgs.append(('/block', POSE, ns, TS.types[POSE](header=header(ns), pose=p)))
        msgs.append(('/cmd', F64, ns + 1_000_000, multi_array([float(i), 0.0, 0.0])))
    spec = {'observations': [{'topic': '/block', 'type': 'geometry_msgs/PoseStamped',
                              'fields': ['x', 'y', 'yaw', 'yaw_cos', 'yaw_sin']}],
            'action': {'topic': '/cmd', 'type': F64, 'joints': JOINTS}}
    demos, _ = read_rosbag(write_bag(tmp_path / 'b', msgs), spec)
    np.testing.assert_allclose(demos.obs, np.c_[np.arange(8.0), -2.0 * np.arange(8), yaws,
                                                np.cos(yaws), np.sin(yaws)], atol=1e-12)
    assert demos.obs_names == ['/block/x', '/block/y', '/block/yaw', '/block/yaw_cos',
                               '/block/yaw_sin']


def cloud(ns: int, points: np.ndarray) -> Any:
    """A PointCloud2 of float32 x, y, z plus a uint8 'tag' field (ignored), little-endian."""
    pf = TS.types['sensor_msgs/msg/PointField']
    fields = [pf(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate('xyz')]
    fields.append(pf(name='tag', offset=12, datatype=2, count=1))
    rows = np.zeros(len(points), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                         ('tag', 'u1'), ('pad', 'u1', 3)])
    rows['x'], rows['y'], rows['z'] = points.T
    return TS.types['sensor_msgs/msg/PointCloud2'](
        header=header(ns), height=1, width=len(points), fields=fields, is_bigendian=False,
        point_step=16, row_step=16 * len(points),
        data=np.frombuffer(rows.tobytes(), dtype=np.uint8), is_dense=False)


def test_point_cloud_centroid_and_first_points(tmp_path: Path) -> None:
    cloud_type = 'sensor_msgs/msg/PointCloud2'
    msgs = []
    for i in range(6):
        ns = T0 + i * NS // 10
        pts = np.array([[i, 0.0, 1.0], [i + 2.0, 4.0, 1.0], [np.nan, 1.0, 1.0]])
        if i == 3:
            pts = pts[2:]  # only a NaN point: that frame cannot be used
        msgs.append(('/cloud', cloud_type, ns, cloud(ns, pts)))
        msgs.append(('/cmd', F64, ns + 1_000_000, multi_array([float(i), 0.0, 0.0])))
    bag = write_bag(tmp_path / 'b', msgs)
    action = {'topic': '/cmd', 'type': F64, 'joints': JOINTS}
    centroid, report = read_rosbag(bag, {'observations': [
        {'topic': '/cloud', 'type': cloud_type}], 'action': action})
    kept = np.array([0, 1, 2, 4, 5], dtype=float)
    np.testing.assert_allclose(centroid.obs, np.c_[kept + 1.0, np.full(5, 2.0), np.ones(5)])
    assert report.frames_dropped == 1
    assert centroid.obs_names == ['/cloud/centroid/x', '/cloud/centroid/y', '/cloud/centroid/z']
    first, _ = read_rosbag(bag, {'observations': [
        {'topic': '/cloud', 'type': cloud_type, 'fields': ['y', 'x'], 'n_points': 2}],
        'action': action})
    np.testing.assert_allclose(first.obs[0], [0.0, 0.0, 4.0, 2.0])
    assert first.obs_names[:2] == ['/cloud/p0/y', '/cloud/p0/x']
    with pytest.raises(DemoError, match="lacks fields \\['w'\\]"):
        read_rosbag(bag, {'observations': [{'topic': '/cloud', 'type': cloud_type,
                                            'fields': ['w']}], 'action': action})


def test_spec_rejects_unknown_key_and_bad_values(tmp_path: Path) -> None:
    bad = {**SPEC, 'observations': [{**SPEC['observations'][0], 'jionts': ['a']}]}
    with pytest.raises(BagSpecError, match=r"observations\[0\]: unknown key\(s\) \['jionts'\]"):
        BagSpec.from_dict(bad)
    with pytest.raises(BagSpecError, match="unknown key.*'rate'"):
        BagSpec.from_dict({**SPEC, 'rate': 10})
    with pytest.raises(BagSpecError, match='align'):
        BagSpec.from_dict({**SPEC, 'align': 'nearest'})
    with pytest.raises(BagSpecError, match='n_points'):
        BagSpec.from_dict({**SPEC, 'observations': [
            {'topic': '/tool', 'type': 'geometry_msgs/PoseStamped', 'n_points': 3}]})
    with pytest.raises(BagSpecError, match="stamp = 'header'.*no header"):
        BagSpec.from_dict({**SPEC, 'observations': [
            {'topic': '/g', 'type': 'std_msgs/msg/Float64MultiArray', 'size': 2,
             'stamp': 'header'}]})
    with pytest.raises(BagSpecError, match='gap_s'):
        BagSpec.from_dict({**SPEC, 'episodes': {'gap_s': 1.0, 'topic': '/e'}})


def test_spec_yaml_round_trip(tmp_path: Path) -> None:
    path = tmp_path / 'spec.yaml'
    path.write_text('rate_hz: 10\nobservations:\n  - {topic: /joint_states, type: '
                    'sensor_msgs/JointState, joints: [a, b]}\n  - {topic: /g, type: '
                    'std_msgs/Float64MultiArray, size: 2}\naction: {topic: /cmd, type: '
                    'std_msgs/Float64MultiArray, joints: [a, b]}\n')
    spec = load_bag_spec(path)
    assert spec.observations[0].stamp == 'header' and spec.observations[1].stamp == 'receive'
    assert spec.obs_dim == 4 and spec.episodes.gap_s == 1.0
    assert BagSpec.from_dict(spec.to_dict()) == spec


def test_alignment_functions() -> None:
    stamps = np.array([10, 20, 30])
    idx, code = align_hold(stamps, np.array([5, 10, 24, 45]), limit_ns=10)
    assert idx.tolist()[1:] == [0, 1, 2] and code.tolist() == [1, 0, 0, 2]
    idx, code = align_asof(stamps, np.array([5, 14, 16, 25, 45]), limit_ns=5)
    assert idx.tolist() == [0, 0, 1, 1, 2] and code.tolist() == [0, 0, 0, 0, 3]


def test_zero_header_stamp_and_wrong_array_length_are_errors(tmp_path: Path) -> None:
    msgs = arm_messages(n=4)
    msgs[2] = ('/joint_states', JS, msgs[2][2], joint_state(0, JOINTS, [0.0, 0.0, 0.0]))
    with pytest.raises(DemoError, match='header stamp is zero; use stamp: receive'):
        read_rosbag(write_bag(tmp_path / 'a', msgs), SPEC)
    msgs = arm_messages(n=4)
    msgs[3] = ('/commands', F64, msgs[3][2], multi_array([1.0, 2.0]))
    with pytest.raises(DemoError, match=r'/commands at .*has 2 values, the spec expects 3'):
        read_rosbag(write_bag(tmp_path / 'b', msgs), SPEC)


def test_int32_marker_segments() -> None:
    stamps = np.array([0, 10, 20, 30, 40])
    ids = np.array([0, 0, 1, -1, 2])
    segments = marker_segments(stamps, ids, ids >= 0, end_ns=100)
    assert segments == [(0, 20), (20, 30), (40, 100)]
