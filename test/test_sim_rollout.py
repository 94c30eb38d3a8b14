"""Registry, demo collection and policy rollouts / evaluation on the scripted tasks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from energyflow_ros.data.dataset import DemoError, DemoSet
from energyflow_ros.sim.demos import collect_demos, expert_success_rate
from energyflow_ros.sim.obstacles2d import Obstacles2DExpert, Obstacles2DTask
from energyflow_ros.sim.registry import TASKS, make_expert, make_task, task_names
from energyflow_ros.sim.rollout import (
    ExpertPolicy, evaluate_policy, make_expert_policy, rollout, summarize_metrics)


class CountingPolicy:
    """Drives to the goal; counts resets and keeps an observation history like a real one."""

    def __init__(self) -> None:
        self.resets = 0
        self.history: list[np.ndarray] = []

    def reset(self) -> None:
        self.resets += 1
        self.history = []

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.history.append(obs)
        return obs[2:4]


def test_registry_lists_tasks_and_rejects_unknown_names():
    assert {'obstacles2d', 'pusht', 'blockpush'} <= set(task_names())
    assert TASKS['blockpush'].module == 'energyflow_ros.sim.blockpush'
    assert (TASKS['blockpush'].task_class, TASKS['blockpush'].expert_class) == (
        'BlockPushTask', 'BlockPushExpert')
    with pytest.raises(ValueError, match="unknown task 'nope'.*obstacles2d.*pusht"):
        make_task('nope')


def test_make_task_and_expert_pass_arguments():
    task = make_task('obstacles2d', n_obstacles=3)
    assert isinstance(task, Obstacles2DTask) and len(task.centres) == 3
    assert isinstance(make_expert(task), Obstacles2DExpert)


def test_sim_modules_import_neither_ros_nor_torch_nor_simulators():
    code = ('import sys\n'
            'import energyflow_ros.sim.registry, energyflow_ros.sim.demos\n'
            'import energyflow_ros.sim.rollout, energyflow_ros.sim.obstacles2d\n'
            'import energyflow_ros.sim.pusht\n'
            "bad = [m for m in ('rclpy', 'torch', 'gym_pusht', 'mujoco') if m in sys.modules]\n"
            'assert not bad, bad\n')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_rollout_returns_trajectory_and_metrics_and_resets_the_policy():
    task = Obstacles2DTask()
    policy = CountingPolicy()
    result = rollout(task, policy, seed=2)
    n = result['n_steps']
    assert result['obs'].shape == (n, 4) and result['actions'].shape == (n, 2)
    assert len(policy.history) == n and policy.resets == 1
    np.testing.assert_array_equal(result['obs'][0], task.reset(2))
    assert result['success'] and result['metrics']['success'] == 1.0
    rollout(task, policy, seed=3, max_steps=4)
    assert policy.resets == 2 and len(policy.history) == 4


def test_rollout_rejects_nan_actions_from_the_policy():
    with pytest.raises(ValueError, match='non-finite'):
        rollout(Obstacles2DTask(), lambda obs: np.array([np.nan, 0.0]), seed=0)
    with pytest.raises(ValueError, match='shape'):
        rollout(Obstacles2DTask(), lambda obs: obs, seed=0)


def test_evaluate_policy_with_the_expert():
    result = evaluate_policy('obstacles2d', make_expert_policy, n_episodes=40, seed=0)
    assert result['task'] == 'obstacles2d' and result['n_episodes'] == 40
    assert len(result['episodes']) == 40
    assert result['success_mean'] >= 0.95 and result['collision_mean'] == 0.0
    assert result['first_side_above'] >= 0.25 and result['first_side_below'] >= 0.25
    assert set(result) >= {'path_cost_mean', 'path_cost_std', 'n_modes', 'wall_s_per_episode'}
    again = evaluate_policy('obstacles2d', make_expert_policy, n_episodes=40, seed=0)
    assert again['episodes'] == result['episodes']


def test_evaluate_policy_sees_collisions_of_a_straight_line_policy():
    result = evaluate_policy('obstacles2d', lambda task: CountingPolicy(), 5, seed=0)
    assert result['collision_mean'] == 1.0 and result['safe_success_mean'] == 0.0


def test_summarize_metrics():
    summary = summarize_metrics([{'success': 1.0, 'first_obstacle_side': 1.0, 'mode': 1.0},
                                 {'success': 0.0, 'first_obstacle_side': -1.0, 'mode': 2.0},
                                 {'success': 1.0, 'first_obstacle_side': 1.0, 'mode': -1.0}])
    assert summary['success_mean'] == pytest.approx(2 / 3)
    assert summary['success_std'] == pytest.approx(np.std([1, 0, 1]))
    assert summary['first_side_above'] == pytest.approx(2 / 3)
    assert summary['first_side_below'] == pytest.approx(1 / 3)
    assert summary['n_modes'] == 2.0
    with pytest.raises(ValueError, match='no episodes'):
        summarize_metrics([])


def test_collect_demos_builds_a_valid_deterministic_demo_set():
    demos = collect_demos('obstacles2d', 6, seed=10)
    assert isinstance(demos, DemoSet) and demos.n_episodes == 6
    ends = demos.episode_ends
    assert ends[-1] == len(demos.obs) == len(demos.actions) and np.all(np.diff(ends) > 0)
    assert demos.obs_names == ['robot_x', 'robot_y', 'goal_x', 'goal_y']
    assert demos.action_names == ['robot_x', 'robot_y']
    assert demos.meta['task'] == 'obstacles2d' and demos.meta['control_hz'] == 10.0
    assert demos.meta['expert_success_rate'] == 1.0
    assert demos.meta['episode_seeds'] == list(range(10, 16))
    task = Obstacles2DTask()
    for seed, sl in zip(demos.meta['episode_seeds'], demos.episode_slices(), strict=True):
        np.testing.assert_array_equal(demos.obs[sl][0], task.reset(seed))
        np.testing.assert_array_equal(demos.obs[sl][:, 2:], np.tile(task.goal, (sl.stop -
                                                                                sl.start, 1)))
        assert np.linalg.norm(demos.obs[sl][-1, :2] - task.goal) <= 0.06  # one step away
    assert collect_demos('obstacles2d', 6, seed=10).fingerprint() == demos.fingerprint()
    assert collect_demos('obstacles2d', 6, seed=11).fingerprint() != demos.fingerprint()


def test_collect_demos_keeps_or_drops_failures():
    with pytest.raises(DemoError, match='only 0 of 2'):
        collect_demos('obstacles2d', 2, task_kwargs={'max_steps': 5})
    demos = collect_demos('obstacles2d', 2, only_success=False, task_kwargs={'max_steps': 5})
    assert demos.episode_ends.tolist() == [5, 10]
    assert demos.meta['expert_success_rate'] == 0.0
    with pytest.raises(ValueError, match='n_episodes'):
        collect_demos('obstacles2d', 0)
    with pytest.raises(ValueError, match='unknown task'):
        collect_demos('nope', 1)


def test_fixed_tick_demos_go_on_past_success_with_the_expert_holding_at_the_goal():
    short = collect_demos('obstacles2d', 3, seed=10)
    fixed = collect_demos('obstacles2d', 3, seed=10, episode_ticks=60)
    assert fixed.episode_ends.tolist() == [60, 120, 180] and fixed.meta['episode_ticks'] == 60
    for a, b in zip(short.episode_slices(), fixed.episode_slices(), strict=True):
        n = a.stop - a.start
        assert n < 60
        np.testing.assert_array_equal(short.obs[a], fixed.obs[b][:n])  # same episode start
        held = fixed.obs[b][n:]
        np.testing.assert_allclose(held[:, :2], held[:, 2:], atol=0.02)  # at the goal ...
        assert np.ptp(held[5:, :2], axis=0).max() < 1e-9                # ... and staying
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match='episode_ticks'):
            collect_demos('obstacles2d', 1, episode_ticks=bad)


def test_expert_success_rate_obstacles2d():
    assert expert_success_rate('obstacles2d', 20, seed=0) == 1.0


def test_collect_demos_pusht():
    pytest.importorskip('gym_pusht')
    demos = collect_demos('pusht', 2, seed=0)
    assert demos.n_episodes == 2
    assert demos.obs_names == ['agent_x', 'agent_y', 'block_x', 'block_y', 'block_angle_cos',
                               'block_angle_sin']
    assert demos.action_names == ['agent_x', 'agent_y']
    assert np.all((demos.actions >= 0) & (demos.actions <= 512))
    assert demos.meta['task'] == 'pusht' and demos.meta['max_steps'] == 300


def test_an_evaluated_expert_acts_as_in_its_demonstrations_of_those_episodes():
    result = evaluate_policy('obstacles2d', make_expert_policy, n_episodes=4, seed=10)
    demos = collect_demos('obstacles2d', 4, seed=10)
    assert demos.meta['episode_seeds'] == [10, 11, 12, 13]
    ends = np.concatenate([[0], demos.episode_ends])
    for i, episode in enumerate(result['episodes']):
        assert episode['n_steps'] == ends[i + 1] - ends[i]   # the same path, tick for tick


def test_expert_policy_reseeds_every_episode():
    task = Obstacles2DTask()
    policy = ExpertPolicy(make_expert(task), seed=5)
    first = rollout(task, policy, seed=0)
    second = rollout(task, policy, seed=0)
    assert policy.seed == 7
    assert not np.array_equal(first['actions'], second['actions'])
