"""Rewards from an exported energy graph (EnergyFlow's ``CenteredReward`` and a soft value).

``centered``: ``r(o, a) = -[E(o, a, sigma_r) - (1/M) sum_m E(o, ref_m, sigma_r)]`` with the M
fixed reference chunks and ``sigma_r`` stored in the model's metadata (``reward_reference``,
``reward_sigma``); same formula as :func:`energyflow_ros.core.reward.centered_reward`.

``soft_value``: ``r(o, a) = -E(o, a) - log (1/M) sum_m exp(-E(o, ref_m) - log q(ref_m))``, the
reference chunks read as samples of their proposal q = N(0, I) (normalised units, which is how
they were drawn), so the subtracted term is an importance-sampled soft value log Z(o) and r
estimates log pi(a | o); same formula as :func:`energyflow_ros.core.reward.soft_value_reward`.

``policy_value``: ``r(o, a) = -E(o, a) - log (1/N) sum_n exp(-E(o, p_n))`` with p_n the N
particles the model's own fused sampler draws for o (the sampler as the proposal, equal
weights). Fixed N(0, I) references lie far from the data at a small sigma, so their energies
swing with the observation and dominate the other two variants' offsets; the policy's own
particles sit at its modes, so this variant is about 0 for a chunk the policy would choose and
negative otherwise, in every state. It costs one sampler call per scored observation.

``occupancy``: ``r(o, a) = -E(o, a, sigma_r)`` for a model whose energy was fitted over noisy
observations as well as actions (EnergyFlow with ``obs_noise_max`` > 0, metadata
``joint_density``): -E is then the log-density of the demonstrations' (o, a) pairs up to one
constant, so it is low in states the expert never visits as well as for actions it would not
take there. The three variants above are relative to the observation's own chunks and cannot
tell a visited state from an unvisited one; an RL agent finds that out (README). No references.

The chunk and its references go through the energy graph in one call: candidates
(B, 1 + M, H, A) per observation.
"""

from __future__ import annotations

import numpy as np

from energyflow_ros.runtime.onnx_model import OnnxModel
from energyflow_ros.runtime.planner import ChunkPlanner

__all__ = ['EnergyReward', 'REWARD_VARIANTS', 'reward_from_energies']

REWARD_VARIANTS = ('centered', 'soft_value', 'policy_value', 'occupancy')


def reward_from_energies(e: np.ndarray, e_ref: np.ndarray, reference: np.ndarray,
                         variant: str = 'centered') -> np.ndarray:
    """Rewards from chunk and reference energies.

    Args:
        e: (B,) energies of the scored chunks.
        e_ref: (B, M) energies of the reference chunks under the same observations (unused by
            ``occupancy``).
        reference: (M, H, A) the normalised reference chunks (for their N(0, I) log-density);
            unused by ``policy_value``, whose references are equally weighted samples.
        variant: one of :data:`REWARD_VARIANTS` (module doc).

    Returns:
        (B,) float64 rewards; higher is better.
    """
    e, e_ref = np.asarray(e, dtype=np.float64), np.asarray(e_ref, dtype=np.float64)
    if variant == 'centered':
        return -(e - e_ref.mean(axis=1))
    if variant == 'occupancy':
        return -e
    if variant not in REWARD_VARIANTS:
        raise ValueError(f'reward variant {variant!r} is unknown; expected one of '
                         f'{list(REWARD_VARIANTS)}')
    logits = -e_ref
    if variant == 'soft_value':
        flat = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
        log_q = -0.5 * (flat ** 2).sum(axis=1) - 0.5 * flat.shape[1] * np.log(2 * np.pi)
        logits = logits - log_q[None]
    peak = logits.max(axis=1, keepdims=True)
    value = (peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
             - np.log(logits.shape[1]))
    return -e - value


class EnergyReward:
    """Rewards of raw (observation history, action chunk) pairs.

    Attributes:
        model: a loaded model with its ``energy`` graph.
        sigma: the noise scale the energy is evaluated at.
        reference: (M, H, A) normalised reference chunks.
        variant: one of :data:`REWARD_VARIANTS` (module doc).
    """

    def __init__(self, model: OnnxModel, variant: str = 'centered',
                 sigma: float | None = None, seed: int = 0) -> None:
        """Use ``model``'s energy graph (and its sampler for ``policy_value``).

        Args:
            model: the loaded model.
            variant: one of :data:`REWARD_VARIANTS`.
            sigma: noise scale of the energy (default: the metadata's ``reward_sigma``).
            seed: seed of the sampler's noise (``policy_value``).

        Raises:
            ValueError: the model has no energy graph or no reward reference chunks, the
                variant is unknown, ``policy_value`` without a gradient sampler graph, or
                ``occupancy`` for a model whose energy is only conditional on o.
        """
        if variant not in REWARD_VARIANTS:
            raise ValueError(f'reward variant {variant!r} is unknown; expected one of '
                             f'{list(REWARD_VARIANTS)}')
        self.variant = variant
        meta = model.metadata
        if not model.has('energy'):
            raise ValueError(f'{model.path}: the {meta.method!r} model has no loaded energy '
                             'graph, so it has no reward')
        self.reference = np.asarray(meta.reward_reference, dtype=np.float32)
        if self.reference.shape[1:] != (meta.horizon, meta.action_dim) or not len(
                self.reference):
            raise ValueError(f'{model.path}: metadata reward_reference has shape '
                             f'{self.reference.shape}, expected (M, {meta.horizon}, '
                             f'{meta.action_dim})')
        self.model = model
        self.sigma = float(meta.reward_sigma if sigma is None else sigma)
        self._planner = None
        if variant == 'policy_value':
            if not meta.sampler.energy_based or not model.has('sampler'):
                raise ValueError(f'{model.path}: the policy_value reward needs the loaded '
                                 'sampler graph of an energy model')
            self._planner = ChunkPlanner(model, seed=seed, warm_start=False)
        self._seed = seed
        if variant == 'occupancy' and not meta.joint_density:
            raise ValueError(f'{model.path}: the occupancy reward needs an energy fitted over '
                             'observations too (train energyflow with obs_noise_max > 0); '
                             "this model's energy is conditional on the observation, so its "
                             'level across observations is arbitrary')
        self._obs_mean = np.asarray(meta.obs_mean)
        self._obs_std = np.asarray(meta.obs_std)
        self._act_mean = np.asarray(meta.action_mean)
        self._act_std = np.asarray(meta.action_std)

    def energies(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies of the chunks and of the references, in normalised units.

        Args:
            obs: (B, O) normalised observations.
            actions: (B, H, A) normalised chunks.

        Returns:
            (B,) chunk energies and (B, M) reference energies (``policy_value``: M = N
            sampled particles, drawn with the same noise for every row of every call, so a
            pair's reward does not depend on the call or the batch; ``occupancy``: M = 0).

        Raises:
            ValueError: an input is not finite in float32 (the graphs' type), or the energy
                graph returned non-finite energies.
        """
        b = obs.shape[0]
        obs, actions = obs.astype(np.float32), actions.astype(np.float32)
        if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(actions))):
            raise ValueError('normalised observations or actions are not finite in float32 '
                             '(values beyond 3.4e38 after normalisation)')
        if self.variant == 'occupancy':
            refs = np.zeros((b, 0, *self.reference.shape[1:]), np.float32)
        elif self._planner is None:
            refs = np.broadcast_to(self.reference, (b, *self.reference.shape))
        else:   # every row draws the noise a single call draws: a pair's reward is the same
            refs = np.concatenate([self._particles(row[None]) for row in obs])   # in any batch
        cands = np.concatenate([actions[:, None], refs], axis=1)
        out = self.model.run('energy', {'obs': obs, 'actions': cands,
                                        'sigma': np.array([self.sigma], dtype=np.float32)})
        e = out['energies']
        if not np.all(np.isfinite(e)):
            raise ValueError(f'{self.model.path}: the energy graph returned non-finite '
                             'energies for finite inputs')
        return e[:, 0], e[:, 1:]

    def _particles(self, obs: np.ndarray) -> np.ndarray:
        self._planner.reset(seed=self._seed)
        return self._planner.particles(obs)

    def __call__(self, obs_history: np.ndarray, actions: np.ndarray) -> np.ndarray | float:
        """Rewards of raw chunks; higher is better.

        Args:
            obs_history: raw (n_obs, frame) / (O,) history, or a batch (B, n_obs, frame) /
                (B, O) when ``actions`` is a batch.
            actions: raw (H, A) chunk or (B, H, A) chunks.

        Returns:
            A float for one pair, (B,) for a batch.

        Raises:
            ValueError: sizes that do not fit the model, or non-finite values.
        """
        meta = self.model.metadata
        act = np.asarray(actions, dtype=np.float64)
        single = act.ndim == 2
        act = act[None] if single else act
        if act.ndim != 3 or act.shape[1:] != (meta.horizon, meta.action_dim):
            raise ValueError(f'actions of shape {np.shape(actions)}: expected (H, A) = '
                             f'({meta.horizon}, {meta.action_dim}) or a batch of them')
        obs = np.asarray(obs_history, dtype=np.float64)
        if obs.size != act.shape[0] * meta.obs_dim:
            raise ValueError(f'observation history of shape {obs.shape} for {act.shape[0]} '
                             f'chunk(s): expected {meta.obs_dim} values each')
        obs = obs.reshape(act.shape[0], meta.obs_dim)
        if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(act))):
            raise ValueError('observations or actions have non-finite values')
        e, e_ref = self.energies((obs - self._obs_mean) / self._obs_std,
                                 (act - self._act_mean) / self._act_std)
        reward = reward_from_energies(e, e_ref, self.reference, self.variant)
        return float(reward[0]) if single else reward
