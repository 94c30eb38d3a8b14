"""Loading an exported model for a node: parameters in, a warm planner (or reward) out.

Wraps :func:`energyflow_ros.runtime.onnx_model.load_model` and
:class:`~energyflow_ros.runtime.planner.ChunkPlanner` so the nodes see one exception type,
:class:`ConfigError`, whose message names the file and the problem (missing file, not an ONNX
model, unsupported format version, bad metadata, joints that do not match).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
import time
from typing import Any, Callable

import numpy as np

from energyflow_ros.runtime.model_format import ModelMetadata
from energyflow_ros.runtime.onnx_model import load_model, ModelLoadError, OnnxModel
from energyflow_ros.runtime.planner import ChunkPlanner
from energyflow_ros.runtime.providers import (
    DEVICES, NODE_ALLOW_SPINNING, NODE_INTRA_OP_THREADS, ProviderConfig, ProviderConfigError,
)

__all__ = ['ConfigError', 'LoadedModel', 'provider_config', 'load_onnx', 'load_policy_model',
           'declare_provider_params']


class ConfigError(RuntimeError):
    """A configuration the node cannot run with; the message says what and where."""


PlanFn = Callable[[np.ndarray, 'int | None'], tuple[np.ndarray, float]]


@dataclass
class LoadedModel:
    """A model ready to plan.

    Attributes:
        path: the sampler file.
        metadata: its validated metadata.
        provider: the device that actually runs it ('cpu', 'cuda', 'tensorrt').
        fallback: why the requested device is not used ('' when it is).
        plan: (raw stacked observation (O,), shift since the previous plan or None for a cold
            start) -> (raw chunk (H, A), energy).
        warmup_s: seconds the load and warm-up took.
        model: the loaded model (its sessions).
        warm_start: whether plans after the first start from the previous plan.
    """

    path: str
    metadata: ModelMetadata
    provider: str
    fallback: str
    plan: PlanFn
    warmup_s: float
    model: OnnxModel
    warm_start: bool


def declare_provider_params(node: Any, declare: Callable[..., Any]) -> dict[str, Any]:
    """Declare the ``provider.*`` parameters (where onnxruntime runs the graphs)."""
    return {
        'provider.device': declare(node, 'provider.device', 'cuda', f'one of {list(DEVICES)}; '
                                   'falls back to CPU with one warning when unavailable'),
        'provider.device_id': declare(node, 'provider.device_id', 0, 'GPU index', (0, 64)),
        'provider.intra_op_threads': declare(node, 'provider.intra_op_threads',
                                             NODE_INTRA_OP_THREADS,
                                             'CPU threads per graph (0: all cores)', (0, 256)),
        'provider.allow_spinning': declare(node, 'provider.allow_spinning',
                                           NODE_ALLOW_SPINNING,
                                           'idle onnxruntime threads spin (faster plans, but '
                                           'they compete with the control tick for CPU)'),
        'provider.cuda_graphs': declare(node, 'provider.cuda_graphs', True,
                                        'capture CUDA graphs (cuda device)'),
        'provider.trt_fp16': declare(node, 'provider.trt_fp16', False,
                                     'TensorRT half precision'),
    }


def provider_config(p: dict[str, Any]) -> ProviderConfig:
    """The runtime's provider configuration from the ``provider.*`` parameter values."""
    try:
        return ProviderConfig(device=p['provider.device'], device_id=p['provider.device_id'],
                              intra_op_threads=p['provider.intra_op_threads'],
                              allow_spinning=p['provider.allow_spinning'],
                              cuda_graphs=p['provider.cuda_graphs'],
                              trt_fp16=p['provider.trt_fp16'])
    except ProviderConfigError as exc:
        raise ConfigError(str(exc)) from exc


def load_onnx(path: str, p: dict[str, Any], graphs: list[str] | None = None) -> OnnxModel:
    """Load and warm up a model family, any failure as :class:`ConfigError`."""
    if not path:
        raise ConfigError('model_path is empty: set it to an exported model (<stem>.onnx)')
    try:
        return load_model(os.path.expanduser(path), providers=provider_config(p),
                          graphs=graphs)
    except (ModelLoadError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def load_policy_model(p: dict[str, Any]) -> LoadedModel:
    """Load the model named by the ``model_path`` parameter and wrap a planner around it.

    Args:
        p: the node's parameter values (``model_path``, ``provider.*``,
            ``sampler.n_particles``, ``sampler.warm_start``, ``sampler.warm_extrapolation``,
            ``seed``).

    Raises:
        ConfigError: the model cannot be loaded or planned with.
    """
    began = time.perf_counter()
    model = load_onnx(p['model_path'], p)
    try:
        planner = ChunkPlanner(model, n_particles=p['sampler.n_particles'] or None,
                               seed=p['seed'], warm_start=p['sampler.warm_start'],
                               warm_extrapolation=p['sampler.warm_extrapolation'])
    except ValueError as exc:
        raise ConfigError(f"{p['model_path']}: {exc}") from exc

    def plan(obs: np.ndarray, shift: int | None) -> tuple[np.ndarray, float]:
        if shift is None:
            planner.reset()
            result = planner.plan(obs)
        else:
            result = planner.plan(obs, shift=shift)
        return result.actions, result.energy

    chunk, energy = plan(np.asarray(model.metadata.obs_mean, dtype=np.float64), None)
    planner.reset()  # the call above paid the first-call costs and checks the output
    if not (np.all(np.isfinite(chunk)) and np.isfinite(energy)):
        raise ConfigError(f"{p['model_path']}: the warm-up plan at the training data's mean "
                          'observation holds non-finite values (NaN or inf): the model '
                          'cannot be planned with')
    return LoadedModel(model.path, model.metadata, model.provider, model.fallback or '', plan,
                       time.perf_counter() - began, model, planner.warm_start)
