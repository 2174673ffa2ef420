import re

import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.typesys import Stores, get_typestore

from boq_ros.bags import (
    BagReadError,
    BagTopicError,
    BagTruncatedError,
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
from boq_ros.pipeline import SkippedFrame, decode
from boq_ros.sources import SourceError, bag_frames
from boq_ros.synth import generate_recording

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

        frames = list(bag_frames(bag, bag.image_topics()))
        assert len(frames) == 6
        raw = [f for f in frames if f.camera == '/cam/image_raw']
        packed = [f for f in frames if f.camera == '/cam/image_raw/compressed']
        for k, (a, b) in enumerate(zip(raw, packed)):
            assert a.stamp_ns == b.stamp_ns == T0 + k * 100_000_000
            assert a.frame_id == 'cam' and a.image_ref == f'bag#/cam/image_raw@{a.stamp_ns}'
            (array_a, encoding_a), (array_b, encoding_b) = decode(a.image), decode(b.image)
            assert (encoding_a, encoding_b) == ('rgb8', 'bgr8')  # the compressed frames: PNG
            np.testing.assert_array_equal(array_a, frame(k))
            np.testing.assert_array_equal(array_b[..., ::-1], frame(k))


def test_single_mcap_file_opens(tmp_path):
    write_sample(tmp_path / 'bag', 'mcap')
    (storage_file,) = (tmp_path / 'bag').glob('*.mcap')
    with open_bag(storage_file) as bag:
        assert bag.storage == 'mcap'
        assert bag.topics['/odom'].count == 3


def test_corrupt_messages_are_skipped_by_cause_and_iteration_continues(tmp_path):
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
        frames = list(bag_frames(bag, ['/cam', '/cam/compressed']))
    outcomes = []
    for f in frames:
        try:
            outcomes.append(decode(f.image)[1])
        except SkippedFrame as err:
            outcomes.append(f'{err.cause}: {err}')
    assert outcomes[0] == outcomes[3] == 'rgb8' and len(outcomes) == 5
    assert frames[1].stamp_ns == T0 + 1  # undeserialisable: its log time stands in
    assert outcomes[1].startswith('decode: cannot decode sensor_msgs/msg/Image on /cam')
    assert outcomes[2].startswith("decode: unsupported image encoding 'xyz16'")
    assert outcomes[4].startswith('decode: JPEG data is truncated')


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
        (decoded,) = bag_frames(bag, ['/cam'])
    assert decoded.stamp_ns == T0 + 5
    np.testing.assert_array_equal(decode(decoded.image)[0], image)


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
        with pytest.raises(SourceError, match="'/odom' of .* carries nav_msgs/msg/Odometry"):
            list(bag_frames(bag, ['/odom']))
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


@pytest.fixture
def mcap_recording(tmp_path):
    path = tmp_path / 'rec'
    generate_recording(path, storage='mcap', laps=1, frames_per_lap=4, image_size=(32, 24))
    (storage_file,) = path.glob('*.mcap')
    return path, storage_file


@pytest.mark.parametrize('cut', [300, 8, 1])
def test_truncated_mcap_is_named_and_recovery_explained(mcap_recording, cut):
    path, storage_file = mcap_recording
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[:-cut])  # as left by a recorder killed while writing
    for opened in (path, storage_file):  # the rosbag2 directory, or the file on its own
        with pytest.raises(BagTruncatedError) as raised:
            open_bag(opened)
        message = str(raised.value)
        assert message.startswith(f'{storage_file} ends without the MCAP end magic')
        assert 'looks truncated or still being written' in message
        assert 'recorder was killed' in message
        assert f'mcap recover {storage_file} -o recovered.mcap' in message
        assert isinstance(raised.value, BagReadError) and isinstance(raised.value, OSError)
    storage_file.write_bytes(b'')
    with pytest.raises(BagTruncatedError, match=re.escape(f'{storage_file} is empty: it looks')):
        open_bag(storage_file)
    storage_file.write_bytes(b'not an mcap at all, but long enough')
    with pytest.raises(BagReadError, match='is not an MCAP file'):
        open_bag(storage_file)


def test_unfinished_rosbag2_directory_suggests_reindex(mcap_recording, tmp_path):
    path, storage_file = mcap_recording
    (path / 'metadata.yaml').unlink()  # the recorder writes it last
    with pytest.raises(BagReadError, match=re.escape(
            f'{path} has {storage_file.name} but no metadata.yaml: the recording looks '
            'unfinished')) as raised:
        open_bag(path)
    assert f'ros2 bag reindex {path}' in str(raised.value)
    with open_bag(storage_file) as bag:  # the complete MCAP file still opens on its own
        assert bag.message_count > 0


def test_damaged_sqlite3_bag_suggests_recovery(tmp_path):
    path = tmp_path / 'rec'
    generate_recording(path, storage='sqlite3', laps=1, frames_per_lap=4, image_size=(32, 24))
    (storage_file,) = path.glob('*.db3')
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[:len(data) // 2])
    with pytest.raises(BagReadError, match='looks truncated or damaged') as raised:
        open_bag(path)
    assert str(storage_file) in str(raised.value) and 'ros2 bag reindex' in str(raised.value)
