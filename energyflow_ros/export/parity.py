"""The torch-versus-onnxruntime gate every export passes before a file is written.

The torch side is the method itself: its energy differentiated by autograd, unrolled with the
same schedule, initial particles and noise as the fused graph (:func:`reference_sampler`), its
DDIM sampler, regressor and proposal (and, for R-NCE without Langevin steps, its proposal's
draws for the same uniform and normal inputs ranked by its energy). Inputs are random; the gate
compares every graph's outputs elementwise against ``atol + rtol * |torch|`` and requires the
same chosen particle (up to ties).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from energyflow_ros.core.energy import candidate_energies, candidate_energies_and_grads
from energyflow_ros.core.methods import Method, RNCEMethod
from energyflow_ros.core.samplers import (
    clamp_to_box, DDIMSampler, SampleResult, select_lowest,
)
from energyflow_ros.export.graphs import is_sigma_conditioned
from energyflow_ros.export.sampler_specs import particle_box
from energyflow_ros.runtime.model_format import SamplerSpec, StepSchedule

__all__ = ['ParityError', 'GraphParity', 'reference_sampler', 'check_parity']

_B, _M, _N = 2, 5, 6


class ParityError(RuntimeError):
    """onnxruntime disagrees with torch beyond the tolerance; nothing was written."""


@dataclass(frozen=True)
class GraphParity:
    """How one graph compares with torch.

    Attributes:
        graph: the graph name.
        max_abs_error: largest |onnxruntime - torch| over every output.
        max_excess: largest |ort - torch| - rtol * |torch| (the gate requires <= atol).
        same_choice: whether the sampler picked the same particle (ties allowed).
    """

    graph: str
    max_abs_error: float
    max_excess: float
    same_choice: bool = True

    def passed(self, atol: float) -> bool:
        """Whether the graph passes at absolute tolerance ``atol``."""
        return self.max_excess <= atol and self.same_choice


def reference_sampler(method: Method, obs: torch.Tensor, init: torch.Tensor,
                      sigmas: Sequence[float], step_sizes: Sequence[float],
                      noise: torch.Tensor, rank_sigma: float,
                      box: tuple[torch.Tensor, torch.Tensor] | None = None) -> SampleResult:
    """What the fused graph computes, in torch with autograd.

    ``a <- a - step_sizes[k] * grad_a E(o, a, sigmas[k]) + noise[k]`` for k < K (clamped into
    ``box`` when given), then the lowest energy at ``rank_sigma`` (sigma-free energies get no
    sigma).

    Args:
        method: an energy-based method.
        obs: (B, O) normalised observations.
        init: (B, N, H, A) initial particles.
        sigmas: K noise scales.
        step_sizes: K step sizes.
        noise: (K, B, N, H, A) additive terms, already scaled.
        rank_sigma: noise scale of the ranking.
        box: (low, high), each (H, A), the particles are clamped into after every step.
    """
    conditioned = is_sigma_conditioned(method)
    a = init.detach()
    for k, (sigma, step) in enumerate(zip(sigmas, step_sizes)):
        _, g = candidate_energies_and_grads(method.energy, obs, a,
                                            float(sigma) if conditioned else None)
        a = clamp_to_box(a - float(step) * g + noise[k], box)
    with torch.no_grad():
        e = candidate_energies(method.energy, obs, a, float(rank_sigma) if conditioned else None)
    return select_lowest(e, a)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_mem_reuse = False   # quadratic in the node count: minutes for a U-Net sampler
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=['CPUExecutionProvider'])


def _excess(got: np.ndarray, ref: np.ndarray, rtol: float) -> tuple[float, float]:
    ref = np.asarray(ref, dtype=np.float64)
    err = np.abs(np.asarray(got, dtype=np.float64) - ref)
    if err.size == 0:
        return 0.0, 0.0
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(ref))):  # NaN compares as no error
        return float('inf'), float('inf')
    return float(err.max()), float((err - rtol * np.abs(ref)).max())


def _compare(graph: str, pairs: list[tuple[np.ndarray, torch.Tensor]], rtol: float,
             same_choice: bool = True) -> GraphParity:
    abs_err, excess = 0.0, -np.inf
    for got, ref in pairs:
        a, e = _excess(got, ref.detach().double().numpy(), rtol)
        abs_err, excess = max(abs_err, a), max(excess, e)
    return GraphParity(graph, abs_err, float(excess), same_choice)


def _inputs(method: Method, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    h, a = method.chunk_shape
    obs = torch.randn((_B, method.spec.obs_dim), generator=gen)
    return obs, torch.randn((_B, _M, h, a), generator=gen)


def _energy_parity(method: Method, energy: onnx.ModelProto, gradient: onnx.ModelProto,
                   sigmas: list[float], gen: torch.Generator, rtol: float) -> list[GraphParity]:
    conditioned = is_sigma_conditioned(method)
    e_sess, g_sess = _session(energy), _session(gradient)
    e_pairs, g_pairs = [], []
    for sigma in sigmas:
        obs, act = _inputs(method, gen)
        feed = {'obs': obs.numpy(), 'actions': act.numpy(),
                'sigma': np.array([sigma], dtype=np.float32)}
        e_ref, g_ref = candidate_energies_and_grads(method.energy, obs, act,
                                                    sigma if conditioned else None)
        e_pairs.append((e_sess.run(['energies'], feed)[0], e_ref))
        e_got, g_got = g_sess.run(['energies', 'grads'], feed)
        g_pairs += [(e_got, e_ref), (g_got, g_ref)]
    return [_compare('energy', e_pairs, rtol), _compare('gradient', g_pairs, rtol)]


def _same_choice(got_energies: np.ndarray, ref_energies: torch.Tensor, atol: float,
                 rtol: float) -> bool:
    """Same argmin, or a different one whose torch energy ties with torch's choice."""
    chosen = np.argmin(got_energies, axis=1)
    ref_e = ref_energies.detach().double().numpy()
    if not (np.all(np.isfinite(ref_e)) and np.all(np.isfinite(got_energies))):
        return False
    for b, idx in enumerate(chosen):
        best = ref_e[b].min()
        if ref_e[b, idx] - best > atol + rtol * abs(best):
            return False
    return True


def _sampler_parity(method: Method, model: onnx.ModelProto, graph: str,
                    schedule: StepSchedule, rank_sigma: float, gen: torch.Generator,
                    atol: float, rtol: float,
                    box: tuple[torch.Tensor, torch.Tensor] | None = None) -> GraphParity:
    h, a = method.chunk_shape
    k = schedule.n_steps
    obs = torch.randn((_B, method.spec.obs_dim), generator=gen)
    init = max(schedule.init_std, 1.0) * torch.randn((_B, _N, h, a), generator=gen)
    scales = torch.tensor(schedule.noise_scales).view(k, 1, 1, 1, 1)
    noise = scales * torch.randn((k, _B, _N, h, a), generator=gen)
    ref = reference_sampler(method, obs, init, schedule.sigmas, schedule.step_sizes, noise,
                            rank_sigma, box)
    feed = {'obs': obs.numpy(), 'init': init.numpy(), 'noise': noise.numpy(),
            'sigmas': np.asarray(schedule.sigmas, dtype=np.float32),
            'step_sizes': np.asarray(schedule.step_sizes, dtype=np.float32),
            'rank_sigma': np.array([rank_sigma], dtype=np.float32)}
    action, energy, particles, energies = _session(model).run(
        ['action', 'energy', 'particles', 'energies'], feed)
    # The ranking is checked on onnxruntime's own particles: they may differ from torch's
    # within the tolerance, and at a small rank sigma the energy is steep enough that such a
    # difference alone moves it past the tolerance, without any fault in the graph.
    ort_particles = torch.as_tensor(particles)
    conditioned = is_sigma_conditioned(method)
    with torch.no_grad():
        ref_e = candidate_energies(method.energy, obs, ort_particles,
                                   rank_sigma if conditioned else None)
    same = _same_choice(energies, ref_e, atol, rtol)
    rows = np.arange(_B)
    picked = ort_particles[rows, torch.as_tensor(np.argmin(energies, axis=1))]
    return _compare(graph, [(particles, ref.particles), (energies, ref_e), (action, picked),
                            (energy, ref_e.min(dim=1).values)], rtol, same)


def _ddim_parity(method: Method, model: onnx.ModelProto, steps: int | None, seed: int,
                 rtol: float) -> GraphParity:
    h, a = method.chunk_shape
    obs = torch.randn((_B, method.spec.obs_dim), generator=torch.Generator().manual_seed(seed))
    init = torch.randn((_B, h, a), generator=torch.Generator().manual_seed(seed + 1))
    cfg = replace(method.cfg.ddim, sample_steps=steps or method.cfg.ddim.sample_steps)
    sampler = DDIMSampler(method.net, method.schedule, cfg, method.chunk_shape)
    ref = sampler.sample(obs, torch.Generator().manual_seed(seed + 1))
    out = _session(model).run(['action', 'particles'], {'obs': obs.numpy(),
                                                        'init': init.unsqueeze(1).numpy()})
    return _compare('sampler', [(out[0], ref.actions), (out[1], ref.particles)], rtol)


def _simple_parity(graph: str, model: onnx.ModelProto, obs: torch.Tensor,
                   names: list[str], refs: Sequence[torch.Tensor], rtol: float) -> GraphParity:
    out = _session(model).run(names, {'obs': obs.numpy()})
    return _compare(graph, list(zip(out, refs)), rtol)


@torch.no_grad()
def _proposal_rank_parity(method: RNCEMethod, model: onnx.ModelProto, gen: torch.Generator,
                          atol: float, rtol: float) -> GraphParity:
    """The in-graph proposal draws and ranking against the proposal and energy in torch."""
    h, a = method.chunk_shape
    obs = torch.randn((_B, method.spec.obs_dim), generator=gen)
    uniforms = torch.rand((_B, _N), generator=gen)
    normals = torch.randn((_B, _N, h, a), generator=gen)
    log_w, means, stds = method.proposal.parameters_for(obs)
    cdf = torch.cumsum(log_w.exp(), dim=-1)
    comp = torch.searchsorted(cdf, uniforms, right=True).clamp(max=cdf.shape[1] - 1)
    idx = comp.unsqueeze(-1).expand(-1, -1, means.shape[-1])
    particles = (means.gather(1, idx) + stds.gather(1, idx) * normals.flatten(2)).view(
        normals.shape)
    ref_e = candidate_energies(method.energy, obs, particles, None)
    action, energy, got_particles, energies = _session(model).run(
        ['action', 'energy', 'particles', 'energies'],
        {'obs': obs.numpy(), 'uniforms': uniforms.numpy(), 'normals': normals.numpy(),
         'rank_sigma': np.zeros(1, np.float32)})
    picked = particles[torch.arange(_B), torch.as_tensor(np.argmin(energies, axis=1))]
    return _compare('sampler', [(got_particles, particles), (energies, ref_e), (action, picked),
                                (energy, ref_e.min(dim=1).values)], rtol,
                    _same_choice(energies, ref_e, atol, rtol))


@torch.no_grad()
def _proposal_parity(method: RNCEMethod, model: onnx.ModelProto, gen: torch.Generator,
                     rtol: float) -> GraphParity:
    obs = torch.randn((_B, method.spec.obs_dim), generator=gen)
    return _simple_parity('proposal', model, obs, ['logits', 'means', 'stds'],
                          method.proposal.parameters_for(obs), rtol)


def check_parity(method: Method, models: dict[str, onnx.ModelProto], spec: SamplerSpec,
                 atol: float, rtol: float, seed: int = 0) -> dict[str, GraphParity]:
    """Compare every graph of a model family with torch on random inputs.

    Args:
        method: the method the graphs were exported from (eval mode).
        models: graph name -> ONNX model.
        spec: the sampler settings of the metadata (schedules fed to the fused graphs).
        atol: absolute tolerance.
        rtol: tolerance relative to the torch value.
        seed: seed of the random inputs.

    Returns:
        graph name -> comparison.

    Raises:
        ParityError: some graph disagrees; the message lists each one and by how much.
    """
    gen = torch.Generator().manual_seed(seed)
    results: list[GraphParity] = []
    if spec.kind == 'ddim':
        results.append(_ddim_parity(method, models['sampler'], spec.ddim_steps, seed, rtol))
    elif spec.kind == 'regression':
        obs = torch.randn((_B, method.spec.obs_dim), generator=gen)
        with torch.no_grad():
            x = method.net(obs)
        results.append(_simple_parity('sampler', models['sampler'], obs,
                                      ['action', 'particles'], [x, x.unsqueeze(1)], rtol))
    elif spec.kind == 'proposal_rank':
        results += _energy_parity(method, models['energy'], models['gradient'], [1.0], gen,
                                  rtol)
        results.append(_proposal_rank_parity(method, models['sampler'], gen, atol, rtol))
        results.append(_proposal_parity(method, models['proposal'], gen, rtol))
    else:
        sigmas = sorted({float(spec.rank_sigma) or 1.0, float(spec.cold.sigmas[0]) or 1.0})
        results += _energy_parity(method, models['energy'], models['gradient'], sigmas, gen,
                                  rtol)
        for graph, schedule in (('sampler', spec.cold), ('warm_sampler', spec.warm)):
            if graph in models:
                results.append(_sampler_parity(method, models[graph], graph, schedule,
                                               spec.rank_sigma, gen, atol, rtol,
                                               particle_box(method, spec)))
        if 'proposal' in models:
            results.append(_proposal_parity(method, models['proposal'], gen, rtol))
    report = {r.graph: r for r in results}
    failed = [r for r in results if not r.passed(atol)]
    if failed:
        lines = [f'{r.graph}: max |ort - torch| = {r.max_abs_error:.3g}, exceeds atol + rtol*|'
                 f'torch| by {r.max_excess - atol:.3g}'
                 + ('' if r.same_choice else '; picked a different particle') for r in failed]
        raise ParityError(f'onnxruntime disagrees with torch (atol={atol:g}, rtol={rtol:g}); '
                          'nothing was written:\n  ' + '\n  '.join(lines))
    return report
