"""One settings vocabulary: every setting's name, type, range, choices and default, written once.

The core's configuration dataclasses, all here (``ModelSettings``, ``PipelineConfig``,
``KeyframePolicy``, ``DetectorConfig``, ``MapSettings``; the modules that use them re-export
them), declare their fields with :func:`setting`. This module imports nothing heavy, so the CLI
can build its flags without loading torch or faiss. The node's ROS
parameters (``boq_ros/ros/params.py``), ``config/vpr.yaml`` and the ``boq-ros`` flags
(``boq_ros/cli/options.py``) are generated from those declarations, so a setting has one name,
one default and one range on every surface: field ``keyframe_distance_m`` is ROS parameter
``keyframe_distance_m`` and flag ``--keyframe-distance-m``.
"""
from collections.abc import Iterator, Sequence
from dataclasses import Field, dataclass, field, fields, is_dataclass, replace
import math
import re
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from boq_ros.extractor import Extractor
    from boq_ros.keyframe_map.index import IndexSpec
    from boq_ros.model import BoQModel
    from boq_ros.preprocess import PreprocessConfig

When = Literal['startup', 'configure', 'live']
"""When the node reads a setting: at process start, at the configure transition, or at once."""


class SettingError(ValueError):
    """Raised for a setting value out of its type, range or choices; the message names it."""


@dataclass(frozen=True)
class Setting:
    """One setting: its name, default and documentation, and the values it accepts."""

    name: str
    default: Any
    description: str
    section: str
    low: float | None = None
    high: float | None = None
    above_low: bool = False  # the range excludes `low` (e.g. an interval must be > 0)
    choices: tuple[Any, ...] = ()
    item: type | None = None  # element type of a list setting
    length: int | None = None  # exact length of a list setting
    when: When = 'configure'

    @property
    def kind(self) -> type:
        """The Python type of the value (list for list settings)."""
        return type(self.default)

    def check(self, value: Any) -> Any:
        """Return `value` if this setting accepts it, else raise SettingError naming the cause."""
        if self.kind is list:  # rclpy hands over array.array for double arrays
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise SettingError(f'{self.name} must be a list, got {value!r}')
            if self.length is not None and len(value) != self.length:
                raise SettingError(
                    f'{self.name} needs {self.length} values, got {len(value)}')
            return [self._check_one(v, self.item) for v in value]  # range: of each value
        return self._check_one(value, self.kind)

    def _check_one(self, value: Any, kind: type) -> Any:
        _check_type(self.name, kind, value)
        if self.choices and value not in self.choices:
            raise SettingError(f'{self.name} must be one of '
                               f'{", ".join(repr(c) for c in self.choices)}, got {value!r}')
        if self.low is not None:
            below = value <= self.low if self.above_low else value < self.low
            if below or value > self.high:
                opening = '(' if self.above_low else '['
                raise SettingError(f'{self.name} must be in {opening}{_num(self.low)}, '
                                   f'{_num(self.high)}], got {value!r}')
        return value

    def range_text(self) -> str:
        """Return the accepted range as text, e.g. '(0, 1e+06]' ('' when unbounded)."""
        if self.low is None:
            return ''
        return f'{"(" if self.above_low else "["}{_num(self.low)}, {_num(self.high)}]'


def _num(value: float) -> str:
    return f'{value:g}' if isinstance(value, float) else str(value)


def _check_type(name: str, kind: type, value: Any) -> None:
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (
            not math.isnan(value))
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise SettingError(f'{name} must be {KIND_NAMES[kind]}, got {value!r}')


KIND_NAMES = {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string'}
"""How an error message names the type a setting wants."""


def setting(default: Any, description: str, *, section: str, low: float | None = None,
            high: float | None = None, above_low: bool = False, choices: tuple = (),
            item: type | None = None, length: int | None = None,
            when: When = 'configure') -> Any:
    """Declare a dataclass field as a setting (use as the field's default)."""
    if (low is None) != (high is None):
        raise TypeError('give both low and high, or neither')
    info = dict(default=default, description=description, section=section, low=low,
                high=high, above_low=above_low, choices=tuple(choices), item=item,
                length=length, when=when)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={'setting': info})
    return field(default=default, metadata={'setting': info})


def _setting_of(f: Field) -> Setting | None:
    info = f.metadata.get('setting')
    return None if info is None else Setting(name=f.name, **info)


def settings_of(cls: Any) -> tuple[Setting, ...]:
    """Return the settings a configuration dataclass (or instance) declares, in order."""
    if not is_dataclass(cls):
        raise TypeError(f'{cls!r} is not a dataclass')
    return tuple(s for s in map(_setting_of, fields(cls)) if s is not None)


def check_settings(obj: Any) -> None:
    """Check every setting field of a configuration dataclass instance (SettingError)."""
    for s in settings_of(obj):
        s.check(getattr(obj, s.name))


def iter_settings(*classes: Any) -> Iterator[Setting]:
    """Yield the settings of several configuration classes, refusing a name twice."""
    seen: dict[str, Any] = {}
    for cls in classes:
        for s in settings_of(cls):
            if s.name in seen:
                raise TypeError(f'setting {s.name} is declared by both {seen[s.name].__name__} '
                                f'and {cls.__name__}')
            seen[s.name] = cls
            yield s


def from_values(cls: Any, values: dict[str, Any], **overrides: Any) -> Any:
    """Build configuration class `cls` from a flat name -> value mapping (its own names only)."""
    names = {f.name for f in fields(cls)}
    return cls(**{**{k: v for k, v in values.items() if k in names}, **overrides})


# -- the vocabulary: every setting of the core, by concern ----------------------------------
PRESET_NAMES = ('resnet50-16384', 'dinov2-12288')
"""The released BoQ presets (boq_ros.model.presets holds their architectures)."""
PRECISIONS = ('fp32', 'fp16', 'bf16')
RUNTIMES = ('auto', 'torch', 'openvino', 'onnxruntime', 'tensorrt', 'compile')
"""Inference runtimes (boq_ros.runtimes): 'auto' takes the fastest installed one that passes the
fidelity check against torch fp32."""
RESIZE_POLICIES = ('height', 'square')
KEYFRAME_MODES = ('every_frame', 'interval', 'distance', 'external')
INDEX_KINDS = ('flat', 'flat_fp16', 'hnsw', 'ivfpq', 'ivfsq8')
FEATURE_KIND_NAMES = ('sift', 'orb', 'xfeat', 'xfeat_lighterglue', 'aliked_lightglue')
"""Local feature kinds of geometric verification (boq_ros.verification.features makes them)."""
_BIG = 2 ** 31 - 1
DEFAULT_MAX_PIXELS = 8192 * 8192
"""Largest image (width x height) decoded unless the caller allows more."""


MIN_INPUT_SIZE = 16
_DEVICE = re.compile(r'auto|cpu|cuda(:\d+)?')


@dataclass(frozen=True)
class ModelSettings:
    """Which model runs where, and the image size it sees: what every command and the node ask."""

    checkpoint: str = setting(
        '', 'BoQ checkpoint: a .pth file as released by the BoQ authors, or the name of an '
        'already downloaded preset (resnet50-16384, dinov2-12288). Never downloads.',
        section='Model')
    preset: str = setting('', "Model preset; '' infers it from the checkpoint.",
                          section='Model', choices=('', *PRESET_NAMES))
    device: str = setting('auto', "Inference device: 'auto' (CUDA when present), 'cpu', "
                                  "'cuda', 'cuda:N'.", section='Model')
    precision: str = setting('fp32', 'Inference precision.', section='Model',
                             choices=PRECISIONS)
    runtime: str = setting(
        'auto', "Inference runtime: 'auto' takes the fastest installed one that reproduces the "
        'torch fp32 descriptors at each input shape (CPU: openvino, onnxruntime, torch; CUDA: '
        "tensorrt, torch); 'torch', 'openvino', 'onnxruntime' (CPU), 'tensorrt', 'compile' "
        '(CUDA) force one. Exported models are cached under ~/.cache/boq_ros/runtimes.',
        section='Model', choices=RUNTIMES)
    resize_policy: str = setting(
        '', "Image resize policy: 'height' keeps the aspect ratio, 'square' is the BoQ "
        "authors' fixed square; '' takes the loaded map's policy, else 'height'.",
        section='Model', choices=('', *RESIZE_POLICIES))
    input_size: int = setting(
        0, 'Image height (height policy) or side (square policy) fed to the model, rounded to '
        "the backbone's patch multiple (14 for DINOv2); 0 takes the loaded map's size, else "
        f"the preset's default (384 ResNet-50, 322 DINOv2); else at least {MIN_INPUT_SIZE}.",
        section='Model', low=0, high=4096)

    def __post_init__(self) -> None:
        check_settings(self)
        if not _DEVICE.fullmatch(self.device):
            raise SettingError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                               f'got {self.device!r}')
        if 0 < self.input_size < MIN_INPUT_SIZE:
            raise SettingError(f'input_size must be 0 (the default) or >= {MIN_INPUT_SIZE}, '
                               f'got {self.input_size}')

    def load(self) -> 'BoQModel':
        """Load the checkpoint (strictly; see boq_ros.model.load_boq)."""
        from boq_ros.model import load_boq  # noqa: PLC0415 (torch: only when a model runs)

        if not self.checkpoint:
            raise SettingError('checkpoint is empty: give a BoQ checkpoint file or preset name')
        return load_boq(self.checkpoint, preset=self.preset or None)

    def preprocess_for(self, preset: str, stored: dict | None = None) -> 'PreprocessConfig':
        """Pick the resize settings: a map's (`stored`) win over defaults, never over set ones."""
        from boq_ros.preprocess import PreprocessConfig  # noqa: PLC0415

        if stored is not None:
            config = PreprocessConfig.from_dict(stored)
            if (self.resize_policy and self.resize_policy != config.policy) or (
                    self.input_size and self.input_size != config.size):
                raise SettingError(
                    f'the map was built with resize_policy {config.policy!r} and input_size '
                    f'{config.size}, the settings ask for {self.resize_policy!r} and '
                    f"{self.input_size}: leave them at '' and 0 to use the map's")
            return config
        return PreprocessConfig.default_for(preset, self.resize_policy or 'height').resized(
            self.input_size)

    def extractor(self, model: 'BoQModel', batch_size: int = 1,
                  stored: dict | None = None) -> 'Extractor':
        """Make the extractor for `model` (`stored`: a loaded map's preprocessing)."""
        from boq_ros.extractor import Extractor  # noqa: PLC0415

        return Extractor(model, device=self.device, precision=self.precision,
                         runtime=self.runtime,
                         preprocess=self.preprocess_for(model.config.name, stored),
                         batch_size=batch_size)


@dataclass(frozen=True)
class PipelineConfig:
    """Limits and batching of the pipeline."""

    max_image_pixels: int = setting(
        DEFAULT_MAX_PIXELS, 'Largest image (width x height) accepted; larger ones are refused '
        'before any allocation.', section='Cameras', low=1, high=2 ** 62)
    batch_size: int = setting(16, 'Images per forward pass when describing a recording.',
                              section='Model', low=1, high=4096)
    depth_stamp_tolerance_s: float = setting(
        0.005, 'Largest gap between an image stamp and the aligned depth image taken with it; '
        'a keyframe of a camera with a depth topic waits (like for its pose) until that depth '
        'arrived or the depth stream passed its stamp.', section='Cameras', low=0.0, high=1.0)
    time_jump_s: float = setting(
        10.0, 'A stamp this far behind the newest of its stream (camera, odometry, depth, '
        'keyframe stamps), or ahead of it by more than this plus the time that passed, is an '
        'outlier: refused and counted, until 3 in a row agree on the jump: then it is a new '
        'time base (bag loop, simulation reset) and what was kept of the old one is forgotten.',
        section='Cameras', low=0.0, high=1e9, above_low=True)

    def __post_init__(self) -> None:
        check_settings(self)


class KeyframeError(SettingError):
    """Raised for an invalid keyframe policy or pose."""


@dataclass(frozen=True)
class KeyframePolicy:
    """When to take a keyframe; the thresholds of other modes are ignored.

    ``distance`` takes a keyframe after ``keyframe_distance_m`` of travel or
    ``keyframe_angle_rad`` of rotation, using the frame's pose (see ``PoseBuffer``).
    ``external`` takes the frame whose stamp is within ``keyframe_stamp_tolerance_s`` of a stamp
    given to :meth:`KeyframeSelector.add_external`.
    """

    keyframe_mode: str = setting(
        'every_frame', 'Which frames become keyframes: every frame, one per keyframe_interval_s '
        'per camera, one per keyframe_distance_m or keyframe_angle_rad of travel, or the frames '
        'whose stamps the SLAM system publishes on keyframe_topic.', section='Keyframe selection',
        choices=KEYFRAME_MODES)
    keyframe_interval_s: float = setting(
        1.0, 'Seconds between keyframes (interval mode).', section='Keyframe selection',
        low=0.0, high=1e6, above_low=True)
    keyframe_distance_m: float = setting(
        1.0, 'Metres travelled between keyframes (distance mode).', section='Keyframe selection',
        low=0.0, high=1e6, above_low=True)
    keyframe_angle_rad: float = setting(
        0.2, 'Radians turned between keyframes (distance mode; above pi: turning alone never '
        'makes a keyframe).', section='Keyframe selection', low=0.0, high=6.3, above_low=True)
    pose_tolerance_s: float = setting(
        0.1, 'Largest gap between an image stamp and the poses its pose is taken from '
        '(interpolated between the poses just before and after it, else the nearer one); '
        'live, also the longest a keyframe waits for the odometry at or after its stamp, or '
        'for its aligned depth image.',
        section='Keyframe selection', low=0.0, high=10.0)
    keyframe_stamp_tolerance_s: float = setting(
        0.01, 'Largest gap between a published keyframe stamp and the image it selects '
        '(external mode).', section='Keyframe selection', low=0.0, high=10.0)
    keyframe_wait_frames: int = setting(
        30, 'Frames kept per camera until their keyframe decision can be made: the SLAM '
        "system's stamp (external mode) or odometry just behind the camera.",
        section='Keyframe selection', low=1, high=10000)

    def __post_init__(self) -> None:
        try:
            check_settings(self)
        except SettingError as err:
            raise KeyframeError(str(err)) from None


class DetectorConfigError(SettingError):
    """Raised for an invalid detector setting; the message names the field."""


@dataclass(frozen=True)
class DetectorConfig:
    """How candidates are searched, tested and whether queries join the map."""

    top_k: int = setting(5, 'Candidates published per query.', section='Candidate logic', low=1,
                         high=1000, when='live')
    exclusion_seconds: float = setting(
        30.0, "Keyframes of the query's own session newer than this are never candidates.",
        section='Candidate logic', low=0.0, high=1e9, when='live')
    exclusion_keyframes: int = setting(
        50, "The query session's last N keyframes are never candidates.",
        section='Candidate logic', low=0, high=_BIG, when='live')
    threshold_mode: str = setting(
        'fixed', "fixed: similarity >= threshold; adaptive: also >= the query's lowest "
        'similarity to its own last adaptive_window keyframes minus adaptive_offset.',
        section='Candidate logic', choices=('fixed', 'adaptive'), when='live')
    threshold: float = setting(0.6, 'Cosine similarity a candidate needs.',
                               section='Candidate logic', low=-1.0, high=1.0, when='live')
    adaptive_window: int = setting(5, 'Recent keyframes of the adaptive threshold.',
                                   section='Candidate logic', low=1, high=10000)
    adaptive_offset: float = setting(0.0, 'Slack subtracted from the adaptive threshold.',
                                     section='Candidate logic', low=0.0, high=2.0, when='live')
    min_margin: float = setting(
        0.0, 'Best similarity minus the best rival outside its region must reach this.',
        section='Candidate logic', low=0.0, high=2.0, when='live')
    consistency: int = setting(
        1, 'Consecutive queries that must match the same region before one is accepted.',
        section='Candidate logic', low=1, high=1000, when='live')
    consistency_keyframes: int = setting(
        10, 'Keyframes either side of a match that count as its region.',
        section='Candidate logic', low=0, high=100000, when='live')
    mode: str = setting(
        'grow', 'grow: live loop closure, keyframes join the map; static: relocalisation in a '
        'prebuilt map that never changes; both: prebuilt map plus a new session that grows.',
        section='Candidate logic', choices=('grow', 'static', 'both'))

    def validate(self) -> None:
        """Raise DetectorConfigError naming the first invalid field."""
        try:
            check_settings(self)
        except SettingError as err:
            raise DetectorConfigError(str(err)) from None

    @property
    def search_depth(self) -> int:
        """Map keyframes fetched per query: enough to always find the best's rival for the margin.

        The best's region holds at most 2 * consistency_keyframes + 1 keyframes.
        """
        return self.top_k + 2 * self.consistency_keyframes + 1


@dataclass(frozen=True)
class VerificationSettings:
    """Geometric verification of loop candidates (docs/verification.md)."""

    verification: bool = setting(
        True, 'Verify candidates geometrically (local features + robust two-view geometry) '
        'before a loop is accepted; off: loops are appearance-only.', section='Verification')
    feature_kind: str = setting(
        'sift', 'Local features: sift (default: the steadiest rejection of false pairs across '
        'domains), orb (fastest, weakest poses), xfeat, xfeat_lighterglue, aliked_lightglue '
        '(learned; GPU when there is one; optional packages).', section='Verification',
        choices=FEATURE_KIND_NAMES)
    max_keypoints: int = setting(1024, 'Keypoints detected per keyframe.',
                                 section='Verification', low=16, high=16384)
    match_ratio: float = setting(
        0.8, "Lowe's ratio test: nearest / second-nearest descriptor distance must be below "
        'this (kinds matched by nearest neighbour).', section='Verification', low=0.0,
        high=1.0, above_low=True)
    ransac_threshold_px: float = setting(
        2.0, 'Inlier threshold of the robust estimators, in pixels.', section='Verification',
        low=0.0, high=100.0, above_low=True)
    min_inliers_pnp: int = setting(
        15, 'Inliers a loop needs when the relative pose comes from PnP against depth (metric; '
        'on the synthetic street false pairs stay below 10).', section='Verification', low=6,
        high=100000, when='live')
    min_inliers_essential: int = setting(
        25, 'Inliers a loop needs when the relative pose comes from the essential matrix '
        '(calibrated, no depth; real different-place pairs reach 11 with SIFT, and same-place '
        'pairs below 20 come with wrong rotations).', section='Verification', low=8,
        high=100000, when='live')
    min_inliers_fundamental: int = setting(
        40, 'Inliers a loop needs without intrinsics (fundamental matrix, no pose; false pairs '
        'reach 20-30 there).', section='Verification', low=8, high=100000, when='live')
    min_inlier_ratio: float = setting(
        0.0, 'Inliers / putative matches a loop needs.', section='Verification', low=0.0,
        high=1.0, when='live')
    verify_top_n: int = setting(
        10, 'Candidates verified per query, best first (at most top_k); the first verified '
        'is the loop.', section='Verification', low=1, high=1000, when='live')
    verify_budget_s: float = setting(
        0.25, "No further candidate is verified once a query's verification took this long "
        '(the first is always tried): half the frame period of a 2 Hz camera.',
        section='Verification', low=0.0, high=60.0, when='live')
    depth_range_m: list = setting(
        [0.1, 20.0], 'Depth values (m) trusted at keypoints; others count as unknown.',
        section='Verification', item=float, length=2, low=0.0, high=1e4)
    camera_in_base: list = setting(
        [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5], "The camera's optical frame in the robot's base "
        'frame (x y z qx qy qz qw), to give relative poses in the base frame too; the default '
        'is a camera at the base origin looking along base x (optical z forward, x right, '
        'y down).',
        section='Verification', item=float, length=7, low=-1e6, high=1e6)
    feature_device: str = setting(
        'auto', "Where learned features run: 'auto' (CUDA when present), 'cpu', 'cuda[:N]'.",
        section='Verification')

    def __post_init__(self) -> None:
        check_settings(self)
        low, high = self.depth_range_m
        if not low < high:
            raise SettingError(f'depth_range_m must be [low, high] with low < high, got '
                               f'{self.depth_range_m}')
        if abs(math.hypot(*self.camera_in_base[3:]) - 1.0) > 1e-3:
            raise SettingError(f'camera_in_base needs a unit quaternion (qx qy qz qw), got '
                               f'{self.camera_in_base[3:]}')
        if not _DEVICE.fullmatch(self.feature_device):
            raise SettingError(f"feature_device must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                               f'got {self.feature_device!r}')


@dataclass(frozen=True)
class MapSettings:
    """The session and robot of new keyframes, and the index of a new map."""

    session: str = setting(
        '', "Name of this run in the map; '' names it after the start time (node) or the "
        'recording (map build).', section='Keyframe map')
    robot_id: str = setting('', 'Robot name stored with every keyframe.', section='Keyframe map')
    index_kind: str = setting(
        '', "Map search index (docs/map.md); '' keeps a loaded map's index, else flat (exact).",
        section='Keyframe map', choices=('', *INDEX_KINDS))
    index_device: str = setting('cpu', "Where the map is searched: 'cpu' or 'cuda[:N]' (flat "
                                       'kinds only).', section='Keyframe map')
    pca_dim: int = setting(
        0, 'Reduce descriptors to this many dimensions in the index of a new map (PCA learned '
        'from the map); 0: no reduction.', section='Keyframe map', low=0, high=65536)
    target_recall_at_1: float = setting(
        0.99, "Recall@1 against exact search that the search parameters of a new map's "
        'approximate index are tuned to reach, measured on held-out keyframes of the map '
        '(docs/map.md); a loaded map keeps its own.', section='Keyframe map', low=0.0,
        high=1.0, above_low=True)
    target_recall_at_10: float = setting(
        0.95, 'Recall@10 against exact search that the approximate index of a new map is tuned '
        'to reach (like target_recall_at_1).', section='Keyframe map', low=0.0, high=1.0,
        above_low=True)

    def __post_init__(self) -> None:
        check_settings(self)

    def index_spec(self, loaded: 'IndexSpec | None' = None) -> 'IndexSpec':
        """Pick the index to search with: a loaded map's unless these settings name another."""
        from boq_ros.keyframe_map.index import IndexSpec  # noqa: PLC0415 (faiss)

        if loaded is not None:
            return replace(loaded, kind=self.index_kind or loaded.kind, device=self.index_device)
        return IndexSpec(kind=self.index_kind or 'flat', pca_dim=self.pca_dim or None,
                         device=self.index_device,
                         target_recall_at_1=float(self.target_recall_at_1),
                         target_recall_at_10=float(self.target_recall_at_10))


ROBUST_KERNELS = ('cauchy', 'huber', 'geman_mcclure', 'none')
"""Robust kernels of the pose graph's loop factors (boq_ros.pose_graph makes them)."""


@dataclass(frozen=True)
class PoseGraphSettings:
    """The reference pose-graph backend's noise models and solver (boq_ros.pose_graph).

    Odometry sigmas grow with the motion between two keyframes: translation
    max(odometry_min_sigma_translation_m, odometry_translation_sigma_per_m * distance), rotation
    max(odometry_min_sigma_rotation_rad, odometry_rotation_sigma_per_m * distance +
    odometry_rotation_sigma_per_rad * angle). The defaults suit wheel odometry and visual
    odometry of a ground robot (drift of a few percent of the distance travelled).
    """

    odometry_translation_sigma_per_m: float = setting(
        0.02, 'Odometry translation sigma per metre travelled between keyframes (0.02: 2 % of '
        'the distance; wheel odometry drifts 1-5 %, visual odometry 0.5-2 %).',
        section='Pose graph', low=0.0, high=10.0)
    odometry_rotation_sigma_per_m: float = setting(
        0.005, 'Odometry rotation sigma (rad) per metre travelled between keyframes (0.005: '
        '0.3 deg/m, heading drift from wheel slip or visual odometry on a ground robot).',
        section='Pose graph', low=0.0, high=10.0)
    odometry_rotation_sigma_per_rad: float = setting(
        0.02, 'Odometry rotation sigma per radian turned between keyframes (0.02: 2 % of the '
        'turn, a typical yaw-rate scale error).', section='Pose graph', low=0.0, high=10.0)
    odometry_min_sigma_translation_m: float = setting(
        0.005, 'Smallest odometry translation sigma between two keyframes (m), for keyframes '
        'taken with little motion.', section='Pose graph', low=0.0, high=1e3, above_low=True)
    odometry_min_sigma_rotation_rad: float = setting(
        0.002, 'Smallest odometry rotation sigma between two keyframes (rad; 0.1 deg).',
        section='Pose graph', low=0.0, high=10.0, above_low=True)
    loop_sigma_translation_m: float = setting(
        0.1, 'Translation sigma (m) of a loop that comes without a covariance (a few times '
        'the 0.08 m median PnP error measured on the demo recording).',
        section='Pose graph', low=0.0, high=1e3, above_low=True)
    loop_sigma_rotation_rad: float = setting(
        0.02, 'Rotation sigma (rad; 1.1 deg) of a loop that comes without a covariance.',
        section='Pose graph', low=0.0, high=10.0, above_low=True)
    loop_min_sigma_translation_m: float = setting(
        0.05, "Smallest translation sigma (m) of a loop: the estimator's covariance leaves out "
        'the depth noise and calibration errors, so it is over-confident.',
        section='Pose graph', low=0.0, high=1e3, above_low=True)
    loop_min_sigma_rotation_rad: float = setting(
        0.01, 'Smallest rotation sigma (rad; 0.6 deg) of a loop, for the same reason.',
        section='Pose graph', low=0.0, high=10.0, above_low=True)
    robust_kernel: str = setting(
        'cauchy', 'Robust kernel of the loop factors, so that a false loop cannot pull the map '
        'apart: cauchy (default: the pull of a large error fades slowly, so the first correct '
        'loops after a long drift still converge), huber (convex: a false loop keeps a bounded '
        'pull), geman_mcclure (redescending: also ignores the first correct loops after a '
        'long drift; only with a good initial guess), none.', section='Pose graph',
        choices=ROBUST_KERNELS)
    robust_kernel_width: float = setting(
        3.0, "Width of the robust kernel in whitened units (the loop's Mahalanobis distance; a "
        'correct 6-dof loop has about 2.4). At 1 the first correct loops after metres of drift '
        'were down-weighted too hard in the synthetic 3-lap test.',
        section='Pose graph', low=0.0, high=1e6, above_low=True)
    loop_iterations: int = setting(
        30, 'Extra ISAM2 iterations an update runs at most after new loops; it stops as soon '
        'as no pose moves by more than 1e-4 (5-10 iterations usually, about 30 for the first '
        'loop after a long drift), so that the robust loops converge as a batch solver would.',
        section='Pose graph', low=0, high=1000)

    def __post_init__(self) -> None:
        check_settings(self)
