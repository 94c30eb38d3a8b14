"""Learning methods: a network (and proposal), its training loss and its sampler, one class each.

A method is an ``nn.Module`` whose ``loss(obs, act, generator)`` returns the training loss on a
batch of normalised (observation, action-chunk) pairs and whose ``sampler()`` returns the
inference procedure of its paper. Methods are looked up by name in :data:`METHODS`.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from energyflow_ros.core.config import (
    ChunkSpec, ConfigError, DDIMConfig, DFOConfig, LangevinConfig, MLPConfig,
    NoiseScheduleConfig, ProbabilityFlowConfig, ProposalConfig, UNetConfig, config_from_dict,
)
from energyflow_ros.core.energy import candidate_energies, candidate_energies_and_grads
from energyflow_ros.core.networks import (
    MLPDenoiser, MLPEnergy, MLPRegressor, UNetDenoiser, UNetEnergy,
)
from energyflow_ros.core.objectives import (
    dsm_loss, eps_prediction_loss, ibc_infonce_loss, insert_positive, mse_bc_loss,
    ranking_nce_loss,
)
from energyflow_ros.core.proposals import GaussianMixtureProposal
from energyflow_ros.core import samplers as S
from energyflow_ros.core.schedules import DDPMSchedule, VESchedule

__all__ = [
    'BackboneConfig', 'IBCConfig', 'RNCEConfig', 'InterpolatingRNCEConfig', 'EnergyFlowConfig',
    'DiffusionConfig', 'MSEConfig', 'Method', 'IBCMethod', 'RNCEMethod',
    'InterpolatingRNCEMethod', 'EnergyFlowMethod', 'DiffusionMethod', 'MSEMethod', 'METHODS',
    'build_method',
]

Losses = tuple[torch.Tensor, dict[str, float]]


@dataclass(frozen=True)
class BackboneConfig:
    """Which network family to use and its settings.

    Attributes:
        kind: ``'mlp'`` or ``'unet'`` (the 1-D conv U-Net of EnergyFlow / Diffusion Policy).
        mlp: settings of the MLP family.
        unet: settings of the U-Net family.
    """

    kind: str = 'mlp'
    mlp: MLPConfig = field(default_factory=MLPConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self) -> None:
        if self.kind not in ('mlp', 'unet'):
            raise ConfigError(f"BackboneConfig.kind = {self.kind!r} is invalid: expected "
                              "'mlp' or 'unet'")

    def energy(self, spec: ChunkSpec, sigma_conditioned: bool) -> nn.Module:
        """A scalar energy network of this family."""
        if self.kind == 'mlp':
            return MLPEnergy(spec, self.mlp, sigma_conditioned)
        return UNetEnergy(spec, self.unet, sigma_conditioned)

    def denoiser(self, spec: ChunkSpec) -> nn.Module:
        """An epsilon-predicting network of this family (diffusion baseline)."""
        return MLPDenoiser(spec, self.mlp) if self.kind == 'mlp' else UNetDenoiser(spec, self.unet)


@dataclass(frozen=True)
class IBCConfig:
    """IBC (InfoNCE with uniform negatives), sampled with the derivative-free optimiser.

    Attributes:
        n_negatives: uniform counter-examples per data pair.
        dfo: inference settings.
    """

    n_negatives: int = 256
    dfo: DFOConfig = field(default_factory=DFOConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.n_negatives, int) and self.n_negatives > 0):
            raise ConfigError(f'IBCConfig.n_negatives = {self.n_negatives!r} is invalid: '
                              'expected a positive integer')


@dataclass(frozen=True)
class RNCEConfig:
    """R-NCE with a jointly trained Gaussian-mixture proposal.

    Attributes:
        n_negatives: proposal samples per data pair.
        proposal: the negative sampler q(a|o).
        langevin: inference: candidates from q refined by Langevin (absolute step size).
    """

    n_negatives: int = 64
    proposal: ProposalConfig = field(default_factory=ProposalConfig)
    langevin: LangevinConfig = field(default_factory=lambda: LangevinConfig(
        n_particles=64, n_scales=1, steps_per_scale=5, step_size=1e-3, noise=0.0))

    def __post_init__(self) -> None:
        IBCConfig(n_negatives=self.n_negatives)


@dataclass(frozen=True)
class InterpolatingRNCEConfig:
    """Interpolating R-NCE: R-NCE at noise scales log-uniform in [sigma_min, sigma_max].

    Attributes:
        n_negatives: proposal samples per data pair (drawn from q convolved with N(0, sigma**2)).
        proposal: the negative sampler q(a|o).
        schedule: the scale range.
        langevin: inference: annealed Langevin from sigma_max to sigma_min.
    """

    n_negatives: int = 64
    proposal: ProposalConfig = field(default_factory=ProposalConfig)
    schedule: NoiseScheduleConfig = field(
        default_factory=lambda: NoiseScheduleConfig(sigma_min=0.01, sigma_max=2.0))
    langevin: LangevinConfig = field(default_factory=LangevinConfig)

    def __post_init__(self) -> None:
        IBCConfig(n_negatives=self.n_negatives)


@dataclass(frozen=True)
class EnergyFlowConfig:
    """EnergyFlow: sigma**2-weighted denoising score matching on a scalar energy.

    Attributes:
        schedule: VE noise scales (the paper's code: 0.01 .. 10 on z-scored actions).
        flow: inference with the probability-flow ODE.
        obs_noise_max: 0 (the paper): only actions are noised, so E is a conditional energy
            whose offset per observation is free. > 0 (ours): observations are noised too,
            with min(sigma, obs_noise_max), and -grad_o E is fitted to their score as well, so
            the field over (o, a) is conservative and -E(o, a, sigma) is the joint log-density
            of the demonstrations' states and actions up to one constant: a reward that also
            says which states the expert visits (the ``occupancy`` reward).
    """

    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    flow: ProbabilityFlowConfig = field(default_factory=ProbabilityFlowConfig)
    obs_noise_max: float = 0.0

    def __post_init__(self) -> None:
        value = self.obs_noise_max
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0.0 <= value < float('inf')):
            raise ConfigError(f'EnergyFlowConfig.obs_noise_max = {value!r} is invalid: '
                              'expected a finite number >= 0')


@dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion-policy baseline (epsilon prediction, DDPM training, DDIM sampling)."""

    ddim: DDIMConfig = field(default_factory=DDIMConfig)


@dataclass(frozen=True)
class MSEConfig:
    """MSE behaviour-cloning baseline (always the MLP family, regressing the chunk from obs)."""


class Method(nn.Module, abc.ABC):
    """Base of every learning method."""

    name: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, spec: ChunkSpec, backbone: BackboneConfig, cfg: Any) -> None:
        super().__init__()
        self.spec, self.backbone_cfg, self.cfg = spec, backbone, cfg

    @property
    def chunk_shape(self) -> tuple[int, int]:
        """(H, A) of one chunk."""
        return self.spec.horizon, self.spec.action_dim

    @abc.abstractmethod
    def loss(self, obs: torch.Tensor, act: torch.Tensor,
             generator: torch.Generator | None = None) -> Losses:
        """Training loss on normalised obs (B, O) and chunks (B, H, A), plus scalar metrics."""

    @abc.abstractmethod
    def sampler(self) -> Any:
        """The method's inference sampler (an object with ``sample(obs, generator, init)``)."""

    def energy(self, obs: torch.Tensor, act: torch.Tensor,
               sigma: torch.Tensor | None = None) -> torch.Tensor:
        """E(o, a[, sigma]) (B,) for energy-based methods."""
        raise TypeError(f'method {self.name!r} has no energy')

    @property
    def sigma_min(self) -> float | None:
        """Smallest noise scale of a sigma-indexed energy (None if it has no scales)."""
        return None


class IBCMethod(Method):
    """Implicit behaviour cloning: InfoNCE against uniform negatives, DFO inference."""

    name, config_class = 'ibc', IBCConfig

    def __init__(self, spec: ChunkSpec, backbone: BackboneConfig, cfg: IBCConfig) -> None:
        super().__init__(spec, backbone, cfg)
        self.net = backbone.energy(spec, sigma_conditioned=False)
        self.register_buffer('action_low', torch.full(self.chunk_shape, -3.0))
        self.register_buffer('action_high', torch.full(self.chunk_shape, 3.0))

    def set_action_bounds(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Bounds (H, A) of the uniform negatives, in normalised units (from the data)."""
        self.action_low.copy_(torch.as_tensor(low).expand(self.chunk_shape))
        self.action_high.copy_(torch.as_tensor(high).expand(self.chunk_shape))

    def energy(self, obs, act, sigma=None):  # noqa: D102
        return self.net(obs, act)

    def loss(self, obs, act, generator=None):  # noqa: D102
        shape = (act.shape[0], self.cfg.n_negatives, *self.chunk_shape)
        u = torch.rand(shape, generator=generator, device=act.device)
        neg = self.action_low + (self.action_high - self.action_low) * u
        cands, idx = insert_positive(act, neg, generator)
        loss = ibc_infonce_loss(candidate_energies(self.net, obs, cands), idx)
        return loss, {'loss': loss.item()}

    def sampler(self):  # noqa: D102
        return S.DerivativeFreeSampler(self.net, self.action_low, self.action_high, self.cfg.dfo)


class RNCEMethod(Method):
    """Ranking NCE with a learnable Gaussian-mixture proposal trained jointly by likelihood.

    The energy is parameterised as a residual on the (stop-gradient) negative sampler,
    ``E(o, a) = f(o, a) - log q(a | o)``. The R-NCE logits -E - log q then reduce to -f: the
    objective is unchanged, but the network only has to learn log(p / q), which is near zero
    wherever the proposal already fits the data (ours; the paper trains E and q separately).
    The proposal's loss is its own negative log-likelihood and never depends on E
    (non-adversarial joint training).
    """

    name, config_class = 'rnce', RNCEConfig
    sigma_conditioned = False

    def __init__(self, spec: ChunkSpec, backbone: BackboneConfig, cfg: Any) -> None:
        super().__init__(spec, backbone, cfg)
        self.net = backbone.energy(spec, sigma_conditioned=self.sigma_conditioned)
        self.proposal = GaussianMixtureProposal(spec, cfg.proposal)

    def residual(self, obs: torch.Tensor, act: torch.Tensor,
                 sigma: torch.Tensor | None = None) -> torch.Tensor:
        """f(o, a[, sigma]) = E + log q: the learned log-ratio, (B,)."""
        return self.net(obs, act, sigma)

    def energy(self, obs, act, sigma=None):  # noqa: D102
        log_q = self.proposal.log_prob(obs, act.unsqueeze(1), sigma, negatives=True)[:, 0]
        return self.residual(obs, act, sigma) - log_q

    def noisy_positives(self, act: torch.Tensor, generator: torch.Generator | None,
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The positives and their noise scale (none for plain R-NCE)."""
        return act, None

    def loss(self, obs, act, generator=None):  # noqa: D102
        positive, sigma = self.noisy_positives(act, generator)
        neg = self.proposal.sample(obs, self.cfg.n_negatives, sigma, generator, negatives=True)
        cands, idx = insert_positive(positive, neg, generator)
        # logits = -E - log q = -(f - log q) - log q = -f, with log q detached throughout.
        ebm = ranking_nce_loss(-candidate_energies(self.residual, obs, cands, sigma), idx)
        nll = self.proposal.nll(obs, act)
        return ebm + nll, {'loss': ebm.item(), 'proposal_nll': nll.item()}

    def sampler(self):  # noqa: D102
        return S.ProposalLangevinSampler(self.energy, self.proposal.sample, self.cfg.langevin)


class InterpolatingRNCEMethod(RNCEMethod):
    """R-NCE at every noise scale: positives a + sigma*eps, negatives from q * N(0, sigma**2).

    Scales are log-uniform in [sigma_min, sigma_max]; the Gaussian-mixture proposal convolved
    with N(0, sigma**2 I) is again a mixture, so log q_sigma (and the residual energy
    E = f - log q_sigma) stays exact. Sampling anneals sigma from sigma_max to sigma_min.
    """

    name, config_class = 'irnce', InterpolatingRNCEConfig
    sigma_conditioned = True

    def __init__(self, spec: ChunkSpec, backbone: BackboneConfig,
                 cfg: InterpolatingRNCEConfig) -> None:
        super().__init__(spec, backbone, cfg)
        self.schedule = VESchedule(cfg.schedule)

    @property
    def sigma_min(self) -> float:  # noqa: D102
        return self.schedule.sigma_min

    def noisy_positives(self, act, generator):  # noqa: D102
        sigma = self.schedule.sample_sigma(act.shape[0], generator, act.device)
        eps = torch.randn(act.shape, generator=generator, device=act.device)
        return act + sigma.view(-1, 1, 1) * eps, sigma

    def sampler(self):  # noqa: D102
        return S.AnnealedLangevinSampler(self.energy, self.schedule, self.cfg.langevin,
                                         self.chunk_shape)


class EnergyFlowMethod(Method):
    """EnergyFlow: denoising score matching whose field is -grad_a of a scalar energy."""

    name, config_class = 'energyflow', EnergyFlowConfig

    def __init__(self, spec: ChunkSpec, backbone: BackboneConfig, cfg: EnergyFlowConfig) -> None:
        super().__init__(spec, backbone, cfg)
        self.net = backbone.energy(spec, sigma_conditioned=True)
        self.schedule = VESchedule(cfg.schedule)
        # The actuators' limits in normalised units, for ``flow.clamp``. Not saved with the
        # weights: the trainer and the checkpoint loader set them from the data's action
        # limits (see :meth:`set_action_limits`); unset they are infinite.
        self.register_buffer('limit_low', torch.full(self.chunk_shape, -math.inf),
                             persistent=False)
        self.register_buffer('limit_high', torch.full(self.chunk_shape, math.inf),
                             persistent=False)

    def set_action_limits(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """The actuators' limits, (A,) or (H, A), in normalised action units."""
        low, high = torch.as_tensor(low), torch.as_tensor(high)
        if not bool((low <= high).all()):
            raise ValueError(f'action limits: low {low.tolist()} exceeds high {high.tolist()}')
        self.limit_low.copy_(low.expand(self.chunk_shape))
        self.limit_high.copy_(high.expand(self.chunk_shape))

    @property
    def particle_box(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(low, high) the sampler clamps its particles into; None without ``flow.clamp``."""
        return (self.limit_low, self.limit_high) if self.cfg.flow.clamp else None

    @property
    def sigma_min(self) -> float:  # noqa: D102
        return self.schedule.sigma_min

    def energy(self, obs, act, sigma=None):  # noqa: D102
        return self.net(obs, act, sigma)

    @property
    def joint_density(self) -> bool:
        """True when -E is a joint log-density of (o, a) (``obs_noise_max`` > 0)."""
        return self.cfg.obs_noise_max > 0.0

    def loss(self, obs, act, generator=None):  # noqa: D102
        sigma = self.schedule.sample_sigma(act.shape[0], generator, act.device)
        eps = torch.randn(act.shape, generator=generator, device=act.device)
        noisy = act + sigma.view(-1, 1, 1) * eps
        if not self.joint_density:
            _, grad = candidate_energies_and_grads(self.net, obs, noisy.unsqueeze(1)
                                                   .requires_grad_(True), sigma,
                                                   create_graph=True)
            loss = dsm_loss(sigma.view(-1, 1, 1) * grad[:, 0], eps)
            return loss, {'loss': loss.item()}
        sigma_o = sigma.clamp(max=self.cfg.obs_noise_max).view(-1, 1)
        eps_o = torch.randn(obs.shape, generator=generator, device=obs.device)
        noisy_obs = (obs + sigma_o * eps_o).requires_grad_(True)
        noisy.requires_grad_(True)
        e = self.net(noisy_obs, noisy, sigma)
        grad_o, grad_a = torch.autograd.grad(e.sum(), (noisy_obs, noisy), create_graph=True)
        loss_a = dsm_loss(sigma.view(-1, 1, 1) * grad_a, eps)
        loss_o = dsm_loss(sigma_o * grad_o, eps_o)
        loss = loss_a + loss_o
        return loss, {'loss': loss.item(), 'loss_action': loss_a.item(),
                      'loss_obs': loss_o.item()}

    def sampler(self):  # noqa: D102
        return S.ProbabilityFlowSampler(self.net, self.schedule, self.cfg.flow, self.chunk_shape,
                                        self.particle_box)


class DiffusionMethod(Method):
    """Diffusion-policy baseline: epsilon prediction, DDPM training, DDIM sampling."""

    name, config_class = 'diffusion', DiffusionConfig

    def __init__(self, spec: ChunkSpec, backbone: BackboneConfig, cfg: DiffusionConfig) -> None:
        super().__init__(spec, backbone, cfg)
        self.net = backbone.denoiser(spec)
        self.schedule = DDPMSchedule(cfg.ddim.train_steps)

    def loss(self, obs, act, generator=None):  # noqa: D102
        k = torch.randint(0, self.schedule.train_steps, (act.shape[0],), generator=generator,
                          device=act.device)
        eps = torch.randn(act.shape, generator=generator, device=act.device)
        pred = self.net(obs, self.schedule.add_noise(act, eps, k), self.schedule.time(k))
        loss = eps_prediction_loss(pred, eps)
        return loss, {'loss': loss.item()}

    def sampler(self):  # noqa: D102
        return S.DDIMSampler(self.net, self.schedule, self.cfg.ddim, self.chunk_shape)


class MSEMethod(Method):
    """MSE behaviour-cloning baseline."""

    name, config_class = 'mse', MSEConfig

    def __init__(self, spec: ChunkSpec, backbone: BackboneConfig, cfg: MSEConfig) -> None:
        super().__init__(spec, backbone, cfg)
        self.net = MLPRegressor(spec, backbone.mlp)

    def loss(self, obs, act, generator=None):  # noqa: D102
        loss = mse_bc_loss(self.net(obs), act)
        return loss, {'loss': loss.item()}

    def sampler(self):  # noqa: D102
        return S.RegressionSampler(self.net)


METHODS: dict[str, type[Method]] = {m.name: m for m in (
    IBCMethod, RNCEMethod, InterpolatingRNCEMethod, EnergyFlowMethod, DiffusionMethod, MSEMethod)}


def build_method(name: str, spec: ChunkSpec, backbone: BackboneConfig | Mapping | None = None,
                 cfg: Any = None) -> Method:
    """Construct method ``name`` from configs (dataclasses or plain mappings from YAML).

    Raises:
        ConfigError: unknown method name, or an invalid/unknown config field.
    """
    if name not in METHODS:
        raise ConfigError(f'unknown method {name!r}; allowed: {sorted(METHODS)}')
    cls = METHODS[name]
    if not isinstance(backbone, BackboneConfig):
        backbone = config_from_dict(BackboneConfig, backbone, 'backbone')
    if not isinstance(cfg, cls.config_class):
        cfg = config_from_dict(cls.config_class, cfg, name)
    return cls(spec, backbone, cfg)
