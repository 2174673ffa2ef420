import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.typesys import Stores, get_typestore

from boq_ros.bags import (
    BagError,
    BagImage,
    BagTopicError,
    BagWriteError,
    make_compressed_msg,
    make_image_msg,
    make_navsatfix_msg,
    make_odometry_msg,
    make_pose_msg,
    make_tf_msg,
    open_bag,
    typestore,
    write_bag,
)

T0 = 1_700_000_000_000_000_000


def frame(k):
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, :, 0] = 10 * k
    image[4:12, 8 + k:16 + k] = (250, 40, 90)
    return image


def write_sample(path, storage):
    """Write 3 raw + 3 compressed frames, odometry and a pose; return what rosbags serialised."""
    serialised = []
    with write_bag(path, storage) as bag:
        for k in range(3):
            stamp = T0 + k * 100_000_000
            msgs = [
                ('/cam/image_raw', 'sensor_msgs/msg/Image',
                 make_image_msg(frame(k), 'rgb8', stamp, 'cam')),
                ('/cam/image_raw/compressed', 'sensor_msgs/msg/CompressedImage',
                 make_compressed_msg(frame(k), 'rgb8', stamp, 'cam', 'png')),
                ('/odom', 'nav_msgs/msg/Odometry',
                 make_odometry_msg(stamp, (k, 2.0, 0.0), (0, 0, 0, 1))),
            ]
            for topic, msgtype, msg in msgs:
                bag.write(topic, msgtype, msg, stamp + 5_000_000)
                serialised.append(bytes(typestore().serialize_cdr(msg, msgtype)))
        pose = make_pose_msg(T0, (1, 2, 3), (0, 0, 0, 1), covariance=np.eye(6).ravel())
        bag.write('/pose', 'geometry_msgs/msg/PoseWithCovarianceStamped', pose, T0 + 1)
        serialised.append(bytes(typestore().serialize_cdr(pose, pose.__msgtype__)))
    return serialised


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_write_then_read_back(tmp_path, storage):
    path = tmp_path / 'bag'
    serialised = write_sample(path, storage)
    with open_bag(path) as bag:
        assert bag.storage == storage
        assert bag.topics['/cam/image_raw'].msgtype == 'sensor_msgs/msg/Image'
        assert {name: info.count for name, info in bag.topics.items()} == {
            '/cam/image_raw': 3, '/cam/image_raw/compressed': 3, '/odom': 3, '/pose': 1}
        assert bag.start_ns == T0 + 1
        assert bag.end_ns == T0 + 200_000_000 + 5_000_000
        assert bag.message_count == 10
        messages = list(bag.messages())
        assert sorted(m.raw for m in messages) == sorted(serialised)
        assert [m.log_time_ns for m in messages] == sorted(m.log_time_ns for m in messages)
        odom = [m.decode() for m in bag.messages(['/odom'])]
        assert [o.pose.pose.position.x for o in odom] == [0.0, 1.0, 2.0]
        assert odom[0].child_frame_id == 'base_link'

        images = list(bag.images())
        assert len(images) == 6 and all(isinstance(i, BagImage) for i in images)
        raw = [i for i in images if i.topic == '/cam/image_raw']
        packed = [i for i in images if i.topic == '/cam/image_raw/compressed']
        for k, (a, b) in enumerate(zip(raw, packed)):
            assert a.stamp_ns == T0 + k * 100_000_000
            assert a.log_time_ns == a.stamp_ns + 5_000_000
            assert a.frame_id == 'cam' and a.encoding == 'rgb8' and b.encoding == 'bgr8'
            np.testing.assert_array_equal(a.array, frame(k))
            np.testing.assert_array_equal(b.array[..., ::-1], frame(k))


def test_single_mcap_file_opens(tmp_path):
    write_sample(tmp_path / 'bag', 'mcap')
    (storage_file,) = (tmp_path / 'bag').glob('*.mcap')
    with open_bag(storage_file) as bag:
        assert bag.storage == 'mcap'
        assert bag.topics['/odom'].count == 3


def test_corrupt_messages_yield_errors_and_iteration_continues(tmp_path):
    path = tmp_path / 'bag'
    with write_bag(path) as bag:
        bag.write('/cam', 'sensor_msgs/msg/Image', make_image_msg(frame(0), 'rgb8', T0, 'c'), T0)
        bag.write_raw('/cam', 'sensor_msgs/msg/Image', b'\x00\x01\x00\x00garbage', T0 + 1)
        bad = make_image_msg(frame(1), 'rgb8', T0 + 2, 'c')
        bad.encoding = 'xyz16'
        bag.write('/cam', 'sensor_msgs/msg/Image', bad, T0 + 2)
        bag.write('/cam', 'sensor_msgs/msg/Image', make_image_msg(frame(2), 'rgb8', T0, 'c'),
                  T0 + 3)
        squashed = make_compressed_msg(frame(3), 'rgb8', T0 + 4, 'c')
        squashed.data = squashed.data[:40]
        bag.write('/cam/compressed', 'sensor_msgs/msg/CompressedImage', squashed, T0 + 4)
    with open_bag(path) as bag:
        items = list(bag.images())
    kinds = [type(i).__name__ for i in items]
    assert kinds == ['BagImage', 'BagError', 'BagError', 'BagImage', 'BagError']
    assert items[1] == BagError('/cam', T0 + 1, items[1].reason)
    assert 'SerdeError' in items[1].reason
    assert "unsupported image encoding 'xyz16'" in items[2].reason
    assert 'JPEG data is truncated' in items[4].reason


def test_ros1_bag_is_read_as_cdr(tmp_path):
    ros1 = get_typestore(Stores.ROS1_NOETIC)
    types = ros1.types
    path = tmp_path / 'old.bag'
    image = frame(4)
    with Ros1Writer(path) as writer:
        connection = writer.add_connection('/cam', 'sensor_msgs/msg/Image', typestore=ros1)
        header = types['std_msgs/msg/Header'](
            seq=7, stamp=types['builtin_interfaces/msg/Time'](sec=1_700_000_000, nanosec=5),
            frame_id='cam')
        msg = types['sensor_msgs/msg/Image'](
            header=header, height=24, width=32, encoding='rgb8', is_bigendian=0, step=96,
            data=image.reshape(-1))
        writer.write(connection, T0 + 9, ros1.serialize_ros1(msg, 'sensor_msgs/msg/Image'))
    with open_bag(path) as bag:
        assert bag.storage == 'ros1'
        assert bag.topics == {'/cam': bag.topics['/cam']}
        assert bag.topics['/cam'].msgtype == 'sensor_msgs/msg/Image'
        (message,) = bag.messages()
        ros2_msg = make_image_msg(image, 'rgb8', T0 + 5, 'cam')
        assert message.raw == bytes(typestore().serialize_cdr(ros2_msg, 'sensor_msgs/msg/Image'))
        decoded_msg = message.decode()
        assert not hasattr(decoded_msg.header, 'seq')
        assert decoded_msg.header.frame_id == 'cam'
        (decoded,) = bag.images(['/cam'])
    assert decoded.stamp_ns == T0 + 5 and decoded.log_time_ns == T0 + 9
    np.testing.assert_array_equal(decoded.array, image)


def test_reader_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        open_bag(tmp_path / 'missing')
    (tmp_path / 'plain').mkdir()
    with pytest.raises(OSError, match='without metadata.yaml'):
        open_bag(tmp_path / 'plain')
    path = tmp_path / 'bag'
    write_sample(path, 'sqlite3')
    with open_bag(path) as bag:
        with pytest.raises(BagTopicError, match="topic '/nope' is not in bag"):
            bag.messages(['/nope'])
        with pytest.raises(BagTopicError, match="'/odom' has type nav_msgs/msg/Odometry"):
            bag.images(['/odom'])
        with pytest.raises(BagTopicError, match='sequence of names'):
            bag.messages('/odom')


def test_writer_refusals(tmp_path):
    path = tmp_path / 'bag'
    with write_bag(path, 'mcap') as bag:
        bag.write('/odom', 'nav_msgs/msg/Odometry', make_odometry_msg(T0, (0, 0, 0), (0, 0, 0, 1)),
                  T0)
        with pytest.raises(BagWriteError, match="'/odom' already carries nav_msgs/msg/Odometry"):
            bag.write('/odom', 'geometry_msgs/msg/PoseStamped',
                      make_pose_msg(T0, (0, 0, 0), (0, 0, 0, 1)), T0)
        with pytest.raises(BagWriteError, match="unknown message type 'foo/msg/Bar'"):
            bag.write_raw('/foo', 'foo/msg/Bar', b'', T0)
        with pytest.raises(BagWriteError, match='cannot serialise'):
            bag.write('/fix', 'sensor_msgs/msg/NavSatFix', make_tf_msg(
                T0, 'a', 'b', (0, 0, 0), (0, 0, 0, 1)), T0)
        with pytest.raises(BagWriteError, match='outside builtin_interfaces/Time'):
            make_navsatfix_msg(-1, 48.0, 11.0, 500.0)
    with pytest.raises(FileExistsError, match='exists already'):
        write_bag(path)
    with pytest.raises(BagWriteError, match="unknown storage 'zip'"):
        write_bag(tmp_path / 'other', 'zip')
