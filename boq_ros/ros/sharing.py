"""Multi-robot keyframe sharing: the nodes of one domain exchange their keyframes on a topic.

Each node publishes every keyframe it adds to its map as a boq_ros/SharedKeyframe (descriptor,
identity, pose and, with share_features, the local features verification needs) on
shared_keyframes_topic, and adds the other robots' keyframes to its own map, under their own robot
and session. The detector treats them as keyframes of another session (never the query's recent
past), so the node's own queries find inter-robot loops with the same tests and verification as
any other loop. With query_shared_keyframes, a received keyframe is also searched against the map
when it arrives: the loop it closes with one of this robot's keyframes is found even if this robot
never comes back there, or if the keyframe arrives after this robot's own (a robot out of radio
range, one that joined later).

A received keyframe that cannot join the map is refused, counted by cause and logged: another
model, a descriptor of another dimension, not finite or not of unit length, malformed local
features or metadata, a session that another robot (or this node) already uses. A keyframe that
is already in the map (same session, camera and stamp: a re-delivery) is not added again. Nothing
a peer sends can stop the node or change the keyframes it already holds.

The descriptor is sent whole (float32, or float16 for half the bytes): the map's PCA, when it has
one, is learnt from that robot's own map, so its projection means nothing to the others.
"""
import array
from collections.abc import Callable
from dataclasses import dataclass
import threading
import traceback
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from boq_ros.detector import LoopDetector
from boq_ros.keyframe_map import (
    KeyframeMeta,
    KeyframeStore,
    LocalFeatures,
    MapError,
    SearchFilter,
)
from boq_ros.keyframe_map.base import NORM_TOLERANCE
from boq_ros.keyframe_map.features import DESCRIPTOR_DTYPES
from boq_ros.keyframe_map.meta import check_meta
from boq_ros.msg import SharedKeyframe
from boq_ros.ros import convert
from boq_ros.ros.outputs import Decision
from boq_ros.ros.params import NodeSettings, ParameterValueError
from boq_ros.ros.process import reason

ENCODINGS = ('float32', 'float16')
"""Descriptor encodings of SharedKeyframe (descriptor_encoding)."""
REJECTION_CAUSES = ('model', 'encoding', 'dimension', 'non_finite', 'norm', 'features',
                    'metadata', 'session', 'map')
"""Why a received keyframe was refused: counted as /diagnostics shared_rejected_<cause>_total."""
COUNTERS = ('shared_sent', 'shared_received', 'shared_added', 'shared_duplicates',
            'shared_queries', 'shared_loops', *(f'shared_rejected_{c}' for c in REJECTION_CAUSES))
"""The /diagnostics totals of sharing (each shown as `<name>_total`)."""


class SharingError(ValueError):
    """Raised for a received keyframe that cannot join the map; `cause` says why."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def check(settings: NodeSettings, robot_id: str, mode: str) -> None:
    """Refuse settings under which sharing cannot work (at configure, before the model loads)."""
    if not settings.share_keyframes:
        return
    if not robot_id:
        raise ParameterValueError(
            'share_keyframes needs robot_id: set it to a name unique to this robot (it tells '
            "this robot's keyframes from the others')")
    if mode == 'static':
        raise ParameterValueError(
            'share_keyframes shares the keyframes the map grows with and adds the other '
            "robots' to it, but mode static never changes the map: use mode grow or both")


def sharing_qos(kind: str, depth: int) -> QoSProfile:
    """QoS of both ends of the topic: reliable (large messages), transient_local or volatile."""
    durability = (DurabilityPolicy.TRANSIENT_LOCAL if kind == 'transient_local'
                  else DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE, durability=durability)


# -- conversion ---------------------------------------------------------------------------------
def _floats(values: np.ndarray) -> array.array:
    out = array.array('f')
    out.frombytes(np.ascontiguousarray(values, np.float32).tobytes())
    return out


def _bytes(values: np.ndarray) -> array.array:
    out = array.array('B')
    out.frombytes(np.ascontiguousarray(values).tobytes())
    return out


def keyframe_message(meta: KeyframeMeta, descriptor: np.ndarray, features: LocalFeatures | None,
                     model_id: str, map_id: str, encoding: str = 'float32') -> SharedKeyframe:
    """Build the message of one keyframe of the map (`meta` with its id and seq)."""
    msg = SharedKeyframe(
        header=Header(stamp=convert.ns_to_stamp(meta.stamp_ns), frame_id=meta.frame_id),
        robot_id=meta.robot_id, session=meta.session, camera=meta.camera, id=meta.id,
        seq=meta.seq, map_id=map_id, model=model_id, descriptor_encoding=encoding)
    if encoding == 'float16':
        msg.descriptor_float16 = _bytes(np.asarray(descriptor).astype('<f2'))
    else:
        msg.descriptor = _floats(descriptor)
    if meta.pose is not None:
        msg.has_pose = True
        p, o = msg.pose.position, msg.pose.orientation
        p.x, p.y, p.z, o.x, o.y, o.z, o.w = (float(v) for v in meta.pose)
        msg.pose_frame, msg.pose_source = meta.pose_frame, meta.pose_source
    if features is not None:
        desc = features.descriptors
        msg.features_kind = features.kind
        msg.image_width, msg.image_height = features.image_size
        msg.keypoints = _floats(features.keypoints)
        msg.features_dtype, msg.features_dim = desc.dtype.name, desc.shape[1]
        msg.features_descriptors = _bytes(desc.astype(desc.dtype.newbyteorder('<')))
        msg.intrinsics = list(features.intrinsics or ())
        if features.depth is not None:
            msg.has_depth, msg.depth = True, _floats(features.depth)
    return msg


@dataclass(frozen=True)
class ReceivedKeyframe:
    """Another robot's keyframe, validated: what the map takes."""

    meta: KeyframeMeta  # the sender's robot, session, camera, stamp, pose (id and seq: ours)
    descriptor: np.ndarray  # [dim] float32, unit length
    features: LocalFeatures | None
    id: int  # its id in the sender's map
    map_id: str  # the sender's map


def received_keyframe(msg: SharedKeyframe, model_id: str, dim: int) -> ReceivedKeyframe:
    """Validate a received message (SharingError naming the cause) and convert it."""
    if msg.model != model_id:
        raise SharingError('model', f'descriptors of model {msg.model!r}, this node runs '
                                    f'{model_id!r}')
    return ReceivedKeyframe(_meta(msg), _descriptor(msg, dim), _features(msg), int(msg.id),
                            msg.map_id)


def _descriptor(msg: SharedKeyframe, dim: int) -> np.ndarray:
    encoding = msg.descriptor_encoding
    if encoding == 'float32':
        values = np.frombuffer(msg.descriptor, np.float32)
    elif encoding == 'float16':
        raw = np.frombuffer(msg.descriptor_float16, np.uint8)
        if raw.size % 2:
            raise SharingError('dimension', f'{raw.size} float16 descriptor bytes: not pairs')
        values = raw.view('<f2').astype(np.float32)
    else:
        raise SharingError('encoding', f'descriptor_encoding {encoding!r} is not one of '
                                       f'{list(ENCODINGS)}')
    if values.size != dim:
        raise SharingError('dimension', f"{values.size}-d descriptor, this node's are {dim}-d")
    if not np.isfinite(values).all():
        raise SharingError('non_finite', 'descriptor contains NaN or infinity')
    norm = float(np.linalg.norm(values.astype(np.float64)))
    if abs(norm - 1.0) > NORM_TOLERANCE:
        raise SharingError('norm', f'descriptor is not L2-normalised (norm {norm:.4f}, '
                                   f'tolerance {NORM_TOLERANCE})')
    if encoding == 'float16':  # rounded: unit length again, as the map's own descriptors
        values = (values / norm).astype(np.float32)
    return values.copy()


def _meta(msg: SharedKeyframe) -> KeyframeMeta:
    for name in ('robot_id', 'session'):
        if not getattr(msg, name):
            raise SharingError('metadata', f'{name} is empty')
    pose = None
    if msg.has_pose:
        p, o = msg.pose.position, msg.pose.orientation
        pose = (p.x, p.y, p.z, o.x, o.y, o.z, o.w)
    meta = KeyframeMeta(
        stamp_ns=msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec, session=msg.session,
        robot_id=msg.robot_id, camera=msg.camera, frame_id=msg.header.frame_id, pose=pose,
        pose_frame=msg.pose_frame if pose else '', pose_source=msg.pose_source if pose else '')
    try:
        check_meta(meta, 'shared keyframe')
    except MapError as err:
        raise SharingError('metadata', str(err)) from None
    return meta


def _features(msg: SharedKeyframe) -> LocalFeatures | None:
    if not msg.features_kind:
        return None
    keypoints = np.frombuffer(msg.keypoints, np.float32)
    if keypoints.size % 2:
        raise SharingError('features', f'{keypoints.size} keypoint coordinates: not (x, y) '
                                       'pairs')
    n, dim = keypoints.size // 2, msg.features_dim
    if msg.features_dtype not in DESCRIPTOR_DTYPES:
        raise SharingError('features', f'features_dtype {msg.features_dtype!r} is not one of '
                                       f'{list(DESCRIPTOR_DTYPES)}')
    dtype = np.dtype(msg.features_dtype)
    raw = np.frombuffer(msg.features_descriptors, np.uint8)
    if dim < 1 or raw.size != n * dim * dtype.itemsize:
        raise SharingError('features', f'{raw.size} descriptor bytes for {n} keypoints of '
                                       f'{dim} {dtype.name} values')
    if len(msg.intrinsics) not in (0, 4):
        raise SharingError('features', f'{len(msg.intrinsics)} intrinsics: fx fy cx cy, or '
                                       'none')
    depth = np.frombuffer(msg.depth, np.float32).copy() if msg.has_depth else None
    try:
        return LocalFeatures(
            msg.features_kind, keypoints.reshape(n, 2).copy(),
            raw.view(dtype.newbyteorder('<')).astype(dtype).reshape(n, dim),
            (msg.image_width, msg.image_height),
            tuple(msg.intrinsics) if len(msg.intrinsics) else None, depth)
    except MapError as err:
        raise SharingError('features', str(err)) from None


# -- the node's side ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SharingContext:
    """What the sharing adapter may use of the node."""

    node: Any  # the rclpy node its publisher and subscription live on
    lock: threading.Lock  # the node's map lock: remote keyframes join the map under it
    detector: Callable[[], LoopDetector]  # the node's detector (and map) now; called under lock
    count: Callable[[str], None]  # add one to the /diagnostics total `<name>_total`
    fail: Callable[[str, str], None]  # (error kind, text): counted, logged, last_error
    answer: Callable[[Decision, bool], None]  # a received keyframe's decision, and if a loop


class KeyframeSharing:
    """The node's end of the fleet topic: publishes its keyframes, adds the other robots'."""

    def __init__(self, context: SharingContext, settings: NodeSettings, *, robot_id: str,
                 session: str, model_id: str, dim: int) -> None:
        self.context, self.settings = context, settings
        self.robot_id, self.session, self.model_id, self.dim = robot_id, session, model_id, dim
        self._qos = sharing_qos(settings.shared_keyframes_qos,
                                settings.shared_keyframes_qos_depth)
        self._group = MutuallyExclusiveCallbackGroup()
        self._publisher = context.node.create_publisher(
            SharedKeyframe, settings.shared_keyframes_topic, self._qos)
        self._owners: dict[str, str] = {}  # session -> its robot, in the map named _owners_map
        self._owners_map = ''
        self.robots: tuple[str, ...] = ()  # robots heard from, sorted (read by diagnostics)

    def subscribe(self) -> Any:
        """Subscribe to the other robots' keyframes (at activate); return the subscription."""
        return self.context.node.create_subscription(
            SharedKeyframe, self.settings.shared_keyframes_topic, self.receive, self._qos,
            callback_group=self._group)

    def close(self) -> None:
        self.context.node.destroy_publisher(self._publisher)

    def gauges(self) -> list[tuple[str, str]]:
        return [('shared_robots', ' '.join(self.robots))]

    def share(self, meta: KeyframeMeta, descriptor: np.ndarray, features: LocalFeatures | None,
              map_id: str) -> None:
        """Publish one keyframe the node added to its map."""
        try:
            self._publisher.publish(keyframe_message(
                meta, descriptor, features if self.settings.share_features else None,
                self.model_id, map_id, self.settings.shared_descriptor_encoding))
        except Exception as err:  # noqa: BLE001 - the node's own work goes on regardless
            self.context.fail('output', f'shared keyframe: {reason(err)}')
            return
        self.context.count('shared_sent')

    def receive(self, msg: SharedKeyframe) -> None:
        """Add another robot's keyframe to the map; refuse (count, log) what cannot join it."""
        if msg.robot_id == self.robot_id:
            return  # this robot's own, back from the topic
        self.context.count('shared_received')
        try:
            self._receive(msg)
        except SharingError as err:
            self.context.count(f'shared_rejected_{err.cause}')
            self.context.fail('input', f'shared keyframe from robot {msg.robot_id!r} refused '
                                       f'({err.cause}): {err}')
        except Exception as err:  # noqa: BLE001 - a peer's message must never stop the node
            self.context.fail('internal', f'shared keyframe from robot {msg.robot_id!r}: '
                                          f'{reason(err)}\n{traceback.format_exc()}')

    def _receive(self, msg: SharedKeyframe) -> None:
        kf = received_keyframe(msg, self.model_id, self.dim)
        detection = None
        with self.context.lock:
            detector = self.context.detector()
            kmap = detector.map
            if kmap.find([kf.meta])[0] >= 0:
                self.context.count('shared_duplicates')
                return
            self._claim(kmap, kf)
            if self.settings.query_shared_keyframes:  # before it joins: it must not find itself
                detection = detector.query(kf.descriptor, kf.meta, features=kf.features)
            try:
                kf_id = int(kmap.add(kf.descriptor[None], [kf.meta], [kf.features])[0])
            except MapError as err:
                raise SharingError('map', str(err)) from None
            map_id = kmap.map_id
            if detection is not None:
                detection.query = kmap.meta(kf_id)
        if kf.meta.robot_id not in self.robots:
            self.robots = tuple(sorted({*self.robots, kf.meta.robot_id}))
        self.context.count('shared_added')
        if detection is None:
            return
        self.context.count('shared_queries')
        loop = detection.match
        own = loop is not None and loop.meta.robot_id == self.robot_id
        if own:
            self.context.count('shared_loops')  # before it is sent: a reader never sees more
        self.context.answer(Decision(detection, self.model_id, map_id), own)

    def _claim(self, kmap: KeyframeStore, kf: ReceivedKeyframe) -> None:
        """Refuse a session that this node or another robot already uses in the map.

        Two robots' keyframes in one session would mix their seqs, exclusion windows and
        regions (and this node's own session would exclude them as its recent past).
        """
        if kmap.map_id != self._owners_map:  # a new map (load_map): learn its sessions again
            self._owners, self._owners_map = {self.session: self.robot_id}, kmap.map_id
        session, robot = kf.meta.session, kf.meta.robot_id
        owner = self._owners.get(session)
        if owner is None:
            owner = self._owners[session] = _stored_owner(kmap, session, kf.descriptor) or robot
        if owner != robot:
            whose = "this node's own" if owner == self.robot_id else f"robot {owner!r}'s"
            raise SharingError('session', f'session {session!r} is {whose} in this map: every '
                                          'robot needs a session name of its own')


def _stored_owner(kmap: KeyframeStore, session: str, descriptor: np.ndarray) -> str | None:
    """Return the robot of a session the map holds already (a loaded map); None: it holds none."""
    if not kmap.session_size(session):
        return None
    hits = kmap.search(descriptor[None], 1, SearchFilter(sessions=frozenset([session])))
    kf_id = int(hits.ids[0, 0])
    return kmap.meta(kf_id).robot_id if kf_id >= 0 else None
