"""onnxruntime execution providers and sessions, chosen from configuration (no torch, no ROS).

* ``tensorrt``: TensorRT with its engine cache on disk (the first build takes minutes; later
  loads read the cache), falling back to CUDA then CPU for nodes TensorRT does not take.
* ``cuda``: the CUDA provider; graphs run with IO binding to preallocated device buffers and,
  when enabled, CUDA graphs (captured on the first run of each fixed set of input shapes).
* ``cpu``: the CPU provider with tuned thread settings.

When the requested provider is not available, the session falls back to CPU and the loader logs
ONE warning saying so. :func:`active_provider` reports what actually runs.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ['DEVICES', 'NODE_INTRA_OP_THREADS', 'NODE_ALLOW_SPINNING', 'ProviderConfig',
           'ProviderConfigError', 'provider_chain', 'session_options', 'create_session',
           'active_provider', 'BoundRunner', 'input_dims']

DEVICES = ('cpu', 'cuda', 'tensorrt')
# The policy and reward nodes' CPU settings: one thread that never spins, so a graph call does
# not compete with the control tick (or the other node) for a core. Benchmarks that claim to
# time a chunk as the node plans it use these too.
NODE_INTRA_OP_THREADS, NODE_ALLOW_SPINNING = 1, False
_PROVIDER = {'cpu': 'CPUExecutionProvider', 'cuda': 'CUDAExecutionProvider',
             'tensorrt': 'TensorrtExecutionProvider'}
_DEVICE_OF = {v: k for k, v in _PROVIDER.items()}


class ProviderConfigError(ValueError):
    """A provider setting that is not allowed."""


@dataclass(frozen=True)
class ProviderConfig:
    """Where and how the model's graphs run.

    Attributes:
        device: one of :data:`DEVICES`.
        device_id: GPU index for ``cuda`` / ``tensorrt``.
        intra_op_threads: CPU threads per graph (0: onnxruntime's default, one per core).
        allow_spinning: let a session's idle threads spin; measured 20-35 % faster calls on 2
            cores when one session runs repeatedly (the warm sampler), but spinning threads
            of one session slow down the next session's call when sessions alternate
            back to back (2-3x in the latency benchmark) and compete with other processes.
        trt_engine_cache_dir: TensorRT engine cache folder (default
            ``~/.cache/energyflow_ros/tensorrt``).
        trt_fp16: let TensorRT use half precision.
        cuda_graphs: capture CUDA graphs (requires IO binding, fixed input shapes).
        io_binding: bind inputs and outputs to preallocated buffers on the device.
        warmup_runs: runs of every graph at load, before the model is used.
        memory_reuse: onnxruntime's buffer reuse (``enable_mem_reuse``). Off: its planner is
            quadratic in the graph's node count, and the fused U-Net sampler (19k nodes at
            K = 20) took 90 s to load with it (1.9 s without, and ran 4 % faster); the MLP
            samplers run within noise of it either way.
    """

    device: str = 'cpu'
    device_id: int = 0
    intra_op_threads: int = 2
    allow_spinning: bool = True
    trt_engine_cache_dir: str = ''
    trt_fp16: bool = False
    cuda_graphs: bool = True
    io_binding: bool = True
    warmup_runs: int = 2
    memory_reuse: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ProviderConfigError(f'ProviderConfig.device = {self.device!r} is invalid: '
                                      f'expected one of {list(DEVICES)}')
        for name in ('device_id', 'intra_op_threads', 'warmup_runs'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProviderConfigError(f'ProviderConfig.{name} = {value!r} is invalid: '
                                          'expected an integer >= 0')

    @property
    def engine_cache_dir(self) -> str:
        """The TensorRT engine cache folder."""
        return self.trt_engine_cache_dir or os.path.join(
            os.path.expanduser('~'), '.cache', 'energyflow_ros', 'tensorrt')


def provider_chain(cfg: ProviderConfig, available: list[str] | None = None,
                   ) -> tuple[list[Any], str | None]:
    """Providers (with options) for a session, and why it falls back (None when it does not).

    Args:
        cfg: the configuration.
        available: providers this onnxruntime build offers (default: ask onnxruntime).
    """
    available = ort.get_available_providers() if available is None else available
    wanted = _PROVIDER[cfg.device]
    if wanted not in available:
        return ['CPUExecutionProvider'], (
            f'{wanted} was requested (device {cfg.device!r}) but this onnxruntime build offers '
            f'only {available}; running on CPU. Install onnxruntime-gpu with matching CUDA / '
            'cuDNN / TensorRT libraries to use the GPU.')
    cuda = ('CUDAExecutionProvider', {'device_id': str(cfg.device_id),
                                      'enable_cuda_graph': '1' if cfg.cuda_graphs else '0'})
    if cfg.device == 'cpu':
        return ['CPUExecutionProvider'], None
    if cfg.device == 'cuda':
        return [cuda, 'CPUExecutionProvider'], None
    os.makedirs(cfg.engine_cache_dir, exist_ok=True)
    trt = ('TensorrtExecutionProvider', {
        'device_id': str(cfg.device_id), 'trt_engine_cache_enable': 'True',
        'trt_engine_cache_path': cfg.engine_cache_dir, 'trt_timing_cache_enable': 'True',
        'trt_timing_cache_path': cfg.engine_cache_dir,
        'trt_fp16_enable': 'True' if cfg.trt_fp16 else 'False'})
    chain = [trt, cuda, 'CPUExecutionProvider']
    if 'CUDAExecutionProvider' not in available:
        chain.remove(cuda)
    return chain, None


def session_options(cfg: ProviderConfig) -> ort.SessionOptions:
    """Session options: full graph optimisation, sequential execution, tuned CPU threads."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry('session.intra_op.allow_spinning',
                                  '1' if cfg.allow_spinning else '0')
    opts.add_session_config_entry('session.set_denormal_as_zero', '1')
    opts.enable_mem_reuse = cfg.memory_reuse
    return opts


def active_provider(session: ort.InferenceSession) -> str:
    """The device that runs ``session``: 'tensorrt', 'cuda' or 'cpu' (its first provider)."""
    return _DEVICE_OF.get(session.get_providers()[0], session.get_providers()[0])


def create_session(model: str | bytes, cfg: ProviderConfig,
                   ) -> tuple[ort.InferenceSession, str | None]:
    """A session for ``model`` (a path or serialized bytes) on the configured device.

    Returns:
        The session and a fallback message (None when the requested device runs it). A
        session whose CUDA-graph capture is refused is rebuilt without CUDA graphs.
    """
    chain, fallback = provider_chain(cfg)
    opts = session_options(cfg)
    try:
        session = ort.InferenceSession(model, opts, providers=chain)
    except Exception:   # noqa: BLE001 - onnxruntime raises its own types; CUDA graph refusal
        if cfg.device == 'cpu' or not cfg.cuda_graphs:
            raise
        chain, fallback = provider_chain(_without_cuda_graphs(cfg))
        session = ort.InferenceSession(model, session_options(cfg), providers=chain)
        fallback = 'CUDA graphs could not be captured for this graph; running without them'
    if fallback is None and active_provider(session) != cfg.device:
        fallback = (f'{_PROVIDER[cfg.device]} could not start (see onnxruntime\'s message '
                    f'above); running on {session.get_providers()[0]}')
    return session, fallback


def _without_cuda_graphs(cfg: ProviderConfig) -> ProviderConfig:
    return ProviderConfig(**{**cfg.__dict__, 'cuda_graphs': False})


def _device_of(session: ort.InferenceSession) -> str:
    return 'cuda' if active_provider(session) in ('cuda', 'tensorrt') else 'cpu'


class BoundRunner:
    """One session run with IO binding to preallocated buffers, for one set of input shapes.

    Inputs are copied into fixed device buffers (``update_inplace``) and outputs land in fixed
    buffers, so repeated runs allocate nothing and, on CUDA, can replay a captured CUDA graph.
    """

    def __init__(self, session: ort.InferenceSession, shapes: dict[str, tuple[int, ...]],
                 device_id: int = 0, graph_id: int | None = None) -> None:
        """Preallocate buffers for inputs of ``shapes`` (every input of the session).

        Args:
            session: the session.
            shapes: input name -> shape.
            device_id: GPU index of CUDA buffers.
            graph_id: CUDA-graph id of this set of buffers (one session may capture several
                graphs, one per runner); None when CUDA graphs are off.
        """
        self.session = session
        # No RunOptions without a CUDA graph: onnxruntime's Python wrapper looks the graph id
        # up in them on every run, and a missing entry costs it a caught C++ exception (about
        # 40 us on a 2-core CPU, a tenth of a small model's whole chunk).
        self.options: ort.RunOptions | None = None
        if graph_id is not None:
            self.options = ort.RunOptions()
            self.options.add_run_config_entry('gpu_graph_id', str(graph_id))
        device = _device_of(session)
        dims = input_dims(session, shapes)
        self.binding = session.io_binding()
        self.inputs: dict[str, ort.OrtValue] = {}
        self.outputs: dict[str, ort.OrtValue] = {}
        for arg in session.get_inputs():
            value = ort.OrtValue.ortvalue_from_shape_and_type(shapes[arg.name], np.float32,
                                                              device, device_id)
            self.binding.bind_ortvalue_input(arg.name, value)
            self.inputs[arg.name] = value
        for arg in session.get_outputs():
            shape = [d if isinstance(d, int) else dims[d] for d in arg.shape]
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device,
                                                              device_id)
            self.binding.bind_ortvalue_output(arg.name, value)
            self.outputs[arg.name] = value

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy ``feeds`` in, run, and return copies of every output."""
        for name, array in feeds.items():
            self.inputs[name].update_inplace(np.ascontiguousarray(array, dtype=np.float32))
        self.binding.synchronize_inputs()
        self.session.run_with_iobinding(self.binding, self.options)
        self.binding.synchronize_outputs()
        return {name: value.numpy().copy() for name, value in self.outputs.items()}


def input_dims(session: ort.InferenceSession,
               shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Sizes of the named (dynamic) dimensions implied by the input shapes.

    Raises:
        ValueError: a shape does not fit its input, or two inputs disagree on a dimension.
        KeyError: ``shapes`` lacks an input of the graph.
    """
    dims: dict[str, int] = {}
    for arg in session.get_inputs():
        shape = shapes[arg.name]
        if len(shape) != len(arg.shape):
            raise ValueError(f'input {arg.name!r} has shape {tuple(shape)}, the graph expects '
                             f'{arg.shape}')
        for want, got in zip(arg.shape, shape):
            if isinstance(want, int) and want != got:
                raise ValueError(f'input {arg.name!r} has shape {tuple(shape)}, the graph '
                                 f'expects {arg.shape}')
            if not isinstance(want, int) and dims.setdefault(want, got) != got:
                raise ValueError(f'inputs disagree on dimension {want!r}')
    return dims
