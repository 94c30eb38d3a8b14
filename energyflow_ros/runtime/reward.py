"""The centred reward from an exported energy graph (EnergyFlow's ``CenteredReward``).

``r(o, a) = -[E(o, a, sigma_r) - (1/M) sum_m E(o, ref_m, sigma_r)]`` with the M fixed reference
chunks and ``sigma_r`` stored in the model's metadata (``reward_reference``, ``reward_sigma``).
The chunk and its references go through the energy graph in one call: candidates
(B, 1 + M, H, A) per observation. Same formula as
:func:`energyflow_ros.core.reward.centered_reward`.
"""

from __future__ import annotations

import numpy as np

from energyflow_ros.runtime.onnx_model import OnnxModel

__all__ = ['EnergyReward']


class EnergyReward:
    """Centred rewards of raw (observation history, action chunk) pairs.

    Attributes:
        model: a loaded model with its ``energy`` graph.
        sigma: the noise scale the energy is evaluated at.
        reference: (M, H, A) normalised reference chunks.
    """

    def __init__(self, model: OnnxModel) -> None:
        """Use ``model``'s energy graph.

        Raises:
            ValueError: the model has no energy graph or no reward reference chunks.
        """
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
        self.model, self.sigma = model, float(meta.reward_sigma)
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
            (B,) chunk energies and (B, M) reference energies.
        """
        b = obs.shape[0]
        refs = np.broadcast_to(self.reference, (b, *self.reference.shape))
        cands = np.concatenate([actions[:, None].astype(np.float32), refs], axis=1)
        out = self.model.run('energy', {'obs': obs.astype(np.float32), 'actions': cands,
                                        'sigma': np.array([self.sigma], dtype=np.float32)})
        e = out['energies']
        return e[:, 0], e[:, 1:]

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
        reward = -(e.astype(np.float64) - e_ref.astype(np.float64).mean(axis=1))
        return float(reward[0]) if single else reward
