"""Every parameter of the loop-closure node, in one table.

The table is the single source of truth: the node declares its parameters from it (with
descriptions, ranges and choices), reads them through it, and `config/vpr.yaml` is its rendering
(`python -m boq_ros.ros.params > config/vpr.yaml`; a test keeps the two equal). The pose graph
node has a table of its own (`ParamTable`, rendered by `python -m boq_ros.ros.params
pose_graph_node > config/pose_graph.yaml`).

Each parameter has a time at which it takes effect:
- ``startup``: read once when the process starts (read-only);
- ``configure``: read by the lifecycle transition *configure*; changes are refused while the node
  is configured (deactivate and clean up first, then configure again);
- ``live``: applied to the next keyframe.
"""
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from boq_ros.detector import DetectorConfig
from boq_ros.extractor import ModelSettings
from boq_ros.keyframe_map import MapSettings
from boq_ros.keyframes import KeyframePolicy
from boq_ros.pipeline import PipelineConfig
from boq_ros.ros.process import QOS_CHOICES
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
    """The settings only the node has: topics, QoS, map files, outputs, sharing, lifecycle."""

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
        choices=QOS_CHOICES)
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
        choices=QOS_CHOICES)
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
    publish_pose_graph: bool = setting(
        False, 'Publish accepted loops with a metric relative pose as pose_graph_tools_msgs/'
        'PoseGraph edges (Hydra, Kimera-PGMO external loop closures) on pose_graph_topic; '
        'needs pose_graph_tools_msgs (docs/backends.md).', section='Outputs')
    pose_graph_topic: str = setting(
        'external_loop_closures', 'Topic of the PoseGraph edges (reliable, depth 100).',
        section='Outputs')
    pose_graph_robot_ids: list = setting(
        [], 'Robot names (the robot_id of keyframes) in the order of their integer ids in the '
        'pose graph: the i-th is robot i. Empty: one robot, every keyframe is robot 0, and a '
        'loop between keyframes of two robot names is not sent. A loop with a robot not '
        'listed is not sent (both counted in /diagnostics).', section='Outputs', item=str)
    publish_rtabmap: bool = setting(
        False, 'Send accepted loops with a metric relative pose to RTAB-Map as links (type 4, '
        'user closure) through <rtabmap_namespace>/add_link, with node ids from '
        '<rtabmap_namespace>/info; needs rtabmap_msgs (docs/backends.md).', section='Outputs')
    rtabmap_namespace: str = setting(
        'rtabmap', "Namespace of RTAB-Map's node: its add_link service and info topic.",
        section='Outputs')
    rtabmap_stamp_tolerance_s: float = setting(
        0.01, 'Largest gap between a keyframe stamp and the data stamp RTAB-Map announces for '
        'one of its nodes on info for the two to be the same keyframe (the nearest wins).',
        section='Outputs', low=0.0, high=1.0)
    rtabmap_pending_timeout_s: float = setting(
        10.0, 'Seconds a loop waits for RTAB-Map to announce the node ids of its two keyframes '
        '(and for add_link to be available) before it is dropped and counted.',
        section='Outputs', low=0.0, high=3600.0, above_low=True)
    rtabmap_call_timeout_s: float = setting(
        5.0, 'Seconds an add_link call may take before it counts as timed out.',
        section='Outputs', low=0.0, high=600.0, above_low=True)
    publish_markers: bool = setting(
        False, 'Publish accepted loops as visualization_msgs/MarkerArray edges between keyframe '
        'poses.', section='Outputs', when='live')
    publish_debug_image: bool = setting(
        False, 'Publish each accepted query beside its match as an rgb8 image.',
        section='Outputs', when='live')
    diagnostics_period_s: float = setting(1.0, 'Period of the /diagnostics status.',
                                          section='Outputs', low=0.05, high=3600.0,
                                          when='startup')
    share_keyframes: bool = setting(
        False, 'Share every keyframe this node adds to its map with the other robots of the '
        'domain (boq_ros/SharedKeyframe on shared_keyframes_topic), and add theirs to the map as '
        'keyframes of their own robot and session, so that queries find inter-robot loops; '
        'needs robot_id (one per robot) and mode grow or both.', section='Multi-robot')
    shared_keyframes_topic: str = setting(
        '/fleet/keyframes', 'Topic the robots share their keyframes on: absolute, one for the '
        "fleet whatever each node's namespace.", section='Multi-robot')
    shared_keyframes_qos: str = setting(
        'transient_local', 'QoS of the shared keyframes, both ways, always reliable: '
        'transient_local (a robot that joins later receives the last shared_keyframes_qos_depth '
        'keyframes of each robot) or reliable (volatile: only those published while it listens).',
        section='Multi-robot', choices=('transient_local', 'reliable'))
    shared_keyframes_qos_depth: int = setting(
        100, 'Shared keyframes kept for robots that join later, and queued from each robot '
        'while the node is busy (DDS drops older ones).', section='Multi-robot', low=1,
        high=100000)
    shared_descriptor_encoding: str = setting(
        'float32', 'Encoding of the shared descriptors: float32 (exact) or float16 (half the '
        'bytes; cosine similarities move by under 1e-5).', section='Multi-robot',
        choices=('float32', 'float16'))
    share_features: bool = setting(
        True, "Share the keyframes' local features (keypoints, descriptors, intrinsics, depth) "
        'so that the other robots can verify loops with them; without, their verification '
        'rejects every such loop (no_match_features).', section='Multi-robot')
    query_shared_keyframes: bool = setting(
        True, "Also search the map with each other robot's keyframe when it arrives, and "
        "publish at once a loop it closes with one of this robot's keyframes (on "
        "loop_candidates, the query being the other robot's keyframe): found even when this "
        'robot never comes back there, or the keyframe arrives late (a robot out of range, or '
        'one that joined later).', section='Multi-robot')

    def __post_init__(self) -> None:
        check_settings(self)


SETTING_CLASSES = (NodeSettings, ModelSettings, PipelineConfig, KeyframePolicy, DetectorConfig,
                   VerificationSettings, MapSettings)
"""Every class whose settings are node parameters."""
NOT_PARAMETERS = frozenset({'batch_size', 'pca_dim'})
"""Offline-only settings: the node batches one image per camera, and PCA is learned from a whole
map (build it with `boq-ros map build --pca-dim`)."""
SECTION_ORDER = ('Lifecycle', 'Model', 'Cameras', 'Keyframe selection', 'Candidate logic',
                 'Verification', 'Keyframe map', 'Multi-robot', 'Outputs')


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


class ParamTable:
    """The parameters of one node: declared, read and rendered from its settings classes."""

    def __init__(self, classes: Sequence[Any], sections: Sequence[str], *, node_name: str,
                 config_name: str, excluded: frozenset[str] = frozenset(),
                 startup_only: bool = False) -> None:
        """``startup_only``: a plain node that reads every parameter once, at startup."""
        self.classes, self.sections = tuple(classes), tuple(sections)
        self.node_name, self.config_name = node_name, config_name
        self.startup_only = startup_only
        chosen = [replace(s, when='startup') if startup_only else s
                  for s in iter_settings(*classes) if s.name not in excluded]
        # sorted is stable: field order within a section
        self.params: dict[str, Param] = {s.name: Param(s) for s in sorted(
            chosen, key=lambda s: self.sections.index(s.section))}

    def declare(self, node: Any) -> None:
        """Declare every parameter on `node` (an rclpy Node) with its descriptor and default."""
        for p in self.params.values():
            default = Parameter.Type(p.type) if p.default == [] else p.default
            node.declare_parameter(p.name, default, p.descriptor())

    def read(self, node: Any) -> dict[str, Any]:
        """Read and check every parameter; an array overridden with [] reads as an empty list.

        (An empty YAML or command-line list leaves an rclpy parameter unset, whatever its type.)
        """
        values = {}
        for p in self.params.values():
            try:
                value = node.get_parameter(p.name).value
            except ParameterUninitializedException:
                if not isinstance(p.default, list):
                    raise ParameterValueError(f'parameter {p.name} has no value') from None
                value = []
            values[p.name] = p.check(list(value) if isinstance(p.default, list) else value)
        return values

    def _documented(self, choice: Callable[[Any], str], code: Callable[[str], str], when: bool
                    ) -> Iterator[tuple[str | None, Setting, str]]:
        """Each parameter with the section it opens (or None) and its description with notes."""
        section = None
        for p in self.params.values():
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

    def render_yaml(self) -> str:
        """Return the node's config file: every parameter with its default and documentation."""
        out = [
            f'# Parameters of the boq_ros {self.node_name}, with their defaults.',
            '# Generated from the settings declarations (boq_ros/settings.py):',
            f'#   python -m boq_ros.ros.params {self.node_name} > {self.config_name}',
            *(['# Parameters are read once, at startup.'] if self.startup_only else [
                '# Parameters are read when the node is configured (lifecycle transition '
                'configure),',
                '# except those marked live (applied at once, also while active) or startup '
                '(read-only).']),
            '/**:',
            '  ros__parameters:',
        ]
        for section, s, text in self._documented(repr, str, when=not self.startup_only):
            if section:
                out.append(f'    # --- {section} ---')
            out += _wrap(text, '    ')
            out.append(f'    {s.name}: {_yaml_value(s.default)}')
        return '\n'.join(out) + '\n'

    def render_markdown(self) -> str:
        """Return the node's parameter table for docs/ (a test keeps the two equal)."""
        out = ['| parameter | default | read | meaning |', '|---|---|---|---|']
        for section, s, text in self._documented(lambda c: f'`{c}`' if c else "`''`",
                                                 lambda t: f'`{t}`', when=False):
            if section:
                out.append(f'| **{section}** | | | |')
            out.append(f'| `{s.name}` | `{_yaml_value(s.default)}` | {s.when} | {text} |')
        return '\n'.join(out) + '\n'


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


VPR_PARAMS = ParamTable(SETTING_CLASSES, SECTION_ORDER, node_name='vpr_node',
                        config_name='config/vpr.yaml', excluded=NOT_PARAMETERS)
"""The loop-closure node's parameters."""
PARAMS = VPR_PARAMS.params
"""Every loop-closure node parameter, by section."""
declare, read = VPR_PARAMS.declare, VPR_PARAMS.read
render_yaml, render_markdown = VPR_PARAMS.render_yaml, VPR_PARAMS.render_markdown


def _tables() -> dict[str, ParamTable]:
    """Every node's table, by node name (the backend's module imports this one)."""
    from boq_ros.ros.pose_graph_node import PARAMS as BACKEND_PARAMS

    return {t.node_name: t for t in (VPR_PARAMS, BACKEND_PARAMS)}


if __name__ == '__main__':
    import sys

    args = sys.argv[1:]
    table = _tables()[args.pop(0)] if args and not args[0].startswith('-') else VPR_PARAMS
    print(table.render_markdown() if args == ['--markdown'] else table.render_yaml(), end='')
