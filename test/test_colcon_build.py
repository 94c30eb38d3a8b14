"""``colcon build`` of the package succeeds and puts the executables where ``ros2 run`` looks."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_FILES = ['package.xml', 'setup.py', 'setup.cfg', 'resource', 'energyflow_ros',
                 'launch', 'config', 'models']


def _colcon() -> str | None:
    candidate = os.path.join(os.path.dirname(sys.executable), 'colcon')
    return candidate if os.path.exists(candidate) else shutil.which('colcon')


def _entry_point_names() -> list[str]:
    import ast
    tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'ENTRY_POINTS':
            return [k.value for k in node.value.keys]
    raise AssertionError('setup.py has no ENTRY_POINTS table')


def test_colcon_build_installs_every_executable(tmp_path):
    colcon = _colcon()
    if colcon is None:
        pytest.skip('colcon is not installed in this environment (pip install colcon-core)')
    src = tmp_path / 'src' / 'energyflow_ros'
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns('__pycache__'))
        elif os.path.exists(path):
            shutil.copy(path, src / name)
    env = {**os.environ, 'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
    result = subprocess.run([colcon, 'build', '--base-paths', 'src'], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lib = tmp_path / 'install' / 'energyflow_ros' / 'lib' / 'energyflow_ros'
    installed = sorted(os.listdir(lib))
    for name in _entry_point_names():
        assert name in installed, f'{name} missing from {lib}: {installed}'
        assert os.access(lib / name, os.X_OK)
    share = tmp_path / 'install' / 'energyflow_ros' / 'share'
    assert (share / 'energyflow_ros' / 'package.xml').exists()
    assert (share / 'ament_index' / 'resource_index' / 'packages' / 'energyflow_ros').exists()
    # the modules themselves, and the shipped model, launch file and configs
    site = list((tmp_path / 'install' / 'energyflow_ros').glob(
        'lib/python*/site-packages/energyflow_ros/nodes/policy_node.py'))
    assert site, 'the energyflow_ros modules were not installed'
    for shipped in ('models/obstacles2d_energyflow.onnx', 'launch/policy.launch.py',
                    'config/policy.yaml', 'config/sim.yaml'):
        assert (share / 'energyflow_ros' / shipped).exists(), shipped
    # an installed executable runs from the install tree, not from this checkout
    env['PYTHONPATH'] = str(site[0].parents[2])
    run = subprocess.run([str(lib / 'energyflow-export'), '--help'], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and 'energyflow-export' in run.stdout, run.stderr[-2000:]
