"""Action samplers, one named class each; all return a :class:`SampleResult`.

Energy-based samplers keep N particles per observation and return the lowest-energy one — an
EBM can rank its own samples, which a diffusion policy cannot. Each accepts ``init`` particles
for warm starting from the previous tick's chunk (see :func:`shift_chunk`).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable

import torch

from energyflow_ros.core.config import (
    DDIMConfig, DFOConfig, LangevinConfig, ProbabilityFlowConfig,
)
from energyflow_ros.core.energy import (
    EnergyFn, candidate_energies, candidate_energies_and_grads,
)
from energyflow_ros.core.schedules import DDPMSchedule, VESchedule

__all__ = [
    'SampleResult', 'shift_chunk', 'select_lowest', 'langevin_refine', 'AnnealedLangevinSampler',
    'ProposalLangevinSampler', 'ProbabilityFlowSampler', 'DerivativeFreeSampler',
    'DDIMSampler', 'RegressionSampler', 'ddim_steps', 'ddim_update', 'WARM_JITTER_STD',
    'annealed_warm_steps', 'clamp_to_box',
]

# warm start of sigma-free energies: std of the jitter added to the shifted previous chunk
# (normalised action units). The exported warm graphs use the same.
WARM_JITTER_STD = 0.05


def annealed_warm_steps(n_steps: int) -> int:
    """Steps of an annealed-Langevin warm start: the last quarter of the cold schedule."""
    return max(1, n_steps // 4)


@dataclass
class SampleResult:
    """What a sampler returns.

    Attributes:
        actions: (B, H, A) the chosen chunk per observation.
        energy: (B,) its energy (zeros for samplers without an energy).
        particles: (B, N, H, A) every final particle, for warm starting the next call.
    """

    actions: torch.Tensor
    energy: torch.Tensor
    particles: torch.Tensor


def shift_chunk(chunk: torch.Tensor, executed: int, extrapolation: float = 0.0) -> torch.Tensor:
    """Drop the first ``executed`` steps of chunks (..., H, A) and refill at the end.

    This is the warm start: the previous plan, advanced by what was executed. The k-th refilled
    step is ``last + k * extrapolation * (last - second_last)`` (0 repeats the last step), as
    in the runtime's numpy twin.
    """
    if executed <= 0:
        return chunk
    h = chunk.shape[-2]
    executed = min(executed, h - 1)
    last = chunk[..., -1:, :]
    tail = last.expand(*chunk.shape[:-2], executed, chunk.shape[-1])
    if extrapolation and h > 1:
        k = torch.arange(1, executed + 1, dtype=chunk.dtype, device=chunk.device)[:, None]
        tail = tail + (extrapolation * k) * (last - chunk[..., -2:-1, :])
    return torch.cat([chunk[..., executed:, :], tail], dim=-2)


def select_lowest(energies: torch.Tensor, particles: torch.Tensor) -> SampleResult:
    """Pick, per observation, the particle of lowest energy.

    energies (B, N), particles (B, N, H, A). A particle that is not finite, or whose energy is
    not, ranks last (torch's argmin picks a NaN; onnxruntime's ArgMin, a NaN that comes
    first), so it is chosen only when no particle of its row is finite, and the caller then
    refuses it. The exported graphs rank the same way.
    """
    finite = torch.isfinite(energies) & torch.isfinite(particles).flatten(2).all(dim=2)
    best = torch.where(finite, energies, torch.full_like(energies, math.inf)).argmin(dim=1)
    rows = torch.arange(particles.shape[0], device=particles.device)
    return SampleResult(particles[rows, best], energies[rows, best], particles)


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def langevin_refine(energy: EnergyFn, obs: torch.Tensor, particles: torch.Tensor,
                    sigmas: list[float | None], step_sizes: list[float], noise: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Langevin steps a <- a - eps_i grad E(o, a, sigma_i) + noise * sqrt(2 eps_i) z.

    Args:
        energy: the energy function.
        obs: (B, O).
        particles: (B, N, H, A) starting points.
        sigmas: noise scale passed to the energy at each step (None for sigma-free models).
        step_sizes: eps_i of each step, same length as ``sigmas``.
        noise: multiplier on the injected noise (0: gradient descent).

    Returns:
        (B, N, H, A) refined particles.
    """
    a = particles.detach()
    for sigma, eps in zip(sigmas, step_sizes):
        _, g = candidate_energies_and_grads(energy, obs, a, sigma)
        a = a - eps * g
        if noise > 0:
            a = a + noise * (2.0 * eps) ** 0.5 * _noise(a, generator)
    return a


class AnnealedLangevinSampler:
    """Annealed Langevin over N particles on a sigma-indexed energy, then energy ranking.

    Scales go geometrically from sigma_max to sigma_min; at scale sigma the step is
    ``step_size * sigma**2``. Particles start from N(0, sigma_max**2 I) or from ``init``.
    """

    def __init__(self, energy: EnergyFn, schedule: VESchedule, cfg: LangevinConfig,
                 chunk_shape: tuple[int, int]) -> None:
        self.energy, self.schedule, self.cfg, self.chunk_shape = energy, schedule, cfg, chunk_shape

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               init: torch.Tensor | None = None) -> SampleResult:
        """Sample one chunk per observation (B, O); ``init`` (B, N, H, A) warm-starts.

        A warm start runs only the last :func:`annealed_warm_steps` steps, from ``init``
        re-noised to the first of them (as the exported warm graph does): the whole schedule
        would start at sigma_max and forget the chunk.
        """
        cfg = self.cfg
        sig = self.schedule.geometric(cfg.n_scales).tolist()
        sigmas = [s for s in sig for _ in range(cfg.steps_per_scale)]
        if init is None:
            shape = (obs.shape[0], cfg.n_particles, *self.chunk_shape)
            init = sig[0] * torch.randn(shape, generator=generator, device=obs.device)
        else:
            sigmas = sigmas[-annealed_warm_steps(len(sigmas)):]
            init = init + sigmas[0] * _noise(init, generator)
        steps = [cfg.step_size * s * s for s in sigmas]
        a = langevin_refine(self.energy, obs, init, sigmas, steps, cfg.noise, generator)
        with torch.no_grad():
            e = candidate_energies(self.energy, obs, a, self.schedule.sigma_min)
        return select_lowest(e, a)


class ProposalLangevinSampler:
    """R-NCE inference: candidates from the proposal q(a|o), Langevin refinement, argmin E.

    ``step_size`` is the absolute Langevin step for this sigma-free energy.
    """

    def __init__(self, energy: EnergyFn, proposal: Callable[..., torch.Tensor],
                 cfg: LangevinConfig, sigma: float | None = None) -> None:
        self.energy, self.proposal, self.cfg, self.sigma = energy, proposal, cfg, sigma

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               init: torch.Tensor | None = None) -> SampleResult:
        """Sample one chunk per observation; ``init`` (B, N, H, A) warm-starts: those chunks,
        jittered by :data:`WARM_JITTER_STD`, replace the proposal's draws (as the exported warm
        graph does); with no Langevin steps every chunk is drawn afresh."""
        cfg = self.cfg
        n_steps = cfg.n_scales * cfg.steps_per_scale
        if init is None or n_steps == 0:  # without steps the draws are only ranked: no warm start
            cands = self.proposal(obs, cfg.n_particles, generator=generator)
        else:
            cands = init + WARM_JITTER_STD * _noise(init, generator)
        a = langevin_refine(self.energy, obs, cands, [self.sigma] * n_steps,
                            [cfg.step_size] * n_steps, cfg.noise, generator)
        with torch.no_grad():
            e = candidate_energies(self.energy, obs, a, self.sigma)
        return select_lowest(e, a)


def clamp_to_box(particles: torch.Tensor,
                 box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``particles`` (..., H, A) clamped elementwise into ``box`` = (low, high) (no box: as
    they are)."""
    if box is None:
        return particles
    low, high = box
    return torch.minimum(torch.maximum(particles, low.to(particles)), high.to(particles))


class ProbabilityFlowSampler:
    """EnergyFlow's probability-flow ODE with Euler steps, over N particles, then ranking.

    From t = 1 (a ~ N(0, sigma_max**2 I)) down to ``t_end``:
    ``a <- a - 0.5 * d(sigma**2)/dt * grad_a E(o, a, sigma(t)) * dt``. A warm start re-noises
    ``init`` to sigma(warm_start_t) and integrates from there with ``cfg.warm_step_count()``
    steps, as the exported warm sampler does.
    Particles are ranked at ``cfg.rank_sigma`` (see :class:`ProbabilityFlowConfig`). With
    ``box`` = (low, high), each (H, A), every step ends by clamping the particles into it.
    """

    def __init__(self, energy: EnergyFn, schedule: VESchedule, cfg: ProbabilityFlowConfig,
                 chunk_shape: tuple[int, int],
                 box: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.energy, self.schedule, self.cfg, self.chunk_shape = energy, schedule, cfg, chunk_shape
        self.box = box

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               init: torch.Tensor | None = None, n_steps: int | None = None) -> SampleResult:
        """Sample one chunk per observation (B, O); ``init`` (B, N, H, A) warm-starts."""
        cfg, sched = self.cfg, self.schedule
        t0 = 1.0 if init is None else cfg.warm_start_t
        n_steps = n_steps or (cfg.n_steps if init is None else cfg.warm_step_count())
        if init is None:
            shape = (obs.shape[0], cfg.n_particles, *self.chunk_shape)
            a = sched.sigma_max * torch.randn(shape, generator=generator, device=obs.device)
        else:
            a = init.detach() + float(sched.sigma(torch.tensor(t0))) * _noise(init, generator)
        ts = torch.linspace(t0, cfg.t_end, n_steps + 1).tolist()
        for t, t_next in zip(ts[:-1], ts[1:]):
            sigma = float(sched.sigma(torch.tensor(t)))
            _, g = candidate_energies_and_grads(self.energy, obs, a, sigma)
            a = clamp_to_box(
                a - 0.5 * float(sched.dsigma2_dt(torch.tensor(sigma))) * (t - t_next) * g,
                self.box)
        with torch.no_grad():
            e = candidate_energies(self.energy, obs, a, cfg.rank_sigma)
        return select_lowest(e, a)


class DerivativeFreeSampler:
    """IBC's derivative-free optimiser: uniform draws, softmax(-E) resampling, shrinking noise."""

    def __init__(self, energy: EnergyFn, low: torch.Tensor, high: torch.Tensor,
                 cfg: DFOConfig) -> None:
        self.energy, self.low, self.high, self.cfg = energy, low, high, cfg

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               init: torch.Tensor | None = None) -> SampleResult:
        """One chunk per observation; ``init`` particles replace part of the uniform draw."""
        cfg, low, high = self.cfg, self.low.to(obs), self.high.to(obs)
        shape = (obs.shape[0], cfg.n_samples, *low.shape)
        a = low + (high - low) * torch.rand(shape, generator=generator, device=obs.device)
        if init is not None:
            n = min(init.shape[1], cfg.n_samples)
            a[:, :n] = init[:, :n].to(a)
        scale = cfg.noise_scale
        with torch.no_grad():
            for _ in range(cfg.iterations):
                e = candidate_energies(self.energy, obs, a)
                idx = torch.multinomial(torch.softmax(-e, dim=1), cfg.n_samples,
                                        replacement=True, generator=generator)
                a = a[torch.arange(a.shape[0]).unsqueeze(1), idx]
                a = clamp_to_box(a + scale * _noise(a, generator), (low, high))
                scale *= cfg.shrink
            e = candidate_energies(self.energy, obs, a)
        return select_lowest(e, a)


def ddim_steps(train_steps: int, sample_steps: int) -> list[int]:
    """The DDPM steps DDIM visits, from ``train_steps - 1`` down to 0."""
    return torch.linspace(train_steps - 1, 0, sample_steps).round().long().tolist()


def ddim_update(x: torch.Tensor, eps: torch.Tensor, ab: float, ab_prev: float,
                clip: float) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from signal fraction ``ab`` to ``ab_prev``.

    The clean estimate is clipped to [-clip, clip] (0: not clipped) and the noise estimate
    recomputed from it, so the step stays consistent with what was kept.
    """
    x0 = (x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
    if clip > 0:
        x0 = x0.clamp(-clip, clip)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1.0 - ab)
    return math.sqrt(ab_prev) * x0 + math.sqrt(1.0 - ab_prev) * eps


class DDIMSampler:
    """Diffusion baseline: deterministic DDIM (eta = 0) with an epsilon-predicting network."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], schedule: DDPMSchedule,
                 cfg: DDIMConfig, chunk_shape: tuple[int, int]) -> None:
        self.denoiser, self.schedule, self.cfg, self.chunk_shape = (
            denoiser, schedule, cfg, chunk_shape)

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               init: torch.Tensor | None = None) -> SampleResult:
        """One chunk per observation from N(0, I) noise; ``init`` is ignored (no warm start)."""
        b, sched = obs.shape[0], self.schedule
        x = torch.randn((b, *self.chunk_shape), generator=generator, device=obs.device)
        ks = ddim_steps(sched.train_steps, self.cfg.sample_steps)
        ab = sched.alpha_bar.tolist()
        for i, k in enumerate(ks):
            eps = self.denoiser(obs, x, sched.time(torch.full((b,), k, device=obs.device)))
            ab_prev = ab[ks[i + 1]] if i + 1 < len(ks) else 1.0
            x = ddim_update(x, eps, ab[k], ab_prev, self.cfg.clip_sample)
        return SampleResult(x, torch.zeros(b, device=obs.device), x.unsqueeze(1))


class RegressionSampler:
    """MSE behaviour cloning: the network's output is the chunk (one 'particle', no energy)."""

    def __init__(self, regressor: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.regressor = regressor

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None,
               init: torch.Tensor | None = None) -> SampleResult:
        """The regressed chunk for each observation."""
        x = self.regressor(obs)
        return SampleResult(x, torch.zeros(obs.shape[0], device=obs.device), x.unsqueeze(1))
