"""Torch modules whose ``forward`` is exactly what one exported ONNX graph computes.

Gradients cannot be exported as ``torch.autograd.grad`` calls (ONNX has no backward ops), so
the action gradient of an energy is written out explicitly:

* MLP energies (every activation smooth) get a hand-written backward pass — the chain rule
  through ``Linear`` and the activation — which exports with the dynamo exporter directly,
  keeps the batch and particle axes dynamic and compiles to a few fused matrix products.
* The Gaussian-mixture log-density of the R-NCE proposal (inside the residual energy
  ``E = f - log q``) has a closed-form gradient.
* Any other energy (the 1-D conv U-Net) is differentiated by ``torch.autograd.grad`` and must be
  traced first with ``make_fx(tracing_mode='symbolic')`` (see :mod:`.onnx_export`).

Shapes: ``obs`` (B, O); ``actions`` (B, M, H, A); ``sigma`` (1,); energies (B, M).
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from energyflow_ros.core.energy import candidate_energies, candidate_energies_and_grads
from energyflow_ros.core.methods import (
    DiffusionMethod, Method, MSEMethod, RNCEMethod,
)
from energyflow_ros.core.networks import MLPEnergy
from energyflow_ros.core.proposals import GaussianMixtureProposal
from energyflow_ros.core.samplers import ddim_steps, ddim_update, select_lowest

__all__ = [
    'activation_and_slope', 'MLPEnergyTerm', 'MixtureLogDensityTerm', 'ResidualEnergyTerm',
    'AutogradEnergyTerm', 'EnergyGraph', 'GradientGraph', 'ProposalGraph', 'ProposalRankGraph',
    'DDIMGraph', 'RegressionGraph', 'energy_term', 'is_sigma_conditioned', 'mixture_draws',
]

_LOG_2PI = math.log(2.0 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def activation_and_slope(name: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth activation and its derivative at ``z``: (act(z), act'(z))."""
    if name == 'silu':
        s = torch.sigmoid(z)
        h = z * s
        return h, s * (1.0 + z - h)
    if name == 'softplus':
        return F.softplus(z), torch.sigmoid(z)
    if name == 'gelu':
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        return z * cdf, cdf + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    if name == 'tanh':
        h = torch.tanh(z)
        return h, 1.0 - h * h
    raise ValueError(f'no hand-written derivative for activation {name!r}')


def is_sigma_conditioned(method: Method) -> bool:
    """Whether the method's energy reads its noise-scale input."""
    return method.sigma_min is not None


class MLPEnergyTerm(nn.Module):
    """An :class:`MLPEnergy` with a hand-written action gradient.

    With ``u = c_in(sigma) * a`` and ``E = g(o, u, sigma) / (sigma * c_in)`` (sigma-conditioned)
    or ``E = g(o, a)``, the chain rule gives ``dE/da = (dg/du) / sigma`` (resp. ``dg/da``).
    With the ``squared_norm`` head ``g = |y|^2 / 2`` for the last layer's output y, whose
    gradient y enters the backward pass through the last layer's weights.
    """

    def __init__(self, net: MLPEnergy) -> None:
        super().__init__()
        self.net = net
        linears = [m for m in net.trunk if isinstance(m, nn.Linear)]
        self.hidden, self.out = nn.ModuleList(linears[:-1]), linears[-1]
        self.act = type(net.trunk[1]).__name__.lower() if len(net.trunk) > 1 else 'silu'
        self.obs_dim, self.flat_dim = net.spec.obs_dim, net.spec.flat_action_dim

    def _first_layer(self, obs: torch.Tensor, actions: torch.Tensor,
                     sigma: torch.Tensor) -> torch.Tensor:
        """Pre-activation of the first layer, (B * M, hidden), without concatenating inputs.

        The observation and noise-scale parts are computed once per observation and shared by
        its M candidates; the noise-scale input scaling is applied to the narrow actions.
        """
        o, d = self.obs_dim, self.flat_dim
        first = self.hidden[0]
        w = first.weight
        b, m = actions.shape[0], actions.shape[1]
        flat = actions.reshape(-1, d)
        context = obs @ w[:, :o].t() + first.bias                             # (B, hidden)
        if self.net.sigma_conditioned:
            flat = flat * torch.rsqrt(sigma * sigma + 1.0)
            context = context + self.net.sigma_embed(sigma) @ w[:, o + d:].t()
        z = (flat @ w[:, o:o + d].t()).view(b, m, -1) + context.unsqueeze(1)
        return z.view(b * m, -1)

    def _scale(self, sigma: torch.Tensor) -> torch.Tensor | float:
        """Factor from g to E: 1 / (sigma * c_in(sigma)) (1 for a sigma-free energy)."""
        if not self.net.sigma_conditioned:
            return 1.0
        return torch.sqrt(sigma * sigma + 1.0) / sigma

    def _forward(self, obs: torch.Tensor, actions: torch.Tensor, sigma: torch.Tensor,
                 ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Energies (B, M), every hidden layer's activation slope (B * M, hidden) and dg/dy
        for the last layer's output y (B * M, outputs; None for the linear head: 1)."""
        h, slope = activation_and_slope(self.act, self._first_layer(obs, actions, sigma))
        slopes = [slope]
        for layer in self.hidden[1:]:
            h, slope = activation_and_slope(self.act, layer(h))
            slopes.append(slope)
        y = self.out(h)
        g, dg = (0.5 * (y * y).sum(-1), y) if self.net.squared_norm else (y.squeeze(-1), None)
        return g.view(actions.shape[0], actions.shape[1]) * self._scale(sigma), slopes, dg

    def energy(self, obs: torch.Tensor, actions: torch.Tensor,
               sigma: torch.Tensor) -> torch.Tensor:
        """Energies (B, M)."""
        return self._forward(obs, actions, sigma)[0]

    def energy_and_grad(self, obs: torch.Tensor, actions: torch.Tensor,
                        sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (B, M) and their action gradients (B, M, H, A)."""
        e, slopes, dg = self._forward(obs, actions, sigma)
        delta = slopes[-1] * (self.out.weight if dg is None else dg @ self.out.weight)
        for layer, slope in zip(reversed(self.hidden[1:]), reversed(slopes[:-1])):
            delta = (delta @ layer.weight) * slope
        o, d = self.obs_dim, self.flat_dim
        grad = delta @ self.hidden[0].weight[:, o:o + d]
        if self.net.sigma_conditioned:
            grad = grad * (1.0 / sigma)
        return e, grad.view(actions.shape)


class MixtureLogDensityTerm(nn.Module):
    """log q(a | o) of the R-NCE negative sampler (mixture plus broad component), closed form.

    With ``widen`` the mixture is convolved with N(0, sigma**2 I) (interpolating R-NCE).
    """

    def __init__(self, proposal: GaussianMixtureProposal, widen: bool) -> None:
        super().__init__()
        self.proposal, self.widen = proposal, widen

    def _terms(self, obs: torch.Tensor, actions: torch.Tensor, sigma: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_w, means, stds = self.proposal.negative_sampler_parameters(obs)
        var = stds * stds
        if self.widen:
            var = var + sigma * sigma
        diff = actions.flatten(2).unsqueeze(2) - means.unsqueeze(1)            # (B, M, C, D)
        inv_var = (1.0 / var).unsqueeze(1)
        log_norm = (torch.log(var).sum(-1) + var.shape[-1] * _LOG_2PI).unsqueeze(1)
        comp = -0.5 * ((diff * diff * inv_var).sum(-1) + log_norm) + log_w.unsqueeze(1)
        return comp, diff, inv_var

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor,
                 sigma: torch.Tensor) -> torch.Tensor:
        """log q (B, M)."""
        return torch.logsumexp(self._terms(obs, actions, sigma)[0], dim=-1)

    def log_prob_and_grad(self, obs: torch.Tensor, actions: torch.Tensor,
                          sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log q (B, M) and d log q / d a (B, M, H, A)."""
        comp, diff, inv_var = self._terms(obs, actions, sigma)
        resp = torch.softmax(comp, dim=-1).unsqueeze(-1)                       # (B, M, C, 1)
        grad = -(resp * diff * inv_var).sum(2)
        return torch.logsumexp(comp, dim=-1), grad.view(actions.shape)


class ResidualEnergyTerm(nn.Module):
    """R-NCE's energy E = f - log q: a hand-written MLP residual and the closed-form log q."""

    def __init__(self, residual: MLPEnergyTerm, log_q: MixtureLogDensityTerm) -> None:
        super().__init__()
        self.residual, self.log_q = residual, log_q

    def energy(self, obs, actions, sigma):  # noqa: D102
        return self.residual.energy(obs, actions, sigma) - self.log_q.log_prob(
            obs, actions, sigma)

    def energy_and_grad(self, obs, actions, sigma):  # noqa: D102
        f, gf = self.residual.energy_and_grad(obs, actions, sigma)
        lq, glq = self.log_q.log_prob_and_grad(obs, actions, sigma)
        return f - lq, gf - glq


class AutogradEnergyTerm(nn.Module):
    """Any method's energy, differentiated by autograd (export only after ``make_fx``)."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method, self.sigma_conditioned = method, is_sigma_conditioned(method)

    def _sigma(self, obs: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor | None:
        return sigma.expand(obs.shape[0]) if self.sigma_conditioned else None

    def energy(self, obs, actions, sigma):  # noqa: D102
        return candidate_energies(self.method.energy, obs, actions, self._sigma(obs, sigma))

    def energy_and_grad(self, obs, actions, sigma):  # noqa: D102
        return candidate_energies_and_grads(self.method.energy, obs, actions,
                                            self._sigma(obs, sigma))


def energy_term(method: Method) -> tuple[nn.Module, bool]:
    """The exportable energy of ``method`` and whether it needs ``make_fx`` tracing.

    Raises:
        TypeError: the method has no energy (diffusion, MSE).
    """
    if isinstance(method, (DiffusionMethod, MSEMethod)):
        raise TypeError(f'method {method.name!r} has no energy to export')
    net = method.net
    if not isinstance(net, MLPEnergy) or net.trunk[1].__class__.__name__.lower() not in (
            'silu', 'softplus', 'gelu', 'tanh') or getattr(net.trunk[1], 'approximate',
                                                            'none') != 'none':
        return AutogradEnergyTerm(method), True
    mlp = MLPEnergyTerm(net)
    if isinstance(method, RNCEMethod):
        widen = is_sigma_conditioned(method)
        return ResidualEnergyTerm(mlp, MixtureLogDensityTerm(method.proposal, widen)), False
    return mlp, False


class EnergyGraph(nn.Module):
    """Graph ``energy``: (obs (B, O), actions (B, M, H, A), sigma (1,)) -> energies (B, M)."""

    def __init__(self, term: nn.Module) -> None:
        super().__init__()
        self.term = term

    def forward(self, obs: torch.Tensor, actions: torch.Tensor,
                sigma: torch.Tensor) -> torch.Tensor:
        return self.term.energy(obs, actions, sigma)


class GradientGraph(nn.Module):
    """Graph ``gradient``: same inputs -> (energies (B, M), grads (B, M, H, A))."""

    def __init__(self, term: nn.Module) -> None:
        super().__init__()
        self.term = term

    def forward(self, obs: torch.Tensor, actions: torch.Tensor,
                sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.term.energy_and_grad(obs, actions, sigma)


class ProposalGraph(nn.Module):
    """Graph ``proposal``: obs (B, O) -> logits (B, C), means, stds (B, C, H*A) of q(a | o)."""

    def __init__(self, proposal: GaussianMixtureProposal) -> None:
        super().__init__()
        self.proposal = proposal

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.proposal.parameters_for(obs)


def mixture_draws(log_w: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
                  uniforms: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Draws (B, N, D) from diagonal Gaussian mixtures (B, C, D) by inverse CDF.

    Particle n takes the first component whose cumulative weight exceeds ``uniforms[:, n]``
    (the runtime's ``sample_mixture`` rule) and adds ``normals`` (B, N, D) times its std.
    """
    cdf = torch.cumsum(torch.softmax(log_w, dim=-1), dim=-1)                   # (B, C)
    below = (uniforms.unsqueeze(-1) > cdf.unsqueeze(1)).to(torch.int64)       # (B, N, C)
    comp = torch.clamp(below.sum(-1), max=log_w.shape[1] - 1)
    idx = comp.unsqueeze(-1).expand(-1, -1, means.shape[-1])
    return means.gather(1, idx) + stds.gather(1, idx) * normals


class ProposalRankGraph(nn.Module):
    """Graph ``sampler`` of R-NCE without Langevin steps: proposal draws ranked by the energy.

    ``forward(obs (B, O), uniforms (B, N), normals (B, N, H, A), rank_sigma (1,))`` ->
    action (B, H, A), energy (B,), particles (B, N, H, A), energies (B, N).
    """

    def __init__(self, term: nn.Module, proposal: GaussianMixtureProposal) -> None:
        super().__init__()
        self.term, self.proposal = term, proposal

    def forward(self, obs: torch.Tensor, uniforms: torch.Tensor, normals: torch.Tensor,
                rank_sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        log_w, means, stds = self.proposal.parameters_for(obs)
        flat = mixture_draws(log_w, means, stds, uniforms, normals.flatten(2))
        particles = flat.view(normals.shape)
        energies = self.term.energy(obs, particles, rank_sigma)
        chosen = select_lowest(energies, particles)
        return chosen.actions, chosen.energy, particles, energies


def _no_energy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) and (B, 1) zeros shaped like the batch of chunks ``x`` (B, H, A)."""
    zeros = torch.zeros_like(x[:, 0, 0])
    return zeros, zeros.unsqueeze(1)


class DDIMGraph(nn.Module):
    """Graph ``sampler`` of the diffusion baseline: unrolled deterministic DDIM (eta = 0).

    ``forward(obs (B, O), init (B, 1, H, A))`` -> action (B, H, A), energy (B,) zeros,
    particles (B, 1, H, A), energies (B, 1) zeros. Same arithmetic as ``DDIMSampler``.
    """

    def __init__(self, method: DiffusionMethod, sample_steps: int | None = None) -> None:
        super().__init__()
        self.denoiser = method.net
        sched = method.schedule
        self.steps = ddim_steps(sched.train_steps, sample_steps or method.cfg.ddim.sample_steps)
        self.alpha_bar = [float(a) for a in sched.alpha_bar.tolist()]
        self.times = [float(sched.time(torch.tensor(k))) for k in self.steps]
        self.clip = float(method.cfg.ddim.clip_sample)

    def forward(self, obs: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = init[:, 0]
        ab = self.alpha_bar
        t_col = torch.ones_like(obs[:, 0])
        for i, k in enumerate(self.steps):
            eps = self.denoiser(obs, x, t_col * self.times[i])
            ab_prev = ab[self.steps[i + 1]] if i + 1 < len(self.steps) else 1.0
            x = ddim_update(x, eps, ab[k], ab_prev, self.clip)
        energy, energies = _no_energy(x)
        return x, energy, x.unsqueeze(1), energies


class RegressionGraph(nn.Module):
    """Graph ``sampler`` of the MSE baseline: obs (B, O) -> the same four outputs."""

    def __init__(self, method: MSEMethod) -> None:
        super().__init__()
        self.regressor = method.net

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.regressor(obs)
        energy, energies = _no_energy(x)
        return x, energy, x.unsqueeze(1), energies
