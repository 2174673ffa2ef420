"""Message conversion and map-path confinement, without DDS."""
import numpy as np
import pytest

from boq_ros.bags import stamp_to_ns
from boq_ros.detector import Candidate, Detection, Status
from boq_ros.keyframe_map import KeyframeMeta
from boq_ros.ros.convert import (
    NO_ID,
    candidate_array,
    loop_marker,
    ns_to_stamp,
    relocalization_pose,
    side_by_side,
    thumbnail,
)
from boq_ros.ros.map_paths import ForbiddenMapPath, map_root, resolve_map_path

POSE = (1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0)


def test_stamps_round_trip():
    for ns in (0, 1, 10**9 - 1, 1_795_698_000 * 10**9 + 123):
        assert stamp_to_ns(ns_to_stamp(ns)) == ns


def test_candidate_array_carries_the_decision():
    query = KeyframeMeta(stamp_ns=30 * 10**9 + 5, session='s', robot_id='r', camera='/c',
                         frame_id='f')  # not in the map (static mode)
    match = KeyframeMeta(stamp_ns=10**9, session='m', camera='/c', id=7, seq=3, pose=POSE,
                         pose_frame='map')
    detection = Detection(query=query, threshold=0.7, accepted=True, candidates=[
        Candidate(7, match, 0.9, 0, 0.1, Status.APPEARANCE_ONLY),
        Candidate(8, match, 0.6, 1, 0.0, Status.REJECTED, 'threshold')])
    msg = candidate_array(detection, 'model@1', 'map1')
    assert msg.query.id == NO_ID and (msg.query.stamp.sec, msg.query.stamp.nanosec) == (30, 5)
    assert (msg.header.frame_id, msg.model, msg.map_id, msg.accepted) == ('f', 'model@1',
                                                                          'map1', True)
    assert [c.match.id for c in msg.candidates] == [7, 7]
    assert [c.status for c in msg.candidates] == [0, 2]
    assert msg.candidates[0].threshold == pytest.approx(0.7)

    pose = relocalization_pose(query, match, [1, 2, 3, 4, 5, 6])
    assert pose.header.frame_id == 'map' and pose.header.stamp.sec == 30
    assert pose.pose.pose.position.z == 3.0 and pose.pose.covariance[35] == 6.0
    assert relocalization_pose(match, query, [1] * 6) is None  # the match has no pose
    assert loop_marker(query, match, 1) is None  # the query has no pose
    marker = loop_marker(match, match, 1)
    assert [p.x for p in marker.points] == [1.0, 1.0]


def test_debug_view():
    mono16 = np.full((40, 80), 65535, np.uint16)
    small = thumbnail(mono16, 'mono16', 20)
    assert small.shape == (20, 40, 3) and small.dtype == np.uint8 and small.min() == 255
    view = side_by_side(small, None)
    assert view.shape == (20, 80, 3) and view[0, 79, 0] == 96


def test_map_paths_stay_inside(tmp_path):
    root = map_root(tmp_path / 'maps')
    (tmp_path / 'maps').mkdir()
    assert resolve_map_path(root, 'a/b') == root / 'a' / 'b'
    assert resolve_map_path(root, str(root / 'c')) == root / 'c'
    (tmp_path / 'out').mkdir()
    (root / 'link').symlink_to(tmp_path / 'out')
    for bad in ('..', '../x', str(tmp_path / 'x'), 'link/m', '.', 'a/../..'):
        with pytest.raises(ForbiddenMapPath, match='outside the map directory'):
            resolve_map_path(root, bad)
    with pytest.raises(ValueError, match='empty map path'):
        resolve_map_path(root, '')
    with pytest.raises(ValueError, match='map_directory is empty'):
        map_root('')
