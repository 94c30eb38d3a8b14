"""Data-parallel training: 2 gloo processes on CPU under torchrun stay in lock-step."""

import os
import subprocess
import sys

import pytest
import torch

from energyflow_ros.sim.demos import collect_demos
from energyflow_ros.training.trainer import load_train_config, train, TrainError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in every torchrun process: records which rank writes checkpoints, trains, and saves
# that rank's final weights for the test to compare.
WORKER = """
import os, sys
import torch
torch.set_num_threads(1)
from energyflow_ros.training import trainer as T
rank, prefix = int(os.environ['RANK']), sys.argv[1]
real_save = T.save_checkpoint
def recording_save(path, *args, **kwargs):
    with open(f'{prefix}.writes.rank{rank}', 'a') as handle:
        handle.write(os.path.basename(path) + '\\n')
    return real_save(path, *args, **kwargs)
T.save_checkpoint = recording_save
result = T.train(T.load_train_config(None, sys.argv[2:]), log=lambda line: None)
torch.save({'method': result.trainer.method.state_dict(), 'ema': result.trainer.ema.state_dict(),
            'world': result.trainer.ctx.world_size}, f'{prefix}.weights.rank{rank}.pt')
"""


def _overrides(npz, out_dir):
    tiny_rnce = '{rnce: {n_negatives: 4, proposal: {n_components: 2, hidden: 16, depth: 1}}}'
    return ['task=obstacles2d', 'data.source=npz', f'data.path={npz}', 'method=rnce',
            f'method_config={tiny_rnce}', 'backbone.mlp.hidden=16', 'backbone.mlp.depth=1',
            'horizon=4', 'executed_steps=2', 'optim.batch_size=16', 'optim.steps=12',
            'optim.lr=1e-3', 'optim.warmup_steps=2', 'checkpoint_every=5', 'log_every=5',
            'eval.final=false', 'progress=false', 'device=cpu', f'out_dir={out_dir}']


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp')
    npz = str(root / 'demos.npz')
    collect_demos('obstacles2d', 10, seed=0).save_npz(npz)
    worker = root / 'worker.py'
    worker.write_text(WORKER)
    prefix, out = str(root / 'record'), root / 'run'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': REPO}
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',
                           '--nproc_per_node', '2', str(worker), prefix,
                           *_overrides(npz, out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, prefix, out, npz


def test_both_ranks_end_with_identical_weights(ddp_run):
    _, prefix, _, _ = ddp_run
    ranks = [torch.load(f'{prefix}.weights.rank{r}.pt', weights_only=False) for r in (0, 1)]
    assert ranks[0]['world'] == ranks[1]['world'] == 2
    for part in ('method', 'ema'):
        a, b = ranks[0][part], ranks[1][part]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part


def test_only_rank_zero_writes_and_the_checkpoint_records_both_ranks(ddp_run):
    _, prefix, out, _ = ddp_run
    with open(f'{prefix}.writes.rank0') as handle:
        writes = handle.read().split()
    assert writes == ['checkpoint.pt', 'checkpoint.pt', 'checkpoint.pt', 'final.pt']
    assert not os.path.exists(f'{prefix}.writes.rank1')
    assert sorted(os.listdir(out)) == ['checkpoint.pt', 'final.pt', 'metrics.csv',
                                       'train_config.yaml']
    payload = torch.load(out / 'checkpoint.pt', weights_only=False)
    assert payload['world_size'] == 2 and payload['step'] == 12
    first, second = payload['rng']['generators']
    assert not torch.equal(first, second), 'each rank draws its own loss noise'


def test_a_two_process_checkpoint_is_not_resumed_by_one_process(ddp_run, tmp_path):
    _, _, out, npz = ddp_run
    copy = tmp_path / 'copy'
    copy.mkdir()
    (copy / 'checkpoint.pt').write_bytes((out / 'checkpoint.pt').read_bytes())
    cfg = load_train_config(None, _overrides(npz, copy))
    with pytest.raises(TrainError, match='2 process'):
        train(cfg, resume=True, log=lambda line: None)


def test_cuda_rng_state_is_this_processs_gpu_and_restores_on_fewer_gpus(monkeypatch):
    # A state per visible GPU (get_rng_state_all) raised IndexError when a run from an 8-GPU
    # machine resumed on a 1-GPU one; only this process's GPU state is kept now.
    from energyflow_ros.training.distributed import (
        DistContext, gather_rng_state, restore_rng_state,
    )
    calls = []
    monkeypatch.setattr(torch.cuda, 'get_rng_state',
                        lambda device: calls.append(('get', device)) or torch.tensor([7]))
    monkeypatch.setattr(torch.cuda, 'set_rng_state',
                        lambda state, device: calls.append(('set', int(state[0]), device)))
    gpu1 = DistContext(device=torch.device('cuda', 1))
    generator = torch.Generator()
    state = gather_rng_state(gpu1, generator)
    assert int(state['cuda'][0]) == 7 and calls == [('get', torch.device('cuda', 1))]
    state['device'] = 'cuda'          # the generator here is a CPU one; its state still loads
    gpu0 = DistContext(device=torch.device('cuda', 0))
    assert restore_rng_state(state, gpu0, generator, reseed=1)
    assert calls[-1] == ('set', 7, torch.device('cuda', 0))
    # an earlier checkpoint's list: this device's entry, or none when it had fewer GPUs
    restore_rng_state({**state, 'cuda': [torch.tensor([3]), torch.tensor([4])]}, gpu1,
                      generator, reseed=1)
    assert calls[-1] == ('set', 4, torch.device('cuda', 1))
    calls.clear()
    restore_rng_state({**state, 'cuda': [torch.tensor([3])]}, gpu1, generator, reseed=1)
    assert calls == []
