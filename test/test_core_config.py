"""Config dataclasses refuse bad values and unknown fields with errors naming the field."""

import pytest

from energyflow_ros.core.config import (
    ChunkSpec, ConfigError, LangevinConfig, MLPConfig, NoiseScheduleConfig, UNetConfig,
    config_from_dict, config_to_dict,
)
from energyflow_ros.core.methods import BackboneConfig, build_method, EnergyFlowConfig


@pytest.mark.parametrize('build, field', [
    (lambda: ChunkSpec(obs_dim=0, action_dim=2), 'ChunkSpec.obs_dim'),
    (lambda: MLPConfig(activation='relu'), 'MLPConfig.activation'),
    (lambda: NoiseScheduleConfig(sigma_min=1.0, sigma_max=0.5), 'NoiseScheduleConfig.sigma_max'),
    (lambda: NoiseScheduleConfig(sigma_min=float('nan')), 'NoiseScheduleConfig.sigma_min'),
    (lambda: UNetConfig(channels=(64, 100), groups=8), 'UNetConfig.groups'),
    (lambda: LangevinConfig(n_particles=-1), 'LangevinConfig.n_particles'),
    (lambda: BackboneConfig(kind='transformer'), 'BackboneConfig.kind'),
])
def test_invalid_values_name_the_field(build, field):
    with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
        build()


def test_unknown_field_is_rejected_by_name():
    message = r"energyflow\.schedule: unknown field\(s\) \['sigma_mn'\]"
    with pytest.raises(ConfigError, match=message):
        config_from_dict(EnergyFlowConfig, {'schedule': {'sigma_mn': 0.1}}, 'energyflow')


def test_unknown_method_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match='unknown method .*allowed'):
        build_method('gail', ChunkSpec(2, 2))


def test_unet_horizon_must_survive_downsampling():
    with pytest.raises(ConfigError, match='horizon'):
        build_method('energyflow', ChunkSpec(2, 2, horizon=6), {'kind': 'unet'})


def test_round_trip_through_plain_dicts():
    cfg = config_from_dict(EnergyFlowConfig, {'schedule': {'sigma_max': 5.0},
                                              'flow': {'n_steps': 8}})
    assert config_from_dict(EnergyFlowConfig, config_to_dict(cfg)) == cfg
    assert cfg.schedule.sigma_max == 5.0 and cfg.flow.n_steps == 8
