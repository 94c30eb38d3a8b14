"""Checkpoint save -> load reproduces energies and samples exactly; bad files fail clearly."""

import os

import numpy as np
import pytest
import torch

from energyflow_ros.core.config import ChunkSpec
from energyflow_ros.core.methods import build_method, METHODS
from energyflow_ros.data.dataset import Normalizer
from energyflow_ros.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

SPEC = ChunkSpec(obs_dim=3, action_dim=2, horizon=4)
BACKBONES = {'mlp': {'kind': 'mlp', 'mlp': {'hidden': 32, 'depth': 2}},
             'unet': {'kind': 'unet', 'unet': {'channels': [16, 32], 'groups': 4,
                                               'cond_dim': 16, 'head_hidden': 16}}}


def _trained_a_little(name, backbone):
    torch.manual_seed(0)
    method = build_method(name, SPEC, BACKBONES[backbone], {})
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    for _ in range(3):
        loss, _ = method.loss(torch.randn(8, 3), torch.randn(8, 4, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return method.eval()


@pytest.mark.parametrize('backbone', ['mlp', 'unet'])
@pytest.mark.parametrize('name', sorted(METHODS))
def test_save_load_reproduces_outputs_exactly(tmp_path, name, backbone):
    method = _trained_a_little(name, backbone)
    norm = Normalizer.fit(np.random.default_rng(0).normal(size=(50, 3)))
    path = str(tmp_path / 'model.pt')
    save_checkpoint(path, method, norm, Normalizer.identity(2), {'step': 3})
    loaded = load_checkpoint(path)
    obs, act = torch.randn(5, 3), torch.randn(5, 4, 2)
    if name not in ('diffusion', 'mse'):
        sigma = torch.full((5,), 0.1)
        assert torch.equal(method.energy(obs, act, sigma), loaded.method.energy(obs, act, sigma))
    a = method.sampler().sample(obs, torch.Generator().manual_seed(0)).actions
    b = loaded.method.sampler().sample(obs, torch.Generator().manual_seed(0)).actions
    assert torch.equal(a, b)
    np.testing.assert_array_equal(loaded.obs_normalizer.mean, norm.mean)
    assert loaded.payload['step'] == 3
    assert [f for f in os.listdir(tmp_path)] == ['model.pt'], 'temporary files left behind'


def test_missing_and_corrupt_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(str(tmp_path / 'absent.pt'))
    bad = tmp_path / 'corrupt.pt'
    bad.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='not a readable checkpoint'):
        load_checkpoint(str(bad))
    other = tmp_path / 'other.pt'
    torch.save({'format': 99}, other)
    with pytest.raises(CheckpointError, match='format 99'):
        load_checkpoint(str(other))
