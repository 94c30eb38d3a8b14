"""Observation history in, raw action chunk out: the runtime's use of the fused sampler graph.

:class:`ChunkPlanner` normalises the stacked observation with the model's statistics, draws the
initial particles and the per-step noise with its own seeded numpy generator (so a planner is
deterministic given its seed), runs the cold or the warm fused sampler, and denormalises the
chosen chunk. A cold start draws particles from N(0, init_std**2 I), or from the exported
proposal mixture for R-NCE; a warm start takes the previous plan's best chunk, shifted by the
executed steps (refilled by continuing its last step at ``warm_extrapolation`` times its
velocity: 0 repeats the last action), copies it to every particle and adds
N(0, warm.init_std**2 I) — as the training-side ``ChunkPolicy`` does.

Why extrapolate: the warm sampler starts at a small noise level, so a refill that holds the last
action mostly stays held; on obstacles2d (position targets) plans then slowed down chunk after
chunk and 22 % of episodes timed out. Continuing at half the last step's speed kept success at
0.98 with no more collisions than a cold start
(`benchmarks/results/sampler_cost-obstacles2d-cpu.md`).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
import time

import numpy as np

from energyflow_ros.runtime.model_format import graph_path, ModelMetadata, StepSchedule
from energyflow_ros.runtime.onnx_model import OnnxModel

__all__ = ['Plan', 'BatchPlan', 'ChunkPlanner', 'shift_chunk', 'sample_mixture', 'describe',
           'WARM_EXTRAPOLATION']

WARM_EXTRAPOLATION = 0.5
"""Default speed, as a fraction of the last step's, at which a warm start refills its chunk."""


@dataclass(frozen=True)
class Plan:
    """One planned action chunk.

    Attributes:
        actions: (H, A) the chunk in raw units (e.g. joint positions), not yet safety-filtered.
        energy: energy of the chunk (normalised units; 0 for diffusion / MSE models).
        warm: whether it was warm-started from the previous plan.
        latency_s: wall time of the whole call (normalise, sample, denormalise).
        normalized_actions: (H, A) the chunk in the model's normalised units.
        particles: (N, H, A) every final particle (normalised units).
    """

    actions: np.ndarray
    energy: float
    warm: bool
    latency_s: float
    normalized_actions: np.ndarray
    particles: np.ndarray


@dataclass(frozen=True)
class BatchPlan:
    """Cold-started chunks for a batch of observation histories.

    Attributes:
        actions: (B, H, A) raw units.
        energies: (B,) energies of the chosen chunks.
        latency_s: wall time of the call.
    """

    actions: np.ndarray
    energies: np.ndarray
    latency_s: float


def shift_chunk(chunk: np.ndarray, executed: int, extrapolation: float = 0.0) -> np.ndarray:
    """Drop the first ``executed`` steps of (..., H, A) chunks and refill at the end.

    The k-th refilled step is ``last + k * extrapolation * (last - second_last)``: 0 repeats
    the last action, 1 continues its last step's velocity.
    """
    h = chunk.shape[-2]
    executed = min(max(int(executed), 0), h - 1)
    if executed == 0:
        return chunk.copy()
    last = chunk[..., -1:, :]
    tail = np.repeat(last, executed, axis=-2)
    if extrapolation and h > 1:
        k = np.arange(1, executed + 1, dtype=chunk.dtype)[:, None]
        tail = tail + (extrapolation * k) * (last - chunk[..., -2:-1, :])
    return np.concatenate([chunk[..., executed:, :], tail], axis=-2)


def sample_mixture(logits: np.ndarray, means: np.ndarray, stds: np.ndarray, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``n`` draws per row from diagonal Gaussian mixtures.

    Args:
        logits: (B, C) unnormalised log weights.
        means: (B, C, D).
        stds: (B, C, D).
        n: draws per row.
        rng: the generator.

    Returns:
        (B, n, D) float32 draws.
    """
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    u = rng.random((logits.shape[0], n))
    comp = np.minimum((u[:, :, None] > cdf[:, None, :]).sum(-1), logits.shape[1] - 1)
    rows = np.arange(logits.shape[0])[:, None]
    z = rng.standard_normal((logits.shape[0], n, means.shape[-1]), dtype=np.float32)
    return (means[rows, comp] + stds[rows, comp] * z).astype(np.float32)


class ChunkPlanner:
    """Plans action chunks with a loaded model; keeps the warm-start state between calls.

    Attributes:
        model: the loaded model.
        metadata: its metadata.
        n_particles: particles N per plan.
        warm_start: whether plans after the first start from the previous plan.
        warm_extrapolation: refill speed of the shifted warm-start chunk (see shift_chunk).
    """

    def __init__(self, model: OnnxModel, *, n_particles: int | None = None, seed: int = 0,
                 warm_start: bool = True,
                 warm_extrapolation: float = WARM_EXTRAPOLATION) -> None:
        """Prepare buffers for ``model`` (warming it up again if N is not its default).

        Raises:
            ValueError: a non-positive particle count, an extrapolation outside [0, 1], or
                warm start asked of a model whose warm-sampler file is missing.
        """
        meta = model.metadata
        self.model, self.metadata = model, meta
        self.n_particles = int(n_particles or meta.sampler.n_particles)
        if self.n_particles < 1:
            raise ValueError(f'n_particles = {n_particles} must be >= 1')
        if not meta.sampler.energy_based:
            self.n_particles = 1
        warm_file = graph_path(model.path, 'warm_sampler')
        if warm_start and meta.sampler.warm is not None and not os.path.isfile(warm_file):
            raise ValueError(f'{warm_file} is missing: the model was exported with a warm-start '
                             'sampler, and without that file every chunk would start cold; '
                             'copy it beside the model (a renamed model needs all its '
                             '<stem>.*.onnx files renamed too) or turn warm start off')
        self.warm_start = warm_start and model.has('warm_sampler')
        if not 0.0 <= warm_extrapolation <= 1.0:
            raise ValueError(f'warm_extrapolation = {warm_extrapolation} must be in [0, 1]')
        self.warm_extrapolation = float(warm_extrapolation)
        self._obs_mean = np.asarray(meta.obs_mean, dtype=np.float64)
        self._obs_std = np.asarray(meta.obs_std, dtype=np.float64)
        self._act_mean = np.asarray(meta.action_mean, dtype=np.float64)
        self._act_std = np.asarray(meta.action_std, dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self._previous: np.ndarray | None = None
        self._zero_noise: dict[tuple, np.ndarray] = {}
        # the feeds that never change, built once rather than on every control tick
        self._rank_sigma = np.array([meta.sampler.rank_sigma], dtype=np.float32)
        self._steps = {graph: (np.asarray(s.sigmas, dtype=np.float32),
                               np.asarray(s.step_sizes, dtype=np.float32))
                       for graph, s in (('sampler', meta.sampler.cold),
                                        ('warm_sampler', meta.sampler.warm)) if s is not None}
        if self.n_particles != meta.sampler.n_particles:
            model.warm_up(self.n_particles)

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm-start chunk (new episode); reseed when ``seed`` is given."""
        self._previous = None
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def normalize_obs(self, obs_history: np.ndarray, batched: bool = False) -> np.ndarray:
        """Raw history -> (B, O) float32 in the model's normalised units.

        Args:
            obs_history: (n_obs, frame) or (O,); with ``batched``, (B, n_obs, frame) or (B, O).
            batched: whether the first axis is a batch.

        Raises:
            ValueError: wrong size or non-finite values.
        """
        obs = np.asarray(obs_history, dtype=np.float64)
        meta = self.metadata
        flat = obs.reshape(obs.shape[0] if batched and obs.ndim > 0 else 1, -1)
        if flat.shape[1] != meta.obs_dim or (batched and obs.ndim < 2):
            rows = ' per batch row' if batched else ''
            raise ValueError(f'observation history of shape {obs.shape}: the model takes '
                             f'{meta.n_obs} frame(s) of {len(meta.obs_names)} values '
                             f'({", ".join(meta.obs_names)}){rows}')
        if not np.all(np.isfinite(flat)):
            raise ValueError('observation history has non-finite values')
        return ((flat - self._obs_mean) / self._obs_std).astype(np.float32)

    def denormalize_actions(self, chunk: np.ndarray) -> np.ndarray:
        """Normalised (..., H, A) chunk -> raw units (float64)."""
        return np.asarray(chunk, dtype=np.float64) * self._act_std + self._act_mean

    def _noise(self, schedule: StepSchedule, b: int, n: int) -> np.ndarray:
        h, a = self.metadata.horizon, self.metadata.action_dim
        shape = (schedule.n_steps, b, n, h, a)
        scales = np.asarray(schedule.noise_scales, dtype=np.float32)
        if not np.any(scales):
            return self._zero_noise.setdefault(shape, np.zeros(shape, np.float32))
        noise = self._rng.standard_normal(shape, dtype=np.float32)
        noise *= scales.reshape(-1, 1, 1, 1, 1)
        return noise

    def _cold_init(self, obs: np.ndarray, n: int) -> np.ndarray:
        meta = self.metadata
        b, h, a = obs.shape[0], meta.horizon, meta.action_dim
        if meta.sampler.uses_proposal_graph:
            out = self.model.run('proposal', {'obs': obs})
            draws = sample_mixture(out['logits'], out['means'], out['stds'], n, self._rng)
            return draws.reshape(b, n, h, a)
        std = meta.sampler.cold.init_std if meta.sampler.cold is not None else 1.0
        init = self._rng.standard_normal((b, n, h, a), dtype=np.float32)
        init *= np.float32(std)
        return init

    def _warm_init(self, shift: int) -> np.ndarray:
        meta = self.metadata
        chunk = shift_chunk(self._previous, shift, self.warm_extrapolation).astype(np.float32)
        init = self._rng.standard_normal((1, self.n_particles, meta.horizon, meta.action_dim),
                                         dtype=np.float32)
        init *= np.float32(meta.sampler.warm.init_std)
        init += chunk
        return init

    def _run(self, graph: str, obs: np.ndarray, init: np.ndarray | None,
             ) -> dict[str, np.ndarray]:
        meta = self.metadata
        if meta.sampler.kind == 'regression':
            return self.model.run(graph, {'obs': obs})
        if meta.sampler.kind == 'ddim':
            return self.model.run(graph, {'obs': obs, 'init': init})
        if meta.sampler.kind == 'proposal_rank':
            b, n = obs.shape[0], self.n_particles
            return self.model.run(graph, {
                'obs': obs, 'uniforms': self._rng.random((b, n), dtype=np.float32),
                'normals': self._rng.standard_normal((b, n, meta.horizon, meta.action_dim),
                                                     dtype=np.float32),
                'rank_sigma': self._rank_sigma})
        schedule = meta.sampler.cold if graph == 'sampler' else meta.sampler.warm
        sigmas, step_sizes = self._steps[graph]
        feeds = {'obs': obs, 'init': init, 'sigmas': sigmas, 'step_sizes': step_sizes,
                 'noise': self._noise(schedule, obs.shape[0], init.shape[1]),
                 'rank_sigma': self._rank_sigma}
        return self.model.run(graph, feeds)

    def plan(self, obs_history: np.ndarray, *, shift: int | None = None) -> Plan:
        """Plan one chunk for the raw observation history (n_obs, frame), oldest first.

        Args:
            obs_history: the last ``n_obs`` raw observation frames (or their concatenation).
            shift: steps executed since the previous plan (default: the model's
                ``executed_steps``); used by the warm start.

        Returns:
            The plan; its chunk becomes the next warm start (unless it is not finite: then
            the next plan starts cold).
        """
        start = time.perf_counter()
        obs = self.normalize_obs(obs_history)
        warm = self.warm_start and self._previous is not None
        if warm:
            graph = 'warm_sampler'
            init = self._warm_init(self.metadata.executed_steps if shift is None else shift)
        else:
            graph, init = 'sampler', self._initial(obs)
        out = self._run(graph, obs, init)
        best = out['action'][0]
        # A non-finite chunk (the caller refuses it) must not seed every later warm start.
        self._previous = best if np.all(np.isfinite(best)) else None
        return Plan(self.denormalize_actions(best), float(out['energy'][0]), warm,
                    time.perf_counter() - start, best, out['particles'][0])

    def _initial(self, obs: np.ndarray) -> np.ndarray | None:
        kind = self.metadata.sampler.kind
        if kind in ('regression', 'proposal_rank'):     # proposal_rank draws in its graph
            return None
        if kind == 'ddim':
            h, a = self.metadata.horizon, self.metadata.action_dim
            return self._rng.standard_normal((obs.shape[0], 1, h, a), dtype=np.float32)
        return self._cold_init(obs, self.n_particles)

    def particles(self, obs: np.ndarray) -> np.ndarray:
        """(B, N, H, A) cold-start particles of the sampler for (B, O) normalised observations."""
        return self._run('sampler', obs, self._initial(obs))['particles']

    def plan_batch(self, obs_histories: np.ndarray) -> BatchPlan:
        """Cold-start chunks for B histories (B, n_obs, frame) in one graph call (stateless)."""
        start = time.perf_counter()
        obs = self.normalize_obs(obs_histories, batched=True)
        out = self._run('sampler', obs, self._initial(obs))
        return BatchPlan(self.denormalize_actions(out['action']), out['energy'].copy(),
                         time.perf_counter() - start)


def describe(metadata: ModelMetadata) -> str:
    """One line naming the model: method, task, sampler (and its warm start), shapes."""
    s = metadata.sampler
    steps = f', K={s.n_steps}' if s.n_steps else ''
    if s.warm is not None:
        steps += f', warm K={s.warm.n_steps} from sigma {s.warm.init_std:.3g}'
    return (f'{metadata.method} model for {metadata.task or "?"}: {s.kind} sampler N='
            f'{s.n_particles}{steps}, chunk {metadata.horizon}x{metadata.action_dim}, '
            f'{metadata.n_obs} obs frames of {len(metadata.obs_names)}')
