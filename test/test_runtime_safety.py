"""JointCommandFilter: limits, rate limit, ramp-in, rejection of bad targets, hold."""

import numpy as np
import pytest

from energyflow_ros.runtime.safety import JointCommandFilter, JointLimits

LIMITS = JointLimits.from_arrays(['a', 'b'], [0.0, -1.0], [1.0, 1.0], 0.1)


def make_filter(ramp_ticks=0, measured=(0.5, 0.0)):
    filt = JointCommandFilter(LIMITS, ramp_ticks=ramp_ticks)
    if measured is not None:
        assert filt.update_measured(np.array(measured))
    return filt


def test_within_limits_and_step_passes_unchanged():
    filt = make_filter()
    cmd = filt.apply(np.array([0.55, 0.05]))
    np.testing.assert_allclose(cmd, [0.55, 0.05])
    assert not (filt.status.clamped or filt.status.rate_limited or filt.status.held)


def test_clamps_to_joint_limits():
    filt = make_filter(measured=(0.95, -0.95))
    cmd = filt.apply(np.array([1.5, -3.0]))
    np.testing.assert_allclose(cmd, [1.0, -1.0])
    assert filt.status.clamped


def test_rate_limit_per_tick_from_previous_command():
    filt = make_filter()
    commands = [filt.apply(np.array([1.0, 1.0])) for _ in range(4)]
    np.testing.assert_allclose(commands[0], [0.6, 0.1])
    np.testing.assert_allclose(commands[3], [0.9, 0.4])
    steps = np.abs(np.diff(np.array(commands), axis=0))
    assert np.all(steps <= 0.1 + 1e-12)
    assert filt.status.rate_limited


def test_ramp_in_grows_the_step_linearly():
    filt = make_filter(ramp_ticks=4)
    filt.start()
    commands = [filt.apply(np.array([1.0, 0.0]))[0] for _ in range(5)]
    np.testing.assert_allclose(np.diff([0.5] + commands), [0.025, 0.05, 0.075, 0.1, 0.1])


@pytest.mark.parametrize('target', [[np.nan, 0.2], [0.2, np.inf], [0.1, 0.2, 0.3], [0.1]])
def test_bad_target_holds_last_measured(target):
    filt = make_filter(measured=(0.3, -0.2))
    filt.apply(np.array([0.35, -0.15]))
    cmd = filt.apply(np.array(target))
    np.testing.assert_allclose(cmd, [0.3, -0.2])
    assert filt.status.held and filt.status.rejected and filt.status.reason


def test_none_target_holds_without_rejecting():
    filt = make_filter(measured=(0.3, -0.2))
    np.testing.assert_allclose(filt.apply(None), [0.3, -0.2])
    assert filt.status.held


def test_never_commands_before_a_measurement():
    filt = make_filter(measured=None)
    assert filt.apply(np.array([0.5, 0.5])) is None
    assert filt.status.reason == 'no measurement yet' and not filt.status.rejected
    assert filt.hold() is None


def test_bad_measurements_are_ignored():
    filt = make_filter(measured=(0.3, 0.1))
    assert not filt.update_measured(np.array([np.nan, 0.0]))
    assert not filt.update_measured(np.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(filt.hold(), [0.3, 0.1])


def test_hold_is_clamped_and_rate_limit_continues_from_it():
    filt = make_filter(measured=(1.05, 0.0))  # measured within one step outside the limit
    np.testing.assert_allclose(filt.hold(), [1.0, 0.0])
    np.testing.assert_allclose(filt.apply(np.array([0.0, 0.0])), [0.9, 0.0])


def test_a_pose_far_outside_the_limits_is_never_commanded():
    filt = make_filter(measured=(1.3, 0.0))  # 3 steps outside: clamping would jump 0.3
    assert filt.hold() is None
    assert 'a at 1.3 (limits [0, 1]): more than one step outside' in filt.status.fault
    filt.start()
    assert filt.apply(np.array([0.9, 0.0])) is None and filt.status.fault
    assert filt.apply(np.array([np.nan, 0.0])) is None and filt.status.fault
    filt.update_measured(np.array([1.08, 0.0]))  # moved back within reach
    np.testing.assert_allclose(filt.apply(np.array([0.5, 0.0])), [0.9, 0.0])
    assert not filt.status.fault


def test_start_restarts_from_the_measured_pose():
    filt = make_filter(measured=(0.5, 0.0))
    filt.apply(np.array([0.6, 0.0]))
    filt.update_measured(np.array([0.2, 0.0]))
    filt.start()
    np.testing.assert_allclose(filt.apply(np.array([0.25, 0.0])), [0.25, 0.0])


def test_fuzzed_targets_never_leave_the_safe_set():
    rng = np.random.default_rng(0)
    filt = make_filter()
    previous = filt.hold()
    for _ in range(2000):
        target = rng.normal(0.0, 3.0, size=rng.choice([1, 2, 3]))
        target[rng.random(target.shape) < 0.1] = np.nan
        filt.update_measured(previous)
        cmd = filt.apply(target)
        assert np.all(np.isfinite(cmd))
        assert np.all(cmd >= [0.0, -1.0]) and np.all(cmd <= [1.0, 1.0])
        assert np.all(np.abs(cmd - previous) <= 0.1 + 1e-12)
        previous = cmd


@pytest.mark.parametrize('kwargs, match', [
    (dict(lower=[0.0], upper=[1.0, 1.0], max_step=[0.1, 0.1]), 'lower'),
    (dict(lower=[0.0, 2.0], upper=[1.0, 1.0], max_step=[0.1, 0.1]), 'lower > upper'),
    (dict(lower=[0.0, 0.0], upper=[1.0, np.inf], max_step=[0.1, 0.1]), 'non-finite'),
    (dict(lower=[0.0, 0.0], upper=[1.0, 1.0], max_step=[0.1, 0.0]), 'max_step'),
])
def test_invalid_limits_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JointLimits(names=('a', 'b'), lower=tuple(kwargs['lower']),
                    upper=tuple(kwargs['upper']), max_step=tuple(kwargs['max_step']))
