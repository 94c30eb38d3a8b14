"""Loading an exported model family: files, metadata validation, sessions, warm-up.

Every failure names the file and what is wrong, through one exception class per cause
(all :class:`ModelLoadError`): a missing file, a file that is not an ONNX model, a model-format
version this build does not read, malformed or inconsistent metadata, and joints that do not
match the robot's configured joints.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import onnxruntime as ort

from energyflow_ros.runtime.model_format import (
    GRAPH_SUFFIXES, graph_path, METADATA_KEY, MODEL_FORMAT_VERSION, ModelFormatError,
    ModelMetadata,
)
from energyflow_ros.runtime.providers import (
    active_provider, BoundRunner, create_session, input_dims, ProviderConfig,
)

__all__ = ['ModelLoadError', 'ModelNotFoundError', 'NotAnOnnxModelError', 'ModelVersionError',
           'ModelMetadataError', 'JointMismatchError', 'read_metadata', 'check_joints',
           'OnnxModel', 'load_model']

LOG = logging.getLogger('energyflow_ros.runtime')


class ModelLoadError(RuntimeError):
    """A model that cannot be used; subclasses say why."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A file of the model family does not exist."""


class NotAnOnnxModelError(ModelLoadError):
    """The file is not an ONNX model (or onnxruntime cannot parse it)."""


class ModelVersionError(ModelLoadError):
    """The model was written in a model-format version this build does not read."""


class ModelMetadataError(ModelLoadError):
    """The metadata is missing, malformed, or differs between the files of one family."""


class JointMismatchError(ModelLoadError):
    """The model's joints do not match the joints configured for the robot."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError('truncated varint')
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of every top-level field of a serialized protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield field, value
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError('truncated field')
            yield field, data[pos:pos + length]
            pos += length
        else:
            raise ValueError(f'wire type {wire}')
    if pos != len(data):
        raise ValueError('truncated message')


def _metadata_props(data: bytes) -> dict[str, str]:
    """``metadata_props`` of a serialized ONNX ModelProto (field 14: key 1, value 2), read
    without building a session: onnxruntime's session build is quadratic in the node count,
    and took 85 s for a fused U-Net sampler only to read its metadata.

    Raises:
        ValueError: not a ModelProto (no graph, or not protobuf).
    """
    props, graph = {}, False
    for field, value in _fields(data):
        graph |= field == 7 and isinstance(value, bytes)
        if field == 14 and isinstance(value, bytes):
            entry = {f: v for f, v in _fields(value) if isinstance(v, bytes)}
            props[entry.get(1, b'').decode()] = entry.get(2, b'').decode()
    if not graph:
        raise ValueError('no graph')
    return props


def _metadata_text(path: str) -> str:
    if not os.path.isfile(path):
        raise ModelNotFoundError(f'model file not found: {path}')
    with open(path, 'rb') as handle:
        data = handle.read()
    try:
        props = _metadata_props(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotAnOnnxModelError(f'{path}: not an ONNX model ({exc})') from exc
    text = props.get(METADATA_KEY)
    if text is None:
        raise ModelMetadataError(f'{path}: an ONNX model without energyflow_ros metadata (key '
                                 f'{METADATA_KEY!r}); export models with energyflow-export')
    return text


def read_metadata(path: str) -> ModelMetadata:
    """Read and validate the metadata of one ONNX file.

    Raises:
        ModelNotFoundError, NotAnOnnxModelError, ModelVersionError, ModelMetadataError.
    """
    text = _metadata_text(path)
    try:
        version = json.loads(text).get('format_version')
    except (ValueError, AttributeError) as exc:
        raise ModelMetadataError(f'{path}: metadata is not a JSON object') from exc
    if version != MODEL_FORMAT_VERSION:
        raise ModelVersionError(f'{path}: model format version {version!r} is not supported '
                                f'(this build reads version {MODEL_FORMAT_VERSION}); re-export '
                                'the model with energyflow-export')
    try:
        return ModelMetadata.from_json(text, path)
    except (ModelFormatError, TypeError, ValueError) as exc:
        raise ModelMetadataError(str(exc)) from exc


def check_joints(metadata: ModelMetadata, joint_names: Sequence[str], source: str = 'model',
                 ) -> None:
    """Raise :class:`JointMismatchError` unless the configured joints are the model's joints.

    The order may differ (joints are matched by name); the set and the count may not.
    """
    model, configured = list(metadata.joint_names), list(joint_names)
    if len(configured) != len(model):
        raise JointMismatchError(f'{source} commands {len(model)} joints {model}, but '
                                 f'{len(configured)} joints are configured {configured}')
    missing = [j for j in model if j not in configured]
    unknown = [j for j in configured if j not in model]
    if missing or unknown or len(set(configured)) != len(configured):
        raise JointMismatchError(f'{source} commands joints {model}; the configured joints '
                                 f'{configured} lack {missing} and add {unknown}')


def _family_key(metadata: ModelMetadata) -> str:
    """Everything that must agree across one export's files."""
    return json.dumps({**json.loads(metadata.to_json()), 'graph': None}, sort_keys=True)


class OnnxModel:
    """A loaded model family: validated metadata and one warm session per graph.

    Attributes:
        path: the sampler file.
        metadata: the sampler file's metadata.
        config: the provider configuration.
        provider: the device that actually runs the sampler ('tensorrt', 'cuda' or 'cpu').
        fallback: why the requested device is not used (None when it is).
        sessions: graph name -> onnxruntime session.
    """

    def __init__(self, path: str, metadata: ModelMetadata, config: ProviderConfig,
                 sessions: dict[str, ort.InferenceSession], fallback: str | None) -> None:
        """Wrap sessions made by :func:`load_model`."""
        self.path, self.metadata, self.config = path, metadata, config
        self.sessions, self.fallback = sessions, fallback
        self.provider = active_provider(sessions['sampler'])
        self._runners: dict[tuple, BoundRunner] = {}

    def has(self, graph: str) -> bool:
        """Whether ``graph`` was loaded."""
        return graph in self.sessions

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph; with IO binding, through preallocated buffers for these shapes.

        Raises:
            KeyError: the graph was not loaded.
        """
        if graph not in self.sessions:
            raise KeyError(f'graph {graph!r} is not loaded (loaded: {sorted(self.sessions)})')
        if not self.config.io_binding:
            session = self.sessions[graph]
            names = [o.name for o in session.get_outputs()]
            return dict(zip(names, session.run(names, feeds)))
        key = (graph, *((n, np.shape(a)) for n, a in sorted(feeds.items())))
        runner = self._runners.get(key)
        if runner is None:
            shapes = {n: tuple(np.shape(a)) for n, a in feeds.items()}
            session = self.sessions[graph]
            captured = self.config.cuda_graphs and active_provider(session) == 'cuda'
            graph_id = sum(k[0] == graph for k in self._runners) if captured else None
            runner = BoundRunner(session, shapes, self.config.device_id, graph_id)
            self._runners[key] = runner
        return runner.run(feeds)

    def warm_up(self, n_particles: int | None = None, runs: int | None = None) -> None:
        """Run every loaded graph ``runs`` times at the planner's shapes (B = 1, N particles).

        The first runs of a session are slow (allocation, kernel selection, CUDA-graph
        capture, TensorRT engine build); doing them here keeps them out of control ticks.
        """
        n = n_particles or self.metadata.sampler.n_particles
        for _ in range(self.config.warmup_runs if runs is None else runs):
            for graph in self.sessions:
                self.run(graph, _warmup_feeds(self.metadata, graph, n))


def _check_shapes(file: str, graph: str, session: ort.InferenceSession,
                  metadata: ModelMetadata) -> None:
    """The inputs the metadata implies (horizon, action and observation sizes, schedule
    lengths) must fit the graph's; else the metadata was edited or the files mixed."""
    feeds = _warmup_feeds(metadata, graph, metadata.sampler.n_particles)
    try:
        input_dims(session, {name: array.shape for name, array in feeds.items()})
    except (ValueError, KeyError) as exc:
        detail = f'it feeds no input {exc}' if isinstance(exc, KeyError) else str(exc)
        raise ModelMetadataError(
            f'{file}: the metadata (horizon {metadata.horizon}, action dim '
            f'{metadata.action_dim}, obs dim {metadata.obs_dim}) does not fit the {graph} '
            f'graph: {detail}; the metadata was edited or the file is from another export'
        ) from exc


def _default_graphs(path: str) -> list[str]:
    graphs = ['sampler']
    for graph in ('warm_sampler', 'energy', 'proposal'):
        if os.path.isfile(graph_path(path, graph)):
            graphs.append(graph)
    return graphs


def _warmup_feeds(metadata: ModelMetadata, graph: str, n: int) -> dict[str, np.ndarray]:
    """Zero inputs of the shapes the planner and the reward use (B = 1)."""
    h, a = metadata.horizon, metadata.action_dim
    obs = np.zeros((1, metadata.obs_dim), np.float32)
    if graph == 'proposal' or metadata.sampler.kind == 'regression':
        return {'obs': obs}
    if metadata.sampler.kind == 'ddim':
        return {'obs': obs, 'init': np.zeros((1, 1, h, a), np.float32)}
    if graph in ('energy', 'gradient'):
        m = 1 + len(metadata.reward_reference)
        return {'obs': obs, 'actions': np.zeros((1, m, h, a), np.float32),
                'sigma': np.array([metadata.reward_sigma or 1.0], np.float32)}
    if metadata.sampler.kind == 'proposal_rank':
        return {'obs': obs, 'uniforms': np.zeros((1, n), np.float32),
                'normals': np.zeros((1, n, h, a), np.float32),
                'rank_sigma': np.array([metadata.sampler.rank_sigma], np.float32)}
    schedule = metadata.sampler.cold if graph == 'sampler' else metadata.sampler.warm
    k = schedule.n_steps
    return {'obs': obs, 'init': np.zeros((1, n, h, a), np.float32),
            'sigmas': np.asarray(schedule.sigmas, np.float32),
            'step_sizes': np.asarray(schedule.step_sizes, np.float32),
            'noise': np.zeros((k, 1, n, h, a), np.float32),
            'rank_sigma': np.array([metadata.sampler.rank_sigma], np.float32)}


def _read_family(path: str, graphs: Iterable[str]) -> dict[str, ModelMetadata]:
    sampler = read_metadata(path)
    if sampler.graph != 'sampler':
        raise ModelMetadataError(f'{path} holds the {sampler.graph!r} graph; pass the sampler '
                                 'file <stem>.onnx of the model')
    family = {'sampler': sampler}
    for graph in graphs:
        if graph == 'sampler':
            continue
        if graph in ('energy', 'gradient') and not sampler.sampler.energy_based:
            raise ModelNotFoundError(f'{path}: a {sampler.method!r} model has no energy, so it '
                                     f'has no reward and no {graph!r} graph; use an '
                                     'energy-based model (energyflow, rnce, irnce or ibc)')
        file = graph_path(path, graph)
        meta = read_metadata(file)
        if meta.graph != graph or _family_key(meta) != _family_key(sampler):
            raise ModelMetadataError(f'{file} does not belong to the export of {path} (graph '
                                     f'{meta.graph!r}, other metadata); re-export the model')
        family[graph] = meta
    if sampler.sampler.uses_proposal_graph and 'proposal' not in family:
        raise ModelNotFoundError(f'{graph_path(path, "proposal")}: this model starts its '
                                 'sampler from the proposal graph, which is missing')
    return family


def load_model(path: str, *, providers: ProviderConfig | None = None,
               joint_names: Sequence[str] | None = None,
               graphs: Iterable[str] | None = None, warm_up: bool = True) -> OnnxModel:
    """Load the model family whose sampler file is ``path``.

    Args:
        path: ``<stem>.onnx``.
        providers: where to run (default: CPU).
        joint_names: the robot's configured joints; checked against the model's by name.
        graphs: graphs to load (default: the sampler and every present warm-sampler and
            energy file, and the proposal file when the sampler starts from it; the gradient
            graph only when asked for).
        warm_up: run every graph ``providers.warmup_runs`` times before returning.

    Returns:
        The model with its sessions warmed up (see :class:`~.planner.ChunkPlanner`).

    Raises:
        ModelNotFoundError, NotAnOnnxModelError, ModelVersionError, ModelMetadataError,
        JointMismatchError.
    """
    cfg = providers or ProviderConfig()
    if not path.endswith('.onnx'):
        raise ModelNotFoundError(f'{path}: a model path must be the <stem>.onnx sampler file')
    defaulted = graphs is None
    graphs = _default_graphs(path) if defaulted else list(graphs)
    unknown = sorted(set(graphs) - set(GRAPH_SUFFIXES))
    if unknown:
        raise ValueError(f'unknown graphs {unknown}: expected some of {list(GRAPH_SUFFIXES)}')
    family = _read_family(path, graphs)
    metadata = family['sampler']
    if defaulted and not metadata.sampler.uses_proposal_graph:
        # interpolating R-NCE and proposal_rank export the proposal but never plan with it:
        # no session (and no warm-up) for it at start-up
        family.pop('proposal', None)
    if joint_names is not None:
        check_joints(metadata, joint_names, path)
    sessions, fallback = {}, None
    for graph in family:
        try:
            sessions[graph], reason = create_session(graph_path(path, graph), cfg)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's load errors have no common type
            text = str(exc).strip()
            raise NotAnOnnxModelError(
                f'{graph_path(path, graph)}: not an ONNX model onnxruntime can load '
                f'({text.splitlines()[0] if text else type(exc).__name__})') from exc
        fallback = fallback or reason
    if fallback:
        LOG.warning('energyflow_ros model %s: %s', os.path.basename(path), fallback)
    for graph, session in sessions.items():
        _check_shapes(graph_path(path, graph), graph, session, metadata)
    model = OnnxModel(path, metadata, cfg, sessions, fallback)
    if warm_up:
        model.warm_up()
    return model
