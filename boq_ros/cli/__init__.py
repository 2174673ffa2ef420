"""The `boq-ros` command: one subcommand per task, each defined in its own module here.

Every module listed in SUBCOMMANDS exposes ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returns an exit status).

Errors are reported here, once, for every command: a command raises and :func:`main` prints
``boq-ros <command>: error: <message>`` on stderr (the format argparse uses for its own usage
errors) and exits with 2 for usage errors (:class:`UsageError`, or argparse's), 1 for work that
failed (any other ``ValueError`` or ``OSError``) and 130 when interrupted (Ctrl-C).
"""
import argparse
import importlib
import sys
import warnings

# Module name -> one-line summary, in the order `boq-ros --help` lists them.
SUBCOMMANDS = {
    'attention': "render the learned queries' attention heat maps over images",
    'map': 'build a keyframe map from bags or image folders, and inspect maps',
    'eval': 'evaluate loop closure / place recognition on rosbags',
    'replay': "publish a bag onto live ROS 2 topics and record the node's outputs",
    'demo': 'the main job: generate a recording, run the node on it, evaluate what it published',
    'weights': 'download the released BoQ checkpoints into the torch hub cache',
}

EXIT_FAILED = 1
EXIT_USAGE = 2  # what argparse exits with for its own errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class UsageError(ValueError):
    """A combination of arguments that cannot work together; exits 2 like argparse's errors."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='boq-ros',
        description='Visual loop closure with Bag-of-Queries place descriptors.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f'boq_ros.cli.{name}')
        module.register(subparsers)
    return parser


def subcommand(parser: argparse.ArgumentParser,
               args: argparse.Namespace) -> tuple[str, argparse.ArgumentParser]:
    """Name the (nested) subcommand that was parsed, e.g. 'map build', and give its parser."""
    words = []
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subparsers[0].dest, None) if subparsers else None
        if chosen is None:
            return ' '.join(words), parser
        words.append(chosen)
        parser = subparsers[0].choices[chosen]


def command_name(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """Name the (nested) subcommand that was parsed, e.g. 'map build'."""
    return subcommand(parser, args)[0]


def report_error(command: str, message: str, kind: str = 'error') -> None:
    """Print one line in the format argparse uses: 'boq-ros <command>: error: ...'."""
    prog = f'boq-ros {command}' if command else 'boq-ros'
    print(f'{prog}: {kind}: {message}', file=sys.stderr)


def run_command(args: argparse.Namespace, command: str) -> int:
    """Call the parsed command and turn what it raises into one error line and an exit status.

    Other exceptions are bugs and keep their traceback.
    """
    def warn(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        report_error(command, str(message), 'warning')

    warnings.showwarning = warn  # the core's warnings, said like everything else
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        report_error(command, str(exc))
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        report_error(command, str(exc) or type(exc).__name__)
        return EXIT_FAILED
    except KeyboardInterrupt:
        report_error(command, 'interrupted')
        return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run `boq-ros` with `argv` (default: the process arguments) and return the exit status."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)  # usage errors: argparse exits 2
        if extra:  # said by the subcommand, with its usage, not by the top-level parser
            subcommand(parser, args)[1].error(f'unrecognized arguments: {" ".join(extra)}')
    except KeyboardInterrupt:
        report_error('', 'interrupted')
        return EXIT_INTERRUPTED
    return run_command(args, command_name(parser, args))


if __name__ == '__main__':
    sys.exit(main())
