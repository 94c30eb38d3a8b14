"""Imports point one way: the math never imports ROS; the robot side never imports torch."""

import subprocess
import sys

import pytest

ROS_FREE = ['energyflow_ros.core', 'energyflow_ros.core.methods', 'energyflow_ros.training',
            'energyflow_ros.training.checkpoint', 'energyflow_ros.runtime',
            'energyflow_ros.export',
            'energyflow_ros.data', 'energyflow_ros.data.dataset', 'energyflow_ros.sim',
            'energyflow_ros.sim.registry', 'energyflow_ros.sim.demos']
TORCH_FREE = ['energyflow_ros.runtime', 'energyflow_ros.nodes', 'energyflow_ros.sim.registry',
              'energyflow_ros.data.rosbag']


def _imported_after(module: str) -> set[str]:
    code = f'import sys, {module}; print("\\n".join(sys.modules))'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize('module', ROS_FREE)
def test_module_does_not_import_rclpy(module):
    assert 'rclpy' not in _imported_after(module)


@pytest.mark.parametrize('module', TORCH_FREE)
def test_module_does_not_import_torch(module):
    assert 'torch' not in _imported_after(module)


def test_the_check_itself_detects_an_import():
    assert 'torch' in _imported_after('energyflow_ros.core.methods')
