"""The trainer: validated configs, deterministic resumable training, checkpoints, learning."""

import csv
import dataclasses
import math
import os
import re

import numpy as np
import pytest
import torch
import yaml

from energyflow_ros.core.config import ConfigError, config_from_dict, config_to_dict
from energyflow_ros.core.methods import METHODS
from energyflow_ros.data.dataset import DemoError, DemoSet
from energyflow_ros.sim.demos import collect_demos
from energyflow_ros.sim.rollout import evaluate_policy
from energyflow_ros.training.checkpoint import load_checkpoint
from energyflow_ros.training.data_source import (
    BatchOrder, DataConfig, expert_cache_path, load_demos, prepare_data, TRAIN_META_KEYS,
)
from energyflow_ros.training.ema import ExponentialMovingAverage
from energyflow_ros.training.policy import ChunkPolicy
from energyflow_ros.training.trainer import (
    apply_overrides, deterministic_backends, load_train_config, lr_factor, train, TrainConfig,
    TrainError,
)
from test.test_data_lerobot import write_lerobot
from test.test_data_robomimic import write_robomimic
from test.test_data_rosbag import arm_messages, SPEC as BAG_SPEC, write_bag

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_METHODS = {
    'rnce': {'n_negatives': 8, 'proposal': {'n_components': 4, 'hidden': 32, 'depth': 1},
             'langevin': {'n_particles': 8, 'n_scales': 1, 'steps_per_scale': 2,
                          'step_size': 1e-3, 'noise': 0.0}},
    'irnce': {'n_negatives': 8, 'proposal': {'n_components': 4, 'hidden': 32, 'depth': 1},
              'langevin': {'n_particles': 8, 'n_scales': 2, 'steps_per_scale': 1}},
    'energyflow': {'flow': {'n_particles': 4, 'n_steps': 3}},
    'ibc': {'n_negatives': 8, 'dfo': {'n_samples': 16, 'iterations': 2}},
    'diffusion': {'ddim': {'train_steps': 20, 'sample_steps': 3}},
    'mse': {},
}


@pytest.fixture(scope='module')
def demo_npz(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('demos') / 'obstacles2d.npz')
    collect_demos('obstacles2d', 20, seed=0).save_npz(path)
    return path


def tiny(out_dir, npz, *extra, method='mse', steps=20):
    """Overrides for a tiny, fast run on the obstacles2d demos in ``npz``."""
    return load_train_config(None, [
        'task=obstacles2d', 'data.source=npz', f'data.path={npz}', f'method={method}',
        f'method_config={{{method}: {TINY_METHODS[method]}}}', 'backbone.mlp.hidden=16',
        'backbone.mlp.depth=2', 'horizon=4', 'executed_steps=2', 'optim.batch_size=16',
        f'optim.steps={steps}', 'optim.lr=1e-3', 'optim.warmup_steps=2', 'eval.final=false',
        'checkpoint_every=5', 'log_every=5', 'progress=false', 'device=cpu',
        f'out_dir={out_dir}', *extra])


def quiet(_):
    """Swallow the trainer's progress lines."""


@pytest.mark.parametrize('name', ['obstacles2d', 'pusht', 'blockpush'])
def test_shipped_configs_load_and_round_trip(name):
    cfg = load_train_config(os.path.join(REPO, 'config', f'train_{name}.yaml'))
    assert cfg.task == name
    assert set(cfg.method_config) == set(METHODS), 'every method is configured'
    assert config_from_dict(TrainConfig, config_to_dict(cfg)) == cfg


@pytest.mark.parametrize('data, unknown', [
    ({'optim': {'lrr': 1.0}}, "['lrr']"), ({'epochs': 3}, "['epochs']"),
    ({'method_config': {'rnce': {'negatives': 3}}}, "['negatives']"),
    ({'eval': {'episode': 3}}, "['episode']"), ({'data': {'sorce': 'npz'}}, "['sorce']")])
def test_unknown_fields_are_rejected_by_name(data, unknown):
    with pytest.raises(ConfigError, match=r'unknown field\(s\) ' + re.escape(unknown)):
        config_from_dict(TrainConfig, data, 'config')


@pytest.mark.parametrize('overrides, field', [
    (['executed_steps=9', 'horizon=8'], 'executed_steps'), (['method=gail'], 'method'),
    (['method_config={gail: {}}'], 'method_config'), (['device=tpu'], 'device'),
    (['eval.every=-1'], 'every'), (['optim.lr=0'], 'lr'), (['optim.lr=fast'], 'lr'),
    (['ema_decay=1.0'], 'ema_decay'), (['task=my_arm'], 'task'),
    (['method_config={rnce: {n_negatives: 0}}'], 'n_negatives'),
    (['backbone.kind=unet', 'horizon=6'], 'channels'), (['data.source=csv'], 'source'),
    (['data.source=npz'], 'path'), (['optim.batch_size=2.5'], 'batch_size'),
    (['method_config.energyflow.flow.t_end=abc'], 't_end .* expected a number'),
    (['method_config.energyflow.flow.warm_steps=0'], 'warm_steps = 0 is invalid: expected a pos'),
    (['method_config.ibc.dfo.shrink=[0.5]'], 'shrink .* expected a number'),
    (['backbone.unet.channels=64'], 'channels = 64 is invalid: expected a list'),
    (['data.obs_keys=robot0_eef_pos'], 'obs_keys .* expected a list'),
    (['eval.warm_start=3'], 'warm_start = 3 is invalid: expected true or false')])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_train_config(None, overrides)


def test_overrides_parse_yaml_values_and_reject_bad_keys():
    data = apply_overrides({'optim': {'lr': 1.0}}, [
        'optim.lr=1e-3', 'backbone.unet.channels=[8, 16]', 'eval.warm_start=true', 'out_dir=x'])
    assert data['optim']['lr'] == pytest.approx(1e-3) and isinstance(data['optim']['lr'], float)
    assert data['backbone']['unet']['channels'] == [8, 16]
    assert data['eval']['warm_start'] is True and data['out_dir'] == 'x'
    for bad in ('optim.lr', '=3', 'optim..lr=1'):
        with pytest.raises(ConfigError, match='bad override'):
            apply_overrides({}, [bad])
    with pytest.raises(ConfigError, match='seed is not a mapping'):
        apply_overrides({'seed': 1}, ['seed.x=1'])


def test_lr_factor_warms_up_linearly_then_decays_by_cosine():
    assert lr_factor(0, 10, 110, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110, 0.0) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, 0.0) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(35, 10, 110, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_batch_order_covers_each_epoch_once_and_resumes_exactly():
    order = BatchOrder(10, 4, seed=3)
    first = np.concatenate([order.next() for _ in range(5)])  # 20 = two epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    a, b = BatchOrder(10, 4, seed=3), BatchOrder(10, 4, seed=3)
    for _ in range(3):
        a.next()
        b.next()
    c = BatchOrder(10, 4, seed=3)
    c.load_state_dict(b.state_dict())
    assert all(np.array_equal(a.next(), c.next()) for _ in range(7))
    assert not np.array_equal(BatchOrder(10, 10, 4).next(), BatchOrder(10, 10, 3).next())


def test_ema_warms_up_and_converges_to_constant_weights():
    net = torch.nn.Linear(2, 1)
    ema = ExponentialMovingAverage(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    start = ema.model.weight.clone()
    ema.update(net)   # decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.model.weight, 0.1 * start + 0.9)
    for _ in range(200):
        ema.update(net)
    assert torch.allclose(ema.model.weight, torch.ones(1, 2), atol=1e-6)
    assert ema.current_decay() == 0.9 and not ema.model.weight.requires_grad
    with pytest.raises(ValueError, match='decay'):
        ExponentialMovingAverage(net, 1.0)


def test_ema_spectral_norm_divides_by_the_averaged_weights_norm():
    # The U-Net energy's head is spectrally normalised. Its power-iteration vectors are
    # buffers: averaged like weights they shrank (the top singular direction moves while
    # training), and the evaluated layer divided its weight by a far too small norm.
    torch.manual_seed(0)
    sn = torch.nn.utils.parametrizations.spectral_norm
    net = torch.nn.Sequential(sn(torch.nn.Linear(8, 32)), torch.nn.SiLU(),
                              sn(torch.nn.Linear(32, 32)), torch.nn.SiLU(),
                              sn(torch.nn.Linear(32, 1)))
    ema = ExponentialMovingAverage(net, decay=0.99)
    optim = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(256, 8)
    y = (x[:, :3] ** 2).sum(1, keepdim=True)
    for _ in range(600):
        loss = ((net(x) - y) ** 2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        ema.update(net)
    with torch.no_grad():
        for index in (0, 2, 4):
            weight = ema.model[index].parametrizations.weight
            norm = weight[0]
            true = torch.linalg.matrix_norm(weight.original, 2)
            estimate = torch.dot(norm._u, weight.original @ norm._v)
            assert abs(estimate / true - 1) < 0.01, (index, float(estimate), float(true))
            assert torch.allclose(ema.model[index].weight, weight.original / true, rtol=0.01)


def test_cuda_training_uses_deterministic_cudnn_algorithms(monkeypatch):
    # cuDNN's benchmarked, non-deterministic convolution kernels made a seed (and a resumed
    # run) give other weights on a GPU; the flags are process-wide, set for a CUDA trainer
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', False)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    deterministic_backends('cpu')
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    deterministic_backends(torch.device('cuda', 0))
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_expert_source_is_cached_and_reloaded_identically(tmp_path):
    cfg = DataConfig(source='expert', n_episodes=3, seed=5, cache_dir=str(tmp_path))
    first = load_demos(cfg, 'obstacles2d')
    cache = expert_cache_path(cfg, 'obstacles2d', {})
    assert cache.startswith(str(tmp_path)) and DemoSet.load_npz(cache)
    assert load_demos(cfg, 'obstacles2d').fingerprint() == first.fingerprint()
    assert expert_cache_path(cfg, 'obstacles2d', {'n_obstacles': 3}) != cache
    fixed = DataConfig(source='expert', n_episodes=3, seed=5, cache_dir=str(tmp_path),
                       episode_ticks=60)
    assert expert_cache_path(fixed, 'obstacles2d', {}) != cache
    from energyflow_ros.sim.registry import task_info
    info = task_info('obstacles2d')
    assert expert_cache_path(cfg, 'obstacles2d', {}, info) == cache
    newer = dataclasses.replace(info, revision=info.revision + 1)  # its seeds produce others
    assert expert_cache_path(cfg, 'obstacles2d', {}, newer) != cache
    assert load_demos(fixed, 'obstacles2d').episode_ends.tolist() == [60, 120, 180]
    with pytest.raises(ConfigError, match='episode_ticks'):
        DataConfig(episode_ticks=-1)
    with pytest.raises(DemoError, match='not found'):
        load_demos(DataConfig(source='npz', path=str(tmp_path / 'absent.npz')), 'x')
    with pytest.raises(DemoError, match='not found'):
        load_demos(DataConfig(source='rosbag', path=str(tmp_path / 'nobag'),
                              bag_spec='spec.yaml'), 'x')


def test_a_saved_demonstration_set_keeps_its_meta(tmp_path):
    demos = DemoSet(obs=np.zeros((4, 2)), actions=np.zeros((4, 1)), episode_ends=np.array([4]),
                    obs_names=['a', 'b'], action_names=['u'],
                    meta={'control_hz': np.float64(10.0), 'episode_seeds': [3, 4],
                          'task_kwargs': {'k': np.int64(2)}, 'source': 'scripted_expert'})
    demos.save_npz(str(tmp_path / 'd.npz'))
    meta = DemoSet.load_npz(str(tmp_path / 'd.npz')).meta
    assert meta == {'control_hz': 10.0, 'episode_seeds': [3, 4], 'task_kwargs': {'k': 2},
                    'source': str(tmp_path / 'd.npz')}
    # files from before (the meta's Python repr): read where it is a plain literal, else none
    for text, expected in (("{'episode_seeds': [1, 2]}", {'episode_seeds': [1, 2]}),
                           ("{'rate': np.float64(1.0)}", {})):
        np.savez(tmp_path / 'old.npz', obs=demos.obs, actions=demos.actions,
                 episode_ends=demos.episode_ends, meta=np.array(text))
        assert DemoSet.load_npz(str(tmp_path / 'old.npz')).meta == {
            **expected, 'source': str(tmp_path / 'old.npz')}


def test_evaluating_on_the_demonstration_episodes_is_refused(tmp_path):
    cfg = load_train_config(os.path.join(REPO, 'config', 'train_obstacles2d.yaml'), [
        'data.n_episodes=3', 'data.seed=5', f'data.cache_dir={tmp_path}', 'eval.seed=7',
        'eval.episodes=2', f'out_dir={tmp_path / "run"}', 'optim.steps=2', 'progress=false'])
    for attempt in range(2):    # collected, then from the cache
        with pytest.raises(ConfigError, match=r'eval.seed = 7 is invalid: expected evaluation '
                                              r'episodes that are not demonstration episodes; '
                                              r'1 of 2 are \(seeds \[7\]'):
            train(cfg, log=quiet)
    assert not (tmp_path / 'run').exists()


def test_cached_expert_data_of_an_older_observation_layout_is_collected_again(tmp_path):
    # the cache key is task, arguments, count and seed: a task whose observation changed
    # (Push-T's angle became cosine and sine) must not train on the old file's layout
    cfg = DataConfig(source='expert', n_episodes=3, seed=5, cache_dir=str(tmp_path))
    fresh = load_demos(cfg, 'obstacles2d')
    cache = expert_cache_path(cfg, 'obstacles2d', {})
    old = DemoSet.load_npz(cache)
    renamed = DemoSet(obs=old.obs[:, :-1], actions=old.actions, episode_ends=old.episode_ends,
                      obs_names=old.obs_names[:-1], action_names=old.action_names,
                      meta=old.meta)
    renamed.save_npz(cache)
    again = load_demos(cfg, 'obstacles2d')
    assert again.obs_names == fresh.obs_names and again.fingerprint() == fresh.fingerprint()
    assert DemoSet.load_npz(cache).obs_names == fresh.obs_names  # the cache is replaced
    renamed.save_npz(cache)  # the trainer passes the task's info it already has: same check
    from energyflow_ros.sim.registry import make_task
    info = make_task('obstacles2d').info
    assert load_demos(cfg, 'obstacles2d', info=info).obs_names == fresh.obs_names


def test_checkpoints_hold_everything_to_resume_and_export(tmp_path, demo_npz):
    cfg = tiny(tmp_path / 'run', demo_npz, 'eval.final=true', 'eval.episodes=2',
               'eval.max_steps=10', method='rnce', steps=12)
    result = train(cfg, log=quiet)
    final = load_checkpoint(result.final_path)
    meta = final.payload['train_meta']
    assert tuple(meta) == TRAIN_META_KEYS
    assert meta['task'] == 'obstacles2d' and meta['obs_names'][0] == 'robot_x'
    assert meta['joint_names'] == meta['action_names'] == ['robot_x', 'robot_y']
    assert (meta['n_obs'], meta['horizon'], meta['executed_steps']) == (2, 4, 2)
    assert meta['control_period_s'] == pytest.approx(0.1)
    assert meta['action_low'] == [0.0, 0.0] and meta['action_high'] == [1.0, 1.0]
    assert meta['data_sha256'] == DemoSet.load_npz(demo_npz).fingerprint()
    for key in ('ema_state_dict', 'optimizer', 'scheduler', 'step', 'rng', 'train_config',
                'metrics', 'raw_state_dict'):
        assert key in final.payload, key
    assert final.payload['step'] == 12 and final.payload['weights'] == 'ema'
    state, ema = final.payload['state_dict'], final.payload['ema_state_dict']
    assert all(torch.equal(state[k], ema[k]) for k in state)
    latest = torch.load(result.checkpoint_path, weights_only=False)
    raw = latest['state_dict']
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), 'checkpoint.pt keeps raw weights'
    assert config_from_dict(TrainConfig, latest['train_config']) == cfg
    with open(tmp_path / 'run' / 'metrics.csv') as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r['step']) for r in rows] == [5, 10, 12]
    assert {'loss', 'proposal_nll', 'lr', 'wall_s', 'eval_success'} <= set(rows[0])
    assert rows[-1]['eval_success'] != '' and rows[0]['eval_success'] == ''
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == [
        'checkpoint.pt', 'final.pt', 'metrics.csv', 'train_config.yaml']


@pytest.mark.parametrize('method', sorted(METHODS))
def test_every_method_trains_and_its_checkpoint_drives_a_policy(tmp_path, demo_npz, method):
    result = train(tiny(tmp_path, demo_npz, method=method, steps=3), log=quiet)
    assert all(math.isfinite(v) for k, v in result.trainer.metrics[-1].items()
               if k not in ('step', 'epoch'))
    policy = ChunkPolicy.from_checkpoint(load_checkpoint(result.final_path), seed=1)
    obs = np.array([0.1, 0.5, 0.9, 0.5])
    actions = np.array([policy(obs) for _ in range(5)])
    assert actions.shape == (5, 2) and np.all(np.isfinite(actions))   # (clipped to bounds)
    assert policy.n_plans == 3, 'replans after every 2 executed steps'


def _weights(path):
    payload = torch.load(path, weights_only=False)
    return payload['state_dict'], payload['raw_state_dict'], payload['optimizer']['state']


def test_stopped_then_resumed_run_equals_an_uninterrupted_run(tmp_path, demo_npz):
    extra = ('eval.every=5', 'eval.episodes=1', 'eval.max_steps=6')
    whole = train(tiny(tmp_path / 'a', demo_npz, *extra, method='rnce', steps=17), log=quiet)
    cfg = tiny(tmp_path / 'b', demo_npz, *extra, method='rnce', steps=17)
    part = train(cfg, stop_after=8, log=quiet)
    assert part.final_path is None and part.trainer.step == 8
    with pytest.raises(TrainError, match='--resume'):
        train(cfg, log=quiet)
    with pytest.raises(TrainError, match="different \\['optim'\\]"):
        train(tiny(tmp_path / 'b', demo_npz, *extra, 'optim.lr=0.1', method='rnce', steps=17),
              resume=True, log=quiet)
    resumed = train(cfg, resume=True, log=quiet)
    for a, b in zip(_weights(whole.final_path), _weights(resumed.final_path)):
        assert a.keys() == b.keys()
        for key in a:
            tensors = [(a[key], b[key])] if torch.is_tensor(a[key]) else [
                (a[key][k], b[key][k]) for k in a[key]]
            assert all(torch.equal(x, y) for x, y in tensors), key

    def timeless(rows):
        return [{k: v for k, v in row.items() if not k.endswith('wall_s')} for row in rows]

    assert timeless(whole.trainer.metrics) == timeless(resumed.trainer.metrics)


def test_a_run_resumes_after_its_warm_start_settings_change(tmp_path, demo_npz):
    # How a warm start samples does not touch the weights: the Push-T config changed it after
    # its quality runs were trained. Anything else in method_config still refuses.
    def cfg(*extra):
        return tiny(tmp_path / 'run', demo_npz, *extra, method='energyflow', steps=10)

    assert train(cfg(), stop_after=5, log=quiet).trainer.step == 5
    with pytest.raises(TrainError, match="different \\['method_config'\\]"):
        train(cfg('method_config.energyflow.schedule.sigma_max=5.0'), resume=True, log=quiet)
    warm = ('method_config.energyflow.flow.warm_start_t=0.6',
            'method_config.energyflow.flow.warm_steps=2')
    final = train(cfg(*warm), resume=True, log=quiet).final_path
    flow = load_checkpoint(final).payload['train_config']['method_config']['energyflow']['flow']
    assert (flow['warm_start_t'], flow['warm_steps']) == (0.6, 2)
    # a finished run resumed with other settings: final.pt (what gets exported) carries them
    final = train(cfg('method_config.energyflow.flow.warm_start_t=0.7'), resume=True,
                  log=quiet).final_path
    flow = load_checkpoint(final).payload['train_config']['method_config']['energyflow']['flow']
    assert flow['warm_start_t'] == 0.7 and 'warm_steps' not in flow


def test_a_dataset_of_an_unregistered_robot_trains_with_data_bounds(tmp_path, demo_npz):
    base = ['task=my_arm', 'eval.final=false']
    recorded = DemoSet.load_npz(demo_npz)        # the file says its rate (the expert's 10 Hz)
    assert recorded.meta['control_hz'] == 10.0
    bare = DemoSet(recorded.obs, recorded.actions, recorded.episode_ends, recorded.obs_names,
                   recorded.action_names, meta={})
    bare.save_npz(str(tmp_path / 'bare.npz'))   # ... this one does not
    with pytest.raises(DemoError, match='control_hz'):
        train(tiny(tmp_path / 'a', str(tmp_path / 'bare.npz'), *base), log=quiet)
    result = train(tiny(tmp_path / 'c', demo_npz, *base), log=quiet)
    period = load_checkpoint(result.final_path).payload['train_meta']['control_period_s']
    assert period == pytest.approx(0.1)
    result = train(tiny(tmp_path / 'b', demo_npz, *base, 'data.control_hz=20'), log=quiet)
    meta = load_checkpoint(result.final_path).payload['train_meta']
    demos = DemoSet.load_npz(demo_npz)
    assert meta['task'] == 'my_arm' and meta['control_period_s'] == pytest.approx(0.05)
    np.testing.assert_allclose(meta['action_low'], demos.actions.min(axis=0))
    np.testing.assert_allclose(meta['action_high'], demos.actions.max(axis=0))


def _dataset_sources(tmp_path):
    """(data overrides, action names, control period) of a small file of every reader."""
    bag = write_bag(tmp_path / 'bag', arm_messages(30))
    spec = tmp_path / 'spec.yaml'
    spec.write_text(yaml.safe_dump(BAG_SPEC))
    h5 = write_robomimic(tmp_path / 'demos.hdf5')
    lerobot = write_lerobot(tmp_path / 'lerobot')
    return [
        (['data.source=rosbag', f'data.path={bag}', f'data.bag_spec={spec}'],
         ['shoulder', 'elbow', 'wrist'], 0.1),
        (['data.source=robomimic', f'data.path={h5}', 'data.obs_keys=[eef_pos, gripper]'],
         ['action_0', 'action_1'], 0.05),
        (['data.source=lerobot', f'data.path={lerobot}'], ['pan', 'lift'], 1 / 30),
    ]


def test_rosbag_robomimic_and_lerobot_data_train(tmp_path, demo_npz):
    for i, (data, actions, period) in enumerate(_dataset_sources(tmp_path)):
        cfg = tiny(tmp_path / f'run{i}', demo_npz, 'task=my_arm', 'n_obs=1', *data, steps=2)
        lines = []
        meta = load_checkpoint(train(cfg, log=lines.append).final_path).payload['train_meta']
        assert meta['action_names'] == meta['joint_names'] == actions, data[0]
        assert meta['control_period_s'] == pytest.approx(period), data[0]
        # what was read is summarised before training: frames kept and dropped, every dim
        summary = lines[0].splitlines()
        assert summary[0].startswith('Demonstrations from') and 'frames dropped' in lines[0]
        assert any(line.split()[:1] == [actions[-1]] for line in summary), lines[0]


class StraightToGoal:
    """The trivial policy: head straight for the goal (always clips an obstacle)."""

    def __call__(self, obs):
        return obs[2:4]


def test_short_rnce_training_learns_to_pass_the_obstacles(tmp_path):
    cfg = load_train_config(os.path.join(REPO, 'config', 'train_obstacles2d.yaml'), [
        'data.n_episodes=100', f'data.cache_dir={tmp_path}', f'out_dir={tmp_path / "run"}',
        'backbone.mlp.hidden=128', 'optim.steps=400', 'optim.lr=2e-3', 'optim.warmup_steps=20',
        'ema_decay=0.99', 'eval.every=0', 'eval.episodes=20', 'progress=false', 'device=cpu'])
    result = train(cfg, log=quiet)
    learned = {k: v for k, v in result.trainer.metrics[-1].items() if k.startswith('eval_')}
    trivial = evaluate_policy('obstacles2d', lambda task: StraightToGoal(), 20,
                              seed=cfg.eval.seed)
    assert trivial['safe_success_mean'] == 0.0
    assert learned['eval_safe_success'] >= 0.6, learned
    assert learned['eval_n_modes'] >= 2, 'the learned policy passes on more than one side'


def test_a_finished_run_resumed_with_other_eval_settings_is_evaluated_again(tmp_path, demo_npz):
    # energyflow-eval reuses finished runs; their reported evaluation must be of the asked
    # settings, not the recorded one of other settings
    def cfg(*extra):
        return tiny(tmp_path / 'run', demo_npz, 'eval.final=true', 'eval.episodes=1',
                    *extra, steps=6)

    first = train(cfg('eval.max_steps=4'), log=quiet).trainer.metrics
    assert first[-1]['eval_n_steps'] == 4
    lines = []
    again = train(cfg('eval.max_steps=9', 'eval.episodes=2'), resume=True,
                  log=lines.append).trainer
    assert again.step == 6 and again.metrics[:-1] == first  # nothing trained again
    assert again.metrics[-1]['step'] == 6 and again.metrics[-1]['eval_n_steps'] == 9
    assert any('evaluated again' in line for line in lines)
    with open(tmp_path / 'run' / 'metrics.csv', encoding='utf-8') as handle:
        assert len(list(csv.DictReader(handle))) == len(again.metrics)
    # kept: the same settings once more reuse it without evaluating, other timing fields too
    same = train(cfg('eval.max_steps=9', 'eval.episodes=2', 'eval.every=3'), resume=True,
                 log=quiet).trainer
    assert same.metrics == again.metrics
    # an evaluation from before the task reported its headline metric is done again
    path = tmp_path / 'run' / 'checkpoint.pt'
    payload = torch.load(path, weights_only=False)
    key = f'eval_{same.metric_name}'
    assert same.metric_name != 'success' and key in payload['metrics'][-1]
    del payload['metrics'][-1][key]
    torch.save(payload, path)
    lines = []
    redone = train(cfg('eval.max_steps=9', 'eval.episodes=2'), resume=True,
                   log=lines.append).trainer
    assert key in redone.metrics[-1] and any('evaluated again' in line for line in lines)


def test_a_run_without_a_flow_section_resumes_with_warm_start_settings_added(
        tmp_path, demo_npz):
    def cfg(*extra):
        return tiny(tmp_path / 'run', demo_npz, *extra, method='energyflow', steps=6)

    base = cfg()
    base = dataclasses.replace(base, method_config={'energyflow': {
        k: v for k, v in base.method_config['energyflow'].items() if k != 'flow'}})
    assert train(base, stop_after=3, log=quiet).trainer.step == 3
    warm = dataclasses.replace(base, method_config={'energyflow': {
        **base.method_config['energyflow'], 'flow': {'warm_start_t': 0.6}}})
    assert train(warm, resume=True, log=quiet).trainer.step == 6


def test_a_run_written_before_a_config_field_existed_resumes(tmp_path, demo_npz):
    # checkpoints of runs started before backbone.mlp.energy_head existed lack the field
    cfg = tiny(tmp_path / 'run', demo_npz, method='energyflow', steps=6)
    assert train(cfg, stop_after=3, log=quiet).trainer.step == 3
    path = tmp_path / 'run' / 'checkpoint.pt'
    payload = torch.load(path, weights_only=False)
    del payload['train_config']['backbone']['mlp']['energy_head']
    torch.save(payload, path)
    assert train(cfg, resume=True, log=quiet).trainer.step == 6
    # a field that did change is still refused
    payload['train_config']['backbone']['mlp']['energy_head'] = 'squared_norm'
    torch.save(payload, path)
    with pytest.raises(TrainError, match="different \\['backbone'\\]"):
        train(cfg, resume=True, log=quiet)


def test_a_checkpoint_from_another_device_resumes_with_a_reseeded_generator(
        tmp_path, demo_npz):
    cfg = tiny(tmp_path / 'run', demo_npz, steps=10)
    train(cfg, stop_after=5, log=quiet)
    path = tmp_path / 'run' / 'checkpoint.pt'
    payload = torch.load(path, weights_only=False)
    assert payload['rng']['device'] == 'cpu'
    payload['rng'] = {**payload['rng'], 'device': 'cuda',
                      'generators': [torch.zeros(16, dtype=torch.uint8)]}  # a CUDA state
    torch.save(payload, path)
    lines = []
    result = train(cfg, resume=True, log=lines.append)
    assert result.trainer.step == 10 and result.final_path
    assert any('random state was saved on cuda; continuing on cpu' in line for line in lines)


def test_data_whose_names_are_the_tasks_in_another_order_is_put_in_the_tasks_order():
    from energyflow_ros.sim.registry import task_info

    info = task_info('blockpush')
    rng = np.random.default_rng(0)
    frames = 40
    low, high = np.array(info.action_low), np.array(info.action_high)
    actions = rng.uniform(low, high, (frames, 2))
    obs = rng.normal(size=(frames, len(info.obs_names)))
    swapped = DemoSet(obs=obs[:, ::-1], actions=actions[:, ::-1], episode_ends=[frames],
                      obs_names=list(info.obs_names)[::-1],
                      action_names=list(info.action_names)[::-1])
    data = prepare_data(swapped, DataConfig(source='npz', path='x.npz'), 'blockpush', 2, 4, 2,
                        info)
    assert data.meta['joint_names'] == list(info.action_names)
    assert data.meta['obs_names'] == list(info.obs_names)
    assert data.meta['action_low'] == list(low) and data.meta['action_high'] == list(high)
    in_order = prepare_data(DemoSet(obs=obs, actions=actions, episode_ends=[frames],
                                    obs_names=list(info.obs_names),
                                    action_names=list(info.action_names)),
                            DataConfig(source='npz', path='x.npz'), 'blockpush', 2, 4, 2, info)
    assert torch.equal(data.chunks, in_order.chunks) and torch.equal(data.obs, in_order.obs)


def test_a_finished_run_resumed_with_other_sampler_settings_is_evaluated_with_them(
        tmp_path, demo_npz):
    # EnergyFlow's particle and step counts only drive its sampler: no retraining, but the
    # reported evaluation and final.pt must be of the new ones
    def cfg(*extra):
        return tiny(tmp_path / 'run', demo_npz, 'eval.final=true', 'eval.episodes=1',
                    'eval.max_steps=4', *extra, method='energyflow', steps=6)

    first = train(cfg(), log=quiet).trainer.metrics
    again = train(cfg('method_config.energyflow.flow.n_particles=2',
                      'method_config.energyflow.flow.n_steps=2'), resume=True, log=quiet)
    assert again.trainer.step == 6 and len(again.trainer.metrics) == len(first) + 1
    assert 'eval_success' in again.trainer.metrics[-1]
    flow = load_checkpoint(again.final_path).payload['train_config']['method_config'][
        'energyflow']['flow']
    assert (flow['n_particles'], flow['n_steps']) == (2, 2)
