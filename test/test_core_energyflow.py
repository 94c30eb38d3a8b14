"""EnergyFlow: the learned -grad_a E matches an analytic score, and the field is conservative."""

import pytest
import torch

from energyflow_ros.core.config import ChunkSpec
from energyflow_ros.core.energy import candidate_energies_and_grads
from energyflow_ros.core.methods import build_method
from test.analytic import MixtureEnergy, SQUARE_MODES

MIXTURE = MixtureEnergy(SQUARE_MODES, std=0.15)
SPEC = ChunkSpec(obs_dim=1, action_dim=2, horizon=1)
BACKBONE = {'kind': 'mlp', 'mlp': {'hidden': 128, 'depth': 3}}
STEPS = 3000


@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    method = build_method('energyflow', SPEC, BACKBONE, {})
    opt = torch.optim.Adam(method.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        act = MIXTURE.sample(256, 0.0, gen)
        loss, _ = method.loss(torch.zeros(256, 1), act, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return method.eval()


@pytest.mark.parametrize('sigma', [0.1, 0.3, 1.0])
def test_learned_field_matches_the_analytic_score(trained, sigma):
    gen = torch.Generator().manual_seed(1)
    points = MIXTURE.sample(1000, sigma, gen)
    _, grad = candidate_energies_and_grads(trained.energy, torch.zeros(1000, 1),
                                           points.unsqueeze(1), sigma)
    learned, truth = -grad[:, 0].flatten(1), MIXTURE.score(points, sigma).flatten(1)
    # Weighted by the true score's magnitude: where the field vanishes (between the modes at
    # large sigma) its direction is undefined and says nothing about the fit.
    cos = torch.nn.functional.cosine_similarity(learned, truth, dim=1)
    weight = truth.norm(dim=1)
    cosine = ((cos * weight).sum() / weight.sum()).item()
    print(f'sigma={sigma}: magnitude-weighted cosine {cosine:.4f}, plain mean {cos.mean():.4f}')
    assert cosine >= 0.95


def _field_jacobian(field, x):
    return torch.autograd.functional.jacobian(field, x)


@pytest.mark.parametrize('kind', ['mlp', 'unet'])
def test_energy_field_is_conservative(kind):
    """The Jacobian of -grad_a E is minus a Hessian, hence symmetric, for any weights."""
    torch.manual_seed(0)
    spec = ChunkSpec(obs_dim=3, action_dim=2, horizon=4)
    backbone = {'kind': kind, 'mlp': {'hidden': 32, 'depth': 2},
                'unet': {'channels': [16, 32], 'groups': 4, 'cond_dim': 16, 'head_hidden': 16}}
    method = build_method('energyflow', spec, backbone, {}).double().eval()
    obs, sigma = torch.randn(1, 3, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)

    def field(a):
        x = a.view(1, 4, 2).requires_grad_(True) if not a.requires_grad else a.view(1, 4, 2)
        e = method.energy(obs, x, sigma).sum()
        return -torch.autograd.grad(e, x, create_graph=True)[0].flatten()

    jac = _field_jacobian(field, torch.randn(8, dtype=torch.float64))
    assert jac.abs().max() > 1e-3, 'degenerate field'
    assert torch.allclose(jac, jac.T, atol=1e-9)


def test_a_denoiser_field_is_not_conservative():
    """The check can fail: the diffusion baseline's vector output has an asymmetric Jacobian."""
    torch.manual_seed(0)
    spec = ChunkSpec(obs_dim=3, action_dim=2, horizon=4)
    method = build_method('diffusion', spec, {'mlp': {'hidden': 32, 'depth': 2}}, {}).double()
    obs, t = torch.randn(1, 3, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    jac = _field_jacobian(lambda a: method.net(obs, a.view(1, 4, 2), t).flatten(),
                          torch.randn(8, dtype=torch.float64))
    assert (jac - jac.T).abs().max() > 1e-3
