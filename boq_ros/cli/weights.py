"""`boq-ros weights`: fetch the authors' released checkpoints once, then work offline.

Files go to the torch hub cache (``$TORCH_HOME/hub/checkpoints``), the same place the authors'
``torch.hub.load`` uses, so a file downloaded either way serves both. A download also records the
file's sha256, which is what makes it count as a verified release (see ``is_released``).
"""
import argparse

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
                                  description='Download and strictly validate a checkpoint, '
                                              'and record its sha256 as a verified release.')
    download.add_argument('--preset', required=True, choices=[*PRESETS, 'all'],
                          help='which checkpoint (or all)')
    download.add_argument('--force', action='store_true',
                          help='download again even if the file is already cached (this also '
                               'verifies a file that was copied into the cache by hand)')
    download.set_defaults(func=run_download)
    listing = actions.add_parser('list', help='show which presets are in the cache',
                                 description='Show the cache path and state of every preset: '
                                             'not downloaded, verified release, or unverified '
                                             '(not fetched by `weights download`, or changed '
                                             'since).')
    listing.set_defaults(func=run_list)


def run_download(args: argparse.Namespace) -> int:
    from boq_ros.model.checkpoint import cache_path, download_checkpoint, is_released
    from boq_ros.model.presets import PRESETS

    presets = list(PRESETS) if args.preset == 'all' else [args.preset]
    for preset in presets:
        path = cache_path(preset)
        if path.is_file() and not args.force:
            state = 'verified release' if is_released(path) else (
                'unverified: not fetched by `boq-ros weights download` or changed since; '
                'use --force to download it again')
            print(f'{preset}: already cached at {path} ({state})')
            continue
        print(f'{preset}: downloading {PRESETS[preset].url}')
        download_checkpoint(preset)  # a CheckpointError reaches boq_ros.cli.main
        print(f'{preset}: saved, validated and recorded as a release {path}')
    return 0


def run_list(args: argparse.Namespace) -> int:
    from boq_ros.model.checkpoint import cache_path, is_released
    from boq_ros.model.presets import PRESETS

    for preset in PRESETS:
        path = cache_path(preset)
        if path.is_file():
            size = f'{path.stat().st_size / 1e6:.0f} MB'
            state = 'verified release' if is_released(path) else 'unverified'
        else:
            size, state = '-', 'not downloaded'
        print(f'{preset:<16} {size:<8} {state:<16} {path}')
    return 0
