"""The synthetic street the verification node tests drive (no tests here).

A camera on a ring of the synth world, two short laps: each frame publishes CameraInfo, odometry
around its stamp, an aligned 16UC1 depth image and the colour image, in lock step with the
node's answer. The node under test needs publishers ``info``, ``odom``, ``depth``, ``image``,
a ``candidates`` collector and a ``world`` (boq_ros.synth.World).
"""
import math
from typing import Any

from nav_msgs.msg import Odometry
import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from test_node_common import answer_for

from boq_ros.ros.convert import image_msg
from boq_ros.synth import camera_intrinsics, camera_pose_world, depth_to_mm
from boq_ros.verification.verifier import transform_from, xyz_quaternion

S = 10**9
SIZE = (320, 240)
RADIUS = 20.0
LAP1 = [(float(t), 0.05 * t, 0.0) for t in range(8)]  # (stamp s, angle on the ring, offset m)
LAP2 = [(100.0 + t, 0.05 * t + 0.01, 0.4) for t in range(8)]
CAMERA_IN_BASE = [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5]  # the camera_in_base default


def header(t: float) -> Header:
    h = Header(frame_id='camera')
    ns = round(t * S)
    h.stamp.sec, h.stamp.nanosec = ns // S, ns % S
    return h


def view(angle: float, offset: float) -> tuple[float, float, float]:
    """Camera x, y, yaw on the ring."""
    r = RADIUS + offset
    return r * math.cos(angle), r * math.sin(angle), angle + math.pi / 2


def camera_info(t: float, k: list[float] | None = None) -> CameraInfo:
    fx, fy, cx, cy = camera_intrinsics(SIZE)
    msg = CameraInfo(header=header(t), width=SIZE[0], height=SIZE[1],
                     distortion_model='plumb_bob')
    msg.k = k if k is not None else [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    return msg


def base_pose(angle: float, offset: float) -> np.ndarray:
    """The base pose whose camera (the default camera_in_base) is the rendered view."""
    camera = camera_pose_world(*view(angle, offset))
    return camera @ np.linalg.inv(transform_from(CAMERA_IN_BASE))


def odometry(t: float, base: np.ndarray) -> Odometry:
    msg = Odometry(header=header(t), child_frame_id='base_link')
    msg.header.frame_id = 'odom'
    p = msg.pose.pose
    (p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y,
     p.orientation.z, p.orientation.w) = xyz_quaternion(base)
    return msg


def visit(node: Any, t: float, angle: float, offset: float, depth: Image | None = None) -> Any:
    """Publish one frame (intrinsics, odometry, depth, image); return the node's answer."""
    rgb, depth_m = node.world.render(*view(angle, offset), SIZE, with_depth=True)
    node.info.publish(camera_info(t))
    for dt in (-0.02, 0.0, 0.02):  # odometry around the stamp, as a 50 Hz stream gives
        node.odom.publish(odometry(t + dt, base_pose(angle, offset)))
    node.depth.publish(depth if depth is not None else image_msg(
        depth_to_mm(depth_m), 'mono16', header(t)))
    node.image.publish(image_msg(rgb, 'rgb8', header(t)))
    return answer_for(node.candidates, round(t * S))
