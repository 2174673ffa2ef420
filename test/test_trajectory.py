import math

import numpy as np
import pytest

from boq_ros.bags import (
    make_image_msg,
    make_navsatfix_msg,
    make_odometry_msg,
    make_pose_msg,
    make_tf_msg,
    open_bag,
    write_bag,
)
from boq_ros.trajectory import POSE_TYPES, Trajectory, TrajectoryError, pose_topics, slerp

S = 1_000_000_000


def yaw_q(yaw):
    return [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]


def test_interpolation_matches_hand_computed_values():
    trajectory = Trajectory(np.array([0, S, 2 * S]),
                            np.array([[0, 0, 0], [2, 0, 0], [2, 4, 0]], float),
                            np.array([yaw_q(0), yaw_q(math.pi / 2), yaw_q(math.pi / 2)]))
    positions, orientations, valid = trajectory.interpolate(
        np.array([S // 2, S + S // 4, 2 * S, 0, -1, 2 * S + 1]))
    assert valid.tolist() == [True, True, True, True, False, False]
    np.testing.assert_allclose(positions[:4], [[1, 0, 0], [2, 1, 0], [2, 4, 0], [0, 0, 0]])
    np.testing.assert_allclose(orientations[0], yaw_q(math.pi / 4))
    np.testing.assert_allclose(orientations[1], yaw_q(math.pi / 2))
    assert np.isnan(positions[4:]).all() and np.isnan(orientations[4:]).all()
    assert trajectory.path_length() == pytest.approx(6.0)
    assert trajectory.duration_s == 2.0 and len(trajectory) == 3


def test_gaps_make_stamps_invalid_unless_unlimited():
    trajectory = Trajectory(np.array([0, S, 5 * S]), np.zeros((3, 3)))
    _, orientations, valid = trajectory.interpolate(np.array([S // 2, 3 * S]), max_gap_s=2.0)
    assert orientations is None and valid.tolist() == [True, False]
    assert trajectory.interpolate(3 * S, max_gap_s=None)[2].tolist() == [True]


def test_single_pose_is_valid_only_at_its_stamp():
    trajectory = Trajectory(np.array([7]), np.ones((1, 3)), np.array([yaw_q(1.0)]))
    positions, _, valid = trajectory.interpolate(np.array([7, 8]))
    assert valid.tolist() == [True, False]
    np.testing.assert_allclose(positions[0], [1, 1, 1])


def test_slerp_takes_the_short_way():
    q = slerp(np.array(yaw_q(0.0)), -np.array(yaw_q(0.2)), np.array(0.5))
    assert abs(abs(np.dot(q, yaw_q(0.1))) - 1) < 1e-12


@pytest.mark.parametrize('args, message', [
    ((np.array([], np.int64), np.zeros((0, 3))), 'empty'),
    ((np.array([0, 2, 1]), np.zeros((3, 3))), 'index 2 \\(1\\) follows 2'),
    ((np.array([0.0, 1.0]), np.zeros((2, 3))), 'integer nanoseconds'),
    ((np.array([0, 1]), np.zeros((2, 2))), 'positions must be \\[2, 3\\]'),
    ((np.array([0, 1]), np.zeros((2, 3)), np.zeros((2, 4))), 'non-zero quaternions'),
    ((np.array([0, 1]), np.full((2, 3), np.nan)), 'finite'),
])
def test_constructor_refusals(args, message):
    with pytest.raises(TrajectoryError, match=message):
        Trajectory(*args)


T0 = 1_700_000_000 * S


def test_pose_topics_from_bag(tmp_path):
    path = tmp_path / 'bag'
    with write_bag(path) as bag:
        for k in (2, 0, 1):  # recorded out of order: sorted by header stamp
            stamp = T0 + k * S // 10
            bag.write('/odom', 'nav_msgs/msg/Odometry',
                      make_odometry_msg(stamp, (k, 0, 0), yaw_q(0.1 * k)), T0 + k)
            bag.write('/odom', 'nav_msgs/msg/Odometry',
                      make_odometry_msg(stamp, (9, 9, 9), yaw_q(0), child_frame_id='other'),
                      T0 + k)
            bag.write('/pose', 'geometry_msgs/msg/PoseStamped',
                      make_pose_msg(stamp, (0, k, 0), yaw_q(0)), T0 + k)
            bag.write('/pose_cov', 'geometry_msgs/msg/PoseWithCovarianceStamped',
                      make_pose_msg(stamp, (0, 0, k), yaw_q(0), covariance=np.zeros(36)), T0 + k)
            bag.write('/tf', 'tf2_msgs/msg/TFMessage',
                      make_tf_msg(stamp, 'odom', 'base_link', (k, k, 0), yaw_q(0)), T0 + k)
        bag.write('/fix', 'sensor_msgs/msg/NavSatFix',
                  make_navsatfix_msg(T0, 48.0, 11.0, 500.0), T0)
    with open_bag(path) as bag:
        odom = Trajectory.from_bag(bag, '/odom', child_frame='base_link')
        pose = Trajectory.from_bag(bag, '/pose')
        pose_cov = Trajectory.from_bag(bag, '/pose_cov')
        tf = Trajectory.from_bag(bag, '/tf', child_frame='/base_link')
        with pytest.raises(TrajectoryError, match='carries TF: pass child_frame'):
            Trajectory.from_bag(bag, '/tf')
        with pytest.raises(TrajectoryError, match="no usable poses with child frame 'cam'"):
            Trajectory.from_bag(bag, '/tf', child_frame='cam')
        with pytest.raises(TrajectoryError, match="'/nope' is not in bag"):
            Trajectory.from_bag(bag, '/nope')
    assert odom.stamps_ns.tolist() == [T0, T0 + S // 10, T0 + 2 * S // 10]
    np.testing.assert_allclose(odom.positions[:, 0], [0, 1, 2])
    np.testing.assert_allclose(odom.orientations[2], yaw_q(0.2))
    np.testing.assert_allclose(pose.positions[:, 1], [0, 1, 2])
    np.testing.assert_allclose(pose_cov.positions[:, 2], [0, 1, 2])
    np.testing.assert_allclose(tf.positions[:, :2], [[0, 0], [1, 1], [2, 2]])
    assert len(Trajectory.from_bag(path, '/fix')) == 1  # a path works too


def test_unknown_message_type_is_refused(tmp_path):
    path = tmp_path / 'bag'
    with write_bag(path) as bag:
        bag.write('/cam', 'sensor_msgs/msg/Image',
                  make_image_msg(np.zeros((2, 2), np.uint8), 'mono8', T0, 'c'), T0)
    with pytest.raises(TrajectoryError, match="'/cam' has type sensor_msgs/msg/Image; poses"):
        Trajectory.from_bag(path, '/cam')


def test_navsatfix_becomes_local_enu_metres(tmp_path):
    lat, lon, alt = 48.0, 11.0, 500.0
    d = 0.001
    path = tmp_path / 'bag'
    with write_bag(path) as bag:
        fixes = [(lat, lon, alt, 0), (lat + d, lon, alt, 0), (lat, lon + d, alt + 10, 0),
                 (80.0, 80.0, 0.0, -1)]  # status -1: no fix, skipped
        for k, (la, lo, al, status) in enumerate(fixes):
            bag.write('/fix', 'sensor_msgs/msg/NavSatFix',
                      make_navsatfix_msg(T0 + k * S, la, lo, al, status=status), T0 + k * S)
    trajectory = Trajectory.from_bag(path, '/fix')
    assert trajectory.orientations is None and len(trajectory) == 3
    a, e2 = 6378137.0, 6.69437999014e-3
    phi = math.radians(lat)
    meridian = a * (1 - e2) / (1 - e2 * math.sin(phi) ** 2) ** 1.5
    normal = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    north = meridian * math.radians(d)
    east = normal * math.cos(phi) * math.radians(d)
    np.testing.assert_allclose(trajectory.positions[0], [0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(trajectory.positions[1], [0, north, 0], atol=0.01)
    np.testing.assert_allclose(trajectory.positions[2], [east, 0, 10], atol=0.01)


def test_tum_round_trip_keeps_nanoseconds(tmp_path):
    path = tmp_path / 'traj.txt'
    path.write_text('# timestamp tx ty tz qx qy qz qw\n'
                    '1700000000.123456789 1 2 3 0 0 0 1\n'
                    '\n'
                    '1700000000.223456789 4 5 6 0 0 0.7071067811865476 0.7071067811865476\n')
    trajectory = Trajectory.from_tum(path)
    assert trajectory.stamps_ns.tolist() == [1700000000123456789, 1700000000223456789]
    np.testing.assert_allclose(trajectory.positions[1], [4, 5, 6])
    trajectory.to_tum(tmp_path / 'out.txt')
    again = Trajectory.from_tum(tmp_path / 'out.txt')
    np.testing.assert_array_equal(again.stamps_ns, trajectory.stamps_ns)
    np.testing.assert_array_equal(again.positions, trajectory.positions)
    np.testing.assert_allclose(again.orientations, trajectory.orientations)


@pytest.mark.parametrize('text, message', [
    ('1 0 0 0 0 0 0 1\n2 0 0 0 0 0 1\n', r'traj.txt:2: expected 8 values .* got 7'),
    ('1 0 0 0 0 0 0 1\n# c\n2 0 x 0 0 0 0 1\n', r'traj.txt:3: could not convert'),
    ('1 0 0 0 0 0 0 1\n1 0 0 0 0 0 0 1\n', r'traj.txt:2: timestamp is not after'),
    ('abc 0 0 0 0 0 0 1\n', r"traj.txt:1: cannot parse timestamp 'abc'"),
    ('# nothing\n', 'holds no poses'),
    ('1 0 0 0 0 0 0 1\n1e30 0 0 0 0 0 0 1\n', r"traj.txt:2: timestamp '1e30' is out of range"),
    ('1e100000000 0 0 0 0 0 0 1\n', r"traj.txt:1: timestamp '1e100000000' is out of range"),
])
def test_malformed_tum_files(tmp_path, text, message):
    path = tmp_path / 'traj.txt'
    path.write_text(text)
    with pytest.raises(TrajectoryError, match=message):
        Trajectory.from_tum(path)


def test_kitti_poses_with_times_file_or_stamps(tmp_path):
    poses = tmp_path / 'poses.txt'
    poses.write_text('1 0 0 0 0 1 0 0 0 0 1 0\n'
                     '0 -1 0 5 1 0 0 6 0 0 1 7\n')
    times = tmp_path / 'times.txt'
    times.write_text('0.000000e+00\n1.000000e-01\n')
    trajectory = Trajectory.from_kitti(poses, times)
    assert trajectory.stamps_ns.tolist() == [0, S // 10]
    np.testing.assert_allclose(trajectory.positions[1], [5, 6, 7])
    np.testing.assert_allclose(trajectory.orientations[1], yaw_q(math.pi / 2), atol=1e-12)
    same = Trajectory.from_kitti(poses, np.array([10, 20]))
    assert same.stamps_ns.tolist() == [10, 20]
    with pytest.raises(TrajectoryError, match='2 poses but 3 timestamps'):
        Trajectory.from_kitti(poses, np.array([1, 2, 3]))
    poses.write_text('1 0 0 0 0 1 0 0 0 0 1 0\n2 0 0 0 0 1 0 0 0 0 1 0\n')
    with pytest.raises(TrajectoryError, match='poses.txt:2: rotation part is not a rotation'):
        Trajectory.from_kitti(poses, times)
    poses.write_text('1 0 0 0 0 1 0 0 0 0 1\n')
    with pytest.raises(TrajectoryError, match='poses.txt:1: expected 12 values'):
        Trajectory.from_kitti(poses, times)


def test_missing_or_poseless_topic_lists_the_pose_topics(tmp_path):
    path = tmp_path / 'bag'
    with write_bag(path) as bag:
        bag.write('/cam', 'sensor_msgs/msg/Image',
                  make_image_msg(np.zeros((2, 2), np.uint8), 'mono8', T0, 'c'), T0)
        bag.write('/odom', 'nav_msgs/msg/Odometry',
                  make_odometry_msg(T0, (0, 0, 0), yaw_q(0)), T0)
        bag.write('/tf', 'tf2_msgs/msg/TFMessage',
                  make_tf_msg(T0, 'odom', 'base_link', (0, 0, 0), yaw_q(0)), T0)
        bag.write('/fix', 'sensor_msgs/msg/NavSatFix',
                  make_navsatfix_msg(T0, 48.0, 11.0, 500.0), T0)
        bag.write('/pose', 'geometry_msgs/msg/PoseStamped',
                  make_pose_msg(T0, (0, 0, 0), yaw_q(0)), T0)
        bag.write('/pose_cov', 'geometry_msgs/msg/PoseWithCovarianceStamped',
                  make_pose_msg(T0, (0, 0, 0), yaw_q(0), covariance=np.zeros(36)), T0)
    listed = ('pose topics: /fix (sensor_msgs/msg/NavSatFix), /odom (nav_msgs/msg/Odometry), '
              '/pose (geometry_msgs/msg/PoseStamped), '
              '/pose_cov (geometry_msgs/msg/PoseWithCovarianceStamped), '
              '/tf (tf2_msgs/msg/TFMessage)')
    with open_bag(path) as bag:
        assert pose_topics(bag) == {
            '/odom': 'nav_msgs/msg/Odometry', '/tf': 'tf2_msgs/msg/TFMessage',
            '/fix': 'sensor_msgs/msg/NavSatFix', '/pose': 'geometry_msgs/msg/PoseStamped',
            '/pose_cov': 'geometry_msgs/msg/PoseWithCovarianceStamped'}
        assert set(pose_topics(bag).values()) == set(POSE_TYPES)
        with pytest.raises(TrajectoryError) as missing:
            Trajectory.from_bag(bag, '/ground_truth')
        with pytest.raises(TrajectoryError) as poseless:
            Trajectory.from_bag(bag, '/cam')
    assert str(missing.value) == f"topic '/ground_truth' is not in bag {path}; {listed}"
    assert str(poseless.value).startswith(
        "topic '/cam' has type sensor_msgs/msg/Image; poses come from nav_msgs/msg/Odometry, ")
    assert str(poseless.value).endswith(f'in bag {path}: {listed}')


def test_bag_without_pose_topics_says_so(tmp_path):
    path = tmp_path / 'bag'
    with write_bag(path) as bag:
        bag.write('/cam', 'sensor_msgs/msg/Image',
                  make_image_msg(np.zeros((2, 2), np.uint8), 'mono8', T0, 'c'), T0)
    with pytest.raises(TrajectoryError, match=r"'/odom' is not in bag .*; the bag has no pose "
                                              r'topics \(it needs one of nav_msgs/msg/Odometry'):
        Trajectory.from_bag(path, '/odom')
