"""Every parameter of the loop-closure node, in one table.

The table is the single source of truth: the node declares its parameters from it (with
descriptions, ranges and choices), reads them through it, and `config/vpr.yaml` is its rendering
(`python -m boq_ros.ros.params > config/vpr.yaml`; a test keeps the two equal).

Each parameter has a time at which it takes effect:
- ``startup``: read once when the process starts (read-only);
- ``configure``: read by the lifecycle transition *configure*; changes are refused while the node
  is configured (deactivate and clean up first, then configure again);
- ``live``: applied to the next keyframe.
"""
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from boq_ros.detector import DetectorConfig
from boq_ros.extractor import ModelSettings
from boq_ros.keyframe_map import MapSettings
from boq_ros.keyframes import KeyframePolicy
from boq_ros.pipeline import PipelineConfig
from boq_ros.settings import (
    Setting,
    SettingError,
    VerificationSettings,
    check_settings,
    iter_settings,
    setting,
)

_TYPES: dict[type, int] = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAY_TYPES: dict[type, int] = {
    str: ParameterType.PARAMETER_STRING_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
}


class ParameterValueError(SettingError):
    """Raised for a parameter value the node cannot use; the message names the parameter."""


@dataclass(frozen=True)
class NodeSettings:
    """The settings only the node has: topics, QoS, map files, outputs, lifecycle."""

    autostart: bool = setting(
        True, 'Configure and activate at start (a plain node). false: wait for a lifecycle '
        'manager to drive the transitions.', section='Lifecycle', when='startup')
    image_topics: list = setting(
        ['image'], 'sensor_msgs/Image topics, one per camera (relative names follow the '
        'namespace and remaps). Encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 16UC1, '
        'bayer_*, yuv422.', section='Cameras', item=str)
    compressed_topics: list = setting(
        [], 'sensor_msgs/CompressedImage topics (JPEG or PNG), one per camera.',
        section='Cameras', item=str)
    camera_info_topics: list = setting(
        [], 'sensor_msgs/CameraInfo topics, one per camera in the order image_topics then '
        "compressed_topics; empty: each camera's conventional camera_info beside its image "
        "topic (image_raw -> camera_info). Without intrinsics verification is uncalibrated "
        '(an inlier test, no pose).', section='Cameras', item=str)
    depth_topics: list = setting(
        [], 'Depth images aligned to the cameras (sensor_msgs/Image 16UC1 mm or 32FC1 m), one '
        "per camera in the same order ('' for a camera without); empty: no depth. With depth "
        'the relative pose is metric (PnP).', section='Cameras', item=str)
    input_qos: str = setting(
        'sensor_data', 'QoS of the camera subscriptions: sensor_data (best effort, as most '
        'cameras publish), reliable, or system_default.', section='Cameras',
        choices=('sensor_data', 'reliable', 'system_default'))
    input_qos_depth: int = setting(5, 'History depth of the camera subscriptions.',
                                   section='Cameras', low=1, high=1000)
    queue_size: int = setting(
        1, 'Frames kept per camera while the worker is busy; the oldest is dropped (and '
        'counted) when a newer frame arrives.', section='Cameras', low=1, high=100)
    odometry_topic: str = setting(
        'odom', "nav_msgs/Odometry topic: keyframe poses and distance mode; '' for none.",
        section='Keyframe selection')
    odometry_qos: str = setting(
        'sensor_data', 'QoS of the odometry subscription: sensor_data (best effort: matches '
        'any publisher), reliable (nothing lost from a reliable publisher, e.g. a replay), or '
        'system_default.', section='Keyframe selection',
        choices=('sensor_data', 'reliable', 'system_default'))
    keyframe_topic: str = setting(
        'keyframes', 'std_msgs/Header topic (reliable) of the stamps of the images the SLAM '
        'system made keyframes (external mode).', section='Keyframe selection')
    map_directory: str = setting(
        '~/.ros/boq_ros/maps', 'The only directory the node reads maps from and writes maps to.',
        section='Keyframe map')
    map_path: str = setting(
        '', "Map loaded at configure, relative to map_directory; '' starts an empty map. Also "
        'the default of the save_map service.', section='Keyframe map')
    publish_pose: bool = setting(
        True, 'Publish the matched keyframe pose (PoseWithCovarianceStamped) for each accepted '
        'candidate whose keyframe has a pose.', section='Outputs', when='live')
    relocalization_covariance: list = setting(
        [1.0, 1.0, 1.0, 0.1, 0.1, 0.1], 'Diagonal of the relocalisation pose covariance (x y z '
        'roll pitch yaw): six variances, each finite and >= 0.', section='Outputs', item=float,
        length=6, low=0.0, high=1e9, when='live')
    publish_lio_sam: bool = setting(
        False, 'Publish accepted loops as LIO-SAM pairs [t_query, t_match] (Float64MultiArray) '
        'on lio_loop/loop_closure_detection.', section='Outputs', when='live')
    publish_markers: bool = setting(
        False, 'Publish accepted loops as visualization_msgs/MarkerArray edges between keyframe '
        'poses.', section='Outputs', when='live')
    publish_debug_image: bool = setting(
        False, 'Publish each accepted query beside its match as an rgb8 image.',
        section='Outputs', when='live')
    diagnostics_period_s: float = setting(1.0, 'Period of the /diagnostics status.',
                                          section='Outputs', low=0.05, high=3600.0,
                                          when='startup')

    def __post_init__(self) -> None:
        check_settings(self)


SETTING_CLASSES = (NodeSettings, ModelSettings, PipelineConfig, KeyframePolicy, DetectorConfig,
                   VerificationSettings, MapSettings)
"""Every class whose settings are node parameters."""
NOT_PARAMETERS = frozenset({'batch_size', 'pca_dim'})
"""Offline-only settings: the node batches one image per camera, and PCA is learned from a whole
map (build it with `boq-ros map build --pca-dim`)."""
SECTION_ORDER = ('Lifecycle', 'Model', 'Cameras', 'Keyframe selection', 'Candidate logic',
                 'Verification', 'Keyframe map', 'Outputs')


@dataclass(frozen=True)
class Param:
    """One node parameter: a setting of the core or of the node, as ROS declares it."""

    setting: Setting

    @property
    def name(self) -> str:
        return self.setting.name

    @property
    def default(self) -> Any:
        return self.setting.default

    @property
    def when(self) -> str:
        return self.setting.when

    @property
    def type(self) -> int:
        """The rcl_interfaces ParameterType this parameter is declared with."""
        if isinstance(self.default, list):
            return _ARRAY_TYPES[self.setting.item]
        return _TYPES[type(self.default)]

    def descriptor(self) -> ParameterDescriptor:
        """Build the ParameterDescriptor that `ros2 param describe` shows."""
        s = self.setting
        desc = ParameterDescriptor(
            name=s.name, type=self.type, description=s.description,
            read_only=s.when == 'startup', dynamic_typing=False)
        notes = []
        if s.choices:
            notes.append('one of: ' + ', '.join(repr(c) for c in s.choices))
        if s.above_low:
            notes.append(f'must be > {s.low}')
        notes.append({'startup': 'read at startup',
                      'configure': 'read at configure; refused while configured',
                      'live': 'applied at once'}[s.when])
        desc.additional_constraints = '; '.join(notes)
        if s.low is not None and s.kind is list:
            notes.insert(0, f'each value in {s.range_text()}')  # rclpy ranges are for scalars
            desc.additional_constraints = '; '.join(notes)
        elif s.low is not None:
            if s.kind is int:
                desc.integer_range = [IntegerRange(
                    from_value=int(s.low), to_value=int(s.high), step=0)]
            else:
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(s.low), to_value=float(s.high), step=0.0)]
        return desc

    def check(self, value: Any) -> Any:
        """Return the value if the setting accepts it, else raise ParameterValueError."""
        try:
            return self.setting.check(value)
        except SettingError as err:
            raise ParameterValueError(f'parameter {err}') from None


PARAMS: dict[str, Param] = {s.name: Param(s) for s in sorted(
    (s for s in iter_settings(*SETTING_CLASSES) if s.name not in NOT_PARAMETERS),
    key=lambda s: SECTION_ORDER.index(s.section))}
"""Every node parameter, by section (sorted is stable: field order within a section)."""


def declare(node: Any) -> None:
    """Declare every parameter on `node` (an rclpy Node) with its descriptor and default."""
    for p in PARAMS.values():
        default = Parameter.Type(p.type) if p.default == [] else p.default
        node.declare_parameter(p.name, default, p.descriptor())


def read(node: Any) -> dict[str, Any]:
    """Read and check every parameter; an array overridden with [] reads as an empty list.

    (An empty YAML or command-line list leaves an rclpy parameter unset, whatever its type.)
    """
    values = {}
    for p in PARAMS.values():
        try:
            value = node.get_parameter(p.name).value
        except ParameterUninitializedException:
            if not isinstance(p.default, list):
                raise ParameterValueError(f'parameter {p.name} has no value') from None
            value = []
        values[p.name] = p.check(list(value) if isinstance(p.default, list) else value)
    return values


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, list):
        return '[' + ', '.join(_yaml_value(v) for v in value) + ']'
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def _wrap(text: str, indent: str, width: int = 99) -> list[str]:
    lines: list[str] = []
    line = indent + '#'
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent + '#'
        line += ' ' + word
    lines.append(line)
    return lines


def _documented(choice: Callable[[Any], str], code: Callable[[str], str], when: bool
                ) -> Iterator[tuple[str | None, Setting, str]]:
    """Each parameter with the section it opens (or None) and its description with notes."""
    section = None
    for p in PARAMS.values():
        s = p.setting
        opens = s.section if s.section != section else None
        section = s.section
        notes = []
        if s.choices:
            notes.append('one of ' + ', '.join(choice(c) for c in s.choices))
        if s.low is not None:
            notes.append(f'range {code(s.range_text())}')
        if when and s.when != 'configure':
            notes.append(s.when)
        yield opens, s, s.description + (f' ({"; ".join(notes)})' if notes else '')


def render_yaml() -> str:
    """Return config/vpr.yaml: every parameter with its default and documentation."""
    out = [
        '# Parameters of the boq_ros loop-closure node (vpr_node), with their defaults.',
        '# Generated from the settings declarations (boq_ros/settings.py):',
        '#   python -m boq_ros.ros.params > config/vpr.yaml',
        '# Parameters are read when the node is configured (lifecycle transition configure),',
        '# except those marked live (applied at once, also while active) or startup (read-only).',
        '/**:',
        '  ros__parameters:',
    ]
    for section, s, text in _documented(repr, str, when=True):
        if section:
            out.append(f'    # --- {section} ---')
        out += _wrap(text, '    ')
        out.append(f'    {s.name}: {_yaml_value(s.default)}')
    return '\n'.join(out) + '\n'


def render_markdown() -> str:
    """Return the parameter table of docs/node.md (a test keeps the two equal)."""
    out = ['| parameter | default | read | meaning |', '|---|---|---|---|']
    for section, s, text in _documented(lambda c: f'`{c}`' if c else "`''`",
                                        lambda t: f'`{t}`', when=False):
        if section:
            out.append(f'| **{section}** | | | |')
        out.append(f'| `{s.name}` | `{_yaml_value(s.default)}` | {s.when} | {text} |')
    return '\n'.join(out) + '\n'


if __name__ == '__main__':
    import sys

    print(render_markdown() if sys.argv[1:] == ['--markdown'] else render_yaml(), end='')
