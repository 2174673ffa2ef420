"""`boq-ros replay`: publish a bag onto live ROS 2 topics and record the node's answers.

This is how users score the live node on their own recordings: the recorded candidate records
are evaluated by the same functions as the offline pipeline (`boq-ros eval`).
"""
import argparse
from pathlib import Path

EPILOG = """\
examples:
  boq-ros replay run1.mcap --topics /camera/image_raw /odom --clock
  boq-ros replay run1.mcap --topics /camera/image_raw --lockstep \\
      --record-topic /loop_candidates --record-out live.jsonl

DDS discovery must stay on this machine: export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a
ROS_DOMAIN_ID (the node's), or pass --allow-network deliberately.
"""


def _remap(text: str) -> tuple[str, str]:
    old, sep, new = text.partition(':=')
    if not sep or not old or not new:
        raise argparse.ArgumentTypeError(f'expected OLD:=NEW, got {text!r}')
    return old, new


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'replay', help="publish a bag onto live ROS 2 topics and record the node's outputs",
        description="Publish a bag's messages from their raw recorded bytes, paced by the bag "
                    'clock, and record what the loop-closure node publishes.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bag', type=Path, help='rosbag2 directory or file (sqlite3, MCAP) '
                                               'or ROS 1 bag')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC',
                        help='bag topics to publish (default: every topic rclpy has a type for)')
    parser.add_argument('--remap', nargs='+', type=_remap, default=[], metavar='OLD:=NEW',
                        help='publish bag topic OLD on live topic NEW')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='bag seconds per wall second (default 1.0)')
    parser.add_argument('--clock', action='store_true',
                        help='publish the bag time on /clock (for use_sim_time:=true)')
    parser.add_argument('--start-offset', type=float, default=0.0, metavar='S',
                        help='skip the first S seconds of the bag')
    parser.add_argument('--qos', choices=('reliable', 'best_effort'), default='reliable',
                        help='reliability of the publishers (default reliable)')
    parser.add_argument('--record-topic', default='loop_candidates', metavar='TOPIC',
                        help="the node's candidate topic (default loop_candidates)")
    parser.add_argument('--record-out', type=Path, metavar='FILE.jsonl',
                        help="record the node's candidates into this JSON-lines file")
    parser.add_argument('--lockstep', action='store_true',
                        help='publish each image only after the node answered the previous '
                             'one (needs --record-out; for nodes that answer every image)')
    parser.add_argument('--depth-topic', action='append', default=[], metavar='TOPIC',
                        help='an image topic of depth images aligned to a camera (repeatable): '
                             'published like the others, but no answer is waited for')
    parser.add_argument('--wait-subscribers', type=float, default=20.0, metavar='S',
                        help='how long to wait for the node before giving up (default 20)')
    parser.add_argument('--answer-timeout', type=float, default=30.0, metavar='S',
                        help='how long to wait for an answer of the node (default 30)')
    parser.add_argument('--allow-network', action='store_true',
                        help='allow DDS discovery beyond localhost')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from boq_ros.cli import UsageError
    from boq_ros.eval.records import write_records
    from boq_ros.ros.replay import ReplayError, ReplayOptions, replay

    recording = args.record_out is not None
    if args.lockstep and not recording:
        raise UsageError("--lockstep waits for the node's answers: give --record-out")
    options = ReplayOptions(
        topics=tuple(args.topics) if args.topics else None, remap=tuple(args.remap),
        rate=args.rate, clock=args.clock, start_offset_s=args.start_offset, qos=args.qos,
        record_topic=args.record_topic if recording else None, lockstep=args.lockstep,
        depth_topics=tuple(args.depth_topic), subscriber_timeout_s=args.wait_subscribers,
        answer_timeout_s=args.answer_timeout,
        allow_network=args.allow_network)
    try:
        options.validate()
    except ReplayError as exc:  # a flag's value that cannot work
        raise UsageError(str(exc)) from exc
    # A ReplayError (a ValueError) or OSError names its cause; boq_ros.cli.main reports it.
    if recording:
        args.record_out.parent.mkdir(parents=True, exist_ok=True)
        write_records(args.record_out, [])
    summary, _ = replay(
        args.bag, options, progress=not args.no_progress,
        on_records=(lambda records: write_records(args.record_out, records, append=True))
        if recording else None)
    print(summary.format())
    if recording:
        print(f'records: {args.record_out}')
    return 130 if summary.interrupted else 0
