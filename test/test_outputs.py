"""The outputs for SLAM backends (boq_ros/ros/outputs/): conversions, then the node over real DDS.

The backends' messages are the test-only builds of their upstream definitions
(test/interfaces/, `make test-interfaces`); the tests that need them skip, saying why, where
they are not built. Over DDS a camera drives two laps of the synthetic street with depth and
CameraInfo (as test_node_verification does), so that the second lap's loops are VERIFIED with a
metric pose; the test process plays Hydra (a PoseGraph subscriber), RTAB-Map (an add_link
service and an info publisher announcing stamp -> node id) and LIO-SAM.
"""
import importlib
import json
import math
from pathlib import Path
import subprocess
import sys
import threading
import time

from boq_ros.msg import LoopCandidate
from conftest import wait_until
from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from ring_scene import LAP1, LAP2, visit
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64MultiArray
from test_node_common import START_TIMEOUT_S, NodeUnderTest, base_params, checkpoint

from boq_ros.demo import write_params_file
from boq_ros.detector import Candidate, Detection, PoseKind, Status, Verification
from boq_ros.keyframe_map import KeyframeMeta
from boq_ros.ros import outputs
from boq_ros.ros.outputs import hydra, rtabmap
from boq_ros.ros.outputs.lio_sam import lio_sam_pair
from boq_ros.ros.params import NodeSettings
from boq_ros.synth import World
from boq_ros.verification.verifier import (
    local_frame_covariance,
    transform_from,
    xyz_quaternion,
)

ROOT = Path(__file__).resolve().parents[1]
BACKEND_SRC = ROOT.parent / 'shared' / 'reference' / 'backend_interfaces'
UPSTREAM = {  # the upstream definitions, as a robot's install has them
    'pose_graph_tools_msgs': [BACKEND_SRC / 'pose_graph_tools_msgs' / 'msg' / f'{n}.msg'
                              for n in ('PoseGraph', 'PoseGraphEdge', 'PoseGraphNode')],
    'rtabmap_msgs': [*(BACKEND_SRC / 'rtabmap_msgs' / 'msg' / f'{n}.msg'
                       for n in ('GlobalDescriptor', 'Link', 'MapGraph')),
                     ROOT / 'test' / 'interfaces' / 'rtabmap_msgs' / 'msg' / 'Info.msg',
                     BACKEND_SRC / 'rtabmap_msgs' / 'srv' / 'AddLink.srv'],
}
S = 10**9


def backend(package: str, kind: str = 'msg'):
    """Return the test build of a backend's interface module, or skip saying why it is absent."""
    try:
        return importlib.import_module(f'{package}.{kind}')
    except ImportError:
        if not BACKEND_SRC.is_dir():
            pytest.skip(f'{BACKEND_SRC} not found: the backend test interfaces cannot be built')
        pytest.skip(f'{package} is not built into {sys.prefix}: run make test-interfaces')


# -- conversions, no DDS ------------------------------------------------------------------------
def _covariance(seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((6, 6))
    return a @ a.T * 1e-4 + np.eye(6) * 1e-6


def _loop(pose_kind: PoseKind = PoseKind.METRIC, covariance: np.ndarray | None = None,
          robots: tuple[str, str] = ('r1', 'r1')) -> tuple[Detection, Verification]:
    """A detection whose second candidate is the verified loop 31 s -> 2 s."""
    relative = transform_from([0.4, -0.1, 0.05, 0.0, 0.0, math.sin(0.1), math.cos(0.1)])
    v = Verification(verified=True, matches=80, inliers=60, estimator='pnp', pose_kind=pose_kind,
                     relative_pose=relative, covariance=covariance, relative_pose_base=relative,
                     covariance_base=covariance)
    match = KeyframeMeta(stamp_ns=2 * S + 5, robot_id=robots[1], id=2)
    rejected = Candidate(1, KeyframeMeta(stamp_ns=S, robot_id=robots[1], id=1), 0.9, 0, 0.1,
                         Status.REJECTED, 'few inliers')
    loop = Candidate(2, match, 0.8, 1, 0.1, Status.VERIFIED, verification=v)
    query = KeyframeMeta(stamp_ns=31 * S + 7, robot_id=robots[0], id=40)
    return Detection(query, [rejected, loop], accepted=True, threshold=0.5), v


def test_information_is_the_inverse_covariance_in_the_links_frame():
    covariance = _covariance()
    info = rtabmap.information(covariance, np.eye(4))  # no rotation: the frames coincide
    assert np.allclose(info @ covariance, np.eye(6), atol=1e-8)
    assert np.array_equal(info, info.T)
    # a yawed link: the query frame's x error is the link frame's -y error (yaw 90 deg)
    yawed = transform_from([1.0, 2.0, 0.0, 0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)])
    only_x = np.diag([0.04, 1e-4, 1e-4, 1e-6, 1e-6, 1e-6])
    local = np.linalg.inv(rtabmap.information(only_x, yawed))
    np.testing.assert_allclose(np.diag(local), [1e-4, 0.04, 1e-4, 1e-6, 1e-6, 1e-6], atol=1e-12)


def test_information_of_a_singular_covariance_is_finite_and_positive():
    covariance = _covariance()
    covariance[2, :] = covariance[:, 2] = 0.0  # z exactly known: no inverse
    info = rtabmap.information(covariance, np.eye(4))
    assert np.all(np.isfinite(info)) and np.all(np.diag(info) > 0)
    assert np.all(np.linalg.eigvalsh(info) > 0)
    assert np.linalg.eigvalsh(info).max() <= 1 / rtabmap.MIN_VARIANCE * (1 + 1e-9)
    assert info[2, 2] == pytest.approx(1 / rtabmap.MIN_VARIANCE)


def test_unknown_covariance_has_no_information():
    assert rtabmap.information(None, np.eye(4)) is None
    assert rtabmap.information(np.full((6, 6), -1.0), np.eye(4)) is None  # published: unknown
    nan = _covariance()
    nan[0, 0] = math.nan
    assert rtabmap.information(nan, np.eye(4)) is None


def test_node_ids_are_matched_by_the_nearest_stamp_within_the_tolerance():
    ids = rtabmap.NodeIds(tolerance_ns=10_000_000)
    assert ids.find(5 * S) is None
    assert ids.add(5 * S, 3) and ids.add(7 * S, 4)
    assert not ids.add(6 * S, 0) and not ids.add(6 * S, -1)  # not nodes
    assert len(ids) == 2
    assert ids.find(5 * S + 9_000_000) == 3 and ids.find(7 * S - 10_000_000) == 4
    assert ids.find(5 * S + 11_000_000) is None and ids.find(6 * S) is None
    ids.add(3 * S, 1)  # out of order
    assert ids.find(3 * S) == 1 and ids.find(5 * S) == 3
    ids.add(5 * S, 8)  # the same stamp again: the newer id
    assert ids.find(5 * S) == 8 and len(ids) == 3


def test_link_queue_waits_for_both_ids_then_releases_or_expires():
    queue = rtabmap.LinkQueue(tolerance_ns=0, timeout_s=10.0)
    loop = rtabmap.PendingLoop(31 * S, 2 * S, np.eye(4), np.eye(6), since=100.0)
    late = rtabmap.PendingLoop(50 * S, 2 * S, np.eye(4), np.eye(6), since=105.0)
    queue.add(loop)
    queue.add(late)
    queue.ids.add(2 * S, 7)
    assert queue.take_ready() == [] and len(queue) == 2
    queue.ids.add(31 * S, 9)
    assert queue.take_ready() == [(loop, 9, 7)] and len(queue) == 1
    assert queue.take_expired(now=114.0) == [] and queue.take_expired(now=115.5) == [late]
    assert len(queue) == 0


def test_robot_ids_are_the_places_in_the_list():
    assert hydra.robot_ids('r1', 'r1', []) == (0, 0)
    assert hydra.robot_ids('', '', []) == (0, 0)
    assert hydra.robot_ids('r1', 'r0', ['r0', 'r1']) == (1, 0)
    with pytest.raises(hydra.RobotIdError, match="robots 'a' and 'b'.*pose_graph_robot_ids"):
        hydra.robot_ids('a', 'b', [])
    with pytest.raises(hydra.RobotIdError, match="robot 'x' is not in pose_graph_robot_ids"):
        hydra.robot_ids('r0', 'x', ['r0'])


def test_lio_sam_pair_is_the_two_times_in_seconds():
    detection, _ = _loop()
    assert list(lio_sam_pair(detection.query, detection.match.meta).data) == [
        31 + 7e-9, 2 + 5e-9]


def test_pose_graph_edge_carries_the_loop():
    messages = backend('pose_graph_tools_msgs')
    covariance = _covariance()
    detection, v = _loop(covariance=covariance)
    graph = hydra.loop_graph(messages, detection.query, detection.match.meta, (1, 0), v)
    assert len(graph.edges) == 1 and not graph.nodes
    edge = graph.edges[0]
    assert (edge.key_from, edge.key_to) == (31 * S + 7, 2 * S + 5)
    assert (edge.robot_from, edge.robot_to) == (1, 0)
    assert edge.type == messages.PoseGraphEdge.LOOPCLOSE == 1
    assert edge.header.stamp.sec == 31 and edge.header.stamp.nanosec == 7
    p, q = edge.pose.position, edge.pose.orientation
    assert np.allclose([p.x, p.y, p.z, q.x, q.y, q.z, q.w], xyz_quaternion(v.relative_pose_base))
    assert np.array_equal(np.array(edge.covariance), covariance.reshape(36))


def test_rtabmap_link_carries_the_loop():
    messages = backend('rtabmap_msgs')
    covariance = _covariance(1)
    _, v = _loop(covariance=covariance)
    link = rtabmap.link_message(messages, 12, 3, v.relative_pose_base,
                                rtabmap.information(covariance, v.relative_pose_base))
    assert (link.from_id, link.to_id, link.type) == (12, 3, rtabmap.USER_CLOSURE) == (12, 3, 4)
    t, r = link.transform.translation, link.transform.rotation
    assert np.allclose([t.x, t.y, t.z, r.x, r.y, r.z, r.w], xyz_quaternion(v.relative_pose_base))
    local = local_frame_covariance(covariance, v.relative_pose_base)
    assert np.allclose(np.array(link.information).reshape(6, 6) @ local, np.eye(6), atol=1e-8)


@pytest.mark.parametrize(('parameter', 'package', 'upstream'), [
    ('publish_pose_graph', 'pose_graph_tools_msgs', 'MIT-SPARK/pose_graph_tools'),
    ('publish_rtabmap', 'rtabmap_msgs', 'introlab/rtabmap_ros'),
])
def test_an_enabled_output_without_its_backend_fails_with_a_clear_message(
        monkeypatch, parameter, package, upstream):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    outputs.check(NodeSettings())  # disabled: nothing is imported
    with pytest.raises(outputs.OutputError) as err:
        outputs.check(NodeSettings(**{parameter: True}))
    assert str(err.value) == f'{parameter} needs {package} ({upstream}): not found'


def test_node_configure_fails_naming_the_missing_backend(ros_env, tmp_path):
    script = tmp_path / 'node_without_hydra.py'
    script.write_text(
        'import runpy\nimport sys\n\n'
        "sys.modules['pose_graph_tools_msgs'] = None  # not installed\n"
        "runpy.run_module('boq_ros.ros.node', run_name='__main__')\n")
    result = subprocess.run(
        [sys.executable, str(script), '--ros-args', '-p', 'publish_pose_graph:=true',
         '-p', f'map_directory:={tmp_path / "maps"}'],
        env=ros_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert ('configure failed: publish_pose_graph needs pose_graph_tools_msgs '
            '(MIT-SPARK/pose_graph_tools): not found') in result.stderr
    assert 'Traceback' not in result.stderr


def _upstream_hashes(tmp_path: Path) -> dict[str, str]:
    """Return the RIHS01 hash rosidl computes for each type from the upstream files as they are."""
    from rosidl_adapter.msg import convert_msg_to_idl
    from rosidl_adapter.srv import convert_srv_to_idl
    from rosidl_generator_type_description import generate_type_hash

    share = Path(sys.prefix) / 'share'
    hashes = {}
    for package, files in UPSTREAM.items():
        idls = []
        for path in files:
            kind = path.parent.name
            out = tmp_path / package / kind
            out.mkdir(parents=True, exist_ok=True)
            convert = convert_msg_to_idl if kind == 'msg' else convert_srv_to_idl
            convert(path.parent.parent, package, Path(kind, path.name), out)
            idls.append(f'{tmp_path / package}:{kind}/{path.stem}.idl')
        arguments = tmp_path / f'{package}.json'
        arguments.write_text(json.dumps({
            'package_name': package, 'output_dir': str(tmp_path / 'hashes' / package),
            'idl_tuples': idls, 'include_paths': [
                f'{dep}:{share / dep}' for dep in ('builtin_interfaces', 'std_msgs',
                                                   'geometry_msgs', 'service_msgs')]}))
        for generated in generate_type_hash(str(arguments)):
            top = json.loads(Path(generated).read_text())['type_hashes'][0]
            hashes[top['type_name']] = top['hash_string']
    return hashes


def test_test_interfaces_hash_as_upstream(tmp_path):
    """Same package, type names, fields and types as upstream: the same RIHS01 type hashes."""
    backend('pose_graph_tools_msgs')
    backend('rtabmap_msgs', 'srv')
    upstream = _upstream_hashes(tmp_path)
    for type_name in (f'{package}/{path.parent.name}/{path.stem}'
                      for package, files in UPSTREAM.items() for path in files):
        expected = upstream[type_name]
        package, kind, name = type_name.split('/')
        installed = json.loads((Path(sys.prefix) / 'share' / package / kind / f'{name}.json')
                               .read_text())['type_hashes'][0]
        assert installed == {'type_name': type_name, 'hash_string': expected}


# -- the node over real DDS ---------------------------------------------------------------------
ROBOTS = ['r0', 'r1']  # pose_graph_robot_ids; the node is robot 'r1'
PENDING_TIMEOUT_S = 8.0
CALL_TIMEOUT_S = 2.0


class FakeRtabmap:
    """RTAB-Map as the adapter sees it: an add_link service and an info publisher."""

    def __init__(self, ros, messages, services) -> None:
        self.messages = messages
        self.links: list = []
        self.delay_s = 0.0  # answer the next call this late
        self.answered = 0
        self._cond = threading.Condition()
        self.info = ros.node.create_publisher(messages.Info, '/rtabmap/info',
                                              QoSProfile(depth=100))
        self.service = ros.node.create_service(services.AddLink, '/rtabmap/add_link',
                                               self._on_add_link,
                                               callback_group=ReentrantCallbackGroup())

    def _on_add_link(self, request, response):
        with self._cond:
            self.links.append(request.link)
            delay, self.delay_s = self.delay_s, 0.0
            self._cond.notify_all()
        time.sleep(delay)  # a busy RTAB-Map (a reentrant group: the test keeps receiving)
        with self._cond:
            self.answered += 1
        return response

    def announce(self, stamp_ns: int, node_id: int) -> None:
        """Publish RTAB-Map's info for a node made from the data stamped stamp_ns."""
        msg = self.messages.Info(ref_id=node_id)
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp_ns // S, stamp_ns % S
        self.info.publish(msg)

    def wait_links(self, predicate, timeout: float = 60.0) -> list:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.links), timeout):
                raise AssertionError(f'timed out: add_link received {len(self.links)} links')
            return list(self.links)


@pytest.fixture(scope='module')
def node(tmp_path_factory):
    graph_messages = backend('pose_graph_tools_msgs')
    rtabmap_messages, rtabmap_services = backend('rtabmap_msgs'), backend('rtabmap_msgs', 'srv')
    tmp = tmp_path_factory.mktemp('outputs')
    values = base_params(
        checkpoint(tmp_path_factory), tmp / 'maps', image_topics=['cam/image_raw'],
        camera_info_topics=['cam/camera_info'], depth_topics=['cam/depth'],
        input_qos='reliable', queue_size=10, threshold=-1.0,
        exclusion_seconds=20.0, exclusion_keyframes=3, top_k=5, verify_top_n=5,
        verify_budget_s=60.0, session='o', robot_id='r1', verification=True,
        diagnostics_period_s=0.2, odometry_topic='odom', pose_tolerance_s=1.5,
        publish_lio_sam=True, publish_pose_graph=True, pose_graph_robot_ids=ROBOTS,
        publish_rtabmap=True, rtabmap_pending_timeout_s=PENDING_TIMEOUT_S,
        rtabmap_call_timeout_s=CALL_TIMEOUT_S)
    n = NodeUnderTest(tmp, 'vpr_node', write_params_file(tmp / 'vpr.yaml', values))
    ros = n.ros
    n.image = ros.publisher(Image, '/cam/image_raw', 100)
    n.depth = ros.publisher(Image, '/cam/depth', 100)
    n.info = ros.publisher(CameraInfo, '/cam/camera_info', 100)
    n.odom = ros.publisher(Odometry, '/odom', 100)
    n.graphs = ros.collect(graph_messages.PoseGraph, '/external_loop_closures', 100)
    n.lio = ros.collect(Float64MultiArray, '/lio_loop/loop_closure_detection',
                        qos_profile_sensor_data)  # as LIO-SAM subscribes
    n.rtabmap = FakeRtabmap(ros, rtabmap_messages, rtabmap_services)
    for pub in (n.image, n.depth, n.info, n.odom, n.rtabmap.info):
        ros.wait_for_subscribers(pub, timeout=START_TIMEOUT_S)
    for collector in (n.candidates, n.graphs, n.lio):
        ros.wait_for_publishers(collector)
    n.world = World(0)
    n.ids = {}  # keyframe stamp -> the node id the fake RTAB-Map announced for it
    yield n
    assert n.close() == 0


def _ns(stamp) -> int:
    return stamp.sec * S + stamp.nanosec


def _verified(answer) -> LoopCandidate:
    return next(c for c in answer.candidates if c.status == LoopCandidate.STATUS_VERIFIED)


def _graph_for(node, query_ns: int):
    """Wait for the PoseGraph of the loop of the query stamped query_ns."""
    def sent(graphs: list) -> bool:
        return any(g.edges[0].key_from == query_ns for g in graphs)
    graphs = node.graphs.wait_for(predicate=sent, timeout=60.0)
    return next(g for g in graphs if g.edges[0].key_from == query_ns)


def _matrix(pose) -> np.ndarray:
    return transform_from(_pose_values(pose))


def _pose_values(pose) -> list[float]:
    p, q = pose.position, pose.orientation
    return [p.x, p.y, p.z, q.x, q.y, q.z, q.w]


def _check_link(link, loop: LoopCandidate, ids: dict[int, int], query_ns: int) -> None:
    assert (link.from_id, link.to_id, link.type) == (ids[query_ns], ids[_ns(loop.match.stamp)], 4)
    t, r = link.transform.translation, link.transform.rotation
    assert [t.x, t.y, t.z, r.x, r.y, r.z, r.w] == _pose_values(loop.relative_pose_base.pose)
    covariance = np.array(loop.relative_pose_base.covariance).reshape(6, 6)
    local = local_frame_covariance(covariance, _matrix(loop.relative_pose_base.pose))
    info, expected = np.array(link.information).reshape(6, 6), np.linalg.inv(local)
    assert np.allclose(info, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())


def test_verified_loops_reach_hydra_rtabmap_and_lio_sam(node, tmp_path):
    ids = node.ids
    for i, (t, angle, offset) in enumerate(LAP1):
        assert not visit(node, t, angle, offset).accepted
        ids[round(t * S)] = 10 + i
        node.rtabmap.announce(round(t * S), 10 + i)  # RTAB-Map made a node of this frame
    loops = []
    for i, (t, angle, offset) in enumerate(LAP2):
        answer = visit(node, t, angle, offset)
        ids[round(t * S)] = 20 + i
        node.rtabmap.announce(round(t * S), 20 + i)
        if answer.accepted:
            loops.append((round(t * S), _verified(answer)))
    assert len(loops) >= len(LAP2) // 2

    for query_ns, loop in loops:  # Hydra: one LOOPCLOSE edge per loop, query -> match
        graph = _graph_for(node, query_ns)
        assert len(graph.edges) == 1 and _ns(graph.header.stamp) == query_ns
        edge = graph.edges[0]
        assert edge.key_to == _ns(loop.match.stamp)
        assert (edge.robot_from, edge.robot_to) == (1, 1)  # 'r1' in pose_graph_robot_ids
        assert edge.type == 1  # LOOPCLOSE
        assert loop.pose_kind == LoopCandidate.POSE_METRIC
        assert _pose_values(edge.pose) == _pose_values(loop.relative_pose_base.pose)
        assert list(edge.covariance) == list(loop.relative_pose_base.covariance)

    links = node.rtabmap.wait_links(lambda got: len(got) >= len(loops))
    assert len(links) == len(loops)
    by_query = {link.from_id: link for link in links}
    for query_ns, loop in loops:
        _check_link(by_query[ids[query_ns]], loop, ids, query_ns)

    pairs = node.lio.wait_for(len(loops))
    assert [list(m.data) for m in pairs] == [
        [query_ns / 1e9, _ns(loop.match.stamp) / 1e9] for query_ns, loop in loops]
    values = node.diag(lambda v: int(v['rtabmap_links_total']) == len(loops))
    assert int(values['pose_graph_edges_total']) == len(loops)
    assert values['rtabmap_pending'] == '0' and values['output_errors_total'] == '0'

    # The edges are typed as upstream's pose_graph_tools_msgs/PoseGraph (the same type hash).
    upstream = _upstream_hashes(tmp_path)['pose_graph_tools_msgs/msg/PoseGraph']
    publishers = node.ros.node.get_publishers_info_by_topic('/external_loop_closures')
    assert [str(p.topic_type_hash) for p in publishers] == [upstream]


def _revisit(node, t: float, place: tuple[float, float, float]):
    answer = visit(node, t, place[1], place[2])
    assert answer.accepted, 'the place of a second-lap loop should verify again'
    return answer


def test_a_loop_waits_for_rtabmap_to_announce_its_node(node):
    t = 200.0
    answer = _revisit(node, t, LAP2[3])
    loop, query_ns = _verified(answer), round(t * S)
    assert _graph_for(node, query_ns).edges[0].key_to == _ns(loop.match.stamp)  # Hydra: at once
    node.diag(lambda v: int(v['rtabmap_pending']) == 1)  # RTAB-Map: not before the node id
    assert not [link for link in node.rtabmap.links if link.from_id == 300]
    node.rtabmap.announce(query_ns, 300)
    links = node.rtabmap.wait_links(lambda got: any(link.from_id == 300 for link in got))
    node.ids[query_ns] = 300
    _check_link(next(link for link in links if link.from_id == 300), loop, node.ids, query_ns)
    node.diag(lambda v: v['rtabmap_pending'] == '0')


def test_a_loop_whose_node_is_never_announced_is_dropped_and_counted(node):
    before = node.snapshot()
    links = len(node.rtabmap.links)
    t = 300.0
    _revisit(node, t, LAP2[5])
    node.rtabmap.announce(round(t * S), 0)  # not a node (RTAB-Map sends ids <= 0 too)
    node.rtabmap.announce(round(t * S), -1)
    after = node.diag(lambda v: int(v['rtabmap_expired_total'])
                      == int(before['rtabmap_expired_total']) + 1,
                      timeout=PENDING_TIMEOUT_S + 60)
    assert after['rtabmap_pending'] == '0'
    assert int(after['output_errors_total']) == int(before['output_errors_total']) + 1
    assert 'dropped after 8 s: no node of stamp(s) [300000000000]' in after['last_error']
    assert len(node.rtabmap.links) == links  # nothing was sent


def test_an_unanswered_add_link_is_counted_and_not_retried(node):
    before = node.snapshot()
    t = 400.0
    node.rtabmap.announce(round(t * S), 400)  # the node is known before the loop
    node.rtabmap.delay_s = CALL_TIMEOUT_S + 2.0
    _revisit(node, t, LAP2[4])
    node.rtabmap.wait_links(lambda got: any(link.from_id == 400 for link in got))
    after = node.diag(lambda v: int(v['rtabmap_timeouts_total'])
                      == int(before['rtabmap_timeouts_total']) + 1)
    assert 'did not answer within 2 s' in after['last_error']
    wait_until(lambda: node.rtabmap.answered == len(node.rtabmap.links), 30.0, 'the late answer')
    late = node.snapshot()  # counters read after the late answer was sent
    assert late['rtabmap_links_total'] == before['rtabmap_links_total']  # a late answer: no link
    assert sum(link.from_id == 400 for link in node.rtabmap.links) == 1  # not sent again
