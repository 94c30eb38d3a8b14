"""energyflow_ros.export: checkpoint -> ONNX model family with metadata, behind a parity gate.

``export_checkpoint`` (also the ``energyflow-export`` command and the trainer's last step)
writes ``<stem>.onnx`` and its sibling graphs; see :mod:`energyflow_ros.runtime.model_format`
for the contract and :mod:`.onnx_export` for the steps. Names are imported lazily (torch is
heavy).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'onnx_export': ['export_checkpoint', 'export_method', 'ExportError', 'DEFAULT_ATOL',
                    'DEFAULT_RTOL'],
    'parity': ['ParityError', 'check_parity', 'reference_sampler'],
    'sampler_specs': ['sampler_spec'],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(f'{__name__}.{_MODULE_OF[name]}'), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
