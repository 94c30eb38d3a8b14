"""energyflow-eval: the method x task x seed grid, parameter matching and the result files."""

import json
from pathlib import Path

import pytest

from energyflow_ros.cli.evaluate import (
    _markdown, _parse, aggregate, config_digest, config_path, load_results, main,
    matched_backbone, method_parameters, pool, RECORD_KEYS, recorded, SMOKE_PARAMS,
    target_status, task_chunk_spec, write_results,
)
from energyflow_ros.core.methods import METHODS
from energyflow_ros.sim.blockpush import OBS_NAMES, RELATIVE_NAMES
from energyflow_ros.sim.registry import task_info
from energyflow_ros.training.trainer import load_train_config

RESULTS = Path(__file__).resolve().parents[1] / 'benchmarks' / 'results'


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    argv = ['--smoke', '--seeds', '2', '--out', str(root / 'results'), '--runs-dir',
            str(root / 'runs'), f'data.cache_dir={root / "cache"}', 'device=cpu']
    assert main(argv) == 0
    return root, argv


def test_smoke_run_writes_one_record_per_method(smoke):
    root, _ = smoke
    data = json.loads((root / 'results' / 'quality.json').read_text())
    records = data['records']
    assert [r['method'] for r in records] == ['energyflow', 'rnce', 'irnce', 'ibc',
                                              'diffusion', 'mse']
    for record in records:
        assert tuple(record)[:len(RECORD_KEYS)] == RECORD_KEYS
        assert {'collision', 'first_side_above', 'n_modes'} <= set(record['metrics'])
        assert record['task'] == 'obstacles2d' and record['seeds'] == [0, 1]
        assert record['metric_name'] == 'path_cost'
        assert 0.0 <= record['success_mean'] <= 1.0 and record['success_std'] >= 0.0
        assert record['metric_mean'] >= 0.0 and record['infer_ms'] > 0.0
        assert abs(record['params'] - SMOKE_PARAMS) <= 0.05 * SMOKE_PARAMS, record
    settings = records[0]['settings']
    assert settings['mode'] == 'smoke' and settings['episodes'] == 2
    assert settings['observation'] == ['robot_x', 'robot_y', 'goal_x', 'goal_y']
    assert settings['task_revision'] == task_info('obstacles2d').revision
    table = (root / 'results' / 'quality.md').read_text()
    assert 'Observed per frame: robot_x, robot_y, goal_x, goal_y.' in table
    assert '## obstacles2d' in table and 'Targets: EnergyFlow and R-NCE success' in table
    assert ('| method | seeds | success | path_cost | collision | first_side_above | '
            'first_side_below | n_modes |') in table
    assert all(f'| {m} | 2 |' in table for m in METHODS)


def test_a_second_run_reuses_the_finished_training_runs(smoke):
    root, argv = smoke
    first = json.loads((root / 'results' / 'quality.json').read_text())['records']
    stamp = (root / 'runs' / 'smoke' / 'obstacles2d' / 'rnce' / 'seed1' / 'final.pt')
    before = stamp.stat().st_mtime_ns
    assert main([*argv, '--methods', 'rnce,mse']) == 0
    again = json.loads((root / 'results' / 'quality.json').read_text())['records']
    assert stamp.stat().st_mtime_ns == before, 'the finished run was not retrained'
    assert [r['method'] for r in again] == [r['method'] for r in first], 'records were lost'
    old = {r['method']: r for r in first}
    for record in again:
        for key in ('success_mean', 'metric_mean', 'params'):
            assert record[key] == old[record['method']][key]


def test_seeds_split_across_commands_give_the_record_of_one_command(smoke, tmp_path, capsys):
    root, argv = smoke
    argv = [*argv, '--methods', 'mse', '--out', str(tmp_path)]   # the last --out counts
    assert main([*argv, '--seeds', '1']) == 0
    assert main([*argv, '--first-seed', '1', '--seeds', '1']) == 0
    assert 'pooled with the recorded seeds: seeds [0, 1]' in capsys.readouterr().out
    (split,) = json.loads((tmp_path / 'quality.json').read_text())['records']
    (whole,) = [r for r in json.loads((root / 'results' / 'quality.json').read_text())[
        'records'] if r['method'] == 'mse']
    assert split['seeds'] == whole['seeds'] == [0, 1]
    for key in ('success_mean', 'success_std', 'metric_mean', 'metric_std'):
        assert split[key] == pytest.approx(whole[key]), key
    assert split['metrics'].keys() == whole['metrics'].keys()
    for name, value in whole['metrics'].items():
        assert split['metrics'][name] == pytest.approx(value), name


def test_a_row_records_the_observation_its_task_kwargs_give(tmp_path):
    argv = ['--smoke', '--tasks', 'blockpush', '--methods', 'mse', '--seeds', '1', '--out',
            str(tmp_path / 'results'), '--runs-dir', str(tmp_path / 'runs'),
            f'data.cache_dir={tmp_path / "cache"}', 'device=cpu', 'data.n_episodes=2',
            'task_kwargs.relative_obs=true']
    assert main(argv) == 0
    (record,) = json.loads((tmp_path / 'results' / 'quality.json').read_text())['records']
    assert record['settings']['observation'] == list(OBS_NAMES + RELATIVE_NAMES)
    assert ', '.join(RELATIVE_NAMES) in (tmp_path / 'results' / 'quality.md').read_text()


@pytest.mark.parametrize('method', ['rnce', 'mse', 'diffusion'])
def test_widths_are_matched_to_a_parameter_budget(method):
    cfg = load_train_config(config_path('obstacles2d', None), [f'method={method}'])
    spec = task_chunk_spec(cfg)
    for target in (100_000, 300_000):   # above the R-NCE proposal's own ~40k
        backbone = matched_backbone(cfg, spec, method, target)
        assert abs(method_parameters(cfg, spec, method, backbone) - target) <= 0.02 * target


def test_aggregate_takes_mean_and_std_over_seeds():
    runs = [{'row': {'eval_success': s, 'eval_p1': m}, 'params': 10, 'train_s': t,
             'infer_ms': 1.0} for s, m, t in ((0.5, 0.2, 2.0), (1.0, 0.4, 4.0))]
    record = aggregate('blockpush', 'ibc', [0, 1], runs, 'p1')
    assert record['success_mean'] == 0.75 and record['success_std'] == 0.25
    assert record['metric_mean'] == pytest.approx(0.3) and record['train_s'] == 3.0
    assert record['metrics']['p1'] == {'mean': pytest.approx(0.3), 'std': pytest.approx(0.1)}


def test_results_of_separate_commands_merge_by_task_and_method(tmp_path):
    runs = [{'row': {'eval_success': 1.0, 'eval_p1': 1.0}, 'params': 10, 'train_s': 1.0,
             'infer_ms': 1.0}]
    first = [aggregate('blockpush', m, [0], runs, 'p1') for m in ('mse', 'energyflow')]
    write_results(first, {'blockpush': {'mode': 'full', 'machine': 'gpu box'}}, str(tmp_path))
    again = aggregate('blockpush', 'mse', [0], [{**runs[0], 'params': 20}], 'p1')
    other = aggregate('obstacles2d', 'ibc', [0], runs, 'p1')
    write_results([again, other], {'obstacles2d': {'mode': 'smoke'},
                                   'blockpush': {'mode': 'full', 'machine': 'gpu box'}},
                  str(tmp_path))
    data = json.loads((tmp_path / 'quality.json').read_text())
    assert [(r['task'], r['method'], r['params']) for r in data['records']] == [
        ('obstacles2d', 'ibc', 10), ('blockpush', 'energyflow', 10), ('blockpush', 'mse', 20)]
    assert [r['settings'] for r in data['records']] == [
        {'mode': 'smoke', 'seeds': [0]}, {'mode': 'full', 'machine': 'gpu box', 'seeds': [0]},
        {'mode': 'full', 'machine': 'gpu box', 'seeds': [0]}]
    table = (tmp_path / 'quality.md').read_text()
    assert 'full run on gpu box' in table
    assert 'Targets: best EBM p2 (both blocks in targets: the success column) >= 0.90.' in table


def test_rows_of_another_headline_metric_get_their_own_column(tmp_path):
    # Push-T rows recorded before Diffusion Policy's score (raw max_coverage) beside new ones
    old = {'row': {'eval_success': 0.2, 'eval_max_coverage': 0.7}, 'params': 10,
           'train_s': 1.0, 'infer_ms': 1.0}
    new = {'row': {'eval_success': 0.3, 'eval_max_score': 0.8, 'eval_max_coverage': 0.77},
           'params': 10, 'train_s': 1.0, 'infer_ms': 1.0}
    write_results([aggregate('pusht', 'mse', [0], [old], 'max_coverage'),
                   aggregate('pusht', 'energyflow', [0], [new], 'max_score')],
                  {'pusht': {'mode': 'full'}}, str(tmp_path))
    table = (tmp_path / 'quality.md').read_text()
    assert '| method | seeds | success | max_score | max_coverage | params |' in table
    assert '| energyflow | 1 | 0.300 ± 0.000 | 0.800 ± 0.000 | 0.770 ± 0.000 |' in table
    assert '| mse | 1 | 0.200 ± 0.000 | — | 0.700 ± 0.000 |' in table


def _runs(*values):
    return [{'row': {'eval_success': s, 'eval_p1': m}, 'params': 10, 'train_s': t,
             'infer_ms': t / 10} for s, m, t in values]


def test_seeds_run_by_separate_commands_pool_as_if_run_together(tmp_path):
    values = [(0.5, 0.7, 2.0), (0.75, 0.9, 4.0), (0.25, 0.2, 9.0)]
    together = aggregate('blockpush', 'energyflow', [0, 1, 2], _runs(*values), 'p1')
    settings = {'mode': 'full', 'steps': 80, 'overrides': ['a=1'], 'seeds': [0]}
    write_results([aggregate('blockpush', 'energyflow', [0], _runs(values[0]), 'p1')],
                  {'blockpush': settings}, str(tmp_path))
    written = write_results(
        [aggregate('blockpush', 'energyflow', [1, 2], _runs(*values[1:]), 'p1')],
        {'blockpush': {**settings, 'seeds': [1, 2], 'machine': 'other box'}}, str(tmp_path))
    data = json.loads((tmp_path / 'quality.json').read_text())
    assert written == data['records']
    assert data['records'][0]['settings']['seeds'] == [0, 1, 2]
    assert data['records'][0]['settings']['machine'] == 'other box'   # seed 0's: not recorded
    (pooled,) = data['records']
    assert pooled['seeds'] == [0, 1, 2]
    for key in ('success_mean', 'success_std', 'metric_mean', 'metric_std', 'train_s',
                'infer_ms'):
        assert pooled[key] == pytest.approx(together[key]), key
    for name in ('success', 'p1'):
        assert pooled['metrics'][name] == pytest.approx(together['metrics'][name])


@pytest.mark.parametrize('change', ['overlapping seeds', 'other steps', 'other params',
                                    'other config', 'other task revision'])
def test_records_are_not_pooled_across_seeds_or_settings_that_differ(tmp_path, change):
    settings = {'mode': 'full', 'steps': 80, 'overrides': ['a=1'], 'config_sha256': 'aa'}
    write_results([aggregate('blockpush', 'mse', [0], _runs((1.0, 1.0, 1.0)), 'p1')],
                  {'blockpush': settings}, str(tmp_path))
    runs = _runs((0.0, 0.0, 1.0))
    seeds = [0] if change == 'overlapping seeds' else [1]
    if change == 'other params':
        runs[0]['params'] = 11
    if change == 'other steps':
        settings = {**settings, 'steps': 90}
    if change == 'other config':  # the same overrides on another --config-dir's YAML
        settings = {**settings, 'config_sha256': 'bb'}
    if change == 'other task revision':   # the task's layout changed what the seeds produce
        settings = {**settings, 'task_revision': 2}
    write_results([aggregate('blockpush', 'mse', seeds, runs, 'p1')], {'blockpush': settings},
                  str(tmp_path))
    records = json.loads((tmp_path / 'quality.json').read_text())['records']
    if change in ('overlapping seeds', 'other params'):     # a rerun of the experiment
        (record,) = records
    else:                                  # another experiment: its own row, nothing lost
        old, record = records
        assert old['seeds'] == [0] and old['success_mean'] == 1.0
    assert record['seeds'] == seeds and record['success_mean'] == 0.0


def _record(task, method, success, metric_name, metric, **metrics):
    metrics = {'success': success, metric_name: metric, **metrics}
    return {'task': task, 'method': method, 'seeds': [0], 'success_mean': success,
            'success_std': 0.0, 'metric_name': metric_name, 'metric_mean': metric,
            'metric_std': 0.0, 'metrics': {k: {'mean': v, 'std': 0.0} for k, v in metrics.items()}}


def test_target_status_says_met_or_which_part_is_missed():
    sides = {'first_side_above': 0.5, 'first_side_below': 0.5}
    obstacles = [_record('obstacles2d', 'energyflow', 1.0, 'path_cost', 0.1, collision=0.0,
                         **sides),
                 _record('obstacles2d', 'rnce', 0.96, 'path_cost', 0.1, collision=0.02,
                         **sides),
                 _record('obstacles2d', 'ibc', 0.1, 'path_cost', 4.0, collision=1.0, **sides)]
    assert target_status('obstacles2d', obstacles).startswith('Target **met**.')
    assert 'Methods without a row here: irnce, diffusion, mse.' in target_status(
        'obstacles2d', obstacles)
    obstacles[1]['metrics']['collision']['mean'] = 0.05
    assert 'missed**: rnce collision 0.050 > 0.03' in target_status('obstacles2d', obstacles)
    assert 'rnce not run' in target_status('obstacles2d', obstacles[:1] + obstacles[2:])

    pusht = [_record('pusht', 'energyflow', 0.5, 'max_score', 0.90),
             _record('pusht', 'diffusion', 0.6, 'max_score', 0.92)]
    assert "missed**: below diffusion's 0.920" in target_status('pusht', pusht)
    assert target_status('pusht', pusht[:1]).startswith('Target **missed**: diffusion not run')
    pusht[1]['metric_mean'] = 0.80
    assert target_status('pusht', pusht).startswith('Target **met**.')
    # a row of raw coverage (recorded before Diffusion Policy's score) is not graded as one
    old = [_record('pusht', 'energyflow', 0.5, 'max_coverage', 0.90), pusht[1]]
    assert 'missed**: max_score not recorded (the energyflow rows predate it)' in \
        target_status('pusht', old)

    blockpush = [_record('blockpush', 'energyflow', 0.54, 'p1', 0.78, p2=0.54),
                 _record('blockpush', 'ibc', 0.95, 'p1', 0.99)]      # no p2 recorded
    for order in (blockpush, blockpush[::-1]):
        assert 'missed**: best energyflow p2 0.540 < 0.90' in target_status('blockpush', order)
    blockpush[1]['metrics']['p2'] = {'mean': 0.95, 'std': 0.0}
    assert target_status('blockpush', blockpush).startswith('Target **met**.')


def test_unknown_names_are_usage_errors(capsys):
    for argv, text in ((['--methods', 'rnce,gail'], "['gail']"),
                       (['--tasks', 'chess'], "['chess']"), (['--seeds', '0'], '--seeds')):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and text in capsys.readouterr().err


def test_an_unreadable_results_file_is_named_before_any_training(tmp_path, capsys):
    (tmp_path / 'quality.json').write_text('{"records": [')  # a half-written file
    assert main(['--smoke', '--tasks', 'obstacles2d', '--out', str(tmp_path),
                 '--runs-dir', str(tmp_path / 'runs')]) == 2
    assert 'quality.json is not valid JSON' in capsys.readouterr().err
    assert not (tmp_path / 'runs').exists()  # nothing was trained


def test_a_run_without_a_final_evaluation_is_an_error_naming_it(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from energyflow_ros.cli import evaluate
    from energyflow_ros.training.trainer import TrainError

    finished = SimpleNamespace(trainer=SimpleNamespace(metrics=[{'step': 10, 'loss': 0.5}]))
    monkeypatch.setattr(evaluate, 'train', lambda cfg, **kwargs: finished)
    cfg = load_train_config(config_path('obstacles2d', None),
                            [f'out_dir={tmp_path}', 'eval.final=false'])
    with pytest.raises(TrainError, match='has no closed-loop evaluation to report'):
        evaluate.run_one(cfg)


def test_the_config_digest_follows_the_results_not_the_seed_or_paths():
    path = config_path('obstacles2d', None)
    base = load_train_config(path, [])
    same = load_train_config(path, ['seed=5', 'out_dir=/tmp/x', 'progress=false',
                                    'method=mse', 'log_every=7'])
    assert config_digest(base) == config_digest(same)
    for change in ('optim.lr=0.5', 'eval.seed=7', 'horizon=4', 'data.n_episodes=3'):
        assert config_digest(load_train_config(path, [change])) != config_digest(base), change


def test_each_row_is_described_by_the_settings_it_was_run_with(tmp_path):
    # One method run again with more steps: the other rows keep their own description
    # (the table's header used to describe every row of the task by the latest command).
    short = {'mode': 'full', 'steps': 60, 'overrides': ['optim.steps=60'], 'machine': 'box'}
    long = {**short, 'steps': 120, 'overrides': ['optim.steps=120']}
    write_results([aggregate('pusht', m, [0], _runs((0.5, 0.5, 1.0)), 'max_score')
                   for m in ('energyflow', 'mse')], {'pusht': short}, str(tmp_path))
    write_results([aggregate('pusht', 'energyflow', [0], _runs((0.9, 0.9, 1.0)), 'max_score')],
                  {'pusht': long}, str(tmp_path))
    data = json.loads((tmp_path / 'quality.json').read_text())
    by_method = {r['method']: r for r in data['records']}
    assert [(r['method'], r['settings']['steps']) for r in data['records']] == [
        ('energyflow', 60), ('energyflow', 120), ('mse', 60)]
    table = (tmp_path / 'quality.md').read_text()
    assert "(a) full run on box, torch ?, device ?; 60 training steps" in table
    assert "(b) full run on box, torch ?, device ?; 120 training steps" in table
    assert '| energyflow | b | 1 | 0.900' in table and '| mse | a | 1 |' in table
    # mse run with the new settings too: its row of the old ones is kept beside it
    write_results([aggregate('pusht', 'mse', [0], _runs((0.4, 0.4, 1.0)), 'max_score')],
                  {'pusht': long}, str(tmp_path))
    table = (tmp_path / 'quality.md').read_text()
    rows = [[c.strip() for c in line.split('|')[1:5]] for line in table.splitlines()
            if line.startswith('| ') and ' | 1 |' in line]
    assert rows == [['energyflow', 'a', '1', '0.500 ± 0.000'],
                    ['energyflow', 'b', '1', '0.900 ± 0.000'],
                    ['mse', 'a', '1', '0.500 ± 0.000'], ['mse', 'b', '1', '0.400 ± 0.000']]
    # a table of one setting keeps its single description and no run column
    write_results([aggregate('obstacles2d', 'mse', [0], _runs((0.4, 0.4, 1.0)), 'path_cost')],
                  {'obstacles2d': long}, str(tmp_path / 'one'))
    table = (tmp_path / 'one' / 'quality.md').read_text()
    assert 'full run on box, torch ?, device ?; 120 training steps' in table
    assert '(a)' not in table and '| mse | 1 |' in table


def test_a_record_pools_only_with_one_of_its_own_settings(tmp_path):
    # energyflow seed 0 at 60 steps, then diffusion at 120 steps (the task's latest command),
    # then energyflow seed 1 at 120 steps: seed 1 must not pool with the 60-step seed 0.
    short = {'mode': 'full', 'steps': 60, 'overrides': ['optim.steps=60']}
    long = {**short, 'steps': 120, 'overrides': ['optim.steps=120']}
    write_results([aggregate('pusht', 'energyflow', [0], _runs((0.5, 0.5, 1.0)), 'p1')],
                  {'pusht': short}, str(tmp_path))
    write_results([aggregate('pusht', 'diffusion', [0], _runs((0.6, 0.6, 1.0)), 'p1')],
                  {'pusht': long}, str(tmp_path))
    (written,) = write_results(
        [aggregate('pusht', 'energyflow', [1], _runs((0.9, 0.9, 1.0)), 'p1')],
        {'pusht': long}, str(tmp_path))
    assert written['seeds'] == [1] and written['success_mean'] == 0.9
    assert written['settings']['steps'] == 120 and written['settings']['seeds'] == [1]


def test_records_written_before_task_revisions_were_kept_are_revision_1(tmp_path):
    settings = {'mode': 'full', 'steps': 80, 'overrides': ['a=1']}
    write_results([aggregate('blockpush', 'mse', [0], _runs((1.0, 1.0, 1.0)), 'p1')],
                  {'blockpush': settings}, str(tmp_path))
    (pooled,) = write_results([aggregate('blockpush', 'mse', [1], _runs((0.0, 0.0, 1.0)), 'p1')],
                              {'blockpush': {**settings, 'task_revision': 1}}, str(tmp_path))
    assert pooled['seeds'] == [0, 1] and pooled['success_mean'] == 0.5
    write_results([aggregate('blockpush', 'mse', [0], _runs((0.2, 0.2, 1.0)), 'p1')],
                  {'blockpush': {**settings, 'task_revision': 2}}, str(tmp_path))
    table = (tmp_path / 'quality.md').read_text()
    assert table.count('task revision 1,') == 1 and table.count('task revision 2,') == 1
    assert '| mse | a | 2 | 0.500' in table and '| mse | b | 1 | 0.200' in table


def test_records_written_before_rows_kept_settings_take_their_tasks(tmp_path):
    old = {'settings': {'pusht': {'mode': 'full', 'steps': 60, 'seeds': [0]}},
           'records': [aggregate('pusht', 'mse', [0], _runs((0.4, 0.4, 1.0)), 'max_score')]}
    (tmp_path / 'quality.json').write_text(json.dumps(old))
    write_results([aggregate('pusht', 'energyflow', [0], _runs((0.9, 0.9, 1.0)), 'max_score')],
                  {'pusht': {'mode': 'full', 'steps': 120}}, str(tmp_path))
    records = json.loads((tmp_path / 'quality.json').read_text())['records']
    assert [(r['method'], r['settings']['steps']) for r in records] == [
        ('energyflow', 120), ('mse', 60)]


def test_a_results_file_of_an_unknown_layout_is_refused_not_emptied(tmp_path):
    flat = {'settings': {'mode': 'full', 'steps': 60},
            'records': [aggregate('pusht', 'mse', [0], _runs((0.4, 0.4, 1.0)), 'p1')]}
    (tmp_path / 'quality.json').write_text(json.dumps(flat))
    with pytest.raises(ValueError, match='quality.json keeps its settings in a layout'):
        write_results([aggregate('pusht', 'energyflow', [0], _runs((0.9, 0.9, 1.0)), 'p1')],
                      {'pusht': {'mode': 'full'}}, str(tmp_path))
    assert json.loads((tmp_path / 'quality.json').read_text()) == flat


def test_a_rerun_that_drops_recorded_seeds_says_so(tmp_path, capsys):
    settings = {'pusht': {'mode': 'full', 'steps': 60}}
    write_results([aggregate('pusht', 'mse', [0, 1, 2], _runs(*[(0.4, 0.4, 1.0)] * 3), 'p1')],
                  settings, str(tmp_path))
    write_results([aggregate('pusht', 'mse', [2, 3], _runs(*[(0.5, 0.5, 1.0)] * 2), 'p1')],
                  settings, str(tmp_path))
    assert 'pusht mse: seeds [2, 3] replace the recorded seeds [0, 1, 2] of the same ' \
        'settings' in capsys.readouterr().out


def test_seeds_from_two_machines_are_one_row_naming_both():
    base = {'mode': 'full', 'steps': 60}
    first = {**aggregate('pusht', 'mse', [0], _runs((0.4, 0.4, 1.0)), 'p1'),
             'settings': {**base, 'machine': 'gpu box', 'torch': '2.5'}}
    second = {**aggregate('pusht', 'mse', [1], _runs((0.6, 0.6, 1.0)), 'p1'),
              'settings': {**base, 'machine': 'laptop', 'torch': '2.13'}}
    pooled = pool(first, second)
    assert pooled['settings']['machine'] == 'gpu box; laptop'
    assert pooled['settings']['torch'] == '2.5; 2.13'
    other = {**aggregate('pusht', 'energyflow', [0], _runs((0.9, 0.9, 1.0)), 'p1'),
             'settings': second['settings']}
    table = _markdown([other, pooled])
    assert '(a)' not in table and 'full run on laptop; gpu box, torch 2.13; 2.5' in table


def test_smoke_results_never_default_to_the_committed_table():
    assert _parse(['--smoke']).out == 'outputs/eval_smoke'
    assert _parse([]).out == 'benchmarks/results'


def test_merge_folds_another_table_in_with_each_records_settings(tmp_path, capsys):
    # seeds 0-1 of the 120-step setting run here, seed 2 elsewhere into its own table, plus a
    # row of another setting (an experiment written to its own --out): one table after
    short = {'mode': 'full', 'steps': 60, 'overrides': ['optim.steps=60'], 'machine': 'box'}
    long = {**short, 'steps': 120, 'overrides': ['optim.steps=120']}
    main_dir, other = tmp_path / 'main', tmp_path / 'other'
    write_results([aggregate('pusht', 'mse', [0], _runs((0.4, 0.4, 1.0)), 'p1'),
                   aggregate('pusht', 'energyflow', [0, 1], _runs((0.8, 0.8, 1.0),
                                                                    (0.9, 0.9, 1.0)),
                             'p1')],
                  {'pusht': long}, str(main_dir))
    write_results([aggregate('pusht', 'energyflow', [2], _runs((1.0, 1.0, 1.0)), 'p1'),
                   aggregate('pusht', 'diffusion', [0], _runs((0.3, 0.3, 1.0)), 'p1')],
                  {'pusht': {**long, 'machine': 'gpu box'}}, str(other))
    legacy = {'settings': {'pusht': short},
              'records': [aggregate('pusht', 'mse', [0], _runs((0.2, 0.2, 1.0)), 'p1')]}
    (tmp_path / 'legacy.json').write_text(json.dumps(legacy))
    assert main(['--merge', str(other / 'quality.json'), '--merge',
                 str(tmp_path / 'legacy.json'), '--out', str(main_dir)]) == 0
    assert 'wrote' in capsys.readouterr().out
    records = json.loads((main_dir / 'quality.json').read_text())['records']
    rows = {(r['method'], r['settings']['steps']): r for r in records}
    assert sorted(rows) == [('diffusion', 120), ('energyflow', 120), ('mse', 60), ('mse', 120)]
    pooled = rows['energyflow', 120]
    assert pooled['seeds'] == [0, 1, 2] and pooled['metric_mean'] == pytest.approx(0.9)
    assert pooled['settings']['machine'] == 'box; gpu box'
    assert rows['mse', 60]['metric_mean'] == 0.2 and rows['mse', 120]['metric_mean'] == 0.4
    table = (main_dir / 'quality.md').read_text()
    assert '(a) full run on box; gpu box' in table and '(b) full run on box,' in table
    assert '| diffusion | a | 1 |' in table and '| energyflow | a | 3 |' in table
    assert '| mse | a | 1 | 0.400' in table and '| mse | b | 1 | 0.200' in table


def test_merge_refuses_what_it_cannot_fold_in(tmp_path, capsys):
    write_results([aggregate('pusht', 'mse', [0], _runs((0.4, 0.4, 1.0)), 'p1')],
                  {'pusht': {'mode': 'full'}}, str(tmp_path))
    before = (tmp_path / 'quality.json').read_text()
    (tmp_path / 'latency.json').write_text(json.dumps({'records': [{'backend': 'ort'}]}))
    for path, why in ((tmp_path / 'absent.json', 'no quality records there'),
                      (tmp_path / 'latency.json', 'not a list of task records'),
                      (tmp_path / 'quality.json', 'is the table merged into')):
        assert main(['--merge', str(path), '--out', str(tmp_path)]) == 2
        assert why in capsys.readouterr().err
    assert (tmp_path / 'quality.json').read_text() == before
    with pytest.raises(SystemExit):
        _parse(['--merge', 'a.json', 'optim.steps=5'])
    assert '--merge trains nothing' in capsys.readouterr().err


@pytest.mark.parametrize('path', sorted(RESULTS.glob('quality*.json')), ids=lambda p: p.name)
def test_each_committed_table_is_the_rendering_of_its_records(path):
    # The tables are read, the records are what was measured: a hand edit of a table, or a
    # renderer changed without writing the tables again, shows here. A note added by hand
    # below the table is allowed.
    table = path.with_suffix('.md').read_text().split('\n## Note (added by hand)\n')[0]
    assert table == _markdown(recorded(load_results(str(path)), str(path)))
