"""`boq-ros map build` and `boq-ros map info`: keyframe maps from recordings, and their contents.

Both are thin: map building is `boq_ros.mapping.build_map`, the reading of a stored map
`boq_ros.keyframe_map`.
"""
import argparse
import json
from pathlib import Path
import sys
from typing import Any

EPILOG = """\
examples:
  boq-ros map build --bag run1.mcap --image-topic /camera/image_raw \\
      --checkpoint resnet50-16384 --keyframe-mode distance --keyframe-distance-m 1 \\
      --keyframe-angle-rad 0.2 --pose-topic /odom --out maps/site
  boq-ros map build --images 'frames/*_rgb.png' --checkpoint weights.pth \\
      --keyframe-mode interval --keyframe-interval-s 1 --out maps/site --append --session walk2
  boq-ros map build --bag day1 --bag day2 --bag day3 --image-topic /camera/image_raw \\
      --checkpoint resnet50-16384 --out maps/site --ray ray://head:10001 --ray-workers 3
  boq-ros map info maps/site
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from boq_ros.cli import options  # noqa: PLC0415 (keep `boq-ros --help` fast)
    from boq_ros.settings import (  # noqa: PLC0415
        KeyframePolicy,
        MapSettings,
        ModelSettings,
        PipelineConfig,
        VerificationSettings,
    )

    parser = subparsers.add_parser(
        'map', help='build a keyframe map from bags or image folders, and inspect maps',
        description='Keyframe maps: `map build` and `map info` (docs/map.md).',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='map_command', metavar='{build,info}', required=True)
    build = commands.add_parser(
        'build', help='describe the keyframes of recordings into a map',
        description='Describe the keyframes of recordings (one session each) into a keyframe '
                    'map, through the same frame pipeline as the live node (docs/map.md).',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument('--bag', type=options.path, action='append', metavar='BAG',
                        help='rosbag2 directory/.mcap/.db3 or ROS 1 .bag (repeatable)')
    source.add_argument('--images', action='append', metavar='DIR_OR_GLOB',
                        help="a folder of JPEG/PNG images or a glob ('frames/*_rgb.png'), in "
                             'name order; stamps from file names that are all nanoseconds or '
                             'all decimal seconds, else 1 s apart (repeatable)')
    options.add_aliases(build, build.add_argument(
        '--image-topic', action='append', metavar='TOPIC',
        help="image topic (Image or CompressedImage), repeatable (default: the bag's only one)"))
    build.add_argument('--include-depth', action='store_true',
                       help='describe 16-bit single-channel (depth) images of --images too '
                            '(skipped and counted by default)')
    build.add_argument('--out', type=options.path, required=True, metavar='MAP_DIR',
                       help='map directory to write')
    build.add_argument('--append', action='store_true',
                       help='add to the map at --out (keyframes it already holds are skipped)')
    build.add_argument('--no-progress', action='store_true', help='no progress bar')
    model = build.add_argument_group('model')
    options.add(model, ModelSettings, 'checkpoint', 'preset', 'device', 'precision',
                'runtime', 'resize_policy', 'input_size', required=('checkpoint',))
    options.add(model, PipelineConfig, 'batch_size', 'max_image_pixels')
    kf = build.add_argument_group('keyframes and poses')
    options.add(kf, KeyframePolicy, 'keyframe_mode', 'keyframe_interval_s',
                'keyframe_distance_m', 'keyframe_angle_rad', 'pose_tolerance_s')
    options.add_aliases(kf, kf.add_argument(
        '--pose-topic', metavar='TOPIC',
        help='Odometry, PoseStamped, PoseWithCovarianceStamped, TF or NavSatFix topic: poses '
             'stored with the keyframes (needed for distance keyframes)'))
    options.add_aliases(kf, kf.add_argument(
        '--pose-child-frame', metavar='FRAME',
        help='child frame of the transforms to use when --pose-topic is TF'))
    stored = build.add_argument_group('map')
    options.add(stored, MapSettings, 'session', 'robot_id', 'index_kind', 'pca_dim',
                'target_recall_at_1', 'target_recall_at_10')
    features = build.add_argument_group(
        'local features', 'what geometric verification needs, stored with each keyframe '
        '(docs/verification.md)')
    options.add(features, VerificationSettings, 'verification', 'feature_kind', 'max_keypoints',
                'depth_range_m', 'feature_device')
    features.add_argument('--depth-topic', metavar='TOPIC',
                          help='depth images aligned to the (one) image topic (16UC1 mm or '
                               '32FC1 m): keyframe features with depth, metric loop poses')
    features.add_argument('--camera-info-topic', metavar='TOPIC',
                          help='CameraInfo of the image topic (default: the conventional '
                               '.../camera_info beside it, when the bag has it)')
    ray = build.add_argument_group(
        'Ray', 'recordings described on Ray workers, the same map as without --ray '
        '(docs/map.md)')
    ray.add_argument('--ray', nargs='?', const='', metavar='ADDRESS',
                     help='build on Ray; without ADDRESS on a local Ray instance started for '
                          "the build, else on a running cluster ('auto', HOST:6379, "
                          'ray://HOST:10001). GPU workers (one GPU each) when the cluster has '
                          'GPUs, else CPU workers. Needs ray (pip install "ray[client]==2.60.0"); '
                          'the recordings and the checkpoint must be at the same paths on every '
                          'node')
    ray.add_argument('--ray-workers', type=_count, default=0, metavar='N',
                     help='how many Ray workers (default: as many as there are recordings, at '
                          'most the free GPUs, or the free CPUs of a cluster without GPUs)')
    build.set_defaults(func=run_build)
    info = commands.add_parser('info', help="print a map's schema and statistics")
    info.add_argument('map', type=options.map_uri, metavar='MAP',
                      help='map directory (faiss:DIR), milvus://HOST:PORT/COLLECTION or '
                           'milvus-lite:FILE.db')
    info.add_argument('--json', action='store_true', help='print JSON instead of text')
    info.add_argument('--no-verify', action='store_true',
                      help='skip hashing the descriptors and local feature arrays (sizes are '
                           'still checked)')
    info.set_defaults(func=run_info)


def _count(text: str) -> int:
    """Parse a count of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {text!r}')
    return value


def run_build(args: argparse.Namespace) -> int:
    """`map build`: a thin wrapper over boq_ros.mapping.build_map."""
    from tqdm import tqdm  # noqa: PLC0415 (keep `boq-ros --help` fast)

    from boq_ros.cli import UsageError, options  # noqa: PLC0415
    from boq_ros.mapping import Recording, build_map  # noqa: PLC0415
    from boq_ros.settings import (  # noqa: PLC0415
        KeyframePolicy,
        MapSettings,
        ModelSettings,
        PipelineConfig,
        SettingError,
        VerificationSettings,
    )

    if args.images and args.keyframe_mode == 'distance':
        raise UsageError('--keyframe-mode distance needs poses, which image folders do not '
                         'have: use --bag with --pose-topic, or interval keyframes')
    for flag, given in (('--pose-topic', args.pose_topic), ('--image-topic', args.image_topic),
                        ('--depth-topic', args.depth_topic),
                        ('--camera-info-topic', args.camera_info_topic)):
        if args.images and given:
            raise UsageError(f'{flag} needs --bag (image folders have no topics)')
    if args.keyframe_mode == 'distance' and not args.pose_topic:
        raise UsageError('--keyframe-mode distance needs --pose-topic')
    if args.keyframe_mode == 'external':
        raise UsageError('--keyframe-mode external needs a SLAM system; offline use '
                         'every_frame, interval or distance')
    if args.ray_workers and args.ray is None:
        raise UsageError('--ray-workers needs --ray')
    try:
        settings = [options.build(cls, args) for cls in (
            ModelSettings, KeyframePolicy, PipelineConfig, MapSettings, VerificationSettings)]
    except SettingError as err:
        raise UsageError(str(err)) from None
    model, keyframes, pipeline, map_settings, verification = settings
    if (args.depth_topic or args.camera_info_topic) and len(args.image_topic or ()) > 1:
        raise UsageError('--depth-topic and --camera-info-topic belong to one --image-topic')
    if args.bag:
        recordings = [Recording(path, 'bag', tuple(args.image_topic or ()), args.pose_topic,
                                args.pose_child_frame, depth_topic=args.depth_topic or '',
                                camera_info_topic=args.camera_info_topic or '')
                      for path in args.bag]
    else:
        recordings = [Recording(Path(spec), 'images', depth_ok=args.include_depth)
                      for spec in args.images]
    runner = None
    if args.ray is not None:
        from boq_ros.mapping_ray import RayRunner  # noqa: PLC0415 (Ray only with --ray)
        runner = RayRunner(args.ray or None, args.ray_workers)
    with tqdm(unit='frame', desc='map build', disable=args.no_progress or None,
              file=sys.stderr) as bar:
        summary = build_map(recordings, args.out, model=model, keyframes=keyframes,
                            pipeline=pipeline, map_settings=map_settings,
                            verification=verification, append=args.append,
                            on_frames=bar.update,
                            on_note=lambda text: print(text, file=sys.stderr), runner=runner)
    print('\n'.join(summary.lines()))
    return 0


def map_info(path: Path, verify: bool = True) -> dict[str, Any]:
    """Return the schema and statistics of the map at `path` (what `map info` prints).

    Reads and validates the files like a load, without building the search index.
    """
    import numpy as np  # noqa: PLC0415

    from boq_ros.keyframe_map.store import read_map  # noqa: PLC0415
    stored = read_map(Path(path), mmap=True, verify=verify)
    schema = stored.schema.to_dict()
    history = schema.pop('history')
    live = np.ones(len(stored.table), bool)
    return {'schema': schema,
            'statistics': {**stored.table.statistics(), **stored.features.statistics(live)},
            'history': [{k: v for k, v in h.items() if k != 'source_history'}
                        for h in history]}


def store_info(uri: str) -> dict[str, Any]:
    """Return what a Milvus store says of itself (what `map info` prints for one)."""
    from boq_ros.keyframe_map.uri import open_store  # noqa: PLC0415

    store = open_store(uri)
    try:
        return {**store.info(), 'statistics': store.statistics()}
    finally:
        store.close()


def run_info(args: argparse.Namespace) -> int:
    from boq_ros.keyframe_map.uri import faiss_path, is_milvus  # noqa: PLC0415

    if is_milvus(args.map):
        info = store_info(args.map)
        if args.json:
            print(json.dumps(info, indent=1))
        else:
            for key, value in info.items():
                print(f'{key + ":":28}{value}')
        return 0
    info = map_info(faiss_path(args.map), verify=not args.no_verify)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    schema, stats = info['schema'], info['statistics']
    for key in ('schema_version', 'map_id', 'model_id', 'dim', 'metric', 'preprocess',
                'storage_dtype', 'index', 'index_state', 'package_version', 'created',
                'modified', 'count', 'next_id'):
        print(f'{key + ":":28}{schema[key]}')
    tuning = schema.get('index_tuning') or {}  # search parameters chosen from target recalls
    print(f'{"index_tuning:":28}' + (', '.join(f'{k}={v}' for k, v in tuning.items())
                                     or 'none'))
    print(f'{"local_features:":28}' + (', '.join(
        f'{k["kind"]} ({k["dim"]} x {k["dtype"]})' for k in schema['local_features']) or 'none'))
    print(f'{"files:":28}' + ', '.join(f'{name} ({entry["bytes"]} B)'
                                       for name, entry in schema['files'].items()))
    for key, value in stats.items():
        print(f'{key + ":":28}{value}')
    for event in info['history']:
        print(f'{"history:":28}' + ', '.join(f'{k}={v}' for k, v in event.items()))
    return 0
