"""`boq-ros demo`: the main job, end to end, on real DDS confined to this machine.

It generates (or reuses) a recording with ground truth, starts the loop-closure node as its own
process, replays the recording into it, evaluates what the node published with the offline
metrics, runs the offline pipeline on the same recording to show that both agree, and writes the
report and plots.
"""
import argparse
from dataclasses import replace
import os
from pathlib import Path
import shutil
import time
from typing import TYPE_CHECKING

from boq_ros.cli import options

if TYPE_CHECKING:
    from boq_ros.demo import NodeProcess
    from boq_ros.eval.records import CandidateRecord
    from boq_ros.ros.replay import ReplaySummary

EPILOG = """\
The first run writes random weights when no released checkpoint is available (say so loudly) and
generates the recording; later runs with the same parameters reuse both. Everything lands in
--out: report/ (report.json, summary.md, plots), run/ (node log, parameters, live records).
Without --checkpoint, the released weights of --preset (default resnet50-16384) are looked up
in the torch hub cache. Old flag names (--image-size, --height, --radius, --backbone) still work
and print a deprecation note.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from boq_ros.eval.metrics import EvalConfig  # numpy only
    from boq_ros.settings import ModelSettings, VerificationSettings

    parser = subparsers.add_parser(
        'demo', help='the main job: generate a recording, run the node on it, evaluate what it '
                     'published',
        description='Generate (or reuse) a recording that revisits places, start the node on '
                    'loopback-only DDS, replay the recording into it and evaluate the loop '
                    'closures it published.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('demo_output'),
                        help='output directory (default demo_output)')
    # The camera's size first: the demo's old --image-size meant it, not the model input size.
    options.add_aliases(parser, parser.add_argument(
        '--camera-size', type=int, nargs=2, default=(320, 240), metavar=('W', 'H'),
        help='camera image size of the generated recording (default 320 240)'),
        old=('--image-size',))
    options.add(parser, ModelSettings, 'checkpoint', 'preset', 'device', 'runtime',
                'input_size', defaults={'input_size': 192})
    parser.add_argument('--frames', type=int, default=300,
                        help='frames in the recording, over 3 laps (default 300)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='replay speed: bag seconds per wall second (default 1.0); the '
                             "replay also waits for the node's answer to each image")
    options.add(parser, EvalConfig, 'radius_m', defaults={'radius_m': 5.0})
    options.add(parser, VerificationSettings, 'verification', 'feature_kind')
    parser.add_argument('--domain-id', type=int,
                        help='ROS_DOMAIN_ID of the node and the replay (default: from the pid)')
    parser.add_argument('--no-offline', action='store_true',
                        help='skip the offline run and the live/offline comparison')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.set_defaults(func=run)


def _say(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; what fails raises ValueError / OSError, reported by boq_ros.cli (exit 1)."""
    from boq_ros import demo
    from boq_ros.eval.groundtruth import ground_truth_for_records
    from boq_ros.eval.metrics import EvalConfig, evaluate
    from boq_ros.eval.records import write_records
    from boq_ros.model.checkpoint import is_released
    from boq_ros.ros.dds import MAX_DOMAIN_ID, safe_dds_environment
    from boq_ros.ros.pose_graph_node import wait_for_path
    from boq_ros.settings import ModelSettings, PoseGraphSettings
    from boq_ros.trajectory import Trajectory

    started = time.monotonic()
    out = args.out.resolve()
    recording = demo.DemoRecording(frames=args.frames, image_size=tuple(args.camera_size))
    recording.validate()
    evaluation = options.build(EvalConfig, args)
    domain_id = (os.getpid() % MAX_DOMAIN_ID) + 1 if args.domain_id is None else args.domain_id
    run_dir = out / 'run'
    shutil.rmtree(run_dir, ignore_errors=True)  # results of an earlier run would mislead
    run_dir.mkdir(parents=True)

    weights = demo.choose_weights(args.checkpoint, args.preset, out / 'checkpoints')
    model_settings = options.build(ModelSettings, args, checkpoint=str(weights.path),
                                   resize_policy='height')
    model = model_settings.load()  # refuses a bad checkpoint before anything starts
    _say(f'weights: {weights.source}, model {model.model_id}')
    if weights.random:
        _say('\n' + demo.RANDOM_WEIGHTS_NOTE.format(preset=model.config.name) + '\n')
    bag, reused = demo.ensure_recording(out / 'recordings', recording)
    _say(f'recording: {bag} ({"reused" if reused else "generated"}: {recording.frames} frames '
         f'of {recording.image_size[0]}x{recording.image_size[1]} over {recording.laps} laps '
         f'at {recording.rate_hz:g} Hz)')

    verification = replace(demo.demo_verification(), verification=args.verification,
                           feature_kind=args.feature_kind)
    settings = demo.NodeSettings(model=model_settings, map_directory=run_dir / 'maps',
                                 detector=demo.demo_detector(recording),
                                 verification=verification)
    env = safe_dds_environment(domain_id, run_dir / 'ros_log')
    os.environ.update(env)  # this process's replay joins the node's domain, loopback only
    params = demo.write_params_file(run_dir / 'node_params.yaml', settings.parameters())
    live_path = run_dir / 'live_candidates.jsonl'
    write_records(live_path, [])
    log_path = run_dir / 'node.log'
    graph_settings = PoseGraphSettings()
    backend_params = demo.write_params_file(run_dir / 'pose_graph_params.yaml',
                                            demo.backend_parameters(run_dir, graph_settings))
    _say(f'node: starting on ROS_DOMAIN_ID {domain_id} (loopback only), log {log_path}; '
         f'pose graph node beside it, log {run_dir / "pose_graph.log"}')
    backend = demo.NodeProcess(demo.backend_command(backend_params), env,
                               run_dir / 'pose_graph.log')
    node = demo.NodeProcess(demo.node_command(params), env, log_path)
    try:
        summary, records = _replay(bag, live_path, node, domain_id, args)
        keyframes = len({r.query_stamp_ns for r in records})
        try:
            wait_for_path(keyframes, domain_id, 120.0, backend.alive)
        except (RuntimeError, TimeoutError) as err:
            raise demo.DemoError(f'{err}; end of its log:\n{backend.log_tail()}') from None
    finally:
        try:
            status = node.stop()
        finally:
            backend_status = backend.stop()
    _say(summary.format())
    for name, process, code in (('node', node, status), ('pose graph node', backend,
                                                         backend_status)):
        if code != 0:
            raise demo.DemoError(f'the {name} did not shut down cleanly (exit status {code}); '
                                 f'end of its log:\n{process.log_tail()}')
    _say('node and pose graph node: stopped cleanly')
    if summary.dropped:
        raise demo.DemoError(f'the node never answered {summary.dropped} of {summary.images} '
                             f'images; end of its log:\n{node.log_tail()}')

    trajectory = Trajectory.from_bag(bag, demo.GROUND_TRUTH_TOPIC)
    detector = settings.detector
    ground_truth, kept, unknown = ground_truth_for_records(
        records, {demo.SESSION: trajectory}, detector.exclusion_seconds,
        detector.exclusion_keyframes)
    if unknown:
        raise demo.DemoError(f'{unknown} records of the node name keyframes that the recording '
                             'has no ground truth for')
    verifying = settings.verification.verification
    live = demo.DemoRun('live node', kept, evaluate(kept, ground_truth, evaluation,
                                                    pr_score='inliers' if verifying
                                                    else 'similarity'),
                        summary.images, {'replay': summary.wall_s})
    runs = [live]
    extra = {'replay': {'published': summary.published, 'images': summary.images,
                        'answered': summary.answered, 'wall_s': summary.wall_s,
                        'node_log': str(node.log_path), 'records': str(live_path)}}
    agreement, differences, offline_records = None, [], None
    if not args.no_offline:
        _say('offline: the same recording through the offline pipeline (same model, settings)')
        offline_runs, _ = demo.offline_run(bag, model, settings, evaluation,
                                           progress=not args.no_progress)
        offline = offline_runs[0]
        offline_records = offline.records
        write_records(run_dir / 'offline_candidates.jsonl', offline.records)
        runs += offline_runs
        agreement = demo.compare_records(records, offline.records,
                                         threshold=settings.detector.threshold)
        differences = demo.metric_differences(live.result, offline.result)
        extra['agreement'] = {'records_agree': agreement.agree, 'records': agreement.format(),
                              'metric_differences': differences}
    inputs = {'bag': str(bag), 'query_bag': None, 'image_topic': demo.IMAGE_TOPIC,
              'ground_truth': f'topic {demo.GROUND_TRUTH_TOPIC}', 'odometry': demo.ODOM_TOPIC,
              'checkpoint': str(weights.path),
              'model_id': ', '.join(summary.model_ids), 'random_weights': not is_released(model),
              'node_parameters': settings.parameters()}
    top_n = settings.verification.verify_top_n
    kept_revisits = {r.label: r.result.kept_in_top(top_n) for r in runs}
    extra['kept_revisits'] = {'top_n': top_n, 'by_run': kept_revisits}
    correction = demo.drift_correction(bag, records,
                                       Trajectory.from_tum(run_dir / 'optimised_keyframes.tum'),
                                       offline_records, graph_settings, out / 'report')
    report = demo.write_report(out / 'report', runs, ground_truth, inputs, settings.detector,
                               evaluation, extra, correction)
    _say('')
    _say((out / 'report' / 'summary.md').read_text(encoding='utf-8'))
    _say(f'pose graph: ATE {correction.ratio(demo.LIVE_LABEL):.1f}x lower than odometry alone, '
         'from the loops and relative poses the live node published')
    for label, kept_fraction in kept_revisits.items():
        if kept_fraction is not None:
            _say(f'{label}: {100 * kept_fraction:.1f} % of the revisits retrieval put in its '
                 f'top {top_n} became correct loops')
    if agreement is not None:
        _say(agreement.format())
        _say('metrics live vs offline: ' + ('identical' if not differences else
                                            'DIFFER: ' + '; '.join(differences[:10])))
    if weights.random:
        _say('(random weights: these numbers show that the pipeline works, not how well BoQ '
             'recognises places)')
    _say(f'report: {out / "report"} ({", ".join(report["files"] + report["plots"])}); '
         f'total {time.monotonic() - started:.0f} s')
    if agreement is not None and not (agreement.agree and not differences):
        raise demo.DemoError('the live node and the offline pipeline disagree (see above)')
    return 0


def _replay(bag: Path, live_path: Path, node: 'NodeProcess', domain_id: int,
            args: argparse.Namespace) -> tuple['ReplaySummary', list['CandidateRecord']]:
    from boq_ros import demo
    from boq_ros.eval.records import write_records
    from boq_ros.ros.replay import NodeGone, ReplayOptions, replay

    options = ReplayOptions(topics=(demo.IMAGE_TOPIC, demo.CAMERA_INFO_TOPIC, demo.DEPTH_TOPIC,
                                    demo.ODOM_TOPIC), rate=args.rate,
                            record_topic=demo.CANDIDATE_TOPIC, lockstep=True,
                            depth_topics=(demo.DEPTH_TOPIC,),
                            # the pose graph node listens too: the recorder and it, the node and it
                            listeners=((demo.CANDIDATE_TOPIC, 2), (demo.ODOM_TOPIC, 2)),
                            subscriber_timeout_s=300.0, answer_timeout_s=120.0)
    try:
        summary, records = replay(
            bag, options, domain_id=domain_id, progress=not args.no_progress,
            peer_alive=node.alive,
            on_records=lambda rows: write_records(live_path, rows, append=True))
    except NodeGone:
        raise demo.DemoError(f'the node exited early; end of its log:\n{node.log_tail()}'
                             ) from None
    if summary.interrupted:
        raise KeyboardInterrupt
    return summary, records
