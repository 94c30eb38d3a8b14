"""Samplers against analytic energies with known minima and known modes."""

import pytest
import torch

from energyflow_ros.core.config import (
    DDIMConfig, DFOConfig, LangevinConfig, NoiseScheduleConfig, ProbabilityFlowConfig,
)
from energyflow_ros.core.samplers import (
    AnnealedLangevinSampler, DDIMSampler, DerivativeFreeSampler, ProbabilityFlowSampler,
    ProposalLangevinSampler, select_lowest, shift_chunk,
)
from energyflow_ros.core.schedules import DDPMSchedule, VESchedule
from test.analytic import GaussianEnergy, MixtureEnergy, SQUARE_MODES

CHUNK = (2, 2)
OFFSET = torch.tensor([[0.3, -0.2], [0.1, 0.4]])


def _obs(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, generator=g) - 0.5


def _broad_proposal(obs, n, generator=None):
    return torch.randn((obs.shape[0], n, *CHUNK), generator=generator)


def _samplers(energy, chunk=CHUNK):
    sched = VESchedule(NoiseScheduleConfig(sigma_min=0.01, sigma_max=3.0))
    return {
        'annealed_langevin': AnnealedLangevinSampler(
            energy, sched, LangevinConfig(n_particles=64, n_scales=10, steps_per_scale=5,
                                          step_size=0.6), chunk),
        'probability_flow': ProbabilityFlowSampler(
            energy, sched, ProbabilityFlowConfig(n_particles=64, n_steps=40), chunk),
        'proposal_langevin': ProposalLangevinSampler(
            energy, _broad_proposal, LangevinConfig(n_particles=64, n_scales=1,
                                                    steps_per_scale=20, step_size=5e-4, noise=0)),
        'derivative_free': DerivativeFreeSampler(
            energy, -torch.ones(chunk) * 1.5, torch.ones(chunk) * 1.5,
            DFOConfig(n_samples=1024, iterations=4)),
    }


@pytest.mark.parametrize('name', ['annealed_langevin', 'probability_flow', 'proposal_langevin',
                                  'derivative_free'])
def test_sampler_finds_quadratic_minimum(name):
    energy = GaussianEnergy(std=0.05, offset=OFFSET)
    obs = _obs()
    result = _samplers(energy)[name].sample(obs, torch.Generator().manual_seed(1))
    err = (result.actions - energy.minimum(obs)).flatten(1).norm(dim=-1)
    assert result.actions.shape == (8, *CHUNK)
    assert err.max() < 0.05, f'{name}: max distance to the minimum {err.max():.3f}'
    # The returned chunk is the lowest-energy particle (this energy orders the particles of an
    # observation by their distance to its minimum at every sigma).
    dist = (result.particles - energy.minimum(obs)[:, None]).flatten(2).norm(dim=-1)
    best = result.particles[torch.arange(len(obs)), dist.argmin(dim=1)]
    torch.testing.assert_close(result.actions, best)


def test_ddim_recovers_gaussian_mean_with_analytic_denoiser():
    mean, std = torch.tensor([[0.5, -0.25]]), 0.05
    sched = DDPMSchedule(100)

    def denoiser(obs, x, t):
        k = (t * sched.train_steps - 1).round().long()
        ab = sched.alpha_bar[k].view(-1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mean) / (ab * std ** 2 + 1 - ab)

    result = DDIMSampler(denoiser, sched, DDIMConfig(100, 10), (1, 2)).sample(
        torch.zeros(256, 1), torch.Generator().manual_seed(0))
    assert (result.actions.mean(0) - mean).abs().max() < 0.05
    assert abs(result.actions.std(0).mean().item() - std) < 0.03


@pytest.mark.parametrize('name', ['annealed_langevin', 'probability_flow', 'proposal_langevin'])
def test_sampler_finds_every_mode_of_a_mixture(name):
    energy = MixtureEnergy(SQUARE_MODES, std=0.15)
    sampler = _samplers(energy, chunk=(1, 2))[name]
    if name == 'proposal_langevin':
        sampler.proposal = lambda obs, n, generator=None: 1.5 * torch.randn(
            (obs.shape[0], n, 1, 2), generator=generator)
        sampler.cfg = LangevinConfig(n_particles=400, n_scales=1, steps_per_scale=30,
                                     step_size=2e-3, noise=1.0)
    else:
        sampler.cfg = type(sampler.cfg)(**{**sampler.cfg.__dict__, 'n_particles': 400})
    result = sampler.sample(torch.zeros(1, 1), torch.Generator().manual_seed(3))
    particles = result.particles[0, :, 0]                          # (N, 2)
    nearest = torch.cdist(particles, SQUARE_MODES).argmin(dim=1)
    close = torch.cdist(particles, SQUARE_MODES).min(dim=1).values < 0.5
    shares = torch.bincount(nearest[close], minlength=4).float() / len(particles)
    assert close.float().mean() > 0.9, f'{name}: only {close.float().mean():.2f} near a mode'
    assert shares.min() > 0.12, f'{name}: mode shares {shares.tolist()}'


def test_shift_chunk_advances_the_plan_and_repeats_the_last_step():
    chunk = torch.arange(8.0).view(1, 4, 2)
    shifted = shift_chunk(chunk, 2)
    assert shifted[0].tolist() == [[4, 5], [6, 7], [6, 7], [6, 7]]
    assert torch.equal(shift_chunk(chunk, 0), chunk)


def test_warm_start_needs_fewer_steps_than_cold_start():
    energy = GaussianEnergy(std=0.05, offset=OFFSET)
    obs = _obs()
    sched = VESchedule(NoiseScheduleConfig(sigma_min=0.01, sigma_max=3.0))
    sampler = ProbabilityFlowSampler(energy, sched, ProbabilityFlowConfig(n_particles=8), CHUNK)
    gen = torch.Generator().manual_seed(0)
    cold = sampler.sample(obs, gen, n_steps=4)
    near = energy.minimum(obs).unsqueeze(1).expand(-1, 8, -1, -1) + 0.02
    warm = sampler.sample(obs, gen, init=near, n_steps=4)
    err = lambda r: (r.actions - energy.minimum(obs)).flatten(1).norm(dim=-1).mean()  # noqa
    assert err(warm) < 0.05 < err(cold)


def test_ddim_clips_the_clean_estimate_where_alpha_bar_is_tiny():
    from energyflow_ros.core.config import ConfigError, DDIMConfig
    from energyflow_ros.core.samplers import ddim_update

    x = torch.zeros(4, 8, 2)
    eps = torch.full_like(x, -0.01)          # a 1 % error of the noise estimate
    ab, ab_prev = 2.4e-7, 0.02               # the cosine schedule's first DDIM step
    raw = ddim_update(x, eps, ab, ab_prev, clip=0.0)
    clipped = ddim_update(x, eps, ab, ab_prev, clip=3.0)
    assert raw.abs().max() > 2.5             # amplified 1/sqrt(ab) = 2000x, then shrunk
    x0 = (clipped - (1 - ab_prev) ** 0.5 * (x - ab ** 0.5 * 3.0) / (1 - ab) ** 0.5)
    assert torch.allclose(x0 / ab_prev ** 0.5, torch.full_like(x, 3.0), atol=1e-4)
    same = ddim_update(x + 0.5, torch.zeros_like(x), 0.5, 1.0, clip=3.0)
    assert torch.allclose(same, (x + 0.5) / 0.5 ** 0.5)  # inside the bound: untouched
    with pytest.raises(ConfigError, match='clip_sample'):
        DDIMConfig(clip_sample=-1.0)


@pytest.mark.parametrize('name', ['annealed_langevin', 'proposal_langevin'])
def test_a_warm_start_stays_in_the_mode_it_started_in(name):
    # As the exported warm graphs do: the annealed sampler runs only its low-noise tail from
    # the re-noised chunk (the whole schedule starts at sigma_max and forgets it), and the
    # proposal sampler refines jittered copies instead of fresh proposal draws.
    energy = MixtureEnergy(SQUARE_MODES, std=0.15)
    sampler = _samplers(energy, chunk=(1, 2))[name]
    obs = torch.zeros(256, 3)
    start = SQUARE_MODES[0].view(1, 1, 1, 2).expand(256, 8, 1, 2)
    result = sampler.sample(obs, torch.Generator().manual_seed(0), init=start)
    near = (result.actions.view(256, 2) - SQUARE_MODES[0]).norm(dim=-1) < 0.5
    assert near.float().mean() > 0.95, f'{name}: {near.float().mean():.2f} stayed'


def test_ranking_skips_particles_that_diverged_and_keeps_a_row_without_finite_ones():
    nan, inf = float('nan'), float('inf')
    particles = torch.zeros(3, 3, 2, 1)
    particles[0, 1] = nan                                   # a diverged particle
    particles[1, 0, 0, 0] = inf
    energies = torch.tensor([[1.0, nan, 0.5], [-inf, 2.0, 3.0], [nan, nan, nan]])
    particles[2] = nan
    chosen = select_lowest(energies, particles)
    assert chosen.energy[:2].tolist() == [0.5, 2.0]         # torch's argmin took the NaN
    assert torch.isfinite(chosen.actions[:2]).all()
    assert torch.isnan(chosen.actions[2]).all()             # nothing finite: the caller refuses
