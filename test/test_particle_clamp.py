"""EnergyFlow's particle clamp (``flow.clamp``): particles kept inside the actuators' limits by
the torch sampler, the fused ONNX graphs and the parity gate alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from energyflow_ros.core.config import ConfigError, NoiseScheduleConfig, ProbabilityFlowConfig
from energyflow_ros.core.methods import build_method
from energyflow_ros.core.samplers import ProbabilityFlowSampler
from energyflow_ros.core.schedules import VESchedule
from energyflow_ros.export import onnx_export
from energyflow_ros.export.onnx_export import export_method
from energyflow_ros.export.parity import ParityError, reference_sampler
from energyflow_ros.export.sampler_specs import sampler_spec
from energyflow_ros.runtime.model_format import METADATA_KEY, ModelFormatError, ModelMetadata
from energyflow_ros.runtime.model_format import SamplerSpec
from energyflow_ros.training.checkpoint import load_checkpoint
from test.analytic import GaussianEnergy
from test.export_fixtures import (
    METHOD_CONFIGS, normalizers, SPEC, TINY_MLP, train_meta, write_checkpoint,
)

CHUNK = (2, 2)
# Raw limits well inside where the untrained tiny energy takes particles started at std 3.
LIMITS = {'action_low': [-1.3, -1.2], 'action_high': [-0.9, -0.6]}


def _clamping_method(clamp: bool = True):
    torch.manual_seed(0)
    cfg = dict(METHOD_CONFIGS['energyflow'])
    cfg['flow'] = {**cfg['flow'], 'clamp': clamp}
    return build_method('energyflow', SPEC, TINY_MLP, cfg).eval()


def _normalised_limits():
    _, act_norm = normalizers()
    return (act_norm.normalize(np.asarray(LIMITS['action_low'])),
            act_norm.normalize(np.asarray(LIMITS['action_high'])))


def test_probability_flow_keeps_particles_in_the_box_it_is_given():
    energy = GaussianEnergy(std=0.05, offset=torch.tensor([[0.3, -0.2], [0.1, 0.4]]))
    sched = VESchedule(NoiseScheduleConfig(sigma_min=0.01, sigma_max=3.0))
    cfg = ProbabilityFlowConfig(n_particles=16, n_steps=20)
    obs = torch.zeros(4, 3)
    box = (torch.full(CHUNK, -0.1), torch.full(CHUNK, 0.1))
    free = ProbabilityFlowSampler(energy, sched, cfg, CHUNK).sample(
        obs, torch.Generator().manual_seed(0))
    held = ProbabilityFlowSampler(energy, sched, cfg, CHUNK, box).sample(
        obs, torch.Generator().manual_seed(0))
    assert free.particles.abs().max() > 0.25          # the minimum lies outside the box
    assert held.particles.abs().max() <= 0.1
    # the box's face nearest the minimum: 0.3 -> 0.1, -0.2 -> -0.1, 0.1 stays, 0.4 -> 0.1
    torch.testing.assert_close(held.actions, energy.minimum(obs).clamp(-0.1, 0.1),
                               atol=0.02, rtol=0)


def test_the_method_clamps_to_the_limits_the_trainer_gave_and_loading_restores_them(tmp_path):
    method = _clamping_method()
    assert method.particle_box is not None and torch.isinf(method.limit_high).all()
    path = write_checkpoint(str(tmp_path / 'c.pt'), method, train_meta(**LIMITS))
    loaded = load_checkpoint(path).method
    low, high = _normalised_limits()
    torch.testing.assert_close(loaded.limit_low, torch.tensor(low, dtype=torch.float32)
                               .expand(SPEC.horizon, -1))
    torch.testing.assert_close(loaded.limit_high, torch.tensor(high, dtype=torch.float32)
                               .expand(SPEC.horizon, -1))
    assert 'limit_low' not in loaded.state_dict()     # old checkpoints load unchanged
    result = loaded.sampler().sample(torch.randn(3, SPEC.obs_dim),
                                     torch.Generator().manual_seed(0))
    assert (result.particles >= loaded.limit_low - 1e-6).all()
    assert (result.particles <= loaded.limit_high + 1e-6).all()
    unclamped = _clamping_method(clamp=False)
    unclamped.set_action_limits(loaded.limit_low, loaded.limit_high)
    assert unclamped.particle_box is None


def test_clamped_export_holds_the_box_in_its_graphs_and_matches_torch(tmp_path):
    method = _clamping_method()
    obs_norm, act_norm = normalizers()
    path = str(tmp_path / 'clamped.onnx')
    meta = export_method(method, obs_norm, act_norm, train_meta(**LIMITS), path, n_steps=4)
    assert meta.sampler.clamp
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {'Max', 'Min'} <= ops
    s = meta.sampler.cold
    gen = torch.Generator().manual_seed(3)
    obs = torch.randn((2, SPEC.obs_dim), generator=gen)
    init = 3 * torch.randn((2, 5, *method.chunk_shape), generator=gen)
    noise = torch.zeros((4, 2, 5, *method.chunk_shape))
    out = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, {
        'obs': obs.numpy(), 'init': init.numpy(), 'noise': noise.numpy(),
        'sigmas': np.float32(s.sigmas), 'step_sizes': np.float32(s.step_sizes),
        'rank_sigma': np.float32([meta.sampler.rank_sigma])})
    low, high = (np.float32(v) for v in _normalised_limits())
    assert (out[2] >= low - 1e-6).all() and (out[2] <= high + 1e-6).all()
    box = (method.limit_low, method.limit_high)
    ref = reference_sampler(method, obs, init, s.sigmas, s.step_sizes, noise,
                            meta.sampler.rank_sigma, box)
    np.testing.assert_allclose(out[2], ref.particles.numpy(), rtol=1e-4, atol=1e-5)
    free = reference_sampler(method, obs, init, s.sigmas, s.step_sizes, noise,
                             meta.sampler.rank_sigma)
    assert np.abs(free.particles.numpy() - out[2]).max() > 0.1   # the clamp did something


def test_a_graph_without_the_clamp_fails_the_parity_gate(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, '_graph_box', lambda method, spec: None)
    obs_norm, act_norm = normalizers()
    with pytest.raises(ParityError, match='sampler: max'):
        export_method(_clamping_method(), obs_norm, act_norm, train_meta(**LIMITS),
                      str(tmp_path / 'm.onnx'), n_steps=4)


def test_unclamped_export_records_no_clamp_and_has_no_box(tmp_path):
    obs_norm, act_norm = normalizers()
    path = str(tmp_path / 'free.onnx')
    meta = export_method(_clamping_method(clamp=False), obs_norm, act_norm,
                         train_meta(**LIMITS), path, n_steps=3)
    assert not meta.sampler.clamp
    names = {t.name for t in onnx.load(path).graph.initializer}
    assert not {'particle_low', 'particle_high'} & names
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert ModelMetadata.from_json(props[METADATA_KEY], path).sampler.clamp is False


def test_clamping_without_limits_is_refused_at_export():
    with pytest.raises(ValueError, match='no action limits'):
        sampler_spec(_clamping_method())


def test_sampler_metadata_clamp_is_checked():
    base = {'kind': 'gradient', 'n_particles': 4, 'init': 'gaussian', 'rank_sigma': 0.1,
            'cold': {'sigmas': [1.0], 'step_sizes': [0.1], 'noise_scales': [0.0],
                     'init_std': 1.0}}
    assert SamplerSpec.from_dict(base).clamp is False           # exported before the field
    assert SamplerSpec.from_dict({**base, 'clamp': True}).clamp is True
    with pytest.raises(ModelFormatError, match='sampler.clamp'):
        SamplerSpec.from_dict({**base, 'clamp': 'yes'})
    with pytest.raises(ModelFormatError, match='only a gradient sampler'):
        SamplerSpec.from_dict({'kind': 'ddim', 'n_particles': 1, 'rank_sigma': 0.0,
                               'ddim_steps': 4, 'clamp': True})
    spec = SamplerSpec.from_dict({**base, 'clamp': True})
    assert SamplerSpec.from_dict(spec.to_dict()) == spec


def test_clamp_setting_must_be_a_boolean():
    with pytest.raises(ConfigError, match='clamp'):
        ProbabilityFlowConfig(clamp='yes')
    assert dataclasses.replace(ProbabilityFlowConfig(), clamp=True).clamp
