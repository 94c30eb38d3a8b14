"""ObservationHistory: coverage checks, resampling to the model period, staleness, ordering."""

import math

import numpy as np
import pytest

from energyflow_ros.runtime.observation import ObservationHistory, StreamSpec

OBS = ('robot_x', 'robot_y', 'goal_x', 'goal_y')
JOINTS = StreamSpec('joint_state', ('robot_x', 'robot_y'), max_age_s=0.25)
POSE = StreamSpec('pose', ('goal_x', 'goal_y'), max_age_s=1.0)


def history(n_obs=2, period=0.1):
    return ObservationHistory(OBS, n_obs, period, [JOINTS, POSE])


def feed(hist, t, x, goal=(0.9, 0.5)):
    assert hist.update('joint_state', np.array([x, 0.5]), t, now=t) == ''
    assert hist.update('pose', np.array(goal), t, now=t) == ''


def test_stacks_frames_oldest_first_on_the_model_grid():
    hist = history(n_obs=3)
    for k in range(50):  # joint states at 100 Hz, x = time
        t = 1.0 + 0.01 * k
        feed(hist, t, x=t)
    obs, t_ref = hist.stacked(now=1.495)
    assert t_ref == pytest.approx(1.49)
    frames = obs.reshape(3, 4)
    np.testing.assert_allclose(frames[:, 0], [1.29, 1.39, 1.49], atol=1e-9)
    np.testing.assert_allclose(frames[:, 2:], [[0.9, 0.5]] * 3)


def test_jittered_stamps_still_pick_the_previous_frame():
    hist = history()
    feed(hist, 1.0, x=0.1)
    feed(hist, 1.1013, x=0.2)  # 1.3 ms late
    obs, _ = hist.stacked(now=1.11)
    np.testing.assert_allclose(obs.reshape(2, 4)[:, 0], [0.1, 0.2])


def test_short_history_is_padded_with_the_oldest_frame():
    hist = history(n_obs=3)
    feed(hist, 5.0, x=0.3)
    obs, _ = hist.stacked(now=5.0)
    np.testing.assert_allclose(obs.reshape(3, 4)[:, 0], [0.3, 0.3, 0.3])


def test_no_data_then_stale_then_ok():
    hist = history()
    status = hist.status(now=0.0)
    assert status.level == 'no_data' and 'joint_state' in status.message
    feed(hist, 1.0, x=0.0)
    assert hist.status(now=1.2).ok
    status = hist.status(now=1.3)
    assert status.level == 'stale' and 'joint_state' in status.message
    assert status.age_s == pytest.approx(0.3)
    assert hist.stacked(now=1.3) is None
    feed(hist, 1.31, x=0.1)
    assert hist.status(now=1.32).ok


def test_each_stream_has_its_own_max_age():
    hist = history()
    feed(hist, 1.0, x=0.0)
    for k in range(1, 15):
        hist.update('joint_state', np.array([0.0, 0.5]), 1.0 + 0.1 * k, now=1.0 + 0.1 * k)
    status = hist.status(now=2.4)
    assert status.level == 'stale' and "'pose'" in status.message


@pytest.mark.parametrize('values, stamp, match', [
    ([np.nan, 0.5], 2.0, 'non-finite'),
    ([0.1, np.inf], 2.0, 'non-finite'),
    ([0.1, 0.2, 0.3], 2.0, '3 values, expected 2'),
    ([0.1, 0.2], 0.5, 'out of order'),
    ([0.1, 0.2], 3.0, 'future'),
    ([0.1, 0.2], math.nan, 'stamp'),
])
def test_bad_samples_are_rejected_and_do_not_enter(values, stamp, match):
    hist = history()
    feed(hist, 1.0, x=0.7)
    reason = hist.update('joint_state', np.array(values), stamp, now=2.0)
    assert match in reason
    assert hist.rejected('joint_state') == 1
    assert hist.newest_stamp('joint_state') == 1.0
    obs, _ = hist.stacked(now=1.1)
    np.testing.assert_allclose(obs.reshape(2, 4)[:, 0], [0.7, 0.7])


def test_equal_stamps_are_accepted():
    hist = history()
    feed(hist, 1.0, x=0.1)
    assert hist.update('joint_state', np.array([0.2, 0.5]), 1.0, now=1.0) == ''


@pytest.mark.parametrize('streams, match', [
    ([JOINTS], r"\['goal_x', 'goal_y'\] are filled by no stream"),
    ([JOINTS, POSE, StreamSpec('again', ('goal_x',), 1.0)], r"\['goal_x'\] are filled by sev"),
    ([JOINTS, StreamSpec('pose', ('goal_x', 'goal_y', 'goal_z'), 1.0)], "goal_z"),
])
def test_configuration_errors_name_the_observations(streams, match):
    with pytest.raises(ValueError, match=match):
        ObservationHistory(OBS, 2, 0.1, streams)


def test_reset_forgets_everything():
    hist = history()
    feed(hist, 1.0, x=0.1)
    hist.reset()
    assert hist.status(now=1.0).level == 'no_data'


def test_buffer_is_bounded_in_time():
    hist = history(n_obs=2, period=0.1)
    for k in range(5000):
        hist.update('joint_state', np.array([k, 0.0]), 0.001 * k, now=0.001 * k)
    assert len(hist._buffers['joint_state'].stamps) < 400


def test_a_clock_going_back_holds_then_restarts_the_history():
    hist = history()
    feed(hist, 100.0, x=0.5)
    assert hist.status(now=100.01).ok
    status = hist.status(now=1.0)  # a simulation reset: the clock starts again
    assert not status.ok and status.level == 'clock_back'
    assert "'joint_state' has a sample 99.000 s ahead" in status.message
    assert hist.update('joint_state', np.array([0.1, 0.1]), 1.02, now=1.02) == ''
    assert hist.clock_resets == 1
    status = hist.status(now=1.02)  # the old pose sample went with the old timeline
    assert not status.ok and status.level == 'no_data' and "'pose'" in status.message
    assert hist.update('pose', np.array([0.9, 0.5]), 1.02, now=1.02) == ''
    obs, t_ref = hist.stacked(now=1.03)
    assert t_ref == 1.02 and obs[0] == 0.1  # nothing of the old timeline is left
    assert 'out of order' in hist.update('joint_state', np.array([0.1, 0.1]), 1.0, now=1.03)
    assert hist.clock_resets == 1  # an old stamp on a steady clock is still refused
