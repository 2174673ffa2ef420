"""pose_graph_node on real DDS: odometry and loop candidates in, corrected path and files out.

The test plays a robot that drives a square three times with a heading-biased odometry and
publishes, per keyframe, the candidate array the loop-closure node would (a verified metric loop
to the same corner one lap earlier, from the true poses). Each step waits for the node's path to
hold that keyframe: the condition the test then checks.
"""
import math
from pathlib import Path
import time

from boq_ros.msg import LoopCandidate, LoopCandidateArray
from builtin_interfaces.msg import Time
from conftest import DISCOVERY_TIMEOUT_S
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from boq_ros.bags import stamp_to_ns
from boq_ros.ros import convert
from boq_ros.ros.pose_graph_node import MAP_TO_ODOM_TOPIC, PATH_QOS, PATH_TOPIC
from boq_ros.verification.verifier import transform_from

S = 1_000_000_000
T0 = 1_700_000_000 * S
PER_LAP = 12
LAPS = 3


def _truth(k: int) -> np.ndarray:
    side, along = divmod(k % PER_LAP, PER_LAP // 4)
    yaw = side * math.pi / 2
    x0, y0 = [(0, 0), (6, 0), (6, 6), (0, 6)][side]
    step = 6 / (PER_LAP // 4)
    return transform_from((x0 + math.cos(yaw) * along * step, y0 + math.sin(yaw) * along * step,
                           0, 0, 0, math.sin(yaw / 2), math.cos(yaw / 2)))


def _stamp(k: float) -> Time:
    return convert.ns_to_stamp(T0 + round(k * S))


def _odometry(k: float, pose: np.ndarray) -> Odometry:
    msg = Odometry()
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = _stamp(k), 'odom', 'base_link'
    msg.pose = convert.pose_with_covariance(pose, None)
    return msg


def _candidates(k: int, loop_to: int | None, relative: np.ndarray | None) -> LoopCandidateArray:
    msg = LoopCandidateArray()
    msg.header.stamp, msg.header.frame_id = _stamp(k), 'camera'
    msg.query.stamp, msg.query.id, msg.query.session = _stamp(k), k, 's'
    if loop_to is not None:
        c = LoopCandidate()
        c.match.stamp, c.match.id, c.match.session = _stamp(loop_to), loop_to, 's'
        c.status, c.pose_kind, c.has_relative_pose = (LoopCandidate.STATUS_VERIFIED,
                                                     LoopCandidate.POSE_METRIC, True)
        cov = np.diag([0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4])
        c.relative_pose_base = convert.pose_with_covariance(relative, cov)
        c.relative_pose = c.relative_pose_base
        msg.candidates = [c]
        msg.accepted = True
    return msg


def test_backend_corrects_drift_and_saves_the_graph(start_node, ros_node, tmp_path: Path):
    graph_file, tum_file = tmp_path / 'graph.g2o', tmp_path / 'keyframes.tum'
    backend = start_node(module='boq_ros.ros.pose_graph_node', name='pose_graph_node',
                         params={'odometry_qos': 'reliable', 'graph_path': str(graph_file),
                                 'trajectory_path': str(tum_file)})
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    odom_pub = ros_node.publisher(Odometry, '/odom', reliable)
    cand_pub = ros_node.publisher(LoopCandidateArray, '/loop_candidates', reliable)
    paths = ros_node.collect(PathMsg, '/' + PATH_TOPIC, PATH_QOS)
    corrections = ros_node.collect(TransformStamped, '/' + MAP_TO_ODOM_TOPIC, 10)
    diagnostics = ros_node.collect(DiagnosticArray, '/diagnostics', 10)
    ros_node.wait_for_subscribers(odom_pub, timeout=DISCOVERY_TIMEOUT_S * 2)
    ros_node.wait_for_subscribers(cand_pub)

    n = PER_LAP * LAPS
    truth = [_truth(k) for k in range(n)]
    bias = transform_from((0, 0, 0, 0, 0, math.sin(0.01), math.cos(0.01)))
    odom = [truth[0]]
    for k in range(1, n):
        odom.append(odom[-1] @ bias @ np.linalg.inv(truth[k - 1]) @ truth[k])
    for k in range(n):
        odom_pub.publish(_odometry(k, odom[k]))
        match = k - PER_LAP if k >= PER_LAP else None
        relative = np.linalg.inv(truth[k]) @ truth[match] if match is not None else None
        cand_pub.publish(_candidates(k, match, relative))
        # The stream goes on (the robot paused): the odometry after the stamp decides it.
        odom_pub.publish(_odometry(k + 0.5, odom[k]))
        paths.wait_for(predicate=lambda got, k=k: bool(got) and len(got[-1].poses) == k + 1)
        backend.assert_alive()
    final = paths.messages[-1]
    assert final.header.frame_id == 'map'
    assert [stamp_to_ns(p.header.stamp) for p in final.poses] == [T0 + k * S
                                                                          for k in range(n)]
    xy = np.array([[p.pose.position.x, p.pose.position.y] for p in final.poses])
    drifted = max(np.linalg.norm(odom[k][:2, 3] - truth[k][:2, 3]) for k in range(n))
    corrected = max(np.linalg.norm(xy[k] - truth[k][:2, 3]) for k in range(n))
    assert drifted > 1.0 and corrected < drifted / 4, (drifted, corrected)

    # map -> odom: the optimised newest pose composed with the inverse of its odometry pose
    tf_msg = corrections.wait_for(predicate=lambda got: bool(got) and stamp_to_ns(
        got[-1].header.stamp) == T0 + (n - 1) * S)[-1]
    assert (tf_msg.header.frame_id, tf_msg.child_frame_id) == ('map', 'odom')
    t, q = tf_msg.transform.translation, tf_msg.transform.rotation
    map_from_odom = transform_from((t.x, t.y, t.z, q.x, q.y, q.z, q.w))
    newest = final.poses[-1].pose
    optimised = transform_from((newest.position.x, newest.position.y, newest.position.z,
                                newest.orientation.x, newest.orientation.y,
                                newest.orientation.z, newest.orientation.w))
    np.testing.assert_allclose(map_from_odom @ odom[-1], optimised, atol=1e-6)

    # a candidate array whose loop pose is not finite is counted; the node keeps its graph
    bad = _candidates(n, 0, np.eye(4))
    bad.candidates[0].relative_pose_base.pose.orientation.w = math.nan
    odom_pub.publish(_odometry(n, odom[-1] @ np.linalg.inv(truth[n - 1]) @ _truth(n)))
    cand_pub.publish(bad)

    def counted(got: list) -> bool:
        values = {kv.key: kv.value for a in got[-1:] for s in a.status
                  if s.name.endswith('pose graph') for kv in s.values}
        return values.get('candidates_errors_total') == '1' and values.get('keyframes') == str(
            n + 1)

    diagnostics.wait_for(predicate=counted, timeout=30)
    backend.assert_alive()
    latest = paths.wait_for(predicate=lambda got: len(got[-1].poses) == n + 1)[-1]
    xy = np.array([[p.pose.position.x, p.pose.position.y] for p in latest.poses])

    response = ros_node.call(Trigger, '/pose_graph_node/save_graph', Trigger.Request())
    assert response.success, response.message
    assert str(graph_file) in response.message and str(tum_file) in response.message
    gtsam = pytest.importorskip('gtsam')
    graph, values = gtsam.readG2o(str(graph_file), True)
    assert values.size() == n + 1 and graph.size() >= n + (LAPS - 1) * PER_LAP
    rows = [line.split() for line in tum_file.read_text().splitlines() if line[:1] != '#']
    assert len(rows) == n + 1
    np.testing.assert_allclose([float(v) for v in rows[n][1:3]], xy[n], atol=1e-12)
    tum_file.unlink()
    assert backend.stop() == 0
    assert tum_file.is_file()  # written again at shutdown


def test_backend_refuses_a_bad_parameter(start_node):
    backend = start_node(module='boq_ros.ros.pose_graph_node', name='pose_graph_node',
                         params={'robust_kernel': 'tukey'})
    backend.process.wait(timeout=60)
    assert backend.process.returncode == 1
    assert "robust_kernel must be one of 'cauchy'" in backend.log_text()


def test_backend_publishes_map_to_odom_on_tf(start_node, ros_node):
    """With tf2_msgs installed the correction goes to /tf too, republished, stamped now."""
    tf2_msgs = pytest.importorskip(
        'tf2_msgs.msg', reason='tf2_msgs is not installed (make test-interfaces builds its '
        'TFMessage from test/interfaces; the ROS wheels of the registry lack it)')
    backend = start_node(module='boq_ros.ros.pose_graph_node', name='pose_graph_node',
                         params={'odometry_qos': 'reliable'})
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    odom_pub = ros_node.publisher(Odometry, '/odom', reliable)
    cand_pub = ros_node.publisher(LoopCandidateArray, '/loop_candidates', reliable)
    corrections = ros_node.collect(TransformStamped, '/' + MAP_TO_ODOM_TOPIC, 10)
    tf = ros_node.collect(tf2_msgs.TFMessage, '/tf', 100)
    ros_node.wait_for_subscribers(odom_pub, timeout=DISCOVERY_TIMEOUT_S * 2)
    ros_node.wait_for_subscribers(cand_pub)
    ros_node.wait_for_publishers(tf)
    for k in range(3):
        odom_pub.publish(_odometry(k, _truth(k)))
        cand_pub.publish(_candidates(k, None, None))
        odom_pub.publish(_odometry(k + 0.5, _truth(k)))
    last = corrections.wait_for(predicate=lambda got: any(
        stamp_to_ns(m.header.stamp) == T0 + 2 * S for m in got))[-1]

    def same(t) -> bool:
        return (t.transform == last.transform and t.child_frame_id == last.child_frame_id
                and t.header.frame_id == last.header.frame_id)

    on_tf = tf.wait_for(predicate=lambda got: sum(same(t) for m in got for t in m.transforms) >= 3)
    stamps = [stamp_to_ns(t.header.stamp) for m in on_tf for t in m.transforms if same(t)]
    # republished, stamped with the current time (later than any keyframe here)
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0] > stamp_to_ns(last.header.stamp)
    backend.assert_alive()


def test_keyframes_wait_for_their_odometry_and_join_in_stamp_order(ros_domain_id):
    """A candidate array may overtake the odometry before its stamp (another publisher), and a
    camera's keyframe may come after another camera's newer one."""
    from boq_ros.ros.pose_graph_node import PoseGraphNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    node = PoseGraphNode(context=context)
    later = time.monotonic() + 1.0  # past reorder_s for everything received so far
    try:
        node._on_odometry(_odometry(0, _truth(0)))
        node._on_candidates(_candidates(0, None, None))
        assert len(node.graph.graph) == 0  # reorder_s: another camera's may still come
        node.drain(now=later)
        node._on_candidates(_candidates(2, None, None))  # odometry 1 and 2 still on their way
        node.drain(now=later)
        assert len(node.graph.graph) == 1 and len(node._pending) == 1
        node._on_odometry(_odometry(1, _truth(1)))
        node.drain(now=later)
        assert len(node.graph.graph) == 1  # odometry older than the stamp decides nothing
        node._on_odometry(_odometry(2, _truth(2)))
        node.drain(now=later)
        assert node.graph.graph.keys == [T0, T0 + 2 * S] and not node._pending
        np.testing.assert_allclose(node.graph.graph.odometry_pose(T0 + 2 * S), _truth(2),
                                   atol=1e-9)
        # two cameras: the newer keyframe first, the older one right after
        for t in (3.4, 3.5):
            node._on_odometry(_odometry(t, _truth(3)))
        node._on_candidates(_candidates(3.5, None, None))
        node._on_candidates(_candidates(3.4, None, None))
        node.drain(now=time.monotonic() + 1.0)
        assert node.graph.graph.keys[2:] == [T0 + round(3.4 * S), T0 + round(3.5 * S)]
        assert not node.graph.skipped
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_shutdown_with_a_keyframe_pending_writes_what_there_is(start_node, ros_node, tmp_path):
    tum = tmp_path / 'k.tum'
    backend = start_node(module='boq_ros.ros.pose_graph_node', name='pose_graph_node',
                         params={'odometry_qos': 'reliable', 'trajectory_path': str(tum),
                                 'odometry_wait_s': 600.0})
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    odom_pub = ros_node.publisher(Odometry, '/odom', reliable)
    cand_pub = ros_node.publisher(LoopCandidateArray, '/loop_candidates', reliable)
    diagnostics = ros_node.collect(DiagnosticArray, '/diagnostics', 10)
    ros_node.wait_for_subscribers(odom_pub, timeout=DISCOVERY_TIMEOUT_S * 2)
    ros_node.wait_for_subscribers(cand_pub)
    odom_pub.publish(_odometry(0, _truth(0)))
    odom_pub.publish(_odometry(0.5, _truth(0)))
    cand_pub.publish(_candidates(0, None, None))
    cand_pub.publish(_candidates(1, None, None))  # its odometry never comes

    def waiting(got: list) -> bool:
        values = {kv.key: kv.value for a in got[-1:] for s in a.status
                  if s.name.endswith('pose graph') for kv in s.values}
        return values.get('keyframes') == '1' and values.get('pending_keyframes') == '1'

    diagnostics.wait_for(predicate=waiting, timeout=30)
    assert backend.stop() == 0
    log = backend.log_text()
    assert 'Traceback' not in log and f'wrote {tum}' in log
    rows = [line for line in tum.read_text().splitlines() if line[:1] != '#']
    assert len(rows) == 1  # the pending keyframe had no odometry pose: not invented
