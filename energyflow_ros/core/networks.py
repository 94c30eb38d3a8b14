"""Networks: scalar energies E(o, a, sigma) over action chunks, and the baselines' backbones.

Shapes used throughout: ``obs`` (B, obs_dim), ``act`` (B, H, A), ``sigma`` (B,), energy (B,).
Every activation is smooth so that grad_a E is smooth (samplers follow it).

Noise-scale conditioning. A sigma-conditioned energy is written
``E(o, a, sigma) = g(o, c_in(sigma) * a, sigma) / (sigma * c_in(sigma))`` with
``c_in = 1 / sqrt(sigma**2 + 1)`` (actions are z-scored, so data variance is about 1). Then
``sigma * grad_a E = grad_u g``: the quantity denoising score matching regresses stays O(1) at
every scale, and the field is still the gradient of one scalar, i.e. conservative. This
preconditioning is ours (in the spirit of EDM); the papers do not prescribe one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from energyflow_ros.core.config import ChunkSpec, MLPConfig, UNetConfig

__all__ = [
    'activation', 'SigmaEmbedding', 'MLP', 'MLPEnergy', 'UNetEnergy', 'ConditionalUNet1D',
    'MLPDenoiser', 'UNetDenoiser', 'MLPRegressor', 'count_parameters', 'input_scale',
]


def activation(name: str) -> nn.Module:
    """The smooth activation module called ``name``."""
    return {'silu': nn.SiLU, 'softplus': nn.Softplus, 'gelu': nn.GELU, 'tanh': nn.Tanh}[name]()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def input_scale(sigma: torch.Tensor) -> torch.Tensor:
    """c_in(sigma) = 1 / sqrt(sigma**2 + 1): keeps noisy z-scored actions at unit scale."""
    return torch.rsqrt(sigma * sigma + 1.0)


class SigmaEmbedding(nn.Module):
    """Fourier features of log(sigma) (or of a diffusion time) followed by a small MLP.

    ``forward(sigma: (B,)) -> (B, dim)``.
    """

    def __init__(self, dim: int, act: str = 'silu') -> None:
        super().__init__()
        half = max(dim // 2, 1)
        freqs = torch.exp(torch.linspace(math.log(0.1), math.log(4.0), half))
        self.register_buffer('freqs', freqs, persistent=False)
        self.net = nn.Sequential(nn.Linear(2 * half + 1, dim), activation(act),
                                 nn.Linear(dim, dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = torch.log(sigma.clamp_min(1e-8))[:, None]
        x = log_sigma * self.freqs[None, :]
        return self.net(torch.cat([torch.sin(x), torch.cos(x), log_sigma], dim=-1))


class MLP(nn.Sequential):
    """``depth`` hidden layers of width ``hidden`` with a smooth activation, then a linear map."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, depth: int, act: str) -> None:
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation(act)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


class _SigmaPreconditioned(nn.Module):
    """Shared input/output scaling for energies: see the module docstring."""

    sigma_conditioned: bool

    def scaled_action(self, act: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
        if not self.sigma_conditioned:
            return act
        return act * input_scale(sigma).view(-1, *([1] * (act.dim() - 1)))

    def scaled_energy(self, g: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
        if not self.sigma_conditioned:
            return g
        return g / (sigma * input_scale(sigma))

    def check_sigma(self, obs: torch.Tensor, sigma: torch.Tensor | None) -> None:
        if self.sigma_conditioned and (sigma is None or sigma.shape != obs.shape[:1]):
            got = None if sigma is None else tuple(sigma.shape)
            raise ValueError(f'this energy is sigma-conditioned: pass sigma of shape '
                             f'({obs.shape[0]},), got {got}')


class MLPEnergy(_SigmaPreconditioned):
    """E(o, a[, sigma]) = MLP([o, flatten(a)[, emb(sigma)]]) -> scalar (``energy_head``
    ``squared_norm``: the MLP's output is as wide as the flattened chunk and g is half its
    squared norm, so E >= 0).

    ``forward(obs (B, O), act (B, H, A), sigma (B,) | None) -> (B,)``.
    """

    def __init__(self, spec: ChunkSpec, cfg: MLPConfig, sigma_conditioned: bool) -> None:
        super().__init__()
        self.spec, self.sigma_conditioned = spec, sigma_conditioned
        emb = cfg.sigma_embed_dim if sigma_conditioned else 0
        self.sigma_embed = SigmaEmbedding(emb, cfg.activation) if sigma_conditioned else None
        self.squared_norm = cfg.energy_head == 'squared_norm'
        out = spec.flat_action_dim if self.squared_norm else 1
        self.trunk = MLP(spec.obs_dim + spec.flat_action_dim + emb, out, cfg.hidden, cfg.depth,
                         cfg.activation)

    def forward(self, obs: torch.Tensor, act: torch.Tensor,
                sigma: torch.Tensor | None = None) -> torch.Tensor:
        self.check_sigma(obs, sigma)
        parts = [obs, self.scaled_action(act, sigma).flatten(1)]
        if self.sigma_embed is not None:
            parts.append(self.sigma_embed(sigma))
        out = self.trunk(torch.cat(parts, dim=-1))
        g = 0.5 * (out * out).sum(-1) if self.squared_norm else out.squeeze(-1)
        return self.scaled_energy(g, sigma)


class _FiLMResBlock(nn.Module):
    """Two conv-norm-activation layers with FiLM (scale, shift) from the conditioning vector."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, cfg: UNetConfig) -> None:
        super().__init__()
        pad = cfg.kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, cfg.kernel_size, padding=pad)
        self.conv2 = nn.Conv1d(c_out, c_out, cfg.kernel_size, padding=pad)
        self.norm1, self.norm2 = nn.GroupNorm(cfg.groups, c_out), nn.GroupNorm(cfg.groups, c_out)
        self.act = activation(cfg.activation)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = h * (1.0 + scale) + shift
        h = self.act(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class ConditionalUNet1D(nn.Module):
    """1-D U-Net over the chunk's time axis, FiLM-conditioned on [obs, emb(sigma)].

    ``forward(x (B, A, H), cond (B, cond_in)) -> features (B, channels[0], H)``.
    """

    def __init__(self, action_dim: int, cond_in: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.cond = nn.Sequential(nn.Linear(cond_in, cfg.cond_dim), activation(cfg.activation),
                                  nn.Linear(cfg.cond_dim, cfg.cond_dim))
        ch = cfg.channels
        self.inp = _FiLMResBlock(action_dim, ch[0], cfg.cond_dim, cfg)
        self.down = nn.ModuleList(_FiLMResBlock(a, b, cfg.cond_dim, cfg)
                                  for a, b in zip(ch[:-1], ch[1:]))
        self.pool = nn.ModuleList(nn.Conv1d(b, b, 3, stride=2, padding=1) for b in ch[1:])
        self.mid = _FiLMResBlock(ch[-1], ch[-1], cfg.cond_dim, cfg)
        self.upsample = nn.ModuleList(nn.ConvTranspose1d(b, b, 4, stride=2, padding=1)
                                      for b in reversed(ch[1:]))
        self.up = nn.ModuleList(_FiLMResBlock(b + a, a, cfg.cond_dim, cfg)
                                for a, b in zip(reversed(ch[:-1]), reversed(ch[1:])))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.cond(cond)
        h = self.inp(x, c)
        skips = []
        for block, pool in zip(self.down, self.pool):
            skips.append(h)
            h = pool(block(h, c))
        h = self.mid(h, c)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            h = block(torch.cat([upsample(h), skip], dim=1), c)
        return h


class UNetEnergy(_SigmaPreconditioned):
    """EnergyFlow's backbone: conditional 1-D U-Net, mean-pool, spectral-norm MLP head -> scalar.

    ``forward(obs (B, O), act (B, H, A), sigma (B,) | None) -> (B,)``.
    """

    def __init__(self, spec: ChunkSpec, cfg: UNetConfig, sigma_conditioned: bool,
                 sigma_embed_dim: int = 64) -> None:
        super().__init__()
        cfg.check_horizon(spec.horizon)
        self.spec, self.sigma_conditioned = spec, sigma_conditioned
        emb = sigma_embed_dim if sigma_conditioned else 0
        self.sigma_embed = SigmaEmbedding(emb, cfg.activation) if sigma_conditioned else None
        self.unet = ConditionalUNet1D(spec.action_dim, spec.obs_dim + emb, cfg)
        sn = nn.utils.parametrizations.spectral_norm
        c0 = cfg.channels[0]
        self.head = nn.Sequential(sn(nn.Linear(c0, cfg.head_hidden)), activation(cfg.activation),
                                  sn(nn.Linear(cfg.head_hidden, cfg.head_hidden)),
                                  activation(cfg.activation), sn(nn.Linear(cfg.head_hidden, 1)))

    def forward(self, obs: torch.Tensor, act: torch.Tensor,
                sigma: torch.Tensor | None = None) -> torch.Tensor:
        self.check_sigma(obs, sigma)
        cond = obs if self.sigma_embed is None else torch.cat([obs, self.sigma_embed(sigma)], -1)
        feats = self.unet(self.scaled_action(act, sigma).transpose(1, 2), cond)
        return self.scaled_energy(self.head(feats.mean(dim=-1)).squeeze(-1), sigma)


class MLPDenoiser(nn.Module):
    """Diffusion baseline's epsilon-predictor with the MLP backbone (vector output).

    ``forward(obs (B, O), noisy (B, H, A), t (B,) in (0, 1]) -> eps (B, H, A)``.
    """

    def __init__(self, spec: ChunkSpec, cfg: MLPConfig) -> None:
        super().__init__()
        self.spec = spec
        self.t_embed = SigmaEmbedding(cfg.sigma_embed_dim, cfg.activation)
        self.trunk = MLP(spec.obs_dim + spec.flat_action_dim + cfg.sigma_embed_dim,
                         spec.flat_action_dim, cfg.hidden, cfg.depth, cfg.activation)

    def forward(self, obs: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, noisy.flatten(1), self.t_embed(t)], dim=-1)
        return self.trunk(x).view_as(noisy)


class UNetDenoiser(nn.Module):
    """Diffusion baseline's epsilon-predictor with the U-Net backbone (Diffusion Policy CNN).

    ``forward(obs (B, O), noisy (B, H, A), t (B,)) -> eps (B, H, A)``.
    """

    def __init__(self, spec: ChunkSpec, cfg: UNetConfig, t_embed_dim: int = 64) -> None:
        super().__init__()
        cfg.check_horizon(spec.horizon)
        self.spec = spec
        self.t_embed = SigmaEmbedding(t_embed_dim, cfg.activation)
        self.unet = ConditionalUNet1D(spec.action_dim, spec.obs_dim + t_embed_dim, cfg)
        self.out = nn.Conv1d(cfg.channels[0], spec.action_dim, 1)

    def forward(self, obs: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([obs, self.t_embed(t)], dim=-1)
        return self.out(self.unet(noisy.transpose(1, 2), cond)).transpose(1, 2)


class MLPRegressor(nn.Module):
    """MSE behaviour-cloning baseline: obs -> chunk. ``forward(obs (B, O)) -> (B, H, A)``."""

    def __init__(self, spec: ChunkSpec, cfg: MLPConfig) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = MLP(spec.obs_dim, spec.flat_action_dim, cfg.hidden, cfg.depth,
                         cfg.activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.trunk(obs).view(-1, self.spec.horizon, self.spec.action_dim)
