"""`boq-ros eval`: score loop closure or place recognition on the user's own recordings.

One bag: loop closure within the run (the detector's exclusion window applies). A map bag and a
query bag: place recognition across runs. `--records` evaluates recorded candidates instead (what
the live node published during `boq-ros replay`), with the same metrics.
"""
import argparse
from pathlib import Path
import sys

EPILOG = """\
examples:
  boq-ros eval run1.mcap --image-topic /camera/image_raw --gt-topic /odom \\
      --checkpoint resnet50-16384 --radius 5 --out eval_run1
  boq-ros eval map_run --query-bag query_run --image-topic /cam/compressed \\
      --gt-file map.tum --query-gt-file query.tum --checkpoint boq.pth --out eval_pr
  boq-ros eval run1.mcap ... --heights 288 320 384 432 480   # the resolution study
  boq-ros eval run1.mcap --gt-topic /odom --records live.jsonl --out eval_live
"""


def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return value
    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'eval', help='evaluate loop closure / place recognition on rosbags',
        description='Evaluate BoQ loop closure (one bag) or place recognition (map bag + query '
                    'bag) against ground truth; write report.json, summary.md, records and '
                    'PNG plots into --out and print the summary.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', type=Path, help='rosbag2 directory or file (sqlite3, MCAP) or '
                                               'ROS 1 bag; the map in place-recognition mode')
    parser.add_argument('--query-bag', type=Path, help='query recording (place recognition)')
    parser.add_argument('--image-topic', help='camera topic (Image or CompressedImage)')
    parser.add_argument('--query-image-topic', help='camera topic of the query bag '
                                                    '(default: --image-topic)')
    parser.add_argument('--out', type=Path, required=True, help='output directory')
    gt = parser.add_argument_group('ground truth (one source)')
    gt.add_argument('--gt-topic', help='Odometry, PoseStamped, PoseWithCovarianceStamped, TF or '
                                       'NavSatFix topic of the bag(s)')
    gt.add_argument('--gt-child-frame', help='child frame to follow on a TF topic')
    gt.add_argument('--gt-file', type=Path, help='TUM or KITTI trajectory file of the bag')
    gt.add_argument('--query-gt-file', type=Path, help='trajectory file of the query bag')
    gt.add_argument('--gt-format', choices=('tum', 'kitti'), default='tum')
    gt.add_argument('--gt-times', type=Path, help='KITTI times file (default: one pose per '
                                                  'image frame of the bag)')
    model = parser.add_argument_group('model')
    model.add_argument('--checkpoint', help='checkpoint file or preset name in the torch hub '
                                            'cache (resnet50-16384, dinov2-12288)')
    model.add_argument('--backbone', choices=('resnet50', 'dinov2'))
    model.add_argument('--heights', type=int, nargs='+', default=[], metavar='H',
                       help='evaluate at each inference height (aspect kept); default: the '
                            "preset's size")
    model.add_argument('--policy', choices=('height', 'square'), default='height',
                       help='resize policy (default height: aspect preserved)')
    model.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1 ...')
    model.add_argument('--precision', choices=('fp32', 'fp16', 'bf16'), default='fp32')
    model.add_argument('--batch-size', type=_positive(int), default=16)
    det = parser.add_argument_group('detector and metrics')
    det.add_argument('--radius', type=_positive(float), default=25.0,
                     help='a match within this many metres is correct (default 25)')
    det.add_argument('--exclusion-seconds', type=float, default=30.0)
    det.add_argument('--exclusion-keyframes', type=int, default=50)
    det.add_argument('--top-k', type=_positive(int), default=20,
                     help='candidates per query (default 20, the deepest Recall@K)')
    det.add_argument('--threshold', type=float, default=None,
                     help="similarity threshold of the accepted loops (default: detector's)")
    det.add_argument('--min-margin', type=float, default=0.0)
    det.add_argument('--consistency', type=_positive(int), default=1)
    kf = parser.add_argument_group('keyframes')
    kf.add_argument('--keyframes', choices=('every_frame', 'interval', 'distance'),
                    default='every_frame')
    kf.add_argument('--keyframe-interval', type=_positive(float), default=1.0, metavar='S')
    kf.add_argument('--keyframe-distance', type=_positive(float), default=1.0, metavar='M')
    kf.add_argument('--keyframe-angle', type=_positive(float), default=0.2, metavar='RAD')
    run_group = parser.add_argument_group('run')
    run_group.add_argument('--records', type=Path, help='evaluate these recorded candidates '
                                                       '(JSON lines) instead of running a model')
    run_group.add_argument('--cache-dir', type=Path, help='descriptor cache (default '
                                                          '~/.cache/boq_ros/descriptors)')
    run_group.add_argument('--no-cache', action='store_true', help='always recompute')
    run_group.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f'boq-ros eval: error: {message}', file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from boq_ros.detector import DetectorConfig
    from boq_ros.eval.metrics import EvalConfig
    from boq_ros.eval.runner import (
        BagInput,
        EvalSpec,
        GroundTruthSource,
        run_evaluation,
        run_records_evaluation,
    )
    from boq_ros.keyframes import KeyframePolicy

    if (args.gt_topic is None) == (args.gt_file is None):
        return _fail('give exactly one ground truth: --gt-topic or --gt-file')
    if args.query_bag is not None and args.gt_file is not None and args.query_gt_file is None:
        return _fail('--gt-file with --query-bag needs --query-gt-file for the query bag')
    try:
        def source(path: Path | None) -> GroundTruthSource:
            if args.gt_topic is not None:
                return GroundTruthSource(topic=args.gt_topic, child_frame=args.gt_child_frame)
            return GroundTruthSource(file=path, format=args.gt_format, kitti_times=args.gt_times)

        evaluation = EvalConfig(radius_m=args.radius)
        if args.records is not None:
            report = run_records_evaluation(
                args.records, BagInput(args.bag, args.image_topic or '-', source(args.gt_file),
                                       'map'),
                args.exclusion_seconds, args.exclusion_keyframes, evaluation, args.out)
        else:
            if not args.image_topic or not args.checkpoint:
                return _fail('--image-topic and --checkpoint are required (or give --records)')
            detector = DetectorConfig(top_k=args.top_k, exclusion_seconds=args.exclusion_seconds,
                                      exclusion_keyframes=args.exclusion_keyframes,
                                      min_margin=args.min_margin, consistency=args.consistency)
            if args.threshold is not None:
                detector = replace(detector, threshold=args.threshold)
            detector.validate()
            query = None
            if args.query_bag is not None:
                query = BagInput(args.query_bag, args.query_image_topic or args.image_topic,
                                 source(args.query_gt_file), 'query')
            spec = EvalSpec(
                map_input=BagInput(args.bag, args.image_topic, source(args.gt_file), 'map'),
                query_input=query, checkpoint=args.checkpoint, backbone=args.backbone,
                heights=tuple(args.heights), policy=args.policy, device=args.device,
                precision=args.precision, batch_size=args.batch_size,
                keyframes=KeyframePolicy(args.keyframes, interval_s=args.keyframe_interval,
                                         distance_m=args.keyframe_distance,
                                         angle_rad=args.keyframe_angle),
                detector=detector, evaluation=evaluation, cache_dir=args.cache_dir,
                use_cache=not args.no_cache, progress=not args.no_progress)
            report = run_evaluation(spec, args.out)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    print((args.out / 'summary.md').read_text(encoding='utf-8'), end='')
    print(f'\nreport: {args.out / "report.json"}')
    return 0 if report['runs'] else 1
