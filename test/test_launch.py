"""policy.launch.py: static checks that always run, and a real LaunchService run with launch_ros.

The static checks parse the launch file with ``ast`` (no launch import needed): it compiles, it
declares exactly the documented arguments with the documented defaults, the files it points at
are shipped, the config it loads only sets parameters the nodes declare, and every
``name:=value`` the README shows for it is a declared argument.
"""

import ast
import importlib.util
import os
import re
import time

import pytest
import yaml

from test.ros_helpers import domain_id, flat_params, REPO, ros_env

LAUNCH = os.path.join(REPO, 'launch', 'policy.launch.py')
ARGUMENTS = {'model': None, 'config': None, 'sim': 'true', 'reward': 'true',
             'control_rate': ''}
NODE_MODULES = {'policy_node': 'energyflow_ros.nodes.policy_node',
                'reward_node': 'energyflow_ros.nodes.reward_node',
                'sim_node': 'energyflow_ros.nodes.sim_node'}


def _tree():
    with open(LAUNCH, encoding='utf-8') as handle:
        return ast.parse(handle.read(), LAUNCH)


def _declared_arguments():
    """name -> default expression (ast) of every DeclareLaunchArgument call."""
    found = {}
    for node in ast.walk(_tree()):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == \
                'DeclareLaunchArgument':
            name = ast.literal_eval(node.args[0])
            default = next(k.value for k in node.keywords if k.arg == 'default_value')
            found[name] = default
    return found


def test_launch_file_compiles():
    with open(LAUNCH, encoding='utf-8') as handle:
        compile(handle.read(), LAUNCH, 'exec')
    names = {n.name for n in _tree().body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in names


def test_arguments_and_literal_defaults_are_the_documented_ones():
    declared = _declared_arguments()
    assert set(declared) == set(ARGUMENTS)
    for name, default in ARGUMENTS.items():
        if default is not None:
            assert ast.literal_eval(declared[name]) == default, name


def test_path_defaults_point_at_shipped_files():
    source = ast.unparse(_tree())
    assert "os.path.join(share, 'config', 'policy.yaml')" in source
    assert "os.path.join(share, 'config', 'sim.yaml')" in source
    assert re.search(r"DEFAULT_MODEL = 'obstacles2d_energyflow\.onnx'", source)
    for name in ('policy.yaml', 'sim.yaml', 'controllers.yaml'):
        assert os.path.isfile(os.path.join(REPO, 'config', name)), name
    with open(os.path.join(REPO, 'config', 'sim.yaml'), encoding='utf-8') as handle:
        sim = yaml.safe_load(handle)['sim_node']['ros__parameters']
    assert sim['task'] == 'obstacles2d'  # the shipped default model's task


def test_the_control_rate_overrides_the_config_only_when_given():
    from energyflow_ros.nodes.params import control_rate_override

    assert control_rate_override('') == []  # config:=arm.yaml keeps its control_rate_hz
    assert control_rate_override('250') == [{'control_rate_hz': 250.0}]
    for bad in ('fast', '-5', 'nan', 'inf'):
        with pytest.raises(ValueError, match=f"control_rate:={bad!r} is not a positive rate"):
            control_rate_override(bad)
    source = ast.unparse(_tree())  # the launch file passes it after the config file
    assert "parameters=[config, overrides, *rate]" in source
    assert "control_rate_override(LaunchConfiguration('control_rate').perform(context))" in \
        source


def test_readme_launch_usages_use_declared_arguments():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as handle:
        lines = [line for line in handle if 'policy.launch.py' in line]
    used = {name for line in lines for name in re.findall(r'(\w+):=', line)}
    assert used <= set(ARGUMENTS), used - set(ARGUMENTS)


@pytest.mark.parametrize('config, node', [('policy.yaml', 'policy_node'),
                                          ('policy.yaml', 'reward_node'),
                                          ('sim.yaml', 'sim_node')])
def test_config_sets_only_declared_parameters(config, node, tmp_path):
    """Every parameter the shipped config sets is one the node declares."""
    import rclpy
    from rclpy.context import Context

    with open(os.path.join(REPO, 'config', config), encoding='utf-8') as handle:
        params = flat_params(yaml.safe_load(handle)[node]['ros__parameters'])
    module = importlib.import_module(NODE_MODULES[node])
    args = ['--ros-args', '--params-file', os.path.join(REPO, 'config', config), '-r',
            f'__node:={node}']
    if node != 'sim_node':
        args += ['-p', 'autostart:=false']
    context = Context()
    rclpy.init(context=context, domain_id=domain_id(__name__), args=args)
    try:
        instance = _construct(module, node, context)
        undeclared = [name for name in params if not instance.has_parameter(name)]
        instance.destroy_node()
    finally:
        context.try_shutdown()
    assert not undeclared


def _construct(module, node, context):
    cls = {'policy_node': 'PolicyNode', 'reward_node': 'RewardNode', 'sim_node': 'SimNode'}
    return getattr(module, cls[node])(context=context)


def _launch_ros_available() -> bool:
    return importlib.util.find_spec('launch_ros') is not None and importlib.util.find_spec(
        'launch.launch_service') is not None


def _installed_share() -> str | None:
    try:
        from ament_index_python.packages import get_package_share_directory
        return get_package_share_directory('energyflow_ros')
    except (ImportError, LookupError, OSError):   # OSError: AMENT_PREFIX_PATH not set
        return None


@pytest.mark.skipif(not _launch_ros_available(),
                    reason='launch_ros is not installed (no PyPI wheel); the static checks '
                           'above still run')
def test_launch_service_runs_the_whole_loop():
    """With launch_ros and the package installed: launch everything, see every node talk."""
    import threading

    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    share = _installed_share()
    if share is None:
        pytest.skip('energyflow_ros is not installed in the ament index (colcon build and '
                    'source the workspace to run the launch file)')
    os.environ.update(ros_env(domain_id(__name__ + '.launch')))
    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'policy.launch.py')),
        launch_arguments={'control_rate': '20.0'}.items())]))
    seen = {}
    checker = threading.Thread(target=_watch_topics, args=(service, seen), daemon=True)
    checker.start()
    assert service.run() == 0  # LaunchService must run in the main thread
    checker.join(5)
    assert seen.get('ok'), seen
    assert {'/joint_states', '/forward_position_controller/commands', '/energyflow/reward',
            '/diagnostics', '/policy_node/model_info'} <= seen['topics']


def _watch_topics(service, seen, timeout=90.0):
    """Wait for commands, joint states and rewards; then stop the launch."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64, Float64MultiArray

    from test.ros_helpers import Probe, wait_until

    probe = Probe(int(os.environ['ROS_DOMAIN_ID']), 'launch_probe')
    try:
        commands = probe.record(Float64MultiArray, '/forward_position_controller/commands')
        states = probe.record(JointState, '/joint_states')
        rewards = probe.record(Float64, '/energyflow/reward')
        seen['ok'] = wait_until(lambda: len(commands) > 10 and len(states) > 10 and
                                len(rewards) > 2, timeout)
        seen['topics'] = {name for name, _ in probe.node.get_topic_names_and_types()}
    finally:
        probe.close()
        time.sleep(0.1)
        service.shutdown()
