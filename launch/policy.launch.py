"""Launch the energy policy (and, by default, a simulated robot and the reward node).

    ros2 launch energyflow_ros policy.launch.py                  # sim + shipped model + reward
    ros2 launch energyflow_ros policy.launch.py sim:=false model:=/path/arm.onnx \
        config:=/path/arm_policy.yaml control_rate:=250.0

Arguments:
    model: exported model (<stem>.onnx); default: the shipped obstacles2d model.
    config: parameter file for policy_node and reward_node; default: config/policy.yaml.
    sim: also start sim_node with config/sim.yaml (true/false); default true.
    reward: also start reward_node (true/false); default true.
    control_rate: policy command rate in Hz; default: the config's control_rate_hz (50 in
        config/policy.yaml). Set, it overrides the config.

policy_node and reward_node are lifecycle nodes started with ``autostart: true``: each
configures (loads and warms up its model) and activates itself, so no lifecycle manager is
needed. Drive them with ``ros2 lifecycle set`` as usual to deactivate or reconfigure.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from energyflow_ros.nodes.params import control_rate_override

PACKAGE = 'energyflow_ros'
DEFAULT_MODEL = 'obstacles2d_energyflow.onnx'


def generate_launch_description() -> LaunchDescription:
    """The launch description: arguments, sim_node, policy_node, reward_node."""
    share = get_package_share_directory(PACKAGE)
    model = LaunchConfiguration('model')
    config = LaunchConfiguration('config')
    arguments = [
        DeclareLaunchArgument('model', default_value=os.path.join(share, 'models',
                                                                  DEFAULT_MODEL),
                              description='exported model (<stem>.onnx)'),
        DeclareLaunchArgument('config', default_value=os.path.join(share, 'config',
                                                                   'policy.yaml'),
                              description='parameter file of policy_node and reward_node'),
        DeclareLaunchArgument('sim', default_value='true',
                              description='start the simulated robot (sim_node)'),
        DeclareLaunchArgument('reward', default_value='true',
                              description='start the reward node'),
        DeclareLaunchArgument('control_rate', default_value='',
                              description="policy command rate (Hz); empty: the config's"),
    ]
    overrides = {'model_path': model, 'autostart': True}
    sim = Node(
        package=PACKAGE, executable='sim_node', name='sim_node', output='screen',
        parameters=[os.path.join(share, 'config', 'sim.yaml')],
        condition=IfCondition(LaunchConfiguration('sim')))

    def policy_node(context, *args, **kwargs):
        # the rate overrides the config only when given (a later parameters entry wins)
        rate = control_rate_override(LaunchConfiguration('control_rate').perform(context))
        return [LifecycleNode(
            package=PACKAGE, executable='policy_node', name='policy_node', namespace='',
            output='screen', parameters=[config, overrides, *rate])]

    policy = OpaqueFunction(function=policy_node)
    reward = LifecycleNode(
        package=PACKAGE, executable='reward_node', name='reward_node', namespace='',
        output='screen', parameters=[config, overrides],
        condition=IfCondition(LaunchConfiguration('reward')))
    return LaunchDescription([*arguments, sim, policy, reward])
