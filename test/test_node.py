"""The loop-closure node in grow mode over real DDS: one node process serves the whole module.

Parameters come from a YAML file. Three cameras (two raw, one compressed), reliable input so
that lock-step publishing loses nothing. Each test uses its own places and time range; the map
grows across tests as it would on a robot.
"""
from pathlib import Path

from boq_ros.msg import LoopCandidate, LoopCandidateArray
from boq_ros.srv import LoadMap, Relocalize, SaveMap
from conftest import wait_until
import cv2
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray, Header
from test_node_common import (
    START_TIMEOUT_S,
    THRESHOLD,
    NodeUnderTest,
    base_params,
    checkpoint,
    place,
)
from visualization_msgs.msg import MarkerArray

from boq_ros.demo import write_params_file
from boq_ros.images import encode_compressed
from boq_ros.keyframe_map import KeyframeMap
from boq_ros.ros.convert import image_msg

S = 10**9
SESSION = 'test_run'


@pytest.fixture(scope='module')
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('grow')
    values = base_params(
        checkpoint(tmp_path_factory), tmp / 'maps',
        image_topics=['cam0/image', 'cam1/image'], compressed_topics=['cam2/image/compressed'],
        input_qos='reliable', queue_size=10, threshold=THRESHOLD, exclusion_seconds=10.0,
        exclusion_keyframes=3, top_k=3, session=SESSION, robot_id='r2', publish_lio_sam=True,
        publish_markers=True, publish_debug_image=True, diagnostics_period_s=0.2,
        odometry_topic='odom', pose_tolerance_s=0.05)
    n = NodeUnderTest(tmp, 'vpr_node', write_params_file(tmp / 'vpr.yaml', values))
    n.tmp = tmp
    ros = n.ros
    n.cams = {
        0: ros.publisher(Image, '/cam0/image', 100),
        1: ros.publisher(Image, '/cam1/image', 100),
        2: ros.publisher(CompressedImage, '/cam2/image/compressed', 100),
    }
    n.odom = ros.publisher(Odometry, '/odom', 100)
    n.lio = ros.collect(Float64MultiArray, '/lio_loop/loop_closure_detection',
                        qos_profile_sensor_data)  # as LIO-SAM subscribes
    n.pose = ros.collect(PoseWithCovarianceStamped, '/relocalization_pose', 100)
    n.markers = ros.collect(MarkerArray, '/loop_closure_markers', 100)
    n.debug = ros.collect(Image, '/loop_closure_debug_image', qos_profile_sensor_data)
    for pub in (*n.cams.values(), n.odom):
        ros.wait_for_subscribers(pub, timeout=START_TIMEOUT_S)
    for collector in (n.candidates, n.lio, n.pose, n.markers, n.debug):
        ros.wait_for_publishers(collector)
    yield n
    assert n.close() == 0  # SIGINT: a clean shutdown


def header(t: float, frame: str = 'cam') -> Header:
    h = Header(frame_id=frame)
    ns = round(t * S)
    h.stamp.sec, h.stamp.nanosec = ns // S, ns % S
    return h


def stamp_ns(stamp) -> int:
    return stamp.sec * S + stamp.nanosec


def publish(node, cam: int, array: np.ndarray, encoding: str, t: float) -> None:
    if cam == 2:
        fmt, data = encode_compressed(array, encoding, 'png')
        node.cams[2].publish(CompressedImage(header=header(t), format=fmt, data=data))
    else:
        node.cams[cam].publish(image_msg(array, encoding, header(t)))


def answer(node, t: float, camera: str | None = None) -> LoopCandidateArray:
    ns = round(t * S)

    def match(m) -> bool:
        return stamp_ns(m.query.stamp) == ns and camera in (None, m.query.camera)

    def arrived(messages) -> bool:
        node.proc.assert_alive()
        return any(match(m) for m in messages)

    return next(m for m in node.candidates.wait_for(predicate=arrived, timeout=60) if match(m))


def visit(node, cam: int, array: np.ndarray, encoding: str, t: float) -> LoopCandidateArray:
    """Publish one frame and wait for its answer (lock-step: nothing can be dropped)."""
    publish(node, cam, array, encoding, t)
    return answer(node, t)


def best(msg: LoopCandidateArray) -> LoopCandidate:
    assert msg.accepted and msg.candidates, f'query at {stamp_ns(msg.query.stamp)} not accepted'
    top = msg.candidates[0]
    assert top.rank == 0 and top.status == LoopCandidate.STATUS_APPEARANCE_ONLY
    assert top.similarity >= THRESHOLD and top.threshold == pytest.approx(THRESHOLD)
    return top


def test_revisits_ids_stamps_exclusion(node):
    route = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (0, 5), (5, 20), (1, 30), (2, 31)]
    # Odometry first. The node's odometry subscription is best effort (it matches any
    # publisher), so messages sent before it matched this publisher are lost: resend the whole
    # trajectory until one round arrived complete (the node counts what it received).
    def odometry_round() -> bool:
        before = int(settled(node)['odometry_total'])
        for _, t in route:
            odom = Odometry(header=header(t, 'odom'))
            odom.pose.pose.position.x, odom.pose.pose.orientation.w = float(t), 1.0
            node.odom.publish(odom)
        try:
            node.diag(lambda v: int(v['odometry_total']) >= before + len(route), timeout=3)
        except AssertionError:
            return False
        return True

    wait_until(odometry_round, 60, 'a complete round of odometry')
    answers = [visit(node, 0, place(p), 'rgb8', t) for p, t in route]

    ids = [a.query.id for a in answers]
    assert ids == list(range(len(route)))  # a fresh map numbers keyframes from 0
    for a, (_, t) in zip(answers, route):
        assert stamp_ns(a.query.stamp) == t * S and a.query.camera == '/cam0/image'
        assert (a.query.session, a.query.robot_id, a.query.frame_id) == (SESSION, 'r2', 'cam')
        for c in a.candidates:  # never the robot's own recent past (10 s or 3 keyframes)
            assert stamp_ns(c.match.stamp) <= (t - 10) * S
            assert c.match.id < a.query.id - 3
    assert not answers[5].candidates  # place 0 again after 5 s: everything is too recent
    assert sorted(stamp_ns(c.match.stamp) for c in answers[6].candidates) == [0, S, 2 * S]
    assert not any(a.accepted for a in answers[:7])
    for revisit, first in ((answers[7], answers[1]), (answers[8], answers[2])):
        top = best(revisit)
        assert top.match.id == first.query.id and top.match.stamp == first.query.stamp
        assert top.match.camera == '/cam0/image' and top.match.session == SESSION
        assert all(c.similarity < top.similarity for c in revisit.candidates[1:])

    # The same loops on the outputs for other backends.
    pairs = node.lio.wait_for(2)
    assert [list(m.data) for m in pairs] == [[30.0, 1.0], [31.0, 2.0]]
    poses = node.pose.wait_for(2)
    assert [(stamp_ns(p.header.stamp), p.header.frame_id, p.pose.pose.position.x)
            for p in poses] == [(30 * S, 'odom', 1.0), (31 * S, 'odom', 2.0)]
    assert poses[0].pose.covariance[0] == 1.0 and poses[0].pose.covariance[35] == 0.1
    edges = node.markers.wait_for(2)
    assert [[p.x for p in m.markers[0].points] for m in edges] == [[30.0, 1.0], [31.0, 2.0]]
    view = node.debug.wait_for(2)[0]
    assert (view.encoding, view.height, view.width) == ('rgb8', 120, 240)  # query | match


def _mosaic_rggb(rgb: np.ndarray) -> np.ndarray:
    out = rgb[:, :, 1].copy()
    out[0::2, 0::2] = rgb[0::2, 0::2, 0]
    out[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return out


def test_encodings_describe_the_same_pixels_alike(node):
    colour, grey = place(10), place(11)[:, :, 0].copy()
    first_colour = visit(node, 0, colour, 'rgb8', 100)
    first_grey = visit(node, 1, grey, 'mono8', 101)
    for i in range(3):  # fillers, so the first visits leave the 3-keyframe exclusion
        visit(node, 0, place(12 + i), 'rgb8', 102 + i)
    revisits = [
        (0, colour[:, :, ::-1], 'bgr8', first_colour),
        (0, cv2.cvtColor(colour, cv2.COLOR_RGB2RGBA), 'rgba8', first_colour),
        (0, cv2.cvtColor(colour, cv2.COLOR_RGB2BGRA), 'bgra8', first_colour),
        (1, grey.astype(np.uint16) * 257, 'mono16', first_grey),
        (1, grey.astype(np.uint16) * 257, '16UC1', first_grey),
    ]
    for k, (cam, array, encoding, first) in enumerate(revisits):
        top = best(visit(node, cam, np.ascontiguousarray(array), encoding, 120 + k))
        assert top.match.id == first.query.id, encoding
    bayer = visit(node, 1, _mosaic_rggb(colour), 'bayer_rggb8', 130)  # demosaiced, not equal
    assert bayer.query.camera == '/cam1/image' and bayer.candidates


def test_compressed_images(node):
    first = visit(node, 0, place(30), 'rgb8', 200)
    for i in range(3):
        visit(node, 0, place(31 + i), 'rgb8', 201 + i)
    png = visit(node, 2, place(30), 'rgb8', 220)  # lossless: the same pixels
    assert png.query.camera == '/cam2/image/compressed'
    assert best(png).match.id == first.query.id
    fmt, data = encode_compressed(place(30), 'rgb8', 'jpeg', quality=95)
    node.cams[2].publish(CompressedImage(header=header(221), format=fmt, data=data))
    jpeg = answer(node, 221)
    assert jpeg.candidates and jpeg.candidates[0].similarity > 0.99


def test_several_cameras_at_once(node):
    publish(node, 0, place(40), 'rgb8', 300)
    publish(node, 1, place(41)[:, :, 1].copy(), 'mono8', 300)
    publish(node, 2, place(42), 'rgb8', 300)
    got = [answer(node, 300, f'/{c}') for c in ('cam0/image', 'cam1/image',
                                                  'cam2/image/compressed')]
    assert len({m.query.id for m in got}) == 3


def _raw(encoding: str, height: int, width: int, step: int, data: bytes, t: float) -> Image:
    return Image(header=header(t), encoding=encoding, height=height, width=width, step=step,
                 data=data)


def settled(node) -> dict[str, str]:
    """A diagnostics status that counts every answer received so far (not a stale one)."""
    return node.diag(lambda v: int(v['keyframes_total']) == len(node.candidates.messages))


def test_bad_input_is_counted_and_harmless(node):
    before = settled(node)
    good = place(50).tobytes()
    node.cams[0].publish(_raw('rgb8', 64, 64, 64 * 3 - 1, good, 400))  # step < width * 3
    node.cams[0].publish(_raw('rgb8', 64, 64, 64 * 3, good[:1000], 401))  # data too short
    node.cams[0].publish(_raw('rgb9', 64, 64, 64 * 3, good, 402))  # unknown encoding
    node.cams[1].publish(_raw('rgb8', 0, 0, 0, b'', 403))  # zero size
    node.cams[1].publish(_raw('rgb8', 20000, 20000, 60000, good, 404))  # 400 Mpx header
    _, jpeg = encode_compressed(place(50), 'rgb8', 'jpeg')
    node.cams[2].publish(CompressedImage(header=header(405), format='jpeg',
                                         data=jpeg[:len(jpeg) // 2]))  # truncated
    errors = int(before['decode_errors_total'])
    after = node.diag(lambda v: int(v['decode_errors_total']) >= errors + 6)
    assert int(after['decode_errors_total']) == errors + 6
    assert after['map_keyframes'] == before['map_keyframes']
    assert 'decode' in after['last_error']
    ok = visit(node, 0, place(50), 'rgb8', 410)  # the node still works
    assert ok.query.id == int(before['map_keyframes'])
    assert not any(400 * S <= stamp_ns(m.query.stamp) <= 405 * S
                   for m in node.candidates.messages)


def _other_models_map(path: Path) -> None:
    other = KeyframeMap(16384, model_id='resnet50-16384@00000000',
                        preprocess={'policy': 'square', 'size': 64, 'multiple': 1})
    other.save(path)


def test_services(node):
    ros, maps = node.ros, node.tmp / 'maps'
    status = settled(node)
    size, errors = int(status['map_keyframes']), int(status['service_errors_total'])
    saved = ros.call(SaveMap, '/vpr_node/save_map', SaveMap.Request(path='saved/m1'))
    assert saved.success, saved.message
    assert (saved.keyframes, saved.path) == (size, str((maps / 'saved' / 'm1').resolve()))
    assert (maps / 'saved' / 'm1').is_dir()

    outside = node.tmp / 'elsewhere'
    outside.mkdir()
    (maps / 'link').symlink_to(outside)
    for bad in ('../escape', str(outside / 'abs'), 'link/m', ''):
        refused = ros.call(SaveMap, '/vpr_node/save_map', SaveMap.Request(path=bad))
        assert not refused.success and refused.message, bad
    assert not any(outside.iterdir()) and not (node.tmp / 'escape').exists()

    _other_models_map(maps / 'other')
    refused = ros.call(LoadMap, '/vpr_node/load_map', LoadMap.Request(path='other'))
    assert not refused.success and 'model' in refused.message
    assert refused.keyframes == size  # the current map is kept
    node.diag(lambda v: int(v['service_errors_total']) == errors + 5
              and int(v['map_keyframes']) == size)

    loaded = ros.call(LoadMap, '/vpr_node/load_map', LoadMap.Request(path='saved/m1'))
    assert loaded.success and loaded.keyframes == size, loaded.message

    reloc = ros.call(Relocalize, '/vpr_node/relocalize', Relocalize.Request(camera='', top_k=2))
    assert not reloc.success and 'no keyframe' in reloc.message  # a loaded map starts afresh
    revisit = visit(node, 0, place(3), 'rgb8', 600)  # place 3: seen once, at t = 3 s, id 3
    assert best(revisit).match.id == 3
    reloc = ros.call(Relocalize, '/vpr_node/relocalize',
                     Relocalize.Request(camera='cam0/image', top_k=2))
    assert reloc.success, reloc.message
    assert len(reloc.candidates.candidates) == 2
    assert reloc.candidates.candidates[0].match.id == 3
    assert reloc.has_pose and reloc.pose.pose.pose.position.x == 3.0
    # Ids are never reused: the map was saved with `size` keyframes and one more was published
    # (the revisit); loading that older save again must not hand out the revisit's id again.
    revisit_id = revisit.query.id
    assert revisit_id == size
    again = ros.call(LoadMap, '/vpr_node/load_map', LoadMap.Request(path='saved/m1'))
    assert again.success and again.keyframes == size, again.message
    after = visit(node, 0, place(4), 'rgb8', 601)
    assert after.query.id > revisit_id
    # Hostile relocalisation requests are answered, never fatal.
    errors = int(settled(node)['service_errors_total'])
    for camera, top_k, why in (('cam a', 0, 'not a valid topic name'),
                               ('1abc', 0, 'not a valid topic name'),
                               ('//x', 0, 'not a valid topic name'),
                               ('', 2 ** 32 - 1, 'request top_k must be in [1, 1000]')):
        refused = ros.call(Relocalize, '/vpr_node/relocalize',
                           Relocalize.Request(camera=camera, top_k=top_k))
        assert not refused.success and why in refused.message, (camera, refused.message)
    node.diag(lambda v: int(v['service_errors_total']) == errors + 4)
    node.proc.assert_alive()


def _set(node, name: str, value: ParameterValue):
    request = SetParameters.Request(parameters=[Parameter(name=name, value=value)])
    return node.ros.call(SetParameters, '/vpr_node/set_parameters', request).results[0]


def test_live_and_configure_time_parameters(node):
    refused = _set(node, 'checkpoint', ParameterValue(
        type=ParameterType.PARAMETER_STRING, string_value='other.pth'))
    assert not refused.successful and 'configure' in refused.reason
    refused = _set(node, 'threshold_mode', ParameterValue(
        type=ParameterType.PARAMETER_STRING, string_value='bogus'))
    assert not refused.successful and 'threshold_mode' in refused.reason
    for bad in ([1.0, 1.0, 1.0, 0.1, 0.1], [1.0, 1.0, 1.0, 0.1, 0.1, float('nan')],
                [1.0, 1.0, 1.0, 0.1, 0.1, -1.0]):  # rclpy hands these over as array.array
        refused = _set(node, 'relocalization_covariance', ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=bad))
        assert not refused.successful and 'relocalization_covariance' in refused.reason, bad
    changed = _set(node, 'relocalization_covariance', ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[2.0] * 6))
    assert changed.successful, changed.reason
    changed = _set(node, 'threshold', ParameterValue(
        type=ParameterType.PARAMETER_DOUBLE, double_value=0.5))
    assert changed.successful, changed.reason
    msg = visit(node, 0, place(70), 'rgb8', 700)
    assert msg.candidates and msg.candidates[0].threshold == pytest.approx(0.5)
