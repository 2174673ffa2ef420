"""`boq-ros attention`: draw what the learned queries look at, over your own images.

Each image is shown with the chosen queries' cross-attention maps on top (like the paper's
Figures 5-7): a quick way to see which scene parts a checkpoint relies on.
"""
import argparse
from pathlib import Path
import sys

import numpy as np

EPILOG = """\
examples:
  boq-ros attention frame1.png frame2.png --checkpoint resnet50-16384 --queries 0 5 12 \\
      --out attention.png
  boq-ros attention night.jpg --checkpoint ~/weights/dinov2_12288.pth --block 1 \\
      --queries 3 7 --policy square --out night_attention.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'attention', help="render the learned queries' attention heat maps over images",
        description="Render each image with the chosen queries' cross-attention maps "
                    'over it (one row per image, one column per query).',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='+', type=Path, metavar='IMAGE',
                        help='image files (anything OpenCV reads: 8-bit colour or gray, 16-bit)')
    parser.add_argument('--checkpoint', required=True, metavar='PATH_OR_PRESET',
                        help='checkpoint file, or a preset name whose weights are in the torch '
                             'hub cache (see `boq-ros weights`)')
    parser.add_argument('--backbone', choices=['resnet50', 'dinov2'],
                        help='backbone of the checkpoint (default: inferred from its keys)')
    parser.add_argument('--queries', nargs='+', type=int, default=[0, 1, 2, 3], metavar='Q',
                        help='query indices to show (default 0 1 2 3)')
    parser.add_argument('--block', type=int, default=0, help='BoQ block (default 0)')
    parser.add_argument('--policy', choices=['height', 'square'], default='height',
                        help='resize policy (default height: aspect-preserving)')
    parser.add_argument('--size', type=int,
                        help="resize target in pixels (default: the preset's, 384 or 322)")
    parser.add_argument('--device', default='auto', help='auto, cpu or cuda (default auto)')
    parser.add_argument('--out', type=Path, required=True, metavar='FILE.png',
                        help='output image')
    parser.set_defaults(func=run)


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """Read an image file as OpenCV does and name its encoding."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f'cannot read image {path} (missing or not an image)')
    channels = 1 if image.ndim == 2 else image.shape[2]
    encodings = {(np.uint8, 1): 'mono8', (np.uint16, 1): 'mono16', (np.uint8, 3): 'bgr8',
                 (np.uint8, 4): 'bgra8'}
    encoding = encodings.get((image.dtype.type, channels))
    if encoding is None:
        raise ValueError(f'{path}: unsupported image type {image.dtype} with {channels} '
                         'channels (expected 8-bit gray/BGR/BGRA or 16-bit gray)')
    return image, encoding


def run(args: argparse.Namespace) -> int:
    from boq_ros.attention import render_attention
    from boq_ros.extractor import Extractor
    from boq_ros.model import load_boq
    from boq_ros.preprocess import PreprocessConfig

    try:
        loaded = [read_image(p) for p in args.images]
        model = load_boq(args.checkpoint, args.backbone)
        config = PreprocessConfig.default_for(model.config.name, args.policy)
        if args.size is not None:
            config = PreprocessConfig(config.policy, args.size, config.multiple)
        extractor = Extractor(model, device=args.device, batch_size=1, preprocess=config)
        out = render_attention([im for im, _ in loaded], extractor, args.queries, args.out,
                               encodings=[enc for _, enc in loaded], block=args.block,
                               labels=[p.name for p in args.images])
    except (ValueError, OSError) as exc:
        print(f'boq-ros attention: error: {exc}', file=sys.stderr)
        return 1
    print(f'wrote {out}')
    return 0
