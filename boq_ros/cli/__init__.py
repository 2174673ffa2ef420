"""The `boq-ros` command: one subcommand per task, each defined in its own module here.

Every module listed in SUBCOMMANDS exposes ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returns an exit status).
"""
import argparse
import importlib
import sys

# Module name -> one-line summary, in the order `boq-ros --help` lists them.
SUBCOMMANDS = {
    'attention': "render the learned queries' attention heat maps over images",
    'map': 'build a keyframe map from bags or image folders, and inspect maps',
    'eval': 'evaluate loop closure / place recognition on rosbags',
    'replay': "publish a bag onto live ROS 2 topics and record the node's outputs",
    'demo': 'the main job: generate a recording, run the node on it, evaluate what it published',
    'weights': 'download the released BoQ checkpoints into the torch hub cache',
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='boq-ros',
        description='Visual loop closure with Bag-of-Queries place descriptors.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f'boq_ros.cli.{name}')
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
