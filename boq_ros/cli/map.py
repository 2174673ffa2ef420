"""`boq-ros map build` and `boq-ros map info`: keyframe maps from recordings, and their contents.

`map build` is the issue's `build-map`: the CLI has one module per task, so both map commands
live under `boq-ros map`.
"""
import argparse
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import sys
import time
from typing import Any

import numpy as np

EPILOG = """\
examples:
  boq-ros map build --bag run1.mcap --topic /camera/image_raw --checkpoint resnet50-16384 \\
      --keyframes distance --distance-m 1 --angle-rad 0.2 --pose-topic /odom --out maps/site
  boq-ros map build --images frames/ --checkpoint weights.pth --keyframes interval \\
      --interval-s 1 --out maps/site --append --session walk2
  boq-ros map info maps/site
"""

POSE_SOURCES = {'nav_msgs/msg/Odometry': 'odometry', 'geometry_msgs/msg/PoseStamped': 'pose',
                'geometry_msgs/msg/PoseWithCovarianceStamped': 'pose',
                'tf2_msgs/msg/TFMessage': 'tf', 'sensor_msgs/msg/NavSatFix': 'navsatfix'}
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm', '.pgm')


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'map', help='build a keyframe map from bags or image folders, and inspect maps',
        description="Keyframe maps: `map build` (the issue's build-map) and `map info`.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='map_command', metavar='{build,info}', required=True)
    build = commands.add_parser('build', help='describe the keyframes of recordings into a map')
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument('--bag', type=Path, action='append', metavar='BAG',
                        help='rosbag2 directory/.mcap/.db3 or ROS 1 .bag (repeatable)')
    source.add_argument('--images', type=Path, action='append', metavar='DIR',
                        help='folder of images, sorted by name; a stem that is an integer is '
                             'the stamp in ns, else frame i is at i seconds (repeatable)')
    build.add_argument('--topic', action='append', metavar='TOPIC',
                       help='image topic (Image or CompressedImage), repeatable (default: the '
                            "bag's only image topic)")
    build.add_argument('--checkpoint', required=True, metavar='PATH_OR_PRESET',
                       help='checkpoint file, or a preset whose weights are in the torch cache')
    build.add_argument('--backbone', choices=('resnet50', 'dinov2'),
                       help='backbone of the checkpoint (default: detected from its keys)')
    build.add_argument('--keyframes', choices=('every_frame', 'interval', 'distance'),
                       default='every_frame', help='keyframe selection (default every_frame)')
    build.add_argument('--interval-s', type=float, default=1.0,
                       help='seconds between keyframes for --keyframes interval')
    build.add_argument('--distance-m', type=float, default=1.0,
                       help='metres of travel between keyframes for --keyframes distance')
    build.add_argument('--angle-rad', type=float, default=0.2,
                       help='radians of rotation between keyframes for --keyframes distance')
    build.add_argument('--pose-topic', metavar='TOPIC',
                       help='Odometry, PoseStamped, PoseWithCovarianceStamped, TF or NavSatFix '
                            'topic: poses stored with the keyframes (needed for distance)')
    build.add_argument('--pose-child-frame', metavar='FRAME',
                       help='child frame of the transforms to use when --pose-topic is TF')
    build.add_argument('--session', help='session name (default: the bag or folder name)')
    build.add_argument('--robot-id', default='', help='robot id stored with every keyframe')
    build.add_argument('--index', choices=('flat', 'flat_fp16', 'hnsw', 'ivfpq'),
                       default='flat', help='index kind (default flat; see docs/map.md)')
    build.add_argument('--pca-dim', type=int, help='reduce descriptors to this many dimensions '
                                                   'in the index (PCA learned from the map)')
    build.add_argument('--resize', choices=('height', 'square'), default='height',
                       help='resize policy (default height: aspect kept, see docs/preprocess)')
    build.add_argument('--image-size', type=int, metavar='PIXELS',
                       help="resized height (or side for square); default: the preset's")
    build.add_argument('--device', default='auto', help='extraction device (default auto)')
    build.add_argument('--precision', choices=('fp32', 'fp16', 'bf16'), default='fp32',
                       help='extraction precision (default fp32)')
    build.add_argument('--batch-size', type=int, default=16, help='images per batch')
    build.add_argument('--out', type=Path, required=True, metavar='MAP_DIR',
                       help='map directory to write')
    build.add_argument('--append', action='store_true',
                       help='add to the map at --out instead of refusing to replace it')
    build.add_argument('--no-progress', action='store_true', help='no progress bar')
    build.set_defaults(func=run_build)
    info = commands.add_parser('info', help="print a map's schema and statistics")
    info.add_argument('map', type=Path, metavar='MAP')
    info.add_argument('--json', action='store_true', help='print JSON instead of text')
    info.add_argument('--no-verify', action='store_true',
                      help='skip hashing the descriptors (sizes are still checked)')
    info.set_defaults(func=run_info)


@dataclass
class Frame:
    """One camera frame on its way into the map."""

    stamp_ns: int
    camera: str
    frame_id: str
    array: np.ndarray
    encoding: str
    image_ref: str


@dataclass
class Summary:
    """Counters and per-stage seconds printed when the build ends."""

    frames: int = 0
    keyframes: int = 0
    decode_errors: int = 0
    without_pose: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ('read+decode', 'extract', 'map add', 'index', 'save'), 0.0))

    def lines(self, out: Path, total_keyframes: int) -> list[str]:
        stages = ', '.join(f'{k} {v:.1f} s' for k, v in self.seconds.items())
        return [f'frames read: {self.frames}', f'keyframes added: {self.keyframes} '
                f'(map now holds {total_keyframes})', f'decode errors: {self.decode_errors}',
                f'keyframes without a pose: {self.without_pose}', f'time: {stages}',
                f'map: {out}']


class _Timed:
    """Iterate `items`, adding the time spent producing each to a summary stage."""

    def __init__(self, items: Iterator[Any], summary: Summary, stage: str) -> None:
        self.items, self.summary, self.stage = items, summary, stage

    def __iter__(self) -> Iterator[Any]:
        while True:
            start = time.perf_counter()
            try:
                item = next(self.items)
            except StopIteration:
                return
            finally:
                self.summary.seconds[self.stage] += time.perf_counter() - start
            yield item


def _bag_frames(bag: Any, topics: list[str], summary: Summary) -> Iterator[Frame]:
    from boq_ros.bags import BagError  # noqa: PLC0415 (keep `boq-ros --help` fast)
    for item in bag.images(topics):
        summary.frames += 1
        if isinstance(item, BagError):
            summary.decode_errors += 1
            continue
        yield Frame(item.stamp_ns, item.topic, item.frame_id, item.array, item.encoding,
                    f'{bag.path.name}#{item.topic}@{item.stamp_ns}')


def _folder_frames(folder: Path, summary: Summary) -> Iterator[Frame]:
    import cv2  # noqa: PLC0415 (keep `boq-ros --help` fast)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for i, path in enumerate(files):
        summary.frames += 1
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            summary.decode_errors += 1
            continue
        stamp = int(path.stem) if path.stem.isdigit() else i * 1_000_000_000
        yield Frame(stamp, folder.name, '', cv2.cvtColor(image, cv2.COLOR_BGR2RGB), 'rgb8',
                    f'{folder.name}/{path.name}')


def _pose_frame(bag: Any, topic: str, child: str | None) -> str:
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


class _Poses:
    """Feeds a selector poses up to each frame's stamp and gives the pose stored with it."""

    def __init__(self, trajectory: Any, selector: Any, source: str, frame: str) -> None:
        self.trajectory, self.selector = trajectory, selector
        self.source, self.frame = source, frame
        self.next = 0

    def feed_until(self, stamp_ns: int) -> None:
        stamps = self.trajectory.stamps_ns
        horizon = stamp_ns + int(self.selector.policy.pose_tolerance_s * 1e9)
        orientations = self.trajectory.orientations
        while self.next < len(stamps) and stamps[self.next] <= horizon:
            i = self.next
            self.selector.update_pose(int(stamps[i]), self.trajectory.positions[i],
                                      None if orientations is None else orientations[i])
            self.next += 1

    def pose_at(self, stamp_ns: int) -> tuple[float, ...] | None:
        positions, orientations, valid = self.trajectory.interpolate(stamp_ns)
        if not valid[0]:
            return None
        quaternion = orientations[0] if orientations is not None else [math.nan] * 4
        return tuple(float(v) for v in (*positions[0], *quaternion))


def _open_map(args: argparse.Namespace, extractor: Any) -> Any:
    from boq_ros.keyframe_map import IndexSpec, KeyframeMap, MapError  # noqa: PLC0415
    if args.out.exists():
        if not args.append:
            raise MapError(f'{args.out} exists; pass --append to add to it')
        kmap = KeyframeMap.load(args.out, expect_model_id=extractor.model_id,
                                expect_dim=extractor.dim)
        if kmap.preprocess != extractor.preprocess_config.to_dict():
            raise MapError(f'{args.out} was built with preprocessing {kmap.preprocess}, this '
                           f'run uses {extractor.preprocess_config.to_dict()}')
        return kmap
    return KeyframeMap(extractor.dim, model_id=extractor.model_id,
                       preprocess=extractor.preprocess_config.to_dict(),
                       index=IndexSpec(args.index, pca_dim=args.pca_dim))


def run_build(args: argparse.Namespace) -> int:
    try:
        return _build(args)
    except (ValueError, OSError) as exc:  # every refusal of the modules used names its cause
        print(f'error: {exc}', file=sys.stderr)
        return 1


def _build(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415 (keep `boq-ros --help` fast)

    from boq_ros.bags import open_bag  # noqa: PLC0415
    from boq_ros.extractor import Extractor  # noqa: PLC0415
    from boq_ros.keyframe_map import KeyframeMeta  # noqa: PLC0415
    from boq_ros.keyframes import KeyframePolicy, KeyframeSelector  # noqa: PLC0415
    from boq_ros.model import load_boq  # noqa: PLC0415
    from boq_ros.preprocess import PreprocessConfig  # noqa: PLC0415
    from boq_ros.trajectory import Trajectory  # noqa: PLC0415

    if args.keyframes == 'distance' and not args.pose_topic:
        raise ValueError('--keyframes distance needs --pose-topic')
    if args.images and args.pose_topic:
        raise ValueError('--pose-topic needs --bag (image folders carry no poses)')
    policy = KeyframePolicy(args.keyframes, interval_s=args.interval_s,
                            distance_m=args.distance_m, angle_rad=args.angle_rad)
    model = load_boq(args.checkpoint, args.backbone)
    preprocess = PreprocessConfig.default_for(model.config.name, args.resize)
    if args.image_size:
        preprocess = PreprocessConfig(args.resize, args.image_size, preprocess.multiple)
    extractor = Extractor(model, device=args.device, precision=args.precision,
                          preprocess=preprocess, batch_size=args.batch_size)
    kmap = _open_map(args, extractor)
    summary = Summary()
    sources = args.bag or args.images
    bar = tqdm(unit='frame', desc='map build', disable=args.no_progress, file=sys.stderr)
    batch: list[tuple[Frame, KeyframeMeta]] = []

    def flush() -> None:
        start = time.perf_counter()
        descriptors = extractor.extract([f.array for f, _ in batch],
                                        [f.encoding for f, _ in batch])
        summary.seconds['extract'] += time.perf_counter() - start
        start = time.perf_counter()
        kmap.add(descriptors, [m for _, m in batch])
        summary.seconds['map add'] += time.perf_counter() - start
        summary.keyframes += len(batch)
        batch.clear()

    for source in sources:
        with ExitStack() as stack:
            selector = KeyframeSelector(policy)
            session = args.session or source.stem
            poses = None
            if args.bag:
                bag = stack.enter_context(open_bag(source))
                topics = args.topic or bag.image_topics()
                if not args.topic and len(topics) != 1:
                    raise ValueError(f'{source} has image topics {topics}; choose with --topic')
                bar.total = (bar.total or 0) + sum(bag.topics[t].count for t in topics
                                                   if t in bag.topics)
                if args.pose_topic:
                    trajectory = Trajectory.from_bag(bag, args.pose_topic, args.pose_child_frame)
                    kind = POSE_SOURCES[bag.topics[args.pose_topic].msgtype]
                    poses = _Poses(trajectory, selector, f'{kind}:{args.pose_topic}',
                                   _pose_frame(bag, args.pose_topic, args.pose_child_frame))
                frames = _bag_frames(bag, topics, summary)
            else:
                frames = _folder_frames(source, summary)
            for frame in _Timed(frames, summary, 'read+decode'):
                bar.update(1)
                if poses is not None:
                    poses.feed_until(frame.stamp_ns)
                if not selector.offer(frame.stamp_ns, frame.camera):
                    continue
                pose = poses.pose_at(frame.stamp_ns) if poses is not None else None
                summary.without_pose += pose is None
                batch.append((frame, KeyframeMeta(
                    stamp_ns=frame.stamp_ns, session=session, robot_id=args.robot_id,
                    camera=frame.camera, frame_id=frame.frame_id, pose=pose,
                    pose_frame=poses.frame if pose else '',
                    pose_source=poses.source if pose else '', image_ref=frame.image_ref)))
                if len(batch) >= args.batch_size:
                    flush()
            if batch:
                flush()
    bar.close()
    start = time.perf_counter()
    if 0 < kmap.schema.index_trained_on < len(kmap) // 2:
        kmap.rebuild_index()  # learn PCA / IVF-PQ from the whole map, not its first keyframes
    summary.seconds['index'] += time.perf_counter() - start
    start = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = kmap.save(args.out)
    summary.seconds['save'] += time.perf_counter() - start
    print('\n'.join(summary.lines(out, len(kmap))))
    return 0


def map_info(path: Path, verify: bool = True) -> dict[str, Any]:
    """Return the schema and statistics of the map at `path` (what `map info` prints).

    Reads and validates the files like a load, without building the search index.
    """
    from boq_ros.keyframe_map.store import read_map  # noqa: PLC0415
    stored = read_map(Path(path), mmap=True, verify=verify)
    schema = stored.schema.to_dict()
    history = schema.pop('history')
    return {'schema': schema, 'statistics': stored.table.statistics(),
            'history': [{k: v for k, v in h.items() if k != 'source_history'}
                        for h in history]}


def run_info(args: argparse.Namespace) -> int:
    from boq_ros.keyframe_map import MapError  # noqa: PLC0415
    try:
        info = map_info(args.map, verify=not args.no_verify)
    except (MapError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    schema, stats = info['schema'], info['statistics']
    for key in ('map_id', 'model_id', 'dim', 'metric', 'preprocess', 'storage_dtype', 'index',
                'index_state', 'package_version', 'created', 'modified', 'count', 'next_id'):
        print(f'{key + ":":19}{schema[key]}')
    print(f'{"files:":19}' + ', '.join(f'{name} ({entry["bytes"]} B)'
                                       for name, entry in schema['files'].items()))
    for key, value in stats.items():
        print(f'{key + ":":19}{value}')
    for event in info['history']:
        print(f'{"history:":19}' + ', '.join(f'{k}={v}' for k, v in event.items()))
    return 0
