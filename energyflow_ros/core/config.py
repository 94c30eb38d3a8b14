"""Config dataclasses for every core component, validated on construction.

Each config is a plain dataclass whose ``__post_init__`` checks its fields and raises
:class:`ConfigError` naming the field, the value and what is allowed. YAML files are read into
these classes with :func:`config_from_dict`, which also rejects unknown keys by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math
import types
import typing
from typing import Any, Mapping, TypeVar

__all__ = [
    'ConfigError', 'ChunkSpec', 'MLPConfig', 'UNetConfig', 'NoiseScheduleConfig',
    'ProposalConfig', 'LangevinConfig', 'ProbabilityFlowConfig', 'DFOConfig', 'DDIMConfig',
    'config_from_dict', 'config_to_dict',
]

ACTIVATIONS = ('silu', 'softplus', 'gelu', 'tanh')
ENERGY_HEADS = ('linear', 'squared_norm')


class ConfigError(ValueError):
    """A config field holds a value that is not allowed."""


def _require(ok: bool, owner: str, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f'{owner}.{name} = {value!r} is invalid: expected {allowed}')


def _positive_int(owner: str, name: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _require(ok, owner, name, value, 'a positive integer')


def _positive_float(owner: str, name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    _require(ok and value == value and value != float('inf'), owner, name, value,
             'a finite positive number')


@dataclass(frozen=True)
class ChunkSpec:
    """Shapes of one policy sample.

    Attributes:
        obs_dim: length of the flattened observation (all stacked frames).
        action_dim: degrees of freedom of one action.
        horizon: actions per chunk (H); the energy scores whole chunks of shape (H, action_dim).
    """

    obs_dim: int
    action_dim: int
    horizon: int = 1

    def __post_init__(self) -> None:
        for name in ('obs_dim', 'action_dim', 'horizon'):
            _positive_int('ChunkSpec', name, getattr(self, name))

    @property
    def flat_action_dim(self) -> int:
        """Length of a flattened chunk, H * action_dim."""
        return self.horizon * self.action_dim


@dataclass(frozen=True)
class MLPConfig:
    """Multi-layer perceptron backbone.

    Attributes:
        hidden: width of every hidden layer.
        depth: number of hidden layers.
        activation: smooth activation, one of ``ACTIVATIONS`` (smooth so that grad_a E is smooth).
        sigma_embed_dim: width of the noise-scale embedding (used by sigma-conditioned models).
        energy_head: how an MLP energy's last layer becomes the scalar: ``linear``, one output
            (unbounded: away from the data its energy can fall without limit, and ranking then
            picks a particle that escaped there), or ``squared_norm``, half the squared norm of
            a last layer as wide as the flattened chunk (Salimans & Ho's parametrisation: the
            energy is bounded below by 0 everywhere). Denoisers and regressors ignore it.
    """

    hidden: int = 256
    depth: int = 4
    activation: str = 'silu'
    sigma_embed_dim: int = 32
    energy_head: str = 'linear'

    def __post_init__(self) -> None:
        for name in ('hidden', 'depth', 'sigma_embed_dim'):
            _positive_int('MLPConfig', name, getattr(self, name))
        _require(self.activation in ACTIVATIONS, 'MLPConfig', 'activation', self.activation,
                 f'one of {ACTIVATIONS}')
        _require(self.energy_head in ENERGY_HEADS, 'MLPConfig', 'energy_head', self.energy_head,
                 f'one of {ENERGY_HEADS}')


@dataclass(frozen=True)
class UNetConfig:
    """1-D convolutional U-Net over the chunk's time axis with FiLM conditioning.

    Attributes:
        channels: channels per resolution level; the horizon must be divisible by
            2 ** (len(channels) - 1).
        kernel_size: odd temporal kernel size.
        cond_dim: width of the (observation, sigma) conditioning embedding fed to FiLM.
        groups: GroupNorm groups; must divide every entry of ``channels``.
        head_hidden: width of the spectral-norm MLP head that maps pooled features to a scalar.
        activation: smooth activation, one of ``ACTIVATIONS``.
    """

    channels: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    cond_dim: int = 128
    groups: int = 8
    head_hidden: int = 256
    activation: str = 'softplus'

    def __post_init__(self) -> None:
        object.__setattr__(self, 'channels', tuple(self.channels))
        _require(len(self.channels) >= 1 and all(
            isinstance(c, int) and c > 0 for c in self.channels), 'UNetConfig', 'channels',
            self.channels, 'a non-empty list of positive integers')
        _require(isinstance(self.kernel_size, int) and self.kernel_size % 2 == 1
                 and self.kernel_size > 0, 'UNetConfig', 'kernel_size', self.kernel_size,
                 'a positive odd integer')
        for name in ('cond_dim', 'groups', 'head_hidden'):
            _positive_int('UNetConfig', name, getattr(self, name))
        _require(all(c % self.groups == 0 for c in self.channels), 'UNetConfig', 'groups',
                 self.groups, f'a divisor of every channel count {self.channels}')
        _require(self.activation in ACTIVATIONS, 'UNetConfig', 'activation', self.activation,
                 f'one of {ACTIVATIONS}')

    def check_horizon(self, horizon: int) -> None:
        """Raise ConfigError unless ``horizon`` survives every down-sampling level."""
        factor = 2 ** (len(self.channels) - 1)
        _require(horizon % factor == 0, 'UNetConfig', 'channels', self.channels,
                 f'at most log2 levels for horizon {horizon} (horizon must be divisible '
                 f'by 2**(levels-1) = {factor})')


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """Variance-exploding noise scales, sigma(t) = sigma_min * (sigma_max / sigma_min) ** t.

    Attributes:
        sigma_min: smallest noise scale (data end), in normalised action units.
        sigma_max: largest noise scale (noise end).
    """

    sigma_min: float = 0.01
    sigma_max: float = 10.0

    def __post_init__(self) -> None:
        _positive_float('NoiseScheduleConfig', 'sigma_min', self.sigma_min)
        _positive_float('NoiseScheduleConfig', 'sigma_max', self.sigma_max)
        _require(self.sigma_max > self.sigma_min, 'NoiseScheduleConfig', 'sigma_max',
                 self.sigma_max, f'a value above sigma_min = {self.sigma_min}')


@dataclass(frozen=True)
class ProposalConfig:
    """Conditional Gaussian-mixture proposal q(a | o) (a mixture density network).

    Attributes:
        n_components: mixture components.
        hidden: hidden width of the MLP that outputs the mixture parameters.
        depth: hidden layers of that MLP.
        min_std: floor on every component standard deviation.
        broad_weight: weight of a broad N(0, broad_std**2 I) component mixed into the negative
            sampler, so negatives also cover where the learned mixture has no mass (R-NCE is
            consistent for any proposal; without this the energy is never trained there).
        broad_std: standard deviation of that component, in normalised action units.
    """

    n_components: int = 8
    hidden: int = 256
    depth: int = 3
    min_std: float = 1e-3
    broad_weight: float = 0.1
    broad_std: float = 1.5

    def __post_init__(self) -> None:
        for name in ('n_components', 'hidden', 'depth'):
            _positive_int('ProposalConfig', name, getattr(self, name))
        _positive_float('ProposalConfig', 'min_std', self.min_std)
        _positive_float('ProposalConfig', 'broad_std', self.broad_std)
        _require(isinstance(self.broad_weight, (int, float)) and 0 <= self.broad_weight < 1,
                 'ProposalConfig', 'broad_weight', self.broad_weight, 'a number in [0, 1)')


@dataclass(frozen=True)
class LangevinConfig:
    """Langevin refinement over N particles, annealed over noise scales when the model has them.

    Attributes:
        n_particles: particles per observation; the lowest-energy one is returned.
        n_scales: noise scales visited from sigma_max down to sigma_min (1 for sigma-free models).
        steps_per_scale: Langevin steps at each scale.
        step_size: step size relative to sigma**2 at each scale
            (epsilon_i = step_size * sigma_i**2).
        noise: multiplier on the injected Gaussian noise (0 gives gradient descent).
    """

    n_particles: int = 64
    n_scales: int = 10
    steps_per_scale: int = 5
    step_size: float = 0.6
    noise: float = 1.0

    def __post_init__(self) -> None:
        for name in ('n_particles', 'n_scales', 'steps_per_scale'):
            _positive_int('LangevinConfig', name, getattr(self, name))
        _positive_float('LangevinConfig', 'step_size', self.step_size)
        _require(isinstance(self.noise, (int, float)) and 0 <= self.noise <= 10,
                 'LangevinConfig', 'noise', self.noise, 'a number in [0, 10]')


@dataclass(frozen=True)
class ProbabilityFlowConfig:
    """EnergyFlow's probability-flow ODE, integrated with Euler steps.

    Attributes:
        n_particles: particles per observation, ranked by energy at sigma_min.
        n_steps: Euler steps from t = 1 (or the warm-start time) down to ``t_end``.
        t_end: final time; sigma(t_end) is the last noise level visited.
        warm_start_t: time from which a warm-started chunk is re-noised and integrated.
        warm_steps: Euler steps of a warm-started chunk; None: the cold schedule's step density
            over [t_end, warm_start_t] (see :meth:`warm_step_count`).
        rank_sigma: noise scale at which the final particles are ranked (normalised action
            units). Ranking at sigma_min trusts the energy where DSM trained it least (only
            sigma_min-close to the data); on obstacles2d (MLP, 15k steps) ranking at 0.1
            instead of 0.01 cut collisions from 0.12 to 0.00 at equal success and mode balance.
        clamp: keep the particles inside the actuators' limits (the task's action range, in
            normalised units) after every Euler step, so the ranking only sees chunks the robot
            can execute. Away from the data an energy trained by DSM alone may be unbounded
            below; a particle that escapes there wins the ranking with a chunk outside the
            limits (BlockPush: 75 of 640 plans, each one a stuck episode).
    """

    n_particles: int = 16
    n_steps: int = 20
    t_end: float = 1e-3
    warm_start_t: float = 0.35
    warm_steps: int | None = None
    rank_sigma: float = 0.1
    clamp: bool = False

    def __post_init__(self) -> None:
        _positive_int('ProbabilityFlowConfig', 'n_particles', self.n_particles)
        _require(isinstance(self.clamp, bool), 'ProbabilityFlowConfig', 'clamp', self.clamp,
                 'true or false')
        _positive_int('ProbabilityFlowConfig', 'n_steps', self.n_steps)
        _require(0 <= self.t_end < 1, 'ProbabilityFlowConfig', 't_end', self.t_end,
                 'a number in [0, 1)')
        _require(self.t_end < self.warm_start_t <= 1, 'ProbabilityFlowConfig', 'warm_start_t',
                 self.warm_start_t, f'a number in (t_end = {self.t_end}, 1]')
        _require(isinstance(self.rank_sigma, (int, float)) and 0 < self.rank_sigma < math.inf,
                 'ProbabilityFlowConfig', 'rank_sigma', self.rank_sigma, 'a number > 0')
        if self.warm_steps is not None:
            _positive_int('ProbabilityFlowConfig', 'warm_steps', self.warm_steps)

    def warm_step_count(self, warm_start_t: float | None = None,
                        cold_steps: int | None = None) -> int:
        """Euler steps of a warm start from ``warm_start_t`` (default: the config's).

        ``warm_steps`` when set; otherwise the cold schedule's step density (``cold_steps``,
        default ``n_steps``, over [t_end, 1]) over [t_end, warm_start_t], at least one.
        """
        if self.warm_steps is not None:
            return self.warm_steps
        t0 = self.warm_start_t if warm_start_t is None else warm_start_t
        k = cold_steps or self.n_steps
        return max(1, round(k * (t0 - self.t_end) / (1.0 - self.t_end)))


@dataclass(frozen=True)
class DFOConfig:
    """IBC's derivative-free optimiser: sample, resample by softmax(-E), perturb, shrink.

    Attributes:
        n_samples: samples per observation.
        iterations: resample-and-perturb rounds.
        noise_scale: initial perturbation standard deviation (normalised units).
        shrink: factor applied to ``noise_scale`` after every round.
    """

    n_samples: int = 1024
    iterations: int = 3
    noise_scale: float = 0.33
    shrink: float = 0.5

    def __post_init__(self) -> None:
        _positive_int('DFOConfig', 'n_samples', self.n_samples)
        _positive_int('DFOConfig', 'iterations', self.iterations)
        _positive_float('DFOConfig', 'noise_scale', self.noise_scale)
        _require(0 < self.shrink <= 1, 'DFOConfig', 'shrink', self.shrink, 'a number in (0, 1]')


@dataclass(frozen=True)
class DDIMConfig:
    """Diffusion baseline: DDPM training schedule and deterministic DDIM sampling.

    Attributes:
        train_steps: diffusion steps of the DDPM forward process (squared-cosine betas).
        sample_steps: DDIM steps at inference.
        clip_sample: the predicted clean chunk is clipped to [-clip_sample, clip_sample]
            (normalised action units) at every DDIM step; 0 disables. The squared-cosine
            schedule ends at alpha_bar = 2.4e-7, so the first step's estimate divides the
            network's error by 5e-4; unclipped, obstacles2d's diffusion policy wandered
            (success 0.03). Diffusion Policy clips likewise (``clip_sample``).
    """

    train_steps: int = 100
    sample_steps: int = 10
    clip_sample: float = 3.0

    def __post_init__(self) -> None:
        _positive_int('DDIMConfig', 'train_steps', self.train_steps)
        _positive_int('DDIMConfig', 'sample_steps', self.sample_steps)
        _require(self.sample_steps <= self.train_steps, 'DDIMConfig', 'sample_steps',
                 self.sample_steps, f'at most train_steps = {self.train_steps}')
        _require(isinstance(self.clip_sample, (int, float)) and self.clip_sample >= 0,
                 'DDIMConfig', 'clip_sample', self.clip_sample, 'a number >= 0')


T = TypeVar('T')


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = '') -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys by name and recursing into fields.

    Args:
        cls: a dataclass type.
        data: its fields, e.g. one section of a YAML file; None gives the defaults.
        where: dotted location used in error messages (e.g. ``'train.energy'``).

    Raises:
        ConfigError: for an unknown key, a wrong nested type, or a value the class refuses.
    """
    data = {} if data is None else data
    label = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f'{label} must be a mapping of fields, got {type(data).__name__}')
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f'{label}: unknown field(s) {unknown}; allowed: {sorted(fields)}')
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = config_from_dict(hint, value, f'{label}.{name}')
        else:
            expected = _type_mismatch(hint, value)
            if expected:
                raise ConfigError(f'{label}.{name} = {value!r} is invalid: expected '
                                  f'{expected}')
            if isinstance(value, list):
                value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_TYPE_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}


def _type_mismatch(hint: Any, value: Any) -> str:
    """What ``hint`` expects when ``value`` does not fit it ('' when it fits or is not checked).

    Scalars, optionals and tuples are checked (a YAML integer is a number); other hints pass.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return ''
        wanted = [a for a in args if a is not type(None)]
        misses = [_type_mismatch(a, value) for a in wanted]
        if all(misses):
            return ' or '.join(misses) + (' or null' if type(None) in args else '')
        return ''
    if hint in _TYPE_NAMES:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = {bool: isinstance(value, bool), int: numeric and isinstance(value, int),
                float: numeric, str: isinstance(value, str)}[hint]
        return '' if fits else _TYPE_NAMES[hint]
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            return 'a list'
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is not None and any(_type_mismatch(item, v) for v in value):
            return f'a list whose items are each {_TYPE_NAMES.get(item, item)}'
        return ''
    return ''


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-Python dictionary of a config dataclass (tuples become lists, YAML/JSON safe)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))

