"""The trainer command: one clear error line for bad input, and resume after a real SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from energyflow_ros.cli.trainer import main
from energyflow_ros.sim.demos import collect_demos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['task=obstacles2d', 'data.source=npz', 'backbone.mlp.hidden=16', 'backbone.mlp.depth=2',
        'horizon=4', 'executed_steps=2', 'optim.batch_size=16', 'optim.warmup_steps=5',
        'optim.lr=1e-3', 'eval.final=false', 'progress=false', 'device=cpu', '--no-export']


@pytest.fixture(scope='module')
def demo_npz(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('demos') / 'obstacles2d.npz')
    collect_demos('obstacles2d', 10, seed=0).save_npz(path)
    return path


def _write_npz(path, obs, actions):
    np.savez(path, obs=obs, actions=actions, episode_ends=np.array([len(obs)]))
    return str(path)


def _bad_inputs(tmp_path, demo_npz):
    """(name, extra argv, text the error line must contain) for every kind of bad input."""
    rng = np.random.default_rng(0)
    narrow = _write_npz(tmp_path / 'narrow.npz', rng.random((30, 3)), rng.random((30, 2)))
    obs = rng.random((30, 4))
    obs[7, 1] = np.nan
    nan = _write_npz(tmp_path / 'nan.npz', obs, rng.random((30, 2)))
    unknown = tmp_path / 'unknown.yaml'
    unknown.write_text('task: obstacles2d\noptim:\n  lrr: 0.1\n')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('task: [obstacles2d\n')
    truncated = tmp_path / 'truncated.npz'  # an interrupted copy
    with open(demo_npz, 'rb') as handle:
        truncated.write_bytes(handle.read()[:200])
    scalar = tmp_path / 'scalar.npz'
    np.savez(scalar, obs=np.float64(1.0), actions=rng.random((30, 2)), episode_ends=[30])
    flat_ends = tmp_path / 'flat_ends.npz'
    np.savez(flat_ends, obs=rng.random((30, 4)), actions=rng.random((30, 2)),
             episode_ends=np.int64(30))
    empty = tmp_path / 'empty.npz'
    empty.write_bytes(b'')
    return [
        ('missing dataset', [f'data.path={tmp_path}/absent.npz'], 'not found: '),
        ('wrong shapes', [f'data.path={narrow}'], 'the data has 3 observation dims'),
        ('truncated npz', [f'data.path={truncated}'], 'not a readable npz file'),
        ('empty npz', [f'data.path={empty}'], 'not a readable npz file'),
        ('0-d obs', [f'data.path={scalar}'], 'obs and actions must be 2-D'),
        ('0-d episode_ends', [f'data.path={flat_ends}'], 'episode_ends must increase'),
        ('NaN rows', [f'data.path={nan}'],
         'obs has non-finite values in 1 frame(s), first at frame 7'),
        ('unknown method', [f'data.path={demo_npz}', 'method=gail'], "method = 'gail'"),
        ('unknown YAML field', ['--config', str(unknown)], "unknown field(s) ['lrr']"),
        ('broken YAML', ['--config', str(broken)], 'is not valid YAML'),
        ('missing config', ['--config', str(tmp_path / 'absent.yaml')], 'cannot read config'),
        ('bad override', [f'data.path={demo_npz}', 'optim.lr'], "bad override 'optim.lr'"),
        ('override below a value', [f'data.path={demo_npz}', 'horizon.x=1'],
         'horizon is not a mapping'),
        ('bad override value', [f'data.path={demo_npz}', 'optim.steps=-3'], 'steps = -3'),
        ('bad stop', [f'data.path={demo_npz}', '--stop-after', '0'], '--stop-after'),
    ]


def test_each_bad_input_gives_one_error_line_and_no_files(tmp_path, demo_npz, capsys):
    for name, argv, text in _bad_inputs(tmp_path, demo_npz):
        out = tmp_path / f'out-{name.replace(" ", "_")}'
        code = main([*TINY, *argv, f'out_dir={out}'])
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert code == 2, name
        assert len(lines) == 1 and lines[0].startswith('trainer: error: '), (name, lines)
        assert text in lines[0], (name, lines[0])
        assert not out.exists(), f'{name}: the run left {out} behind'
        assert captured.out == '', name


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path, demo_npz, capsys):
    argv = [*TINY, f'data.path={demo_npz}', 'optim.steps=4', f'out_dir={tmp_path / "run"}']
    assert main(argv) == 0
    before = (tmp_path / 'run' / 'final.pt').stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 2
    assert '--resume' in capsys.readouterr().err
    assert (tmp_path / 'run' / 'final.pt').stat().st_mtime_ns == before


def test_print_config_shows_the_resolved_config(capsys):
    assert main(['--config', os.path.join(REPO, 'config/train_pusht.yaml'), '--print-config',
                 'optim.lr=3e-4', 'method=ibc']) == 0
    text = capsys.readouterr().out
    assert 'lr: 0.0003' in text and 'method: ibc' in text and 'kind: unet' in text


def _final_tensors(path):
    payload = torch.load(path, weights_only=False)
    return {f'{part}.{k}': v for part in ('state_dict', 'raw_state_dict')
            for k, v in payload[part].items()}


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, demo_npz):
    run = [*TINY, f'data.path={demo_npz}', 'method=diffusion',
           'method_config={diffusion: {ddim: {train_steps: 20, sample_steps: 2}}}',
           'optim.steps=1500', 'checkpoint_every=50', 'log_every=50']
    killed = tmp_path / 'killed'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': REPO}
    proc = subprocess.Popen([sys.executable, '-m', 'energyflow_ros.cli.trainer', *run,
                             f'out_dir={killed}'], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / 'checkpoint.pt').exists():
        assert proc.poll() is None, 'the trainer exited before its first checkpoint'
        assert time.monotonic() < deadline, 'no checkpoint within 120 s'
        time.sleep(0.005)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert still_running and proc.returncode == -signal.SIGKILL
    assert not (killed / 'final.pt').exists()
    step = torch.load(killed / 'checkpoint.pt', weights_only=False)['step']
    assert 50 <= step < 1500 and step % 50 == 0
    assert main([*run, f'out_dir={killed}', '--resume']) == 0
    assert main([*run, f'out_dir={tmp_path / "whole"}']) == 0
    resumed, whole = (_final_tensors(p / 'final.pt') for p in (killed, tmp_path / 'whole'))
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert not [n for n in os.listdir(killed) if n.startswith('.ckpt-')]


def test_a_finished_run_missing_its_final_checkpoint_writes_it_on_resume(tmp_path, demo_npz):
    run = [*TINY, f'data.path={demo_npz}', 'optim.steps=20', 'checkpoint_every=10',
           'log_every=10', f'out_dir={tmp_path}']
    assert main(run) == 0
    written = _final_tensors(tmp_path / 'final.pt')
    os.remove(tmp_path / 'final.pt')  # killed between the last checkpoint and final.pt
    assert main([*run, '--resume']) == 0
    rewritten = _final_tensors(tmp_path / 'final.pt')
    assert rewritten.keys() == written.keys()
    assert all(torch.equal(rewritten[k], written[k]) for k in written)


def test_a_corrupt_checkpoint_is_reported_not_overwritten(tmp_path, demo_npz, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'checkpoint.pt').write_bytes(b'truncated')
    (run / '.ckpt-left-by-a-kill').write_bytes(b'partial')
    assert main([*TINY, f'data.path={demo_npz}', f'out_dir={run}', '--resume']) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and 'not a readable checkpoint' in lines[0]
    assert sorted(os.listdir(run)) == ['checkpoint.pt']
    assert (run / 'checkpoint.pt').read_bytes() == b'truncated'


def test_a_checkpoint_that_is_not_the_trainers_is_reported_not_overwritten(
        tmp_path, demo_npz, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    torch.save({'model': {}}, run / 'checkpoint.pt')  # e.g. another tool's weights
    assert main([*TINY, f'data.path={demo_npz}', f'out_dir={run}', '--resume']) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and 'not a trainer checkpoint to resume' in lines[0], lines
    assert "lacks ['state_dict'," in lines[0]
    assert sorted(os.listdir(run)) == ['checkpoint.pt']


def test_a_finished_run_is_exported_to_onnx_for_the_robot(tmp_path, demo_npz, capsys):
    from energyflow_ros.runtime.onnx_model import load_model
    run = [t for t in TINY if t != '--no-export']
    assert main([*run, 'method=energyflow', f'data.path={demo_npz}', 'optim.steps=3',
                 f'out_dir={tmp_path}']) == 0
    assert 'exported energyflow (obstacles2d)' in capsys.readouterr().out
    model = load_model(str(tmp_path / 'model.onnx'), joint_names=['robot_x', 'robot_y'])
    assert model.metadata.method == 'energyflow' and model.metadata.horizon == 4
    assert model.metadata.data_sha256 == torch.load(
        tmp_path / 'final.pt', weights_only=False)['train_meta']['data_sha256']
