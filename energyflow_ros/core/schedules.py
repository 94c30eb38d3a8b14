"""Noise schedules: EnergyFlow's variance-exploding sigma(t) and the DDPM betas of the baseline."""

from __future__ import annotations

import math

import torch

from energyflow_ros.core.config import NoiseScheduleConfig

__all__ = ['VESchedule', 'DDPMSchedule']


class VESchedule:
    """sigma(t) = sigma_min * (sigma_max / sigma_min) ** t for t in [0, 1].

    The probability-flow ODE of this process has
    d(sigma**2)/dt = 2 sigma**2 ln(sigma_max / sigma_min).
    """

    def __init__(self, cfg: NoiseScheduleConfig) -> None:
        self.sigma_min, self.sigma_max = float(cfg.sigma_min), float(cfg.sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise scale at time ``t`` (any shape)."""
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str = 'cpu') -> torch.Tensor:
        """(n,) scales with t ~ U(0, 1), i.e. log-uniform in [sigma_min, sigma_max]."""
        return self.sigma(torch.rand(n, generator=generator, device=device))

    def dsigma2_dt(self, sigma: torch.Tensor) -> torch.Tensor:
        """d(sigma**2)/dt at scale ``sigma``."""
        return 2.0 * sigma * sigma * self.log_ratio

    def geometric(self, n: int) -> torch.Tensor:
        """(n,) scales from sigma_max down to sigma_min, geometrically spaced (n=1: sigma_min)."""
        if n == 1:
            return torch.tensor([self.sigma_min])
        return self.sigma(torch.linspace(1.0, 0.0, n))


class DDPMSchedule:
    """Squared-cosine DDPM schedule (Nichol & Dhariwal) over ``train_steps`` discrete steps.

    ``alpha_bar[k]`` is the signal fraction after step k (k = 0 .. train_steps-1).
    """

    def __init__(self, train_steps: int) -> None:
        self.train_steps = train_steps
        s = 0.008
        steps = torch.arange(train_steps + 1, dtype=torch.float64) / train_steps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.alpha_bar = torch.cumprod(1 - betas, dim=0).float()

    def time(self, k: torch.Tensor) -> torch.Tensor:
        """Continuous time in (0, 1] fed to the network for integer step ``k``."""
        return (k.float() + 1.0) / self.train_steps

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """x_k = sqrt(alpha_bar_k) x0 + sqrt(1 - alpha_bar_k) eps, per batch row."""
        ab = self.alpha_bar.to(x0.device)[k].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps
