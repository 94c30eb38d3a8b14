"""The sampler settings written into a model's metadata, one function per method's sampler.

Each returns a :class:`~energyflow_ros.runtime.model_format.SamplerSpec` whose step schedules
reproduce the method's torch sampler when fed to the fused graph (see :mod:`.parity` for the
torch side of the same unrolling):

* EnergyFlow: the probability-flow ODE with Euler steps exactly as ``ProbabilityFlowSampler``
  (cold from t = 1 with N(0, sigma_max**2) particles; warm from ``warm_start_t``, re-noised to
  sigma(warm_start_t)); no noise; with ``flow.clamp`` the particles are clamped into the
  action limits after every step (``clamp`` in the spec, the limits inside the graphs).
* Interpolating R-NCE: annealed Langevin exactly as ``AnnealedLangevinSampler``; the warm
  schedule is the tail (lowest scales) of the cold one.
* R-NCE: Langevin at a fixed step on the sigma-free energy, cold start drawn from the exported
  proposal, as ``ProposalLangevinSampler``. With K = 0 (kind ``'proposal_rank'``) the N
  proposal draws are only ranked by the energy, inside one graph.
* IBC: its Langevin variant (Florence et al. 2021): ``a <- a - s_k (0.5 grad E + z)`` with
  ``s_k`` decayed polynomially (power 2) from 1e-1 to 1e-5, Gaussian cold start. IBC's
  derivative-free optimiser (its default sampler) resamples and is not exported; the action
  clipping of IBC's Langevin is left to the runtime's safety filter.
* Diffusion: DDIM (kind ``'ddim'``; ``n_steps`` sets its step count, recorded as
  ``ddim_steps``); MSE: regression (kind ``'regression'``).
"""

from __future__ import annotations

import math

import torch

from energyflow_ros.core.methods import (
    DiffusionMethod, EnergyFlowMethod, IBCMethod, InterpolatingRNCEMethod, Method, MSEMethod,
    RNCEMethod,
)
from energyflow_ros.core.samplers import annealed_warm_steps, WARM_JITTER_STD
from energyflow_ros.runtime.model_format import SamplerSpec, StepSchedule

__all__ = ['sampler_spec', 'reward_sigma', 'particle_box', 'probability_flow_schedule',
           'WARM_JITTER_STD', 'IBC_LANGEVIN_PARTICLES', 'IBC_LANGEVIN_STEPS']

IBC_LANGEVIN_PARTICLES = 64
IBC_LANGEVIN_STEPS = 20
_IBC_STEP_INIT, _IBC_STEP_FINAL, _IBC_STEP_POWER = 1e-1, 1e-5, 2.0


def probability_flow_schedule(method: EnergyFlowMethod, t_start: float,
                              n_steps: int) -> StepSchedule:
    """Euler steps of EnergyFlow's ODE from ``t_start`` down to ``t_end``.

    Computed with the same torch arithmetic as ``ProbabilityFlowSampler`` so the float32
    step values agree exactly.
    """
    sched, cfg = method.schedule, method.cfg.flow
    ts = torch.linspace(t_start, cfg.t_end, n_steps + 1).tolist()
    sigmas, steps = [], []
    for t, t_next in zip(ts[:-1], ts[1:]):
        sigma = float(sched.sigma(torch.tensor(t)))
        sigmas.append(sigma)
        steps.append(0.5 * float(sched.dsigma2_dt(torch.tensor(sigma))) * (t - t_next))
    init_std = sched.sigma_max if t_start >= 1.0 else float(sched.sigma(torch.tensor(t_start)))
    return StepSchedule(tuple(sigmas), tuple(steps), (0.0,) * n_steps, init_std)


def _energyflow(method: EnergyFlowMethod, n: int | None, k: int | None, warm: int | None,
                warm_start_t: float | None = None) -> SamplerSpec:
    cfg = method.cfg.flow
    k = k or cfg.n_steps
    t0 = cfg.warm_start_t if warm_start_t is None else float(warm_start_t)
    if not cfg.t_end < t0 <= 1.0:
        raise ValueError(f'warm_start_t = {t0!r} is invalid: expected a number in '
                         f'(t_end = {cfg.t_end}, 1]')
    if warm is None:
        warm = cfg.warm_step_count(t0, k)
    rank = float(getattr(cfg, 'rank_sigma', method.schedule.sigma_min))
    box = method.particle_box
    if box is not None and not all(bool(torch.isfinite(b).all()) for b in box):
        raise ValueError('flow.clamp: the model has no action limits to clamp its particles '
                         'to (a checkpoint without the trainer\'s train_meta?)')
    return SamplerSpec('gradient', n or cfg.n_particles, 'gaussian', rank,
                       probability_flow_schedule(method, 1.0, k),
                       probability_flow_schedule(method, t0, warm), clamp=box is not None)


def _tail(cold: StepSchedule, n_steps: int, init_std: float | None = None) -> StepSchedule:
    """The last ``n_steps`` steps of ``cold``, started at the noise scale of its first step."""
    n_steps = min(n_steps, cold.n_steps)
    first = cold.n_steps - n_steps
    std = cold.sigmas[first] if init_std is None else init_std
    return StepSchedule(cold.sigmas[first:], cold.step_sizes[first:], cold.noise_scales[first:],
                        std)


def _scales_per_step(n_scales: int, steps_per_scale: int, n_steps: int | None) -> list[int]:
    """Steps spent at each scale: the config's, or ``n_steps`` spread over the scales."""
    if n_steps is None:
        return [steps_per_scale] * n_scales
    n_scales = min(n_scales, n_steps)
    counts = [n_steps // n_scales] * n_scales
    counts[-1] += n_steps - sum(counts)
    return counts


def _irnce(method: InterpolatingRNCEMethod, n: int | None, k: int | None,
           warm: int | None) -> SamplerSpec:
    cfg = method.cfg.langevin
    counts = _scales_per_step(cfg.n_scales, cfg.steps_per_scale, k)
    scales = method.schedule.geometric(len(counts)).tolist()
    sigmas = [s for s, c in zip(scales, counts) for _ in range(c)]
    steps = [cfg.step_size * s * s for s in sigmas]
    noise = [cfg.noise * (2.0 * e) ** 0.5 for e in steps]
    cold = StepSchedule(tuple(sigmas), tuple(steps), tuple(noise), scales[0])
    return SamplerSpec('gradient', n or cfg.n_particles, 'gaussian', method.schedule.sigma_min,
                       cold, _tail(cold, warm or annealed_warm_steps(cold.n_steps)))


def _rnce(method: RNCEMethod, n: int | None, k: int | None, warm: int | None) -> SamplerSpec:
    cfg = method.cfg.langevin
    if k == 0:
        if warm is not None:
            raise ValueError('warm_steps: an R-NCE sampler without Langevin steps (n_steps = 0) '
                             'draws every chunk afresh from the proposal; it has no warm start')
        return SamplerSpec('proposal_rank', n or cfg.n_particles, 'proposal', 0.0)
    k = k or cfg.n_scales * cfg.steps_per_scale
    noise = cfg.noise * (2.0 * cfg.step_size) ** 0.5
    cold = StepSchedule((0.0,) * k, (cfg.step_size,) * k, (noise,) * k, 0.0)
    return SamplerSpec('gradient', n or cfg.n_particles, 'proposal', 0.0, cold,
                       _tail(cold, warm or k, WARM_JITTER_STD))


def _ibc(method: IBCMethod, n: int | None, k: int | None, warm: int | None) -> SamplerSpec:
    k = k or IBC_LANGEVIN_STEPS
    frac = [i / max(k - 1, 1) for i in range(k)]
    sizes = [(_IBC_STEP_INIT - _IBC_STEP_FINAL) * (1.0 - f) ** _IBC_STEP_POWER + _IBC_STEP_FINAL
             for f in frac]
    cold = StepSchedule((0.0,) * k, tuple(0.5 * s for s in sizes), tuple(sizes), 1.0)
    return SamplerSpec('gradient', n or IBC_LANGEVIN_PARTICLES, 'gaussian', 0.0, cold,
                       _tail(cold, warm or annealed_warm_steps(k), WARM_JITTER_STD))


def sampler_spec(method: Method, n_particles: int | None = None, n_steps: int | None = None,
                 warm_steps: int | None = None,
                 warm_start_t: float | None = None) -> SamplerSpec:
    """The metadata ``sampler`` block of ``method``.

    Args:
        method: the trained method.
        n_particles: N (default: the method's sampler config).
        n_steps: K of the cold sampler (default: the method's sampler config); 0 for R-NCE:
            proposal draws ranked by the energy, no Langevin step.
        warm_steps: K of the warm sampler (default: per method, see the module docstring).
        warm_start_t: EnergyFlow only: the flow time a warm-started chunk is re-noised to and
            integrated from (default: the trained config's ``flow.warm_start_t``). Larger
            values let a warm start move further from the previous chunk.

    Raises:
        ValueError: a non-positive count, a warm_start_t outside (t_end, 1] or given for
            another method, or a setting the method does not use (particles or warm steps of
            a diffusion model; any of the three for MSE).
    """
    for name, value in (('n_particles', n_particles), ('n_steps', n_steps),
                        ('warm_steps', warm_steps)):
        if value == 0 and name == 'n_steps' and _plain_rnce(method):
            continue        # proposal draws ranked by the energy, no Langevin step
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f'{name} = {value!r} is invalid: expected a positive integer'
                             + (' (0 steps: R-NCE only)' if name == 'n_steps' else ''))
    if warm_start_t is not None and not isinstance(method, EnergyFlowMethod):
        raise ValueError(f'warm_start_t applies to EnergyFlow models only, not {method.name}')
    unused = {DiffusionMethod: ('n_particles', 'warm_steps'),
              MSEMethod: ('n_particles', 'n_steps', 'warm_steps')}
    given = {'n_particles': n_particles, 'n_steps': n_steps, 'warm_steps': warm_steps}
    for cls, names in unused.items():
        ignored = [n for n in names if isinstance(method, cls) and given[n] is not None]
        if ignored:
            raise ValueError(f'{", ".join(ignored)}: not used by {method.name} models (one '
                             'sample per chunk' + (', no sampling steps)' if cls is MSEMethod
                                                   else ', no warm-start graph)'))
    if isinstance(method, EnergyFlowMethod):
        return _energyflow(method, n_particles, n_steps, warm_steps, warm_start_t)
    if isinstance(method, DiffusionMethod):
        k, train_steps = n_steps or method.cfg.ddim.sample_steps, method.cfg.ddim.train_steps
        if k > train_steps:
            raise ValueError(f'n_steps = {k}: DDIM takes at most the {train_steps} training '
                             'steps of the diffusion schedule')
        return SamplerSpec('ddim', 1, 'gaussian', 0.0, ddim_steps=k)
    if isinstance(method, MSEMethod):
        return SamplerSpec('regression', 1, 'none', 0.0)
    builders = [(InterpolatingRNCEMethod, _irnce),
                (RNCEMethod, _rnce), (IBCMethod, _ibc)]
    for cls, build in builders:
        if isinstance(method, cls):
            return build(method, n_particles, n_steps, warm_steps)
    raise ValueError(f'no exportable sampler for method {method.name!r}')


def _plain_rnce(method: Method) -> bool:
    """R-NCE proper (its sampler starts from the proposal), not its interpolating form."""
    return isinstance(method, RNCEMethod) and not isinstance(method, InterpolatingRNCEMethod)


def reward_sigma(method: Method) -> float:
    """Noise scale of the centred reward: sigma_min (0 for sigma-free energies)."""
    sigma = method.sigma_min
    return 0.0 if sigma is None or not math.isfinite(sigma) else float(sigma)


def particle_box(method: Method, spec: SamplerSpec) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(low, high), each (H, A), that ``spec``'s fused graphs clamp particles into (or None)."""
    if not spec.clamp:
        return None
    return method.limit_low.detach().cpu(), method.limit_high.detach().cpu()
