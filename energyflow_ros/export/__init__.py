"""energyflow_ros.export: checkpoint -> ONNX model family with metadata, behind a parity gate.

``export_checkpoint`` (also the ``energyflow-export`` command and the trainer's last step)
writes ``<stem>.onnx`` and its sibling graphs; see :mod:`energyflow_ros.runtime.model_format`
for the contract and :mod:`.onnx_export` for the steps. Names are imported lazily (torch is
heavy).
"""

from __future__ import annotations

from energyflow_ros.lazy import lazy_exports

lazy_exports(globals(), {
    'onnx_export': ['export_checkpoint', 'export_method', 'ExportError', 'DEFAULT_ATOL',
                    'DEFAULT_RTOL'],
    'parity': ['ParityError', 'check_parity', 'reference_sampler'],
    'sampler_specs': ['sampler_spec'],
})
