"""Training objectives as pure functions of tensors, shapes in every docstring.

Low energy means likely. Candidate sets hold the positive (data) chunk at ``positive_index``
among K negatives; see :func:`insert_positive`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    'insert_positive', 'ranking_nce_loss', 'ibc_infonce_loss', 'rnce_loss', 'dsm_loss',
    'eps_prediction_loss', 'mse_bc_loss',
]


def insert_positive(positive: torch.Tensor, negatives: torch.Tensor,
                    generator: torch.Generator | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Place each positive at a uniformly random index among its negatives.

    Args:
        positive: (B, H, A) data chunks.
        negatives: (B, K, H, A) negative chunks.

    Returns:
        candidates: (B, 1+K, H, A), row b's positive at ``positive_index[b]``.
        positive_index: (B,) int64.
    """
    b, k = negatives.shape[:2]
    idx = torch.randint(0, k + 1, (b,), generator=generator, device=negatives.device)
    cands = torch.cat([negatives, positive.unsqueeze(1)], dim=1)
    order = torch.arange(k + 1, device=negatives.device).expand(b, k + 1).clone()
    # Swap the positive (stored last) with the slot it should occupy.
    order[torch.arange(b), idx] = k
    order[:, k] = idx
    return cands.gather(1, order.view(b, k + 1, *([1] * (cands.dim() - 2))).expand_as(cands)), idx


def ranking_nce_loss(logits: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of picking the positive among 1+K candidates.

    Args:
        logits: (B, 1+K) unnormalised log-probabilities of each candidate being the positive.
        positive_index: (B,) index of the positive.

    Returns:
        scalar mean loss.
    """
    return F.cross_entropy(logits, positive_index)


def ibc_infonce_loss(energies: torch.Tensor, positive_index: torch.Tensor) -> torch.Tensor:
    """IBC's InfoNCE: logits -E with no correction for the negative sampler.

    Args:
        energies: (B, 1+K), positive at ``positive_index``.
        positive_index: (B,).

    With negatives from q, exp(-E) converges to p(a|o) / q(a|o): unbiased only for uniform q,
    and inefficient even then because few uniform negatives land near sharp modes.
    """
    return ranking_nce_loss(-energies, positive_index)


def rnce_loss(energies: torch.Tensor, log_q: torch.Tensor,
              positive_index: torch.Tensor) -> torch.Tensor:
    """Ranking NCE (R-NCE paper): logits -E - log q with the proposal's log-density detached.

    Args:
        energies: (B, 1+K), positive at ``positive_index``.
        log_q: (B, 1+K) log q(a_i | o) of every candidate under the negative sampler.
        positive_index: (B,).

    The optimum is E = -log p(a|o) + c(o) for any proposal q (asymptotically consistent).
    """
    return ranking_nce_loss(-energies - log_q.detach(), positive_index)


def dsm_loss(sigma_grad: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """EnergyFlow's sigma**2-weighted denoising score matching with score = -grad_a E.

    Args:
        sigma_grad: (B, H, A) sigma * grad_a E(o, a + sigma * eps, sigma), built with
            ``create_graph=True`` so the loss reaches the parameters (or any (B, ...) pair,
            e.g. the observation term of the joint form).
        noise: (B, H, A) the eps that was added.

    Returns:
        mean over the batch of || sigma * (-grad_a E) + eps ||**2 (summed over the chunk).
    """
    return (noise - sigma_grad).square().flatten(1).sum(-1).mean()


def eps_prediction_loss(eps_pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Diffusion baseline's epsilon-prediction MSE; both (B, H, A)."""
    return F.mse_loss(eps_pred, eps)


def mse_bc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Behaviour-cloning MSE between predicted and demonstrated chunks; both (B, H, A)."""
    return F.mse_loss(pred, target)
