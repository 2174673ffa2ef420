"""Geometric verification in the live node over real DDS: camera_info, aligned depth, poses.

A camera drives two laps of a short stretch of the synthetic street (boq_ros.synth), publishing
CameraInfo, a 16UC1 depth image aligned to the colour image, odometry and the image, in lock
step. The threshold accepts every appearance candidate (random weights make all descriptors
alike), so what decides is verification: the second lap's loops must be VERIFIED with a metric
PnP pose that matches the ground truth, and bad depth or camera_info messages are counted and
harmless.
"""
import math

from boq_ros.msg import LoopCandidate
from boq_ros.srv import Relocalize
from nav_msgs.msg import Odometry
import numpy as np
import pytest
from ring_scene import (
    LAP1,
    LAP2,
    SIZE,
    S,
    base_pose,
    camera_info,
    header,
    view,
    visit,
)
from sensor_msgs.msg import CameraInfo, Image
from test_node_common import START_TIMEOUT_S, NodeUnderTest, base_params, checkpoint

from boq_ros.demo import write_params_file
from boq_ros.ros.convert import image_msg
from boq_ros.synth import World, camera_pose_world
from boq_ros.verification.verifier import transform_from


@pytest.fixture(scope='module')
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('verify')
    values = base_params(
        checkpoint(tmp_path_factory), tmp / 'maps', image_topics=['cam/image_raw'],
        camera_info_topics=['cam/camera_info'], depth_topics=['cam/depth'],
        input_qos='reliable', queue_size=10, threshold=-1.0,
        exclusion_seconds=20.0, exclusion_keyframes=3, top_k=5, verify_top_n=5,
        verify_budget_s=60.0, session='v', verification=True, diagnostics_period_s=0.2,
        odometry_topic='odom', pose_tolerance_s=1.5)  # > frame spacing: waits for its odometry
    n = NodeUnderTest(tmp, 'vpr_node', write_params_file(tmp / 'vpr.yaml', values))
    ros = n.ros
    n.image = ros.publisher(Image, '/cam/image_raw', 100)
    n.depth = ros.publisher(Image, '/cam/depth', 100)
    n.info = ros.publisher(CameraInfo, '/cam/camera_info', 100)
    n.odom = ros.publisher(Odometry, '/odom', 100)
    for pub in (n.image, n.depth, n.info, n.odom):
        ros.wait_for_subscribers(pub, timeout=START_TIMEOUT_S)
    ros.wait_for_publishers(n.candidates)
    n.world = World(0)
    yield n
    assert n.close() == 0


def _angle_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))


def _matrix(pose) -> np.ndarray:
    p, q = pose.position, pose.orientation
    return transform_from([p.x, p.y, p.z, q.x, q.y, q.z, q.w])


def test_second_lap_loops_are_verified_with_metric_poses(node):
    for t, angle, offset in LAP1:
        assert not visit(node, t, angle, offset).accepted  # nothing to close yet
    place_of = {round(t * S): (angle, offset) for t, angle, offset in LAP1 + LAP2}
    verified = 0
    for t, angle, offset in LAP2:
        msg = visit(node, t, angle, offset)
        if not msg.accepted:
            continue
        match = next(c for c in msg.candidates if c.status == LoopCandidate.STATUS_VERIFIED)
        assert match.pose_kind == LoopCandidate.POSE_METRIC and match.has_relative_pose
        assert match.inliers >= 15 and 0 < match.inlier_ratio <= 1
        m_angle, m_offset = place_of[match.match.stamp.sec * S + match.match.stamp.nanosec]
        truth = np.linalg.inv(camera_pose_world(*view(angle, offset))) @ camera_pose_world(
            *view(m_angle, m_offset))
        estimate = _matrix(match.relative_pose.pose)
        assert _angle_deg(truth[:3, :3].T @ estimate[:3, :3]) < 1.0
        assert np.linalg.norm(truth[:3, 3] - estimate[:3, 3]) < 0.15
        cov = np.array(match.relative_pose.covariance).reshape(6, 6)
        assert np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0)
        base_truth = np.linalg.inv(base_pose(angle, offset)) @ base_pose(m_angle, m_offset)
        base = _matrix(match.relative_pose_base.pose)
        assert np.linalg.norm(base_truth[:3, 3] - base[:3, 3]) < 0.15
        rejected = [c for c in msg.candidates if c.status == LoopCandidate.STATUS_REJECTED]
        assert all(c.reason for c in rejected)
        verified += 1
    assert verified >= len(LAP2) // 2
    values = node.diag(lambda v: int(v['verified_total']) >= verified)
    assert int(values['verified_total']) == verified
    assert values['verification'] == 'sift' and 'latency_verify_ms_max' in values


def test_relocalize_returns_the_verified_pose(node):
    t, angle, offset = LAP2[3][0] + 100.0, LAP2[3][1], LAP2[3][2]  # the lap-2 place again
    visit(node, t, angle, offset)
    response = node.ros.call(Relocalize, '/vpr_node/relocalize', Relocalize.Request())
    assert response.success, response.message
    assert response.has_pose and 'verified' in response.message
    estimate = _matrix(response.pose.pose.pose)
    truth = base_pose(angle, offset)
    assert np.linalg.norm(estimate[:3, 3] - truth[:3, 3]) < 0.15
    assert _angle_deg(truth[:3, :3].T @ estimate[:3, :3]) < 1.0


def test_bad_depth_and_camera_info_are_counted_and_harmless(node):
    before = node.snapshot()
    t, angle, offset = 300.0, LAP1[2][1], 0.2
    broken = image_msg(np.zeros((SIZE[1], SIZE[0]), np.uint16), 'mono16', header(t))
    broken.step -= 2  # shorter than a row: refused by the decoder
    answer = visit(node, t, angle, offset, depth=broken)
    assert answer.query.stamp.sec == 300  # answered all the same, without depth
    node.info.publish(camera_info(301.0, k=[0.0] * 9))  # an uncalibrated CameraInfo
    after = node.diag(lambda v: int(v['depth_errors_total']) > int(before['depth_errors_total'])
                      and int(v['camera_info_errors_total'])
                      > int(before['camera_info_errors_total']))
    assert int(after['map_keyframes']) == int(before['map_keyframes']) + 1
    ok = visit(node, 310.0, LAP1[4][1], 0.2)  # the node still works, with the last good K
    assert ok.query.stamp.sec == 310
