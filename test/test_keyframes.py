import math

import pytest

from boq_ros.keyframes import HISTORY_S, KeyframeError, KeyframePolicy, KeyframeSelector

MS = 1_000_000
S = 1000 * MS


def yaw_q(yaw):
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def test_every_frame_accepts_all():
    selector = KeyframeSelector()
    assert all(selector.offer(k * MS) for k in range(5))
    assert selector.stats == {'offered': 5, 'accepted': 5, 'no_pose': 0}


def test_interval_is_per_camera():
    selector = KeyframeSelector(KeyframePolicy('interval', interval_s=1.0))
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
    selector = KeyframeSelector(KeyframePolicy('interval', interval_s=1.0))
    assert selector.offer(100 * S)
    assert not selector.offer(100 * S - 10 * MS)  # small reordering: not a new keyframe
    assert selector.offer(5 * S)  # bag replay looped


def test_distance_and_angle_thresholds():
    selector = KeyframeSelector(KeyframePolicy('distance', distance_m=1.0, angle_rad=0.2))
    for k in range(40):  # 0.25 m per 100 ms along x; turning 0.3 rad at k >= 30
        selector.update_pose(k * 100 * MS, (0.25 * min(k, 20), 0, 0), yaw_q(0.3 if k >= 30 else 0))
    taken = [k for k in range(40) if selector.offer(k * 100 * MS + 20 * MS)]
    assert taken == [0, 4, 8, 12, 16, 20, 30]
    assert selector.stats['no_pose'] == 0


def test_distance_per_camera_and_missing_poses():
    selector = KeyframeSelector(KeyframePolicy('distance', distance_m=1.0, pose_tolerance_s=0.05))
    assert not selector.offer(0)  # no pose yet
    selector.update_pose(1 * S, (0, 0, 0))  # GNSS-like: no orientation
    selector.update_pose(0, (5, 0, 0))  # out of order
    assert not selector.offer(500 * MS)  # nearest pose 0.5 s away: refused
    assert selector.offer(S + 40 * MS, 'a')
    assert selector.offer(S, 'b')
    assert not selector.offer(S + 10 * MS, 'a')
    assert selector.offer(30 * MS, 'a')  # nearest pose is (5, 0, 0): 5 m from a's keyframe
    assert selector.stats == {'offered': 6, 'accepted': 3, 'no_pose': 2}


def test_old_poses_are_forgotten():
    selector = KeyframeSelector(KeyframePolicy('distance'))
    selector.update_pose(0, (0, 0, 0))
    selector.update_pose(int(HISTORY_S * S) + S, (0, 0, 0))
    assert not selector.offer(0)
    assert selector.stats['no_pose'] == 1


def test_external_keyframes_match_once_per_camera():
    selector = KeyframeSelector(KeyframePolicy('external', external_tolerance_s=0.01))
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
    ({'mode': 'sometimes'}, "unknown keyframe mode 'sometimes'"),
    ({'interval_s': 0.0}, 'interval_s must be positive'),
    ({'interval_s': math.inf}, 'interval_s must be positive and finite'),
    ({'distance_m': -1.0}, 'distance_m must be positive'),
    ({'angle_rad': math.nan}, 'angle_rad must be positive'),
    ({'distance_m': math.inf, 'angle_rad': math.inf}, 'cannot both be infinite'),
    ({'pose_tolerance_s': -0.1}, 'pose_tolerance_s must be finite and >= 0'),
])
def test_policy_validation(kwargs, message):
    with pytest.raises(KeyframeError, match=message):
        KeyframePolicy(**kwargs)


def test_bad_poses_are_refused():
    selector = KeyframeSelector(KeyframePolicy('distance'))
    with pytest.raises(KeyframeError, match='position must be 3 finite values'):
        selector.update_pose(0, (0, math.nan, 0))
    with pytest.raises(KeyframeError, match='quaternion must be 4 finite values'):
        selector.update_pose(0, (0, 0, 0), (0, 0, 0, 0))
