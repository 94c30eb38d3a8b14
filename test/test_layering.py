"""Imports point one way: the math never imports ROS; the robot side never imports torch.

Every module of a package is imported (a package's ``__init__`` loads its submodules lazily, so
importing the package alone would check nothing).
"""

import os
import pkgutil
import subprocess
import sys

import pytest

import energyflow_ros

ROOT = os.path.dirname(energyflow_ros.__file__)
ROS_FREE = ['core', 'training', 'runtime', 'export', 'data', 'sim']
TORCH_FREE = ['runtime', 'nodes', 'sim.registry', 'data.rosbag', 'data.pointcloud']


def _modules(name: str) -> list[str]:
    """``energyflow_ros.<name>`` and, for a package, every module in it."""
    full = f'energyflow_ros.{name}'
    folder = os.path.join(ROOT, *name.split('.'))
    if not os.path.isdir(folder):
        return [full]
    return [full] + [f'{full}.{m.name}' for m in pkgutil.iter_modules([folder])]


def _first_importer(modules: list[str], banned: str) -> str | None:
    """The first of ``modules`` whose import loads ``banned`` (imported in that order, in a
    fresh interpreter), or None."""
    code = (f'import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n'
            f'    if {banned!r} in sys.modules:\n        print(m)\n        break\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip() or None


@pytest.mark.parametrize('package', ROS_FREE)
def test_package_does_not_import_rclpy(package):
    modules = _modules(package)
    assert len(modules) > 1
    assert _first_importer(modules, 'rclpy') is None


@pytest.mark.parametrize('package', TORCH_FREE)
def test_package_does_not_import_torch(package):
    assert _first_importer(_modules(package), 'torch') is None


def test_the_check_itself_detects_an_import():
    assert 'energyflow_ros.nodes.policy_node' in _modules('nodes')
    assert _first_importer(_modules('core'), 'torch') is not None
    assert _first_importer(_modules('nodes'), 'rclpy') is not None
