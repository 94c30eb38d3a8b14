"""The centred reward removes any state-dependent energy offset and ranks actions by energy."""

import torch

from energyflow_ros.core.reward import centered_reward, reference_chunks
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
