"""Launch the BoQ loop-closure node.

    ros2 launch boq_ros vpr.launch.py checkpoint:=resnet50-16384 image:=/camera/image_raw
    ros2 launch boq_ros vpr.launch.py use_sim_time:=true map:=office   # bag replay, prebuilt map
    ros2 launch boq_ros vpr.launch.py lifecycle:=true   # wait for a lifecycle manager
    ros2 launch boq_ros vpr.launch.py pose_graph:=true  # with the GTSAM pose graph backend

Every node parameter lives in the config file (default: the package's config/vpr.yaml); the
arguments below override the few that change per run. More cameras: list them in the config's
image_topics / compressed_topics and remap them here or there.
"""
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events.process import ProcessExited
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchContext, LaunchDescription

ARGUMENTS = {
    'config': (PathJoinSubstitution([FindPackageShare('boq_ros'), 'config', 'vpr.yaml']),
               'Parameter file of the node.'),
    'checkpoint': ('', "BoQ checkpoint file or downloaded preset name ('' keeps the config's)."),
    'map': ('', "Map to load, relative to the config's map_directory ('' keeps the config's)."),
    'image': ('image', 'Camera topic the node\'s "image" input is remapped to.'),
    'compressed_image': ('image/compressed',
                         'Topic the node\'s "image/compressed" input is remapped to (used when '
                         "the config's compressed_topics lists image/compressed)."),
    'odom': ('odom', 'Odometry topic the node\'s "odom" input is remapped to.'),
    'keyframes': ('keyframes', 'Keyframe stamp topic of the SLAM system (external mode).'),
    'namespace': ('', 'Namespace of the node (and of its relative topics).'),
    'use_sim_time': ('false', 'Use /clock (bag replay).'),
    'lifecycle': ('false', 'true: a lifecycle node that waits for a lifecycle manager; false: '
                           'the node configures and activates itself.'),
    'log_level': ('info', "Logging level of the node's logger (not of rcl, rmw or DDS)."),
    'pose_graph': ('false', 'true: also start pose_graph_node, the GTSAM pose graph backend fed '
                            "by the node's loops and the same odometry."),
    'pose_graph_config': (PathJoinSubstitution([FindPackageShare('boq_ros'), 'config',
                                                'pose_graph.yaml']),
                          'Parameter file of pose_graph_node.'),
}


def _true(text: str) -> bool:
    if text.lower() not in ('true', 'false'):
        raise ValueError(f'expected true or false, got {text!r}')
    return text.lower() == 'true'


def _logger_name(context: LaunchContext, namespace: str, name: str) -> str:
    """Return the node's logger name: /robot1 and vpr_node give robot1.vpr_node.

    A relative namespace is prefixed with one pushed by an including launch file
    (PushRosNamespace), as launch_ros does for the node's own name.
    """
    if not namespace.startswith('/'):
        namespace = f"{context.launch_configurations.get('ros_namespace', '')}/{namespace}"
    return '.'.join([part for part in namespace.split('/') if part] + [name])


def _fail_on_error_exit(event: ProcessExited, context: LaunchContext) -> None:
    """Make `ros2 launch` exit non-zero when the node exits with an error (e.g. configure failed).

    launch itself returns 0 whatever its processes return; an exception in an event handler is
    what it reports as a failure (one error line, exit status 1).
    """
    if event.returncode != 0:
        raise RuntimeError(f'{event.process_name} exited with status {event.returncode} '
                           '(its log above says why)')


def _node(context: LaunchContext) -> list:
    """Build the node (and the backend) once the arguments are known.

    Only given overrides are passed on.
    """
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    managed = _true(arg['lifecycle'])
    overrides = {'use_sim_time': _true(arg['use_sim_time']), 'autostart': not managed}
    if arg['checkpoint']:
        overrides['checkpoint'] = arg['checkpoint']
    if arg['map']:
        overrides['map_path'] = arg['map']
    kind = LifecycleNode if managed else Node
    logger = _logger_name(context, arg['namespace'], 'vpr_node')
    node = kind(
        package='boq_ros', executable='vpr_node', name='vpr_node', namespace=arg['namespace'],
        output='screen', parameters=[arg['config'], overrides],
        remappings=[('image', arg['image']), ('image/compressed', arg['compressed_image']),
                    ('odom', arg['odom']), ('keyframes', arg['keyframes'])],
        # The level of the node's logger only: a bare `--log-level debug` would turn on every
        # logger of the process (rcl, rmw: hundreds of lines a second).
        arguments=['--ros-args', '--log-level', f"{logger}:={arg['log_level']}"])
    actions = [node, RegisterEventHandler(OnProcessExit(target_action=node,
                                                        on_exit=_fail_on_error_exit))]
    if _true(arg['pose_graph']):
        backend = Node(
            package='boq_ros', executable='pose_graph_node', name='pose_graph_node',
            namespace=arg['namespace'], output='screen',
            parameters=[arg['pose_graph_config'], {'use_sim_time': overrides['use_sim_time']}],
            remappings=[('odom', arg['odom'])],
            arguments=['--ros-args', '--log-level',
                       f"{_logger_name(context, arg['namespace'], 'pose_graph_node')}:="
                       f"{arg['log_level']}"])
        actions += [backend, RegisterEventHandler(OnProcessExit(target_action=backend,
                                                                on_exit=_fail_on_error_exit))]
    return actions


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments, then start the node."""
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()),
        OpaqueFunction(function=_node),
    ])
