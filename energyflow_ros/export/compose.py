"""Building the fused sampler graphs out of the exported energy and gradient graphs.

The fused sampler is K copies of the ``gradient`` graph chained by the update
``a <- a - step_sizes[k] * grads + noise[k]`` (clamped into the action limits, stored in the
graph, when the model's sampler clamps), followed by one copy of the ``energy`` graph at
``rank_sigma`` and an in-graph argmin. It is assembled at the ONNX level — every copy inlined,
weights shared by name, no ``Loop`` node — so the exporter traces one step only: exporting is
fast for any K, and no particle-count-sized constant can be folded into the file.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

__all__ = ['ComposeError', 'inline_graph', 'prune_unused', 'strip_node_metadata',
           'fused_sampler_model']


class ComposeError(RuntimeError):
    """A graph that cannot be inlined into the fused sampler."""


def _content_key(array: np.ndarray) -> tuple:
    data = np.ascontiguousarray(array)   # note: makes 0-d arrays 1-d, hence array.shape
    return data.dtype.str, array.shape, hashlib.sha256(data.tobytes()).hexdigest()


class _Builder:
    """Accumulates nodes and de-duplicated initializers of the fused graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._by_content: dict[tuple, str] = {}
        self._count = 0

    def add_initializer(self, tensor: onnx.TensorProto, name: str) -> str:
        """Add ``tensor`` under ``name`` unless it is already stored; return its name.

        A tensor identical to a stored one reuses it; a matrix equal to the transpose of a
        stored one becomes a ``Transpose`` node of it (constant-folded again when a session
        loads the model), so weights are stored once however often the exporter folded them.
        """
        array = numpy_helper.to_array(tensor)
        key = _content_key(array)
        if key in self._by_content:
            return self._by_content[key]
        if array.ndim == 2 and _content_key(array.T) in self._by_content:
            source = self._by_content[_content_key(array.T)]
            self.nodes.append(helper.make_node('Transpose', [source], [name],
                                               name=f'{name}/transpose', perm=[1, 0]))
        else:
            self.initializers[name] = numpy_helper.from_array(array, name)
        self._by_content[key] = name
        return name

    def const(self, values: list[int] | int, name: str) -> str:
        """An int64 constant initializer (a scalar when ``values`` is an int)."""
        tensor = helper.make_tensor(name, TensorProto.INT64, [] if isinstance(values, int)
                                    else [len(values)], [values] if isinstance(values, int)
                                    else values)
        return self.add_initializer(tensor, name)

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        """Append one node producing ``output``."""
        self._count += 1
        self.nodes.append(helper.make_node(op, inputs, [output], name=f'fused_{self._count}',
                                           **attrs))
        return output


def inline_graph(builder: _Builder, graph: onnx.GraphProto, prefix: str,
                 inputs: dict[str, str]) -> dict[str, str]:
    """Copy ``graph``'s nodes into ``builder`` with every internal name prefixed.

    Args:
        builder: the fused graph under construction.
        graph: the graph to inline (no sub-graphs).
        prefix: unique prefix for this copy's value and node names.
        inputs: the graph's input names mapped to values of the fused graph.

    Returns:
        The graph's output names mapped to their names in the fused graph.
    """
    names = dict(inputs)
    for init in graph.initializer:
        names[init.name] = builder.add_initializer(init, f'{prefix}{init.name}')
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise ComposeError(f'node {node.name} ({node.op_type}) holds a sub-graph; the '
                               'fused sampler must be loop-free')
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f'{prefix}{node.name}'
        del copy.metadata_props[:]          # the exporter's stack traces: bulk, no semantics
        copy.doc_string = ''
        del copy.input[:]
        del copy.output[:]
        copy.input.extend(names.setdefault(n, f'{prefix}{n}') if n else '' for n in node.input)
        copy.output.extend(names.setdefault(n, f'{prefix}{n}') if n else '' for n in node.output)
        builder.nodes.append(copy)
    return {o.name: names[o.name] for o in graph.output}


def strip_node_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node provenance (stack traces), which dominates small files."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ''
    for info in list(model.graph.input) + list(model.graph.output) + list(
            model.graph.initializer):
        del info.metadata_props[:]
    del model.graph.value_info[:]
    return model


def prune_unused(nodes: list[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes (in order) that contribute to ``outputs``; e.g. unused per-step energies."""
    needed, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    return keep[::-1]


def _tensor_info(name: str, dims: Iterable[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def _select_lowest(b: _Builder, particles: str, energies: str, chunk: tuple[int, int]) -> None:
    """action (B, H, A) and energy (B,) of the argmin particle (first one on ties).

    As in torch's ``select_lowest``, a particle that is not finite, or whose energy is not,
    ranks last: onnxruntime's ArgMin keeps a NaN that comes first in its row, so a diverged
    particle 0 would otherwise be chosen over finite ones, and the plan refused.
    ``x - x`` is 0 where x is finite and NaN where it is not.
    """
    finite_check = b.node('Add', [
        b.node('ReduceSum', [b.node('Sub', [particles, particles], 'rank/particle_residue'),
                             b.const([2, 3], 'axes_2_3')], 'rank/particle_check', keepdims=0),
        b.node('Sub', [energies, energies], 'rank/energy_check')], 'rank/check')
    infinity = b.add_initializer(numpy_helper.from_array(np.array(np.inf, np.float32)),
                                 'rank/infinity')
    nan = b.node('IsNaN', [b.node('Add', [energies, finite_check], 'rank/checked')],
                 'rank/not_finite')
    ranked = b.node('Where', [nan, infinity, energies], 'rank/ranked')
    idx = b.node('ArgMin', [ranked], 'best_index', axis=1, keepdims=1)
    axis1 = b.const([1], 'axis_1')
    b.node('Squeeze', [b.node('GatherElements', [energies, idx], 'best_energy', axis=1),
                       axis1], 'energy')
    idx4 = b.node('Unsqueeze', [idx, b.const([2, 3], 'axes_2_3')], 'best_index_4d')
    idx4 = b.node('Expand', [idx4, b.const([1, 1, *chunk], 'chunk_shape_4d')], 'best_gather')
    best = b.node('GatherElements', [particles, idx4], 'best_chunk', axis=1)
    b.node('Squeeze', [best, axis1], 'action')


def _unroll(b: _Builder, gradient: onnx.GraphProto, n_steps: int,
            box: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """K copies of the gradient graph: a <- a - step_sizes[k] * grads + noise[k], then
    clamped into ``box`` = (low, high), each (H, A), when given."""
    if box is not None:
        low, high = (b.add_initializer(numpy_helper.from_array(np.asarray(v, np.float32)), n)
                     for v, n in zip(box, ('particle_low', 'particle_high')))
    a = 'init'
    for k in range(n_steps):
        start, end = b.const([k], f'k{k}'), b.const([k + 1], f'k{k + 1}')
        sigma = b.node('Slice', ['sigmas', start, end], f'step{k}/sigma')
        step = b.node('Slice', ['step_sizes', start, end], f'step{k}/step_size')
        noise = b.node('Gather', ['noise', b.const(k, f'index{k}')], f'step{k}/noise', axis=0)
        out = inline_graph(b, gradient, f'step{k}/',
                           {'obs': 'obs', 'actions': a, 'sigma': sigma})
        scaled = b.node('Mul', [step, out['grads']], f'step{k}/scaled_grad')
        moved = b.node('Sub', [a, scaled], f'step{k}/moved')
        name = 'particles' if k == n_steps - 1 else f'step{k}/next'
        if box is None:
            a = b.node('Add', [moved, noise], name)
        else:
            a = b.node('Add', [moved, noise], f'step{k}/unclamped')
            a = b.node('Min', [b.node('Max', [a, low], f'step{k}/above_low'), high], name)
    return a


def fused_sampler_model(gradient: onnx.ModelProto, energy: onnx.ModelProto, n_steps: int,
                        obs_dim: int, chunk: tuple[int, int], graph_name: str,
                        box: tuple[np.ndarray, np.ndarray] | None = None) -> onnx.ModelProto:
    """The ``sampler`` / ``warm_sampler`` model: K unrolled gradient steps, then ranking.

    Args:
        gradient: the ``gradient`` model (obs, actions, sigma) -> (energies, grads).
        energy: the ``energy`` model (obs, actions, sigma) -> energies.
        n_steps: K, the number of unrolled steps (>= 1).
        obs_dim: O.
        chunk: (H, A).
        graph_name: name given to the graph.
        box: (low, high), each (H, A): clamp the particles into it after every step.

    Returns:
        A model with the inputs and outputs documented in :mod:`..runtime.model_format`.
    """
    if n_steps < 1:
        raise ComposeError(f'a fused sampler needs at least one step, got {n_steps}')
    b = _Builder()
    a = _unroll(b, gradient.graph, n_steps, box)
    out = inline_graph(b, energy.graph, 'rank/',
                       {'obs': 'obs', 'actions': a, 'sigma': 'rank_sigma'})
    b.node('Identity', [out['energies']], 'energies')
    _select_lowest(b, 'particles', 'energies', chunk)
    h, act = chunk
    nodes = prune_unused(b.nodes, ['action', 'energy', 'particles', 'energies'])
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes, graph_name,
        [_tensor_info('obs', ['B', obs_dim]), _tensor_info('init', ['B', 'N', h, act]),
         _tensor_info('sigmas', [n_steps]), _tensor_info('step_sizes', [n_steps]),
         _tensor_info('noise', [n_steps, 'B', 'N', h, act]), _tensor_info('rank_sigma', [1])],
        [_tensor_info('action', ['B', h, act]), _tensor_info('energy', ['B']),
         _tensor_info('particles', ['B', 'N', h, act]), _tensor_info('energies', ['B', 'N'])],
        initializer=[t for name, t in b.initializers.items() if name in used])
    functions = {(f.domain, f.name): f for f in list(gradient.functions) + list(energy.functions)}
    opsets: dict[str, int] = {}
    for imp in list(gradient.opset_import) + list(energy.opset_import):
        opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v)
                                                    for d, v in sorted(opsets.items())],
                              functions=list(functions.values()),
                              producer_name='energyflow_ros')
    model.ir_version = gradient.ir_version
    return model
