"""The exported-model contract shared by ``export/`` (writer) and ``runtime/`` (reader).

No torch and no ROS here: a robot PC reads models with numpy, onnx metadata and onnxruntime.

A model is a family of ONNX files sharing one stem, every one carrying the same metadata JSON
under the metadata_props key :data:`METADATA_KEY`:

``<stem>.onnx`` — graph ``sampler``: the whole action sampler fused into one graph (the file a
    user passes as ``model``). For energy models, K unrolled gradient steps over N particles
    followed by energy ranking at ``rank_sigma``:

    inputs   ``obs`` (B, O) float32 — stacked, *normalised* observation history;
             ``init`` (B, N, H, A) float32 — initial particles (normalised action units);
             ``sigmas`` (K,) float32 — the noise scale given to the energy at each step;
             ``step_sizes`` (K,) float32 — the step at each step: a <- a - step_k * grad E;
             ``noise`` (K, B, N, H, A) float32 — the additive term of each step, already
                 scaled (zeros for the deterministic probability-flow ODE);
             ``rank_sigma`` (1,) float32 — sigma at which particles are ranked.
             With ``sampler.clamp`` every step ends by clamping the particles into the
             normalised action limits, held in the graph (no input).
    outputs  ``action`` (B, H, A) the lowest-energy particle; ``energy`` (B,) its energy;
             ``particles`` (B, N, H, A) every final particle (for warm start);
             ``energies`` (B, N) every particle's energy.

    R-NCE exported without Langevin steps (``sampler.kind == 'proposal_rank'``) draws its N
    particles from the learned proposal inside the graph and only ranks them: inputs ``obs``;
    ``uniforms`` (B, N) float32 in [0, 1) choosing each particle's mixture component (the
    first whose cumulative weight exceeds it); ``normals`` (B, N, H, A) float32 standard
    normal draws scaled by that component's std and added to its mean; ``rank_sigma``. Same
    outputs.

    For the diffusion baseline (``sampler.kind == 'ddim'``) the graph is the unrolled DDIM
    loop with inputs ``obs``, ``init`` (B, 1, H, A) = the initial N(0, I) draw and the same
    outputs (energies zero); for MSE (``'regression'``) inputs are ``obs`` only.
``<stem>.warm.onnx`` — graph ``warm_sampler``: same signature as ``sampler`` with
    ``sampler.warm.n_steps`` unrolled steps, started from the previous chunk (energy models).
``<stem>.energy.onnx`` — graph ``energy``: inputs ``obs`` (B, O), ``actions`` (B, M, H, A),
    ``sigma`` (1,); output ``energies`` (B, M).
``<stem>.grad.onnx`` — graph ``gradient``: same inputs; outputs ``energies`` (B, M) and
    ``grads`` (B, M, H, A) = d energies / d actions.
``<stem>.proposal.onnx`` — graph ``proposal`` (R-NCE methods only): input ``obs`` (B, O);
    outputs ``logits`` (B, C), ``means`` (B, C, H*A), ``stds`` (B, C, H*A) of the Gaussian
    mixture q(a|o) over flattened chunks (normalised units).

The batch B, particles N and candidates M are dynamic axes; K is fixed by the unrolling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import math
from typing import Any

import numpy as np

__all__ = [
    'MODEL_FORMAT_VERSION', 'METADATA_KEY', 'GRAPH_SUFFIXES', 'SAMPLER_KINDS', 'ENERGY_KINDS',
    'INIT_KINDS', 'ModelFormatError', 'StepSchedule', 'SamplerSpec', 'ModelMetadata',
    'graph_path',
]

MODEL_FORMAT_VERSION = 1
METADATA_KEY = 'energyflow_ros'
# graph name -> file suffix appended to the stem
GRAPH_SUFFIXES = {
    'sampler': '.onnx',
    'warm_sampler': '.warm.onnx',
    'energy': '.energy.onnx',
    'gradient': '.grad.onnx',
    'proposal': '.proposal.onnx',
}
SAMPLER_KINDS = ('gradient', 'proposal_rank', 'ddim', 'regression')
# samplers of energy models: N particles ranked by the energy (the others return one chunk)
ENERGY_KINDS = ('gradient', 'proposal_rank')
# how cold-start particles are drawn: N(0, init_std^2 I), or from the exported proposal graph
# (for proposal_rank, from the same mixture inside the sampler graph)
INIT_KINDS = ('gaussian', 'proposal', 'none')


class ModelFormatError(ValueError):
    """A model whose metadata is missing, malformed, or of a version we do not read."""


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ModelFormatError(what)


def _floats(values: Any, name: str, length: int | None = None) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f'metadata field {name!r} must be a list of numbers') from exc
    _require(all(math.isfinite(v) for v in out), f'metadata field {name!r} has non-finite values')
    if length is not None:
        _require(len(out) == length, f'metadata field {name!r} has {len(out)} values, '
                                     f'expected {length}')
    return out


def _int(value: Any, name: str, minimum: int = 1) -> int:
    """An integer field (not a bool, not 4.7) of at least ``minimum``."""
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             f'metadata field {name!r} = {value!r} must be an integer >= {minimum}')
    return value


def _scale(value: Any, name: str) -> float:
    """A finite, non-negative number (a noise scale or a standard deviation)."""
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f'metadata field {name!r} = {value!r} must be a number') from exc
    _require(math.isfinite(out) and out >= 0 and not isinstance(value, bool),
             f'metadata field {name!r} = {value!r} must be a finite number >= 0')
    return out


MIN_STD = 1e-6
"""Smallest normalisation std a model may carry (exports floor it at 1e-3): below it, a
normalised input overflows to inf."""


@dataclass(frozen=True)
class StepSchedule:
    """What the runtime feeds a gradient sampler graph: one entry per unrolled step.

    Attributes:
        sigmas: noise scale passed to the energy at each step.
        step_sizes: a <- a - step_sizes[k] * grad E(o, a, sigmas[k]).
        noise_scales: the std of the additive Gaussian term at each step (0 for the ODE).
        init_std: cold start: particles ~ N(0, init_std^2); warm start: the shifted previous
            chunk plus N(0, init_std^2) noise.
    """

    sigmas: tuple[float, ...]
    step_sizes: tuple[float, ...]
    noise_scales: tuple[float, ...]
    init_std: float

    @property
    def n_steps(self) -> int:
        """Number of unrolled steps K."""
        return len(self.sigmas)

    def __post_init__(self) -> None:
        k = len(self.sigmas)
        _require(len(self.step_sizes) == k and len(self.noise_scales) == k,
                 'sampler schedule: sigmas, step_sizes and noise_scales differ in length')

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str) -> 'StepSchedule':
        """Parse and validate one schedule (``name`` appears in error messages)."""
        try:
            sigmas = _floats(data['sigmas'], f'{name}.sigmas')
            k = len(sigmas)
            return cls(tuple(sigmas), tuple(_floats(data['step_sizes'], f'{name}.step_sizes', k)),
                       tuple(_floats(data['noise_scales'], f'{name}.noise_scales', k)),
                       _scale(data['init_std'], f'{name}.init_std'))
        except KeyError as exc:
            raise ModelFormatError(f'metadata {name} lacks field {exc.args[0]!r}') from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {'sigmas': list(self.sigmas), 'step_sizes': list(self.step_sizes),
                'noise_scales': list(self.noise_scales), 'init_std': self.init_std}


@dataclass(frozen=True)
class SamplerSpec:
    """How to drive the fused sampler graphs.

    Attributes:
        kind: one of :data:`SAMPLER_KINDS`.
        n_particles: default N.
        init: one of :data:`INIT_KINDS`.
        rank_sigma: sigma at which particles are ranked (the reward uses ``reward_sigma``).
        cold: schedule of the ``sampler`` graph (None for ddim/regression).
        warm: schedule of the ``warm_sampler`` graph (None when not exported).
        ddim_steps: DDIM steps unrolled into a ``ddim`` sampler graph (None otherwise; models
            exported before it was recorded lack it).
        clamp: whether the fused graphs clamp the particles into the action limits
            (``action_low`` / ``action_high``, normalised) after every step; the clamp is part
            of the graphs, so this only records it (models exported before it: false).
    """

    kind: str
    n_particles: int
    init: str
    rank_sigma: float
    cold: StepSchedule | None = None
    warm: StepSchedule | None = None
    ddim_steps: int | None = None
    clamp: bool = False

    @property
    def n_steps(self) -> int | None:
        """Unrolled steps of the cold ``sampler`` graph (0 for proposal_rank, None for
        regression)."""
        if self.kind == 'proposal_rank':
            return 0
        return self.cold.n_steps if self.cold is not None else self.ddim_steps

    @property
    def energy_based(self) -> bool:
        """Whether the sampler ranks N particles by an energy (see :data:`ENERGY_KINDS`)."""
        return self.kind in ENERGY_KINDS

    @property
    def uses_proposal_graph(self) -> bool:
        """Whether planning calls the ``proposal`` graph (a gradient sampler started from it;
        a proposal_rank sampler holds the proposal in its own graph)."""
        return self.kind == 'gradient' and self.init == 'proposal'

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'SamplerSpec':
        """Parse and validate the ``sampler`` metadata block."""
        kind = data.get('kind')
        _require(kind in SAMPLER_KINDS, f'metadata sampler.kind = {kind!r}: expected one of '
                                        f'{list(SAMPLER_KINDS)}')
        init = data.get('init', 'gaussian')
        _require(init in INIT_KINDS, f'metadata sampler.init = {init!r}: expected one of '
                                     f'{list(INIT_KINDS)}')
        n = _int(data.get('n_particles'), 'sampler.n_particles')
        cold = StepSchedule.from_dict(data['cold'], 'sampler.cold') if data.get('cold') else None
        warm = StepSchedule.from_dict(data['warm'], 'sampler.warm') if data.get('warm') else None
        _require(kind != 'gradient' or cold is not None,
                 'metadata sampler.cold is required for a gradient sampler')
        _require(kind != 'proposal_rank' or (init == 'proposal' and cold is None and
                                             warm is None),
                 'metadata sampler: a proposal_rank sampler draws from the proposal and has no '
                 'step schedules')
        ddim_steps = data.get('ddim_steps')
        if ddim_steps is not None:
            _int(ddim_steps, 'sampler.ddim_steps')
        clamp = data.get('clamp', False)
        _require(isinstance(clamp, bool), f'metadata sampler.clamp = {clamp!r}: expected true '
                                          'or false')
        _require(not clamp or kind == 'gradient', 'metadata sampler.clamp: only a gradient '
                                                  f'sampler clamps its particles, not {kind!r}')
        return cls(kind, n, init, _scale(data.get('rank_sigma', 0.0), 'sampler.rank_sigma'),
                   cold, warm, ddim_steps, clamp)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {'kind': self.kind, 'n_particles': self.n_particles, 'init': self.init,
                'rank_sigma': self.rank_sigma,
                'cold': self.cold.to_dict() if self.cold else None,
                'warm': self.warm.to_dict() if self.warm else None,
                'ddim_steps': self.ddim_steps, 'clamp': self.clamp}


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a robot needs to run a model, stored inside every ONNX file of the model.

    Attributes:
        method: training method (``energyflow``, ``rnce``, ``irnce``, ``ibc``, ``diffusion``,
            ``mse``).
        graph: which graph this file holds (a key of :data:`GRAPH_SUFFIXES`).
        obs_names: names of one observation frame's dimensions.
        n_obs: frames stacked into the model's input, oldest first.
        action_names: names of one action's dimensions (the joint names for joint commands).
        joint_names: joints the actions command, in action order.
        obs_mean, obs_std: normalisation of the stacked observation (n_obs * len(obs_names)).
        action_mean, action_std: normalisation of one action (len(action_names)).
        action_low, action_high: raw-unit bounds of one action seen in training (joint limits).
        horizon: steps per action chunk H.
        executed_steps: steps executed from each chunk before replanning.
        control_period_s: seconds between chunk steps (the training data's control period).
        sampler: how to drive the sampler graphs.
        reward_sigma: sigma at which the reward is evaluated (sigma_min).
        reward_reference: (M, H, A) fixed reference chunks for the centred reward, normalised.
        joint_density: True when the energy was fitted to the score of noisy observations as
            well as actions, so -E(o, a, sigma) is the joint log-density of the training
            (o, a) pairs up to one constant (EnergyFlow with ``obs_noise_max`` > 0).
        data_sha256: fingerprint of the training demonstrations.
        task: the task or dataset name.
        extra: free-form provenance (versions, parity errors, creation time).
        format_version: :data:`MODEL_FORMAT_VERSION`.
    """

    method: str
    graph: str
    obs_names: tuple[str, ...]
    n_obs: int
    action_names: tuple[str, ...]
    joint_names: tuple[str, ...]
    obs_mean: tuple[float, ...]
    obs_std: tuple[float, ...]
    action_mean: tuple[float, ...]
    action_std: tuple[float, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    horizon: int
    executed_steps: int
    control_period_s: float
    sampler: SamplerSpec
    reward_sigma: float = 0.0
    reward_reference: tuple = ()
    joint_density: bool = False
    data_sha256: str = ''
    task: str = ''
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = MODEL_FORMAT_VERSION

    @property
    def obs_dim(self) -> int:
        """Length of the stacked observation the graphs take."""
        return self.n_obs * len(self.obs_names)

    @property
    def action_dim(self) -> int:
        """Length of one action."""
        return len(self.action_names)

    def to_json(self) -> str:
        """Serialise for the ONNX metadata_props entry."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != 'sampler'}
        data['sampler'] = self.sampler.to_dict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = 'model') -> 'ModelMetadata':
        """Parse and validate metadata; errors name ``source`` and the offending field."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f'{source}: metadata is not valid JSON ({exc})') from exc
        _require(isinstance(data, dict), f'{source}: metadata is not a JSON object')
        version = data.get('format_version')
        _require(type(version) is int and version == MODEL_FORMAT_VERSION,
                 f'{source}: model format version {version!r} is not supported (this build '
                 f'reads version {MODEL_FORMAT_VERSION}); re-export the model with '
                 'energyflow-export')
        try:
            return cls._from_dict(data)
        except KeyError as exc:
            raise ModelFormatError(f'{source}: metadata lacks field {exc.args[0]!r}') from exc
        except ModelFormatError as exc:
            raise ModelFormatError(f'{source}: {exc}') from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelFormatError(f'{source}: malformed metadata ({exc})') from exc

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> 'ModelMetadata':
        obs_names = tuple(str(n) for n in data['obs_names'])
        action_names = tuple(str(n) for n in data['action_names'])
        n_obs, horizon = _int(data['n_obs'], 'n_obs'), _int(data['horizon'], 'horizon')
        obs_dim, act_dim = n_obs * len(obs_names), len(action_names)
        graph = data['graph']
        _require(graph in GRAPH_SUFFIXES, f'graph {graph!r} is not one of {list(GRAPH_SUFFIXES)}')
        _require(act_dim >= 1 and obs_names, 'the name lists must be non-empty')
        executed = _int(data['executed_steps'], 'executed_steps')
        _require(1 <= executed <= horizon, f'executed_steps = {executed} must be in [1, '
                                           f'horizon = {horizon}]')
        period = float(data['control_period_s'])
        _require(period > 0 and math.isfinite(period), f'control_period_s = {period} must be > 0')
        std = _floats(data['obs_std'], 'obs_std', obs_dim) + _floats(
            data['action_std'], 'action_std', act_dim)
        _require(all(s >= MIN_STD for s in std),
                 f'normalisation std values must be >= {MIN_STD:g} (smallest: {min(std):g})')
        low = _floats(data['action_low'], 'action_low', act_dim)
        high = _floats(data['action_high'], 'action_high', act_dim)
        _require(all(lo <= hi for lo, hi in zip(low, high)), 'action_low exceeds action_high')
        joint_names = tuple(str(n) for n in data['joint_names'])
        _require(len(joint_names) == act_dim, f'{len(joint_names)} joint_names for {act_dim} '
                                              'action dimensions')
        for label, names in (('joint_names', joint_names), ('obs_names', obs_names),
                             ('action_names', action_names)):
            repeated = sorted({n for n in names if names.count(n) > 1})
            _require(not repeated and all(n.strip() for n in names),
                     f'{label} {list(names)} must be distinct and non-empty'
                     + (f' ({repeated} repeated)' if repeated else ''))
        return cls(
            method=str(data['method']), graph=graph, obs_names=obs_names, n_obs=n_obs,
            action_names=action_names, joint_names=joint_names,
            obs_mean=tuple(_floats(data['obs_mean'], 'obs_mean', obs_dim)),
            obs_std=tuple(_floats(data['obs_std'], 'obs_std', obs_dim)),
            action_mean=tuple(_floats(data['action_mean'], 'action_mean', act_dim)),
            action_std=tuple(_floats(data['action_std'], 'action_std', act_dim)),
            action_low=tuple(low), action_high=tuple(high), horizon=horizon,
            executed_steps=executed, control_period_s=period,
            sampler=SamplerSpec.from_dict(data['sampler']),
            reward_sigma=_scale(data.get('reward_sigma', 0.0), 'reward_sigma'),
            reward_reference=_reference(data.get('reward_reference') or (), horizon, act_dim),
            joint_density=bool(data.get('joint_density', False)),
            data_sha256=str(data.get('data_sha256', '')), task=str(data.get('task', '')),
            extra=dict(data.get('extra') or {}), format_version=int(data['format_version']))


def _reference(chunks: Any, horizon: int, act_dim: int) -> tuple:
    """The reward's reference chunks, checked to be finite (M, horizon, act_dim)."""
    if not len(chunks):
        return ()
    try:
        array = np.asarray(chunks, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f'metadata field reward_reference is ragged or not numeric '
                               f'({exc})') from exc
    _require(array.ndim == 3 and array.shape[1:] == (horizon, act_dim),
             f'metadata field reward_reference has shape {array.shape}, expected (M, '
             f'{horizon}, {act_dim})')
    _require(bool(np.all(np.isfinite(array))), 'metadata field reward_reference has '
                                               'non-finite values')
    return tuple(chunks)


def graph_path(model_path: str, graph: str) -> str:
    """The file of ``graph`` in the family of ``model_path`` (the ``<stem>.onnx`` sampler)."""
    if graph not in GRAPH_SUFFIXES:
        raise ModelFormatError(f'unknown graph {graph!r}: expected one of {list(GRAPH_SUFFIXES)}')
    if not model_path.endswith('.onnx'):
        raise ModelFormatError(f'{model_path}: a model path must end in .onnx')
    stem = model_path[:-len('.onnx')]
    return stem + GRAPH_SUFFIXES[graph]
