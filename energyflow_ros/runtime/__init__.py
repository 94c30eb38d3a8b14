"""energyflow_ros.runtime: run exported models with onnxruntime (numpy only; no torch, no ROS).

``load_model`` reads a model family and warms it up, ``ChunkPlanner`` turns observation
histories into raw action chunks, ``EnergyReward`` scores (observation, chunk) pairs. The names
below are imported lazily, so ``import energyflow_ros.runtime.safety`` (say) does not load
onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'model_format': ['ModelFormatError', 'ModelMetadata'],
    'onnx_model': ['check_joints', 'JointMismatchError', 'load_model', 'ModelLoadError',
                   'ModelMetadataError', 'ModelNotFoundError', 'ModelVersionError',
                   'NotAnOnnxModelError', 'OnnxModel', 'read_metadata'],
    'planner': ['BatchPlan', 'ChunkPlanner', 'Plan'],
    'providers': ['ProviderConfig', 'ProviderConfigError'],
    'reward': ['EnergyReward'],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module = importlib.import_module(f'{__name__}.{_MODULE_OF[name]}')
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
