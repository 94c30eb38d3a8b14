"""Learnable negative samplers q(a | o) for R-NCE.

:class:`GaussianMixtureProposal` is a mixture density network with diagonal components. Its
log-density is exact, it samples cheaply, and convolving it with N(0, sigma**2 I) (the
interpolating form) is again a Gaussian mixture with variances increased by sigma**2, so the
sigma-indexed log q stays exact too.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from energyflow_ros.core.config import ChunkSpec, ProposalConfig
from energyflow_ros.core.networks import MLP

__all__ = ['GaussianMixtureProposal']

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixtureProposal(nn.Module):
    """q(a | o) = sum_k pi_k(o) N(a; mu_k(o), diag(s_k(o)**2)) over flattened chunks.

    Actions are (B, H, A) chunks; internally they are flattened to D = H * A.
    """

    def __init__(self, spec: ChunkSpec, cfg: ProposalConfig) -> None:
        super().__init__()
        self.spec, self.cfg = spec, cfg
        k, d = cfg.n_components, spec.flat_action_dim
        self.net = MLP(spec.obs_dim, k * (1 + 2 * d), cfg.hidden, cfg.depth, 'silu')

    def parameters_for(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Mixture parameters for each observation.

        Returns:
            log_weights: (B, K) normalised log mixture weights.
            means: (B, K, D).
            stds: (B, K, D), at least ``min_std``.
        """
        k, d = self.cfg.n_components, self.spec.flat_action_dim
        out = self.net(obs)
        logits, means, raw_std = out.split([k, k * d, k * d], dim=-1)
        stds = F.softplus(raw_std).view(-1, k, d) + self.cfg.min_std
        return F.log_softmax(logits, dim=-1), means.view(-1, k, d), stds

    def negative_sampler_parameters(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Parameters of the negative sampler: the mixture plus the broad component.

        The broad N(0, broad_std**2 I) component carries weight ``broad_weight``; the learned
        components share the rest. Same shapes as :meth:`parameters_for` with K+1 components.
        """
        log_w, means, stds = self.parameters_for(obs)
        lam = self.cfg.broad_weight
        if lam == 0:
            return log_w, means, stds
        b, _, d = means.shape
        broad_w = torch.full((b, 1), math.log(lam), device=obs.device)
        return (torch.cat([log_w + math.log1p(-lam), broad_w], dim=1),
                torch.cat([means, means.new_zeros(b, 1, d)], dim=1),
                torch.cat([stds, stds.new_full((b, 1, d), self.cfg.broad_std)], dim=1))

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor,
                 sigma: torch.Tensor | None = None, negatives: bool = False) -> torch.Tensor:
        """log q_sigma(a | o) for actions sharing each observation.

        Args:
            obs: (B, O).
            act: (B, M, H, A) — M actions per observation.
            sigma: (B,) or None; when given, the density of q convolved with N(0, sigma**2 I).
            negatives: use the negative sampler's density (mixture plus broad component).

        Returns:
            (B, M) log-densities.
        """
        params = self.negative_sampler_parameters(obs) if negatives else self.parameters_for(obs)
        return _mixture_log_prob(*params, act.flatten(2), sigma)

    def sample(self, obs: torch.Tensor, n: int, sigma: torch.Tensor | None = None,
               generator: torch.Generator | None = None, negatives: bool = False) -> torch.Tensor:
        """Draw ``n`` chunks per observation (no gradient): (B, n, H, A).

        With ``negatives=True`` the draw comes from the negative sampler (see :meth:`log_prob`).
        """
        with torch.no_grad():
            params = (self.negative_sampler_parameters(obs) if negatives
                      else self.parameters_for(obs))
            x = _mixture_sample(*params, n, sigma, generator)
        return x.view(x.shape[0], n, self.spec.horizon, self.spec.action_dim)

    def nll(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of data chunks ``act`` (B, H, A): the proposal's loss."""
        return -self.log_prob(obs, act.unsqueeze(1)).mean()


def _mixture_log_prob(log_w: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
                      x: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """log of a diagonal Gaussian mixture (B, K, D) at points x (B, M, D), widened by sigma."""
    var = stds.square()
    if sigma is not None:
        var = var + sigma.view(-1, 1, 1).square()
    diff2 = (x.unsqueeze(2) - means.unsqueeze(1)).square() / var.unsqueeze(1)
    comp = -0.5 * (diff2 + var.unsqueeze(1).log() + _LOG_2PI).sum(-1)     # (B, M, K)
    return torch.logsumexp(comp + log_w.unsqueeze(1), dim=-1)


def _mixture_sample(log_w: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, n: int,
                    sigma: torch.Tensor | None,
                    generator: torch.Generator | None) -> torch.Tensor:
    """n draws (B, n, D) from a diagonal Gaussian mixture (B, K, D), widened by sigma."""
    b, _, d = means.shape
    comp = torch.multinomial(log_w.exp(), n, replacement=True, generator=generator)
    idx = comp.unsqueeze(-1).expand(b, n, d)
    mu, sd = means.gather(1, idx), stds.gather(1, idx)
    if sigma is not None:
        sd = torch.sqrt(sd.square() + sigma.view(-1, 1, 1).square())
    return mu + sd * torch.randn(mu.shape, generator=generator, device=mu.device)
