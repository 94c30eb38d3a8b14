"""A tiny run of benchmarks/sampler_cost.py on freshly trained tiny checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from energyflow_ros.cli.evaluate import config_path, SMOKE, SMOKE_METHODS
from energyflow_ros.training.trainer import load_train_config, train

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'benchmarks', 'sampler_cost.py')


@pytest.fixture(scope='module')
def bench():
    """The benchmark script as a module."""
    spec = importlib.util.spec_from_file_location('sampler_cost_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('sampler_cost')
    paths = {}
    for method in ('energyflow', 'diffusion', 'rnce'):
        cfg = load_train_config(config_path('obstacles2d', None), [
            *SMOKE, f'method={method}', f'method_config={json.dumps(SMOKE_METHODS)}',
            'eval.every=0', 'eval.final=false', 'progress=false', 'device=cpu',
            f'data.cache_dir={root / "cache"}', f'out_dir={root / method}'])
        train(cfg, log=lambda line: None)
        paths[method] = str(root / method / 'final.pt')
    return paths


def test_tiny_run_writes_one_record_per_setting(bench, checkpoints, tmp_path, capsys,
                                                monkeypatch):
    seeds = []

    def rollout(task, policy, seed):
        seeds.append(seed)
        return real_rollout(task, policy, seed)
    real_rollout = bench.rollout
    monkeypatch.setattr(bench, 'rollout', rollout)
    exports = []

    def export_checkpoint(checkpoint, path, **kwargs):
        exports.append(kwargs)
        return real_export(checkpoint, path, **kwargs)
    real_export = bench.export_checkpoint
    monkeypatch.setattr(bench, 'export_checkpoint', export_checkpoint)
    assert bench.main(['--energy', checkpoints['energyflow'], '--diffusion',
                       checkpoints['diffusion'], '--rnce', checkpoints['rnce'],
                       '--rnce-settings', '3:2,2:0', '--episodes', '1', '--cold-steps', '4,2',
                       '--warm-steps', '1', '--hold-steps', '1', '--ddim-steps', '2',
                       '--particles', '4', '--lean-warm', '2:1,1:1:2',
                       '--warm-start-times', '0.8', '--warm-particles', '4,2',
                       '--warm-at', '2:2:0.7',
                       '--threads', '1', '--episode-seed', '777', '--tag', 'probe',
                       '--out', str(tmp_path)]) == 0
    assert set(seeds) == {777}          # every setting's one episode, on the asked seed
    # settings that differ only in particles or refilling share their graphs: 9 families
    assert len(exports) == 9
    assert '## Same-run ratios' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ['sampler_cost-obstacles2d-probe-cpu.json',
                                            'sampler_cost-obstacles2d-probe-cpu.md']
    data = json.loads((tmp_path / 'sampler_cost-obstacles2d-probe-cpu.json').read_text())
    recs = {r['setting']: r for r in data['records']}
    assert set(recs) == {'energyflow cold K=4', 'energyflow cold K=2', 'energyflow warm K=1',
                         'energyflow warm K=1 hold', 'energyflow warm K=1 N=2',
                         'energyflow warm K=1 N=1 cold K=2',
                         'energyflow warm K=1 t=0.8', 'energyflow warm K=1 t=0.8 N=2',
                         'energyflow warm K=2 t=0.7 N=2',
                         'rnce N=3 K=2', 'rnce N=2 K=0',
                         'diffusion DDIM-2'}
    for r in recs.values():
        assert r['episodes'] == 1 and r['plans'] >= 1 and 0 < r['p50_ms'] <= r['p99_ms']
        assert 0.0 <= r['success'] <= 1.0 and 0.0 <= r['collision'] <= 1.0
        assert r['metric_name'] == 'path_cost' and r['metric_mean'] >= 0 <= r['metric_std']
    warm = recs['energyflow warm K=1']
    assert warm['warm_steps'] == 1 and warm['cold_steps'] == 20 and warm['n_particles'] == 4
    assert warm['warm_plans'] == warm['plans'] - 1     # only an episode's first chunk is cold
    assert warm['warm_extrapolation'] == bench.WARM_EXTRAPOLATION
    assert recs['energyflow warm K=1 hold']['warm_extrapolation'] == 0.0
    assert recs['energyflow cold K=4']['warm_extrapolation'] is None
    lean = recs['energyflow warm K=1 N=2']
    assert recs['energyflow warm K=1 t=0.8']['warm_start_t'] == 0.8
    assert lean['warm_start_t'] is None and warm['warm_start_t'] is None
    assert (lean['n_particles'], lean['warm_steps'], lean['cold_steps']) == (2, 1, 20)
    explicit = recs['energyflow warm K=2 t=0.7 N=2']
    assert (explicit['n_particles'], explicit['warm_steps'], explicit['cold_steps'],
            explicit['warm_start_t']) == (2, 2, 20, 0.7)
    short = recs['energyflow warm K=1 N=1 cold K=2']
    assert (short['n_particles'], short['warm_steps'], short['cold_steps']) == (1, 1, 2)
    table = (tmp_path / 'sampler_cost-obstacles2d-probe-cpu.md').read_text()
    assert '| collision | path cost | plans |' in table
    assert data['info']['episode_seed'] == 777 and '(seeds from 777,' in table
    assert '| energyflow warm K=1 hold | 4 | 20 | 1 | hold |' in table
    assert recs['diffusion DDIM-2']['n_particles'] == 1
    rnce = recs['rnce N=3 K=2']
    assert (rnce['method'], rnce['n_particles'], rnce['cold_steps'], rnce['warm_steps']) == \
        ('rnce', 3, 2, None)
    assert rnce['warm_plans'] == 0 and rnce['warm_extrapolation'] is None
    assert f"R-NCE `{checkpoints['rnce']}`" in table and 'draws from the learned' in table
    assert f"diffusion `{checkpoints['diffusion']}`" in table
    # a run without diffusion settings names no diffusion checkpoint (it loaded none)
    alone = bench.markdown({**data['info'], 'diffusion': None, 'rnce': None},
                           [r for r in data['records'] if r['method'] == 'energyflow'], [])
    assert 'diffusion `' not in alone and 'R-NCE `' not in alone
    ranked = recs['rnce N=2 K=0']           # proposal draws ranked by the energy, one graph
    assert (ranked['n_particles'], ranked['cold_steps'], ranked['warm_plans']) == (2, 0, 0)
    assert any('warm K=1 vs energyflow cold K=4' in line for line in data['comparisons'])
    # the same tag with other settings is refused before any episode runs; --tag keeps both
    before = (tmp_path / 'sampler_cost-obstacles2d-probe-cpu.json').read_text()
    seeds.clear()
    assert bench.main(['--energy', checkpoints['energyflow'], '--ddim-steps', '',
                       '--rnce-settings', '', '--episodes', '2', '--cold-steps', '2',
                       '--warm-steps', '', '--particles', '4', '--threads', '1', '--tag', 'probe',
                       '--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'episodes: 1 there, 2 now' in err and "diffusion: '" in err and not seeds
    assert (tmp_path / 'sampler_cost-obstacles2d-probe-cpu.json').read_text() == before


def test_equal_success_allows_one_standard_error(bench):
    def rec(success, n=30):
        return {'success': success, 'episodes': n}
    assert bench.equal_success(rec(0.9), rec(0.95))          # 1.5 of 30 episodes
    assert not bench.equal_success(rec(0.5), rec(0.95))
    assert bench.equal_success(rec(1.0), rec(0.2))           # more is never less
    assert not bench.equal_success(rec(0.0, 2), rec(1.0, 2))


def test_equal_quality_also_needs_the_headline_metric(bench):
    def rec(success, coverage, std=0.1, n=50, name='max_coverage'):
        return {'success': success, 'episodes': n, 'metric_name': name,
                'metric_mean': coverage, 'metric_std': std}
    assert bench.equal_quality(rec(0.0, 0.36), rec(0.02, 0.37))     # 0.01 < one SE (0.02)
    assert not bench.equal_quality(rec(0.0, 0.30), rec(0.02, 0.37))
    assert bench.equal_quality(rec(0.0, 0.50), rec(0.02, 0.37))     # more is never less
    assert not bench.equal_quality(rec(0.5, 0.9), rec(1.0, 0.9))    # success still counts
    # obstacles2d's path cost is reported, not a gate: a longer path is still a success;
    # collisions are a gate, where the task has them
    assert not bench.equal_quality({**rec(1.0, 0.1), 'collision': 0.9},
                                   {**rec(1.0, 0.1), 'collision': 0.3})
    assert bench.equal_quality({**rec(1.0, 0.1), 'collision': 0.3},
                               {**rec(1.0, 0.1), 'collision': 0.36})
    assert bench.equal_quality({**rec(1.0, 0.1), 'collision': None}, rec(1.0, 0.1))
    assert bench.equal_quality(rec(1.0, 0.2, name='path_cost'), rec(1.0, 0.1, name='path_cost'))


def test_the_baseline_is_its_cheapest_setting_at_its_reference_quality(bench):
    def rec(name, success, ms, warm=None):
        return {'setting': name, 'method': name.split()[0], 'success': success, 'episodes': 50,
                'metric_name': 'path_cost', 'mean_ms': ms, 'p99_ms': ms, 'warm_steps': warm,
                'warm_mean_ms': ms}
    recs = [rec('energyflow cold', 1.0, 4.0), rec('energyflow warm', 0.98, 0.8, warm=3),
            rec('energyflow bad', 0.5, 0.1, warm=1), rec('diffusion DDIM-10', 1.0, 0.5),
            rec('diffusion DDIM-5', 1.0, 0.4), rec('diffusion DDIM-3', 0.2, 0.25)]
    line = bench.comparisons(recs)[-2]
    assert 'at diffusion DDIM-10\'s quality' in line and 'energyflow warm' in line
    assert '(diffusion DDIM-5, success 1.00) = 2.00x' in line      # not DDIM-10, not DDIM-3
    recs[1]['success'] = 0.5
    recs[0]['success'] = 0.5
    assert 'Cheapest diffusion setting at energyflow cold' in bench.comparisons(recs)[-1]
    assert 'No EnergyFlow setting reached' in bench.comparisons(recs)[-2]
    recs.insert(3, rec('rnce N=8 K=1', 1.0, 0.3))     # R-NCE settings get their own line
    lines = bench.comparisons(recs)
    assert 'No EnergyFlow setting reached' in lines[-3]
    assert 'Cheapest R-NCE setting' in lines[-2] and 'rnce N=8 K=1' in lines[-2]
    assert '= 0.75x' in lines[-2]
    del recs[3]
    recs[0]['success'] = 1.0
    recs[0]['collision'], recs[3]['collision'], recs[4]['collision'] = 0.0, 0.3, 0.5
    assert 'No diffusion setting reached energyflow cold' in bench.comparisons(recs)[-1]


def test_a_run_without_a_cold_setting_still_compares_what_it_can(bench):
    # used to raise StopIteration after every episode had run, losing the results
    def rec(name, success, ms, warm=None):
        return {'setting': name, 'method': name.split()[0], 'success': success, 'episodes': 50,
                'metric_name': 'p1', 'metric_mean': success, 'metric_std': 0.1, 'mean_ms': ms,
                'p99_ms': ms, 'warm_steps': warm, 'warm_mean_ms': ms}
    recs = [rec('energyflow warm K=5 t=0.7', 0.8, 3.0, warm=5),
            rec('energyflow warm K=3 t=0.6 N=1', 0.4, 0.6, warm=3),
            rec('diffusion DDIM-10', 0.2, 0.6)]
    lines = bench.comparisons(recs)
    assert lines[0].startswith('- No cold EnergyFlow setting ran')
    assert len(lines) == 2 and 'energyflow warm K=3 t=0.6 N=1' in lines[1]
    assert '= 1.00x' in lines[1]
    assert bench.comparisons(recs[:2]) == lines[:1]


def test_a_missing_checkpoint_is_a_usage_error(bench, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(['--energy', str(tmp_path / 'nope.pt'), '--ddim-steps', ''])
    assert exc.value.code == 2 and 'nope.pt: no such checkpoint' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:      # R-NCE settings need their checkpoint
        bench.main(['--energy', SCRIPT, '--ddim-steps', '', '--rnce', str(tmp_path / 'r.pt')])
    assert exc.value.code == 2 and '--rnce ' in capsys.readouterr().err
    args = bench._parse(['--energy', SCRIPT, '--ddim-steps', '', '--rnce', 'r.pt',
                         '--rnce-settings', ''])
    assert all(s.method != 'rnce' for s in bench.build_settings(args))  # none asked or needed


def test_lean_warm_settings_are_validated(bench, capsys):
    assert bench._lean_warm('4:3,8:2,2:2:5') == [(4, 3, 20), (8, 2, 20), (2, 2, 5)]
    with pytest.raises(SystemExit):
        bench._parse(['--lean-warm', '4-3', '--energy', SCRIPT, '--ddim-steps', ''])
    assert "'4-3' is not N:K" in capsys.readouterr().err
    for bad in ('4:3:0', '4:3:5:1'):
        with pytest.raises(SystemExit):
            bench._parse(['--lean-warm', bad, '--energy', SCRIPT, '--ddim-steps', ''])
        assert f"'{bad}' is not N:K or N:K:C" in capsys.readouterr().err
    assert bench._rnce_settings('32:5,4:1,8:0') == [(32, 5), (4, 1), (8, 0)]
    for bad in ('4', '4:1:2', '0:1'):
        with pytest.raises(SystemExit):
            bench._parse(['--rnce-settings', bad, '--energy', SCRIPT, '--ddim-steps', ''])
        assert f"--rnce-settings: '{bad}' is not N:K with" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench._parse(['--warm-start-times', '0.5,x', '--energy', SCRIPT, '--ddim-steps', ''])
    assert "'0.5,x' is not a list of numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench._parse(['--warm-particles', '8,0', '--energy', SCRIPT, '--ddim-steps', ''])
    assert "--warm-particles: '0' is not N with positive integers" in capsys.readouterr().err
    assert bench._warm_at('16:5:0.7,1:3:0.6') == [(16, 5, 0.7), (1, 3, 0.6)]
    for bad in ('4:3', '0:3:0.6', '4:0:0.6', '4:3:0', '4:3:1.5', '4:3:x', '4:3:0.6:1'):
        with pytest.raises(SystemExit):
            bench._parse(['--warm-at', bad, '--energy', SCRIPT, '--ddim-steps', ''])
        assert f"--warm-at: '{bad}' is not N:K:t" in capsys.readouterr().err


def test_a_thread_count_below_one_is_a_usage_error(bench, capsys):
    assert bench._parse(['--energy', SCRIPT, '--ddim-steps', '',
                         '--rnce-settings', '']).threads == 1       # the policy node's
    for bad in ('0', '-1'):
        with pytest.raises(SystemExit) as exc:
            bench._parse(['--threads', bad, '--energy', SCRIPT, '--ddim-steps', '',
                          '--rnce-settings', ''])
        assert exc.value.code == 2
        assert f'--threads {bad}: expected at least 1 thread' in capsys.readouterr().err
