"""config/vpr.yaml and config/pose_graph.yaml agree with the nodes' declared parameters.

The launch file is tested by running it (`ros2 launch`, test_launch.py).
"""
from pathlib import Path

import pytest
from rcl_interfaces.msg import ParameterType
import rclpy
import yaml

from boq_ros.ros import params
from boq_ros.ros.node import VprNode

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config' / 'vpr.yaml'
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


def test_node_doc_table_is_the_rendered_table():
    text = (ROOT / 'docs' / 'node.md').read_text()
    assert params.render_markdown() in text, (
        'docs/node.md parameter table is out of date: python -m boq_ros.ros.params --markdown')


def test_backend_config_is_the_rendered_table_and_loads_into_the_backend(ros_domain_id):
    from boq_ros.ros.pose_graph_node import PARAMS, PoseGraphNode

    config = ROOT / 'config' / 'pose_graph.yaml'
    assert config.read_text() == PARAMS.render_yaml(), (
        'config/pose_graph.yaml is out of date: python -m boq_ros.ros.params pose_graph_node '
        '> config/pose_graph.yaml')
    assert PARAMS.render_markdown() in (ROOT / 'docs' / 'backends.md').read_text(), (
        'docs/backends.md parameter table is out of date: python -m boq_ros.ros.params '
        'pose_graph_node --markdown')
    context = rclpy.Context()
    rclpy.init(args=['--ros-args', '--params-file', str(config)], context=context,
               domain_id=ros_domain_id)
    node = PoseGraphNode(context=context)
    try:
        section = yaml.safe_load(config.read_text())['/**']['ros__parameters']
        assert PARAMS.read(node) == section
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
