"""Multi-robot keyframe sharing: the message, the receiving rules, two nodes over real DDS.

The unit tests convert keyframes to boq_ros/SharedKeyframe and back (through CDR bytes), refuse
malformed ones by cause, and run the receiving side against a real map, detector and verifier:
loops with another robot's keyframe are verified with the features it shared, and rejected with
the cause when it shared none. The DDS tests start two node processes (robot_a, robot_b, each in
its namespace, one domain) that drive the synthetic street with calibrated depth: robot B comes
back to places robot A saw and closes the loop with A's keyframes, verified with A's features;
A, which never comes back, closes the same loop when B's keyframe arrives. With random weights
every descriptor looks alike (threshold -1 lets every candidate through): what decides is the
verification, and what is checked is the plumbing (identities, features, causes).
"""
from collections import Counter
import threading
import time
from types import SimpleNamespace
from typing import Any

from boq_ros.msg import LoopCandidate, LoopCandidateArray, SharedKeyframe
from conftest import NodeProcess, TestNode, _next_domain, node_command, wait_until
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
import numpy as np
import pytest
import rclpy
from rclpy.serialization import deserialize_message, serialize_message
from ring_scene import LAP1, LAP2, SIZE, S, base_pose, camera_info, header, odometry, view
from sensor_msgs.msg import CameraInfo, Image
from test_node_common import (
    ANSWER_TIMEOUT_S,
    START_TIMEOUT_S,
    answer_for,
    base_params,
    checkpoint,
    computed_after,
    diagnostics,
)

from boq_ros.demo import write_params_file
from boq_ros.detector import DetectorConfig, LoopDetector, PoseKind, Status
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta
from boq_ros.ros import params
from boq_ros.ros.convert import image_msg
from boq_ros.ros.dds import safe_dds_environment
from boq_ros.ros.node import VprNode
from boq_ros.ros.sharing import (
    KeyframeSharing,
    SharingContext,
    SharingError,
    keyframe_message,
    received_keyframe,
    sharing_qos,
)
from boq_ros.settings import VerificationSettings
from boq_ros.synth import World, camera_intrinsics, camera_pose_world, depth_to_mm
from boq_ros.verification import GeometricVerifier
from boq_ros.verification.camera import CameraModel

MODEL = 'demo@00000000'
WORLD = World(0)
VERIFIER = GeometricVerifier(VerificationSettings())


def features(angle: float, offset: float) -> Any:
    """The local features the node computes for a view of the street (SIFT, K, depth)."""
    rgb, depth = WORLD.render(*view(angle, offset), SIZE, with_depth=True)
    return VERIFIER.features(rgb, 'rgb8', CameraModel(*SIZE, *camera_intrinsics(SIZE)), depth)


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def axis(i: int) -> np.ndarray:
    """A place unlike any other (orthogonal descriptors)."""
    return np.eye(8, dtype=np.float32)[i]


def meta(robot: str, session: str, t: float, **extra: Any) -> KeyframeMeta:
    return KeyframeMeta(stamp_ns=round(t * S), session=session, robot_id=robot,
                        camera=f'/{robot}/cam/image_raw', frame_id='camera', **extra)


def through_cdr(msg: SharedKeyframe) -> SharedKeyframe:
    """The message as a subscriber receives it: serialised and deserialised."""
    return deserialize_message(serialize_message(msg), SharedKeyframe)


# -- conversion and validation -------------------------------------------------------------------
@pytest.mark.parametrize('encoding', ['float32', 'float16'])
@pytest.mark.parametrize('shared', ['all', 'descriptor'])
def test_round_trip(encoding, shared):
    descriptor = unit(0, 16384)
    sent = meta('robot_a', 'a', 12.5, pose=(1.0, 2.0, 3.0, 0.0, 0.0, 0.6, 0.8),
                pose_frame='robot_a/odom', pose_source='odometry:/robot_a/odom', id=7, seq=3)
    local = features(0.1, 0.0) if shared == 'all' else None
    msg = through_cdr(keyframe_message(sent, descriptor, local, MODEL, 'map_a', encoding))
    assert (msg.id, msg.seq, msg.map_id, msg.model) == (7, 3, 'map_a', MODEL)
    got = received_keyframe(msg, MODEL, 16384)
    assert (got.id, got.map_id) == (7, 'map_a')
    assert got.meta == KeyframeMeta(**{**vars(sent), 'id': -1, 'seq': -1})  # ids: the receiver's
    assert got.descriptor.dtype == np.float32
    assert np.linalg.norm(got.descriptor) == pytest.approx(1.0, abs=1e-6)
    if encoding == 'float32':
        np.testing.assert_array_equal(got.descriptor, descriptor)
    else:
        assert len(msg.descriptor) == 0 and len(msg.descriptor_float16) == 2 * 16384
        assert float(got.descriptor @ descriptor) == pytest.approx(1.0, abs=1e-6)
    if local is None:
        assert got.features is None and msg.features_kind == ''
        return
    f = got.features
    assert (f.kind, f.image_size, f.intrinsics) == (local.kind, local.image_size,
                                                      local.intrinsics)
    np.testing.assert_array_equal(f.keypoints, local.keypoints)
    np.testing.assert_array_equal(f.descriptors, local.descriptors)
    np.testing.assert_array_equal(f.depth, local.depth)


def test_round_trip_without_pose_intrinsics_or_depth():
    local = features(0.1, 0.0)
    bare = type(local)(local.kind, local.keypoints, local.descriptors.astype(np.float16),
                       local.image_size)
    sent = meta('robot_a', 'a', 1.0, id=0, seq=0)
    got = received_keyframe(through_cdr(keyframe_message(sent, unit(1), bare, MODEL, 'm')),
                            MODEL, 8)
    assert got.meta.pose is None and got.features.intrinsics is None and got.features.depth is None
    assert got.features.descriptors.dtype == np.float16
    np.testing.assert_array_equal(got.features.descriptors, bare.descriptors)


def _bad(change: str) -> SharedKeyframe:
    msg = through_cdr(keyframe_message(meta('robot_a', 'a', 1.0, id=0, seq=0), unit(2),
                                       features(0.1, 0.0), MODEL, 'm'))
    if change == 'model':
        msg.model = 'demo@ffffffff'
    elif change == 'encoding':
        msg.descriptor_encoding = 'bfloat16'
    elif change == 'dimension':
        msg.descriptor = msg.descriptor[:7]
    elif change == 'non_finite':
        msg.descriptor[3] = float('nan')
    elif change == 'norm':
        msg.descriptor = [2 * v for v in msg.descriptor]
    elif change == 'features':
        msg.features_descriptors = msg.features_descriptors[:-1]
    elif change == 'keypoints':
        msg.keypoints = msg.keypoints[:-1]
    elif change == 'intrinsics':
        msg.intrinsics = [500.0, 500.0]
    elif change == 'depth':
        msg.depth = msg.depth[:-1]
    elif change == 'empty_robot':
        msg.robot_id = ''
    elif change == 'pose':
        msg.has_pose, msg.pose.orientation.w = True, 0.0  # an all-zero quaternion
    return msg


@pytest.mark.parametrize('change, cause', [
    ('model', 'model'), ('encoding', 'encoding'), ('dimension', 'dimension'),
    ('non_finite', 'non_finite'), ('norm', 'norm'), ('features', 'features'),
    ('keypoints', 'features'), ('intrinsics', 'features'), ('depth', 'features'),
    ('empty_robot', 'metadata'), ('pose', 'metadata')])
def test_malformed_keyframes_are_refused_by_cause(change, cause):
    with pytest.raises(SharingError) as refused:
        received_keyframe(_bad(change), MODEL, 8)
    assert refused.value.cause == cause and str(refused.value)


# -- the receiving side against a real map, detector and verifier --------------------------------
class _Node:
    """What KeyframeSharing uses of the rclpy node: a publisher that keeps what it sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def create_publisher(self, *args: Any) -> '_Node':
        return self

    def publish(self, msg: Any) -> None:
        self.sent.append(msg)


def _receiver(**settings: Any) -> SimpleNamespace:
    """A KeyframeSharing of robot_b (session b) over a real map, detector and verifier."""
    kmap = KeyframeMap(8, model_id=MODEL, preprocess={})
    verifier = GeometricVerifier(VerificationSettings(), kmap)
    detector = LoopDetector(kmap, DetectorConfig(threshold=0.5, exclusion_seconds=10,
                                                 exclusion_keyframes=1), verifier)
    out = SimpleNamespace(map=kmap, detector=detector, node=_Node(), counts=Counter(),
                          errors=[], answers=[])
    context = SharingContext(out.node, threading.Lock(), lambda: detector,
                             lambda key: out.counts.update([key]),
                             lambda kind, text: out.errors.append((kind, text)),
                             lambda decision, loop: out.answers.append((decision, loop)))
    out.sharing = KeyframeSharing(
        context, params.NodeSettings(share_keyframes=True, **settings), robot_id='robot_b',
        session='b', model_id=MODEL, dim=8)
    return out


def _shared(robot: str, session: str, t: float, descriptor: np.ndarray, local: Any
            ) -> SharedKeyframe:
    return through_cdr(keyframe_message(meta(robot, session, t, id=0, seq=0), descriptor,
                                        local, MODEL, f'map_{robot}'))


def _truth(query: tuple[float, float], match: tuple[float, float]) -> np.ndarray:
    return np.linalg.inv(camera_pose_world(*view(*query))) @ camera_pose_world(*view(*match))


def test_loops_with_shared_keyframes_are_verified_with_their_features():
    b = _receiver()
    place, other = axis(0), axis(1)
    b.sharing.receive(_shared('robot_a', 'a', 1.0, place, features(0.10, 0.0)))
    b.sharing.receive(_shared('robot_c', 'c', 1.0, other, None))  # shares no features
    assert b.counts['shared_added'] == 2 and not b.errors
    # Robot B comes back to A's place (another offset): verified with A's features, metric.
    found = b.detector.process(place, meta('robot_b', 'b', 50.0), features(0.11, 0.4))
    loop = found.match
    assert found.accepted and loop.status == Status.VERIFIED
    assert (loop.meta.robot_id, loop.meta.session, loop.meta.camera) == (
        'robot_a', 'a', '/robot_a/cam/image_raw')
    assert loop.verification.pose_kind == PoseKind.METRIC
    truth = _truth((0.11, 0.4), (0.10, 0.0))
    assert np.linalg.norm(loop.verification.relative_pose[:3, 3] - truth[:3, 3]) < 0.15
    # ... and to C's: rejected, with the cause, never passed unverified.
    found = b.detector.process(other, meta('robot_b', 'b', 60.0), features(0.11, 0.4))
    assert not found.accepted
    c = found.candidates[0]
    assert c.meta.robot_id == 'robot_c' and c.status == Status.REJECTED
    assert c.verification.cause == 'no_match_features' and c.reason.startswith('verification:')


def test_received_keyframes_are_searched_on_arrival():
    b = _receiver()
    place = axis(2)
    b.detector.process(place, meta('robot_b', 'b', 5.0), features(0.10, 0.0))
    b.sharing.receive(_shared('robot_a', 'a', 1.0, place, features(0.11, 0.4)))
    (decision, loop), = b.answers
    assert loop and b.counts['shared_loops'] == 1 and b.counts['shared_queries'] == 1
    detection = decision.detection
    assert detection.query.robot_id == 'robot_a' and detection.query.id == 1  # in B's map
    assert detection.match.meta.robot_id == 'robot_b' and detection.match.keyframe_id == 0
    assert detection.match.status == Status.VERIFIED
    # Without features, the same keyframe is rejected by verification, with the cause.
    b.sharing.receive(_shared('robot_c', 'c', 1.0, place, None))
    decision, loop = b.answers[-1]
    assert not loop and not decision.detection.accepted
    causes = {c.verification.cause for c in decision.detection.candidates if c.verification}
    assert causes == {'no_query_features'}
    # Off: added, not searched.
    quiet = _receiver(query_shared_keyframes=False)
    quiet.sharing.receive(_shared('robot_a', 'a', 1.0, place, None))
    assert quiet.counts['shared_added'] == 1 and not quiet.answers


def test_duplicates_own_keyframes_and_taken_sessions_are_not_added():
    b = _receiver()
    msg = _shared('robot_a', 'a', 1.0, unit(13), None)
    b.sharing.receive(msg)
    b.sharing.receive(msg)  # re-delivered
    b.sharing.receive(_shared('robot_b', 'b', 1.0, unit(13), None))  # its own, echoed
    b.sharing.receive(_shared('robot_x', 'a', 2.0, unit(14), None))  # robot_a's session
    b.sharing.receive(_shared('robot_x', 'b', 2.0, unit(14), None))  # this node's session
    assert len(b.map) == 1
    assert b.counts == Counter(shared_received=4, shared_added=1, shared_queries=1,
                               shared_duplicates=1, shared_rejected_session=2)
    assert [kind for kind, _ in b.errors] == ['input', 'input']
    assert "robot 'robot_a'" in b.errors[0][1] and "this node's own" in b.errors[1][1]
    assert b.sharing.robots == ('robot_a',)


def test_the_keyframes_a_node_adds_are_published():
    b = _receiver(shared_descriptor_encoding='float16', share_features=False)
    kf = b.detector.process(unit(15), meta('robot_b', 'b', 1.0), features(0.1, 0.0)).query
    b.sharing.share(kf, unit(15), features(0.1, 0.0), b.map.map_id)
    msg, = b.node.sent
    assert (msg.robot_id, msg.session, msg.id, msg.map_id) == ('robot_b', 'b', 0, b.map.map_id)
    assert msg.descriptor_encoding == 'float16' and msg.features_kind == ''
    assert b.counts['shared_sent'] == 1


def test_configure_refuses_sharing_it_cannot_do(ros_domain_id):
    cases = [({'robot_id': ''}, 'share_keyframes needs robot_id'),
             ({'robot_id': 'r', 'mode': 'static', 'map_path': 'm'}, 'mode static'),
             ({'robot_id': 'r', 'shared_keyframes_topic': 'a b'}, 'shared_keyframes_topic')]
    for overrides, message in cases:
        args = ['--ros-args', '-p', 'share_keyframes:=true']
        for key, value in overrides.items():
            args += ['-p', f'{key}:={value}' if value else f"{key}:=''"]
        context = rclpy.Context()
        rclpy.init(args=args, context=context, domain_id=ros_domain_id)
        node = VprNode(context=context)
        try:  # refused before the model loads (no checkpoint is given)
            with pytest.raises(params.ParameterValueError, match=message):
                node._configure(params.read(node))
        finally:
            node.destroy_node()
            rclpy.shutdown(context=context)


# -- two node processes over real DDS ------------------------------------------------------------
ROBOTS = ('robot_a', 'robot_b')
CAMERA = 'cam/image_raw'


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('fleet')
    domain = _next_domain()
    (tmp / 'ros_log').mkdir()
    env = safe_dds_environment(domain, tmp / 'ros_log')
    procs = {}
    for robot in ROBOTS:
        values = base_params(
            checkpoint(tmp_path_factory), tmp / robot / 'maps', image_topics=[CAMERA],
            camera_info_topics=['cam/camera_info'], depth_topics=['cam/depth'],
            input_qos='reliable', queue_size=10, threshold=-1.0, exclusion_seconds=20.0,
            exclusion_keyframes=3, top_k=5, verify_top_n=5, verify_budget_s=60.0,
            verification=True, diagnostics_period_s=0.2, odometry_topic='odom',
            pose_tolerance_s=1.5, robot_id=robot, session=robot[-1], share_keyframes=True)
        cmd = node_command(name='vpr_node', namespace=f'/{robot}',
                           params_file=write_params_file(tmp / f'{robot}.yaml', values))
        procs[robot] = NodeProcess(cmd, env, tmp / f'{robot}.log')
    peer = TestNode(domain)
    fleet = SimpleNamespace(procs=procs, ros=peer, robots={})
    fleet.diagnostics = peer.collect(DiagnosticArray, '/diagnostics', 100)
    fleet.shared = peer.collect(SharedKeyframe, '/fleet/keyframes',
                                sharing_qos('transient_local', 100))
    fleet.inject = peer.publisher(SharedKeyframe, '/fleet/keyframes',
                                  sharing_qos('transient_local', 100))
    for robot in ROBOTS:
        ns = f'/{robot}'
        fleet.robots[robot] = SimpleNamespace(
            name=robot, image=peer.publisher(Image, f'{ns}/{CAMERA}', 100),
            depth=peer.publisher(Image, f'{ns}/cam/depth', 100),
            info=peer.publisher(CameraInfo, f'{ns}/cam/camera_info', 100),
            odom=peer.publisher(Odometry, f'{ns}/odom', 100),
            candidates=peer.collect(LoopCandidateArray, f'{ns}/loop_candidates', 100))
    try:
        for r in fleet.robots.values():
            for pub in (r.image, r.depth, r.info, r.odom):
                peer.wait_for_subscribers(pub, timeout=START_TIMEOUT_S)
            peer.wait_for_publishers(r.candidates)
        peer.wait_for_subscribers(fleet.inject, count=2)
        yield fleet
    finally:
        peer.close()
        statuses = {robot: proc.stop() for robot, proc in procs.items()}
        for robot, proc in procs.items():
            print(f'\n--- {robot} (exit {statuses[robot]}) ---\n{proc.log_text()[-6000:]}')
    assert statuses == {robot: 0 for robot in ROBOTS}  # SIGINT: clean shutdowns


def _alive(fleet) -> None:
    for robot, proc in fleet.procs.items():
        assert proc.alive(), f'{robot} exited:\n{proc.log_text()[-4000:]}'


def visit(fleet, robot: str, t: float, angle: float, offset: float) -> LoopCandidateArray:
    """Drive `robot` one frame (intrinsics, odometry, depth, image); return its own answer."""
    r = fleet.robots[robot]
    rgb, depth_m = WORLD.render(*view(angle, offset), SIZE, with_depth=True)
    r.info.publish(camera_info(t))
    for dt in (-0.02, 0.0, 0.02):
        r.odom.publish(odometry(t + dt, base_pose(angle, offset)))
    r.depth.publish(image_msg(depth_to_mm(depth_m), 'mono16', header(t)))
    r.image.publish(image_msg(rgb, 'rgb8', header(t)))
    _alive(fleet)
    return answer_for(r.candidates, round(t * S), f'/{robot}/{CAMERA}')


def diag(fleet, robot: str, predicate, after_ns: int | None = None,
         timeout: float = ANSWER_TIMEOUT_S) -> dict[str, str]:
    """The latest /diagnostics values of `robot` once they satisfy `predicate`.

    With `after_ns`, only values the node read after that wall-clock time.
    """
    found = []
    node = f'/{robot}/vpr_node'

    def ok() -> bool:
        _alive(fleet)
        messages = list(fleet.diagnostics.messages)
        if after_ns is not None:
            messages = computed_after(messages, after_ns, node)
        values = diagnostics(messages, node)
        if values is not None and predicate(values):
            found.append(values)
            return True
        return False

    wait_until(ok, timeout, f'a /diagnostics status of {robot} that matches', poll_s=0.1)
    return found[0]


def total(values: dict[str, str], key: str) -> int:
    return int(values[f'{key}_total'])


def shared_by(fleet, robot: str, count: int) -> list[SharedKeyframe]:
    """Wait for `count` keyframes shared by `robot`; return them in order."""
    mine = lambda messages: [m for m in messages if m.robot_id == robot]  # noqa: E731
    return mine(fleet.shared.wait_for(predicate=lambda ms: len(mine(ms)) >= count,
                                      timeout=ANSWER_TIMEOUT_S))


def stamp(msg: Any) -> int:
    return msg.stamp.sec * S + msg.stamp.nanosec


def test_inter_robot_loops_over_dds(fleet):
    # Robot B sees two places of its own; the test republishes the first as robot C's, without
    # features. B receives it and searches it at once: verification rejects it (no features).
    b_places = [(0.0, 2.0, 0.0), (1.0, 2.05, 0.0)]
    for t, angle, offset in b_places:
        assert not visit(fleet, 'robot_b', t, angle, offset).accepted
    b0 = through_cdr(shared_by(fleet, 'robot_b', 1)[0])
    b0.robot_id, b0.session, b0.features_kind = 'robot_c', 'c', ''
    fleet.inject.publish(b0)
    values = diag(fleet, 'robot_b', lambda v: total(v, 'shared_added') >= 1
                  and total(v, 'verification_no_query_features') >= 1)
    assert total(values, 'shared_loops') == 0
    # B at its first place again, 4 s later: its own keyframes there are its recent past; C's is
    # a candidate, and verification rejects it, saying why.
    msg = visit(fleet, 'robot_b', 4.0, 2.0, 0.0)
    c = next(c for c in msg.candidates if c.match.robot_id == 'robot_c')
    assert c.status == LoopCandidate.STATUS_REJECTED and 'no stored local features' in c.reason

    # Robot A drives the first stretch of the street and shares its keyframes with features.
    a_ids = {}
    for t, angle, offset in LAP1[:4]:
        a_ids[round(t * S)] = visit(fleet, 'robot_a', t, angle, offset).query.id
    a_shared = {stamp(m.header): m for m in shared_by(fleet, 'robot_a', 4)}
    assert {s: m.id for s, m in a_shared.items()} == a_ids  # A shares its keyframes, its ids
    for m in a_shared.values():
        assert m.features_kind == 'sift' and m.has_depth and len(m.intrinsics) == 4
        assert m.session == 'a' and m.model.startswith('resnet50-16384@')
    diag(fleet, 'robot_b', lambda v: total(v, 'shared_added') >= 1 + 4)

    # B comes back to A's stretch (another lane): the loop is with A's keyframe, verified with
    # the features A shared, with a metric pose that matches the ground truth.
    place_of = {round(t * S): (angle, offset) for t, angle, offset in LAP1}
    t, angle, offset = LAP2[2]
    msg = visit(fleet, 'robot_b', t, angle, offset)
    assert msg.accepted
    loop = next(c for c in msg.candidates if c.status == LoopCandidate.STATUS_VERIFIED)
    match = loop.match
    shared = a_shared[stamp(match)]  # one of A's keyframes ...
    assert (match.robot_id, match.session, match.camera, match.frame_id) == (
        'robot_a', 'a', '/robot_a/cam/image_raw', shared.header.frame_id)
    assert loop.pose_kind == LoopCandidate.POSE_METRIC and loop.has_relative_pose
    truth = _truth((angle, offset), place_of[stamp(match)])
    p = loop.relative_pose.pose.position
    assert np.linalg.norm(truth[:3, 3] - [p.x, p.y, p.z]) < 0.15
    assert msg.query.robot_id == 'robot_b' and msg.query.session == 'b'

    # A never comes back, and closes the loop when B's keyframe arrives: query B's keyframe,
    # match one of A's own, under the id A published for it.
    def reverse(messages) -> bool:
        _alive(fleet)
        return any(m.query.robot_id == 'robot_b' and stamp(m.query) == round(t * S)
                   for m in messages)
    back = next(m for m in fleet.robots['robot_a'].candidates.wait_for(
        predicate=reverse, timeout=ANSWER_TIMEOUT_S) if m.query.robot_id == 'robot_b')
    assert back.accepted and back.query.session == 'b'
    loop = next(c for c in back.candidates if c.status == LoopCandidate.STATUS_VERIFIED)
    assert loop.match.robot_id == 'robot_a' and loop.match.id == a_ids[stamp(loop.match)]
    assert loop.pose_kind == LoopCandidate.POSE_METRIC
    values = diag(fleet, 'robot_a', lambda v: total(v, 'shared_loops') >= 1)
    assert values['shared_robots'] == 'robot_b robot_c'


def test_bad_shared_keyframes_are_counted_and_harmless(fleet):
    good = through_cdr(shared_by(fleet, 'robot_a', 1)[0])  # a keyframe B holds already
    before = diag(fleet, 'robot_b', lambda v: True, after_ns=time.time_ns())
    bad = {}
    for i, (change, cause) in enumerate([
            ('model', 'model'), ('encoding', 'encoding'), ('dimension', 'dimension'),
            ('non_finite', 'non_finite'), ('norm', 'norm'), ('features', 'features'),
            ('empty_session', 'metadata'), ('own_session', 'session')]):
        msg = through_cdr(good)
        msg.robot_id, msg.session, msg.header.stamp.sec = 'robot_x', 'x', 500 + i
        if change == 'model':
            msg.model = 'resnet50-16384@ffffffff'
        elif change == 'encoding':
            msg.descriptor_encoding = 'bfloat16'
        elif change == 'dimension':
            msg.descriptor = msg.descriptor[:1000]
        elif change == 'non_finite':
            msg.descriptor[0] = float('nan')
        elif change == 'norm':
            msg.descriptor = [2 * v for v in msg.descriptor]
        elif change == 'features':
            msg.features_descriptors = msg.features_descriptors[:-1]
        elif change == 'empty_session':
            msg.session = ''
        elif change == 'own_session':
            msg.session = 'b'
        bad[cause] = bad.get(cause, 0) + 1
        fleet.inject.publish(msg)
    fleet.inject.publish(good)  # a re-delivery
    after = diag(fleet, 'robot_b', lambda v: total(v, 'shared_duplicates')
                 > total(before, 'shared_duplicates') and all(
                     total(v, f'shared_rejected_{c}') >= total(before, f'shared_rejected_{c}') + n
                     for c, n in bad.items()))
    assert int(after['map_keyframes']) == int(before['map_keyframes'])  # nothing was added
    assert total(after, 'input_errors') >= total(before, 'input_errors') + len(bad)
    assert 'shared keyframe from robot' in after['last_error']
    # B keeps working: it answers, and its map grows by that keyframe only.
    t, angle, offset = LAP2[5]
    assert visit(fleet, 'robot_b', t + 300, angle, offset).query.robot_id == 'robot_b'
    diag(fleet, 'robot_b', lambda v: int(v['map_keyframes']) == int(before['map_keyframes']) + 1)
