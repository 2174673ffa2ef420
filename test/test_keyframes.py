"""Keyframe selection, the one pose lookup policy, and the pipeline's selection stage."""
import math

import numpy as np
import pytest

from boq_ros.keyframes import HISTORY_S, KeyframeError, KeyframePolicy, KeyframeSelector
from boq_ros.poses import PoseBuffer, PoseError

MS = 1_000_000
S = 1000 * MS
NAN4 = (math.nan,) * 4


def yaw_q(yaw):
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def pose(x, q=None):
    return (float(x), 0.0, 0.0, *(q if q is not None else NAN4))


def test_every_frame_accepts_all():
    selector = KeyframeSelector()
    assert all(selector.offer(k * MS) for k in range(5))
    assert selector.stats == {'offered': 5, 'accepted': 5, 'no_pose': 0}


def test_interval_is_per_camera():
    selector = KeyframeSelector(KeyframePolicy('interval', keyframe_interval_s=1.0))
    decisions = []
    for k in range(12):  # two cameras at 4 Hz, the right one 100 ms late
        stamp = k * 250 * MS
        right = selector.offer(stamp + 100 * MS, 'right')
        decisions.append((selector.offer(stamp, 'left'), right))
    accepted = [k for k, (left, _) in enumerate(decisions) if left]
    assert accepted == [0, 4, 8]
    assert [k for k, (_, right) in enumerate(decisions) if right] == [0, 4, 8]
    assert selector.stats['accepted'] == 6 and selector.stats['offered'] == 24


def test_interval_accepts_after_a_clock_reset():
    selector = KeyframeSelector(KeyframePolicy('interval', keyframe_interval_s=1.0))
    assert selector.offer(100 * S)
    assert not selector.offer(100 * S - 10 * MS)  # small reordering: not a new keyframe
    assert selector.offer(5 * S)  # bag replay looped


def test_distance_and_angle_thresholds():
    selector = KeyframeSelector(KeyframePolicy('distance', keyframe_distance_m=1.0,
                                               keyframe_angle_rad=0.2))
    # 0.25 m per frame along x until frame 20; then turning 0.3 rad at frame 30
    taken = [k for k in range(40)
             if selector.offer(k * 100 * MS, 'cam',
                               pose(0.25 * min(k, 20), yaw_q(0.3 if k >= 30 else 0)))]
    assert taken == [0, 4, 8, 12, 16, 20, 30]
    assert selector.stats['no_pose'] == 0


def test_distance_is_per_camera_and_needs_a_pose():
    selector = KeyframeSelector(KeyframePolicy('distance', keyframe_distance_m=1.0))
    assert not selector.offer(0, 'a')  # no pose
    assert selector.offer(S, 'a', pose(0))  # GNSS-like: no orientation
    assert selector.offer(S, 'b', pose(0))
    assert not selector.offer(2 * S, 'a', pose(0.5))
    assert selector.offer(3 * S, 'a', pose(5))
    assert selector.stats == {'offered': 5, 'accepted': 3, 'no_pose': 1}


def test_external_keyframes_match_once_per_camera():
    selector = KeyframeSelector(KeyframePolicy('external', keyframe_stamp_tolerance_s=0.01))
    selector.add_external(S)
    selector.add_external(2 * S)
    assert not selector.offer(S - 20 * MS, 'cam')
    assert selector.offer(S + 5 * MS, 'cam')
    assert not selector.offer(S + 8 * MS, 'cam')  # the stamp is taken by the previous frame
    assert selector.offer(S + 8 * MS, 'other')  # another camera gets its own keyframe
    assert not selector.offer(int(1.5 * S), 'cam')
    assert selector.offer(2 * S, 'cam')
    assert selector.stats == {'offered': 6, 'accepted': 3, 'no_pose': 0}


@pytest.mark.parametrize('kwargs, message', [
    ({'keyframe_mode': 'sometimes'}, "keyframe_mode must be one of 'every_frame'"),
    ({'keyframe_interval_s': 0.0}, r'keyframe_interval_s must be in \(0, 1e\+06\]'),
    ({'keyframe_interval_s': math.inf}, 'keyframe_interval_s must be in'),
    ({'keyframe_distance_m': -1.0}, 'keyframe_distance_m must be in'),
    ({'keyframe_angle_rad': math.nan}, 'keyframe_angle_rad must be a number'),
    ({'pose_tolerance_s': -0.1}, r'pose_tolerance_s must be in \[0, 10\]'),
    ({'keyframe_wait_frames': 1.5}, 'keyframe_wait_frames must be an integer'),
])
def test_policy_validation(kwargs, message):
    with pytest.raises(KeyframeError, match=message):
        KeyframePolicy(**kwargs)


# -- the pose lookup policy -------------------------------------------------------------------
def test_pose_is_interpolated_between_the_poses_around_the_stamp():
    poses = PoseBuffer(tolerance_s=0.1)
    poses.add(1 * S, (0, 0, 0), yaw_q(0.0))
    poses.add(S + 100 * MS, (1, 0, 0), yaw_q(0.2))
    x, y, z, *q = poses.lookup(S + 25 * MS)
    assert (x, y, z) == pytest.approx((0.25, 0, 0))
    np.testing.assert_allclose(q, yaw_q(0.05), atol=1e-12)  # slerp
    assert poses.lookup(S) == pose(0, yaw_q(0.0))  # exactly on a pose


def test_pose_lookup_falls_back_to_the_nearer_pose_within_the_tolerance():
    poses = PoseBuffer(tolerance_s=0.05)
    poses.add(1 * S, (2, 0, 0))  # out of order, and without orientation
    poses.add(0, (5, 0, 0))
    assert poses.lookup(S + 40 * MS) == pose(2)  # only the pose before is near enough
    assert poses.lookup(30 * MS) == pose(5)
    assert poses.lookup(500 * MS) is None  # both 0.5 s away
    assert poses.lookup(2 * S) is None


def test_pose_decidable_only_when_no_later_pose_can_change_it():
    poses = PoseBuffer(tolerance_s=0.1)
    assert not poses.decidable(S)  # before the first pose: it may be on its way
    poses.add(S, (0, 0, 0))
    assert poses.decidable(S) and poses.decidable(S - 1)
    assert not poses.decidable(S + 50 * MS)  # a pose just after the image may still come
    assert poses.decidable(S + 150 * MS)  # the stream is over a tolerance behind: stopped


def test_old_poses_are_forgotten_and_bad_ones_refused():
    poses = PoseBuffer(tolerance_s=0.1, history_s=HISTORY_S)
    poses.add(0, (0, 0, 0))
    poses.add(int(HISTORY_S * S) + S, (0, 0, 0))
    assert poses.lookup(0) is None and len(poses) == 1
    with pytest.raises(PoseError, match='position must be 3 finite values'):
        poses.add(0, (0, math.nan, 0))
    with pytest.raises(PoseError, match='quaternion must be 4 finite values'):
        poses.add(0, (0, 0, 0), (0, 0, 0, 0))
    assert len(poses) == 1
