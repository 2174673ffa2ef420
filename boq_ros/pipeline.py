"""The frame pipeline: the one path from a camera frame to a described keyframe.

    frame (encoded bytes or an array, stamp, camera)
      -> pose lookup (PoseBuffer), aligned depth and camera model of its camera
      -> keyframe selection (KeyframeSelector)
      -> decode (one decoder, one set of limits) -> batch -> describe (Extractor)
      -> local features for verification (GeometricVerifier.features), when verifying
      -> Keyframe (descriptor + KeyframeMeta + LocalFeatures), for the detector or the map

The live node's worker, `boq-ros eval`, `boq-ros map build` and the demo all drive this class,
so every one of them selects the same keyframes, stores the same poses and skips the same
frames for the same causes. Each frame fails alone: a frame that cannot be decoded or described
is skipped and counted by cause (``SKIP_CAUSES``) and the others go on. Timings use one set of
stage names (``STAGES``). ROS-free: the node turns messages into :class:`Frame` objects.

Threads: the selection calls (:meth:`FramePipeline.offer`, :meth:`add_pose`,
:meth:`add_keyframe_stamp`, :meth:`finish`) come from one thread (the node's serialised input
callbacks); :meth:`describe` may run in another (the node's worker). ``stats`` is thread-safe.
"""
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
import math
from pathlib import Path
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from boq_ros.extractor import DescriptorError, Extractor
from boq_ros.images import ImageDecodeError, decode_compressed, decode_depth, decode_image
from boq_ros.keyframe_map import KeyframeMeta, LocalFeatures
from boq_ros.keyframes import KeyframePolicy, KeyframeSelector
from boq_ros.poses import Pose, PoseBuffer, PoseError, make_pose
from boq_ros.settings import DEFAULT_MAX_PIXELS, PipelineConfig
from boq_ros.verification.camera import CameraModel, CameraModelError
from boq_ros.verification.features import FeatureError, check_depth

if TYPE_CHECKING:
    from boq_ros.verification import GeometricVerifier

STAGES = ('read', 'queue', 'decode', 'describe', 'features', 'search', 'verify', 'publish',
          'total')
"""Timing stages, everywhere: reading a recording, waiting in the node's queue, decoding,
describing (model forward), local features, map search and decision (verification included),
the verification alone, publishing, and a keyframe's whole way."""

SKIPPED_AS = {'decode': 'decode errors', 'depth': 'depth images', 'no_pose': 'without a pose',
              'descriptor': 'descriptor errors', 'stamp': 'outlier stamps'}
"""Why a frame can be skipped, and how a message names frames skipped so: its bytes are not a
usable image; it is a 16-bit single-channel (depth) image where colour was expected; distance
keyframes without a pose near its stamp; the model gave a non-finite descriptor; its stamp is an
outlier far from the camera clock."""
SKIP_CAUSES = tuple(SKIPPED_AS)
JUMP_CONFIRM = 3
"""Frames in a row whose stamps agree on a jump before it is a new time base."""
_NS = 1_000_000_000


# -- frames ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawImage:
    """The fields of a ``sensor_msgs/Image``."""

    encoding: str
    height: int
    width: int
    step: int
    data: Any
    is_bigendian: bool = False


@dataclass(frozen=True)
class CompressedImage:
    """The fields of a ``sensor_msgs/CompressedImage`` (JPEG or PNG bytes)."""

    format: str
    data: Any


@dataclass(frozen=True)
class ImageFile:
    """An image file on disk (JPEG or PNG); `depth_ok` lets 16-bit single-channel ones through."""

    path: Path
    depth_ok: bool = False


@dataclass(frozen=True)
class ArrayImage:
    """An image already in memory, in one of ``boq_ros.images.CANONICAL_ENCODINGS``."""

    array: np.ndarray
    encoding: str = 'rgb8'


@dataclass(frozen=True)
class BrokenMessage:
    """A recorded message that could not even be deserialised: counted, never decoded."""

    reason: str


Payload = RawImage | CompressedImage | ImageFile | ArrayImage | BrokenMessage


@dataclass(frozen=True)
class Frame:
    """One camera frame as it arrives; decoded only if it becomes a keyframe."""

    stamp_ns: int
    camera: str
    image: Payload
    frame_id: str = ''
    image_ref: str = ''  # where the image can be found again (bag#topic@stamp, folder/file)
    received_ns: int = 0  # monotonic clock at arrival (the node's latency), 0 offline


@dataclass(frozen=True)
class DepthFrame:
    """A depth image aligned to a camera's colour images (16UC1 mm or 32FC1 m)."""

    stamp_ns: int
    camera: str  # the colour camera it is aligned to
    image: RawImage | BrokenMessage


@dataclass(frozen=True)
class CameraInfoUpdate:
    """A camera's intrinsics (sensor_msgs/CameraInfo); `model` None when it was unusable."""

    camera: str
    model: CameraModel | None
    reason: str = ''

    @classmethod
    def from_message(cls, camera: str, msg: Any) -> 'CameraInfoUpdate':
        """Make the update of a sensor_msgs/CameraInfo (ROS or rosbags), or say why not."""
        try:
            return cls(camera, CameraModel.from_message(msg))
        except CameraModelError as err:
            return cls(camera, None, str(err))


DEPTH_KEPT = 32
"""Depth images kept per camera until their colour frame is decided."""


class StreamClock:
    """The time base of one stream of stamps, so that one outlier never poisons what follows.

    A stamp more than `limit_ns` behind the newest, or ahead of it by more than `limit_ns` plus
    the time that passed since (live streams carry their arrival time), is an outlier, until
    JUMP_CONFIRM stamps in a row agree on the jump: then it is a new time base.
    """

    def __init__(self, limit_ns: int) -> None:
        self.limit_ns = limit_ns
        self.newest_ns: int | None = None
        self._received_ns = 0
        self._jumps: list[int] = []

    def judge(self, stamp_ns: int, received_ns: int = 0) -> str:
        """Say 'ok', 'outlier' or 'new_base' for the next stamp of the stream."""
        newest, limit = self.newest_ns, self.limit_ns
        elapsed = received_ns - self._received_ns if received_ns and self._received_ns else 0
        if newest is None or -limit <= stamp_ns - newest <= limit + max(elapsed, 0):
            self._jumps.clear()
            if newest is None or stamp_ns > newest:
                self.newest_ns, self._received_ns = stamp_ns, received_ns
            return 'ok'
        if self._jumps and abs(stamp_ns - self._jumps[-1]) > limit:
            self._jumps.clear()  # not the same jump as the stamps before
        self._jumps.append(stamp_ns)
        if len(self._jumps) < JUMP_CONFIRM:
            return 'outlier'
        self._jumps.clear()
        self.newest_ns, self._received_ns = stamp_ns, received_ns
        return 'new_base'


class OutlierStamp(PoseError):
    """A pose or keyframe stamp far from the camera clock, refused (see PipelineConfig)."""


class SkippedFrame(ValueError):
    """A frame the pipeline cannot use; `cause` is one of SKIP_CAUSES."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def decode(image: Payload, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decode any payload into (array, canonical encoding); SkippedFrame names why not."""
    try:
        if isinstance(image, RawImage):
            return decode_image(image.encoding, image.height, image.width, image.step,
                                image.data, bool(image.is_bigendian), max_pixels)
        if isinstance(image, CompressedImage):
            return decode_compressed(image.format, image.data, max_pixels)
        if isinstance(image, ImageFile):
            try:
                data = image.path.read_bytes()
            except OSError as err:
                raise SkippedFrame('decode', f'cannot read image {image.path}: '
                                             f'{err.strerror}') from None
            try:
                array, encoding = decode_compressed(image.path.suffix.lstrip('.'), data,
                                                    max_pixels)
            except ImageDecodeError as err:
                raise SkippedFrame('decode', f'{image.path}: {err}') from None
            if encoding == 'mono16' and not image.depth_ok:
                raise SkippedFrame('depth', f'{image.path.name} is a 16-bit single-channel '
                                            '(depth) image')
            return array, encoding
        if isinstance(image, BrokenMessage):
            raise SkippedFrame('decode', image.reason)
        return image.array, image.encoding
    except ImageDecodeError as err:
        raise SkippedFrame('decode', str(err)) from None


# -- what comes out -------------------------------------------------------------------------
@dataclass
class Selected:
    """A frame chosen as a keyframe, with the pose it was taken at and its camera's data."""

    frame: Frame
    pose: Pose | None
    depth: RawImage | BrokenMessage | None = None
    camera_model: CameraModel | None = None


@dataclass
class Keyframe:
    """A described keyframe: what the detector and the map take."""

    frame: Frame
    meta: KeyframeMeta
    descriptor: np.ndarray
    image: np.ndarray
    encoding: str
    features: LocalFeatures | None = None  # None: not verifying, or they failed (counted)


class PipelineStats:
    """Counts (frames, keyframes, skips by cause) and per-stage timings, thread-safe.

    Totals accumulate for the pipeline's life; :meth:`take_window` also returns what happened
    since its last call (the node's /diagnostics period).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals: dict[str, int] = {}
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._window: dict[str, int] = {}
        self._latency: dict[str, list[float]] = {s: [] for s in STAGES}
        self._window_start = time.monotonic()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.totals[key] = self.totals.get(key, 0) + n
            self._window[key] = self._window.get(key, 0) + n

    def time(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self._latency[stage].append(seconds)

    def skipped(self) -> dict[str, int]:
        """Frames skipped so far, by cause (every cause listed, zeros included)."""
        with self._lock:
            return {c: self.totals.get(f'skipped_{c}', 0) for c in SKIP_CAUSES}

    def take_window(self) -> tuple[dict[str, int], dict[str, int], dict[str, list[float]],
                                   float]:
        """Totals, then the counts and latencies since the last call, and its duration."""
        with self._lock:
            now = time.monotonic()
            window, latency = self._window, self._latency
            self._window, self._latency = {}, {s: [] for s in STAGES}
            elapsed, self._window_start = now - self._window_start, now
            return dict(self.totals), window, latency, elapsed


OnSkip = Callable[[str, str], None]
"""Told (cause, message) for every skipped frame, e.g. to log it."""


class FramePipeline:
    """Frames in, described keyframes out; one instance per stream (node, bag, folder)."""

    def __init__(self, extractor: Extractor, keyframes: KeyframePolicy | None = None,
                 config: PipelineConfig | None = None, *, session: str, robot_id: str = '',
                 poses: PoseBuffer | None = None, on_skip: OnSkip | None = None,
                 on_note: Callable[[str], None] | None = None,
                 stats: PipelineStats | None = None,
                 verifier: 'GeometricVerifier | None' = None) -> None:
        self.extractor = extractor
        self.verifier = verifier
        self.policy = keyframes or KeyframePolicy()
        self.config = config or PipelineConfig()
        if self.policy.keyframe_mode == 'distance' and poses is None:
            raise ValueError('keyframe mode distance needs poses (odometry or a pose topic)')
        self.session, self.robot_id = session, robot_id
        self.poses = poses
        self.stats = stats or PipelineStats()
        self._on_skip = on_skip
        self._selector = KeyframeSelector(self.policy)
        self._pending: dict[str, deque[Frame]] = {}  # waiting for their pose to be final
        self._unnamed: dict[str, deque[Selected]] = {}  # external mode: stamp not yet named
        limit = int(self.config.time_jump_s * _NS)
        self._clocks = {s: StreamClock(limit) for s in ('frame', 'pose', 'keyframe', 'depth')}
        self._on_note = on_note
        self._depth: dict[str, deque[DepthFrame]] = {}  # camera -> recent depth images
        self._newest_depth: dict[str, int] = {}
        self._models: dict[str, CameraModel] = {}
        self._models_expected: set[str] = set()

    # -- selection --------------------------------------------------------------------------
    def offer(self, frame: Frame) -> list[Selected]:
        """Take one frame; return the frames now selected as keyframes (this one and/or others).

        A frame waits (at most keyframe_wait_frames per camera) while a pose yet to come could
        change its pose: before the first pose, or while the pose stream is just behind the
        camera. A later frame beyond pose_tolerance_s, :meth:`release_waiting` or :meth:`finish`
        decide it with what is known.
        """
        selected = self._check_clock(frame)
        if selected is None:
            self.stats.count('frames')
            return []
        if frame.stamp_ns == self._clocks['frame'].newest_ns:  # the camera clock moved on
            selected += self._release(lambda f: f.stamp_ns < frame.stamp_ns - self._tolerance())
        pending = self._pending.setdefault(frame.camera, deque())
        if pending or not self._ready(frame):
            pending.append(frame)
            if len(pending) > self.policy.keyframe_wait_frames:
                selected += self._decide(pending.popleft())
        else:
            selected += self._decide(frame)
        self.stats.count('frames')  # after its effect: a reader of the count sees its outcome
        return selected

    def add_pose(self, stamp_ns: int, position: Sequence[float],
                 quaternion_xyzw: Sequence[float] | None = None, frame: str | None = None,
                 received_ns: int = 0) -> list[Selected]:
        """Take one pose of the stream; return frames now selected.

        PoseError if unusable, OutlierStamp if its stamp is far from the stream's clock.
        """
        if self.poses is None:
            raise ValueError('this pipeline was made without a pose stream')
        make_pose(position, quaternion_xyzw)  # refuse a bad pose before judging its stamp
        if self._check_stream_stamp(stamp_ns, received_ns, 'pose'):
            self.poses.clear()
        self.poses.add(stamp_ns, position, quaternion_xyzw, frame)
        return self._release(self._ready)

    def expect_depth(self, camera: str) -> None:
        """Say that `camera` has an aligned depth stream: its frames wait for their depth."""
        self._depth.setdefault(camera, deque(maxlen=DEPTH_KEPT))

    def add_depth(self, depth: DepthFrame, received_ns: int = 0) -> list[Selected]:
        """Take one aligned depth image; return the frames now selected.

        OutlierStamp if its stamp is far from the depth stream's clock: one stamp in the future
        must not make every later frame believe its depth has gone by.
        """
        if self._check_stream_stamp(depth.stamp_ns, received_ns, 'depth'):
            for kept in self._depth.values():
                kept.clear()
            self._newest_depth.clear()
        self.expect_depth(depth.camera)
        self._depth[depth.camera].append(depth)
        newest = self._newest_depth.get(depth.camera)
        if newest is None or depth.stamp_ns > newest:
            self._newest_depth[depth.camera] = depth.stamp_ns
        return self._release(self._ready)

    def expect_camera_model(self, camera: str) -> None:
        """Say that `camera` has a camera_info stream: its frames wait for the first one."""
        self._models_expected.add(camera)

    def set_camera_model(self, update: CameraInfoUpdate) -> list[Selected]:
        """Take a camera's intrinsics (the latest apply to the keyframes decided from now).

        Return the frames now selected (those that waited for the camera's first intrinsics).
        """
        if update.model is None:
            self.stats.count('camera_info_errors')
            if self._on_note is not None:
                self._on_note(f'{update.camera}: camera_info ignored: {update.reason}')
            return []
        first = update.camera not in self._models
        self._models[update.camera] = update.model
        return self._release(self._ready) if first else []

    def _depth_tolerance(self) -> int:
        return int(round(self.config.depth_stamp_tolerance_s * _NS))

    def _depth_of(self, frame: Frame) -> DepthFrame | None:
        """Return the depth image nearest the frame's stamp within the tolerance, if any."""
        near = [d for d in self._depth.get(frame.camera, ())
                if abs(d.stamp_ns - frame.stamp_ns) <= self._depth_tolerance()]
        return min(near, key=lambda d: abs(d.stamp_ns - frame.stamp_ns)) if near else None

    def _ready(self, frame: Frame) -> bool:
        """Whether nothing yet to come can change the frame's pose, intrinsics or depth."""
        if self.poses is not None and not self.poses.decidable(frame.stamp_ns):
            return False
        if frame.camera in self._models_expected and frame.camera not in self._models:
            return False
        if frame.camera not in self._depth or self._depth_of(frame) is not None:
            return True
        newest = self._newest_depth.get(frame.camera)
        return newest is not None and newest > frame.stamp_ns + self._depth_tolerance()

    def add_keyframe_stamp(self, stamp_ns: int, received_ns: int = 0) -> list[Selected]:
        """Take a stamp the SLAM system made a keyframe (external mode); return frames selected.

        OutlierStamp if the stamp is far from the stream's clock.
        """
        if self._check_stream_stamp(stamp_ns, received_ns, 'keyframe'):
            self._selector.forget_external()
        self._selector.add_external(stamp_ns)
        selected = []
        for camera, waiting in self._unnamed.items():
            for item in list(waiting):
                if self._selector.offer(item.frame.stamp_ns, camera, item.pose):
                    waiting.remove(item)
                    selected.append(item)
        return selected

    def release_waiting(self, received_before_ns: int) -> list[Selected]:
        """Decide the frames waiting for a pose that arrived before `received_before_ns`.

        Live, a frame waits at most so long (the node's clock) for its pose stream: a stream
        that stalled or never started must not hold the camera back.
        """
        released = self._release(lambda f: f.received_ns < received_before_ns)
        if released and self.poses is not None and not len(self.poses):
            self.poses.silent = True  # no pose stream at all: stop holding frames for one
        return released

    def discard_waiting(self) -> None:
        """Forget every frame still waiting (the node stops listening: no late answers)."""
        self._pending.clear()
        self._unnamed.clear()

    def finish(self) -> list[Selected]:
        """End of the stream: decide every frame still waiting for its pose."""
        return self._release(lambda f: True)

    # -- time bases: one outlier stamp never poisons what follows ----------------------------
    def _check_clock(self, frame: Frame) -> list[Selected] | None:
        """Judge a frame's stamp on the camera clock; None for an outlier (skipped, counted).

        On a new time base the frames still waiting are decided, and the keyframe history of the
        old base is forgotten (returns the frames that releases).
        """
        verdict = self._clocks['frame'].judge(frame.stamp_ns, frame.received_ns)
        if verdict == 'outlier':
            self._skip('stamp', f'{frame.camera}: stamp {frame.stamp_ns} ns is far from the '
                                'camera clock: an outlier, skipped')
            return None
        if verdict == 'ok':
            return []
        released = self.finish()  # what waited belongs to the old time base
        self._selector = KeyframeSelector(self.policy)
        self._unnamed.clear()
        self._new_base('camera')
        return released

    def _check_stream_stamp(self, stamp_ns: int, received_ns: int, stream: str) -> bool:
        """Judge a pose or keyframe stamp on its stream's clock; True on a new time base.

        OutlierStamp for a stamp far from that stream's clock (counted).
        """
        verdict = self._clocks[stream].judge(stamp_ns, received_ns)
        if verdict == 'outlier':
            self.stats.count(f'outlier_{stream}_stamps')
            raise OutlierStamp(f"{stream} stamp {stamp_ns} ns is far from the stream's clock: "
                               'an outlier, refused')
        if verdict == 'new_base':
            self._new_base(stream)
        return verdict == 'new_base'

    def _new_base(self, stream: str) -> None:
        self.stats.count('time_bases')
        if self._on_note is not None:
            self._on_note(f'new time base for {stream} stamps: they jumped by more than '
                          f'time_jump_s (a bag loop or a clock reset?); what was kept of the old '
                          f'one is forgotten, the {JUMP_CONFIRM - 1} stamps before were refused')

    def _tolerance(self) -> int:
        return self.poses.tolerance_ns if self.poses is not None else 0

    def _release(self, ready: Callable[[Frame], bool]) -> list[Selected]:
        selected = []
        for pending in self._pending.values():
            while pending and ready(pending[0]):
                selected += self._decide(pending.popleft())
        return selected

    def _decide(self, frame: Frame) -> list[Selected]:
        pose = self.poses.lookup(frame.stamp_ns) if self.poses is not None else None
        no_pose_before = self._selector.stats['no_pose']
        depth = self._depth_of(frame)
        item = Selected(frame, pose, depth.image if depth is not None else None,
                        self._models.get(frame.camera))
        if self._selector.offer(frame.stamp_ns, frame.camera, pose):
            return [item]
        if self.policy.keyframe_mode == 'external':
            waiting = self._unnamed.setdefault(
                frame.camera, deque(maxlen=self.policy.keyframe_wait_frames))
            waiting.append(item)  # the SLAM system may name it later
        elif self._selector.stats['no_pose'] > no_pose_before:
            self._skip('no_pose', f'{frame.camera}: no pose within pose_tolerance_s of the image '
                                  f'at {frame.stamp_ns} ns (distance keyframes)')
        return []

    def _skip(self, cause: str, message: str) -> None:
        self.stats.count(f'skipped_{cause}')
        if self._on_skip is not None:
            self._on_skip(cause, message)

    # -- description ------------------------------------------------------------------------
    def meta(self, item: Selected) -> KeyframeMeta:
        """Return the map metadata of a selected frame."""
        frame, pose = item.frame, item.pose
        return KeyframeMeta(
            stamp_ns=frame.stamp_ns, session=self.session, robot_id=self.robot_id,
            camera=frame.camera, frame_id=frame.frame_id, pose=pose,
            pose_frame=self.poses.frame if pose is not None else '',
            pose_source=self.poses.source if pose is not None else '',
            image_ref=frame.image_ref)

    def describe(self, selected: Sequence[Selected]) -> list[Keyframe]:
        """Decode and describe keyframes in one forward pass; failing frames are skipped alone."""
        decoded = []
        for item in selected:
            start = time.perf_counter()
            try:
                array, encoding = decode(item.frame.image, self.config.max_image_pixels)
            except SkippedFrame as err:
                self._skip(err.cause, f'{item.frame.camera}: {err}')
                continue
            finally:
                self.stats.time('decode', time.perf_counter() - start)
            decoded.append((item, array, encoding))
        if not decoded:
            return []
        start = time.perf_counter()
        descriptors = self._extract(decoded)
        self.stats.time('describe', time.perf_counter() - start)
        keyframes = []
        for (item, array, encoding), desc in zip(decoded, descriptors):
            if desc is None:
                continue
            keyframe = Keyframe(item.frame, self.meta(item), desc, array, encoding)
            if self.verifier is not None:
                start = time.perf_counter()
                keyframe.features = self._features(keyframe, item)
                self.stats.time('features', time.perf_counter() - start)
            keyframes.append(keyframe)
        self.stats.count('keyframes', len(keyframes))
        return keyframes

    def _features(self, keyframe: Keyframe, item: Selected) -> LocalFeatures | None:
        """Local features of a keyframe; a failure loses only them (counted, noted)."""
        depth = None
        if isinstance(item.depth, BrokenMessage):
            self._feature_note('depth_errors', keyframe, item.depth.reason)
        elif item.depth is not None:
            d = item.depth
            try:
                depth = decode_depth(d.encoding, d.height, d.width, d.step, d.data,
                                     bool(d.is_bigendian), self.config.max_image_pixels)
                height, width = keyframe.image.shape[:2]
                depth = check_depth(depth, (width, height))
            except (ImageDecodeError, FeatureError) as err:
                self._feature_note('depth_errors', keyframe, f'depth image: {err}')
                depth = None
        try:
            return self.verifier.features(keyframe.image, keyframe.encoding,
                                          item.camera_model, depth)
        except ValueError as err:  # FeatureError, or a lens model that maps points to NaN
            self._feature_note('feature_errors', keyframe, str(err))
            return None

    def _feature_note(self, counter: str, keyframe: Keyframe, message: str) -> None:
        self.stats.count(counter)
        if self._on_note is not None:
            self._on_note(f'{keyframe.frame.camera} at {keyframe.frame.stamp_ns} ns: {message}')

    def _extract(self, decoded: list) -> list[np.ndarray | None]:
        """One batch; on a failure, one image at a time so only the bad one is lost."""
        extract = self.extractor.extract
        try:
            return list(extract([d[1] for d in decoded], [d[2] for d in decoded]))
        except (DescriptorError, ValueError) as err:
            if len(decoded) == 1:
                self._skip('descriptor', f'{decoded[0][0].frame.camera}: {err}')
                return [None]
        out: list[np.ndarray | None] = []
        for item, array, encoding in decoded:
            try:
                out.append(extract([array], [encoding])[0])
            except (DescriptorError, ValueError) as err:
                self._skip('descriptor', f'{item.frame.camera}: {err}')
                out.append(None)
        return out

    # -- a whole recording ------------------------------------------------------------------
    def run(self, frames: Iterable['Frame | DepthFrame | CameraInfoUpdate'],
            poses: Iterable[tuple[int, Pose]] = (),
            on_frame: Callable[[], None] | None = None) -> Iterator[list[Keyframe]]:
        """Describe a recording: batches of keyframes, in order.

        `frames` may interleave depth images and camera_info updates, in recording order.

        `poses` are the recording's (stamp, pose) in stamp order; each is given to the pipeline
        once the recording's clock is within pose_tolerance_s of it, as odometry reaches a live
        node. `on_frame` is called per frame read (a progress bar).
        """
        pose_iter = iter(poses)
        next_pose = next(pose_iter, None)
        batch: list[Selected] = []
        frames = iter(frames)
        while True:
            start = time.perf_counter()
            frame = next(frames, None)
            self.stats.time('read', time.perf_counter() - start)
            if frame is None:
                break
            if isinstance(frame, DepthFrame):
                try:
                    batch += self.add_depth(frame)
                except OutlierStamp:
                    pass  # counted in stats; the recording's other depth images go on
                continue
            if isinstance(frame, CameraInfoUpdate):
                batch += self.set_camera_model(frame)
                continue
            if on_frame is not None:
                on_frame()
            horizon = frame.stamp_ns + self._tolerance()
            while next_pose is not None and next_pose[0] <= horizon:
                try:
                    batch += self.add_pose(next_pose[0], next_pose[1][:3],
                                           _quaternion(next_pose[1]))
                except OutlierStamp:
                    pass  # counted in stats; the recording's other poses go on
                next_pose = next(pose_iter, None)
            batch += self.offer(frame)
            while len(batch) >= self.config.batch_size:
                yield self.describe(batch[:self.config.batch_size])
                del batch[:self.config.batch_size]
        batch += self.finish()
        for start in range(0, len(batch), self.config.batch_size):
            yield self.describe(batch[start:start + self.config.batch_size])


def _quaternion(pose: Pose) -> tuple[float, ...] | None:
    q = pose[3:]
    return None if any(math.isnan(v) for v in q) else tuple(q)
