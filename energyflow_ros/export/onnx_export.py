"""Checkpoint -> ONNX model family with metadata, behind the parity gate, written atomically.

``export_checkpoint`` is what ``energyflow-export`` and the trainer call. The family (see
:mod:`energyflow_ros.runtime.model_format`) is built on CPU: the energy and gradient graphs are
exported from torch, the fused samplers are assembled from them, every graph is compared with
torch by :func:`.parity.check_parity`, checked by ``onnx.checker`` and only then written —
each file to a temporary name in the target folder, then all renamed into place.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime
import torch

from energyflow_ros.core.methods import Method, RNCEMethod
from energyflow_ros.core.reward import reference_chunks
from energyflow_ros.data.dataset import Normalizer
from energyflow_ros.export.compose import fused_sampler_model, strip_node_metadata
from energyflow_ros.export.graphs import (
    DDIMGraph, EnergyGraph, energy_term, GradientGraph, ProposalGraph, ProposalRankGraph,
    RegressionGraph,
)
from energyflow_ros.export.parity import check_parity
from energyflow_ros.export.sampler_specs import particle_box, reward_sigma, sampler_spec
from energyflow_ros.export.tracing import to_onnx
from energyflow_ros.runtime.model_format import (
    GRAPH_SUFFIXES, graph_path, METADATA_KEY, MODEL_FORMAT_VERSION, ModelFormatError,
    ModelMetadata, SamplerSpec,
)
from energyflow_ros.training.checkpoint import load_checkpoint, set_action_limits, use_weights

__all__ = ['ExportError', 'DEFAULT_ATOL', 'DEFAULT_RTOL', 'REWARD_REFERENCES',
           'export_checkpoint', 'export_method', 'build_graphs', 'build_metadata',
           'write_family']

DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-3
REWARD_REFERENCES = 16          # M fixed reference chunks of the centred reward
SAMPLER_OUTPUTS = ['action', 'energy', 'particles', 'energies']
REQUIRED_TRAIN_META = ('obs_names', 'action_names', 'n_obs', 'horizon', 'executed_steps',
                       'control_period_s', 'action_low', 'action_high')


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported, with the reason."""


def example_sizes(obs_dim: int, horizon: int, action_dim: int) -> tuple[int, int]:
    """Sizes B, M for the dynamic batch and particle axes of the example inputs: two primes
    unlike each other and every fixed size of the model. The symbolic tracer (the U-Net's
    route) gives equal sizes one symbol, so a B or M equal to the observation or action size
    (3 and 5 are common) would be fixed in the graph, and the export refused."""
    taken = {1, obs_dim, horizon, action_dim, horizon * action_dim}
    b, m = [p for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41) if p not in taken][:2]
    return b, m


def _example(method: Method) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Example inputs with sizes of their own on the dynamic axes (:func:`example_sizes`)."""
    h, a = method.chunk_shape
    b, m = example_sizes(method.spec.obs_dim, h, a)
    gen = torch.Generator().manual_seed(0)
    return (torch.randn((b, method.spec.obs_dim), generator=gen),
            torch.randn((b, m, h, a), generator=gen), torch.tensor([0.5]))


def _graph_box(method: Method, spec: SamplerSpec) -> tuple[np.ndarray, np.ndarray] | None:
    """The (low, high) particle box of the fused graphs: the method's, when it clamps."""
    box = particle_box(method, spec)
    return None if box is None else (box[0].numpy(), box[1].numpy())


def build_graphs(method: Method, spec: SamplerSpec) -> dict[str, onnx.ModelProto]:
    """Every graph of ``method``'s family (graph name -> model), exported on CPU."""
    method = method.cpu().eval()
    obs, actions, sigma = _example(method)
    if spec.kind == 'ddim':
        graph = DDIMGraph(method, spec.ddim_steps)
        return {'sampler': to_onnx(graph, (obs, actions[:, :1]), ['obs', 'init'],
                                   SAMPLER_OUTPUTS, {'obs': {0: 'B'}, 'init': {0: 'B'}})}
    if spec.kind == 'regression':
        return {'sampler': to_onnx(RegressionGraph(method), (obs,), ['obs'], SAMPLER_OUTPUTS,
                                   {'obs': {0: 'B'}})}
    term, traced = energy_term(method)
    axes = {'obs': {0: 'B'}, 'actions': {0: 'B', 1: 'M'}}
    names = ['obs', 'actions', 'sigma']
    energy = to_onnx(EnergyGraph(term), (obs, actions, sigma), names, ['energies'], axes)
    gradient = to_onnx(GradientGraph(term), (obs, actions, sigma), names,
                       ['energies', 'grads'], axes, traced=traced)
    models = {'energy': strip_node_metadata(energy), 'gradient': strip_node_metadata(gradient)}
    chunk, obs_dim, box = method.chunk_shape, method.spec.obs_dim, _graph_box(method, spec)
    if spec.kind == 'proposal_rank':
        uniforms = torch.rand(actions.shape[:2], generator=torch.Generator().manual_seed(1))
        models['sampler'] = strip_node_metadata(to_onnx(
            ProposalRankGraph(term, method.proposal), (obs, uniforms, actions, sigma),
            ['obs', 'uniforms', 'normals', 'rank_sigma'], SAMPLER_OUTPUTS,
            {'obs': {0: 'B'}, 'uniforms': {0: 'B', 1: 'N'}, 'normals': {0: 'B', 1: 'N'}}))
    else:
        models['sampler'] = fused_sampler_model(gradient, energy, spec.cold.n_steps, obs_dim,
                                                chunk, 'sampler', box)
    if spec.warm is not None:
        models['warm_sampler'] = fused_sampler_model(gradient, energy, spec.warm.n_steps,
                                                     obs_dim, chunk, 'warm_sampler', box)
    if isinstance(method, RNCEMethod):
        models['proposal'] = strip_node_metadata(to_onnx(
            ProposalGraph(method.proposal), (obs,), ['obs'], ['logits', 'means', 'stds'],
            {'obs': {0: 'B'}}))
    for name, model in models.items():
        model.graph.name = name
    return models


def _require_meta(train_meta: Any) -> dict[str, Any]:
    if not isinstance(train_meta, dict):
        raise ExportError("the checkpoint has no 'train_meta' (the trainer's record of the "
                          'observation/action layout, horizon and control period); export '
                          'needs a checkpoint written by energyflow_ros.training.trainer')
    missing = [k for k in REQUIRED_TRAIN_META if k not in train_meta]
    if missing:
        raise ExportError(f"the checkpoint's 'train_meta' lacks {missing}")
    return train_meta


def _check_layout(method: Method, meta: dict[str, Any], obs_norm: Normalizer,
                  act_norm: Normalizer) -> np.ndarray:
    """Validate shapes against the network; return the stacked observation mean/std (2, O)."""
    n_obs, frame = int(meta['n_obs']), len(meta['obs_names'])
    horizon, action_dim = method.chunk_shape
    if n_obs * frame != method.spec.obs_dim:
        raise ExportError(f"train_meta: n_obs = {n_obs} frames of {frame} obs_names do not make "
                          f'the network input of {method.spec.obs_dim}')
    if int(meta['horizon']) != horizon or len(meta['action_names']) != action_dim:
        raise ExportError(f"train_meta: horizon {meta['horizon']} x {len(meta['action_names'])} "
                          f'action_names differ from the network chunk {horizon} x {action_dim}')
    stats = np.stack([np.ravel(obs_norm.mean), np.ravel(obs_norm.std)])
    if stats.shape[1] == frame and n_obs > 1:
        stats = np.tile(stats, (1, n_obs))
    if stats.shape[1] != method.spec.obs_dim or np.size(act_norm.mean) != action_dim:
        raise ExportError(f'normalisers of sizes {np.size(obs_norm.mean)} / '
                          f'{np.size(act_norm.mean)} do not fit observation {method.spec.obs_dim}'
                          f' / action {action_dim}')
    return stats


def build_metadata(method: Method, obs_normalizer: Normalizer, action_normalizer: Normalizer,
                   train_meta: dict[str, Any], spec: SamplerSpec, *,
                   executed_steps: int | None = None, joint_names: Sequence[str] | None = None,
                   extra: dict[str, Any] | None = None) -> ModelMetadata:
    """The model's metadata (``graph`` = 'sampler'), validated by the runtime's parser.

    Raises:
        ExportError: ``train_meta`` is missing or inconsistent with the network, or an
            override is invalid.
    """
    meta = _require_meta(train_meta)
    obs_stats = _check_layout(method, meta, obs_normalizer, action_normalizer)
    horizon, action_dim = method.chunk_shape
    joints = list(joint_names or meta.get('joint_names') or meta['action_names'])
    energy_based = spec.energy_based
    refs = reference_chunks(REWARD_REFERENCES, horizon, action_dim) if energy_based else None
    data = {
        'format_version': MODEL_FORMAT_VERSION, 'method': method.name, 'graph': 'sampler',
        'obs_names': list(meta['obs_names']), 'n_obs': int(meta['n_obs']),
        'action_names': list(meta['action_names']), 'joint_names': joints,
        'obs_mean': obs_stats[0].tolist(), 'obs_std': obs_stats[1].tolist(),
        'action_mean': np.ravel(action_normalizer.mean).tolist(),
        'action_std': np.ravel(action_normalizer.std).tolist(),
        'action_low': list(meta['action_low']), 'action_high': list(meta['action_high']),
        'horizon': horizon,
        'executed_steps': int(executed_steps or meta['executed_steps']),
        'control_period_s': float(meta['control_period_s']), 'sampler': spec.to_dict(),
        'reward_sigma': reward_sigma(method) if energy_based else 0.0,
        'reward_reference': refs.tolist() if refs is not None else [],
        'joint_density': bool(getattr(method, 'joint_density', False)),
        'data_sha256': str(meta.get('data_sha256', '')), 'task': str(meta.get('task', '')),
        'extra': dict(extra or {}),
    }
    try:
        return ModelMetadata.from_json(json.dumps(data), 'export')
    except ModelFormatError as exc:
        raise ExportError(str(exc)) from exc


def _with_metadata(model: onnx.ModelProto, metadata: ModelMetadata,
                   graph: str) -> onnx.ModelProto:
    text = dataclasses.replace(metadata, graph=graph).to_json()
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: text})
    model.doc_string = f'energyflow_ros {metadata.method} model, graph {graph!r}'
    onnx.checker.check_model(model)
    return model


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_family(out_path: str, models: dict[str, onnx.ModelProto],
                 metadata: ModelMetadata) -> list[str]:
    """Write every graph with its metadata; all or nothing; stale family members removed.

    Returns:
        The written paths.
    """
    targets = {graph: graph_path(out_path, graph) for graph in models}
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    temps: dict[str, str] = {}
    backups: dict[str, str] = {}   # graph -> the previous file, moved aside until all landed
    replaced: list[str] = []
    try:
        for graph, model in models.items():
            data = _with_metadata(model, metadata, graph).SerializeToString()
            fd, temps[graph] = tempfile.mkstemp(prefix='.export-', suffix='.onnx', dir=folder)
            with os.fdopen(fd, 'wb') as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temps[graph], 0o666 & ~_umask())  # mkstemp makes owner-only files
        for graph, tmp in temps.items():
            if os.path.isfile(targets[graph]):
                backups[graph] = f'{tmp}.previous'
                try:
                    os.link(targets[graph], backups[graph])
                except OSError:  # a filesystem without hard links
                    shutil.copy2(targets[graph], backups[graph])
            os.replace(tmp, targets[graph])
            replaced.append(graph)
    except BaseException:
        for graph in replaced:  # a later file failed: put the previous family back
            if graph in backups:
                os.replace(backups.pop(graph), targets[graph])
            else:
                os.unlink(targets[graph])
        raise
    finally:
        for tmp in [*temps.values(), *backups.values()]:
            if os.path.exists(tmp):
                os.unlink(tmp)
    for graph in GRAPH_SUFFIXES:
        stale = graph_path(out_path, graph)
        if graph not in models and os.path.exists(stale):
            os.unlink(stale)
    return list(targets.values())


def export_method(method: Method, obs_normalizer: Normalizer, action_normalizer: Normalizer,
                  train_meta: dict[str, Any], out_path: str, *, n_particles: int | None = None,
                  n_steps: int | None = None, warm_steps: int | None = None,
                  warm_start_t: float | None = None, executed_steps: int | None = None,
                  joint_names: Sequence[str] | None = None, atol: float = DEFAULT_ATOL,
                  rtol: float = DEFAULT_RTOL,
                  provenance: dict[str, Any] | None = None) -> ModelMetadata:
    """Export an in-memory method (see :func:`export_checkpoint` for the arguments).

    Raises:
        ExportError: bad metadata or overrides. ParityError: onnxruntime disagrees with torch.
    """
    if not out_path.endswith('.onnx'):
        raise ExportError(f'{out_path}: the output path must end in .onnx')
    set_action_limits(method, train_meta, action_normalizer)   # the limits the metadata records
    try:
        spec = sampler_spec(method, n_particles, n_steps, warm_steps, warm_start_t)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    build_metadata(method, obs_normalizer, action_normalizer, train_meta, spec,
                   executed_steps=executed_steps, joint_names=joint_names)   # fail fast
    models = build_graphs(method, spec)
    parity = check_parity(method, models, spec, atol, rtol)
    extra = {'export_id': uuid.uuid4().hex,
             'created_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(),
             'torch_version': torch.__version__, 'onnx_version': onnx.__version__,
             'onnxruntime_version': onnxruntime.__version__,
             'gradient': {True: 'hand-written', False: 'make_fx', None: 'none'}[
                 energy_term_route(method)],
             'parameters': sum(p.numel() for p in method.parameters()),
             'parity': {g: {'max_abs_error': r.max_abs_error, 'same_choice': r.same_choice}
                        for g, r in parity.items()},
             'parity_tolerance': {'atol': atol, 'rtol': rtol}, **(provenance or {})}
    metadata = build_metadata(method, obs_normalizer, action_normalizer, train_meta, spec,
                              executed_steps=executed_steps, joint_names=joint_names,
                              extra=extra)
    write_family(out_path, models, metadata)
    return metadata


def energy_term_route(method: Method) -> bool | None:
    """True: hand-written gradient; False: make_fx; None: the method has no energy."""
    try:
        return not energy_term(method)[1]
    except TypeError:
        return None


def export_checkpoint(checkpoint_path: str, out_path: str, *, n_particles: int | None = None,
                      n_steps: int | None = None, warm_steps: int | None = None,
                      warm_start_t: float | None = None, executed_steps: int | None = None,
                      joint_names: Sequence[str] | None = None, use_ema: bool = True,
                      atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> ModelMetadata:
    """Export a trainer checkpoint to the ONNX model family ``out_path`` (``<stem>.onnx``).

    Args:
        checkpoint_path: a checkpoint written by the trainer (its payload has ``train_meta``).
        out_path: the sampler file; siblings ``<stem>.energy.onnx`` etc. are written beside it.
        n_particles: default particle count N recorded in the metadata.
        n_steps: K of the cold sampler (unrolled into the graph).
        warm_steps: K of the warm-start sampler.
        warm_start_t: EnergyFlow's warm-start flow time (default: the trained config's).
        executed_steps: override of the training's executed steps per chunk.
        joint_names: the joints the actions command, in action order (default: train_meta).
        use_ema: export the EMA weights when the checkpoint has them; False: the trained
            weights (the metadata's ``ema`` says which were exported).
        atol: parity gate, absolute tolerance.
        rtol: parity gate, tolerance relative to torch.

    Returns:
        The metadata written (graph ``'sampler'``).

    Raises:
        CheckpointError: unreadable checkpoint. ExportError: no ``train_meta`` or bad layout.
        ParityError: onnxruntime disagrees with torch; no file is written.
    """
    loaded = load_checkpoint(checkpoint_path)
    ema = use_weights(loaded, use_ema)
    return export_method(
        loaded.method, loaded.obs_normalizer, loaded.action_normalizer,
        loaded.payload.get('train_meta'), out_path, n_particles=n_particles, n_steps=n_steps,
        warm_steps=warm_steps, warm_start_t=warm_start_t, executed_steps=executed_steps,
        joint_names=joint_names, atol=atol, rtol=rtol,
        provenance={'checkpoint': os.path.basename(checkpoint_path), 'ema': ema})
