"""Recordings in and out: rosbag2 (sqlite3, MCAP) and ROS 1 bags, without a ROS install.

Map building, evaluation and replay all start from a recording, and tests need to write them;
``rosbags`` reads and writes every format in pure Python. This module gives the rest of the
package one small interface over it: topics, raw CDR messages (publishable unchanged by rclpy)
and message constructors for the few types this project writes. Camera frames are read through
``boq_ros.sources.bag_frames`` and decoded by the frame pipeline, like every other frame.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, TypesysError, get_typestore
from rosbags.typesys.store import Typestore
import yaml

from boq_ros.images import (
    encode_compressed,
    encode_image,
)

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE_TYPE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)


class BagReadError(OSError):
    """Raised when a recording cannot be opened or a message in it cannot be read."""


class BagTruncatedError(BagReadError):
    """Raised for a storage file that ends early: still being written, or its recorder died."""


class BagTopicError(ValueError):
    """Raised when a requested topic is missing from a bag or has an unsuitable type."""


class BagWriteError(ValueError):
    """Raised when a message cannot be written (wrong type for its topic, bad stamp, ...)."""


@cache
def typestore() -> Typestore:
    """Return the ROS 2 Kilted typestore used to build, serialise and default-decode messages."""
    return get_typestore(Stores.ROS2_KILTED)


@dataclass(frozen=True)
class TopicInfo:
    """A topic's message type and message count in one bag."""

    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """One recorded message, raw CDR bytes first so replay and filtering cost no decoding."""

    topic: str
    msgtype: str
    log_time_ns: int
    raw: bytes
    _store: Typestore = field(repr=False, compare=False)

    def decode(self) -> Any:
        """Deserialise the message with the bag's own type definitions."""
        try:
            return self._store.deserialize_cdr(self.raw, self.msgtype)
        except SerdeError as err:
            raise BagReadError(
                f'cannot decode {self.msgtype} on {self.topic} at {self.log_time_ns}: {err}'
            ) from err


def stamp_to_ns(stamp: Any) -> int:
    """Convert a ``builtin_interfaces/Time`` (ROS 2) or ROS 1 time to integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Bag:
    """An open recording; use :func:`open_bag` and close it (or use it as a context manager)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f'bag {self.path} does not exist')
        self.storage = _storage_of(self.path)
        if self.storage == 'mcap':
            _check_mcap_complete(self.path)
        try:
            self._reader = AnyReader([self.path], default_typestore=typestore())
            self._reader.open()
        except (AnyReaderError, KeyError, yaml.YAMLError) as err:
            hint = ''
            if self.storage == 'sqlite3' and 'malformed' in str(err):
                hint = ('; the database looks truncated or damaged (e.g. the recorder was killed '
                        'or a copy is incomplete): salvage it with `sqlite3 FILE.db3 .recover '
                        '| sqlite3 fixed.db3`, then `ros2 bag reindex` the directory')
            raise BagReadError(f'cannot open bag {self.path}: {err}{hint}') from err
        self._is_ros1 = not self._reader.is2
        self._store = self._reader.typestore
        # ROS 1 messages are handed out as ROS 2 CDR (the header loses its seq), so that they
        # can be published unchanged on ROS 2; the bag's own definitions cover custom types.
        try:
            self._cdr_store = _ros2_store_for(self._store) if self._is_ros1 else self._store
        except TypesysError as err:
            self._reader.close()
            raise BagReadError(f'cannot use the message definitions of {self.path}: {err}'
                               ) from err
        self.topics: dict[str, TopicInfo] = {
            name: TopicInfo(info.msgtype or '', info.msgcount)
            for name, info in self._reader.topics.items()
        }
        count = self._reader.message_count
        self.message_count: int = count
        self.start_ns: int = self._reader.start_time if count else 0
        self.end_ns: int = self._reader.end_time - 1 if count else 0

    def close(self) -> None:
        """Release the files; messages already returned stay usable."""
        if self._reader.stack is not None:
            self._reader.close()

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def duration_s(self) -> float:
        """Time between the first and the last message in seconds."""
        return (self.end_ns - self.start_ns) / 1e9

    def _connections(self, topics: Sequence[str] | None, allowed: Sequence[str] = ()) -> list:
        if isinstance(topics, str):
            raise BagTopicError(f'topics must be a sequence of names, got the string {topics!r}')
        names = list(self.topics) if topics is None else list(topics)
        for name in names:
            info = self.topics.get(name)
            if info is None:
                raise BagTopicError(
                    f'topic {name!r} is not in bag {self.path} (topics: {", ".join(self.topics)})')
            if allowed and info.msgtype not in allowed:
                raise BagTopicError(
                    f'topic {name!r} has type {info.msgtype}, '
                    f'expected one of {", ".join(allowed)}')
        wanted = set(names)
        return [c for c in self._reader.connections if c.topic in wanted]

    def messages(self, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
        """Iterate messages of the given topics (all if None) in recording order."""
        connections = self._connections(topics)
        return self._messages(connections) if connections else iter(())

    def _messages(self, connections: list) -> Iterator[BagMessage]:
        for connection, log_time, raw in self._reader.messages(connections):
            if self._is_ros1:
                try:
                    raw = self._cdr_store.ros1_to_cdr(raw, connection.msgtype)
                except SerdeError as err:
                    raise BagReadError(
                        f'corrupt {connection.msgtype} on {connection.topic} at {log_time}: {err}'
                    ) from err
            yield BagMessage(connection.topic, connection.msgtype, log_time, bytes(raw),
                             self._cdr_store)

    def image_topics(self) -> list[str]:
        """Return the topics that carry ``sensor_msgs/Image`` or ``CompressedImage``."""
        return [name for name, info in self.topics.items() if info.msgtype in IMAGE_TYPES]


def _ros2_store_for(ros1_store: Typestore) -> Typestore:
    """Return a typestore with a bag's ROS 1 definitions but the ROS 2 ``std_msgs/Header``."""
    header = 'std_msgs/msg/Header'
    definitions = {name: d for name, d in ros1_store.fielddefs.items() if name != header}
    definitions[header] = typestore().fielddefs[header]
    store = get_typestore(Stores.EMPTY)
    store.register(definitions)
    return store


_MCAP_MAGIC = b'\x89MCAP0\r\n'  # at both ends of a complete MCAP file


def _check_mcap_complete(path: Path) -> None:
    """Refuse MCAP files that end early, naming the file and how to recover it.

    A recorder that is killed, or still running, leaves the file without its closing magic
    bytes; rosbags then reports only 'File end magic is invalid'.
    """
    files = sorted(path.glob('*.mcap')) if path.is_dir() else [path]
    for file in files:
        size = file.stat().st_size
        with open(file, 'rb') as f:
            head = f.read(len(_MCAP_MAGIC))
            f.seek(max(size - len(_MCAP_MAGIC), 0))
            tail = f.read()
        if size and head != _MCAP_MAGIC:
            raise BagReadError(f'{file} is not an MCAP file (it does not start with the MCAP '
                               'magic bytes)')
        if size < 2 * len(_MCAP_MAGIC) or tail != _MCAP_MAGIC:
            state = 'is empty' if size == 0 else f'ends without the MCAP end magic ({size} bytes)'
            raise BagTruncatedError(
                f'{file} {state}: it looks truncated or still being written (e.g. the recorder '
                'was killed); wait for the recorder to finish, or recover the messages with '
                f'`mcap recover {file} -o recovered.mcap` and open the recovered file')


def _storage_of(path: Path) -> str:
    if path.is_dir():
        metadata = path / 'metadata.yaml'
        if not metadata.is_file():
            storage_files = sorted(p.name for p in path.iterdir()
                                   if p.suffix in ('.db3', '.mcap'))
            if storage_files:
                raise BagReadError(
                    f'{path} has {", ".join(storage_files)} but no metadata.yaml: the recording '
                    'looks unfinished or still being written (e.g. the recorder was killed); '
                    f'`ros2 bag reindex {path}` recreates metadata.yaml (an MCAP file can '
                    'also be opened on its own, after `mcap recover` if it is truncated)')
            raise BagReadError(f'{path} is a directory without metadata.yaml, not a rosbag2')
        try:
            info = yaml.safe_load(metadata.read_text(encoding='utf-8'))
            return str(info['rosbag2_bagfile_information']['storage_identifier'])
        except (yaml.YAMLError, KeyError, TypeError) as err:
            raise BagReadError(f'cannot read {metadata}: {err!r}') from err
    storages = {'.bag': 'ros1', '.mcap': 'mcap', '.db3': 'sqlite3'}
    if path.suffix not in storages:
        raise BagReadError(f'{path} is not a bag (expected a rosbag2 directory, .mcap, .db3 '
                           'or ROS 1 .bag)')
    return storages[path.suffix]


def open_bag(path: str | os.PathLike) -> Bag:
    """Open a rosbag2 directory, a single .mcap/.db3 file or a ROS 1 .bag for reading."""
    return Bag(path)


class BagWriter:
    """Writes a rosbag2 recording; topics are registered on their first message."""

    def __init__(self, path: str | os.PathLike,
                 storage: Literal['sqlite3', 'mcap'] = 'sqlite3') -> None:
        plugins = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
        if storage not in plugins:
            raise BagWriteError(f'unknown storage {storage!r} (use sqlite3 or mcap)')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists already; bags are never overwritten')
        self.storage = storage
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                              storage_plugin=plugins[storage])
        self._connections: dict[str, Any] = {}
        try:
            self._writer.open()
        except WriterError as err:
            raise OSError(f'cannot create bag {self.path}: {err}') from err

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.abort()

    def close(self) -> None:
        """Finish the storage file and write metadata.yaml."""
        if self._writer.storage is not None:
            self._writer.close()

    def _connection(self, topic: str, msgtype: str) -> Any:
        connection = self._connections.get(topic)
        if connection is None:
            if msgtype not in typestore().types:
                raise BagWriteError(f'unknown message type {msgtype!r} for topic {topic!r}')
            connection = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise BagWriteError(
                f'topic {topic!r} already carries {connection.msgtype}, not {msgtype}')
        return connection

    def write(self, topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
        """Serialise and record a message; ``stamp_ns`` is the recording (log) time."""
        try:
            raw = typestore().serialize_cdr(msg, msgtype)
        except (SerdeError, AttributeError, TypeError) as err:
            raise BagWriteError(f'cannot serialise a {msgtype} for {topic!r}: {err}') from err
        self.write_raw(topic, msgtype, raw, stamp_ns)

    def write_raw(self, topic: str, msgtype: str, raw: bytes | memoryview, stamp_ns: int) -> None:
        """Record already serialised CDR bytes (e.g. copied from another bag)."""
        if stamp_ns < 0:
            raise BagWriteError(f'log time must not be negative, got {stamp_ns}')
        self._writer.write(self._connection(topic, msgtype), int(stamp_ns), raw)


def write_bag(path: str | os.PathLike,
              storage: Literal['sqlite3', 'mcap'] = 'sqlite3') -> BagWriter:
    """Create a new rosbag2 recording at ``path`` (which must not exist)."""
    return BagWriter(path, storage)


def _types() -> dict[str, Any]:
    return typestore().types


def make_time(stamp_ns: int) -> Any:
    """Build a ``builtin_interfaces/Time``; refuses stamps outside its int32 seconds range."""
    stamp_ns = int(stamp_ns)
    if not 0 <= stamp_ns < 2**31 * 1_000_000_000:
        raise BagWriteError(f'stamp {stamp_ns} ns is outside builtin_interfaces/Time')
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    return _types()['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)


def make_header(stamp_ns: int, frame_id: str) -> Any:
    """Build a ``std_msgs/Header``."""
    return _types()['std_msgs/msg/Header'](stamp=make_time(stamp_ns), frame_id=frame_id)


def make_image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
    """Build a ``sensor_msgs/Image`` from an array (see :func:`boq_ros.images.encode_image`)."""
    fields = encode_image(array, encoding)
    return _types()[IMAGE_TYPE](
        header=make_header(stamp_ns, frame_id), height=fields['height'], width=fields['width'],
        encoding=encoding, is_bigendian=0, step=fields['step'],
        data=np.frombuffer(fields['data'], np.uint8))


def make_compressed_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str,
                        fmt: str = 'jpeg') -> Any:
    """Build a ``sensor_msgs/CompressedImage`` as image_transport's compressed plugin would."""
    format_string, data = encode_compressed(array, encoding, fmt)
    return _types()[COMPRESSED_IMAGE_TYPE](
        header=make_header(stamp_ns, frame_id), format=format_string,
        data=np.frombuffer(data, np.uint8))


def make_camera_info_msg(stamp_ns: int, frame_id: str, width: int, height: int,
                         k: Sequence[float] | np.ndarray, d: Sequence[float] | np.ndarray,
                         distortion_model: str = 'plumb_bob',
                         p: Sequence[float] | np.ndarray | None = None) -> Any:
    """Build a ``sensor_msgs/CameraInfo`` of an unrectified monocular camera.

    ``k`` is the 3x3 camera matrix (9 values, row-major), ``d`` the distortion coefficients of
    ``distortion_model``; ``p`` (3x4) defaults to ``[k | 0]``, as for a camera whose images are
    already undistorted. ``r`` is the identity (no stereo rectification), binning and ROI unset.
    """
    camera_matrix = np.asarray(k, dtype=np.float64).reshape(-1)
    if camera_matrix.size != 9:
        raise BagWriteError(f'k needs 9 values (3x3), got {camera_matrix.size}')
    if p is None:
        projection = np.concatenate([camera_matrix.reshape(3, 3), np.zeros((3, 1))], axis=1)
    else:
        projection = np.asarray(p, dtype=np.float64)
    projection = projection.reshape(-1)
    if projection.size != 12:
        raise BagWriteError(f'p needs 12 values (3x4), got {projection.size}')
    if not (0 < int(width) < 2**32 and 0 < int(height) < 2**32):
        raise BagWriteError(f'camera info needs a positive size, got {width}x{height}')
    types = _types()
    return types['sensor_msgs/msg/CameraInfo'](
        header=make_header(stamp_ns, frame_id), height=int(height), width=int(width),
        distortion_model=distortion_model, d=np.asarray(d, dtype=np.float64).reshape(-1),
        k=camera_matrix, r=np.eye(3).reshape(-1), p=projection, binning_x=0, binning_y=0,
        roi=types['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                      do_rectify=False))


def _pose(position: Sequence[float], quaternion_xyzw: Sequence[float]) -> Any:
    types = _types()
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in quaternion_xyzw)
    return types['geometry_msgs/msg/Pose'](
        position=types['geometry_msgs/msg/Point'](x=x, y=y, z=z),
        orientation=types['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw))


def make_odometry_msg(stamp_ns: int, position: Sequence[float],
                      quaternion_xyzw: Sequence[float], frame_id: str = 'odom',
                      child_frame_id: str = 'base_link') -> Any:
    """Build a ``nav_msgs/Odometry`` with zero twist and zero covariances."""
    types = _types()
    zero = types['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0)
    return types['nav_msgs/msg/Odometry'](
        header=make_header(stamp_ns, frame_id), child_frame_id=child_frame_id,
        pose=types['geometry_msgs/msg/PoseWithCovariance'](
            pose=_pose(position, quaternion_xyzw), covariance=np.zeros(36)),
        twist=types['geometry_msgs/msg/TwistWithCovariance'](
            twist=types['geometry_msgs/msg/Twist'](linear=zero, angular=zero),
            covariance=np.zeros(36)))


def make_pose_msg(stamp_ns: int, position: Sequence[float], quaternion_xyzw: Sequence[float],
                  frame_id: str = 'map', covariance: Sequence[float] | None = None) -> Any:
    """Build a ``geometry_msgs/PoseStamped``, or ``PoseWithCovarianceStamped`` with covariance."""
    types = _types()
    header = make_header(stamp_ns, frame_id)
    pose = _pose(position, quaternion_xyzw)
    if covariance is None:
        return types['geometry_msgs/msg/PoseStamped'](header=header, pose=pose)
    cov = np.asarray(covariance, dtype=np.float64).reshape(-1)
    if cov.size != 36:
        raise BagWriteError(f'covariance needs 36 values (6x6), got {cov.size}')
    return types['geometry_msgs/msg/PoseWithCovarianceStamped'](
        header=header, pose=types['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                                          covariance=cov))


def make_navsatfix_msg(stamp_ns: int, latitude: float, longitude: float, altitude: float,
                       frame_id: str = 'gps', status: int = 0) -> Any:
    """Build a ``sensor_msgs/NavSatFix`` (status 0 = fix, -1 = no fix) with unknown covariance."""
    types = _types()
    return types['sensor_msgs/msg/NavSatFix'](
        header=make_header(stamp_ns, frame_id),
        status=types['sensor_msgs/msg/NavSatStatus'](status=status, service=1),
        latitude=float(latitude), longitude=float(longitude), altitude=float(altitude),
        position_covariance=np.zeros(9), position_covariance_type=0)


def make_tf_msg(stamp_ns: int, parent_frame: str, child_frame: str, position: Sequence[float],
                quaternion_xyzw: Sequence[float]) -> Any:
    """Build a ``tf2_msgs/TFMessage`` holding one transform parent -> child."""
    types = _types()
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in quaternion_xyzw)
    transform = types['geometry_msgs/msg/TransformStamped'](
        header=make_header(stamp_ns, parent_frame), child_frame_id=child_frame,
        transform=types['geometry_msgs/msg/Transform'](
            translation=types['geometry_msgs/msg/Vector3'](x=x, y=y, z=z),
            rotation=types['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw)))
    return types['tf2_msgs/msg/TFMessage'](transforms=[transform])
