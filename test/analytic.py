"""Analytic energies and densities with known answers, shared by the core tests."""

from __future__ import annotations

import math

import torch


class GaussianEnergy:
    """E(o, a, sigma) = -log N(a; mu(o), (s**2 + sigma**2) I) up to a constant.

    mu(o) = ``offset + obs[:, :1]`` broadcast over the chunk: a quadratic with a known minimum.
    """

    def __init__(self, std: float, offset: torch.Tensor) -> None:
        self.std, self.offset = std, offset

    def minimum(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, H, A) location of the minimum."""
        return self.offset.unsqueeze(0) + obs[:, :1, None]

    def __call__(self, obs, act, sigma=None):
        var = self.std ** 2 + (0.0 if sigma is None else sigma.view(-1, 1, 1) ** 2)
        return (0.5 * (act - self.minimum(obs)) ** 2 / var).flatten(1).sum(-1)


class MixtureEnergy:
    """E(o, a, sigma) = -log of an equal-weight 2-D Gaussian mixture * N(0, sigma**2 I).

    Chunks are (1, 2); the observation is ignored.
    """

    def __init__(self, means: torch.Tensor, std: float) -> None:
        self.means, self.std = means, std

    def log_prob(self, act: torch.Tensor, sigma: torch.Tensor | float | None) -> torch.Tensor:
        """log p_sigma(a) for (B, 1, 2) chunks, sigma (B,) or scalar."""
        s = torch.as_tensor(0.0 if sigma is None else sigma, dtype=act.dtype)
        var = (self.std ** 2 + s ** 2).reshape(-1, 1)                     # (B, 1) or (1, 1)
        d2 = ((act[:, 0, None, :] - self.means[None]) ** 2).sum(-1)      # (B, K)
        log_comp = -0.5 * d2 / var - torch.log(2 * math.pi * var)
        return torch.logsumexp(log_comp, dim=-1) - math.log(len(self.means))

    def score(self, act: torch.Tensor, sigma: float) -> torch.Tensor:
        """Analytic grad_a log p_sigma(a), (B, 1, 2)."""
        x = act.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.log_prob(x, sigma).sum(), x)
        return g

    def sample(self, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """n draws (n, 1, 2) from p_sigma."""
        k = torch.randint(0, len(self.means), (n,), generator=generator)
        s = math.sqrt(self.std ** 2 + sigma ** 2)
        return (self.means[k] + s * torch.randn(n, 2, generator=generator)).unsqueeze(1)

    def __call__(self, obs, act, sigma=None):
        return -self.log_prob(act, sigma)


SQUARE_MODES = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
