"""The demo entry point runs end to end on a tiny budget and rejects bad arguments."""

import json

import pytest

from energyflow_ros.cli.demo import main


def test_demo_writes_results_and_plot(tmp_path):
    assert main(['--steps', '20', '--methods', 'rnce,energyflow', '--out', str(tmp_path)]) == 0
    data = json.loads((tmp_path / 'demo.json').read_text())
    assert set(data['results']) == {'rnce', 'energyflow'}
    assert 0.0 <= data['results']['rnce']['bhattacharyya'] <= 1.0
    assert (tmp_path / 'densities.png').stat().st_size > 1000


def test_unknown_method_is_a_clear_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['--methods', 'rnce,gail'])
    assert exc.value.code != 0
    assert "unknown method(s) ['gail']" in capsys.readouterr().err
