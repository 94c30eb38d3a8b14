"""Small models, checkpoints and exported families shared by the export and runtime tests."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from energyflow_ros.core.config import ChunkSpec
from energyflow_ros.core.methods import build_method, Method
from energyflow_ros.data.dataset import Normalizer
from energyflow_ros.export.onnx_export import export_method
from energyflow_ros.training.checkpoint import save_checkpoint

FRAME_NAMES = ['x', 'y', 'z']
JOINTS = ['shoulder', 'elbow']
SPEC = ChunkSpec(obs_dim=6, action_dim=2, horizon=4)      # 2 frames of 3 values, chunk 4 x 2
TINY_MLP = {'kind': 'mlp', 'mlp': {'hidden': 32, 'depth': 2, 'sigma_embed_dim': 8}}
TINY_PROPOSAL = {'n_components': 3, 'hidden': 16, 'depth': 1}
METHOD_CONFIGS: dict[str, dict[str, Any]] = {
    'energyflow': {'flow': {'n_particles': 8, 'n_steps': 6}},
    'irnce': {'n_negatives': 4, 'proposal': TINY_PROPOSAL,
              'langevin': {'n_particles': 8, 'n_scales': 3, 'steps_per_scale': 2}},
    'rnce': {'n_negatives': 4, 'proposal': TINY_PROPOSAL,
             'langevin': {'n_particles': 8, 'n_scales': 1, 'steps_per_scale': 3,
                          'step_size': 1e-3, 'noise': 0.0}},
    'ibc': {'n_negatives': 4},
    'diffusion': {'ddim': {'train_steps': 20, 'sample_steps': 4}},
    'mse': {},
}


def train_meta(**changes: Any) -> dict[str, Any]:
    """The trainer's ``train_meta`` for :data:`SPEC`."""
    meta = {'task': 'unit', 'obs_names': list(FRAME_NAMES), 'action_names': list(JOINTS),
            'joint_names': list(JOINTS), 'n_obs': 2, 'horizon': 4, 'executed_steps': 2,
            'control_period_s': 0.1, 'action_low': [-5.0, -5.0], 'action_high': [5.0, 5.0],
            'data_sha256': 'f' * 64}
    meta.update(changes)
    return meta


def normalizers(seed: int = 0) -> tuple[Normalizer, Normalizer]:
    """Non-trivial observation (stacked) and action statistics."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(100, SPEC.obs_dim)) * 2.0 + 1.0
    act = rng.normal(size=(100, SPEC.action_dim)) * 0.5 - 1.0
    return Normalizer.fit(obs), Normalizer.fit(act)


def tiny_method(name: str, seed: int = 0, backbone: dict | None = None,
                spec: ChunkSpec = SPEC) -> Method:
    """An untrained small method (enough for parity and plumbing)."""
    torch.manual_seed(seed)
    return build_method(name, spec, backbone or TINY_MLP, METHOD_CONFIGS[name]).eval()


def write_checkpoint(path: str, method: Method, meta: dict[str, Any] | None = None,
                     extra: dict[str, Any] | None = None) -> str:
    """Save ``method`` as a trainer checkpoint (``train_meta`` unless meta is None)."""
    obs_norm, act_norm = normalizers()
    payload = dict(extra or {})
    if meta is not None:
        payload['train_meta'] = meta
    save_checkpoint(path, method, obs_norm, act_norm, payload)
    return path


def export_tiny(folder: str, name: str, **kwargs: Any) -> tuple[str, Method]:
    """Export a tiny untrained ``name`` model to ``folder/<name>.onnx``."""
    method = tiny_method(name)
    obs_norm, act_norm = normalizers()
    path = os.path.join(folder, f'{name}.onnx')
    export_method(method, obs_norm, act_norm, train_meta(), path, **kwargs)
    return path, method


def linear_task(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw (obs (n, 2), chunks (n, 2, 2)): a unimodal task whose answer is known exactly."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(n, 2)) * [2.0, 0.5] + [1.0, -3.0]
    return obs, linear_task_answer(obs)


def linear_task_answer(obs: np.ndarray) -> np.ndarray:
    """The chunk (..., 2, 2) the task's expert takes for raw observations (..., 2)."""
    s = obs.mean(-1, keepdims=True)
    first = np.concatenate([5.0 + s, -2.0 * s], -1)
    second = np.concatenate([5.0 + 2.0 * s, 1.0 - 2.0 * s], -1)
    return np.stack([first, second], -2)


def trained_energyflow(steps: int = 600) -> tuple[Method, Normalizer, Normalizer, dict]:
    """EnergyFlow fitted to :func:`linear_task` (1-value frames, n_obs 2, chunk 2 x 2)."""
    obs, chunks = linear_task()
    obs_norm, act_norm = Normalizer.fit(obs), Normalizer.fit(chunks.reshape(-1, 2))
    o = torch.tensor(obs_norm.normalize(obs), dtype=torch.float32)
    a = torch.tensor(act_norm.normalize(chunks), dtype=torch.float32)
    torch.manual_seed(0)
    method = build_method('energyflow', ChunkSpec(2, 2, 2),
                          {'kind': 'mlp', 'mlp': {'hidden': 64, 'depth': 2,
                                                  'sigma_embed_dim': 16}},
                          {'flow': {'n_particles': 8, 'n_steps': 10}})
    opt = torch.optim.Adam(method.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(o), (128,), generator=gen)
        loss, _ = method.loss(o[idx], a[idx], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = train_meta(obs_names=['v'], horizon=2, executed_steps=1,
                      action_low=[-20.0, -20.0], action_high=[20.0, 20.0])
    return method.eval(), obs_norm, act_norm, meta
