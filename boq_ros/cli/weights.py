"""`boq-ros weights`: fetch the authors' released checkpoints once, then work offline.

Files go to the torch hub cache (``$TORCH_HOME/hub/checkpoints``), the same place the authors'
``torch.hub.load`` uses, so a file downloaded either way serves both.
"""
import argparse
import sys

EPILOG = """\
examples:
  boq-ros weights download --preset resnet50-16384
  boq-ros weights download --preset all
  boq-ros weights list
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from boq_ros.model.presets import PRESETS

    parser = subparsers.add_parser(
        'weights', help='download the released BoQ checkpoints into the torch hub cache',
        description='Download the released BoQ checkpoints into the torch hub cache, or list '
                    'which are there.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest='action', metavar='ACTION', required=True)
    download = actions.add_parser('download', help='download a released checkpoint',
                                  description='Download and strictly validate a checkpoint.')
    download.add_argument('--preset', required=True, choices=[*PRESETS, 'all'],
                          help='which checkpoint (or all)')
    download.add_argument('--force', action='store_true',
                          help='download again even if the file is already cached')
    download.set_defaults(func=run_download)
    listing = actions.add_parser('list', help='show which presets are in the cache',
                                 description='Show the cache path and state of every preset.')
    listing.set_defaults(func=run_list)


def run_download(args: argparse.Namespace) -> int:
    from boq_ros.model.checkpoint import CheckpointError, cache_path, download_checkpoint
    from boq_ros.model.presets import PRESETS

    presets = list(PRESETS) if args.preset == 'all' else [args.preset]
    for preset in presets:
        path = cache_path(preset)
        if path.is_file() and not args.force:
            print(f'{preset}: already cached at {path}')
            continue
        try:
            print(f'{preset}: downloading {PRESETS[preset].url}')
            download_checkpoint(preset)
        except CheckpointError as exc:
            print(f'boq-ros weights: error: {exc}', file=sys.stderr)
            return 1
        print(f'{preset}: saved and validated {path}')
    return 0


def run_list(args: argparse.Namespace) -> int:
    from boq_ros.model.checkpoint import cache_path
    from boq_ros.model.presets import PRESETS

    for preset in PRESETS:
        path = cache_path(preset)
        state = f'{path.stat().st_size / 1e6:.0f} MB' if path.is_file() else 'not downloaded'
        print(f'{preset:<16} {state:<15} {path}')
    return 0
