"""Translation between ROS messages and the ROS-free core (images, keyframes, detections).

Camera messages become `boq_ros.pipeline.Frame` objects, decoded by the same pipeline (and the
same validating decoder) as recordings offline, so live descriptors equal offline ones and
untrusted sizes are checked before any allocation (cv_bridge is not needed: the decoder covers
every camera encoding it does).
"""
from collections.abc import Sequence

from builtin_interfaces.msg import Time
import cv2
from geometry_msgs.msg import Point, PoseWithCovariance, PoseWithCovarianceStamped
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from boq_ros import pipeline
from boq_ros.bags import stamp_to_ns
from boq_ros.detector import Candidate, Detection
from boq_ros.images import encode_image
from boq_ros.keyframe_map.meta import KeyframeMeta
from boq_ros.msg import KeyframeRef, LoopCandidate, LoopCandidateArray
from boq_ros.pipeline import DepthFrame, Frame
from boq_ros.verification.verifier import xyz_quaternion

NO_ID = 2 ** 64 - 1
"""KeyframeRef.id of a query that did not join the map (mode static)."""


def ns_to_stamp(ns: int) -> Time:
    """ROS time of a nanosecond stamp."""
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def frame(msg: Image | CompressedImage, camera: str, received_ns: int = 0) -> Frame:
    """Make the pipeline's frame of a camera message (still encoded: decoded if a keyframe)."""
    if isinstance(msg, CompressedImage):
        payload = pipeline.CompressedImage(msg.format, msg.data)
    else:
        payload = pipeline.RawImage(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                    bool(msg.is_bigendian))
    return Frame(stamp_to_ns(msg.header.stamp), camera, payload, frame_id=msg.header.frame_id,
                 received_ns=received_ns)


def depth_frame(msg: Image, camera: str) -> DepthFrame:
    """Make the pipeline's depth image of a depth message aligned to `camera`."""
    payload = pipeline.RawImage(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                bool(msg.is_bigendian))
    return DepthFrame(stamp_to_ns(msg.header.stamp), camera, payload)


def image_msg(array: np.ndarray, encoding: str, header: Header) -> Image:
    """Build a sensor_msgs/Image from an array in one of the image module's encodings."""
    fields = encode_image(array, encoding)
    return Image(header=header, height=fields['height'], width=fields['width'],
                 encoding=fields['encoding'], is_bigendian=0, step=fields['step'],
                 data=fields['data'])


_TO_RGB = {'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB,
           'bgra8': cv2.COLOR_BGRA2RGB, 'mono8': cv2.COLOR_GRAY2RGB}


def thumbnail(array: np.ndarray, encoding: str, height: int) -> np.ndarray:
    """Shrink a decoded image to rgb8 for the debug view."""
    if encoding == 'mono16':
        array, encoding = (array >> 8).astype(np.uint8), 'mono8'
    if encoding in _TO_RGB:
        array = cv2.cvtColor(array, _TO_RGB[encoding])
    width = max(1, round(array.shape[1] * height / array.shape[0]))
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_AREA)


def side_by_side(query: np.ndarray, match: np.ndarray | None) -> np.ndarray:
    """Query and match thumbnails in one rgb8 image (grey where the match image is unknown)."""
    if match is None:
        match = np.full_like(query, 96)
    return np.concatenate([query, match], axis=1)


def keyframe_ref(meta: KeyframeMeta) -> KeyframeRef:
    """Identity of a keyframe as published (NO_ID for a query that is not in the map)."""
    return KeyframeRef(id=meta.id if meta.id >= 0 else NO_ID, stamp=ns_to_stamp(meta.stamp_ns),
                       session=meta.session, robot_id=meta.robot_id, camera=meta.camera,
                       frame_id=meta.frame_id)


def pose_with_covariance(pose: np.ndarray, covariance: np.ndarray | None
                         ) -> PoseWithCovariance:
    """Build a PoseWithCovariance of a 4x4 transform (covariance None: all -1, unknown)."""
    msg = PoseWithCovariance()
    p = msg.pose
    (p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y,
     p.orientation.z, p.orientation.w) = xyz_quaternion(pose)
    cov = np.full(36, -1.0) if covariance is None else np.asarray(covariance).reshape(36)
    msg.covariance = [float(v) for v in cov]
    return msg


def _candidate(candidate: Candidate, threshold: float) -> LoopCandidate:
    msg = LoopCandidate(match=keyframe_ref(candidate.meta), similarity=candidate.similarity,
                        rank=candidate.rank, margin=candidate.margin, threshold=threshold,
                        status=int(candidate.status), reason=candidate.reason)
    v = candidate.verification
    if v is not None:
        msg.matches, msg.inliers = v.matches, v.inliers
        msg.inlier_ratio, msg.pose_kind = float(v.inlier_ratio), int(v.pose_kind)
        if v.verified and v.relative_pose is not None:
            msg.has_relative_pose = True
            msg.relative_pose = pose_with_covariance(v.relative_pose, v.covariance)
            msg.relative_pose_base = pose_with_covariance(v.relative_pose_base,
                                                          v.covariance_base)
    return msg


def candidate_array(detection: Detection, model_id: str, map_id: str) -> LoopCandidateArray:
    """Build the message of one query's decision: its top-k candidates, best first."""
    query = detection.query
    return LoopCandidateArray(
        header=Header(stamp=ns_to_stamp(query.stamp_ns), frame_id=query.frame_id),
        query=keyframe_ref(query),
        candidates=[_candidate(c, detection.threshold) for c in detection.candidates],
        accepted=detection.accepted, model=model_id, map_id=map_id)


def stamped_pose(pose: np.ndarray, covariance: np.ndarray, stamp_ns: int, frame_id: str
                 ) -> PoseWithCovarianceStamped:
    """Build a PoseWithCovarianceStamped of a 4x4 pose."""
    return PoseWithCovarianceStamped(
        header=Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id),
        pose=pose_with_covariance(pose, covariance))


def relocalization_pose(query: KeyframeMeta, match: KeyframeMeta,
                        covariance_diagonal: Sequence[float]) -> PoseWithCovarianceStamped | None:
    """Give the match's map pose stamped with the query time (None if it has no pose)."""
    if match.pose is None:
        return None
    msg = PoseWithCovarianceStamped()
    msg.header = Header(stamp=ns_to_stamp(query.stamp_ns), frame_id=match.pose_frame)
    p = msg.pose.pose
    (p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y,
     p.orientation.z, p.orientation.w) = (float(v) for v in match.pose)
    covariance = np.zeros((6, 6))
    np.fill_diagonal(covariance, covariance_diagonal)
    msg.pose.covariance = covariance.reshape(-1).tolist()
    return msg


def loop_marker(query: KeyframeMeta, match: KeyframeMeta, marker_id: int) -> Marker | None:
    """Draw a line between a loop's two keyframe poses (None unless both have one)."""
    if query.pose is None or match.pose is None or query.pose_frame != match.pose_frame:
        return None
    marker = Marker(header=Header(stamp=ns_to_stamp(query.stamp_ns), frame_id=query.pose_frame),
                    ns='loop_closures', id=marker_id, type=Marker.LINE_LIST, action=Marker.ADD)
    marker.points = [Point(x=float(m.pose[0]), y=float(m.pose[1]), z=float(m.pose[2]))
                     for m in (query, match)]
    marker.pose.orientation.w = 1.0
    marker.scale.x = 0.05
    marker.color.r, marker.color.g, marker.color.b, marker.color.a = 1.0, 0.2, 0.2, 1.0
    return marker
