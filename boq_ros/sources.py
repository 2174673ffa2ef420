"""Where frames and poses come from offline: bag image topics, image folders, bag pose topics.

Each source yields :class:`boq_ros.pipeline.Frame` objects still encoded (the pipeline decodes
only keyframes, with its one decoder and limits) and poses as ``(stamp_ns, Pose)`` in stamp
order, which the pipeline takes as a live node takes odometry.
"""
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
import glob
import math
from pathlib import Path
import re

from boq_ros.bags import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, Bag, BagReadError, stamp_to_ns
from boq_ros.pipeline import (
    BrokenMessage,
    CameraInfoUpdate,
    CompressedImage,
    DepthFrame,
    Frame,
    ImageFile,
    RawImage,
)
from boq_ros.poses import Pose, PoseBuffer, make_pose
from boq_ros.trajectory import Trajectory

CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'

POSE_SOURCES = {'nav_msgs/msg/Odometry': 'odometry', 'geometry_msgs/msg/PoseStamped': 'pose',
                'geometry_msgs/msg/PoseWithCovarianceStamped': 'pose',
                'tf2_msgs/msg/TFMessage': 'tf', 'sensor_msgs/msg/NavSatFix': 'navsatfix'}
"""Pose message types, and the word a keyframe's pose_source starts with for each."""
IMAGE_PATTERNS = ('*.jpg', '*.jpeg', '*.png', '*.JPG', '*.JPEG', '*.PNG')
"""What an image folder holds by default (JPEG and PNG: the formats the decoder checks)."""
_NS = 1_000_000_000


class SourceError(ValueError):
    """Raised for a source that cannot be read as asked (missing topic, empty folder, ...)."""


def camera_info_topic(image_topic: str) -> str:
    """Return the conventional camera_info topic of an image topic (image_transport's rule).

    ``/cam/image_raw`` and ``/cam/image_raw/compressed`` -> ``/cam/camera_info``.
    """
    base = image_topic[:-len('/compressed')] if image_topic.endswith('/compressed') else (
        image_topic)
    return f'{base.rsplit("/", 1)[0]}/camera_info'


def _check_topic(bag: Bag, topic: str, types: Sequence[str], what: str) -> None:
    info = bag.topics.get(topic)
    if info is None:
        raise SourceError(f'{what} topic {topic!r} is not in {bag.path} (topics: '
                          f'{", ".join(sorted(bag.topics)) or "none"})')
    if info.msgtype not in types:
        raise SourceError(f'{what} topic {topic!r} of {bag.path} carries {info.msgtype}, not '
                          f'{" or ".join(types)}')


def bag_frames(bag: Bag, topics: Sequence[str], depth_topics: Mapping[str, str] | None = None,
               camera_info_topics: Mapping[str, str] | None = None
               ) -> Iterator[Frame | DepthFrame | CameraInfoUpdate]:
    """Yield the frames of image topics of a bag in recording order (undecodable too).

    With them, in recording order: the aligned depth images of `depth_topics` (image topic ->
    depth topic) and the intrinsics of `camera_info_topics` (image topic -> camera_info topic;
    None: each image topic's conventional camera_info topic when the bag has it).
    """
    for topic in topics:
        info = bag.topics.get(topic)
        if info is None:
            raise SourceError(f'topic {topic!r} is not in {bag.path} (image topics: '
                              f'{", ".join(bag.image_topics()) or "none"})')
        if info.msgtype not in (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE):
            raise SourceError(f'topic {topic!r} of {bag.path} carries {info.msgtype}, not '
                              'camera images')
    depth_of = {d: camera for camera, d in (depth_topics or {}).items()}
    for topic in depth_of:
        if topic in topics:
            raise SourceError(f'{topic!r} is given as both a camera and a depth topic')
        _check_topic(bag, topic, (IMAGE_TYPE,), 'depth')
    if camera_info_topics is None:
        camera_info_topics = {t: camera_info_topic(t) for t in topics
                              if camera_info_topic(t) in bag.topics}
    info_of = {i: camera for camera, i in camera_info_topics.items()}
    for topic in info_of:
        _check_topic(bag, topic, (CAMERA_INFO_TYPE,), 'camera_info')
    for message in bag.messages([*topics, *depth_of, *info_of]):
        try:
            msg = message.decode()
        except BagReadError as err:
            if message.topic in info_of:
                yield CameraInfoUpdate(info_of[message.topic], None, str(err))
            elif message.topic in depth_of:
                yield DepthFrame(message.log_time_ns, depth_of[message.topic],
                                 BrokenMessage(str(err)))
            else:
                yield Frame(message.log_time_ns, message.topic, BrokenMessage(str(err)),
                            image_ref=f'{bag.path.name}#{message.topic}@{message.log_time_ns}')
            continue
        if message.topic in info_of:
            yield CameraInfoUpdate.from_message(info_of[message.topic], msg)
            continue
        if message.msgtype == IMAGE_TYPE:
            image = RawImage(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                             bool(msg.is_bigendian))
        else:
            image = CompressedImage(msg.format, msg.data)
        stamp = stamp_to_ns(msg.header.stamp)
        if message.topic in depth_of:
            yield DepthFrame(stamp, depth_of[message.topic], image)
            continue
        yield Frame(stamp, message.topic, image, frame_id=msg.header.frame_id,
                    image_ref=f'{bag.path.name}#{message.topic}@{stamp}')


@dataclass(frozen=True)
class PoseTopic:
    """A bag's pose topic, read whole: poses in stamp order, their frame and source label."""

    topic: str
    frame: str
    source: str  # e.g. 'odometry:/odom', stored with every keyframe pose
    poses: tuple[tuple[int, Pose], ...]

    def buffer(self, tolerance_s: float) -> PoseBuffer:
        """Make an empty PoseBuffer for these poses, labelled with their frame and source."""
        return PoseBuffer(tolerance_s, frame=self.frame, source=self.source)


def pose_topic(bag: Bag, topic: str, child_frame: str | None = None) -> PoseTopic:
    """Read a pose topic (Odometry, PoseStamped, PoseWithCovarianceStamped, TF, NavSatFix)."""
    trajectory = Trajectory.from_bag(bag, topic, child_frame)
    kind = POSE_SOURCES[bag.topics[topic].msgtype]
    orientations = trajectory.orientations
    poses = tuple(
        (int(stamp), make_pose(trajectory.positions[i],
                               None if orientations is None else orientations[i]))
        for i, stamp in enumerate(trajectory.stamps_ns))
    return PoseTopic(topic, _pose_frame(bag, topic, child_frame), f'{kind}:{topic}', poses)


def _pose_frame(bag: Bag, topic: str, child: str | None) -> str:
    """Frame the poses are expressed in, from the first message of the pose topic."""
    msgtype = bag.topics[topic].msgtype
    if msgtype == 'sensor_msgs/msg/NavSatFix':
        return 'enu@first_fix'
    for message in bag.messages([topic]):
        msg = message.decode()
        if msgtype != 'tf2_msgs/msg/TFMessage':
            return msg.header.frame_id
        for tf in msg.transforms:
            if tf.child_frame_id.lstrip('/') == (child or '').lstrip('/'):
                return tf.header.frame_id
    return ''


@dataclass(frozen=True)
class ImageFolder:
    """The image files of a folder (or glob), with the stamps they are given and why."""

    camera: str
    files: tuple[Path, ...]
    stamps_ns: tuple[int, ...]
    stamp_rule: str  # said to the user: where the stamps come from
    ignored: int  # files in the folder that no pattern matched

    def frames(self, depth_ok: bool = False) -> Iterator[Frame]:
        """Yield the frames in file-name order.

        16-bit single-channel (depth) images are skipped (cause 'depth') unless `depth_ok`.
        """
        for path, stamp in zip(self.files, self.stamps_ns):
            yield Frame(stamp, self.camera, ImageFile(path, depth_ok),
                        image_ref=f'{path.parent.name}/{path.name}')


_SECONDS = re.compile(r'^\d+\.\d+$')
_NANOSECONDS = re.compile(r'^\d{16,}$')


def image_folder(spec: str | Path) -> ImageFolder:
    """List a folder's JPEG/PNG files, or the files a glob (``frames/*_rgb.png``) matches.

    Stamps: file names that are all nanosecond integers (16+ digits) or all decimal seconds
    (``1403636579.76``) are taken as stamps; otherwise files are 1 s apart in name order.
    """
    text = str(spec)
    if Path(text).is_file():  # one image: a glob that matches just it
        text = glob.escape(text)
    if Path(text).is_file() or any(c in text for c in '*?['):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        folder = Path(text).parent
        ignored = 0
        if not files:
            raise SourceError(f'no file matches {text}')
    else:
        folder = Path(text)
        if not folder.is_dir():
            raise SourceError(f'image folder {folder} does not exist or is not a folder')
        every = [p for p in folder.iterdir() if p.is_file()]
        files = sorted({p for pattern in IMAGE_PATTERNS for p in folder.glob(pattern)})
        ignored = len(every) - len(files)
        if not files:
            raise SourceError(f'no usable frame in {folder}: {len(every)} files, none of them '
                              f'JPEG or PNG ({", ".join(IMAGE_PATTERNS[:3])})')
    stems = [p.stem for p in files]
    if all(_NANOSECONDS.match(s) for s in stems):
        stamps, rule = [int(s) for s in stems], 'file names, as nanoseconds'
    elif all(_SECONDS.match(s) for s in stems):
        stamps = [round(float(s) * _NS) for s in stems]
        rule = 'file names, as seconds'
    else:
        stamps, rule = [i * _NS for i in range(len(files))], 'file order, 1 s apart'
    if len(set(stamps)) != len(stamps):
        stamps, rule = [i * _NS for i in range(len(files))], 'file order, 1 s apart ' \
            '(file-name stamps repeat)'
    if any(not math.isfinite(s) or s < 0 for s in stamps):
        raise SourceError(f'file-name stamps in {folder} are out of range')
    return ImageFolder(folder.resolve().name, tuple(files), tuple(stamps), rule, ignored)
