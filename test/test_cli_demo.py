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


def test_an_out_folder_that_cannot_be_made_is_one_error_line(tmp_path, capsys):
    (tmp_path / 'a_file').write_text('')
    assert main(['--out', str(tmp_path / 'a_file' / 'out')]) == 2
    assert 'energyflow-demo: error: cannot create --out' in capsys.readouterr().err
