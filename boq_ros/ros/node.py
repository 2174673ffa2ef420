"""The loop-closure node: camera streams in, loop-closure candidates out.

A lifecycle node (configure loads the model and the map, activate subscribes and starts the
worker, deactivate stops them, cleanup releases the model and the GPU); with ``autostart`` (the
default) it drives those transitions itself, for launch setups without a lifecycle manager.

Threads: executor callbacks never decode or compute; they put each keyframe into a bounded
keep-latest queue per camera (a displaced frame is counted as dropped). One worker thread takes
the oldest pending frame of every camera, decodes them, describes them in one forward pass,
searches the map and publishes. The map is guarded by one lock shared by the worker and the
services. Every failure is caught, counted in /diagnostics, logged (throttled) and leaves the map
as it was.
"""
import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
import math
from pathlib import Path
import sys
import threading
import time
import traceback
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import numpy as np
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.qos import (
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray, Header
from visualization_msgs.msg import MarkerArray

from boq_ros.bags import stamp_to_ns
from boq_ros.detector import Detection, DetectorConfig, LoopDetector
from boq_ros.extractor import DescriptorError, Extractor
from boq_ros.images import ImageDecodeError
from boq_ros.keyframe_map import IndexSpec, KeyframeMap, KeyframeMeta, MapError
from boq_ros.keyframes import KeyframeError, KeyframePolicy, KeyframeSelector
from boq_ros.model import load_boq
from boq_ros.msg import LoopCandidateArray
from boq_ros.preprocess import PreprocessConfig
from boq_ros.ros import convert, params
from boq_ros.ros.map_paths import map_root, resolve_map_path
from boq_ros.srv import LoadMap, Relocalize, SaveMap

CANDIDATE_TOPIC = 'loop_candidates'
POSE_TOPIC = 'relocalization_pose'
LIO_SAM_TOPIC = 'lio_loop/loop_closure_detection'
MARKER_TOPIC = 'loop_closure_markers'
DEBUG_IMAGE_TOPIC = 'loop_closure_debug_image'
DIAGNOSTICS_TOPIC = '/diagnostics'

STAGES = ('queue', 'decode', 'inference', 'search', 'publish', 'total')
"""Latency stages in /diagnostics: waiting in the queue, then each step of the worker."""
ERROR_KINDS = ('decode', 'descriptor', 'map', 'input', 'internal', 'service')

_DETECTOR_FIELDS = ('top_k', 'exclusion_seconds', 'exclusion_keyframes', 'threshold_mode',
                    'threshold', 'adaptive_window', 'adaptive_offset', 'min_margin',
                    'consistency', 'consistency_keyframes', 'mode')
_THUMBNAIL_HEIGHT = 120
_THUMBNAILS_KEPT = 500  # debug view: match images of the most recent keyframes only
_POSES_KEPT = 4000
_LOG_THROTTLE_S = 5.0


@dataclass
class _Frame:
    camera: str
    msg: Image | CompressedImage
    received_ns: int  # monotonic clock


@dataclass
class _Keyframe:
    frame: _Frame
    image: np.ndarray
    encoding: str
    decode_s: float


class _Stats:
    """Counters and latencies, shared by the callbacks, the worker and the diagnostics timer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals: dict[str, int] = {}
        self._window: dict[str, int] = {}
        self._latency: dict[str, list[float]] = {s: [] for s in STAGES}
        self._window_start = time.monotonic()
        self.last_error = ''

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.totals[key] = self.totals.get(key, 0) + n
            self._window[key] = self._window.get(key, 0) + n

    def latency(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._latency[stage].append(seconds)

    def error(self, kind: str, text: str) -> None:
        with self._lock:
            self.last_error = f'{kind}: {text}'
        self.count(f'{kind}_errors')

    def take_window(self) -> tuple[dict[str, int], dict[str, int], dict[str, list[float]],
                                   float, str]:
        """Totals, then the counts and latencies since the last call, and its duration."""
        with self._lock:
            now = time.monotonic()
            window, latency = self._window, self._latency
            self._window, self._latency = {}, {s: [] for s in STAGES}
            elapsed, self._window_start = now - self._window_start, now
            return dict(self.totals), window, latency, elapsed, self.last_error


@dataclass
class _Runtime:
    """Everything configure creates and cleanup releases."""

    values: dict[str, Any]
    extractor: Extractor
    kmap: KeyframeMap
    detector: LoopDetector
    selector: KeyframeSelector
    root: Path  # the map directory, resolved
    session: str
    publishers: dict[str, Any]
    services: list[Any]
    queues: dict[str, deque] = field(default_factory=dict)
    waiting: dict[str, deque] = field(default_factory=dict)  # external mode: stamp not yet known
    subscriptions: list[Any] = field(default_factory=list)
    latest: dict[str, tuple[np.ndarray, KeyframeMeta]] = field(default_factory=dict)
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)
    pose_stamps: list[int] = field(default_factory=list)  # sorted; odometry may be out of order
    poses: list[tuple[tuple[float, ...], str]] = field(default_factory=list)  # (pose, frame)
    frames_without_pose: int = 0  # the selector's no_pose count already reported


class VprNode(LifecycleNode):
    """BoQ visual loop closure and relocalisation as a ROS 2 lifecycle node."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('vpr_node', **kwargs)
        params.declare(self)
        self.autostart = bool(self.get_parameter('autostart').value)
        self._rt: _Runtime | None = None
        self._map_lock = threading.Lock()  # the map and the detector
        self._cond = threading.Condition()  # the queues and the worker's stop flag
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._stats = _Stats()
        self._state = 'unconfigured'
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._diag_timer = self.create_timer(
            float(self.get_parameter('diagnostics_period_s').value), self._publish_diagnostics,
            callback_group=self._diag_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._rt = self._configure(params.read(self))
        except Exception as err:  # noqa: BLE001 - rclpy would swallow it without a word
            detail = '' if isinstance(err, ValueError | OSError) else traceback.format_exc()
            self.get_logger().error(f'configure failed: {err}\n{detail}'.rstrip())
            self._stats.error('internal', f'configure failed: {err}')
            return TransitionCallbackReturn.FAILURE
        rt = self._rt
        self._state = 'inactive'
        self.get_logger().info(
            f'configured: model {rt.extractor.model_id} on {rt.extractor.device}, map '
            f'{rt.kmap.map_id} with {len(rt.kmap)} keyframes, session {rt.session!r}, mode '
            f'{rt.values["mode"]}, cameras {list(rt.queues)}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        rt = self._rt
        qos = _input_qos(rt.values)
        for topics, msg_type in ((rt.values['image_topics'], Image),
                                 (rt.values['compressed_topics'], CompressedImage)):
            for topic in topics:
                camera = self.resolve_topic_name(topic)
                rt.subscriptions.append(self.create_subscription(
                    msg_type, topic, lambda msg, camera=camera: self._on_image(msg, camera),
                    qos, callback_group=self._input_group))
        if rt.values['odometry_topic']:
            rt.subscriptions.append(self.create_subscription(  # best effort matches any publisher
                Odometry, rt.values['odometry_topic'], self._on_odometry,
                QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT),
                callback_group=self._input_group))
        if rt.values['keyframe_mode'] == 'external':
            rt.subscriptions.append(self.create_subscription(
                Header, rt.values['keyframe_topic'], self._on_keyframe_stamp,
                QoSProfile(depth=100), callback_group=self._input_group))
        with self._cond:
            self._stopping = False
        self._worker = threading.Thread(target=self._work, name='vpr_worker', daemon=True)
        self._worker.start()
        self._state = 'active'
        self.get_logger().info(f'active: listening on {list(rt.queues)}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._state = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _configure(self, values: dict[str, Any]) -> _Runtime:
        cameras = [self._topic(t, key)
                   for key in ('image_topics', 'compressed_topics') for t in values[key]]
        if values['odometry_topic']:
            self._topic(values['odometry_topic'], 'odometry_topic')
        if values['keyframe_mode'] == 'external':
            self._topic(values['keyframe_topic'], 'keyframe_topic')
        if not cameras:
            raise params.ParameterValueError(
                'no camera: set image_topics and/or compressed_topics')
        if len(set(cameras)) != len(cameras):
            raise params.ParameterValueError(f'a camera topic is listed twice: {cameras}')
        if not values['checkpoint']:
            raise params.ParameterValueError(
                'parameter checkpoint is empty: give a BoQ checkpoint file or preset name')
        config = DetectorConfig(**{k: values[k] for k in _DETECTOR_FIELDS})
        config.validate()
        if values['mode'] != 'grow' and not values['map_path']:
            raise params.ParameterValueError(
                f'mode {values["mode"]} starts from a prebuilt map: set map_path')
        root = map_root(values['map_directory'])
        map_file = resolve_map_path(root, values['map_path']) if values['map_path'] else None
        selector = KeyframeSelector(KeyframePolicy(
            mode=values['keyframe_mode'], interval_s=values['keyframe_interval_s'],
            distance_m=values['keyframe_distance_m'], angle_rad=values['keyframe_angle_rad'],
            pose_tolerance_s=values['pose_tolerance_s'],
            external_tolerance_s=values['keyframe_stamp_tolerance_s']))
        model = load_boq(values['checkpoint'], preset=values['preset'] or None)
        kmap = None
        if map_file is not None:
            kmap = KeyframeMap.load(map_file, expect_model_id=model.model_id,
                                    expect_dim=model.descriptor_dim)
            spec = replace(kmap.index_spec, kind=values['index_kind'] or kmap.index_spec.kind,
                           device=values['index_device'])
            if spec != kmap.index_spec:
                kmap.rebuild_index(spec)
        session = values['session'] or datetime.now(timezone.utc).strftime(
            'session-%Y%m%dT%H%M%SZ')
        if values['mode'] == 'both' and kmap.session_size(session) > 0:
            raise params.ParameterValueError(
                f'mode both grows a new session, but session {session!r} is already in the '
                f'map {map_file}: set session to a new name')
        preprocess = _preprocess(values, model.config.name, kmap)
        extractor = Extractor(model, device=values['device'], precision=values['precision'],
                              preprocess=preprocess, batch_size=max(1, len(cameras)))
        if kmap is None:
            kmap = KeyframeMap(extractor.dim, model_id=extractor.model_id,
                               preprocess=preprocess.to_dict(),
                               index=IndexSpec(kind=values['index_kind'] or 'flat',
                                               device=values['index_device']))
        reliable = QoSProfile(depth=10)
        publishers = {
            'candidates': self.create_publisher(LoopCandidateArray, CANDIDATE_TOPIC, reliable),
            'pose': self.create_publisher(PoseWithCovarianceStamped, POSE_TOPIC, reliable),
            'lio_sam': self.create_publisher(Float64MultiArray, LIO_SAM_TOPIC,
                                             qos_profile_sensor_data),
            'markers': self.create_publisher(MarkerArray, MARKER_TOPIC, reliable),
            'debug_image': self.create_publisher(Image, DEBUG_IMAGE_TOPIC,
                                                 qos_profile_sensor_data),
        }
        services = [
            self.create_service(SaveMap, '~/save_map', self._on_save_map,
                                callback_group=self._service_group),
            self.create_service(LoadMap, '~/load_map', self._on_load_map,
                                callback_group=self._service_group),
            self.create_service(Relocalize, '~/relocalize', self._on_relocalize,
                                callback_group=self._service_group),
        ]
        rt = _Runtime(values=values, extractor=extractor, kmap=kmap,
                      detector=LoopDetector(kmap, config), selector=selector, root=root,
                      session=session, publishers=publishers, services=services)
        for camera in cameras:
            rt.queues[camera] = deque()
            rt.waiting[camera] = deque(maxlen=values['keyframe_wait_frames'])
        return rt

    def _topic(self, name: str, param: str) -> str:
        """Resolve a topic parameter now, so a bad name fails configure and not activate."""
        try:
            return self.resolve_topic_name(name)
        except RuntimeError as err:  # rclpy's RCLError
            raise params.ParameterValueError(
                f'parameter {param}: {name!r} is not a valid topic name ({err})') from None

    def _stop_inputs(self) -> None:
        rt = self._rt
        if rt is None:
            return
        for sub in rt.subscriptions:
            self.destroy_subscription(sub)
        rt.subscriptions.clear()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        with self._cond:
            for queue in (*rt.queues.values(), *rt.waiting.values()):
                queue.clear()

    def _release(self) -> None:
        rt, self._rt = self._rt, None
        self._state = 'unconfigured'
        if rt is None:
            return
        for service in rt.services:
            self.destroy_service(service)
        for publisher in rt.publishers.values():
            self.destroy_publisher(publisher)
        cuda = rt.extractor.device.type == 'cuda'
        del rt
        if cuda:
            import torch

            torch.cuda.empty_cache()

    # -- parameters -----------------------------------------------------------------------
    def _on_set_parameters(self, changed: Sequence[rclpy.parameter.Parameter]
                           ) -> SetParametersResult:
        live = {}
        for param in changed:
            spec = params.PARAMS.get(param.name)
            if spec is None:
                continue  # use_sim_time and other rclpy parameters
            try:
                spec.check(param.value)
            except params.ParameterValueError as err:
                return SetParametersResult(successful=False, reason=str(err))
            if spec.when == 'configure' and self._rt is not None:
                return SetParametersResult(
                    successful=False,
                    reason=f'parameter {param.name} is read at configure: deactivate and clean '
                           'up the node first, then configure it again')
            if spec.when == 'live':
                live[param.name] = param.value
        rt = self._rt
        if rt is not None and live:
            config = DetectorConfig(**{k: live.get(k, rt.values[k]) for k in _DETECTOR_FIELDS})
            try:
                config.validate()
            except ValueError as err:
                return SetParametersResult(successful=False, reason=str(err))
            with self._map_lock:
                rt.values.update(live)
                rt.detector.config = config
        return SetParametersResult(successful=True)

    # -- inputs (executor threads: no decoding, no computing) -----------------------------
    def _on_image(self, msg: Image | CompressedImage, camera: str) -> None:
        frame = _Frame(camera, msg, time.monotonic_ns())
        rt = self._rt
        self._stats.count('frames')
        if rt is None:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        if rt.selector.offer(stamp, camera):
            self._enqueue(rt, frame)
        elif rt.values['keyframe_mode'] == 'external':
            rt.waiting[camera].append(frame)  # the SLAM system may name it later
        elif rt.selector.stats['no_pose'] > rt.frames_without_pose:
            rt.frames_without_pose += 1  # distance mode cannot judge the frame: lost
            self._fail('input', f'{camera}: no odometry within pose_tolerance_s of the image '
                                f'at {stamp} ns, frame skipped (distance keyframes)')

    def _enqueue(self, rt: _Runtime, frame: _Frame) -> None:
        with self._cond:
            queue = rt.queues[frame.camera]
            queue.append(frame)
            dropped = len(queue) > rt.values['queue_size']
            if dropped:
                queue.popleft()
            self._cond.notify()
        if dropped:
            self._stats.count('queue_drops')

    def _on_odometry(self, msg: Odometry) -> None:
        rt = self._rt
        if rt is None:
            return
        self._stats.count('odometry')
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        stamp = stamp_to_ns(msg.header.stamp)
        try:
            rt.selector.update_pose(stamp, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        except KeyframeError as err:
            self._fail('input', f'odometry: {err}')
            return
        norm = math.sqrt(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2)
        pose = (p.x, p.y, p.z, q.x / norm, q.y / norm, q.z / norm, q.w / norm)
        with self._cond:
            index = bisect.bisect_right(rt.pose_stamps, stamp)
            rt.pose_stamps.insert(index, stamp)
            rt.poses.insert(index, (pose, msg.header.frame_id))
            if len(rt.pose_stamps) > _POSES_KEPT:
                del rt.pose_stamps[0], rt.poses[0]

    def _on_keyframe_stamp(self, msg: Header) -> None:
        rt = self._rt
        if rt is None:
            return
        self._stats.count('keyframe_stamps')
        rt.selector.add_external(stamp_to_ns(msg.stamp))
        for camera, waiting in rt.waiting.items():
            for frame in list(waiting):
                if rt.selector.offer(stamp_to_ns(frame.msg.header.stamp), camera):
                    waiting.remove(frame)
                    self._enqueue(rt, frame)

    # -- worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        rt = self._rt
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or any(rt.queues.values()))
                if self._stopping:
                    return
                frames = [q.popleft() for q in rt.queues.values() if q]
            try:
                self._process(rt, frames)
            except Exception as err:  # noqa: BLE001 - the worker must survive anything
                self._fail('internal', f'{err}\n{traceback.format_exc()}')

    def _fail(self, kind: str, text: str) -> None:
        self._stats.error(kind, text.splitlines()[0] if text else kind)
        self.get_logger().warning(f'{kind} error: {text}',
                                  throttle_duration_sec=_LOG_THROTTLE_S)

    def _process(self, rt: _Runtime, frames: list[_Frame]) -> None:
        keyframes = []
        for frame in frames:
            start = time.perf_counter()
            self._stats.latency('queue', (time.monotonic_ns() - frame.received_ns) * 1e-9)
            try:
                image, encoding = convert.decode(frame.msg, rt.values['max_image_pixels'])
            except ImageDecodeError as err:
                self._fail('decode', f'{frame.camera}: {err}')
                continue
            keyframes.append(_Keyframe(frame, image, encoding, time.perf_counter() - start))
            self._stats.latency('decode', keyframes[-1].decode_s)
        if not keyframes:
            return
        start = time.perf_counter()
        described = self._describe(rt, keyframes)
        self._stats.latency('inference', time.perf_counter() - start)
        if not described:
            return
        metas = [self._meta(rt, kf.frame) for kf, _ in described]
        start = time.perf_counter()
        results = self._detect(rt, [d for _, d in described], metas)
        self._stats.latency('search', time.perf_counter() - start)
        for (kf, descriptor), detection in zip(described, results):
            if detection is None:
                continue
            start = time.perf_counter()
            self._publish(rt, kf, descriptor, detection)
            done = time.perf_counter()
            self._stats.latency('publish', done - start)
            self._stats.latency('total', (time.monotonic_ns() - kf.frame.received_ns) * 1e-9)

    def _describe(self, rt: _Runtime, keyframes: list[_Keyframe]
                  ) -> list[tuple[_Keyframe, np.ndarray]]:
        """One forward pass for all cameras; on a failure, one per image to isolate it."""
        try:
            descs = rt.extractor.extract([k.image for k in keyframes],
                                         [k.encoding for k in keyframes])
            return list(zip(keyframes, descs))
        except (DescriptorError, ValueError) as err:
            if len(keyframes) == 1:
                self._fail('descriptor', f'{keyframes[0].frame.camera}: {err}')
                return []
        described = []
        for kf in keyframes:
            try:
                described.append((kf, rt.extractor.extract([kf.image], [kf.encoding])[0]))
            except (DescriptorError, ValueError) as err:
                self._fail('descriptor', f'{kf.frame.camera}: {err}')
        return described

    def _meta(self, rt: _Runtime, frame: _Frame) -> KeyframeMeta:
        stamp = stamp_to_ns(frame.msg.header.stamp)
        pose, pose_frame = None, ''
        tolerance = int(rt.values['pose_tolerance_s'] * 1e9)
        with self._cond:  # the nearest odometry stamp: one of the two around the image's
            stamps, index = rt.pose_stamps, bisect.bisect_left(rt.pose_stamps, stamp)
            best = min((i for i in (index - 1, index) if 0 <= i < len(stamps)),
                       key=lambda i: abs(stamps[i] - stamp), default=None)
            if best is not None and abs(stamps[best] - stamp) <= tolerance:
                pose, pose_frame = rt.poses[best]
        return KeyframeMeta(stamp_ns=stamp, session=rt.session, robot_id=rt.values['robot_id'],
                            camera=frame.camera, frame_id=frame.msg.header.frame_id, pose=pose,
                            pose_frame=pose_frame,
                            pose_source=rt.values['odometry_topic'] if pose else '')

    def _detect(self, rt: _Runtime, descs: list[np.ndarray], metas: list[KeyframeMeta]
                ) -> list[Detection | None]:
        """Batched search; on a refusal, one query at a time so only the bad one is lost."""
        with self._map_lock:
            detector = rt.detector
            try:
                return list(detector.process_batch(np.stack(descs), metas))
            except ValueError as err:
                if len(metas) == 1:
                    self._fail('map', f'{metas[0].camera}: {err}')
                    return [None]
            results: list[Detection | None] = []
            for desc, meta in zip(descs, metas):
                try:
                    results.append(detector.process(desc, meta))
                except ValueError as err:
                    self._fail('map', f'{meta.camera}: {err}')
                    results.append(None)
            return results

    def _publish(self, rt: _Runtime, kf: _Keyframe, descriptor: np.ndarray,
                 detection: Detection) -> None:
        values, pubs = rt.values, rt.publishers
        query = detection.query
        match = detection.candidates[0].meta if detection.accepted else None
        debug = values['publish_debug_image']
        thumb = None  # needed for a debug view now, or to show this keyframe as a match later
        if debug and (match is not None or query.id >= 0):
            thumb = convert.thumbnail(kf.image, kf.encoding, _THUMBNAIL_HEIGHT)
        with self._map_lock:
            rt.latest[kf.frame.camera] = (descriptor, query)
            map_id = rt.kmap.map_id
            match_thumb = rt.thumbnails.get(match.id) if debug and match else None
            if debug and query.id >= 0:
                rt.thumbnails[query.id] = thumb
                while len(rt.thumbnails) > _THUMBNAILS_KEPT:
                    del rt.thumbnails[next(iter(rt.thumbnails))]
        self._stats.count('keyframes')  # before publishing: a reader never sees more answers
        if match is not None:
            self._stats.count('accepted')
        pubs['candidates'].publish(
            convert.candidate_array(detection, rt.extractor.model_id, map_id))
        if match is None:
            return
        if values['publish_pose']:
            pose = convert.relocalization_pose(query, match, values['relocalization_covariance'])
            if pose is not None:
                pubs['pose'].publish(pose)
        if values['publish_lio_sam']:
            pubs['lio_sam'].publish(convert.lio_sam_pair(query, match))
        if values['publish_markers']:
            marker = convert.loop_marker(query, match, query.id % 2 ** 31)
            if marker is not None:
                pubs['markers'].publish(MarkerArray(markers=[marker]))
        if debug:
            view = convert.side_by_side(thumb, match_thumb)
            header = Header(stamp=convert.ns_to_stamp(query.stamp_ns), frame_id=query.frame_id)
            pubs['debug_image'].publish(convert.image_msg(view, 'rgb8', header))

    # -- services -------------------------------------------------------------------------
    def _on_save_map(self, request: SaveMap.Request, response: SaveMap.Response
                     ) -> SaveMap.Response:
        rt = self._rt
        try:
            path = resolve_map_path(rt.root, request.path or rt.values['map_path'])
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._map_lock:
                rt.kmap.save(path)
                count = len(rt.kmap)
        except Exception as err:  # noqa: BLE001 - a service must never take the node down
            response.success, response.message = False, _reason(err)
            self._fail('service', f'save_map: {response.message}')
            return response
        response.success, response.path, response.keyframes = True, str(path), count
        response.message = f'saved {count} keyframes to {path}'
        return response

    def _on_load_map(self, request: LoadMap.Request, response: LoadMap.Response
                     ) -> LoadMap.Response:
        rt = self._rt
        extractor = rt.extractor
        try:
            path = resolve_map_path(rt.root, request.path)
            kmap = KeyframeMap.load(path, expect_model_id=extractor.model_id,
                                    expect_dim=extractor.dim)
            if kmap.preprocess != extractor.preprocess_config.to_dict():
                raise MapError(
                    f'map {path} was built with preprocessing {kmap.preprocess}, the node runs '
                    f'{extractor.preprocess_config.to_dict()}: configure the node with the '
                    "map's resize_policy and input_size")
            with self._map_lock:
                detector = LoopDetector(kmap, rt.detector.config)
                rt.kmap, rt.detector = kmap, detector
                rt.latest.clear()
                rt.thumbnails.clear()
        except Exception as err:  # noqa: BLE001 - e.g. MemoryError for a map too large
            response.success, response.message = False, _reason(err)
            self._fail('service', f'load_map: {response.message}')
            with self._map_lock:
                response.keyframes = len(rt.kmap)
            return response
        response.success, response.keyframes = True, len(kmap)
        response.message = f'loaded {len(kmap)} keyframes from {path}'
        return response

    def _on_relocalize(self, request: Relocalize.Request, response: Relocalize.Response
                       ) -> Relocalize.Response:
        rt = self._rt
        with self._map_lock:
            if request.camera:
                latest = rt.latest.get(self.resolve_topic_name(request.camera))
            else:
                latest = max(rt.latest.values(), key=lambda item: item[1].stamp_ns,
                             default=None)
            if latest is None:
                response.success = False
                response.message = (f'no keyframe from camera {request.camera!r} yet'
                                    if request.camera else 'no keyframe yet')
                return response
            descriptor, query = latest
            config = replace(rt.detector.config, mode='static', consistency=1,
                             top_k=request.top_k or rt.detector.config.top_k)
            try:
                detection = LoopDetector(rt.kmap, config).process(descriptor, query)
            except Exception as err:  # noqa: BLE001 - a service must never take the node down
                response.success, response.message = False, _reason(err)
                self._fail('service', f'relocalize: {response.message}')
                return response
            map_id = rt.kmap.map_id
        response.success = True
        response.candidates = convert.candidate_array(detection, rt.extractor.model_id, map_id)
        if not detection.candidates:
            response.message = 'no map keyframe outside the exclusion window'
        elif not detection.accepted:
            response.message = f'best candidate rejected ({detection.candidates[0].reason})'
        else:
            pose = convert.relocalization_pose(query, detection.candidates[0].meta,
                                               rt.values['relocalization_covariance'])
            response.has_pose = pose is not None
            if pose is not None:
                response.pose = pose
            response.message = 'relocalised' if pose is not None else 'match has no pose'
        return response

    # -- diagnostics ----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        totals, window, latency, elapsed, last_error = self._stats.take_window()
        rt = self._rt
        values = [('state', self._state)]
        if rt is not None:
            with self._map_lock:
                map_size, map_id = len(rt.kmap), rt.kmap.map_id
            values += [('device', str(rt.extractor.device)), ('model', rt.extractor.model_id),
                       ('map_id', map_id), ('map_keyframes', map_size),
                       ('session', rt.session), ('mode', rt.values['mode']),
                       ('cameras', ' '.join(rt.queues))]
        rate = 1.0 / elapsed if elapsed > 0 else 0.0
        values += [('input_rate_hz', f'{window.get("frames", 0) * rate:.2f}'),
                   ('keyframe_rate_hz', f'{window.get("keyframes", 0) * rate:.2f}'),
                   ('accepted_rate_hz', f'{window.get("accepted", 0) * rate:.2f}')]
        for key in ('frames', 'keyframes', 'accepted', 'queue_drops', 'odometry',
                    'keyframe_stamps'):
            values.append((f'{key}_total', totals.get(key, 0)))
        for kind in ERROR_KINDS:
            values.append((f'{kind}_errors_total', totals.get(f'{kind}_errors', 0)))
        for stage in STAGES:
            samples = latency[stage]
            mean = 1e3 * sum(samples) / len(samples) if samples else math.nan
            peak = 1e3 * max(samples) if samples else math.nan
            values += [(f'latency_{stage}_ms_mean', f'{mean:.2f}'),
                       (f'latency_{stage}_ms_max', f'{peak:.2f}')]
        values.append(('last_error', last_error))
        troubles = sum(window.get(f'{k}_errors', 0) for k in ERROR_KINDS)
        level, message = DiagnosticStatus.OK, self._state
        if troubles or window.get('queue_drops', 0):
            level = DiagnosticStatus.WARN
            message = (f'{self._state}: {troubles} errors, {window.get("queue_drops", 0)} '
                       'dropped frames in the last period')
        status = DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: loop closure',
            message=message, hardware_id=str(rt.extractor.device) if rt is not None else '',
            values=[KeyValue(key=k, value=str(v)) for k, v in values])
        self._diag_pub.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))


def _reason(err: Exception) -> str:
    """Say why a request failed: refusals name their cause, anything else its type too."""
    return str(err) if isinstance(err, ValueError | OSError) else f'{type(err).__name__}: {err}'


def _input_qos(values: dict[str, Any]) -> QoSProfile:
    base = {'sensor_data': qos_profile_sensor_data, 'reliable': QoSProfile(depth=10),
            'system_default': qos_profile_system_default}[values['input_qos']]
    qos = QoSProfile(depth=values['input_qos_depth'], history=base.history,
                     reliability=base.reliability, durability=base.durability)
    if values['input_qos'] == 'reliable':
        qos.reliability = ReliabilityPolicy.RELIABLE
    return qos


def _preprocess(values: dict[str, Any], preset: str, kmap: KeyframeMap | None
                ) -> PreprocessConfig:
    """Pick the resize settings: a loaded map's win over defaults, never over set values."""
    policy, size = values['resize_policy'], values['input_size']
    if kmap is not None:
        stored = PreprocessConfig.from_dict(kmap.preprocess)
        if (policy and policy != stored.policy) or (size and size != stored.size):
            raise params.ParameterValueError(
                f'the map was built with resize_policy {stored.policy!r} and input_size '
                f'{stored.size}, the parameters ask for {policy!r} and {size}: leave them at '
                "'' and 0 to use the map's")
        return stored
    config = PreprocessConfig.default_for(preset, policy or 'height')
    if size:
        config = PreprocessConfig(config.policy, size, config.multiple)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until Ctrl-C; with autostart, configure and activate it first."""
    rclpy.init(args=sys.argv if argv is None else list(argv))
    node = VprNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if node.autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('could not configure (see the error above); exiting')
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('could not activate (see the error above); exiting')
                return 1
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_inputs()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
