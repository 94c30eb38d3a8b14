"""energyflow_ros.runtime: run exported models with onnxruntime (numpy only; no torch, no ROS).

``load_model`` reads a model family and warms it up, ``ChunkPlanner`` turns observation
histories into raw action chunks, ``EnergyReward`` scores (observation, chunk) pairs. The names
below are imported lazily, so ``import energyflow_ros.runtime.safety`` (say) does not load
onnxruntime.
"""

from __future__ import annotations

from energyflow_ros.lazy import lazy_exports

lazy_exports(globals(), {
    'model_format': ['ModelFormatError', 'ModelMetadata'],
    'onnx_model': ['check_joints', 'JointMismatchError', 'load_model', 'ModelLoadError',
                   'ModelMetadataError', 'ModelNotFoundError', 'ModelVersionError',
                   'NotAnOnnxModelError', 'OnnxModel', 'read_metadata'],
    'planner': ['BatchPlan', 'ChunkPlanner', 'Plan'],
    'providers': ['ProviderConfig', 'ProviderConfigError'],
    'reward': ['EnergyReward'],
})
