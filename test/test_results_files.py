"""The shared results-file helpers: a benchmark never replaces results of other settings."""

from __future__ import annotations

import json

from energyflow_ros.cli.results_files import settings_conflict


def _write(path, data):
    path.write_text(json.dumps(data), encoding='utf-8')
    return str(path)


def test_no_file_or_the_same_settings_is_no_conflict(tmp_path):
    assert settings_conflict(str(tmp_path / 'absent.json'), {'repeats': 3}) is None
    path = _write(tmp_path / 'r.json', {'settings': {'repeats': 3, 'steps': '10'}})
    assert settings_conflict(path, {'repeats': 3, 'steps': '10'}) is None
    # a setting the file did not record (an option added since) is not a difference
    assert settings_conflict(path, {'repeats': 3, 'new_option': True}) is None


def test_other_settings_are_named_with_both_values(tmp_path):
    path = _write(tmp_path / 'r.json', {'settings': {'repeats': 3, 'steps': '10', 'n': 1}})
    why = settings_conflict(path, {'repeats': 5, 'steps': '20', 'n': 1})
    assert why.startswith(f'{path} holds results of other settings')
    assert "repeats: 3 there, 5 now" in why and "steps: '10' there, '20' now" in why
    assert 'n:' not in why and '--force' in why


def test_older_files_are_compared_by_their_info(tmp_path):
    path = _write(tmp_path / 'r.json', {'info': {'episodes': 100, 'task': 'pusht'}})
    assert 'episodes: 100 there, 5 now' in settings_conflict(path, {'episodes': 5})
    assert settings_conflict(path, {'episodes': 100}) is None


def test_the_ros_loop_benchmark_refuses_before_it_starts_ros(tmp_path, capsys):
    import importlib.util
    import os
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'benchmarks', 'ros_loop.py')
    spec = importlib.util.spec_from_file_location('ros_loop_benchmark', script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        _write(tmp_path / 'ros_loop-cpu.json', {'settings': {'rates': '100', 'duration': 10.0}})
        assert module.main(['--rates', '250', '--out', str(tmp_path)]) == 2
    finally:
        sys.modules.pop(spec.name, None)
    assert "rates: '100' there, '250' now" in capsys.readouterr().err
