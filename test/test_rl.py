"""Reward extraction checks and downstream RL: chunk environment, rollouts, the CLI."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from energyflow_ros.cli import reward_eval
from energyflow_ros.rl.chunk_env import (
    ChunkEnv, ChunkEnvConfig, chunk_scale, decode_chunk, encode_chunk,
)
from energyflow_ros.rl.reward_checks import check_reward
from energyflow_ros.rl.train import SACConfig, evaluate_agent, train_agent
from energyflow_ros.rl.chunk_env import GOAL_BONUS
from energyflow_ros.rl.rollouts import (
    StraightToGoal, expert_policy, expert_trajectories, rollout_return, tick_rollout,
)
from energyflow_ros.runtime import EnergyReward, load_model
from energyflow_ros.sim.demos import collect_demos

MODEL = os.path.join(os.path.dirname(__file__), '..', 'models', 'obstacles2d_energyflow.onnx')


@pytest.fixture(scope='module')
def config():
    demos = collect_demos('obstacles2d', 10, seed=0)
    scale = chunk_scale(demos, 2, 8)
    return ChunkEnvConfig('obstacles2d', {}, 2, 8, 4, 60, tuple(scale))


def test_chunks_encode_and_decode_exactly_within_the_scale():
    rng = np.random.default_rng(0)
    anchor, scale = rng.uniform(size=4), np.array([0.04, 0.03])
    u = rng.uniform(-1, 1, size=16)
    chunk = decode_chunk(u, anchor, scale)
    assert chunk.shape == (8, 2)
    np.testing.assert_allclose(encode_chunk(chunk, anchor, scale), u, atol=1e-6)
    # Out-of-range agent outputs are clipped, not extrapolated.
    np.testing.assert_allclose(decode_chunk(np.full(16, 5.0), anchor, scale)[0],
                               anchor[:2] + scale)


class _StraightToGoal:
    """A stand-in agent planning chunks of the reward checks' straight-at-the-goal driver: it
    reaches the goal, through a disc."""

    def __init__(self, config: ChunkEnvConfig) -> None:
        self.config = config
        self.driver = StraightToGoal()

    def predict(self, obs, deterministic=True):
        frame = np.asarray(obs[-4:], dtype=np.float64)
        chunk, point = [], frame[:2]
        for _ in range(self.config.horizon):
            point = self.driver(np.concatenate([point, frame[2:]]))
            chunk.append(point)
        return encode_chunk(np.array(chunk), frame, self.config.scale), None


def test_evaluation_counts_success_through_an_obstacle_as_unsafe(config):
    result = evaluate_agent(_StraightToGoal(config), config, 3)
    assert result['success'] == 1.0 and result['collision'] == 1.0
    assert result['safe_success'] == 0.0


def test_sac_training_leaves_no_log_folder_behind(config, tmp_path, monkeypatch):
    # stable-baselines3 makes a /tmp/SB3-<time> folder on every learn() unless the model has
    # a logger of its own; hundreds of runs left hundreds of empty folders.
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    model, _ = train_agent('true', config, 40, 0,
                           SACConfig(learning_starts=20, batch_size=8, net=(8,)))
    assert model.num_timesteps == 40
    assert [name for name in os.listdir(tmp_path) if name.startswith('SB3-')] == []


@pytest.mark.parametrize('source,steps', [('gail', 70), ('airl', 40)])
def test_adversarial_sources_get_as_many_environment_steps_as_sac(config, source, steps):
    # imitation trains whole rounds (60 steps here): 70 steps were 60, and 40 an error
    demos = expert_trajectories(config, [0, 1])
    model, _ = train_agent(source, config, steps, 0, SACConfig(learning_starts=20, batch_size=8,
                                                               net=(8,)), demos=demos)
    assert model.num_timesteps == steps


@pytest.mark.parametrize('source', ['true', 'gail'])
def test_each_rl_seed_trains_on_its_own_episodes_not_the_demonstrations(config, source):
    # SAC(seed=s) reseeds the environment's next reset with s itself (the demonstrations'
    # episodes 0, 1, 2 ...); training must start at the seed's own episodes instead
    from energyflow_ros.rl.train import train_episode_seed

    demos = expert_trajectories(config, [0, 1]) if source == 'gail' else None
    model, _ = train_agent(source, config, 60, 1, SACConfig(learning_starts=20, batch_size=8,
                                                            net=(8,)), demos=demos)
    env = model.get_env()
    while hasattr(env, 'venv'):  # imitation's reward and buffering wrappers
        env = env.venv
    seen = env.envs[0].unwrapped._next_seed
    assert train_episode_seed(1) < seen < train_episode_seed(1) + 100, seen
    assert train_episode_seed(19) + 10_000 <= 900_000  # clear of the evaluation episodes
    with pytest.raises(ValueError, match='RL seed 20: expected 0 .. 19'):
        train_episode_seed(20)


def test_replaying_expert_trajectories_reproduces_them(config):
    trajectories = expert_trajectories(config, [1000, 1001, 1002])
    assert len(trajectories) == 3
    env = ChunkEnv(config)
    for seed, traj in zip((1000, 1001, 1002), trajectories):
        obs, _ = env.reset(seed=seed)
        np.testing.assert_allclose(obs, traj['obs'][0], atol=1e-6)
        total, truncated = 0.0, False
        for step, action in enumerate(traj['acts']):
            obs, reward, terminated, truncated, info = env.step(action)
            assert not terminated
            total += reward
            np.testing.assert_allclose(obs, traj['obs'][step + 1], atol=1e-5)
        assert truncated and info['success'] and not info['collision']
        run = tick_rollout(env.task, expert_policy(env.task, seed), seed, 60)
        assert rollout_return('obstacles2d', run, 4) == pytest.approx(total, abs=1e-6)
        assert total > info['progress'] + GOAL_BONUS  # the bonus of every chunk at the goal
    env.close()


def test_environment_rejects_a_scale_of_the_wrong_size(config):
    with pytest.raises(ValueError, match='scale has 3 values for 2 action dims'):
        ChunkEnv(ChunkEnvConfig('obstacles2d', {}, 2, 8, 4, 60, (0.1, 0.1, 0.1)))
    with pytest.raises(ValueError, match='executed_steps = 9 is invalid'):
        ChunkEnvConfig('obstacles2d', {}, 2, 8, 9, 60, (0.1, 0.1))


def test_shipped_reward_ranks_the_expert_above_perturbed_chunks(config):
    model = load_model(MODEL)
    reward = EnergyReward(model, variant='policy_value')
    result = check_reward(config, reward, np.asarray(model.metadata.action_std),
                          list(range(500_000, 500_003)), list(range(600_000, 600_003)))
    assert result.expert_outranks_pct >= 90.0
    fam = result.families
    assert fam['expert']['mean_reward'] > fam['expert+noise0.08']['mean_reward']
    assert fam['expert']['mean_reward'] > fam['random_walk']['mean_reward']
    assert -1.0 <= result.spearman <= 1.0 and result.n_rollouts == 3 * len(fam)


def test_smoke_run_writes_every_record(tmp_path, capsys):
    out = str(tmp_path)
    assert reward_eval.main(['--smoke', '--tasks', 'obstacles2d', '--out', out]) == 0
    with open(os.path.join(out, 'reward.json'), encoding='utf-8') as handle:
        result = json.load(handle)
    variants = ['centered', 'soft_value', 'policy_value']
    assert [r['reward_variant'] for r in result['checks']] == variants * 2
    assert [r['sigma_name'] for r in result['checks']] == ['min'] * 3 + ['rank'] * 3
    for record in result['checks']:
        assert {'task', 'spearman', 'expert_outranks_pct'} <= set(record)
    assert [r['reward_source'] for r in result['rl']] == ['true', 'energyflow', 'gail', 'airl']
    for record in result['rl']:
        assert {'task', 'reward_source', 'seeds', 'env_steps', 'success_mean',
                'success_std'} <= set(record)
        assert record['env_steps'] == 120 and record['gamma'] == 0.99
        assert record['train_freq'] == SACConfig().train_freq == 1
        assert len(record['success_per_seed']) == len(record['seeds'])
        assert record['success_mean'] == pytest.approx(
            sum(record['success_per_seed']) / len(record['seeds']))
        assert record['collision_mean'] == pytest.approx(
            sum(record['collision_per_seed']) / len(record['seeds']))
        assert 0.0 <= record['safe_success_mean'] <= record['success_mean']
    text = open(os.path.join(out, 'reward.md'), encoding='utf-8').read()
    assert '| obstacles2d | airl | 0.99 | 120 |' in text
    # A second reward variant adds an energyflow row; the true-reward row is replaced.
    assert reward_eval.main(['--smoke', '--tasks', 'obstacles2d', '--no-checks', '--sources',
                             'true,energyflow', '--rl-variant', 'centered', '--out', out]) == 0
    with open(os.path.join(out, 'reward.json'), encoding='utf-8') as handle:
        rl = json.load(handle)['rl']
    assert sorted((r['reward_source'], r.get('rl_variant')) for r in rl) == [
        ('airl', None), ('energyflow', 'centered'), ('energyflow', 'policy_value'),
        ('gail', None), ('true', None)]
    # Another discount is another row, for every source.
    assert reward_eval.main(['--smoke', '--tasks', 'obstacles2d', '--no-checks', '--sources',
                             'true', '--gamma', '0.5', '--out', out]) == 0
    with open(os.path.join(out, 'reward.json'), encoding='utf-8') as handle:
        rl = json.load(handle)['rl']
    assert sorted(r['gamma'] for r in rl if r['reward_source'] == 'true') == [0.5, 0.99]
    # So is another number of environment steps (a longer run does not replace a shorter one).
    longer = dict(next(r for r in rl if r['reward_source'] == 'true' and r['gamma'] == 0.5),
                  env_steps=150)
    reward_eval.write_results({'settings': {}, 'checks': [], 'rl': [longer]}, out)
    with open(os.path.join(out, 'reward.json'), encoding='utf-8') as handle:
        rl = json.load(handle)['rl']
    assert sorted((r['gamma'], r['env_steps']) for r in rl if r['reward_source'] == 'true') == [
        (0.5, 120), (0.5, 150), (0.99, 120)]
    assert '| obstacles2d | true | 0.5 | 150 |' in open(os.path.join(out, 'reward.md'),
                                                        encoding='utf-8').read()
    # Another update rate is another row; a record without one ran at the old default of one
    # update per two steps, and a new record at that rate replaces it.
    older = {k: v for k, v in longer.items() if k != 'train_freq'}
    for added in (older, dict(longer, train_freq=2)):
        reward_eval.write_results({'settings': {}, 'checks': [], 'rl': [added]}, out)
        with open(os.path.join(out, 'reward.json'), encoding='utf-8') as handle:
            rl = json.load(handle)['rl']
        assert sorted((r['env_steps'], r.get('train_freq', reward_eval.LEGACY_TRAIN_FREQ))
                      for r in rl if r['reward_source'] == 'true' and r['gamma'] == 0.5) == [
            (120, 1), (150, 1), (150, 2)]
    assert sum(r.get('train_freq') == 2 for r in rl) == 1
    table = open(os.path.join(out, 'reward.md'), encoding='utf-8').read()
    assert '| obstacles2d | true | 0.5 | 150 | 1 |' in table
    assert '| obstacles2d | true | 0.5 | 150 | 2 |' in table


def test_bad_arguments_give_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        reward_eval.main(['--sources', 'true,ppo'])
    assert "unknown source(s) ['ppo']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reward_eval.main(['--env-steps', '0'])
    assert '--env-steps = 0: expected a positive integer' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reward_eval.main(['--train-freq', '0'])
    assert '--train-freq = 0: expected a positive integer' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reward_eval.main(['--gamma', '1.0'])
    assert '--gamma 1.0: expected 0 <= gamma < 1' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a misspelt task must not silently skip the RL part
        reward_eval.main(['--rl-tasks', 'obstacle2d', '--out', str(tmp_path)])
    assert "unknown --rl-tasks task(s) ['obstacle2d']" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # ... nor silently use the default model
        reward_eval.main(['--model', 'obstacle2d=mine.onnx', '--out', str(tmp_path)])
    assert "unknown --model task(s) ['obstacle2d']" in capsys.readouterr().err
    (tmp_path / 'reward.json').write_text('{"checks": [')
    assert reward_eval.main(['--smoke', '--no-rl', '--out', str(tmp_path)]) == 2
    assert 'reward.json is not valid JSON' in capsys.readouterr().err
    (tmp_path / 'reward.json').unlink()
    with pytest.raises(ValueError, match='SACConfig.gamma = -0.1'):
        SACConfig(gamma=-0.1)
    with pytest.raises(ValueError, match='SACConfig.train_freq = 0 is invalid'):
        SACConfig(train_freq=0)
    code = reward_eval.main(['--smoke', '--no-rl', '--sigmas', 'tiny', '--out', str(tmp_path)])
    assert code == 2
    assert "sigma 'tiny': expected 'min', 'rank' or a number" in capsys.readouterr().err
    missing = str(tmp_path / 'none.onnx')
    code = reward_eval.main(['--smoke', '--model', f'obstacles2d={missing}', '--out',
                             str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith('energyflow-reward-eval: error:') and 'none.onnx' in err


def test_a_model_of_another_observation_layout_is_refused_by_name():
    # a model trained before a task's observation changed (Push-T's angle became cosine and
    # sine) must be refused with both layouts named, not fail later on an array shape
    from dataclasses import replace
    from types import SimpleNamespace

    meta = load_model(MODEL, warm_up=False).metadata
    renamed = replace(meta, obs_names=meta.obs_names[:-1] + ('goal_yaw',))
    model = SimpleNamespace(path='old.onnx', metadata=renamed)
    with pytest.raises(ValueError, match=r"old.onnx observes \[.*'goal_yaw'\] but task "
                                         r"obstacles2d observes \[.*'goal_y'\]: retrain"):
        reward_eval.env_config('obstacles2d', model, 2)
    assert reward_eval.env_config('obstacles2d', load_model(MODEL, warm_up=False), 2).n_obs == 2


def _rl(source, success, safe=None, steps=100):
    record = {'task': 'obstacles2d', 'reward_source': source, 'env_steps': steps, 'gamma': 0.5,
              'train_freq': 1, 'success_mean': success}
    return record if safe is None else {**record, 'safe_success_mean': safe}


def test_target_status_names_the_records_that_meet_or_miss_each_target():
    check = {'task': 'obstacles2d', 'reward_variant': 'centered', 'sigma_name': 'min',
             'model': 'm.onnx', 'spearman': 0.75, 'expert_outranks_pct': 89.0}
    rl = [_rl('energyflow', 0.9, 0.9), _rl('energyflow', 0.2, 0.2), _rl('true', 1.0, 0.95),
          _rl('gail', 0.95, 0.5), _rl('airl', 0.3, 0.1), _rl('true', 1.0, steps=50)]
    lines = reward_eval.target_status({'checks': [check], 'rl': rl})
    assert lines[0] == ('- obstacles2d, reward checks: **missed** (best centered at sigma min, '
                        '`m.onnx`: Spearman +0.750, expert outranks 89.0 %).')
    assert lines[1] == ('- obstacles2d, RL at gamma 0.5, 50 steps, 1 per update: not comparable '
                        '(energyflow, gail, airl not run).')
    assert lines[2].startswith('- obstacles2d, RL at gamma 0.5, 100 steps, 1 per update: '
                               'success **missed**: extracted 0.900, true 1.000, GAIL 0.950')
    assert '(not above gail 0.950); success without collision **met**: extracted 0.900' in lines[2]
    check['expert_outranks_pct'] = 90.0
    assert reward_eval.target_status({'checks': [check], 'rl': []})[0].startswith(
        '- obstacles2d, reward checks: **met** (1 of 1 rows; centered')


def _rl_record(**changes):
    return {'task': 'obstacles2d', 'reward_source': 'true', 'seeds': [0, 1, 2],
            'env_steps': 100, 'success_mean': 0.5, 'success_std': 0.1, 'progress_mean': 0.5,
            'collision_mean': 0.0, 'train_s': 1.0, 'eval_episodes': 30, 'demo_episodes': 200,
            'gamma': 0.99, 'train_freq': 1, **changes}


def test_results_of_other_runs_are_rows_of_their_own_and_say_what_they_ran_with(tmp_path):
    out = str(tmp_path)
    full = {'obstacles2d': {'mode': 'full', 'demo_episodes': 200, 'machine': 'box',
                            'torch': '2.13'}}
    # an older file: records without their run's settings take their task's
    (tmp_path / 'reward.json').write_text(json.dumps(
        {'settings': full, 'checks': [], 'rl': [_rl_record()]}))
    smoke = {'obstacles2d': {**full['obstacles2d'], 'mode': 'smoke', 'demo_episodes': 5}}
    reward_eval.write_results({'settings': smoke, 'checks': [],
                               'rl': [_rl_record(success_mean=0.0, demo_episodes=5)]}, out)
    rl = json.loads((tmp_path / 'reward.json').read_text())['rl']
    assert sorted((r['mode'], r['demo_episodes'], r['success_mean']) for r in rl) == [
        ('full', 200, 0.5), ('smoke', 5, 0.0)]
    text = (tmp_path / 'reward.md').read_text()
    assert '- obstacles2d (full): 200 demonstrations; box, torch 2.13 (0 check rows, 1 RL ' \
        'rows).' in text
    assert '- obstacles2d (smoke): 5 demonstrations; box, torch 2.13 (0 check rows, 1 RL ' \
        'rows).' in text


def test_a_results_file_of_an_unknown_layout_is_refused_not_emptied(tmp_path):
    flat = {'settings': {'mode': 'full'}, 'checks': [], 'rl': [_rl_record()]}
    (tmp_path / 'reward.json').write_text(json.dumps(flat))
    with pytest.raises(ValueError, match='reward.json keeps its settings in a layout'):
        reward_eval.write_results({'settings': {}, 'checks': [], 'rl': [_rl_record()]},
                                  str(tmp_path))
    assert json.loads((tmp_path / 'reward.json').read_text()) == flat


def test_smoke_results_never_default_to_the_committed_files():
    assert reward_eval._parse(['--smoke']).out == 'outputs/reward_smoke'
    assert reward_eval._parse([]).out == 'benchmarks/results'


def test_the_committed_reward_table_is_the_rendering_of_its_records():
    # reward.md is read, reward.json is what was measured: a hand edit of the table, or a
    # renderer changed without writing the table again, shows here.
    results = os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'results')
    with open(os.path.join(results, 'reward.json'), encoding='utf-8') as f:
        data = json.load(f)
    with open(os.path.join(results, 'reward.md'), encoding='utf-8') as f:
        assert f.read() == reward_eval._markdown(data)
