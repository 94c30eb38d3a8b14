"""From a torch module to an ONNX ``ModelProto`` on CPU, with dynamic batch axes.

Modules written with explicit arithmetic go straight to the dynamo exporter. Modules that call
``torch.autograd.grad`` are first traced with ``make_fx(tracing_mode='symbolic')``, which
records the backward pass as ordinary aten operations, using the core-aten decompositions plus
one of our own for ``convolution_backward`` (which has none): the input gradient of a
convolution is the transposed convolution of the output gradient, and vice versa.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator, Sequence

import onnx
import torch
from torch import nn

__all__ = ['to_onnx', 'decompositions']

aten = torch.ops.aten


def _convolution_input_backward(grad_output: torch.Tensor, inp: torch.Tensor,
                                weight: torch.Tensor, bias_sizes: Any, stride: Sequence[int],
                                padding: Sequence[int], dilation: Sequence[int],
                                transposed: bool, output_padding: Sequence[int], groups: int,
                                output_mask: Sequence[bool]) -> tuple[Any, None, None]:
    """``aten.convolution_backward`` for the input gradient only (weights are constants)."""
    if any(output_mask[1:]):
        raise ValueError('export differentiates actions only, not convolution weights')
    kernel = weight.shape[2:]
    if transposed:
        grad = aten.convolution(grad_output, weight, None, stride, padding, dilation, False,
                                [0] * len(kernel), groups)
        return grad, None, None
    extra = []
    for i, k in enumerate(kernel):
        full = (grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (
            k - 1) + 1
        extra.append(inp.shape[2 + i] - full)
    grad = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, extra,
                            groups)
    return grad, None, None


def decompositions() -> dict:
    """Decomposition table for ``make_fx``: core aten plus the convolution input gradient."""
    from torch._decomp import core_aten_decompositions
    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _convolution_input_backward
    return table


_REGISTRIES: dict[Any, Any] = {}    # (registry class, opset) -> the exporter's registry


@contextlib.contextmanager
def _shared_registry() -> Iterator[None]:
    """Let ``torch.onnx.export`` build its aten -> ONNX function registry once per process.

    It rebuilds the registry on every call (~1 s on a CPU core, as long as exporting a small
    graph, and a family has two to five graphs); the exporter only reads it. Where this torch
    has no such registry to share, exports build their own as before.
    """
    try:
        from torch.onnx._internal.exporter import _registration
        registry_class = _registration.ONNXRegistry
        original = registry_class.__dict__['from_torchlib']
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def shared(cls: type, opset_version: Any = None) -> Any:
        key = (cls, opset_version)
        if key not in _REGISTRIES:
            _REGISTRIES[key] = (build(cls) if opset_version is None
                                else build(cls, opset_version=opset_version))
        return _REGISTRIES[key]

    registry_class.from_torchlib = classmethod(shared)
    try:
        yield
    finally:
        registry_class.from_torchlib = original


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and optional-dependency warnings."""
    logger = logging.getLogger('torch.onnx')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(None), warnings.catch_warnings():
            warnings.filterwarnings('ignore', category=FutureWarning)
            warnings.filterwarnings('ignore', message='.*axis name.*will not be used')
            yield
    finally:
        logger.setLevel(level)


def to_onnx(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: Sequence[str],
            output_names: Sequence[str], dynamic_axes: dict[str, dict[int, str]],
            traced: bool = False) -> onnx.ModelProto:
    """Export ``module(*args)`` (CPU tensors) to an in-memory ONNX model.

    Args:
        module: the graph's module (see :mod:`.graphs`), on CPU.
        args: example inputs; dynamic axes must not have size 0 or 1 here.
        input_names: one name per argument.
        output_names: one name per output.
        dynamic_axes: input name -> {axis: dimension name}; a name shared by several inputs
            is one dimension.
        traced: trace with ``make_fx`` first (modules that call ``torch.autograd.grad``).

    Returns:
        The ONNX model (opset of the dynamo exporter, constants folded).
    """
    module = module.eval()
    target: nn.Module = module
    if traced:
        from torch.fx.experimental.proxy_tensor import make_fx
        target = make_fx(module, tracing_mode='symbolic', _allow_non_fake_inputs=True,
                         decomposition_table=decompositions())(*args).eval()
    dims: dict[str, Any] = {}
    shapes = []
    for name in input_names:
        axes = dynamic_axes.get(name)
        shapes.append({axis: dims.setdefault(dim, torch.export.Dim(dim))
                       for axis, dim in axes.items()} if axes else None)
    with _quiet_exporter(), _shared_registry(), \
            torch.no_grad() if not traced else contextlib.nullcontext():
        program = torch.onnx.export(target, args, dynamo=True, verbose=False,
                                    input_names=list(input_names),
                                    output_names=list(output_names),
                                    dynamic_shapes=tuple(shapes), external_data=False)
    return program.model_proto
