"""ChunkPlanner: raw history in, raw chunk out; cold and warm starts; determinism; baselines."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from energyflow_ros.core.samplers import shift_chunk as torch_shift_chunk
from energyflow_ros.export.graphs import DDIMGraph
from energyflow_ros.export.onnx_export import export_method
from energyflow_ros.runtime import ChunkPlanner, load_model
from energyflow_ros.runtime.planner import sample_mixture, shift_chunk
from test.export_fixtures import (
    export_tiny, linear_task, linear_task_answer, normalizers, trained_energyflow,
)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A briefly trained EnergyFlow model of the linear task, exported."""
    method, obs_norm, act_norm, meta = trained_energyflow()
    path = os.path.join(str(tmp_path_factory.mktemp('trained')), 'linear.onnx')
    export_method(method, obs_norm, act_norm, meta, path, n_steps=10)
    return path


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Untrained tiny families (name -> (path, torch method))."""
    folder = str(tmp_path_factory.mktemp('tiny'))
    return {name: export_tiny(folder, name, **({'n_particles': 64} if name == 'energyflow'
                                                 else {}))
            for name in ('energyflow', 'rnce', 'diffusion', 'mse')}


def _spy(model, monkeypatch) -> list:
    calls, real = [], model.run

    def run(graph, feeds):
        calls.append((graph, {k: np.array(v, copy=True) for k, v in feeds.items()}))
        return real(graph, feeds)

    monkeypatch.setattr(model, 'run', run)
    return calls


def test_trained_model_plans_the_demonstrated_chunk_in_raw_units(trained):
    planner = ChunkPlanner(load_model(trained), seed=0)
    obs, _ = linear_task(n=12, seed=5)
    for row in obs:
        history = row.reshape(2, 1)
        planner.reset()
        cold = planner.plan(history)
        assert cold.actions.shape == (2, 2) and cold.particles.shape == (8, 2, 2)
        np.testing.assert_allclose(cold.actions, linear_task_answer(row), atol=0.25)
        assert np.isfinite(cold.energy) and cold.latency_s > 0 and not cold.warm
        # nothing executed since: the warm start refines the same chunk and keeps it
        warm = planner.plan(history, shift=0)
        assert warm.warm
        np.testing.assert_allclose(warm.actions, linear_task_answer(row), atol=0.25)


def test_same_seed_same_plans_other_seed_other_particles(tiny):
    path, _ = tiny['energyflow']
    model = load_model(path)
    history = np.random.default_rng(1).normal(size=(2, 3))
    runs = []
    for seed in (3, 3, 4):
        planner = ChunkPlanner(model, seed=seed)
        runs.append([planner.plan(history) for _ in range(3)])
    for a, b in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.warm == b.warm
    assert not np.array_equal(runs[0][0].particles, runs[2][0].particles)
    planner = ChunkPlanner(model, seed=3)
    first = planner.plan(history)
    planner.plan(history)
    planner.reset(seed=3)
    again = planner.plan(history)
    assert not again.warm
    np.testing.assert_array_equal(first.actions, again.actions)


def _assert_jittered_copies(feeds: dict, target: np.ndarray, std: float) -> None:
    """Every initial particle is ``target`` plus N(0, std**2) noise."""
    jitter = feeds['init'][0] - target
    n = jitter.shape[0]
    assert np.abs(jitter.mean(axis=0)).max() < 4 * std / np.sqrt(n)
    assert jitter.std() == pytest.approx(std, rel=0.15)


def test_warm_start_shifts_the_previous_best_chunk(tiny, monkeypatch):
    path, _ = tiny['energyflow']
    model = load_model(path)
    meta = model.metadata
    calls = _spy(model, monkeypatch)
    planner = ChunkPlanner(model, seed=0)
    history = np.ones((2, 3))
    first = planner.plan(history)
    assert calls[-1][0] == 'sampler' and not first.warm
    assert calls[-1][1]['init'].std() == pytest.approx(meta.sampler.cold.init_std, rel=0.1)
    second = planner.plan(history)
    graph, feeds = calls[-1]
    assert graph == 'warm_sampler' and second.warm
    assert feeds['sigmas'].shape == (meta.sampler.warm.n_steps,)
    _assert_jittered_copies(feeds, shift_chunk(first.normalized_actions, meta.executed_steps,
                                                    planner.warm_extrapolation),
                            meta.sampler.warm.init_std)
    planner.plan(history, shift=1)
    _assert_jittered_copies(calls[-1][1], shift_chunk(second.normalized_actions, 1,
                                                    planner.warm_extrapolation),
                            meta.sampler.warm.init_std)
    planner.reset()
    assert not planner.plan(history).warm
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f'warm_extrapolation = {bad} must be in'):
            ChunkPlanner(model, warm_extrapolation=bad)


def test_shift_chunk_matches_the_torch_warm_start():
    chunk = np.arange(24, dtype=np.float32).reshape(2, 6, 2)
    for executed in (0, 1, 3, 6, 9):
        for extrapolation in (0.0, 0.5, 1.0):
            np.testing.assert_array_equal(
                shift_chunk(chunk, executed, extrapolation),
                torch_shift_chunk(torch.tensor(chunk), executed, extrapolation).numpy())


def test_shift_chunk_refills_by_holding_or_continuing_the_last_step():
    ramp = np.stack([np.arange(6.0), np.zeros(6)], axis=-1)      # x moves 1 per step
    np.testing.assert_array_equal(shift_chunk(ramp, 2)[:, 0], [2, 3, 4, 5, 5, 5])
    np.testing.assert_array_equal(shift_chunk(ramp, 2, 1.0)[:, 0], [2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(shift_chunk(ramp, 2, 0.5)[:, 0], [2, 3, 4, 5, 5.5, 6])
    assert not shift_chunk(ramp, 2, 1.0)[:, 1].any(), 'a still dimension stays still'


def test_mixture_sampling_follows_weights_means_and_stds():
    logits = np.log(np.array([[0.25, 0.75]]))
    means = np.array([[[-10.0, 0.0], [10.0, 5.0]]])
    stds = np.array([[[0.5, 0.5], [2.0, 1.0]]])
    x = sample_mixture(logits, means, stds, 20000, np.random.default_rng(0))[0]
    right = x[:, 0] > 0
    assert right.mean() == pytest.approx(0.75, abs=0.015)
    np.testing.assert_allclose(x[right].mean(axis=0), [10.0, 5.0], atol=0.05)
    np.testing.assert_allclose(x[right].std(axis=0), [2.0, 1.0], rtol=0.05)
    np.testing.assert_allclose(x[~right].std(axis=0), [0.5, 0.5], rtol=0.05)


def test_rnce_cold_start_draws_from_the_proposal(tiny, monkeypatch):
    path, method = tiny['rnce']
    model = load_model(path)
    planner = ChunkPlanner(model, n_particles=500, seed=0)
    calls = _spy(model, monkeypatch)
    plan = planner.plan(np.zeros((2, 3)))
    assert [c[0] for c in calls] == ['proposal', 'sampler'] and np.isfinite(plan.energy)
    obs = calls[0][1]['obs']
    with torch.no_grad():
        log_w, means, stds = method.proposal.parameters_for(torch.tensor(obs))
    init = calls[1][1]['init'][0].reshape(500, -1)
    out = model.run('proposal', {'obs': obs})     # the exported proposal is torch's mixture
    weights = np.exp(out['logits'] - out['logits'].max(1, keepdims=True))
    np.testing.assert_allclose(weights / weights.sum(1, keepdims=True), log_w.exp().numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(out['means'], means.numpy(), atol=1e-5)
    np.testing.assert_allclose(out['stds'], stds.numpy(), atol=1e-5)
    # ... and the particles are exactly the planner's generator's draws from it
    draws = sample_mixture(out['logits'], out['means'], out['stds'], 500,
                           np.random.default_rng(0))
    np.testing.assert_array_equal(init, draws.reshape(500, -1))
    assert init.std(axis=0).min() > 0.5 * float(stds.min())      # spread, not one point
    assert plan.particles.shape == (500, 4, 2)


def test_rnce_without_langevin_steps_plans_in_one_graph_call(tmp_path, monkeypatch):
    path, method = export_tiny(str(tmp_path), 'rnce', n_steps=0)
    model = load_model(path)
    planner = ChunkPlanner(model, n_particles=500, seed=0)
    assert not planner.warm_start                  # every chunk is drawn afresh
    calls = _spy(model, monkeypatch)
    history = np.zeros((2, 3))
    plan = planner.plan(history)
    assert [c[0] for c in calls] == ['sampler'] and not plan.warm
    feeds = calls[0][1]
    assert feeds['uniforms'].shape == (1, 500) and feeds['normals'].shape == (1, 500, 4, 2)
    assert 0 <= feeds['uniforms'].min() and feeds['uniforms'].max() < 1
    # the particles are the proposal's draws and the plan is the lowest-energy one
    with torch.no_grad():
        log_w, means, stds = method.proposal.parameters_for(torch.tensor(feeds['obs']))
    expected_mean = (log_w.exp()[0, :, None] * means[0]).sum(0).numpy()
    spread = float(stds.max() + (means - means.mean(1, keepdim=True)).abs().max())
    np.testing.assert_allclose(plan.particles.reshape(500, -1).mean(axis=0), expected_mean,
                               atol=4 * spread / np.sqrt(500))
    energies = model.run('energy', {'obs': feeds['obs'], 'actions': plan.particles[None],
                                    'sigma': np.zeros(1, np.float32)})['energies'][0]
    np.testing.assert_allclose(plan.normalized_actions, plan.particles[np.argmin(energies)])
    again = ChunkPlanner(model, n_particles=500, seed=0).plan(history)
    np.testing.assert_array_equal(again.actions, plan.actions)          # seeded
    assert not np.array_equal(planner.plan(history).actions, plan.actions)  # fresh draws
    assert planner.plan_batch(np.zeros((3, 2, 3))).actions.shape == (3, 4, 2)


def test_baselines_plan_like_their_torch_models(tiny):
    obs_norm, act_norm = normalizers()
    history = np.random.default_rng(2).normal(size=(2, 3)) * 2 + 1
    z = torch.tensor(obs_norm.normalize(history.reshape(1, -1)), dtype=torch.float32)
    path, method = tiny['mse']
    plan = ChunkPlanner(load_model(path)).plan(history)
    with torch.no_grad():
        want = act_norm.denormalize(method.net(z)[0].numpy())
    np.testing.assert_allclose(plan.actions, want, rtol=1e-4, atol=1e-4)
    assert plan.energy == 0.0 and not plan.warm
    path, method = tiny['diffusion']
    model = load_model(path)
    init = np.random.default_rng(9).standard_normal((1, 1, 4, 2), dtype=np.float32)
    plan = ChunkPlanner(model, seed=9).plan(history)
    with torch.no_grad():
        want = DDIMGraph(method)(z, torch.tensor(init))[0][0].numpy()
    np.testing.assert_allclose(plan.normalized_actions, want, rtol=1e-3, atol=1e-3)


def test_plan_batch_and_particle_count(tiny):
    path, _ = tiny['mse']
    planner = ChunkPlanner(load_model(path))
    histories = np.random.default_rng(3).normal(size=(5, 2, 3))
    batch = planner.plan_batch(histories)
    assert batch.actions.shape == (5, 4, 2) and batch.energies.shape == (5,)
    np.testing.assert_allclose(batch.actions[2], planner.plan(histories[2]).actions, atol=1e-5)
    path, _ = tiny['energyflow']
    planner = ChunkPlanner(load_model(path), n_particles=5)
    assert planner.plan(histories[0]).particles.shape == (5, 4, 2)
    assert planner.plan_batch(histories.reshape(5, 6)).actions.shape == (5, 4, 2)


def test_bad_observations_are_rejected(tiny):
    planner = ChunkPlanner(load_model(tiny['mse'][0]))
    with pytest.raises(ValueError, match='2 frame\\(s\\) of 3 values \\(x, y, z\\)'):
        planner.plan(np.zeros((2, 4)))
    with pytest.raises(ValueError, match='non-finite'):
        planner.plan(np.array([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match='per batch row'):
        planner.plan_batch(np.zeros((3, 5)))


def test_a_renamed_model_without_its_warm_file_is_refused_when_warm_start_is_asked(
        tiny, tmp_path):
    import shutil

    renamed = str(tmp_path / 'robot.onnx')  # the sampler file alone, under another name
    shutil.copy(tiny['energyflow'][0], renamed)
    model = load_model(renamed)
    with pytest.raises(ValueError, match=r'robot\.warm\.onnx is missing: the model was '
                                         'exported with a warm-start sampler'):
        ChunkPlanner(model)
    assert not ChunkPlanner(model, warm_start=False).warm_start  # cold on purpose: allowed
    for suffix in ('warm', 'energy'):  # the whole family renamed: warm start as exported
        shutil.copy(tiny['energyflow'][0].replace('.onnx', f'.{suffix}.onnx'),
                    renamed.replace('.onnx', f'.{suffix}.onnx'))
    assert ChunkPlanner(load_model(renamed)).warm_start


def test_a_non_finite_plan_is_not_the_next_warm_start(tiny, monkeypatch):
    path, _ = tiny['energyflow']
    model = load_model(path)
    planner = ChunkPlanner(model, seed=0)
    history = np.ones((2, 3))
    assert np.all(np.isfinite(planner.plan(history).actions))
    real = model.run

    def overflow_once(graph, feeds):  # e.g. an fp16 engine overflowing on one call
        out = dict(real(graph, feeds))
        out['action'] = np.full_like(out['action'], np.nan)
        monkeypatch.setattr(model, 'run', real)
        return out
    monkeypatch.setattr(model, 'run', overflow_once)
    assert planner.plan(history).warm  # warm from the good plan, came out NaN
    calls = _spy(model, monkeypatch)
    recovered = planner.plan(history)
    assert calls[-1][0] == 'sampler' and not recovered.warm  # cold: the NaN chunk is not kept
    assert np.all(np.isfinite(recovered.actions))


def test_describe_names_the_sampler_and_its_warm_start(tiny):
    from energyflow_ros.runtime.planner import describe

    meta = load_model(tiny['energyflow'][0]).metadata
    warm = meta.sampler.warm
    line = describe(meta)
    assert line.startswith('energyflow model for ') and 'gradient sampler N=64' in line
    assert f'K={meta.sampler.cold.n_steps}, warm K={warm.n_steps} from sigma ' \
        f'{warm.init_std:.3g}' in line and 'chunk 4x2' in line
    assert 'warm' not in describe(load_model(tiny['diffusion'][0]).metadata)
