"""Throughput and latency of the BoQ model: plain eager forward vs the Extractor path.

Random weights in the released format (nothing is downloaded). Rows per preset, precision and
batch size:
  plain      the model as loaded (eager, NCHW, attention maps computed), on a normalised tensor
  extractor  Extractor.describe_tensor on the same tensor (folded BN; on CUDA also pre-cast
             weights, channels-last, CUDA graphs)
  no-graphs  (CUDA only) the same without CUDA graphs
  e2e        Extractor.extract on uint8 camera images (upload + resize + normalise included)

Example (CPU, a few minutes on 2 cores):
  python benchmarks/bench_model.py --batches 1 8 32 --iters 3
"""
import argparse
from collections.abc import Callable
from pathlib import Path
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from boq_ros.extractor import PRECISIONS, Extractor  # noqa: E402
from boq_ros.model import PRESETS, load_boq  # noqa: E402
from boq_ros.model.checkpoint import write_random_checkpoint  # noqa: E402
from boq_ros.preprocess import PreprocessConfig  # noqa: E402

CAMERA = (480, 640)  # camera image (height, width) resized by each preset's 'height' policy


def timed(fn: Callable[[], object], iters: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call of `fn`, synchronising CUDA around every call."""
    def sync() -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {'images_per_s': batch / median, 'median_ms': 1e3 * median,
            'p99_ms': 1e3 * float(np.percentile(times, 99))}


def write_checkpoints(directory: Path, presets: list[str]) -> dict[str, Path]:
    return {p: write_random_checkpoint(directory / f'{p}.pth', p) for p in presets}


def _paths(plain: torch.nn.Module, extractor: Extractor, eager: Extractor | None,
           device: torch.device, x: torch.Tensor, images: list[np.ndarray] | None
           ) -> dict[str, Callable[[], object]]:
    """The timed callables: plain forward (same autocast as the extractor) and Extractor."""
    dtype = PRECISIONS[extractor.precision]

    def run_plain() -> object:
        with torch.inference_mode(), torch.autocast(
                device.type, dtype=dtype, enabled=dtype is not None):
            return plain(x)

    paths = {'plain': run_plain, 'extractor': lambda: extractor.describe_tensor(x)}
    if eager is not None:
        paths['no-graphs'] = lambda: eager.describe_tensor(x)
    if images is not None:
        paths['e2e'] = lambda: extractor.extract(images, 'bgr8')
    return paths


def bench_preset(checkpoint: Path, preset: str, device: torch.device, precisions: list[str],
                 batches: list[int], iters: int, warmup: int, camera: tuple[int, int],
                 height: int | None, e2e: bool) -> list[dict]:
    """Time plain vs Extractor for one preset; returns one row per configuration."""
    config = PreprocessConfig.default_for(preset)
    if height is not None:
        config = PreprocessConfig(config.policy, height, config.multiple)
    size = config.output_size(*camera)
    plain = load_boq(checkpoint, preset=preset).to(device)
    rng = np.random.default_rng(0)
    rows = []
    for precision in precisions:
        extractor = Extractor(load_boq(checkpoint, preset=preset), device=device,
                              precision=precision, preprocess=config, batch_size=max(batches))
        eager = None
        if device.type == 'cuda':
            eager = Extractor(load_boq(checkpoint, preset=preset), device=device,
                              precision=precision, preprocess=config, cuda_graphs=False)
        for batch in batches:
            x = torch.randn(batch, 3, *size, device=device)
            images = [rng.integers(0, 256, (*camera, 3), dtype=np.uint8) for _ in range(batch)]

            paths = _paths(plain, extractor, eager, device, x, images if e2e else None)
            for path, fn in paths.items():
                row = {'preset': preset, 'path': path, 'precision': precision, 'batch': batch,
                       'input': f'{size[0]}x{size[1]}', 'device': str(device)}
                row.update(summarise(timed(fn, iters, warmup, device), batch))
                rows.append(row)
                print_rows([row], header=len(rows) == 1, flush=True)
        del extractor, eager
    return rows


def print_rows(rows: list[dict], header: bool = True, flush: bool = False) -> None:
    if header:
        print(f'| {"preset":<15} | {"input":<8} | {"prec":<4} | {"batch":>5} | {"path":<9} | '
              f'{"images/s":>9} | {"median ms":>9} | {"p99 ms":>8} |')
        print(f'|{"-" * 17}|{"-" * 10}|{"-" * 6}|{"-" * 7}|{"-" * 11}|{"-" * 11}|{"-" * 11}|'
              f'{"-" * 10}|')
    for r in rows:
        print(f'| {r["preset"]:<15} | {r["input"]:<8} | {r["precision"]:<4} | {r["batch"]:>5} | '
              f'{r["path"]:<9} | {r["images_per_s"]:>9.1f} | {r["median_ms"]:>9.2f} | '
              f'{r["p99_ms"]:>8.2f} |', flush=flush)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'auto' (default cpu)")
    p.add_argument('--presets', nargs='+', default=list(PRESETS), choices=list(PRESETS))
    p.add_argument('--precisions', nargs='+', default=['fp32'], choices=list(PRECISIONS))
    p.add_argument('--batches', nargs='+', type=int, default=[1, 8, 32])
    p.add_argument('--iters', type=int, default=3, help='timed calls per configuration')
    p.add_argument('--warmup', type=int, default=1, help='untimed calls first')
    p.add_argument('--height', type=int, default=None,
                   help="override the preprocessing height (default: the preset's)")
    p.add_argument('--camera', nargs=2, type=int, default=list(CAMERA), metavar=('H', 'W'))
    p.add_argument('--no-e2e', action='store_true', help='skip the uint8 end-to-end rows')
    return p


def main() -> int:
    args = parser().parse_args()
    from boq_ros.extractor import resolve_device

    device = resolve_device(args.device)
    print(f'torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads')
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = write_checkpoints(Path(tmp), args.presets)
        for preset in args.presets:
            bench_preset(checkpoints[preset], preset, device, args.precisions, args.batches,
                         args.iters, args.warmup, tuple(args.camera), args.height,
                         not args.no_e2e)
    return 0


if __name__ == '__main__':
    sys.exit(main())
