"""The node driven by a lifecycle manager (autostart false): one process, phases in order.

Each phase reconfigures the same process through the lifecycle services and parameters: a failed
configure, a static prebuilt map, deactivate/cleanup, external keyframe selection, and a model
that makes NaN descriptors.
"""
from boq_ros.msg import LoopCandidate
from boq_ros.srv import Relocalize, SaveMap
from conftest import wait_until
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from nav_msgs.msg import Odometry
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_node_common import (
    ANSWER_TIMEOUT_S,
    START_TIMEOUT_S,
    THRESHOLD,
    NodeUnderTest,
    answer_for,
    base_params,
    checkpoint,
    place,
)

from boq_ros.bags import stamp_to_ns
from boq_ros.extractor import Extractor
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta
from boq_ros.preprocess import PreprocessConfig
from boq_ros.ros.convert import NO_ID, image_msg

S = 10**9


@pytest.fixture(scope='module')
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('lifecycle')
    maps = tmp / 'maps'
    good = checkpoint(tmp_path_factory)
    _prebuilt_map(good, maps / 'prebuilt')
    params = base_params(tmp / 'missing.pth', maps, autostart='false', threshold=THRESHOLD,
                         input_qos='reliable', diagnostics_period_s=0.2)
    n = NodeUnderTest(tmp, 'vpr_node', params=params)
    n.good, n.nan = good, checkpoint(tmp_path_factory, 'nan')
    n.camera = n.ros.publisher(Image, '/image', 100)
    n.keyframes = n.ros.publisher(Header, '/keyframes', 100)
    n.pose = n.ros.collect(PoseWithCovarianceStamped, '/relocalization_pose', 10)
    n.odom = n.ros.publisher(Odometry, '/odom', 100)
    n.tmp = tmp
    yield n
    assert n.close() == 0


def _prebuilt_map(ckpt, path) -> None:
    """Places 0-3 mapped in session 'mapping' with poses x = 10 i in frame 'map'."""
    config = PreprocessConfig('square', 64)
    extractor = Extractor.from_checkpoint(ckpt, device='cpu', preprocess=config)
    kmap = KeyframeMap(extractor.dim, model_id=extractor.model_id, preprocess=config.to_dict())
    metas = [KeyframeMeta(stamp_ns=i * S, session='mapping', camera='/map_cam', frame_id='cam',
                          pose=(10.0 * i, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), pose_frame='map')
             for i in range(4)]
    kmap.add(extractor.extract([place(i) for i in range(4)], 'rgb8'), metas)
    path.parent.mkdir(parents=True)
    kmap.save(path)


def _param(name: str, value) -> Parameter:
    if isinstance(value, bool):
        v = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, int):
        v = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    elif isinstance(value, float):
        v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    else:
        v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))
    return Parameter(name=name, value=v)


def set_params(node, **values) -> list:
    request = SetParameters.Request(parameters=[_param(k, v) for k, v in values.items()])
    return node.ros.call(SetParameters, '/vpr_node/set_parameters', request).results


def transition(node, transition_id: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition_id))
    return node.ros.call(ChangeState, '/vpr_node/change_state', request, timeout=120).success


def state(node) -> str:
    return node.ros.call(GetState, '/vpr_node/get_state', GetState.Request()).current_state.label


def frame(t: float, seed: int) -> Image:
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = int(t), 0
    return image_msg(place(seed), 'rgb8', header)


def activate(node) -> None:
    """Configure and activate; return once the test's endpoints matched the node's new ones.

    Configure creates the answer publishers anew, and a reliable, volatile message published
    before the test's subscription matched its publisher is lost: wait for each of them.
    """
    assert transition(node, Transition.TRANSITION_CONFIGURE), node.proc.log_text()[-2000:]
    assert state(node) == 'inactive'
    assert transition(node, Transition.TRANSITION_ACTIVATE)
    assert state(node) == 'active'
    node.ros.wait_for_subscribers(node.camera)
    for collector in (node.candidates, node.pose):
        node.ros.wait_for_publishers(collector)


def cleanup(node) -> None:
    """Clean up an inactive node; return once the test no longer matches its publishers.

    Until then a count of one publisher could still be the old one, not the next configure's.
    """
    assert transition(node, Transition.TRANSITION_CLEANUP) and state(node) == 'unconfigured'
    for collector, what in ((node.candidates, 'candidate'), (node.pose, 'pose')):
        wait_until(lambda c=collector: c.subscription.get_publisher_count() == 0, 20,
                   f'the {what} publisher to go')


def stop(node) -> None:
    assert transition(node, Transition.TRANSITION_DEACTIVATE) and state(node) == 'inactive'
    wait_until(lambda: node.camera.get_subscription_count() == 0, 20, 'unsubscribing')
    cleanup(node)


def totals(status: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in status.items() if k.endswith('_total')}


def test_failed_configure_leaves_node_unconfigured(node):
    wait_until(lambda: _has_state_service(node), START_TIMEOUT_S, 'the lifecycle services')
    assert state(node) == 'unconfigured'
    assert not transition(node, Transition.TRANSITION_CONFIGURE)  # missing checkpoint
    assert state(node) == 'unconfigured'
    status = node.diag(lambda v: 'missing.pth' in v['last_error'])
    assert status['state'] == 'unconfigured'


def _has_state_service(node) -> bool:
    names = [name for name, _ in node.ros.node.get_service_names_and_types()]
    return '/vpr_node/get_state' in names


def test_static_map_relocalises_without_growing(node):
    assert all(r.successful for r in set_params(node, checkpoint=node.good, mode='static',
                                                map_path='prebuilt'))
    activate(node)
    node.camera.publish(frame(1000, seed=2))
    msg = answer_for(node.candidates, 1000 * S)
    assert msg.query.id == NO_ID and msg.accepted  # static: the query never joins the map
    top = msg.candidates[0]
    assert (top.match.id, top.match.session, top.status) == (
        2, 'mapping', LoopCandidate.STATUS_APPEARANCE_ONLY)
    pose = node.pose.wait_for(1)[0]
    assert (pose.header.frame_id, pose.pose.pose.position.x) == ('map', 20.0)
    reloc = node.ros.call(Relocalize, '/vpr_node/relocalize', Relocalize.Request())
    assert reloc.success and reloc.has_pose and reloc.pose.pose.pose.position.x == 20.0
    assert node.diag(lambda v: v['keyframes_total'] == '1')['map_keyframes'] == '4'
    refused = set_params(node, mode='grow')[0]  # read at configure
    assert not refused.successful and 'configure' in refused.reason


def test_deactivate_and_cleanup(node):
    assert transition(node, Transition.TRANSITION_DEACTIVATE) and state(node) == 'inactive'
    wait_until(lambda: node.camera.get_subscription_count() == 0, 20, 'unsubscribing')
    saved = node.ros.call(SaveMap, '/vpr_node/save_map', SaveMap.Request(path='copy'))
    assert saved.success and saved.keyframes == 4  # services stay up while inactive
    cleanup(node)


def test_external_keyframes_select_named_frames(node):
    assert all(r.successful for r in set_params(node, mode='grow', map_path='',
                                                keyframe_mode='external'))
    activate(node)
    node.ros.wait_for_subscribers(node.keyframes)
    before = totals(node.snapshot())
    for t in (1, 2, 3):
        node.camera.publish(frame(t, seed=t))
    node.diag(lambda v: int(v['frames_total']) == before['frames_total'] + 3)
    for t in (2, 3):  # the SLAM system names its keyframes after it saw the images
        header = Header()
        header.stamp.sec = t
        node.keyframes.publish(header)
        answer_for(node.candidates, t * S)
    status = node.diag(lambda v: int(v['keyframes_total']) == before['keyframes_total'] + 2)
    assert status['keyframe_stamps_total'] == '2'
    assert [m.query.stamp.sec for m in node.candidates.messages[-2:]] == [2, 3]
    stop(node)


def _map_rows(kmap: KeyframeMap, ids) -> list:
    return [(m.id, m.stamp_ns, m.session, m.camera, m.pose, m.pose_frame)
            for m in (kmap.meta(i) for i in ids)]


def test_both_mode_grows_a_new_session_over_the_prebuilt_map(node):
    maps = node.tmp / 'maps'
    prebuilt = KeyframeMap.load(maps / 'prebuilt')
    assert all(r.successful for r in set_params(
        node, mode='both', map_path='prebuilt', keyframe_mode='every_frame', session='mapping',
        exclusion_seconds=5.0, exclusion_keyframes=1, top_k=10))
    # The new session must be new: refused at configure, not keyframe by keyframe.
    assert not transition(node, Transition.TRANSITION_CONFIGURE)
    assert state(node) == 'unconfigured'
    node.diag(lambda v: "session 'mapping' is already in the map" in v['last_error'])
    assert set_params(node, session='live')[0].successful
    activate(node)

    def visit(t: int, seed: int):
        node.camera.publish(frame(t, seed))
        return answer_for(node.candidates, t * S)

    # (t, place): place 2 of the prebuilt map, two new places, place 10 within the window,
    # then both new places again outside it.
    route = [(2000, 2), (2001, 10), (2002, 11), (2004, 10), (2010, 10), (2011, 11)]
    answers = [visit(t, p) for t, p in route]
    assert [a.query.id for a in answers] == list(range(4, 10))  # the session joins the map
    assert {a.query.session for a in answers} == {'live'}
    for a, (t, _) in zip(answers, route):
        for c in a.candidates:  # the session's own recent past never; the prebuilt map always
            assert c.match.session == 'mapping' or (
                c.match.session == 'live' and stamp_to_ns(c.match.stamp) <= (t - 5) * S
                and c.match.id < a.query.id - 1), (t, c.match)
        assert {c.match.id for c in a.candidates} >= {0, 1, 2, 3}
    top = answers[0].candidates[0]
    assert answers[0].accepted and (top.match.id, top.match.session) == (2, 'mapping')
    assert not answers[3].accepted  # place 10 again after 3 s: its first visit is excluded
    for revisit, first in ((answers[4], answers[1]), (answers[5], answers[2])):
        top = revisit.candidates[0]
        assert revisit.accepted and top.status == LoopCandidate.STATUS_APPEARANCE_ONLY
        assert (top.match.id, top.match.session) == (first.query.id, 'live')

    saved = node.ros.call(SaveMap, '/vpr_node/save_map', SaveMap.Request(path='both_out'))
    assert saved.success and saved.keyframes == 10, saved.message
    stop(node)
    grown, on_disk = KeyframeMap.load(maps / 'both_out'), KeyframeMap.load(maps / 'prebuilt')
    for kmap in (grown, on_disk):  # the prebuilt keyframes, in memory and on disk, unchanged
        assert _map_rows(kmap, range(4)) == _map_rows(prebuilt, range(4))
        assert all(np.array_equal(kmap.descriptor(i), prebuilt.descriptor(i)) for i in range(4))
    assert len(on_disk) == 4 and on_disk.map_id == prebuilt.map_id


def _odometry(t: int, x: float) -> Odometry:
    odom = Odometry()
    odom.header.frame_id, odom.header.stamp.sec = 'odom', t
    odom.pose.pose.position.x, odom.pose.pose.orientation.w = x, 1.0
    return odom


def test_distance_keyframes_follow_odometry(node):
    assert all(r.successful for r in set_params(
        node, mode='grow', map_path='', keyframe_mode='distance', keyframe_distance_m=1.0,
        keyframe_angle_rad=1.0, odometry_topic='bad odom', pose_tolerance_s=0.1,
        input_qos_depth=100, queue_size=10))  # the frames are sent in one burst
    assert not transition(node, Transition.TRANSITION_CONFIGURE)  # not at activate
    node.diag(lambda v: "odometry_topic: 'bad odom' is not a valid topic" in v['last_error'])
    assert set_params(node, odometry_topic='odom')[0].successful
    activate(node)
    node.ros.wait_for_subscribers(node.odom)
    track = [(3000 + i, 0.4 * i) for i in range(8)]  # 0.4 m per second, straight ahead

    # The odometry subscription is best effort: resend the track until one round arrived whole.
    def odometry_round() -> bool:
        before = int(node.snapshot()['odometry_total'])
        for t, x in track:
            node.odom.publish(_odometry(t, x))
        try:
            node.diag(lambda v: int(v['odometry_total']) >= before + len(track), timeout=3)
        except AssertionError:
            return False
        return True

    wait_until(odometry_round, 60, 'a complete round of odometry')
    before = totals(node.snapshot())
    answered_before = len(node.candidates.messages)  # every earlier answer was waited for
    for t, _ in track:
        node.camera.publish(frame(t, seed=t))
    node.camera.publish(frame(3100, seed=1))  # no odometry near this stamp
    # The node counts a frame before judging it and a keyframe before publishing its answer:
    # wait for the error, and for the answers themselves on their own topic.
    status = node.diag(lambda v: int(v['frames_total']) == before['frames_total'] + 9
                       and int(v['keyframes_total']) == before['keyframes_total'] + 3
                       and int(v['input_errors_total']) == before['input_errors_total'] + 1)
    answers = node.candidates.wait_for(answered_before + 3, timeout=ANSWER_TIMEOUT_S)
    # x = 0, 1.2, 2.4 m: the first frame, then one after each metre of travel
    assert [m.query.stamp.sec for m in answers[answered_before:]] == [3000, 3003, 3006]
    assert status['map_keyframes'] == '3'
    assert 'no pose within pose_tolerance_s' in status['last_error']
    stop(node)


def test_one_outlier_odometry_stamp_never_poisons_distance_keyframes(node):
    assert all(r.successful for r in set_params(
        node, odometry_qos='reliable', time_jump_s=10.0))  # nothing lost: no rounds needed
    activate(node)
    node.ros.wait_for_subscribers(node.odom)
    before = totals(node.snapshot())
    track = [(4000 + i, 0.4 * i) for i in range(8)]
    for t, x in track[:3]:
        node.odom.publish(_odometry(t, x))
    node.odom.publish(_odometry(4000 + 10**6, 99.0))  # one message from a broken clock
    for t, x in track[3:]:
        node.odom.publish(_odometry(t, x))
    status = node.diag(lambda v: int(v['odometry_total']) == before['odometry_total'] + 9)
    assert int(status['input_errors_total']) == before['input_errors_total'] + 1
    assert 'is far from the stream' in status['last_error']
    answered_before = len(node.candidates.messages)
    for t, _ in track:
        node.camera.publish(frame(t, seed=t))
    answers = node.candidates.wait_for(answered_before + 3, timeout=ANSWER_TIMEOUT_S)
    assert [m.query.stamp.sec for m in answers[answered_before:]] == [4000, 4003, 4006]
    stop(node)


def test_nan_descriptors_are_counted_and_harmless(node):
    assert all(r.successful for r in set_params(node, checkpoint=node.nan,
                                                keyframe_mode='every_frame', odometry_topic=''))
    activate(node)
    assert node.snapshot()['descriptor_errors_total'] == '0'
    node.camera.publish(frame(5, seed=5))
    status = node.diag(lambda v: v['descriptor_errors_total'] == '1')
    assert status['map_keyframes'] == '0' and 'non-finite' in status['last_error']
    node.camera.publish(frame(6, seed=6))
    node.diag(lambda v: v['descriptor_errors_total'] == '2')
    node.proc.assert_alive()
