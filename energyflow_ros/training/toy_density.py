"""A known 2-D multimodal conditional density, and fitting a method to it.

Used by the core tests and by ``energyflow-demo``: a ground truth against which a learned
energy's density exp(-E) is compared (Bhattacharyya coefficient on a grid), as in the R-NCE
paper's Table 1.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from energyflow_ros.core.config import ChunkSpec
from energyflow_ros.core.energy import candidate_energies, EnergyFn
from energyflow_ros.core.methods import build_method, Method

__all__ = ['RotatingMixture', 'bhattacharyya_on_grid', 'fit_on_density']


class RotatingMixture:
    """A known 2-D multimodal conditional density p(a | o), o in [-1, 1].

    Four Gaussian modes (std ``std``) at (+-0.5, +-0.5) rotated by o * pi / 4, with weights that
    depend on o. Chunks are (1, 2); observations are (B, 1).
    """

    BASE = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])

    def __init__(self, std: float = 0.1) -> None:
        self.std = std

    def params(self, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-weights (B, 4) and means (B, 4, 2) for observations o (B,)."""
        th = o * math.pi / 4
        c, s = torch.cos(th), torch.sin(th)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        means = torch.einsum('bij,kj->bki', rot, self.BASE)
        logits = 1.5 * torch.stack([o, -o, torch.zeros_like(o), 0.5 * torch.ones_like(o)], -1)
        return torch.log_softmax(logits, -1), means

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n pairs: obs (n, 1), chunks (n, 1, 2)."""
        o = torch.rand(n, generator=generator) * 2 - 1
        log_w, mu = self.params(o)
        k = torch.multinomial(log_w.exp(), 1, generator=generator)[:, 0]
        a = mu[torch.arange(n), k] + self.std * torch.randn(n, 2, generator=generator)
        return o[:, None], a[:, None, :]

    def log_prob(self, o: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(a | o) for o (B,), a (B, 2)."""
        log_w, mu = self.params(o)
        d2 = ((a[:, None, :] - mu) ** 2).sum(-1)
        return torch.logsumexp(log_w - d2 / (2 * self.std ** 2), -1)


def bhattacharyya_on_grid(energy: EnergyFn, density: RotatingMixture,
                          obs_values: tuple[float, ...] = (-0.8, -0.3, 0.2, 0.7),
                          half_width: float = 1.2, n: int = 100,
                          sigma: float | None = None) -> float:
    """Mean over ``obs_values`` of the Bhattacharyya coefficient between exp(-E) and the truth.

    Both densities are normalised on an n x n grid over [-half_width, half_width]**2;
    sigma-indexed energies are evaluated at ``sigma`` (their smallest scale).
    """
    xs = torch.linspace(-half_width, half_width, n)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing='ij'), -1).reshape(-1, 2)
    coefficients = []
    for value in obs_values:
        o = torch.full((1, 1), value)
        with torch.no_grad():
            e = candidate_energies(energy, o, grid[None, :, None, :], sigma)[0]
        p_model = torch.softmax(-e, 0)
        p_true = torch.softmax(density.log_prob(o.expand(len(grid), 1)[:, 0], grid), 0)
        coefficients.append((p_model * p_true).sqrt().sum().item())
    return sum(coefficients) / len(coefficients)


def fit_on_density(name: str, density: RotatingMixture, steps: int, batch: int = 128,
                   backbone: dict[str, Any] | None = None, cfg: dict[str, Any] | None = None,
                   lr: float = 1e-3, seed: int = 0) -> tuple[Method, float]:
    """Train method ``name`` on pairs drawn from ``density`` (Adam, cosine schedule).

    Returns:
        the trained method in eval mode, and the training wall time in seconds.
    """
    torch.manual_seed(seed)
    method = build_method(name, ChunkSpec(obs_dim=1, action_dim=2, horizon=1), backbone, cfg)
    if hasattr(method, 'set_action_bounds'):
        method.set_action_bounds(torch.tensor(-1.2), torch.tensor(1.2))
    opt = torch.optim.Adam(method.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        obs, act = density.sample(batch, gen)
        loss, _ = method.loss(obs, act, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return method.eval(), time.perf_counter() - start
