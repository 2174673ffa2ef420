"""The node on a Milvus store over real DDS: its keyframes go to the server; the server killed
mid-stream and started again loses none of them, and the node answers every frame meanwhile.
"""
import time

import pytest
from sensor_msgs.msg import Image
from test_node import answer, best, publish, stamp_ns
from test_node_common import (
    START_TIMEOUT_S,
    THRESHOLD,
    NodeUnderTest,
    base_params,
    checkpoint,
    place,
)

from boq_ros.demo import write_params_file
from boq_ros.keyframe_map import KeyframeMeta
from boq_ros.keyframe_map.milvus_local import LocalMilvus, available
from boq_ros.keyframe_map.uri import open_store

pytest.importorskip('pymilvus', reason='pymilvus is not installed')
SESSION = 'milvus_run'


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    reason = available()
    if reason:
        pytest.skip(reason)
    with LocalMilvus(tmp_path_factory.mktemp('milvus')) as local:
        yield local


@pytest.fixture(scope='module')
def node(tmp_path_factory, server):
    tmp = tmp_path_factory.mktemp('milvus_node')
    values = base_params(
        checkpoint(tmp_path_factory), tmp / 'maps', image_topics=['cam0/image'],
        input_qos='reliable', queue_size=10, threshold=THRESHOLD, exclusion_seconds=10.0,
        exclusion_keyframes=3, top_k=3, session=SESSION, robot_id='r1',
        diagnostics_period_s=0.2, map_path=f'{server.uri}/robot_map?timeout_s=2')
    n = NodeUnderTest(tmp, 'vpr_node', write_params_file(tmp / 'vpr.yaml', values))
    n.cams = {0: n.ros.publisher(Image, '/cam0/image', 100)}
    n.ros.wait_for_subscribers(n.cams[0], timeout=START_TIMEOUT_S)
    n.ros.wait_for_publishers(n.candidates)
    yield n
    assert n.close() == 0


def visit(node, seed: int, t: float):
    publish(node, 0, place(seed), 'rgb8', t)
    return answer(node, t)


def test_a_server_restart_loses_no_keyframe_and_the_node_answers_throughout(node, server):
    first = [visit(node, 100 + i, 1.0 + i) for i in range(4)]
    assert all(msg.query.id >= 0 for msg in first)
    camera = first[0].query.camera
    node.diag(lambda v: v.get('map_pending_keyframes') == '0'
              and v.get('map_keyframes') == '4')
    server.kill()
    during = [visit(node, 200 + i, 5.0 + i) for i in range(4)]  # every frame still answered
    assert all(msg.query.id >= 0 for msg in during)
    node.diag(lambda v: int(v.get('map_failed_writes', 0)) >= 1
              and v.get('map_pending_keyframes') == '4' and v.get('map_reachable') == 'False')
    server.start()
    node.diag(lambda v: v.get('map_pending_keyframes') == '0', timeout=90)
    store = open_store(f'{server.uri}/robot_map?consistency=strong')
    try:
        metas = [KeyframeMeta(stamp_ns=stamp_ns(m.query.stamp), session=SESSION, camera=camera)
                 for m in first + during]
        ids = store.find(metas)
        assert sorted(ids.tolist()) == sorted(m.query.id for m in first + during)
        assert [store.meta(i).seq for i in ids] == list(range(8))
        assert store.sessions() == {SESSION: 8}
    finally:
        store.close()
    # a revisit after the restart finds a keyframe that waited out the outage
    revisit = None
    deadline = time.monotonic() + 60
    t = 30.0
    while revisit is None or not revisit.accepted:
        assert time.monotonic() < deadline, 'no accepted revisit'
        revisit = visit(node, 201, t)
        t += 1.0
    assert best(revisit).match.id == during[1].query.id
