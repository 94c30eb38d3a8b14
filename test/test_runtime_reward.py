"""EnergyReward: the centred reward from the exported energy graph equals the torch one."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.special import logsumexp
import torch

from energyflow_ros.core.methods import build_method
from energyflow_ros.core.reward import centered_reward, soft_value_reward
from energyflow_ros.export.onnx_export import export_method
from energyflow_ros.runtime import EnergyReward, load_model
from test.export_fixtures import (
    SPEC, TINY_MLP, export_tiny, linear_task, linear_task_answer, normalizers, train_meta,
    trained_energyflow,
)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Tiny untrained energyflow and mse families."""
    folder = str(tmp_path_factory.mktemp('reward'))
    return {name: export_tiny(folder, name) for name in ('energyflow', 'mse')}


def test_matches_the_torch_centred_reward(tiny):
    path, method = tiny['energyflow']
    reward = EnergyReward(load_model(path))
    meta = reward.model.metadata
    obs_norm, act_norm = normalizers()
    rng = np.random.default_rng(0)
    history = rng.normal(size=(5, 2, 3)) * 2 + 1
    chunks = rng.normal(size=(5, 4, 2)) * 0.5 - 1
    got = reward(history, chunks)
    obs = torch.tensor(obs_norm.normalize(history.reshape(5, -1)), dtype=torch.float32)
    act = torch.tensor(act_norm.normalize(chunks), dtype=torch.float32)
    want = centered_reward(method.energy, obs, act, meta.reward_sigma,
                           torch.tensor(meta.reward_reference, dtype=torch.float32))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    singles = [reward(history[i], chunks[i]) for i in range(5)]
    assert all(isinstance(r, float) for r in singles)
    np.testing.assert_allclose(singles, got, rtol=1e-6, atol=1e-6)


def test_soft_value_variant_matches_the_torch_soft_value_reward(tiny):
    path, method = tiny['energyflow']
    reward = EnergyReward(load_model(path), variant='soft_value')
    meta = reward.model.metadata
    obs_norm, act_norm = normalizers()
    rng = np.random.default_rng(1)
    history = rng.normal(size=(4, 2, 3))
    chunks = rng.normal(size=(4, 4, 2))
    got = reward(history, chunks)
    obs = torch.tensor(obs_norm.normalize(history.reshape(4, -1)), dtype=torch.float32)
    act = torch.tensor(act_norm.normalize(chunks), dtype=torch.float32)
    ref = torch.tensor(meta.reward_reference, dtype=torch.float32)
    log_q = torch.distributions.Normal(0.0, 1.0).log_prob(ref).flatten(1).sum(1)
    want = soft_value_reward(method.energy, obs, act, meta.reward_sigma,
                             ref.expand(4, *ref.shape), log_q.expand(4, -1))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-3)
    centred = EnergyReward(reward.model)(history, chunks)
    assert not np.allclose(got, centred)  # a different offset per observation
    with pytest.raises(ValueError, match="reward variant 'max' is unknown"):
        EnergyReward(reward.model, variant='max')


def test_trained_energy_rewards_the_demonstrated_chunk(tmp_path):
    method, obs_norm, act_norm, meta = trained_energyflow()
    path = os.path.join(str(tmp_path), 'linear.onnx')
    export_method(method, obs_norm, act_norm, meta, path, n_steps=4)
    reward = EnergyReward(load_model(path))
    obs, chunks = linear_task(n=20, seed=3)
    good = reward(obs.reshape(20, 2, 1), chunks)
    off = reward(obs.reshape(20, 2, 1), chunks + np.array([0.0, 1.0]))
    assert np.all(good > off)
    shuffled = reward(obs.reshape(20, 2, 1), linear_task_answer(obs[::-1]))
    assert np.mean(good > shuffled) > 0.8


def test_models_without_an_energy_and_bad_inputs_are_refused(tiny):
    with pytest.raises(ValueError, match="'mse' model has no loaded energy graph"):
        EnergyReward(load_model(tiny['mse'][0]))
    with pytest.raises(ValueError, match='no loaded energy graph'):
        EnergyReward(load_model(tiny['energyflow'][0], graphs=['sampler']))
    reward = EnergyReward(load_model(tiny['energyflow'][0]))
    with pytest.raises(ValueError, match=r'expected \(H, A\) = \(4, 2\)'):
        reward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match='expected 6 values each'):
        reward(np.zeros((2, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match='non-finite'):
        reward(np.zeros((2, 3)), np.full((4, 2), np.inf))
    with pytest.raises(ValueError, match='not finite in float32'):  # finite in float64 only
        reward(np.zeros((2, 3)), np.full((4, 2), 1e39))


def test_an_energy_graph_that_returns_nan_is_an_error_not_a_reward(tiny, monkeypatch):
    model = load_model(tiny['energyflow'][0])
    reward = EnergyReward(model)
    real = model.run

    def corrupt(graph, feeds):
        out = dict(real(graph, feeds))
        out['energies'] = np.full_like(out['energies'], np.nan)
        return out
    monkeypatch.setattr(model, 'run', corrupt)
    with pytest.raises(ValueError, match='returned non-finite energies'):
        reward(np.zeros((2, 3)), np.zeros((4, 2)))


def test_policy_value_variant_ranks_demonstrated_chunks_above_displaced_ones(tmp_path):
    method, obs_norm, act_norm, meta = trained_energyflow()
    path = os.path.join(str(tmp_path), 'linear.onnx')
    export_method(method, obs_norm, act_norm, meta, path, n_steps=4)
    model = load_model(path)
    reward = EnergyReward(model, variant='policy_value', seed=0)
    obs, chunks = linear_task(n=20, seed=4)
    good = reward(obs.reshape(20, 2, 1), chunks)
    off = reward(obs.reshape(20, 2, 1), chunks + np.array([0.0, 1.0]))
    assert np.all(good > off)
    assert np.median(good) > np.median(off) + 1.0
    z_obs = reward._planner.normalize_obs(obs.reshape(20, 2, 1), batched=True)
    z_act = (chunks - reward._act_mean) / reward._act_std
    e, e_ref = reward.energies(z_obs, z_act)
    assert e_ref.shape == (20, model.metadata.sampler.n_particles)
    # the reward is -E centred by the log-mean-exp of -E over the policy's own particles
    soft = logsumexp(-e_ref.astype(np.float64), axis=1) - np.log(e_ref.shape[1])
    np.testing.assert_allclose(good, -e - soft, rtol=1e-6, atol=1e-6)
    assert np.ptp(soft) > 0.1      # the centring differs between observations: it matters
    # the same pair scores the same on every call (the sampled references are not redrawn)
    again = [reward(obs[0].reshape(2, 1), chunks[0]) for _ in range(3)]
    assert again[0] == again[1] == again[2]
    # ... and in any batch, at any row (rows beyond the first drew other references)
    singles = [reward(obs[i].reshape(2, 1), chunks[i]) for i in range(20)]
    np.testing.assert_allclose(good, singles, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(reward(obs[::-1].reshape(20, 2, 1), chunks[::-1]), good[::-1],
                               rtol=1e-5, atol=1e-5)


def test_policy_value_with_ranked_proposal_draws(tmp_path):
    # an R-NCE model exported without Langevin steps: the policy's particles are proposal draws
    path, _ = export_tiny(str(tmp_path), 'rnce', n_steps=0, n_particles=5)
    model = load_model(path)
    reward = EnergyReward(model, variant='policy_value', seed=0)
    history, chunks = np.zeros((3, 2, 3)), np.random.default_rng(1).normal(size=(3, 4, 2))
    values = reward(history, chunks)
    assert values.shape == (3,) and np.all(np.isfinite(values))
    z_obs = reward._planner.normalize_obs(history, batched=True)
    e, e_ref = reward.energies(z_obs, (chunks - reward._act_mean) / reward._act_std)
    assert e.shape == (3,) and e_ref.shape == (3, 5)
    soft = logsumexp(-e_ref.astype(np.float64), axis=1) - np.log(e_ref.shape[1])
    np.testing.assert_allclose(values, -e - soft, rtol=1e-6, atol=1e-6)


def test_occupancy_variant_is_minus_the_joint_energy_and_needs_a_joint_model(tmp_path, tiny):
    with pytest.raises(ValueError, match='occupancy reward needs an energy fitted over '
                                         'observations'):
        EnergyReward(load_model(tiny['energyflow'][0]), variant='occupancy')
    torch.manual_seed(0)
    method = build_method('energyflow', SPEC, TINY_MLP, {'obs_noise_max': 1.0}).eval()
    obs_norm, act_norm = normalizers()
    path = str(tmp_path / 'joint.onnx')
    export_method(method, obs_norm, act_norm, train_meta(), path)
    model = load_model(path)
    assert model.metadata.joint_density
    reward = EnergyReward(model, variant='occupancy', sigma=0.1)
    rng = np.random.default_rng(2)
    history, chunks = rng.normal(size=(3, 2, 3)), rng.normal(size=(3, 4, 2))
    obs = torch.tensor(obs_norm.normalize(history.reshape(3, -1)), dtype=torch.float32)
    act = torch.tensor(act_norm.normalize(chunks), dtype=torch.float32)
    with torch.no_grad():
        want = -method.energy(obs, act, torch.full((3,), 0.1))
    np.testing.assert_allclose(reward(history, chunks), want.numpy(), rtol=1e-4, atol=1e-3)
