"""Rewards extracted from a learned energy (EnergyFlow paper).

Under maximum-entropy optimality grad_a log pi = grad_a Q_soft / alpha, so -E recovers the soft
Q-function up to a state-dependent offset; centring against fixed reference chunks removes that
offset so rewards compare across states.
"""

from __future__ import annotations

import torch

from energyflow_ros.core.energy import EnergyFn, candidate_energies

__all__ = ['reference_chunks', 'centered_reward', 'soft_value_reward']


def reference_chunks(m: int, horizon: int, action_dim: int, seed: int = 0) -> torch.Tensor:
    """(m, H, A) fixed reference chunks drawn once from N(0, I) in normalised action space."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((m, horizon, action_dim), generator=gen)


@torch.no_grad()
def centered_reward(energy: EnergyFn, obs: torch.Tensor, act: torch.Tensor, sigma_min: float,
                    reference: torch.Tensor) -> torch.Tensor:
    """EnergyFlow's CenteredReward: r(o, a) = -[E(o, a, s) - mean_m E(o, ref_m, s)], s = sigma_min.

    Args:
        energy: sigma-indexed energy function.
        obs: (B, O) normalised observations.
        act: (B, H, A) normalised action chunks.
        sigma_min: the smallest noise scale of the model.
        reference: (M, H, A) fixed reference chunks (see :func:`reference_chunks`).

    Returns:
        (B,) rewards; higher is better.
    """
    e = candidate_energies(energy, obs, act.unsqueeze(1), sigma_min)[:, 0]
    refs = reference.to(act).unsqueeze(0).expand(obs.shape[0], *reference.shape)
    e_ref = candidate_energies(energy, obs, refs, sigma_min).mean(dim=1)
    return -(e - e_ref)


@torch.no_grad()
def soft_value_reward(energy: EnergyFn, obs: torch.Tensor, act: torch.Tensor,
                      sigma: float | None, samples: torch.Tensor,
                      log_q: torch.Tensor | None = None) -> torch.Tensor:
    """r(o, a) = -E(o, a) - V(o), V(o) = log mean_m exp(-E(o, a_m) - log q(a_m | o)).

    V is an importance-sampled estimate of the soft value log integral exp(-E(o, a)) da from
    proposal samples a_m ~ q(.|o), so r estimates log pi(a|o) of the Boltzmann policy: it
    removes the state-dependent offset like :func:`centered_reward`, and is comparable across
    states on an absolute (log-probability) scale.

    Args:
        energy: the energy function.
        obs: (B, O) normalised observations.
        act: (B, H, A) normalised action chunks to score.
        sigma: noise scale for sigma-indexed energies (sigma_min), None for sigma-free ones.
        samples: (B, M, H, A) proposal samples per observation.
        log_q: (B, M) their proposal log-densities; None treats the proposal as uniform
            (V is then a log-mean-exp of -E over the samples, up to a constant).

    Returns:
        (B,) rewards; higher is better.
    """
    e = candidate_energies(energy, obs, act.unsqueeze(1), sigma)[:, 0]
    logits = -candidate_energies(energy, obs, samples, sigma)
    if log_q is not None:
        logits = logits - log_q.to(logits)
    value = torch.logsumexp(logits, dim=1) - torch.log(torch.tensor(float(samples.shape[1])))
    return -e - value
