"""Demonstrations as arrays, their normalisation statistics, and training windows.

A :class:`DemoSet` is what every reader (npz, rosbag2, robomimic, LeRobot, the scripted
experts) produces and what the trainer consumes: per-frame observations and actions with episode
boundaries and the names of every dimension.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
import hashlib
import json
import os
from typing import Any
import zipfile
import zlib

import numpy as np

__all__ = ['DemoSet', 'DemoError', 'Normalizer', 'make_windows']


class DemoError(ValueError):
    """Demonstration data that cannot be used, with the reason."""


@dataclass
class DemoSet:
    """Frames of demonstrations.

    Attributes:
        obs: (T, obs_dim) float observations, one row per control tick.
        actions: (T, action_dim) float actions taken at those ticks.
        episode_ends: (E,) int, exclusive end index of every episode, strictly increasing, the
            last equal to T.
        obs_names: one name per observation dimension.
        action_names: one name per action dimension (joint names for joint commands).
        meta: free-form provenance (task, source file, control rate, ...).
    """

    obs: np.ndarray
    actions: np.ndarray
    episode_ends: np.ndarray
    obs_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.obs = np.asarray(self.obs, dtype=np.float64)
        self.actions = np.asarray(self.actions, dtype=np.float64)
        self.episode_ends = np.asarray(self.episode_ends, dtype=np.int64)
        if self.obs.ndim != 2 or self.actions.ndim != 2:  # before names are made from dims
            self.validate()
        if not self.obs_names:
            self.obs_names = [f'obs_{i}' for i in range(self.obs.shape[-1])]
        if not self.action_names:
            self.action_names = [f'action_{i}' for i in range(self.actions.shape[-1])]
        self.validate()

    def validate(self) -> None:
        """Raise DemoError naming the first problem: shapes, episode bounds, non-finite rows."""
        if self.obs.ndim != 2 or self.actions.ndim != 2:
            raise DemoError(f'obs and actions must be 2-D (T, dim); got {self.obs.shape} and '
                            f'{self.actions.shape}')
        if len(self.obs) != len(self.actions):
            raise DemoError(f'obs has {len(self.obs)} frames but actions has {len(self.actions)}')
        if len(self.obs) == 0:
            raise DemoError('the demonstrations contain no frames')
        ends = self.episode_ends
        if ends.ndim != 1 or len(ends) == 0 or ends[-1] != len(self.obs) or np.any(
                np.diff(np.concatenate([[0], ends])) <= 0):
            raise DemoError(f'episode_ends must increase strictly and end at {len(self.obs)}; '
                            f'got {np.atleast_1d(ends).tolist()[:8]} (shape {ends.shape})')
        for label, array in (('obs', self.obs), ('actions', self.actions)):
            bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
            if len(bad):
                raise DemoError(f'{label} has non-finite values in {len(bad)} frame(s), first '
                                f'at frame {int(bad[0])}')
        if len(self.obs_names) != self.obs.shape[1]:
            raise DemoError(f'{len(self.obs_names)} obs_names for {self.obs.shape[1]} obs dims')
        if len(self.action_names) != self.actions.shape[1]:
            raise DemoError(f'{len(self.action_names)} action_names for '
                            f'{self.actions.shape[1]} action dims')

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return len(self.episode_ends)

    def episode_slices(self) -> list[slice]:
        """One slice of frames per episode."""
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return [slice(int(s), int(e)) for s, e in zip(starts, self.episode_ends)]

    def fingerprint(self) -> str:
        """SHA-256 of the arrays: identifies the training data inside checkpoints and models."""
        digest = hashlib.sha256()
        for array in (self.obs, self.actions, self.episode_ends):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def save_npz(self, path: str) -> None:
        """Write the set to ``path`` (.npz) atomically."""
        tmp = f'{path}.tmp-{os.getpid()}.npz'
        np.savez_compressed(tmp, obs=self.obs, actions=self.actions,
                            episode_ends=self.episode_ends,
                            obs_names=np.array(self.obs_names),
                            action_names=np.array(self.action_names),
                            meta=np.array(json.dumps(self.meta, default=_plain)))
        os.replace(tmp, path)

    @classmethod
    def load_npz(cls, path: str) -> 'DemoSet':
        """Read a set written by :meth:`save_npz` (or any npz with obs/actions/episode_ends);
        its ``meta`` comes back too (e.g. the expert's episode seeds, the control rate), with
        ``source`` the file's path."""
        if not os.path.exists(path):
            raise DemoError(f'demonstration file not found: {path}')
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in ('obs', 'actions', 'episode_ends') if k not in data]
                if missing:
                    raise DemoError(f'{path}: missing array(s) {missing}')
                names = {k: [str(x) for x in data[k]] for k in ('obs_names', 'action_names')
                         if k in data}
                meta = _read_meta(data['meta'].item()) if 'meta' in data else {}
                return cls(obs=data['obs'], actions=data['actions'],
                           episode_ends=data['episode_ends'], **names,
                           meta={**meta, 'source': os.path.abspath(path)})
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            if isinstance(exc, DemoError):
                raise
            raise DemoError(f'{path}: not a readable npz file ({type(exc).__name__}: '
                            f'{exc})') from exc


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values; anything else as its text."""
    return value.tolist() if hasattr(value, 'tolist') else str(value)


def _read_meta(text: str) -> dict[str, Any]:
    """A saved meta: JSON, or the Python literal older files hold; {} when neither parses."""
    for parse in (json.loads, ast.literal_eval):
        try:
            meta = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return meta if isinstance(meta, dict) else {}
    return {}


@dataclass
class Normalizer:
    """Per-dimension affine normalisation, z = (x - mean) / std, travelling with the model.

    Attributes:
        mean: (D,) offsets.
        std: (D,) scales, floored so constant dimensions do not divide by zero.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, min_std: float = 1e-3) -> 'Normalizer':
        """Statistics of the rows of ``x`` (N, D)."""
        x = np.asarray(x, dtype=np.float64)
        return cls(mean=x.mean(axis=0), std=np.maximum(x.std(axis=0), min_std))

    @classmethod
    def identity(cls, dim: int) -> 'Normalizer':
        """A normaliser that changes nothing."""
        return cls(mean=np.zeros(dim), std=np.ones(dim))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Raw units to normalised units (broadcasts over leading dimensions)."""
        return (x - self.mean) / self.std

    def denormalize(self, z: np.ndarray) -> np.ndarray:
        """Normalised units back to raw units."""
        return z * self.std + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-safe form, for checkpoints and ONNX metadata."""
        return {'mean': np.asarray(self.mean).tolist(), 'std': np.asarray(self.std).tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'Normalizer':
        """Inverse of :meth:`to_dict`."""
        return cls(mean=np.asarray(data['mean'], dtype=np.float64),
                   std=np.asarray(data['std'], dtype=np.float64))


def make_windows(demos: DemoSet, n_obs: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every episode into (observation history, action chunk) training pairs.

    At frame t the policy sees frames t-n_obs+1 .. t (the first frame repeated before an episode
    starts) and must produce actions t .. t+horizon-1 (the last action repeated past its end),
    as in Diffusion Policy.

    Returns:
        obs: (N, n_obs * obs_dim) stacked observation histories, oldest first.
        chunks: (N, horizon, action_dim) action chunks.
    """
    if n_obs < 1 or horizon < 1:
        raise DemoError(f'n_obs and horizon must be >= 1; got {n_obs} and {horizon}')
    obs_rows, chunk_rows = [], []
    for sl in demos.episode_slices():
        o, a = demos.obs[sl], demos.actions[sl]
        t = np.arange(len(o))
        hist = np.clip(t[:, None] + np.arange(-n_obs + 1, 1)[None, :], 0, len(o) - 1)
        fut = np.clip(t[:, None] + np.arange(horizon)[None, :], 0, len(a) - 1)
        obs_rows.append(o[hist].reshape(len(o), -1))
        chunk_rows.append(a[fut])
    return np.concatenate(obs_rows), np.concatenate(chunk_rows)
