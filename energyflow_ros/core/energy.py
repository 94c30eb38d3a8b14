"""Evaluating an energy and its action gradient over sets of candidate chunks.

An *energy function* is any callable ``energy(obs (B, O), act (B, H, A), sigma (B,) | None) ->
(B,)``: the networks in :mod:`energyflow_ros.core.networks`, or an analytic function in tests.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ['EnergyFn', 'candidate_energies', 'candidate_energies_and_grads', 'expand_obs']

EnergyFn = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def expand_obs(obs: torch.Tensor, m: int) -> torch.Tensor:
    """(B, O) -> (B * m, O), each observation repeated for its m candidates."""
    return obs.unsqueeze(1).expand(obs.shape[0], m, *obs.shape[1:]).reshape(-1, *obs.shape[1:])


def _expand_sigma(sigma: torch.Tensor | float | None, b: int, m: int,
                  like: torch.Tensor) -> torch.Tensor | None:
    if sigma is None:
        return None
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.dim() == 0:
        return sigma.expand(b * m)
    if sigma.dim() == 1:
        return sigma.view(b, 1).expand(b, m).reshape(-1)
    return sigma.reshape(-1)


def candidate_energies(energy: EnergyFn, obs: torch.Tensor, cands: torch.Tensor,
                       sigma: torch.Tensor | float | None = None) -> torch.Tensor:
    """Energies of M candidate chunks per observation.

    Args:
        energy: the energy function.
        obs: (B, O).
        cands: (B, M, H, A).
        sigma: None, a scalar, (B,) per observation, or (B, M) per candidate.

    Returns:
        (B, M) energies.
    """
    b, m = cands.shape[:2]
    flat = cands.reshape(b * m, *cands.shape[2:])
    return energy(expand_obs(obs, m), flat, _expand_sigma(sigma, b, m, cands)).view(b, m)


def candidate_energies_and_grads(energy: EnergyFn, obs: torch.Tensor, cands: torch.Tensor,
                                 sigma: torch.Tensor | float | None = None,
                                 create_graph: bool = False,
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (B, M) and action gradients (B, M, H, A) of M candidates per observation.

    With ``create_graph=False`` the candidates are detached first (sampling); with True the
    gradient stays differentiable w.r.t. the network parameters (score matching).
    """
    with torch.enable_grad():
        x = cands if create_graph and cands.requires_grad else cands.detach().requires_grad_(True)
        e = candidate_energies(energy, obs, x, sigma)
        (g,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return (e, g) if create_graph else (e.detach(), g.detach())
