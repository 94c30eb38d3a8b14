"""The centred reward removes any state-dependent energy offset and ranks actions by energy."""

import torch

import math

from energyflow_ros.core.reward import centered_reward, reference_chunks, soft_value_reward
from test.analytic import GaussianEnergy

OFFSET = torch.zeros(2, 2)


def test_state_dependent_offset_cancels():
    base = GaussianEnergy(std=0.3, offset=OFFSET)

    def shifted(obs, act, sigma=None):
        return base(obs, act, sigma) + 100.0 * obs[:, 1]

    obs, act = torch.randn(6, 3), torch.randn(6, 2, 2)
    ref = reference_chunks(16, 2, 2)
    assert torch.allclose(centered_reward(base, obs, act, 0.01, ref),
                          centered_reward(shifted, obs, act, 0.01, ref), atol=1e-3)


def test_reward_prefers_the_energy_minimum():
    energy = GaussianEnergy(std=0.3, offset=OFFSET)
    obs = torch.randn(5, 3)
    best = energy.minimum(obs)
    ref = reference_chunks(16, 2, 2)
    good = centered_reward(energy, obs, best, 0.01, ref)
    bad = centered_reward(energy, obs, best + 0.5, 0.01, ref)
    assert torch.all(good > bad)


def test_soft_value_reward_is_the_boltzmann_log_density():
    # E = |a - mu|^2 / (2 s^2) integrates to (2 pi s^2)^(d/2): with exact importance weights
    # the soft-value reward must equal log N(a; mu, s^2 I) and ignore any state offset.
    std = 0.3
    base = GaussianEnergy(std=std, offset=OFFSET)

    def shifted(obs, act, sigma=None):
        return base(obs, act, sigma) + 7.0 * obs[:, 0]

    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(4, 3, generator=gen)
    mu = base.minimum(obs)
    act = mu + 0.2 * torch.randn(mu.shape, generator=gen)
    q_std = 0.5
    samples = mu.unsqueeze(1) + q_std * torch.randn((4, 4000, 2, 2), generator=gen)
    d = 4
    log_q = (-(samples - mu.unsqueeze(1)).square().flatten(2).sum(-1) / (2 * q_std ** 2)
             - 0.5 * d * math.log(2 * math.pi * q_std ** 2))
    truth = (-(act - mu).square().flatten(1).sum(-1) / (2 * std ** 2)
             - 0.5 * d * math.log(2 * math.pi * std ** 2))
    for fn in (base, shifted):
        r = soft_value_reward(fn, obs, act, None, samples, log_q)
        assert torch.allclose(r, truth, atol=0.05), (r, truth)
