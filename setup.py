"""ament_python package setup for energyflow_ros."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'energyflow_ros'


def _data(folder: str, pattern: str = '*') -> tuple[str, list[str]]:
    """Install every file of ``folder`` matching ``pattern`` under share/<package>/<folder>."""
    files = [f for f in glob(os.path.join(folder, pattern)) if os.path.isfile(f)]
    return os.path.join('share', PACKAGE, folder), files


# Every executable, once under its ROS name (``ros2 run energyflow_ros NAME``) and, where users
# call it from a shell, once under an ``energyflow-`` name.
ENTRY_POINTS = {
    # the closed loop a newcomer runs first: sim_node + policy_node + reward_node over DDS
    'closed_loop': 'energyflow_ros.cli.closed_loop:main',
    'energyflow-closed-loop': 'energyflow_ros.cli.closed_loop:main',
    # ROS nodes
    'policy_node': 'energyflow_ros.nodes.policy_node:main',
    'reward_node': 'energyflow_ros.nodes.reward_node:main',
    'sim_node': 'energyflow_ros.nodes.sim_node:main',
    # offline tools
    'trainer': 'energyflow_ros.cli.trainer:main',
    'energyflow-train': 'energyflow_ros.cli.trainer:main',
    'export': 'energyflow_ros.cli.export:main',
    'energyflow-export': 'energyflow_ros.cli.export:main',
    'evaluate': 'energyflow_ros.cli.evaluate:main',
    'energyflow-eval': 'energyflow_ros.cli.evaluate:main',
    'energyflow-reward-eval': 'energyflow_ros.cli.reward_eval:main',
    'record': 'energyflow_ros.cli.record:main',
    'energyflow-record': 'energyflow_ros.cli.record:main',
    # the 2-D density comparison of the energy objectives
    'density_demo': 'energyflow_ros.cli.demo:main',
    'energyflow-density-demo': 'energyflow_ros.cli.demo:main',
}

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        _data('launch', '*.py'),
        _data('config', '*.yaml'),
        _data('models'),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='energyflow_ros maintainers',
    maintainer_email='maintainers@energyflow-ros.dev',
    description='Energy-based imitation-learning policies for ROS 2 arms.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [f'{name} = {target}' for name, target in ENTRY_POINTS.items()],
    },
)
