"""`boq-ros eval`: score loop closure or place recognition on the user's own recordings.

One bag: loop closure within the run (the detector's exclusion window applies). A map bag and a
query bag: place recognition across runs. `--records` evaluates recorded candidates instead (what
the live node published during `boq-ros replay`), with the same metrics. The model, pipeline,
keyframe, detector and verification flags are generated from the settings
(``boq_ros/cli/options.py``), so they have the node parameters' names, defaults and ranges.
Verification is on by default: each input size gives an appearance-only row and a verified one.
"""
import argparse
from pathlib import Path

from boq_ros.cli import options

EPILOG = """\
examples:
  boq-ros eval run1.mcap --image-topic /camera/image_raw --pose-topic /odom \\
      --checkpoint resnet50-16384 --radius-m 5 --out eval_run1
  boq-ros eval map_run --query-bag query_run --image-topic /cam/compressed \\
      --pose-file map.tum --query-pose-file query.tum --checkpoint boq.pth --out eval_pr
  boq-ros eval run1.mcap ... --input-size 288 320 384 432 480   # the resolution study
  boq-ros eval run1.mcap --pose-topic /odom --records live.jsonl --out eval_live
  boq-ros eval run1.mcap ... --pose-topic /ground_truth/odom --odometry-topic /odom \\
      --depth-topic /camera/depth/image_raw --out eval_slam   # drift corrected by the loops

--top-k is the number of candidates the node would publish; eval proposes at least 20 (the
deepest Recall@K) whatever it is, and only the best candidate's acceptance uses the threshold.
Verification (default on, --no-verification for appearance only) adds a row per input size:
the same candidates verified with local features (--depth-topic for metric poses).
Old flag names (--gt-topic, --heights, --radius, --keyframes, --backbone, ...) still work and
print a deprecation note.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from boq_ros.eval.metrics import EvalConfig  # numpy only
    from boq_ros.settings import (
        DetectorConfig,
        KeyframePolicy,
        ModelSettings,
        PipelineConfig,
        PoseGraphSettings,
        VerificationSettings,
    )

    parser = subparsers.add_parser(
        'eval', help='evaluate loop closure / place recognition on rosbags',
        description='Evaluate BoQ loop closure (one bag) or place recognition (map bag + query '
                    'bag) against ground truth; write report.json, summary.md, records and '
                    'PNG plots into --out and print the summary.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', type=Path, help='rosbag2 directory or file (sqlite3, MCAP) or '
                                               'ROS 1 bag; the map in place-recognition mode')
    parser.add_argument('--query-bag', type=Path, help='query recording (place recognition)')
    options.add_aliases(parser, parser.add_argument(
        '--image-topic', help='camera topic (Image or CompressedImage)'))
    parser.add_argument('--query-image-topic', help='camera topic of the query bag '
                                                    '(default: --image-topic)')
    parser.add_argument('--out', type=Path, required=True,
                        help='output directory (written only once the results exist)')
    gt = parser.add_argument_group('ground truth (one source)')
    for name, kwargs in (
            ('--pose-topic', dict(help='Odometry, PoseStamped, PoseWithCovarianceStamped, TF or '
                                       'NavSatFix topic of the bag(s); also the poses of '
                                       'distance keyframes. A bag with exact poses under '
                                       '/ground_truth/ (e.g. /ground_truth/odom) is scored '
                                       'against those only')),
            ('--pose-child-frame', dict(help='child frame to follow on a TF topic')),
            ('--pose-file', dict(type=Path, help='TUM or KITTI trajectory file of the bag')),
            ('--query-pose-file', dict(type=Path, help='trajectory file of the query bag')),
            ('--pose-format', dict(choices=('tum', 'kitti'), default='tum',
                                   help='format of the trajectory files (default tum)')),
            ('--pose-times', dict(type=Path, help='KITTI times file (default: one pose per '
                                                  'image frame of the bag)'))):
        options.add_aliases(gt, gt.add_argument(name, **kwargs))
    model = parser.add_argument_group('model and pipeline')
    options.add(model, ModelSettings, 'checkpoint', 'preset', 'device', 'precision',
                'runtime', 'resize_policy', 'input_size', several=('input_size',))
    options.add(model, PipelineConfig, 'batch_size', 'max_image_pixels')
    kf = parser.add_argument_group('keyframes')
    options.add(kf, KeyframePolicy, 'keyframe_mode', 'keyframe_interval_s', 'keyframe_distance_m',
                'keyframe_angle_rad', 'pose_tolerance_s')
    det = parser.add_argument_group('detector and metrics')
    options.add(det, DetectorConfig, 'top_k', 'exclusion_seconds', 'exclusion_keyframes',
                'threshold_mode', 'threshold', 'adaptive_window', 'adaptive_offset',
                'min_margin', 'consistency', 'consistency_keyframes')
    options.add(det, EvalConfig, 'radius_m')
    ver = parser.add_argument_group('geometric verification (a verified row per input size)')
    options.add_all(ver, VerificationSettings)
    ver.add_argument('--depth-topic', help='depth image topic aligned to the image topic (16UC1 '
                                           'mm or 32FC1 m): metric relative poses (default: '
                                           'none, poses up to scale)')
    ver.add_argument('--camera-info-topic', help="intrinsics of the image topic (default: its "
                                                 "conventional .../camera_info when the bag "
                                                 "has it; '': none, uncalibrated)")
    slam = parser.add_argument_group(
        'pose graph (the reference backend, offline: odometry vs optimised against ground truth)')
    slam.add_argument('--odometry-topic', help="the bag's odometry (nav_msgs/Odometry ...): "
                      'run the pose graph over the verified loops and report ATE / RPE of the '
                      'odometry and of the optimised keyframe trajectory')
    options.add_all(slam, PoseGraphSettings)
    run_group = parser.add_argument_group('run')
    run_group.add_argument('--records', type=Path, help='evaluate these recorded candidates '
                                                       '(JSON lines) instead of running a model')
    run_group.add_argument('--cache-dir', type=Path, help='descriptor cache (default '
                                                          '~/.cache/boq_ros/descriptors)')
    run_group.add_argument('--no-cache', action='store_true', help='always recompute')
    run_group.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; UsageError for flags that cannot work together (exit 2).

    Failed work raises ValueError / OSError, which boq_ros.cli reports (exit 1).
    """
    from boq_ros.cli import UsageError
    from boq_ros.eval.metrics import EvalConfig
    from boq_ros.eval.report import markdown_summary
    from boq_ros.eval.runner import (
        BagInput,
        EvalSpec,
        GroundTruthSource,
        run_evaluation,
        run_records_evaluation,
    )
    from boq_ros.settings import (
        DetectorConfig,
        KeyframePolicy,
        ModelSettings,
        PipelineConfig,
        PoseGraphSettings,
        VerificationSettings,
    )

    if (args.pose_topic is None) == (args.pose_file is None):
        raise UsageError('give exactly one ground truth: --pose-topic or --pose-file')
    if args.query_bag is not None and args.pose_file is not None and (
            args.query_pose_file is None):
        raise UsageError('--pose-file with --query-bag needs --query-pose-file for the query bag')

    def ground_truth(path: Path | None) -> GroundTruthSource:
        if args.pose_topic is not None:
            return GroundTruthSource(topic=args.pose_topic, child_frame=args.pose_child_frame)
        return GroundTruthSource(file=path, format=args.pose_format, kitti_times=args.pose_times)

    evaluation = options.build(EvalConfig, args)
    if args.records is not None:
        _refuse_estimated_ground_truth(args)
        report = run_records_evaluation(
            args.records, BagInput(args.bag, args.image_topic or '-',
                                   ground_truth(args.pose_file), 'map'),
            args.exclusion_seconds, args.exclusion_keyframes, evaluation, args.out,
            args.odometry_topic, options.build(PoseGraphSettings, args))
    else:
        if not args.image_topic or not args.checkpoint:
            raise UsageError('--image-topic and --checkpoint are required (or give --records)')
        cameras = dict(depth_topic=args.depth_topic, camera_info_topic=args.camera_info_topic)
        query = None
        if args.query_bag is not None:
            query = BagInput(args.query_bag, args.query_image_topic or args.image_topic,
                             ground_truth(args.query_pose_file), 'query', **cameras)
        try:
            spec = EvalSpec(
                map_input=BagInput(args.bag, args.image_topic, ground_truth(args.pose_file),
                                   'map', **cameras),
                query_input=query, model=options.build(ModelSettings, args, input_size=0),
                input_sizes=tuple(args.input_size),
                pipeline=options.build(PipelineConfig, args),
                keyframes=options.build(KeyframePolicy, args),
                detector=options.build(DetectorConfig, args), evaluation=evaluation,
                verification=options.build(VerificationSettings, args),
                cache_dir=args.cache_dir, use_cache=not args.no_cache,
                progress=not args.no_progress, odometry_topic=args.odometry_topic,
                pose_graph=options.build(PoseGraphSettings, args))
        except ValueError as err:  # settings that cannot work together
            raise UsageError(str(err)) from err
        _refuse_estimated_ground_truth(args)
        report = run_evaluation(spec, args.out)
    print(markdown_summary(report), end='')
    print(f'\nreport: {args.out / "report.json"}')
    return 0


def _refuse_estimated_ground_truth(args: argparse.Namespace) -> None:
    """Refuse a --pose-topic beside exact poses under /ground_truth/: it would score odometry."""
    from boq_ros.bags import open_bag
    from boq_ros.cli import UsageError
    from boq_ros.trajectory import ground_truth_topics

    if args.pose_topic is None:
        return
    for path in (args.bag, args.query_bag):
        if path is None:
            continue
        with open_bag(path) as bag:
            exact = ground_truth_topics(bag)
        if exact and args.pose_topic not in exact:
            raise UsageError(
                f'--pose-topic {args.pose_topic} is not ground truth: {path} holds exact poses '
                f'on {", ".join(exact)}; score against them (--pose-topic {next(iter(exact))})')
