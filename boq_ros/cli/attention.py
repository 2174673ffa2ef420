"""`boq-ros attention`: draw what the learned queries look at, over your own images.

Each image is shown with the chosen queries' cross-attention maps on top (like the paper's
Figures 5-7): a quick way to see which scene parts a checkpoint relies on.
"""
import argparse
from pathlib import Path

EPILOG = """\
examples:
  boq-ros attention frame1.png frame2.png --checkpoint resnet50-16384 --queries 0 5 12 \\
      --out attention.png
  boq-ros attention night.jpg --checkpoint ~/weights/dinov2_12288.pth --block 1 \\
      --queries 3 7 --resize-policy square --out night_attention.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'attention', help="render the learned queries' attention heat maps over images",
        description="Render each image with the chosen queries' cross-attention maps "
                    'over it (one row per image, one column per query).',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from boq_ros.cli import options  # noqa: PLC0415 (keep `boq-ros --help` fast)
    from boq_ros.settings import ModelSettings  # noqa: PLC0415

    parser.add_argument('images', nargs='+', type=Path, metavar='IMAGE',
                        help='JPEG or PNG files (8-bit colour or gray, 16-bit gray)')
    options.add(parser, ModelSettings, 'checkpoint', 'preset', 'device', 'resize_policy',
                'input_size', required=('checkpoint',))
    parser.add_argument('--queries', nargs='+', type=int, default=[0, 1, 2, 3], metavar='Q',
                        help='query indices to show (default 0 1 2 3)')
    parser.add_argument('--block', type=int, default=0, help='BoQ block (default 0)')
    parser.add_argument('--out', type=Path, required=True, metavar='FILE.png',
                        help='output image')
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from boq_ros.attention import render_attention  # noqa: PLC0415
    from boq_ros.cli import options  # noqa: PLC0415
    from boq_ros.pipeline import ImageFile, SkippedFrame, decode  # noqa: PLC0415
    from boq_ros.settings import ModelSettings  # noqa: PLC0415

    # Refusals (ValueError, OSError) name their cause; boq_ros.cli.main reports them.
    loaded = []
    for path in args.images:
        try:  # the pipeline's decoder: the same checks as every other image
            loaded.append(decode(ImageFile(path, depth_ok=True)))
        except SkippedFrame as err:  # names the file
            raise ValueError(str(err)) from None
    settings = options.build(ModelSettings, args)
    model = settings.load()
    extractor = settings.extractor(model)
    out = render_attention([im for im, _ in loaded], extractor, args.queries, args.out,
                           encodings=[enc for _, enc in loaded], block=args.block,
                           labels=[p.name for p in args.images])
    print(f'wrote {out}')
    return 0
