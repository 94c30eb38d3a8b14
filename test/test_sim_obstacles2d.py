"""obstacles2d: dynamics, collisions, metrics, input checks and the multimodal expert."""

from __future__ import annotations

import numpy as np
import pytest

from energyflow_ros.sim.obstacles2d import (
    Obstacles2DConfig, Obstacles2DExpert, Obstacles2DTask, segment_circle_hit)
from energyflow_ros.sim.rollout import ExpertPolicy, rollout, summarize_metrics


def run_expert(task: Obstacles2DTask, seeds: range) -> list[dict[str, float]]:
    policy = ExpertPolicy(Obstacles2DExpert(task))
    metrics = []
    for seed in seeds:
        policy.seed = seed
        metrics.append(rollout(task, policy, seed)['metrics'])
    return metrics


def test_task_info_names_and_limits():
    info = Obstacles2DTask().info
    assert info.name == 'obstacles2d'
    assert info.obs_names == ('robot_x', 'robot_y', 'goal_x', 'goal_y')
    assert info.action_names == ('robot_x', 'robot_y')
    assert info.action_low == (0.0, 0.0) and info.action_high == (1.0, 1.0)
    assert info.control_hz == 10.0 and info.max_steps == 120


def test_reset_is_deterministic_by_seed():
    task = Obstacles2DTask()
    np.testing.assert_array_equal(task.reset(5), task.reset(5))
    assert not np.array_equal(task.reset(5), task.reset(6))


def test_expert_episode_is_deterministic_by_seed():
    task = Obstacles2DTask()
    first = rollout(task, ExpertPolicy(Obstacles2DExpert(task), seed=3), seed=3)
    second = rollout(task, ExpertPolicy(Obstacles2DExpert(task), seed=3), seed=3)
    np.testing.assert_array_equal(first['actions'], second['actions'])
    other = rollout(task, ExpertPolicy(Obstacles2DExpert(task), seed=4), seed=3)
    assert not np.array_equal(first['actions'], other['actions'])


def test_expert_succeeds_without_collisions_and_uses_both_sides():
    summary = summarize_metrics(run_expert(Obstacles2DTask(), range(40)))
    assert summary['success_mean'] >= 0.95
    assert summary['collision_mean'] == 0.0
    assert summary['first_side_above'] >= 0.25 and summary['first_side_below'] >= 0.25
    assert summary['first_side_above'] + summary['first_side_below'] == 1.0
    assert summary['n_modes'] == 4
    assert 0.0 < summary['path_cost_mean'] < 0.3


@pytest.mark.parametrize('n_obstacles', [1, 3, 4])
def test_expert_handles_other_layouts(n_obstacles):
    task = Obstacles2DTask(n_obstacles=n_obstacles)
    summary = summarize_metrics(run_expert(task, range(20)))
    assert summary['success_mean'] == 1.0 and summary['collision_mean'] == 0.0
    assert summary['n_modes'] >= min(2 ** n_obstacles, 6)


def test_straight_line_policy_collides():
    task = Obstacles2DTask()
    for seed in range(10):
        result = rollout(task, lambda obs: obs[2:4], seed)
        metrics = result['metrics']
        assert metrics['collision'] == 1.0 and metrics['success'] == 1.0
        assert metrics['safe_success'] == 0.0
        assert metrics['path_cost'] == pytest.approx(0.0, abs=1e-9)


def test_collision_is_detected_on_a_step_that_jumps_over_an_obstacle():
    task = Obstacles2DTask(max_step=1.0)
    task.reset(0)
    centre = task.centres[0]
    task.step(np.array([centre[0] - 0.2, 0.5]))
    result = task.step(np.array([centre[0] + 0.2, 0.5]))  # both ends outside the disc
    assert result.info['collision']
    assert task.episode_metrics()['collision'] == 1.0


def test_sides_and_mode_are_recorded():
    task = Obstacles2DTask(max_step=1.0)
    for side in (1, -1):
        task.reset(0)
        for (x, _), radius in zip(task.centres, task.radii, strict=True):
            task.step(np.array([x - 0.05, 0.5 + side * 2 * radius]))
            task.step(np.array([x + 0.05, 0.5 + side * 2 * radius]))
        metrics = task.episode_metrics()
        assert metrics['first_obstacle_side'] == side and metrics['obstacle_1_side'] == side
        assert metrics['mode'] == (3.0 if side > 0 else 0.0)
        assert metrics['collision'] == 0.0
    task.reset(0)
    assert task.episode_metrics()['mode'] == -1.0


def test_actions_are_clipped_to_the_arena_and_speed_limited():
    task = Obstacles2DTask()
    task.reset(0)
    start = task.position
    result = task.step(np.array([5.0, -3.0]))
    assert result.info['clipped']
    assert np.linalg.norm(task.position - start) == pytest.approx(task.config.max_step)
    for _ in range(60):
        task.step(np.array([5.0, -3.0]))
    np.testing.assert_allclose(task.position, [1.0, 0.0], atol=1e-12)
    assert not task.step(np.array([0.9, 0.1])).info['clipped']


def test_episode_ends_at_max_steps():
    task = Obstacles2DTask(max_steps=3)
    obs = task.reset(0)
    results = [task.step(obs[:2]) for _ in range(3)]
    assert [r.done for r in results] == [False, False, True]
    assert not results[-1].success


@pytest.mark.parametrize('action, words', [
    (np.array([np.nan, 0.5]), 'non-finite'),
    (np.array([0.5, np.inf]), 'non-finite'),
    (np.zeros(3), 'shape'),
    (np.zeros((2, 1)), 'shape'),
    ('ab', 'numeric'),
])
def test_bad_actions_raise_value_error_naming_the_problem(action, words):
    task = Obstacles2DTask()
    task.reset(0)
    with pytest.raises(ValueError, match=words):
        task.step(action)


def test_config_rejects_bad_fields_by_name():
    with pytest.raises(ValueError, match='n_obstacles'):
        Obstacles2DConfig(n_obstacles=0)
    with pytest.raises(ValueError, match='max_step'):
        Obstacles2DConfig(max_step=-1.0)
    with pytest.raises(TypeError):
        Obstacles2DTask(no_such_field=1)


def test_segment_circle_hit():
    centres = np.array([[0.0, 0.0], [5.0, 5.0]])
    radii = np.array([1.0, 1.0])
    hits = segment_circle_hit(np.array([-2.0, 0.5]), np.array([2.0, 0.5]), centres, radii)
    assert hits.tolist() == [True, False]
    misses = segment_circle_hit(np.array([-2.0, 1.5]), np.array([2.0, 1.5]), centres, radii)
    assert not misses.any()
    point = segment_circle_hit(np.array([0.5, 0.0]), np.array([0.5, 0.0]), centres, radii)
    assert point.tolist() == [True, False]
