"""The MLP energy's head: linear (unbounded) or half a squared norm (bounded below by 0)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from energyflow_ros.core.config import ConfigError
from energyflow_ros.core.methods import build_method
from energyflow_ros.core.energy import candidate_energies
from energyflow_ros.export.onnx_export import export_method
from energyflow_ros.runtime.model_format import graph_path
from test.export_fixtures import METHOD_CONFIGS, normalizers, SPEC, TINY_MLP, train_meta


def _energyflow(head: str, seed: int = 0):
    torch.manual_seed(seed)
    backbone = {'kind': 'mlp', 'mlp': {**TINY_MLP['mlp'], 'energy_head': head}}
    return build_method('energyflow', SPEC, backbone, METHOD_CONFIGS['energyflow']).eval()


def _far_candidates(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    obs = torch.randn(4, SPEC.obs_dim, generator=gen)
    act = torch.randn(4, n, SPEC.horizon, SPEC.action_dim, generator=gen)
    return obs, act * torch.logspace(-1, 3, n).view(1, n, 1, 1)   # out to 1000 std


def test_a_squared_norm_energy_is_bounded_below_where_a_linear_one_is_not():
    obs, far = _far_candidates()
    lowest = {}
    for head in ('linear', 'squared_norm'):
        method = _energyflow(head)
        with torch.no_grad():
            energies = candidate_energies(method.energy, obs, far, method.sigma_min)
        lowest[head] = energies.min().item()
    assert lowest['squared_norm'] >= 0.0
    assert lowest['linear'] < -100.0, lowest        # falls without limit away from the data


def test_the_squared_norm_head_is_as_wide_as_the_chunk_and_old_configs_stay_linear():
    assert _energyflow('squared_norm').net.trunk[-1].out_features == SPEC.flat_action_dim
    assert _energyflow('linear').net.trunk[-1].out_features == 1
    default = build_method('energyflow', SPEC, TINY_MLP, METHOD_CONFIGS['energyflow'])
    assert default.net.trunk[-1].out_features == 1
    with pytest.raises(ConfigError, match='energy_head'):
        _energyflow('softplus')


def test_a_squared_norm_energy_exports_and_its_graphs_stay_non_negative(tmp_path):
    method = _energyflow('squared_norm')
    path = str(tmp_path / 'sq.onnx')
    meta = export_method(method, *normalizers(), train_meta(), path, n_steps=3)
    assert max(p['max_abs_error'] for p in meta.extra['parity'].values()) < 1e-4
    session = ort.InferenceSession(graph_path(path, 'energy'),
                                   providers=['CPUExecutionProvider'])
    obs, far = _far_candidates(64)
    feeds = {i.name: v for i, v in zip(session.get_inputs(), (
        obs.numpy(), far.numpy(), np.array([method.sigma_min], dtype=np.float32)))}
    (energies,) = session.run(None, feeds)[:1]
    assert energies.shape == (4, 64) and energies.min() >= 0.0
