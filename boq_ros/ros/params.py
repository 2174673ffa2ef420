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
from dataclasses import dataclass
from typing import Any, Literal

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from boq_ros.images import DEFAULT_MAX_PIXELS

When = Literal['startup', 'configure', 'live']

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


@dataclass(frozen=True)
class Param:
    """One node parameter: its default, documentation and constraints."""

    name: str
    default: Any
    description: str
    when: When = 'configure'
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    item: type | None = None  # element type of a list parameter

    @property
    def type(self) -> int:
        """The rcl_interfaces ParameterType this parameter is declared with."""
        if isinstance(self.default, list):
            return _ARRAY_TYPES[self.item]
        return _TYPES[type(self.default)]

    def descriptor(self) -> ParameterDescriptor:
        """Build the ParameterDescriptor that `ros2 param describe` shows."""
        desc = ParameterDescriptor(
            name=self.name, type=self.type, description=self.description,
            read_only=self.when == 'startup', dynamic_typing=False)
        notes = []
        if self.choices:
            notes.append('one of: ' + ', '.join(repr(c) for c in self.choices))
        notes.append({'startup': 'read at startup',
                      'configure': 'read at configure; refused while configured',
                      'live': 'applied at once'}[self.when])
        desc.additional_constraints = '; '.join(notes)
        if self.low is not None:
            if isinstance(self.default, int) and not isinstance(self.default, bool):
                desc.integer_range = [IntegerRange(
                    from_value=int(self.low), to_value=int(self.high), step=0)]
            else:
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(self.low), to_value=float(self.high), step=0.0)]
        return desc

    def check(self, value: Any) -> None:
        """Refuse a value outside the choices (rclpy itself enforces types and ranges)."""
        if self.choices and value not in self.choices:
            raise ParameterValueError(
                f'parameter {self.name} must be one of {list(self.choices)}, got {value!r}')
        if self.item is float and isinstance(value, list) and self.name in _LENGTHS:
            if len(value) != _LENGTHS[self.name]:
                raise ParameterValueError(f'parameter {self.name} needs {_LENGTHS[self.name]} '
                                          f'values, got {len(value)}')


class ParameterValueError(ValueError):
    """Raised for a parameter value the node cannot use; the message names the parameter."""


_BIG = 2 ** 31 - 1
_LENGTHS = {'relocalization_covariance': 6}

SECTIONS: tuple[tuple[str, tuple[Param, ...]], ...] = (
    ('Lifecycle', (
        Param('autostart', True,
              'Configure and activate at start (a plain node). false: wait for a lifecycle '
              'manager to drive the transitions.', when='startup'),
    )),
    ('Model', (
        Param('checkpoint', '',
              'BoQ checkpoint: a .pth file as released by the BoQ authors, or the name of an '
              'already downloaded preset (resnet50-16384, dinov2-12288). The node never '
              'downloads.'),
        Param('preset', '', "Model preset; '' infers it from the checkpoint."),
        Param('device', 'auto', "Inference device: 'auto' (CUDA when present), 'cpu', "
                                "'cuda', 'cuda:N'."),
        Param('precision', 'fp32', 'Inference precision.', choices=('fp32', 'fp16', 'bf16')),
        Param('resize_policy', '',
              "Image resize policy: 'height' keeps the aspect ratio, 'square' is the BoQ "
              "authors' fixed square; '' takes the loaded map's policy, else 'height'.",
              choices=('', 'height', 'square')),
        Param('input_size', 0,
              'Image height (height policy) or side (square policy) fed to the model; 0 takes '
              "the loaded map's size, else the preset's default (384 ResNet-50, 322 DINOv2).",
              low=0, high=4096),
    )),
    ('Cameras', (
        Param('image_topics', ['image'],
              'sensor_msgs/Image topics, one per camera (relative names follow the namespace '
              'and remaps). Encodings: rgb8, bgr8, rgba8, bgra8, mono8, mono16, 16UC1, bayer_*, '
              'yuv422.', item=str),
        Param('compressed_topics', [],
              'sensor_msgs/CompressedImage topics (JPEG or PNG), one per camera.', item=str),
        Param('input_qos', 'sensor_data',
              'QoS of the camera subscriptions: sensor_data (best effort, as most cameras '
              'publish), reliable, or system_default.',
              choices=('sensor_data', 'reliable', 'system_default')),
        Param('input_qos_depth', 5, 'History depth of the camera subscriptions.',
              low=1, high=1000),
        Param('queue_size', 1,
              'Frames kept per camera while the worker is busy; the oldest is dropped (and '
              'counted) when a newer frame arrives.', low=1, high=100),
        Param('max_image_pixels', DEFAULT_MAX_PIXELS,
              'Largest image (width x height) accepted; larger ones are refused before any '
              'allocation.', low=1, high=2 ** 62),
    )),
    ('Keyframe selection', (
        Param('keyframe_mode', 'every_frame',
              'Which frames become keyframes: every frame, one per keyframe_interval_s per '
              'camera, one per keyframe_distance_m or keyframe_angle_rad of odometry, or the '
              'frames whose stamps the SLAM system publishes on keyframe_topic.',
              choices=('every_frame', 'interval', 'distance', 'external')),
        Param('keyframe_interval_s', 1.0,
              'Seconds between keyframes (interval mode; must be > 0).', low=0.0, high=1e6),
        Param('keyframe_distance_m', 1.0,
              'Metres travelled between keyframes (distance mode; must be > 0).',
              low=0.0, high=1e6),
        Param('keyframe_angle_rad', 0.2,
              'Radians turned between keyframes (distance mode; must be > 0).',
              low=0.0, high=6.3),
        Param('odometry_topic', 'odom',
              "nav_msgs/Odometry topic: keyframe poses and distance mode; '' for none.",),
        Param('keyframe_topic', 'keyframes',
              'std_msgs/Header topic (reliable) of the stamps of the images the SLAM system '
              'made keyframes (external mode).'),
        Param('keyframe_stamp_tolerance_s', 0.01,
              'Largest gap between a published keyframe stamp and the image it selects.',
              low=0.0, high=10.0),
        Param('keyframe_wait_frames', 30,
              'Frames kept per camera until the SLAM system publishes their stamps (external '
              'mode).', low=1, high=10000),
        Param('pose_tolerance_s', 0.1,
              'Largest gap between an image stamp and the odometry used as its pose.',
              low=0.0, high=10.0),
    )),
    ('Candidate logic', (
        Param('mode', 'grow',
              'grow: live loop closure, keyframes join the map; static: relocalisation in a '
              'prebuilt map that never changes; both: prebuilt map plus a new session that '
              'grows.', choices=('grow', 'static', 'both')),
        Param('top_k', 5, 'Candidates published per query.', when='live', low=1, high=1000),
        Param('exclusion_seconds', 30.0,
              "Keyframes of the query's own session newer than this are never candidates.",
              when='live', low=0.0, high=1e9),
        Param('exclusion_keyframes', 50,
              "The query session's last N keyframes are never candidates.",
              when='live', low=0, high=_BIG),
        Param('threshold_mode', 'fixed',
              "fixed: similarity >= threshold; adaptive: also >= the query's lowest similarity "
              'to its own last adaptive_window keyframes minus adaptive_offset.',
              when='live', choices=('fixed', 'adaptive')),
        Param('threshold', 0.6, 'Cosine similarity a candidate needs.', when='live',
              low=-1.0, high=1.0),
        Param('adaptive_window', 5, 'Recent keyframes of the adaptive threshold.',
              low=1, high=10000),
        Param('adaptive_offset', 0.0, 'Slack subtracted from the adaptive threshold.',
              when='live', low=0.0, high=2.0),
        Param('min_margin', 0.0,
              'Best similarity minus the best rival outside its region must reach this.',
              when='live', low=0.0, high=2.0),
        Param('consistency', 1,
              'Consecutive queries that must match the same region before one is accepted.',
              when='live', low=1, high=1000),
        Param('consistency_keyframes', 10,
              'Keyframes either side of a match that count as its region.',
              when='live', low=0, high=100000),
    )),
    ('Keyframe map', (
        Param('map_directory', '~/.ros/boq_ros/maps',
              'The only directory the node reads maps from and writes maps to.'),
        Param('map_path', '',
              "Map loaded at configure, relative to map_directory; '' starts an empty map. "
              'Also the default of the save_map service.'),
        Param('session', '',
              "Name of this run in the map; '' makes one from the start time."),
        Param('robot_id', '', 'Robot name stored with every keyframe.'),
        Param('index_kind', '',
              "Map search index (docs/map.md); '' keeps a loaded map's index, else flat (exact).",
              choices=('', 'flat', 'flat_fp16', 'hnsw', 'ivfpq')),
        Param('index_device', 'cpu', "Where the map is searched: 'cpu' or 'cuda[:N]' (flat "
                                     'kinds only).'),
    )),
    ('Outputs', (
        Param('publish_pose', True,
              'Publish the matched keyframe pose (PoseWithCovarianceStamped) for each accepted '
              'candidate whose keyframe has a pose.', when='live'),
        Param('relocalization_covariance', [1.0, 1.0, 1.0, 0.1, 0.1, 0.1],
              'Diagonal of the relocalisation pose covariance (x y z roll pitch yaw).',
              when='live', item=float),
        Param('publish_lio_sam', False,
              'Publish accepted loops as LIO-SAM pairs [t_query, t_match] (Float64MultiArray) '
              'on lio_loop/loop_closure_detection.', when='live'),
        Param('publish_markers', False,
              'Publish accepted loops as visualization_msgs/MarkerArray edges between keyframe '
              'poses.', when='live'),
        Param('publish_debug_image', False,
              'Publish each accepted query beside its match as an rgb8 image.', when='live'),
        Param('diagnostics_period_s', 1.0, 'Period of the /diagnostics status.',
              when='startup', low=0.05, high=3600.0),
    )),
)

PARAMS: dict[str, Param] = {p.name: p for _, group in SECTIONS for p in group}


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
        value = list(value) if isinstance(p.default, list) else value
        p.check(value)
        values[p.name] = value
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


def render_yaml() -> str:
    """Return config/vpr.yaml: every parameter with its default and documentation."""
    out = [
        '# Parameters of the boq_ros loop-closure node (vpr_node), with their defaults.',
        '# Generated from boq_ros/ros/params.py: python -m boq_ros.ros.params > config/vpr.yaml',
        '# Parameters are read when the node is configured (lifecycle transition configure),',
        '# except those marked live (applied at once, also while active) or startup (read-only).',
        '/**:',
        '  ros__parameters:',
    ]
    for title, group in SECTIONS:
        out.append(f'    # --- {title} ---')
        for p in group:
            notes = []
            if p.choices:
                notes.append('one of ' + ', '.join(repr(c) for c in p.choices))
            if p.low is not None:
                notes.append(f'range [{p.low}, {p.high}]')
            if p.when != 'configure':
                notes.append(p.when)
            text = p.description + (f' ({"; ".join(notes)})' if notes else '')
            out += _wrap(text, '    ')
            out.append(f'    {p.name}: {_yaml_value(p.default)}')
    return '\n'.join(out) + '\n'


if __name__ == '__main__':
    print(render_yaml(), end='')
