"""Export: hand-written gradients, schedules that reproduce the torch samplers, the fused graph,
the parity gate, metadata and atomic writing."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from energyflow_ros.core.energy import candidate_energies, candidate_energies_and_grads
from energyflow_ros.core.methods import build_method
from energyflow_ros.export import onnx_export
from energyflow_ros.export.graphs import AutogradEnergyTerm, energy_term
from energyflow_ros.export.onnx_export import export_checkpoint, export_method, ExportError
from energyflow_ros.export.parity import ParityError, reference_sampler
from energyflow_ros.export.sampler_specs import sampler_spec
from energyflow_ros.runtime.model_format import graph_path, METADATA_KEY, ModelMetadata
from energyflow_ros.training.checkpoint import CheckpointError
from test.export_fixtures import (
    export_tiny, normalizers, SPEC, tiny_method, train_meta, write_checkpoint,
)

ENERGY_METHODS = ['energyflow', 'irnce', 'rnce', 'ibc']


def _metadata(path: str) -> ModelMetadata:
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    return ModelMetadata.from_json(props[METADATA_KEY], path)


def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('head', ['linear', 'squared_norm'])
@pytest.mark.parametrize('activation', ['silu', 'softplus', 'gelu', 'tanh'])
@pytest.mark.parametrize('name', ENERGY_METHODS)
def test_hand_written_gradient_matches_autograd(name, activation, head):
    torch.manual_seed(1)
    method = build_method(name, SPEC, {'kind': 'mlp', 'mlp': {
        'hidden': 16, 'depth': 3, 'activation': activation, 'energy_head': head}}, {})
    term, traced = energy_term(method.eval())
    assert not traced
    obs, act, sigma = torch.randn(3, 6), torch.randn(3, 5, 4, 2), torch.tensor([0.3])
    with torch.no_grad():
        e, g = term.energy_and_grad(obs, act, sigma)
        e_only = term.energy(obs, act, sigma)
    e_ref, g_ref = AutogradEnergyTerm(method).energy_and_grad(obs, act, sigma)
    torch.testing.assert_close(e, e_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e_only, e_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_energyflow_schedule_reproduces_the_probability_flow_sampler():
    method = tiny_method('energyflow')
    spec = sampler_spec(method, n_particles=5, n_steps=7, warm_steps=3)
    obs = torch.randn(2, 6)
    native = method.sampler()
    native.cfg = type(native.cfg)(**{**native.cfg.__dict__, 'n_particles': 5, 'n_steps': 7})
    expected = native.sample(obs, torch.Generator().manual_seed(3))
    init = spec.cold.init_std * torch.randn((2, 5, 4, 2), generator=torch.Generator()
                                            .manual_seed(3))
    got = reference_sampler(method, obs, init, spec.cold.sigmas, spec.cold.step_sizes,
                            torch.zeros(7, 2, 5, 4, 2), spec.rank_sigma)
    torch.testing.assert_close(got.particles, expected.particles, rtol=0, atol=0)
    torch.testing.assert_close(got.actions, expected.actions, rtol=0, atol=0)
    previous = expected.particles
    warm = native.sample(obs, torch.Generator().manual_seed(4), init=previous, n_steps=3)
    jitter = torch.randn(previous.shape, generator=torch.Generator().manual_seed(4))
    got = reference_sampler(method, obs, previous + spec.warm.init_std * jitter,
                            spec.warm.sigmas, spec.warm.step_sizes, torch.zeros(3, 2, 5, 4, 2),
                            spec.rank_sigma)
    torch.testing.assert_close(got.actions, warm.actions, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('warm_steps', [None, 2])
def test_torch_warm_start_takes_the_exported_warm_step_count(warm_steps):
    # The trainer's warm-started evaluation (torch) and the exported warm sampler must run
    # the same schedule: flow.warm_steps when the config sets it, else the cold step density.
    method = tiny_method('energyflow')
    flow = dataclasses.replace(method.cfg.flow, n_particles=3, n_steps=10, warm_start_t=0.6,
                               warm_steps=warm_steps)
    method.cfg = dataclasses.replace(method.cfg, flow=flow)
    native, spec = method.sampler(), sampler_spec(method)
    assert spec.warm.n_steps == (warm_steps or 6)         # 10 steps over [t_end, 1] -> 6
    assert sampler_spec(method, warm_steps=4).warm.n_steps == 4   # export's choice wins
    obs, previous = torch.randn(2, 6), torch.randn(2, 3, 4, 2)
    warm = native.sample(obs, torch.Generator().manual_seed(4), init=previous)
    jitter = torch.randn(previous.shape, generator=torch.Generator().manual_seed(4))
    got = reference_sampler(method, obs, previous + spec.warm.init_std * jitter,
                            spec.warm.sigmas, spec.warm.step_sizes,
                            torch.zeros(spec.warm.n_steps, 2, 3, 4, 2), spec.rank_sigma)
    torch.testing.assert_close(got.actions, warm.actions, rtol=1e-6, atol=1e-6)


def test_irnce_schedule_reproduces_the_annealed_langevin_sampler():
    method = tiny_method('irnce')
    spec = sampler_spec(method)
    cfg = method.cfg.langevin
    assert spec.cold.n_steps == cfg.n_scales * cfg.steps_per_scale
    obs = torch.randn(2, 6)
    expected = method.sampler().sample(obs, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    init = spec.cold.init_std * torch.randn((2, cfg.n_particles, 4, 2), generator=gen)
    noise = torch.stack([s * torch.randn((2, cfg.n_particles, 4, 2), generator=gen)
                         for s in spec.cold.noise_scales])
    got = reference_sampler(method, obs, init, spec.cold.sigmas, spec.cold.step_sizes, noise,
                            spec.rank_sigma)
    torch.testing.assert_close(got.actions, expected.actions, rtol=1e-5, atol=1e-5)


def test_warm_start_time_can_be_chosen_at_export():
    method = tiny_method('energyflow')
    trained = sampler_spec(method, n_steps=10)
    later = sampler_spec(method, n_steps=10, warm_start_t=0.7)
    assert later.cold == trained.cold                       # the cold sampler is unchanged
    assert later.warm.init_std > trained.warm.init_std      # re-noised further
    assert later.warm.n_steps > trained.warm.n_steps        # same step density over [t_end, t]
    assert sampler_spec(method, n_steps=10, warm_steps=2, warm_start_t=0.7).warm.n_steps == 2
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=f'warm_start_t = {bad}'):
            sampler_spec(method, warm_start_t=bad)
    with pytest.raises(ValueError, match='EnergyFlow models only, not rnce'):
        sampler_spec(tiny_method('rnce'), warm_start_t=0.5)


def test_sampler_spec_rejects_bad_counts_and_describes_baselines():
    with pytest.raises(ValueError, match='n_particles'):
        sampler_spec(tiny_method('energyflow'), n_particles=0)
    assert sampler_spec(tiny_method('diffusion')).kind == 'ddim'
    assert sampler_spec(tiny_method('mse')).init == 'none'
    rnce = sampler_spec(tiny_method('rnce'))
    assert rnce.init == 'proposal' and rnce.kind == 'gradient'
    ranked = sampler_spec(tiny_method('rnce'), n_particles=5, n_steps=0)
    assert (ranked.kind, ranked.init, ranked.n_particles, ranked.n_steps) == (
        'proposal_rank', 'proposal', 5, 0)
    assert ranked.cold is None and ranked.warm is None and ranked.energy_based
    for name in ('energyflow', 'irnce', 'ibc'):     # their samplers do not start from a proposal
        with pytest.raises(ValueError, match=r'n_steps = 0 is invalid.*R-NCE only'):
            sampler_spec(tiny_method(name), n_steps=0)
    with pytest.raises(ValueError, match='no warm start'):
        sampler_spec(tiny_method('rnce'), n_steps=0, warm_steps=2)


@pytest.mark.parametrize('name', ['energyflow', 'irnce', 'rnce', 'ibc', 'diffusion', 'mse'])
def test_every_method_exports_a_family_that_matches_torch(tmp_path, name):
    path, method = export_tiny(str(tmp_path), name)
    meta = _metadata(path)
    assert meta.method == name and meta.graph == 'sampler'
    expected = {'energyflow': {'sampler', 'warm_sampler', 'energy', 'gradient'},
                'ibc': {'sampler', 'warm_sampler', 'energy', 'gradient'},
                'diffusion': {'sampler'}, 'mse': {'sampler'}}.get(
        name, {'sampler', 'warm_sampler', 'energy', 'gradient', 'proposal'})
    written = {g for g in ('sampler', 'warm_sampler', 'energy', 'gradient', 'proposal')
               if os.path.exists(graph_path(path, g))}
    assert written == expected
    assert set(meta.extra['parity']) == expected
    assert all(p['same_choice'] for p in meta.extra['parity'].values())
    for graph in written:
        model = onnx.load(graph_path(path, graph))
        onnx.checker.check_model(model)
        assert _metadata(graph_path(path, graph)).graph == graph
        assert not {'Loop', 'Scan', 'If'} & {n.op_type for n in model.graph.node}
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(graph_path(path, g))
                                                  for g in written)


def test_diffusion_export_unrolls_the_requested_ddim_steps(tmp_path):
    # n_steps used to be ignored for diffusion: every "DDIM-k" export ran the trained count.
    default, method = export_tiny(str(tmp_path / 'default'), 'diffusion')
    fewer, _ = export_tiny(str(tmp_path / 'fewer'), 'diffusion', n_steps=2)
    assert _metadata(default).sampler.ddim_steps == 4 == _metadata(default).sampler.n_steps
    assert _metadata(fewer).sampler.ddim_steps == 2
    count = {p: sum(n.op_type == 'Gemm' or n.op_type == 'MatMul'
                    for n in onnx.load(p).graph.node) for p in (default, fewer)}
    assert count[default] == 2 * count[fewer] > 0           # one denoiser call per step
    assert set(_metadata(fewer).extra['parity']) == {'sampler'}   # against 2-step torch DDIM
    with pytest.raises(ExportError, match='at most the 20 training steps'):
        export_tiny(str(tmp_path / 'bad'), 'diffusion', n_steps=21)


def test_fused_sampler_has_dynamic_batch_and_particles_and_matches_torch(tmp_path):
    path, method = export_tiny(str(tmp_path), 'energyflow', n_steps=5)
    meta = _metadata(path)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ['obs', 'init', 'sigmas', 'step_sizes',
                                                      'noise', 'rank_sigma']
    assert [o.name for o in session.get_outputs()] == ['action', 'energy', 'particles',
                                                       'energies']
    s = meta.sampler.cold

    def run(obs, init, noise):
        out = session.run(None, {
            'obs': obs.numpy(), 'init': init.numpy(), 'noise': noise.numpy(),
            'sigmas': np.float32(s.sigmas), 'step_sizes': np.float32(s.step_sizes),
            'rank_sigma': np.float32([meta.sampler.rank_sigma])})
        return out, reference_sampler(method, obs, init, s.sigmas, s.step_sizes, noise,
                                      meta.sampler.rank_sigma)

    for b, n in ((1, 3), (4, 9)):
        gen = torch.Generator().manual_seed(b * n)
        obs = torch.randn((b, 6), generator=gen)
        init = 3 * torch.randn((b, n, 4, 2), generator=gen)
        noise = 0.01 * torch.randn((5, b, n, 4, 2), generator=gen)
        out, ref = run(obs, init, noise)
        np.testing.assert_allclose(out[2], ref.particles.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out[0], ref.actions.numpy(), rtol=1e-4, atol=1e-5)
        assert out[0].shape == (b, 4, 2) and out[3].shape == (b, n)
        assert np.array_equal(np.argmin(out[3], axis=1),
                              np.argmin(candidate_energies_and_grads(
                                  method.energy, obs, ref.particles,
                                  meta.sampler.rank_sigma)[0].numpy(), axis=1))
    # a diverged particle ranks last, as in torch: onnxruntime's ArgMin alone keeps a NaN that
    # comes first, so a NaN particle 0 was chosen (and the plan refused) over finite ones
    init[0, 0] = math.nan
    init[1, 4, 2, 1] = math.inf
    init[2] = math.nan
    out, ref = run(obs, init, noise)
    assert np.isnan(out[3][0, 0]) and not np.all(np.isfinite(out[2][1, 4]))
    assert np.all(np.isfinite(out[0][[0, 1, 3]])) and np.all(np.isnan(out[0][2]))
    np.testing.assert_allclose(out[0][[0, 1, 3]], ref.actions.numpy()[[0, 1, 3]], rtol=1e-4,
                               atol=1e-5)


def test_rnce_without_langevin_steps_draws_and_ranks_in_one_graph(tmp_path):
    path, method = export_tiny(str(tmp_path), 'rnce', n_steps=0, n_particles=6)
    meta = _metadata(path)
    assert meta.sampler.kind == 'proposal_rank' and meta.sampler.n_particles == 6
    assert set(meta.extra['parity']) == {'sampler', 'energy', 'gradient', 'proposal'}
    assert not os.path.exists(graph_path(path, 'warm_sampler'))
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ['obs', 'uniforms', 'normals',
                                                      'rank_sigma']
    for b, n in ((1, 3), (4, 9)):
        gen = torch.Generator().manual_seed(b * n)
        obs, normals = torch.randn((b, 6), generator=gen), torch.randn((b, n, 4, 2),
                                                                      generator=gen)
        uniforms = torch.rand((b, n), generator=gen)
        action, energy, particles, energies = session.run(None, {
            'obs': obs.numpy(), 'uniforms': uniforms.numpy(), 'normals': normals.numpy(),
            'rank_sigma': np.zeros(1, np.float32)})
        # each particle is its component's mean plus its std times the normal draw, the
        # component being the first whose cumulative weight exceeds the uniform draw
        with torch.no_grad():
            log_w, means, stds = method.proposal.parameters_for(obs)
        cdf = np.cumsum(np.exp(log_w.numpy()), axis=1)
        for i in range(b):
            for j in range(n):
                c = min(int(np.sum(uniforms[i, j].item() > cdf[i])), cdf.shape[1] - 1)
                want = means[i, c] + stds[i, c] * normals[i, j].flatten()
                np.testing.assert_allclose(particles[i, j].ravel(), want.numpy(), rtol=1e-5,
                                           atol=1e-5)
        with torch.no_grad():
            ref = candidate_energies(method.energy, obs, torch.as_tensor(particles), None)
        np.testing.assert_allclose(energies, ref.numpy(), rtol=1e-4, atol=1e-4)
        best = np.argmin(energies, axis=1)
        np.testing.assert_array_equal(action, particles[np.arange(b), best])
        np.testing.assert_array_equal(energy, energies[np.arange(b), best])
    # a draw that is not finite ranks last
    normals[:, 0] = math.nan
    action, energies = session.run(['action', 'energies'], {
        'obs': obs.numpy(), 'uniforms': uniforms.numpy(), 'normals': normals.numpy(),
        'rank_sigma': np.zeros(1, np.float32)})
    assert np.all(np.isnan(energies[:, 0])) and np.all(np.isfinite(action))
    np.testing.assert_array_equal(action, particles[np.arange(b), 1 + np.argmin(energies[:, 1:],
                                                                                axis=1)])
    # uniforms pick the components: all draws below the first weight take component 0
    lowest = np.zeros((1, 4), np.float32)
    out = session.run(['particles'], {'obs': np.zeros((1, 6), np.float32), 'uniforms': lowest,
                                      'normals': np.zeros((1, 4, 4, 2), np.float32),
                                      'rank_sigma': np.zeros(1, np.float32)})[0]
    with torch.no_grad():
        mean0 = method.proposal.parameters_for(torch.zeros(1, 6))[1][0, 0].numpy()
    np.testing.assert_allclose(out[0], np.tile(mean0.reshape(1, 4, 2), (4, 1, 1)), atol=1e-5)


def test_benchmark_sized_model_stays_small(tmp_path):
    spec = type(SPEC)(obs_dim=8, action_dim=2, horizon=16)
    method = build_method('energyflow', spec, {'kind': 'mlp', 'mlp': {'hidden': 256,
                                                                      'depth': 4}}, {})
    obs_norm, act_norm = normalizers()
    meta = train_meta(obs_names=[f'o{i}' for i in range(4)], horizon=16)
    obs_norm.mean, obs_norm.std = np.zeros(8), np.ones(8)
    path = str(tmp_path / 'big.onnx')
    export_method(method.eval(), obs_norm, act_norm, meta, path, n_steps=20)
    params_mb = sum(p.numel() for p in method.parameters()) * 4 / 1e6
    for graph in ('sampler', 'warm_sampler', 'energy', 'gradient'):
        size_mb = os.path.getsize(graph_path(path, graph)) / 1e6
        assert size_mb < params_mb + 0.6, f'{graph}: {size_mb:.2f} MB for {params_mb:.2f} MB'


def test_unet_energy_exports_through_make_fx_for_sizes_like_the_example_sizes(tmp_path):
    # the symbolic tracer ties equal sizes together: with example batch 3 and particles 5, a
    # 3-D observation or a 5-joint arm had its batch or particle axis fixed, and export
    # refused; one export covers both (each U-Net export costs tens of seconds on a CPU)
    from energyflow_ros.core.config import ChunkSpec
    from energyflow_ros.data.dataset import Normalizer

    obs_dim, action_dim = 3, 5
    unet = {'kind': 'unet', 'unet': {'channels': [8, 16], 'groups': 4, 'cond_dim': 8,
                                     'head_hidden': 8}}
    method = tiny_method('energyflow', backbone=unet,
                         spec=ChunkSpec(obs_dim, action_dim, 4))
    rng = np.random.default_rng(0)
    norms = (Normalizer.fit(rng.normal(size=(50, obs_dim))),
             Normalizer.fit(rng.normal(size=(50, action_dim))))
    joints = [f'j{i}' for i in range(action_dim)]
    meta = train_meta(obs_names=[f'o{i}' for i in range(obs_dim)], n_obs=1,
                      action_names=joints, joint_names=joints,
                      action_low=[-5.0] * action_dim, action_high=[5.0] * action_dim)
    path = str(tmp_path / 'unet.onnx')
    exported = export_method(method, *norms, meta, path, n_steps=2, warm_steps=1)
    assert exported.extra['gradient'] == 'make_fx'
    assert max(p['max_abs_error'] for p in exported.extra['parity'].values()) < 1e-4


def test_exports_share_one_function_registry_and_give_the_same_graph(monkeypatch):
    import contextlib
    from torch.onnx._internal.exporter import _registration

    from energyflow_ros.export import tracing
    original = _registration.ONNXRegistry.__dict__['from_torchlib']
    builds = []
    real_build = original.__func__
    monkeypatch.setattr(tracing, '_REGISTRIES', {})

    def counted(cls, *args, **kwargs):
        builds.append(1)
        return real_build(cls, *args, **kwargs)
    monkeypatch.setattr(_registration.ONNXRegistry, 'from_torchlib', classmethod(counted))
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
    args = (torch.randn(3, 4),)

    def export():
        return tracing.to_onnx(module, args, ['x'], ['y'], {'x': {0: 'batch'}})
    shared = [export().SerializeToString() for _ in range(2)]
    assert len(builds) == 1, 'the second export built the registry again'
    assert _registration.ONNXRegistry.__dict__['from_torchlib'].__func__ is counted
    monkeypatch.setattr(tracing, '_shared_registry', contextlib.nullcontext)
    assert export().SerializeToString() == shared[0] == shared[1]
    assert len(builds) == 2


def test_example_sizes_differ_from_each_other_and_every_fixed_size():
    for obs_dim, action_dim, horizon in itertools.product([1, 2, 3, 5, 6, 7, 16],
                                                          [1, 2, 3, 5, 7], [1, 4, 16]):
        b, m = onnx_export.example_sizes(obs_dim, horizon, action_dim)
        fixed = {1, obs_dim, horizon, action_dim, horizon * action_dim}
        assert b != m and not {b, m} & fixed, (obs_dim, action_dim, horizon, b, m)


@pytest.mark.parametrize('name, n_steps, part, graph', [
    ('energyflow', None, None, 'energy'),
    ('rnce', 0, 'proposal', 'sampler'),         # the proposal_rank graph's draws are checked
])
def test_parity_gate_refuses_and_writes_nothing(tmp_path, monkeypatch, name, n_steps, part,
                                                graph):
    real_build = onnx_export.build_graphs

    def corrupted(method, spec):
        models = real_build(method, spec)
        with torch.no_grad():       # the graphs now hold weights the torch side does not
            for p in (getattr(method, part) if part else method).parameters():
                p.add_(0.05)
        return models

    monkeypatch.setattr(onnx_export, 'build_graphs', corrupted)
    obs_norm, act_norm = normalizers()
    with pytest.raises(ParityError, match=rf'{graph}: max \|ort - torch\| = [0-9.e-]+, exceeds'):
        export_method(tiny_method(name), obs_norm, act_norm, train_meta(),
                      str(tmp_path / 'm.onnx'), n_steps=n_steps)
    assert os.listdir(tmp_path) == []


def test_a_nan_in_the_torch_reference_fails_the_gate():
    from energyflow_ros.export.parity import _compare, _same_choice

    check = _compare('sampler', [(np.array([0.3, 5.0]), torch.tensor([0.3, float('nan')]))],
                     1e-3)
    assert not check.passed(1e-4) and check.max_excess == float('inf')
    assert not _same_choice(np.array([[0.0, 1.0]]), torch.tensor([[float('nan'), 1.0]]),
                            1e-6, 1e-4)


def test_a_family_write_that_fails_midway_leaves_the_previous_family(tmp_path):
    from energyflow_ros.export.onnx_export import write_family

    obs_norm, act_norm = normalizers()
    path = str(tmp_path / 'm.onnx')
    export_method(tiny_method('energyflow'), obs_norm, act_norm, train_meta(), path, n_steps=2,
                  warm_steps=1)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    models = {graph: onnx.load(graph_path(path, graph)) for graph in
              ('sampler', 'energy', 'gradient', 'warm_sampler')}
    meta = ModelMetadata.from_json(
        {p.key: p.value for p in models['sampler'].metadata_props}[METADATA_KEY])
    os.unlink(graph_path(path, 'warm_sampler'))
    os.mkdir(graph_path(path, 'warm_sampler'))  # the last rename will fail
    before.pop('m.warm.onnx')
    with pytest.raises(OSError):
        write_family(path, models, dataclasses.replace(meta, task='other'))
    after = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)
             if name != 'm.warm.onnx'}
    assert after == before  # every earlier file back as it was, no temporary left


def test_missing_train_meta_and_bad_layouts_are_named(tmp_path):
    ckpt = write_checkpoint(str(tmp_path / 'c.pt'), tiny_method('mse'), meta=None)
    with pytest.raises(ExportError, match="no 'train_meta'"):
        export_checkpoint(ckpt, str(tmp_path / 'm.onnx'))
    obs_norm, act_norm = normalizers()
    bad = [(train_meta(n_obs=3), 'n_obs = 3'), (train_meta(horizon=8), 'horizon 8'),
           (train_meta(control_period_s=0.0), 'control_period_s')]
    for meta, message in bad:
        with pytest.raises(ExportError, match=message):
            export_method(tiny_method('mse'), obs_norm, act_norm, meta, str(tmp_path / 'm.onnx'))
    with pytest.raises(ExportError, match='joint_names'):
        export_method(tiny_method('mse'), obs_norm, act_norm, train_meta(),
                      str(tmp_path / 'm.onnx'), joint_names=['only_one'])
    with pytest.raises(ExportError, match='.onnx'):
        export_method(tiny_method('mse'), obs_norm, act_norm, train_meta(), str(tmp_path / 'm'))
    assert sorted(os.listdir(tmp_path)) == ['c.pt']


def test_checkpoint_export_uses_ema_weights_and_overrides(tmp_path):
    method = tiny_method('energyflow')
    ema = tiny_method('energyflow', seed=7)
    ckpt = write_checkpoint(str(tmp_path / 'c.pt'), method, train_meta(),
                            {'ema_state_dict': {'weights': ema.state_dict(), 'updates': 3}})
    obs, act = torch.randn(2, 6), torch.randn(2, 3, 4, 2)
    feed = {'obs': obs.numpy(), 'actions': act.numpy(), 'sigma': np.float32([0.2])}
    for use_ema, reference in ((True, ema), (False, method)):
        out = str(tmp_path / f'{use_ema}.onnx')
        meta = export_checkpoint(ckpt, out, use_ema=use_ema, n_particles=3, n_steps=2,
                                 warm_steps=1, executed_steps=3, joint_names=['elbow', 'shoulder'])
        got = _session(graph_path(out, 'energy')).run(None, feed)[0]
        want = candidate_energies_and_grads(reference.energy, obs, act, 0.2)[0].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert meta.extra['ema'] is use_ema
    assert (meta.sampler.n_particles, meta.sampler.cold.n_steps, meta.sampler.warm.n_steps,
            meta.executed_steps, meta.joint_names) == (3, 2, 1, 3, ('elbow', 'shoulder'))
    # final.pt holds the EMA weights as its state_dict and the trained ones beside them:
    # --no-ema exported the EMA weights labelled ema = false
    final = write_checkpoint(str(tmp_path / 'final.pt'), ema, train_meta(),
                             {'raw_state_dict': method.state_dict(), 'weights': 'ema'})
    for use_ema, reference in ((True, ema), (False, method)):
        out = str(tmp_path / f'final-{use_ema}.onnx')
        meta = export_checkpoint(final, out, use_ema=use_ema, n_particles=3, n_steps=2)
        got = _session(graph_path(out, 'energy')).run(None, feed)[0]
        want = candidate_energies_and_grads(reference.energy, obs, act, 0.2)[0].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert meta.extra['ema'] is use_ema
    only_ema = write_checkpoint(str(tmp_path / 'only.pt'), ema, train_meta(), {'weights': 'ema'})
    with pytest.raises(CheckpointError, match='holds only EMA weights'):
        export_checkpoint(only_ema, str(tmp_path / 'only.onnx'), use_ema=False)
    assert not os.path.exists(tmp_path / 'only.onnx')


def test_metadata_records_layout_normalisation_and_reward(tmp_path):
    path, method = export_tiny(str(tmp_path), 'energyflow')
    meta = _metadata(path)
    obs_norm, act_norm = normalizers()
    assert meta.obs_names == ('x', 'y', 'z') and meta.n_obs == 2 and meta.obs_dim == 6
    np.testing.assert_allclose(meta.obs_mean, obs_norm.mean)
    np.testing.assert_allclose(meta.action_std, act_norm.std)
    assert (meta.horizon, meta.executed_steps, meta.control_period_s) == (4, 2, 0.1)
    assert meta.data_sha256 == 'f' * 64 and meta.task == 'unit'
    assert meta.reward_sigma == pytest.approx(method.sigma_min)
    assert np.shape(meta.reward_reference) == (16, 4, 2)
    assert meta.sampler.rank_sigma > 0 and meta.sampler.cold.init_std == pytest.approx(10.0)
    assert json.loads(meta.to_json())['extra']['export_id']


def test_reexport_replaces_the_family_and_removes_stale_graphs(tmp_path):
    obs_norm, act_norm = normalizers()
    path = str(tmp_path / 'm.onnx')
    export_method(tiny_method('energyflow'), obs_norm, act_norm, train_meta(), path)
    assert os.path.exists(graph_path(path, 'energy'))
    export_method(tiny_method('mse'), obs_norm, act_norm, train_meta(), path)
    assert os.listdir(tmp_path) == ['m.onnx']
    assert _metadata(path).method == 'mse'
