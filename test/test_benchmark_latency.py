"""A tiny run of benchmarks/latency.py: every backend timed, outputs identical, files written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'benchmarks', 'latency.py')
BACKENDS = {'torch-eager-autograd', 'ort-gradient-loop', 'ort-fused', 'ort-fused-warm',
            'torch-ddim', 'ort-ddim'}


@pytest.fixture(scope='module')
def latency():
    """The benchmark script as a module."""
    spec = importlib.util.spec_from_file_location('latency_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_quick_run_writes_one_record_per_backend_and_config(latency, tmp_path, capsys):
    assert latency.main(['--quick', '--threads', '1', '--repeats', '3',
                         '--out', str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert '"cpu":' in printed and '## Same-run ratios' in printed
    # a quick run never takes the full run's file names (the committed results)
    assert sorted(os.listdir(tmp_path)) == ['latency-cpu-quick.json', 'latency-cpu-quick.md']
    with open(tmp_path / 'latency-cpu-quick.json', encoding='utf-8') as handle:
        result = json.load(handle)
    recs = result['records']
    assert {r['backend'] for r in recs} == BACKENDS
    keys = [(r['backend'], r['N'], r['K'], r['device']) for r in recs]
    assert len(keys) == len(set(keys))
    for r in recs:
        assert {'backend', 'N', 'K', 'device', 'p50_ms', 'p99_ms', 'max_ms', 'calls'} <= set(r)
        assert r['device'] == 'cpu' and r['calls'] == 3
        assert 0 < r['p50_ms'] <= r['p99_ms'] <= r['max_ms']
    fused = [r for r in recs if r['backend'].startswith('ort-fused')]
    assert {(r['N'], r['backend']) for r in fused} == {
        (n, b) for n in (4, 8) for b in ('ort-fused', 'ort-fused-warm')}
    assert all(r['same_choice_as_torch'] and r['max_abs_diff_vs_torch'] < 1e-4 for r in fused)
    assert all(r['matches_torch'] for r in recs if 'matches_torch' in r)
    # the fitted energy moves the particles: the comparison is of real trajectories
    cold = [r for r in recs if r['backend'] == 'ort-fused']
    assert min(r['torch_moved'] for r in cold) > 0.1, cold
    assert result['matmul_peak']['gflops'] > 0 and result['machine']['cores'] >= 1
    # a run of other settings into the same file is refused before it times anything
    before = (tmp_path / 'latency-cpu-quick.json').read_text()
    assert latency.main(['--quick', '--threads', '1', '--repeats', '4',
                         '--out', str(tmp_path)]) == 2
    assert 'repeats: 3 there, 4 now' in capsys.readouterr().err
    assert (tmp_path / 'latency-cpu-quick.json').read_text() == before


def test_torch_device_times_the_fused_computation_in_torch(latency, tmp_path, capsys):
    # the GPU fallback path (onnxruntime's CUDA wheel is too large to carry), run on the CPU
    assert latency.main(['--quick', '--threads', '1', '--repeats', '2', '--particles', '4',
                         '--steps', '2', '--torch-device', 'cpu', '--out', str(tmp_path)]) == 0
    assert '## The fused computation in torch on cpu' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ['latency-cpu-torch-cpu-quick.json',
                                            'latency-cpu-torch-cpu-quick.md']
    recs = json.loads((tmp_path / 'latency-cpu-torch-cpu-quick.json').read_text())['records']
    (handwritten,) = [r for r in recs if r['backend'] == 'torch-cpu-handwritten']
    assert (handwritten['N'], handwritten['K'], handwritten['device']) == (4, 2, 'cpu')
    assert handwritten['same_choice_as_torch'] and handwritten['max_abs_diff_vs_torch'] < 1e-4
    assert handwritten['calls'] == 2 and handwritten['p50_ms'] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA device')
def test_torch_device_cuda_without_a_gpu_is_a_usage_error(latency, capsys):
    with pytest.raises(SystemExit) as exc:
        latency._parse(['--quick', '--torch-device', 'cuda'])
    assert exc.value.code == 2 and 'sees no CUDA device here' in capsys.readouterr().err


def test_a_backend_that_departs_from_torch_fails_the_run(latency, tmp_path, capsys,
                                                        monkeypatch):
    real = latency._ort_fused

    def skewed(model, graph, feeds):      # a fused graph whose chunk is 1 % off
        run = real(model, graph, feeds)
        return lambda: (lambda chunk, idx: (chunk * 1.01 + 0.01, idx))(*run())
    monkeypatch.setattr(latency, '_ort_fused', skewed)
    assert latency.main(['--quick', '--threads', '1', '--repeats', '1', '--particles', '4',
                         '--steps', '2', '--out', str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert 'MISMATCH against torch: ort-fused N=4 K=2' in out.out
    assert 'do not match torch' in out.err
    recs = json.loads((tmp_path / 'latency-cpu-quick.json').read_text())['records']
    assert [r['matches_torch'] for r in recs if r['backend'] == 'ort-fused'] == [False]


def test_abbreviated_flags_are_refused(latency):
    with pytest.raises(SystemExit):
        latency._parse(['--qui'])     # was taken as --quick's flag without its settings


def test_a_thread_count_below_one_is_a_usage_error(latency, capsys):
    for bad in ('0', '-1'):
        with pytest.raises(SystemExit) as exc:
            latency._parse(['--quick', '--threads', bad])
        assert exc.value.code == 2
        assert f'--threads {bad}: expected at least 1 thread' in capsys.readouterr().err


def test_gpu_check_script_dry_runs_on_the_cpu(tmp_path):
    # the prepared command for a lent GPU machine must not rot between GPU sessions
    script = os.path.join(os.path.dirname(SCRIPT), 'gpu_check.sh')
    env = {**os.environ, 'OUT': str(tmp_path), 'TORCH_DEVICE': 'cpu', 'QUICK_ONLY': '1',
           'PY': sys.executable}
    done = subprocess.run(['bash', script], cwd=os.path.dirname(os.path.dirname(SCRIPT)),
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'torch-cpu-handwritten p50 / p99 ms' in done.stdout
    assert 'onnxruntime' in (tmp_path / 'providers.txt').read_text()
    assert sorted(os.listdir(tmp_path / 'quick')) == ['latency-cpu-torch-cpu-quick.json',
                                                      'latency-cpu-torch-cpu-quick.md']


def test_flop_count_scales_with_particles_and_steps(latency):
    args = latency._parse(['--quick'])
    one = latency.sampler_flops(args, 1, 1)
    assert latency.sampler_flops(args, 4, 1) == pytest.approx(4 * one)
    h, d = args.hidden, args.horizon * args.action_dim
    per_step = 2 * ((d * h + (args.depth - 1) * h * h + h) + ((args.depth - 1) * h * h
                                                              + h * d + h))
    assert latency.sampler_flops(args, 1, 3) - one * 1 == pytest.approx(2 * per_step)


@pytest.mark.parametrize('flags, expected', [([], '0'), (['--spin'], '1')])
def test_sessions_spin_only_when_asked(latency, tmp_path, flags, expected):
    # Off by default, as in the policy node: one backend's spinning threads stall the next
    # backend's calls and every p99 then measures that (fused p99 17 ms at p50 1 ms, N=4).
    args = latency._parse(['--quick', '--steps', '2', *flags])
    models = latency.build_models(args, str(tmp_path))
    sessions = [*models['families'][2].sessions.values(), *models['ddim_model'].sessions.values()]
    assert {s.get_session_options().get_session_config_entry('session.intra_op.allow_spinning')
            for s in sessions} == {expected}
