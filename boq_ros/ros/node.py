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
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from boq_ros.bags import stamp_to_ns
from boq_ros.detector import (
    REJECTION_CAUSES,
    Candidate,
    Detection,
    DetectorConfig,
    LoopDetector,
    PoseKind,
)
from boq_ros.extractor import ModelSettings
from boq_ros.keyframe_map import (
    KeyframeMap,
    KeyframeMeta,
    KeyframeStore,
    LocalFeatures,
    MapError,
    MapNotFound,
    MapSettings,
)
from boq_ros.keyframe_map.uri import faiss_path, is_milvus, open_store, save_copy
from boq_ros.keyframes import KeyframePolicy
from boq_ros.pipeline import (
    CameraInfoUpdate,
    FramePipeline,
    Keyframe,
    OutlierStamp,
    PipelineConfig,
    PipelineStats,
    Selected,
)
from boq_ros.poses import PoseBuffer, PoseError
from boq_ros.ros import convert, outputs, params
from boq_ros.ros.map_paths import map_root, resolve_map_path
from boq_ros.ros.process import ignore_interrupt, interrupt_once, reason, subscription_qos
from boq_ros.ros.sharing import COUNTERS as SHARING_COUNTERS
from boq_ros.ros.sharing import KeyframeSharing, SharingContext
from boq_ros.ros.sharing import check as check_sharing
from boq_ros.settings import SettingError, VerificationSettings, from_values
from boq_ros.sources import camera_info_topic
from boq_ros.srv import LoadMap, Relocalize, SaveMap
from boq_ros.verification import GeometricVerifier
from boq_ros.verification.verifier import relocalized

POSE_TOPIC = 'relocalization_pose'
MARKER_TOPIC = 'loop_closure_markers'
DEBUG_IMAGE_TOPIC = 'loop_closure_debug_image'
DIAGNOSTICS_TOPIC = '/diagnostics'

STAGES = ('queue', 'decode', 'describe', 'features', 'search', 'verify', 'publish', 'total')
"""Latency stages in /diagnostics (the pipeline's names): waiting in the queue, then each step."""
ERROR_KINDS = ('decode', 'descriptor', 'map', 'input', 'configure', 'internal', 'service',
               'output')
_ERROR_OF_SKIP = {'decode': 'decode', 'depth': 'decode', 'descriptor': 'descriptor',
                  'no_pose': 'input', 'stamp': 'input'}
"""Which /diagnostics error counter a frame skipped by the pipeline counts in."""

_THUMBNAIL_HEIGHT = 120
_THUMBNAILS_KEPT = 500  # debug view: match images of the most recent keyframes only
_LOG_THROTTLE_S = 5.0
_ODOMETRY_DEPTH = 100


@dataclass
class _Configured:
    """Everything configure creates and cleanup releases."""

    settings: params.NodeSettings
    pipeline: FramePipeline
    kmap: KeyframeStore
    detector: LoopDetector
    verifier: GeometricVerifier | None
    camera_infos: dict[str, str]  # camera -> its camera_info topic
    depths: dict[str, str]  # camera -> its aligned depth topic
    root: Path  # the map directory, resolved
    publishers: dict[str, Any]  # relocalisation pose, markers, debug image
    outputs: list[outputs.Output]  # the backends' outputs (boq_ros.ros.outputs)
    services: list[Any]
    queues: dict[str, deque] = field(default_factory=dict)  # camera -> Selected, oldest first
    subscriptions: list[Any] = field(default_factory=list)
    pose_timer: Any = None  # releases frames that waited pose_tolerance_s for odometry
    latest: dict[str, tuple[np.ndarray, KeyframeMeta, LocalFeatures | None]] = field(
        default_factory=dict)
    thumbnails: dict[int, np.ndarray] = field(default_factory=dict)
    sharing: KeyframeSharing | None = None  # share_keyframes: the fleet topic

    @property
    def extractor(self) -> Any:
        return self.pipeline.extractor

    @property
    def session(self) -> str:
        return self.pipeline.session


class VprNode(LifecycleNode):
    """BoQ visual loop closure and relocalisation as a ROS 2 lifecycle node."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__('vpr_node', **kwargs)
        params.declare(self)
        self.autostart = bool(self.get_parameter('autostart').value)
        self._rt: _Configured | None = None
        self._map_lock = threading.Lock()  # the map and the detector
        self._cond = threading.Condition()  # the queues and the worker's stop flag
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._stats = PipelineStats()  # for the process's life: totals survive reconfiguring
        self._last_error = ''
        self._life = threading.Lock()  # _rt and _state change together (diagnostics reads both)
        self._state = 'unconfigured'
        self._accepting = False  # whether input callbacks may queue frames (active only)
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
            rt = self._configure(params.read(self))
        except Exception as err:  # noqa: BLE001 - rclpy would swallow it without a word
            detail = '' if isinstance(err, ValueError | OSError) else traceback.format_exc()
            self.get_logger().error(f'configure failed: {err}\n{detail}'.rstrip())
            self._count_error('configure', f'configure failed: {err}')
            return TransitionCallbackReturn.FAILURE
        self._set(rt, 'inactive')
        self.get_logger().info(
            f'configured: model {rt.extractor.model_id} on {rt.extractor.device}, map '
            f'{rt.kmap.map_id} with {len(rt.kmap)} keyframes, session {rt.session!r}, mode '
            f'{rt.detector.config.mode}, cameras {list(rt.queues)}')
        return TransitionCallbackReturn.SUCCESS

    def _set(self, rt: _Configured | None, state: str) -> None:
        with self._life:
            self._rt, self._state = rt, state

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        rt = self._rt
        rt.pipeline.discard_waiting()  # nothing of an earlier activation is answered now
        with self._cond:
            for queue in rt.queues.values():
                queue.clear()
            self._accepting = True
        node = rt.settings
        qos = subscription_qos(node.input_qos, node.input_qos_depth)
        for topics, msg_type in ((node.image_topics, Image),
                                 (node.compressed_topics, CompressedImage)):
            for topic in topics:
                camera = self.resolve_topic_name(topic)
                rt.subscriptions.append(self.create_subscription(
                    msg_type, topic, lambda msg, camera=camera: self._on_image(msg, camera),
                    qos, callback_group=self._input_group))
        for camera, topic in rt.camera_infos.items():
            rt.subscriptions.append(self.create_subscription(
                CameraInfo, topic,
                lambda msg, camera=camera: self._enqueue(rt, rt.pipeline.set_camera_model(
                    CameraInfoUpdate.from_message(camera, msg))), qos,
                callback_group=self._input_group))
        for camera, topic in rt.depths.items():
            rt.subscriptions.append(self.create_subscription(
                Image, topic, lambda msg, camera=camera: self._on_depth(msg, camera), qos,
                callback_group=self._input_group))
        if node.odometry_topic:
            rt.subscriptions.append(self.create_subscription(
                Odometry, node.odometry_topic, self._on_odometry,
                subscription_qos(node.odometry_qos, _ODOMETRY_DEPTH),
                callback_group=self._input_group))
        if node.odometry_topic or rt.depths or node.camera_info_topics:  # frames may wait
            wait_s = rt.pipeline.policy.pose_tolerance_s
            rt.pose_timer = self.create_timer(
                min(max(wait_s / 4, 0.005), 0.05),
                lambda: self._enqueue(rt, rt.pipeline.release_waiting(
                    time.monotonic_ns() - int(wait_s * 1e9))),
                callback_group=self._input_group)
        if rt.pipeline.policy.keyframe_mode == 'external':
            rt.subscriptions.append(self.create_subscription(
                Header, node.keyframe_topic, self._on_keyframe_stamp,
                QoSProfile(depth=100), callback_group=self._input_group))
        if rt.sharing is not None:
            rt.subscriptions.append(rt.sharing.subscribe())
        with self._cond:
            self._stopping = False
        self._worker = threading.Thread(target=self._work, name='vpr_worker', daemon=True)
        self._worker.start()
        self._set(rt, 'active')
        self.get_logger().info(f'active: listening on {list(rt.queues)}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._set(self._rt, 'inactive')
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

    def _configure(self, values: dict[str, Any]) -> _Configured:
        node = from_values(params.NodeSettings, values)
        policy = from_values(KeyframePolicy, values)
        cameras = [self._topic(t, key) for key in ('image_topics', 'compressed_topics')
                   for t in getattr(node, key)]
        odometry = (self._topic(node.odometry_topic, 'odometry_topic')
                    if node.odometry_topic else '')
        if policy.keyframe_mode == 'external':
            self._topic(node.keyframe_topic, 'keyframe_topic')
        if not cameras:
            raise params.ParameterValueError(
                'no camera: set image_topics and/or compressed_topics')
        if len(set(cameras)) != len(cameras):
            raise params.ParameterValueError(f'a camera topic is listed twice: {cameras}')
        camera_infos = self._per_camera(node.camera_info_topics, 'camera_info_topics', cameras)
        if not node.camera_info_topics:
            camera_infos = {c: camera_info_topic(c) for c in cameras}
        depths = self._per_camera(node.depth_topics, 'depth_topics', cameras)
        outputs.check(node)  # a backend's missing messages fail configure before the model loads
        verification = from_values(VerificationSettings, values)
        model_settings = from_values(ModelSettings, values)
        detector_config = from_values(DetectorConfig, values)
        map_settings = from_values(MapSettings, values)
        pipeline_config = from_values(PipelineConfig, values)
        if detector_config.mode != 'grow' and not node.map_path:
            raise params.ParameterValueError(
                f'mode {detector_config.mode} starts from a prebuilt map: set map_path')
        if policy.keyframe_mode == 'distance' and not odometry:
            raise params.ParameterValueError(
                'keyframe_mode distance needs odometry: set odometry_topic')
        check_sharing(node, map_settings.robot_id, detector_config.mode)
        if node.share_keyframes:
            self._topic(node.shared_keyframes_topic, 'shared_keyframes_topic')
        root = map_root(node.map_directory)
        map_file = self._map_uri(root, node.map_path) if node.map_path else None
        model = model_settings.load()
        kmap: KeyframeStore | None = None
        if map_file is not None:
            try:
                kmap = open_store(map_file, model_id=model.model_id, dim=model.descriptor_dim)
            except MapNotFound:
                if not is_milvus(map_file) or detector_config.mode != 'grow':
                    raise  # a Milvus map a robot grows is created below, with its preprocessing
            if isinstance(kmap, KeyframeMap):
                spec = map_settings.index_spec(kmap.index_spec)
                if spec != kmap.index_spec:
                    kmap.rebuild_index(spec)
        session = map_settings.session or datetime.now(timezone.utc).strftime(
            'session-%Y%m%dT%H%M%SZ')
        if detector_config.mode == 'both' and kmap.session_size(session) > 0:
            raise params.ParameterValueError(
                f'mode both grows a new session, but session {session!r} is already in the '
                f'map {map_file}: set session to a new name')
        extractor = model_settings.extractor(model, batch_size=max(1, len(cameras)),
                                             stored=kmap.preprocess if kmap else None)
        if kmap is None:
            new = {'model_id': extractor.model_id, 'dim': extractor.dim,
                   'preprocess': extractor.preprocess_config.to_dict()}
            kmap = (open_store(map_file, **new, create=True) if map_file is not None
                    else KeyframeMap(index=map_settings.index_spec(), **new))
        poses = (PoseBuffer(policy.pose_tolerance_s, source=f'odometry:{odometry}')
                 if odometry else None)
        verifier = (GeometricVerifier(verification, kmap) if verification.verification
                    else None)
        if verifier is not None and len(kmap) and not kmap.statistics()['with_features']:
            self.get_logger().warning(
                f'the map {map_file} stores no local features (built before verification, or '
                'with it off): verification will reject all of its keyframes; rebuild it with '
                '`boq-ros map build`, or set verification to false')
        pipeline = FramePipeline(extractor, policy, pipeline_config, session=session,
                                 robot_id=map_settings.robot_id, poses=poses,
                                 on_skip=self._on_skip, stats=self._stats,
                                 on_note=lambda text: self.get_logger().warning(text),
                                 verifier=verifier)
        for camera in depths:
            pipeline.expect_depth(camera)
        if node.camera_info_topics:  # named: intrinsics are part of the setup, so wait for them
            for camera in camera_infos:
                pipeline.expect_camera_model(camera)
        made = outputs.create(outputs.OutputContext(
            self, self._stats.count, lambda text: self._fail('output', text)), node)
        reliable = QoSProfile(depth=10)
        publishers = {
            'pose': self.create_publisher(PoseWithCovarianceStamped, POSE_TOPIC, reliable),
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
        rt = _Configured(settings=node, pipeline=pipeline, kmap=kmap,
                      detector=LoopDetector(kmap, detector_config, verifier), verifier=verifier,
                      camera_infos=camera_infos, depths=depths, root=root,
                      publishers=publishers, services=services, outputs=made)
        for camera in cameras:
            rt.queues[camera] = deque()
        if node.share_keyframes:
            rt.sharing = KeyframeSharing(
                SharingContext(
                    self, self._map_lock, lambda: rt.detector, self._stats.count, self._fail,
                    lambda decision, loop: self._on_shared_decision(rt, decision, loop)),
                node, robot_id=map_settings.robot_id, session=session,
                model_id=extractor.model_id, dim=extractor.dim)
        return rt

    def _per_camera(self, topics: list[str], param: str, cameras: list[str]) -> dict[str, str]:
        """Pair a per-camera topic list with the cameras ('' entries: that camera has none)."""
        if topics and len(topics) != len(cameras):
            raise params.ParameterValueError(
                f'{param} needs one entry per camera ({len(cameras)}: {cameras}), got '
                f'{len(topics)}')
        return {camera: self._topic(topic, param)
                for camera, topic in zip(cameras, topics) if topic}

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
        with self._cond:  # a callback still running after this queues nothing
            self._accepting = False
        for sub in rt.subscriptions:
            self.destroy_subscription(sub)
        rt.subscriptions.clear()
        if rt.pose_timer is not None:
            self.destroy_timer(rt.pose_timer)
            rt.pose_timer = None
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        with self._cond:
            for queue in rt.queues.values():
                queue.clear()

    def _release(self) -> None:
        with self._life:
            rt, self._rt, self._state = self._rt, None, 'unconfigured'
        if rt is None:
            return
        for service in rt.services:
            self.destroy_service(service)
        for publisher in rt.publishers.values():
            self.destroy_publisher(publisher)
        for output in rt.outputs:
            output.close()
        if rt.sharing is not None:
            rt.sharing.close()
        try:
            rt.kmap.close()  # a Milvus store writes what is pending, then disconnects
        except MapError as err:
            self.get_logger().error(f'closing the map: {reason(err)}')
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
                value = spec.check(param.value)
            except params.ParameterValueError as err:
                return SetParametersResult(successful=False, reason=str(err))
            if spec.when == 'configure' and self._rt is not None:
                return SetParametersResult(
                    successful=False,
                    reason=f'parameter {param.name} is read at configure: deactivate and clean '
                           'up the node first, then configure it again')
            if spec.when == 'live':
                live[param.name] = value
        rt = self._rt
        if rt is not None and live:
            try:
                config = from_values(DetectorConfig, {**asdict(rt.detector.config), **live})
                node = from_values(params.NodeSettings, {**asdict(rt.settings), **live})
                verification = None
                if rt.verifier is not None:
                    verification = from_values(VerificationSettings,
                                               {**asdict(rt.verifier.settings), **live})
            except SettingError as err:
                return SetParametersResult(successful=False, reason=str(err))
            with self._map_lock:
                rt.settings, rt.detector.config = node, config
                if verification is not None:
                    rt.verifier.settings = verification
        return SetParametersResult(successful=True)

    # -- inputs (executor threads, serialised: no decoding, no computing) ---------------------
    def _on_image(self, msg: Image | CompressedImage, camera: str) -> None:
        rt = self._rt
        if rt is None:
            return
        self._enqueue(rt, rt.pipeline.offer(convert.frame(msg, camera, time.monotonic_ns())))

    def _enqueue(self, rt: _Configured, selected: list[Selected]) -> None:
        if not selected:
            return
        dropped = 0
        with self._cond:
            if not self._accepting:
                return
            for item in selected:
                queue = rt.queues[item.frame.camera]
                queue.append(item)
                if len(queue) > rt.settings.queue_size:
                    queue.popleft()
                    dropped += 1
            self._cond.notify()
        if dropped:
            self._stats.count('queue_drops', dropped)

    def _on_depth(self, msg: Image, camera: str) -> None:
        rt = self._rt
        if rt is None:
            return
        try:
            self._enqueue(rt, rt.pipeline.add_depth(convert.depth_frame(msg, camera),
                                                    time.monotonic_ns()))
        except OutlierStamp as err:
            self._fail('input', f'depth image: {err}')
        self._stats.count('depth_images')  # after its effect

    def _on_odometry(self, msg: Odometry) -> None:
        rt = self._rt
        if rt is None:
            return
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        try:
            selected = rt.pipeline.add_pose(stamp_to_ns(msg.header.stamp), (p.x, p.y, p.z),
                                            (q.x, q.y, q.z, q.w), msg.header.frame_id,
                                            time.monotonic_ns())
        except PoseError as err:
            self._fail('input', f'odometry: {err}')
            selected = []
        self._enqueue(rt, selected)
        self._stats.count('odometry')  # after its effect: a reader of the count sees it

    def _on_keyframe_stamp(self, msg: Header) -> None:
        rt = self._rt
        if rt is None:
            return
        try:
            self._enqueue(rt, rt.pipeline.add_keyframe_stamp(stamp_to_ns(msg.stamp),
                                                             time.monotonic_ns()))
        except OutlierStamp as err:
            self._fail('input', f'keyframe stamp: {err}')
        self._stats.count('keyframe_stamps')  # after its effect

    # -- worker ---------------------------------------------------------------------------
    def _work(self) -> None:
        rt = self._rt
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or any(rt.queues.values()))
                if self._stopping:
                    return
                items = [q.popleft() for q in rt.queues.values() if q]
            try:
                self._process(rt, items)
            except Exception as err:  # noqa: BLE001 - the worker must survive anything
                self._fail('internal', f'{err}\n{traceback.format_exc()}')

    def _count_error(self, kind: str, text: str) -> None:
        self._last_error = f'{kind}: {text}'
        self._stats.count(f'{kind}_errors')

    def _fail(self, kind: str, text: str) -> None:
        self._count_error(kind, text.splitlines()[0] if text else kind)
        self.get_logger().warning(f'{kind} error: {text}',
                                  throttle_duration_sec=_LOG_THROTTLE_S)

    def _on_skip(self, cause: str, text: str) -> None:
        self._fail(_ERROR_OF_SKIP[cause], text)

    def _process(self, rt: _Configured, items: list[Selected]) -> None:
        now = time.monotonic_ns()
        for item in items:
            self._stats.time('queue', (now - item.frame.received_ns) * 1e-9)
        keyframes = rt.pipeline.describe(items)
        if not keyframes:
            return
        start = time.perf_counter()
        results = self._detect(rt, keyframes)
        self._stats.time('search', time.perf_counter() - start)
        for kf, detection in zip(keyframes, results):
            if detection is None:
                continue
            start = time.perf_counter()
            self._publish(rt, kf, detection)
            self._stats.time('publish', time.perf_counter() - start)
            self._stats.time('total', (time.monotonic_ns() - kf.frame.received_ns) * 1e-9)

    def _detect(self, rt: _Configured, keyframes: list[Keyframe]) -> list[Detection | None]:
        """Batched decision; on a refusal, one query at a time so only the bad one is lost.

        The detector decides and adds all or nothing, so the retry adds no keyframe twice.
        """
        metas = [kf.meta for kf in keyframes]
        with self._map_lock:
            detector = rt.detector
            try:
                return list(detector.process_batch(
                    np.stack([kf.descriptor for kf in keyframes]), metas,
                    [kf.features for kf in keyframes]))
            except ValueError as err:
                if len(metas) == 1:
                    self._fail('map', f'{metas[0].camera}: {err}')
                    return [None]
            results: list[Detection | None] = []
            for kf in keyframes:
                try:
                    results.append(detector.process(kf.descriptor, kf.meta, kf.features))
                except ValueError as err:
                    self._fail('map', f'{kf.meta.camera}: {err}')
                    results.append(None)
            return results

    def _publish(self, rt: _Configured, kf: Keyframe, detection: Detection) -> None:
        node, pubs = rt.settings, rt.publishers
        query = detection.query
        accepted = detection.match
        match = accepted.meta if accepted is not None else None
        self._count_verification(detection)
        debug = node.publish_debug_image
        thumb = None  # needed for a debug view now, or to show this keyframe as a match later
        if debug and (match is not None or query.id >= 0):
            thumb = convert.thumbnail(kf.image, kf.encoding, _THUMBNAIL_HEIGHT)
        with self._map_lock:
            rt.latest[kf.frame.camera] = (kf.descriptor, query, kf.features)
            map_id = rt.kmap.map_id
            match_thumb = rt.thumbnails.get(match.id) if debug and match else None
            if debug and query.id >= 0:
                rt.thumbnails[query.id] = thumb
                while len(rt.thumbnails) > _THUMBNAILS_KEPT:
                    del rt.thumbnails[next(iter(rt.thumbnails))]
        self._stats.count('answered')  # before publishing: a reader never sees more answers
        if match is not None:
            self._stats.count('accepted')
        self._send(rt, outputs.Decision(detection, rt.extractor.model_id, map_id))
        if rt.sharing is not None and detection.added:
            rt.sharing.share(query, kf.descriptor, kf.features, map_id)
        if match is None:
            return
        if node.publish_pose:
            pose = self._relocalization(accepted, query, node)
            if pose is not None:
                pubs['pose'].publish(pose)
        if node.publish_markers:
            marker = convert.loop_marker(query, match, query.id % 2 ** 31)
            if marker is not None:
                pubs['markers'].publish(MarkerArray(markers=[marker]))
        if debug:
            view = convert.side_by_side(thumb, match_thumb)
            header = Header(stamp=convert.ns_to_stamp(query.stamp_ns), frame_id=query.frame_id)
            pubs['debug_image'].publish(convert.image_msg(view, 'rgb8', header))

    def _send(self, rt: _Configured, decision: outputs.Decision) -> None:
        for output in rt.outputs:
            if output.enabled(rt.settings):
                try:
                    output.publish(decision)
                except Exception as err:  # noqa: BLE001 - one consumer must not stop the others
                    self._fail('output', f'{type(output).__name__}: {reason(err)}')

    def _on_shared_decision(self, rt: _Configured, decision: outputs.Decision, loop: bool
                            ) -> None:
        """Another robot's keyframe was searched on arrival: count it, send a loop it closed."""
        self._count_verification(decision.detection)
        if loop:
            self._send(rt, decision)

    def _count_verification(self, detection: Detection) -> None:
        tried = [c.verification for c in detection.candidates if c.verification is not None]
        if not tried:
            return
        self._stats.time('verify', sum(v.seconds for v in tried))
        for v in tried:
            self._stats.count('verified' if v.verified else f'verification_{v.cause}')

    @staticmethod
    def _relocalization(candidate: Candidate, query: KeyframeMeta, node: params.NodeSettings
                        ) -> PoseWithCovarianceStamped | None:
        """Return the query's map pose: the match's composed with the verified relative pose.

        Without a metric verified pose: the match's own pose with the configured covariance.
        """
        v = candidate.verification
        match = candidate.meta
        if (v is not None and v.verified and match.pose is not None
                and v.pose_kind == PoseKind.METRIC and v.covariance_base is not None):
            found = relocalized(match.pose, v.relative_pose_base, v.covariance_base)
            if found is not None:
                return convert.stamped_pose(*found, query.stamp_ns, match.pose_frame)
        return convert.relocalization_pose(query, match, node.relocalization_covariance)

    @staticmethod
    def _map_uri(root: Path, map_path: str) -> str | Path:
        """Return a Milvus URI as it is, a FAISS map's directory confined to the map directory."""
        return map_path if is_milvus(map_path) else resolve_map_path(root, faiss_path(map_path))

    # -- services -------------------------------------------------------------------------
    def _on_save_map(self, request: SaveMap.Request, response: SaveMap.Response
                     ) -> SaveMap.Response:
        rt = self._rt
        try:
            if not request.path and is_milvus(rt.settings.map_path):
                raise MapError('the map is a Milvus store (written as it grows): name a path to '
                               'save a FAISS copy of it')
            path = resolve_map_path(rt.root, faiss_path(request.path or rt.settings.map_path))
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._map_lock:
                save_copy(rt.kmap, path)
                count = len(rt.kmap)
        except Exception as err:  # noqa: BLE001 - a service must never take the node down
            response.success, response.message = False, reason(err)
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
            if is_milvus(request.path):
                raise MapError('load_map opens FAISS maps of the map directory; a Milvus store '
                               'is chosen by the map_path parameter')
            path = resolve_map_path(rt.root, faiss_path(request.path))
            kmap = KeyframeMap.load(path, expect_model_id=extractor.model_id,
                                    expect_dim=extractor.dim)
            if kmap.preprocess != extractor.preprocess_config.to_dict():
                raise MapError(
                    f'map {path} was built with preprocessing {kmap.preprocess}, the node runs '
                    f'{extractor.preprocess_config.to_dict()}: configure the node with the '
                    "map's resize_policy and input_size")
            with self._map_lock:
                if isinstance(rt.kmap, KeyframeMap) and kmap.map_id == rt.kmap.map_id:
                    kmap.skip_ids_below(rt.kmap.schema.next_id)  # published ids never reused
                if rt.verifier is not None:
                    rt.verifier.map = kmap
                detector = LoopDetector(kmap, rt.detector.config, rt.verifier)
                old, rt.kmap, rt.detector = rt.kmap, kmap, detector
                rt.latest.clear()
                rt.thumbnails.clear()
            old.close()
        except Exception as err:  # noqa: BLE001 - e.g. MemoryError for a map too large
            response.success, response.message = False, reason(err)
            self._fail('service', f'load_map: {response.message}')
            with self._map_lock:
                response.keyframes = len(rt.kmap)
            return response
        response.success, response.keyframes = True, len(kmap)
        response.message = f'loaded {len(kmap)} keyframes from {path}'
        return response

    def _on_relocalize(self, request: Relocalize.Request, response: Relocalize.Response
                       ) -> Relocalize.Response:
        try:
            return self._relocalize(request, response)
        except Exception as err:  # noqa: BLE001 - a service must never take the node down
            response = Relocalize.Response(success=False, message=reason(err))
            self._fail('service', f'relocalize: {response.message}')
            return response

    def _relocalize(self, request: Relocalize.Request, response: Relocalize.Response
                    ) -> Relocalize.Response:
        """Answer with a side-effect-free query of the map with a camera's latest keyframe."""
        rt = self._rt
        if request.top_k:  # a client's 2^32-1 must not allocate gigabytes
            try:
                params.PARAMS['top_k'].setting.check(request.top_k)
            except SettingError as err:
                raise SettingError(f'request {err}') from None
        camera = self._topic(request.camera, 'camera') if request.camera else ''
        with self._map_lock:
            if camera:
                latest = rt.latest.get(camera)
            else:
                latest = max(rt.latest.values(), key=lambda item: item[1].stamp_ns,
                             default=None)
            if latest is None:
                response.success = False
                response.message = (f'no keyframe from camera {camera!r} yet'
                                    if camera else 'no keyframe yet')
                return response
            descriptor, query, features = latest
            detection = rt.detector.query(descriptor, query, top_k=request.top_k or None,
                                          features=features)
            map_id = rt.kmap.map_id
        response.success = True
        response.candidates = convert.candidate_array(detection, rt.extractor.model_id, map_id)
        if not detection.candidates:
            response.message = 'no map keyframe outside the exclusion window'
        elif not detection.accepted:
            response.message = f'best candidate rejected ({detection.candidates[0].reason})'
        else:
            match = detection.match
            pose = self._relocalization(match, query, rt.settings)
            response.has_pose = pose is not None
            if pose is not None:
                response.pose = pose
            verified = match.verification is not None and match.verification.verified
            response.message = ('match has no pose' if pose is None else
                                'relocalised, verified' if verified else 'relocalised')
        return response

    # -- diagnostics ----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        totals, window, latency, elapsed = self._stats.take_window()
        last_error = self._last_error
        with self._life:
            rt, state = self._rt, self._state
        values = [('state', state)]
        if rt is not None:
            rt.kmap.flush()  # a Milvus store retries writes the server did not take
            with self._map_lock:
                map_size, map_id = len(rt.kmap), rt.kmap.map_id
                store = rt.kmap.health()
            values += [('device', str(rt.extractor.device)), ('model', rt.extractor.model_id),
                       ('runtime', '; '.join(f'{shape}: {what}' for shape, what in
                                             rt.extractor.runtime_status().items())
                        or rt.extractor.runtime),
                       ('map_id', map_id), ('map_keyframes', map_size), ('map_uri', rt.kmap.uri),
                       *((f'map_{key}', value) for key, value in store.items()),
                       ('session', rt.session), ('mode', rt.detector.config.mode),
                       ('cameras', ' '.join(rt.queues))]
        rate = 1.0 / elapsed if elapsed > 0 else 0.0
        values += [('input_rate_hz', f'{window.get("frames", 0) * rate:.2f}'),
                   ('keyframe_rate_hz', f'{window.get("keyframes", 0) * rate:.2f}'),
                   ('accepted_rate_hz', f'{window.get("accepted", 0) * rate:.2f}')]
        for key in ('frames', 'keyframes', 'answered', 'accepted', 'queue_drops', 'odometry',
                    'keyframe_stamps', 'depth_images', 'verified',
                    *(f'verification_{c}' for c in REJECTION_CAUSES), 'feature_errors',
                    'depth_errors', 'camera_info_errors', *outputs.COUNTERS,
                    *SHARING_COUNTERS):
            values.append((f'{key}_total', totals.get(key, 0)))
        if rt is not None:
            values.append(('verification', rt.verifier.settings.feature_kind
                           if rt.verifier is not None else 'off'))
            for output in rt.outputs:
                values += output.gauges()
            if rt.sharing is not None:
                values += rt.sharing.gauges()
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
        level, message = DiagnosticStatus.OK, state
        if troubles or window.get('queue_drops', 0):
            level = DiagnosticStatus.WARN
            message = (f'{state}: {troubles} errors, {window.get("queue_drops", 0)} '
                       'dropped frames in the last period')
        status = DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: loop closure',
            message=message, hardware_id=str(rt.extractor.device) if rt is not None else '',
            values=[KeyValue(key=k, value=str(v)) for k, v in values])
        self._diag_pub.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until Ctrl-C; with autostart, configure and activate it first."""
    import signal

    handles_signals = threading.current_thread() is threading.main_thread()
    if handles_signals:
        signal.signal(signal.SIGINT, interrupt_once)
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
        if handles_signals:  # whatever ended the spin, Ctrl-C no longer interrupts the cleanup
            signal.signal(signal.SIGINT, ignore_interrupt)
        node._stop_inputs()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        if handles_signals:
            # Ignored by the kernel from here on (rclpy.shutdown reinstated Python's handler,
            # which the interpreter's exit would reset to the default: death by SIGINT).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0


if __name__ == '__main__':
    sys.exit(main())
