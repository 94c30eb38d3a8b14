"""Checkpoints: everything needed to rebuild a trained method, written atomically.

A checkpoint holds the method name, chunk spec, configs, weights (and EMA weights), the
normalisation statistics and provenance. Writing goes to a temporary file in the same folder
followed by ``os.replace``, so a kill mid-write never leaves a partial checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import numpy as np
import torch

from energyflow_ros.core.config import ChunkSpec, config_to_dict
from energyflow_ros.core.methods import Method, build_method
from energyflow_ros.data.dataset import Normalizer

__all__ = ['CHECKPOINT_FORMAT', 'CheckpointError', 'save_checkpoint', 'load_checkpoint',
           'LoadedCheckpoint', 'use_weights', 'set_action_limits']

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or of an unknown format."""


@dataclasses.dataclass
class LoadedCheckpoint:
    """A rebuilt method with its normalisers and the rest of the checkpoint's contents."""

    method: Method
    obs_normalizer: Normalizer
    action_normalizer: Normalizer
    payload: dict[str, Any]


def save_checkpoint(path: str, method: Method, obs_normalizer: Normalizer,
                    action_normalizer: Normalizer, extra: dict[str, Any] | None = None) -> None:
    """Write ``method`` and its normalisers to ``path`` atomically.

    Args:
        path: destination file.
        method: the trained method.
        obs_normalizer: statistics of the (stacked) observations.
        action_normalizer: statistics of one action (A,).
        extra: anything else to keep (optimizer state, step, EMA weights, metadata).
    """
    payload = {
        'format': CHECKPOINT_FORMAT,
        'method': method.name,
        'spec': dataclasses.asdict(method.spec),
        'backbone': config_to_dict(method.backbone_cfg),
        'config': config_to_dict(method.cfg),
        'state_dict': method.state_dict(),
        'obs_normalizer': obs_normalizer.to_dict(),
        'action_normalizer': action_normalizer.to_dict(),
        **(extra or {}),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.ckpt-', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def set_action_limits(method: Method, meta: Any, normalizer: Normalizer) -> None:
    """Give ``method`` the actuators' limits of the trainer's ``meta`` (``action_low`` /
    ``action_high``, raw units) in its normalised units, when it keeps its particles inside
    them (EnergyFlow); without such a ``meta`` nothing changes."""
    if not hasattr(method, 'set_action_limits') or not isinstance(meta, dict) or (
            'action_low' not in meta):
        return
    low, high = (torch.as_tensor(normalizer.normalize(np.asarray(meta[k], dtype=np.float64)),
                                 dtype=torch.float32) for k in ('action_low', 'action_high'))
    method.set_action_limits(low, high)


def load_checkpoint(path: str, map_location: str = 'cpu') -> LoadedCheckpoint:
    """Rebuild the method saved at ``path`` (weights loaded, eval mode).

    Raises:
        CheckpointError: the file is missing, not a checkpoint, or of another format version.
    """
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several unrelated types for corrupt files
        raise CheckpointError(f'{path}: not a readable checkpoint ({exc})') from exc
    if not isinstance(payload, dict) or payload.get('format') != CHECKPOINT_FORMAT:
        version = payload.get('format') if isinstance(payload, dict) else None
        raise CheckpointError(f'{path}: checkpoint format {version!r} is not the supported '
                              f'format {CHECKPOINT_FORMAT}')
    spec = ChunkSpec(**payload['spec'])
    method = build_method(payload['method'], spec, payload['backbone'], payload['config'])
    method.load_state_dict(payload['state_dict'])
    action_normalizer = Normalizer.from_dict(payload['action_normalizer'])
    set_action_limits(method, payload.get('train_meta'), action_normalizer)
    method.eval()
    return LoadedCheckpoint(method, Normalizer.from_dict(payload['obs_normalizer']),
                            action_normalizer, payload)


def use_weights(loaded: LoadedCheckpoint, ema: bool) -> bool:
    """Load the EMA (``ema``) or the trained weights into ``loaded.method``; True when EMA.

    A training checkpoint holds the trained weights in ``state_dict`` and the EMA's in
    ``ema_state_dict``; ``final.pt`` (``weights: 'ema'``) holds the EMA's in ``state_dict`` and
    the trained ones in ``raw_state_dict``. A checkpoint without EMA weights gives its own.

    Raises:
        CheckpointError: ``ema`` is false and the checkpoint holds only EMA weights.
    """
    payload = loaded.payload
    holds_ema = payload.get('weights') == 'ema'
    if ema:
        weights = payload.get('ema_state_dict')
        if isinstance(weights, dict) and isinstance(weights.get('weights'), dict):
            weights = weights['weights']            # an earlier layout
        if isinstance(weights, dict) and weights:
            loaded.method.load_state_dict(weights)
            return True
        return holds_ema
    if holds_ema:
        raw = payload.get('raw_state_dict')
        if not isinstance(raw, dict) or not raw:
            raise CheckpointError('this checkpoint holds only EMA weights (no raw_state_dict): '
                                  'the trained weights were not kept')
        loaded.method.load_state_dict(raw)
    return False
