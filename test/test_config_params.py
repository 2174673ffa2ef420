"""config/vpr.yaml, the node's declared parameters and launch/vpr.launch.py agree.

The launch file cannot run here (launch is not on PyPI): it is compiled and its arguments are
read from the syntax tree.
"""
import ast
from pathlib import Path

import pytest
from rcl_interfaces.msg import ParameterType
import rclpy
import yaml

from boq_ros.ros import params
from boq_ros.ros.node import VprNode

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config' / 'vpr.yaml'
LAUNCH = ROOT / 'launch' / 'vpr.launch.py'
# Parameters every rclpy node declares itself.
RCLPY_OWN = {'use_sim_time', 'start_type_description_service'}


def _yaml_type(value) -> int:
    if isinstance(value, bool):
        return ParameterType.PARAMETER_BOOL
    if isinstance(value, int):
        return ParameterType.PARAMETER_INTEGER
    if isinstance(value, float):
        return ParameterType.PARAMETER_DOUBLE
    if isinstance(value, str):
        return ParameterType.PARAMETER_STRING
    if value == []:
        return None  # an empty YAML list has no element type
    return {str: ParameterType.PARAMETER_STRING_ARRAY,
            float: ParameterType.PARAMETER_DOUBLE_ARRAY}[type(value[0])]


@pytest.fixture
def declared(ros_domain_id):
    """Parameters as the node declares them, loaded with config/vpr.yaml (no model loaded)."""
    context = rclpy.Context()
    rclpy.init(args=['--ros-args', '--params-file', str(CONFIG)], context=context,
               domain_id=ros_domain_id)
    node = VprNode(context=context)
    try:
        names = [n for n in node._parameters if n not in RCLPY_OWN]
        yield {d.name: d for d in node.describe_parameters(names)}, node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_config_file_is_the_rendered_table():
    assert CONFIG.read_text() == params.render_yaml(), (
        'config/vpr.yaml is out of date: python -m boq_ros.ros.params > config/vpr.yaml')


def test_config_matches_declared_parameters(declared):
    descriptors, node = declared
    section = yaml.safe_load(CONFIG.read_text())['/**']['ros__parameters']
    assert set(section) == set(descriptors) == set(params.PARAMS)
    for name, value in section.items():
        expected = _yaml_type(value)
        assert expected in (None, descriptors[name].type), name
        assert descriptors[name].description, name
    read = params.read(node)  # the YAML values load into the node unchanged
    assert read == section
    assert descriptors['autostart'].read_only and not descriptors['threshold'].read_only
    assert descriptors['threshold'].floating_point_range[0].from_value == -1.0
    assert descriptors['queue_size'].integer_range[0].from_value == 1


def test_choices_are_checked():
    with pytest.raises(params.ParameterValueError, match='mode must be one of'):
        params.PARAMS['mode'].check('sometimes')
    with pytest.raises(params.ParameterValueError, match='6 values'):
        params.PARAMS['relocalization_covariance'].check([1.0, 2.0])


def _launch_tree() -> ast.Module:
    source = LAUNCH.read_text()
    compile(source, str(LAUNCH), 'exec')
    return ast.parse(source)


def test_launch_arguments():
    tree = _launch_tree()
    arguments = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                     and getattr(node.targets[0], 'id', '') == 'ARGUMENTS')
    names = {key.value for key in arguments.keys}
    assert {'config', 'checkpoint', 'map', 'image', 'odom', 'namespace', 'use_sim_time',
            'lifecycle'} <= names
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names}
    assert {('launch.actions', 'DeclareLaunchArgument'), ('launch_ros.actions', 'Node'),
            ('launch_ros.actions', 'LifecycleNode')} <= imported
    # Every parameter the launch file overrides exists in the node.
    overrides = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], 'id', '') == 'overrides')
    overridden = {k.value for k in overrides.keys} | {
        n.targets[0].slice.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
        and isinstance(n.targets[0], ast.Subscript)
        and getattr(n.targets[0].value, 'id', '') == 'overrides'}
    assert overridden == {'checkpoint', 'map_path', 'use_sim_time', 'autostart'}
    assert overridden - {'use_sim_time'} <= set(params.PARAMS)
    # Every argument the node is built from is declared, and every declared one is used.
    read = {n.slice.value for n in ast.walk(tree) if isinstance(n, ast.Subscript)
            and getattr(n.value, 'id', '') == 'arg'}
    assert read == names
    executables = {kw.value.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                   for kw in n.keywords if kw.arg == 'executable'}
    assert executables == {'vpr_node'} and (ROOT / 'scripts' / 'vpr_node').is_file()
    remapped = {e.elts[0].value for n in ast.walk(tree) if isinstance(n, ast.Call)
                for kw in n.keywords if kw.arg == 'remappings' for e in kw.value.elts}
    defaults = params.PARAMS
    assert {defaults['image_topics'].default[0], defaults['odometry_topic'].default,
            defaults['keyframe_topic'].default} <= remapped
