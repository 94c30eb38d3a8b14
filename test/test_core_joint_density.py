"""EnergyFlow with noisy observations too: -E becomes the joint log-density of (o, a).

The data are a 2-D Gaussian (o ~ N(0, 1), a = o + 0.3 z), so the density of the noisy pair at
every sigma is known in closed form and the learned energy's level across observations can be
compared with it, not only its action gradient.
"""

import math

import pytest
import torch

from energyflow_ros.core.config import ChunkSpec, ConfigError
from energyflow_ros.core.methods import build_method

SPEC = ChunkSpec(obs_dim=1, action_dim=1, horizon=1)
BACKBONE = {'kind': 'mlp', 'mlp': {'hidden': 64, 'depth': 2}}
STEPS, BATCH, A_STD = 2000, 256, 0.3


def _sample(n, gen):
    o = torch.randn(n, 1, generator=gen)
    return o, (o + A_STD * torch.randn(n, 1, generator=gen))[:, :, None]


def _true_energy(o, a, sigma):
    """-log p_sigma(o, a) up to a constant: a 2-D Gaussian, both coordinates noised by sigma."""
    cov = torch.tensor([[1.0, 1.0], [1.0, 1.0 + A_STD ** 2]]) + sigma ** 2 * torch.eye(2)
    x = torch.stack([o, a], -1)
    return 0.5 * (x @ torch.linalg.inv(cov) * x).sum(-1)


def _fit(obs_noise_max):
    torch.manual_seed(0)
    method = build_method('energyflow', SPEC, BACKBONE,
                          {'schedule': {'sigma_min': 0.05, 'sigma_max': 2.0},
                           'obs_noise_max': obs_noise_max})
    opt = torch.optim.Adam(method.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        loss, metrics = method.loss(*_sample(BATCH, gen), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return method.eval(), metrics


@pytest.fixture(scope='module')
def joint():
    return _fit(obs_noise_max=2.0)


def test_joint_energy_levels_match_the_joint_log_density(joint):
    method, metrics = joint
    assert method.joint_density and {'loss_action', 'loss_obs'} <= metrics.keys()
    sigma = 0.2
    grid = torch.linspace(-2.0, 2.0, 9)
    o, a = [g.reshape(-1) for g in torch.meshgrid(grid, grid, indexing='ij')]
    inside = (a - o).abs() <= 2 * A_STD + 2 * sigma       # where the data put mass
    o, a = o[inside], a[inside]
    with torch.no_grad():
        learned = method.energy(o[:, None], a[:, None, None], torch.full((len(o),), sigma))
    truth = _true_energy(o, a, sigma)
    learned, truth = learned - learned.mean(), truth - truth.mean()
    rms = (learned - truth).square().mean().sqrt().item()
    spread = truth.std().item()
    print(f'{len(o)} points: rms error {rms:.3f} nats, true spread {spread:.3f} nats')
    # Energies of states 2 std from the data's centre must be ~2 nats higher than at the
    # centre: a conditional energy (obs_noise_max = 0) has no reason to get this right.
    assert rms <= 0.25 * spread


def test_conditional_default_keeps_the_papers_loss():
    method = build_method('energyflow', SPEC, BACKBONE, {})
    assert not method.joint_density
    gen = torch.Generator().manual_seed(0)
    obs, act = _sample(8, gen)
    state = gen.get_state()
    loss, metrics = method.loss(obs, act, gen)
    assert set(metrics) == {'loss'}
    # by hand, with the same draws: mean_b || sigma grad_a E(o, a + sigma eps, sigma) - eps ||^2
    gen.set_state(state)
    sigma = method.schedule.sample_sigma(8, gen, act.device)
    eps = torch.randn(act.shape, generator=gen)
    noisy = (act + sigma.view(-1, 1, 1) * eps).requires_grad_(True)
    (grad,) = torch.autograd.grad(method.net(obs, noisy, sigma).sum(), noisy)
    expected = (sigma.view(-1, 1, 1) * grad - eps).square().flatten(1).sum(-1).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize('bad', [-0.1, math.inf, True, 'big'])
def test_bad_obs_noise_max_is_rejected_by_name(bad):
    with pytest.raises(ConfigError, match='obs_noise_max'):
        build_method('energyflow', SPEC, BACKBONE, {'obs_noise_max': bad})
