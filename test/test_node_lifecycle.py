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
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_node_common import (
    START_TIMEOUT_S,
    THRESHOLD,
    NodeUnderTest,
    answer_for,
    base_params,
    checkpoint,
    place,
)

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
    assert transition(node, Transition.TRANSITION_CONFIGURE), node.proc.log_text()[-2000:]
    assert state(node) == 'inactive'
    assert transition(node, Transition.TRANSITION_ACTIVATE)
    assert state(node) == 'active'
    node.ros.wait_for_subscribers(node.camera)


def stop(node) -> None:
    assert transition(node, Transition.TRANSITION_DEACTIVATE) and state(node) == 'inactive'
    wait_until(lambda: node.camera.get_subscription_count() == 0, 20, 'unsubscribing')
    assert transition(node, Transition.TRANSITION_CLEANUP) and state(node) == 'unconfigured'
    wait_until(lambda: node.candidates.subscription.get_publisher_count() == 0, 20,
               'the candidate publisher to go')


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
    node.ros.wait_for_publishers(node.candidates)
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
    assert transition(node, Transition.TRANSITION_CLEANUP) and state(node) == 'unconfigured'
    wait_until(lambda: node.candidates.subscription.get_publisher_count() == 0, 20,
               'the candidate publisher to go')


def test_external_keyframes_select_named_frames(node):
    assert all(r.successful for r in set_params(node, mode='grow', map_path='',
                                                keyframe_mode='external'))
    activate(node)
    node.ros.wait_for_subscribers(node.keyframes)
    before = {k: int(v) for k, v in node.diag().items() if k.endswith('_total')}
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


def test_nan_descriptors_are_counted_and_harmless(node):
    assert all(r.successful for r in set_params(node, checkpoint=node.nan,
                                                keyframe_mode='every_frame'))
    activate(node)
    assert node.diag()['descriptor_errors_total'] == '0'
    node.camera.publish(frame(5, seed=5))
    status = node.diag(lambda v: v['descriptor_errors_total'] == '1')
    assert status['map_keyframes'] == '0' and 'non-finite' in status['last_error']
    node.camera.publish(frame(6, seed=6))
    node.diag(lambda v: v['descriptor_errors_total'] == '2')
    node.proc.assert_alive()
