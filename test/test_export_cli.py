"""``energyflow-export``: writes a model family from a checkpoint, or exits 1 with the reason."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from energyflow_ros.cli.export import main
from energyflow_ros.runtime import read_metadata
from test.export_fixtures import tiny_method, train_meta, write_checkpoint


def test_exports_with_overrides_and_prints_a_summary(tmp_path, capsys):
    ckpt = write_checkpoint(str(tmp_path / 'c.pt'), tiny_method('energyflow'), train_meta())
    out = str(tmp_path / 'models' / 'arm.onnx')
    status = main(['--checkpoint', ckpt, '--out', out, '--particles', '7', '--steps', '3',
                   '--warm-steps', '2', '--warm-start-t', '0.9', '--executed-steps', '1',
                   '--joint-names', 'elbow, shoulder'])
    assert status == 0
    printed = capsys.readouterr().out
    assert 'exported energyflow (unit)' in printed and 'arm.grad.onnx' in printed
    assert 'parity max |ort - torch|' in printed
    meta = read_metadata(out)
    assert (meta.sampler.n_particles, meta.sampler.cold.n_steps, meta.sampler.warm.n_steps,
            meta.executed_steps, meta.joint_names) == (7, 3, 2, 1, ('elbow', 'shoulder'))
    assert meta.sampler.warm.init_std > meta.sampler.cold.sigmas[1]   # sigma(0.9) > sigma(2/3)
    assert sorted(os.listdir(tmp_path / 'models')) == [
        'arm.energy.onnx', 'arm.grad.onnx', 'arm.onnx', 'arm.warm.onnx']


def test_failures_exit_1_with_the_reason(tmp_path, capsys):
    assert main(['--checkpoint', str(tmp_path / 'absent.pt'), '--out',
                 str(tmp_path / 'm.onnx')]) == 1
    assert 'checkpoint not found' in capsys.readouterr().err
    ckpt = write_checkpoint(str(tmp_path / 'c.pt'), tiny_method('mse'), meta=None)
    assert main(['--checkpoint', ckpt, '--out', str(tmp_path / 'm.onnx')]) == 1
    assert "no 'train_meta'" in capsys.readouterr().err
    ckpt = write_checkpoint(str(tmp_path / 'd.pt'), tiny_method('mse'), train_meta())
    assert main(['--checkpoint', ckpt, '--out', str(tmp_path / 'm.onnx'),
                 '--executed-steps', '9']) == 1
    assert 'executed_steps = 9' in capsys.readouterr().err
    assert main(['--checkpoint', ckpt, '--out', str(tmp_path / 'm.onnx'),
                 '--warm-start-t', '0.5']) == 1
    assert 'warm_start_t applies to EnergyFlow models only, not mse' in capsys.readouterr().err
    for joints, problem in (('elbow,elbow', "['elbow', 'elbow'] must be distinct and non-empty "
                                           "(['elbow'] repeated)"),
                            ('elbow,', "['elbow', ''] must be distinct and non-empty")):
        assert main(['--checkpoint', ckpt, '--out', str(tmp_path / 'm.onnx'),
                     '--joint-names', joints]) == 1
        assert f'joint_names {problem}' in capsys.readouterr().err
    assert main(['--checkpoint', ckpt, '--out', str(tmp_path / 'm.onnx'), '--particles', '4',
                 '--steps', '3']) == 1  # settings an MSE model would silently ignore
    assert 'n_particles, n_steps: not used by mse models' in capsys.readouterr().err
    blocked = tmp_path / 'c.pt' / 'm.onnx'  # a folder that is a file: OSError, not a traceback
    assert main(['--checkpoint', ckpt, '--out', str(blocked)]) == 1
    assert 'energyflow-export: error:' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['c.pt', 'd.pt']


def test_zero_steps_export_rnce_as_ranked_proposal_draws(tmp_path, capsys):
    ckpt = write_checkpoint(str(tmp_path / 'r.pt'), tiny_method('rnce'), train_meta())
    out = str(tmp_path / 'r.onnx')
    assert main(['--checkpoint', ckpt, '--out', out, '--steps', '0', '--particles', '9']) == 0
    assert 'sampler: proposal_rank, N=9, init=proposal' in capsys.readouterr().out
    assert read_metadata(out).sampler.kind == 'proposal_rank'
    ckpt = write_checkpoint(str(tmp_path / 'e.pt'), tiny_method('energyflow'), train_meta())
    assert main(['--checkpoint', ckpt, '--out', str(tmp_path / 'e.onnx'), '--steps', '0']) == 1
    assert 'n_steps = 0 is invalid' in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    for argv in (['--checkpoint', 'c.pt', '--out', 'model.pt'],
                 ['--checkpoint', 'c.pt', '--out', 'm.onnx', '--steps', '-1'],
                 ['--out', 'm.onnx']):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert '--out model.pt: must end in .onnx' in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    ckpt = write_checkpoint(str(tmp_path / 'c.pt'), tiny_method('mse'), train_meta())
    out = subprocess.run([sys.executable, '-m', 'energyflow_ros.cli.export', '--checkpoint',
                          ckpt, '--out', str(tmp_path / 'bc.onnx')], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert read_metadata(str(tmp_path / 'bc.onnx')).method == 'mse'
