"""pusht: the gym-pusht wrapper, its geometry constants and the scripted expert."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip('gym_pusht')

from energyflow_ros.sim.pusht import (  # noqa: E402
    GOAL_POSE, PushTExpert, PushTExpertConfig, PushTTask, T_COM, T_OUTLINE, block_pose,
    point_polygon_distance)
from energyflow_ros.sim.rollout import ExpertPolicy, rollout, summarize_metrics  # noqa: E402


@pytest.fixture(scope='module')
def task():
    task = PushTTask()
    yield task
    task.close()


def test_task_info_names_and_limits(task):
    info = task.info
    assert info.name == 'pusht' and info.metric_name == 'max_score'
    assert info.obs_names == ('agent_x', 'agent_y', 'block_x', 'block_y', 'block_angle_cos',
                              'block_angle_sin')
    assert info.action_names == ('agent_x', 'agent_y')
    assert info.action_low == (0.0, 0.0) and info.action_high == (512.0, 512.0)
    assert info.control_hz == 10.0 and info.max_steps == 300


def test_geometry_constants_match_gym_pusht(task):
    task.reset(0)
    env = task._env.unwrapped
    block = env.block
    corners = {tuple(v) for shape in block.shapes for v in shape.get_vertices()}
    assert corners == {tuple(v) for v in T_OUTLINE}  # the two rectangles' union
    np.testing.assert_allclose(tuple(block.center_of_gravity), T_COM)
    assert block.mass == 1.0 and block.moment == pytest.approx(3000.0)
    np.testing.assert_allclose(env.goal_pose, GOAL_POSE)
    np.testing.assert_allclose(task.goal_pose, GOAL_POSE)


def test_observation_is_gym_pusht_state_with_the_angle_as_cosine_and_sine(task):
    for seed in range(20):
        obs = task.reset(seed)
        state = task._env.unwrapped.get_obs()  # gym-pusht's (agent xy, block xy, angle)
        assert obs.shape == (6,)
        np.testing.assert_allclose(obs[:4], state[:4])
        np.testing.assert_allclose(obs[4:], [np.cos(state[4]), np.sin(state[4])])
        pose = block_pose(obs)
        assert -np.pi < pose[2] <= np.pi
        assert np.cos(pose[2] - state[4]) == pytest.approx(1.0)


def test_observation_has_no_jump_where_the_angle_wraps(task):
    # gym-pusht's state jumps by 2 pi when the block turns through angle 0 (pi / 4 from the
    # goal); the task's observation must change by as little as the pose does
    task.reset(0)
    env = task._env.unwrapped
    observations = []
    for angle in (-0.01, 0.01):  # the body angle either side of the cut
        env.block.angle = angle
        observations.append(task.step(env.agent.position).obs)
    gym_angles = [a % (2 * np.pi) for a in (-0.01, 0.01)]
    assert abs(gym_angles[0] - gym_angles[1]) > 6.0
    assert np.abs(observations[0][4:] - observations[1][4:]).max() < 0.05


def test_reset_is_deterministic_by_seed(task):
    np.testing.assert_array_equal(task.reset(7), task.reset(7))
    assert not np.array_equal(task.reset(7), task.reset(8))


def test_expert_episode_is_deterministic_by_seed(task):
    expert = PushTExpert(task)
    first = rollout(task, ExpertPolicy(expert, seed=1), seed=1, max_steps=60)
    second = rollout(task, ExpertPolicy(expert, seed=1), seed=1, max_steps=60)
    np.testing.assert_array_equal(first['actions'], second['actions'])
    np.testing.assert_array_equal(first['obs'], second['obs'])


def test_expert_success_rate(task):
    policy = ExpertPolicy(PushTExpert(task))
    results = []
    for seed in range(10):
        policy.seed = seed
        results.append(rollout(task, policy, seed))
    summary = summarize_metrics([r['metrics'] for r in results])
    assert summary['success_mean'] >= 0.8
    assert summary['max_coverage_mean'] >= 0.9
    for result in results:
        m = result['metrics']
        assert m['success'] == float(m['max_coverage'] > 0.95)
        # Diffusion Policy's score: a success scores 1, anything else its coverage / 0.95
        assert m['max_score'] == (1.0 if m['success'] else pytest.approx(m['max_coverage'] / 0.95))
        assert np.all(result['actions'] >= 0.0) and np.all(result['actions'] <= 512.0)


def test_expert_is_multimodal(task):
    expert = PushTExpert(task)
    ends = []
    for expert_seed in range(8):
        result = rollout(task, ExpertPolicy(expert, seed=expert_seed), seed=0, max_steps=30)
        ends.append(result['final_obs'][:2])
    spread = np.ptp(np.array(ends), axis=0).max()
    assert spread > 5.0


def test_actions_are_clipped_to_the_arena(task):
    task.reset(0)
    result = task.step(np.array([1000.0, -50.0]))
    assert result.info['clipped']
    for _ in range(30):
        result = task.step(np.array([1000.0, -50.0]))
    assert np.all(result.obs[:2] >= 0.0) and np.all(result.obs[:2] <= 512.0)
    assert not task.step(result.obs[:2]).info['clipped']


def test_metrics_track_coverage(task):
    obs = task.reset(3)
    for _ in range(5):
        result = task.step(obs[:2])
    metrics = task.episode_metrics()
    assert metrics['n_steps'] == 5.0 and metrics['success'] == 0.0
    assert metrics['final_coverage'] == result.info['coverage']
    assert 0.0 <= metrics['final_coverage'] <= metrics['max_coverage'] <= 1.0
    assert metrics['max_score'] == pytest.approx(min(metrics['max_coverage'] / 0.95, 1.0))


@pytest.mark.parametrize('action, words', [
    (np.array([np.nan, 100.0]), 'non-finite'),
    (np.zeros(5), 'shape'),
    (np.zeros((1, 2)), 'shape'),
])
def test_bad_actions_raise_value_error_naming_the_problem(task, action, words):
    task.reset(0)
    with pytest.raises(ValueError, match=words):
        task.step(action)


def test_bad_settings_are_rejected_by_name():
    with pytest.raises(ValueError, match='max_steps'):
        PushTTask(max_steps=0)
    with pytest.raises(ValueError, match='temperature'):
        PushTExpertConfig(temperature=0.0)
    with pytest.raises(ValueError, match='top_k'):
        PushTExpertConfig(top_k=0)


def test_point_polygon_distance():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    points = np.array([[0.5, 0.5], [2.0, 0.5], [-1.0, -1.0], [0.5, 1.0]])
    np.testing.assert_allclose(point_polygon_distance(points, square),
                               [0.0, 1.0, np.sqrt(2.0), 0.0])
    notch = point_polygon_distance(np.array([[30.0, 45.0], [0.0, 60.0]]), T_OUTLINE)
    np.testing.assert_allclose(notch, [15.0, 0.0])
