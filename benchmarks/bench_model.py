"""Speed and fidelity of the BoQ model per inference runtime, measured side by side in one run.

Random weights in the released format (nothing is downloaded). For each preset, input size and
batch, the candidates run interleaved (one call of each per repetition, so a load change hits
all alike) and the table gives medians:
  eager      the model as loaded, fp32: `model(x)` (attention maps computed), the baseline
  torch      Extractor.describe_tensor with runtime torch (folded BN; on CUDA also pre-cast
             weights, channels-last, CUDA graphs): the project's path before other runtimes
  openvino / onnxruntime (CPU), tensorrt / compile (CUDA): Extractor with that runtime, after
             its export/compile and fidelity check (not timed; its time is printed apart)
  e2e        (--e2e) Extractor.extract with runtime auto on uint8 camera images
Fidelity: max |difference| and min cosine of each candidate's descriptors to eager fp32 on the
same batch. 'x eager' is eager's median over the candidate's.

Example (CPU, about 10 minutes on 2 cores):
  python benchmarks/bench_model.py
  python benchmarks/bench_model.py --presets resnet50-16384 --sizes 384x512 --batches 1
"""
import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from boq_ros import runtimes  # noqa: E402
from boq_ros.extractor import PRECISIONS, Extractor, resolve_device  # noqa: E402
from boq_ros.model import PRESETS, load_boq  # noqa: E402
from boq_ros.model.checkpoint import write_random_checkpoint  # noqa: E402
from boq_ros.preprocess import PreprocessConfig  # noqa: E402

CAMERA = (480, 640)  # camera image (height, width) of the e2e rows
DEFAULT_PRECISIONS = {'cpu': ['fp32', 'bf16'], 'cuda': ['fp32', 'fp16', 'bf16']}


@dataclass
class Candidate:
    """One timed path: a name, the precision that runs, and its call."""

    runtime: str
    precision: str
    call: Callable[[], torch.Tensor]
    prepare_s: float = 0.0


def write_checkpoints(directory: Path, presets: list[str]) -> dict[str, Path]:
    return {p: write_random_checkpoint(directory / f'{p}.pth', p) for p in presets}


def fit_shape(preset: str, shape: tuple[int, int]) -> tuple[int, int]:
    """The nearest input the backbone accepts (DINOv2: sides rounded to multiples of 14)."""
    multiple = PRESETS[preset].stride if PRESETS[preset].backbone == 'dinov2' else 1
    return tuple(max(multiple, round(s / multiple) * multiple) for s in shape)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def candidates(checkpoint: Path, preset: str, device: torch.device, shape: tuple[int, int],
               batch: int, names: list[str], precisions: list[str], cache: Path,
               x: torch.Tensor, e2e: bool, built: dict) -> list[Candidate]:
    """Build every candidate that can run here (prepared, so its first call is not timed).

    `built` keeps the extractors per (preset, shape, runtime, precision) across batch sizes:
    an engine or compiled graph is prepared once.
    """
    plain = load_boq(checkpoint, preset=preset).to(device)

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return plain(x)[0]

    found = [Candidate('eager', 'fp32', eager)]
    for name in names:
        for precision in precisions:
            try:
                runtimes.candidates(name, device, precision)
            except runtimes.RuntimeUnavailable as e:
                print(f'  skipped {name} {precision}: {e}', flush=True)
                continue
            key = (preset, shape, name, precision)
            started = time.perf_counter()
            if key not in built:
                extractor = Extractor(load_boq(checkpoint, preset=preset), device=device,
                                      precision=precision, runtime=name, batch_size=batch,
                                      cache_dir=cache)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter('ignore')
                        extractor.prepare(shape)
                except (runtimes.RuntimeUnavailable, runtimes.FidelityError) as e:
                    print(f'  skipped {name} {precision}: {e}', flush=True)
                    extractor = None
                built[key] = extractor
            extractor = built[key]
            if extractor is None:
                continue
            ran = extractor.runtime_status().get(f'{shape[0]}x{shape[1]}', f'torch {precision}')
            found.append(Candidate(name, ran.split(',')[0].split()[1],
                                   lambda e=extractor: e.describe_tensor(x),
                                   time.perf_counter() - started))
    if e2e:
        config = PreprocessConfig('height', shape[0], PRESETS[preset].stride
                                  if PRESETS[preset].backbone == 'dinov2' else 1)
        auto = Extractor(load_boq(checkpoint, preset=preset), device=device, runtime='auto',
                         preprocess=config, batch_size=batch, cache_dir=cache)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (*CAMERA, 3), dtype=np.uint8) for _ in range(batch)]
        started = time.perf_counter()
        auto.extract(images[:1], 'bgr8')
        found.append(Candidate('e2e auto', 'fp32',
                               lambda: torch.from_numpy(auto.extract(images, 'bgr8')),
                               time.perf_counter() - started))
    return found


def measure(found: list[Candidate], device: torch.device, iters: int, warmup: int
            ) -> dict[int, list[float]]:
    """Seconds per call of each candidate, interleaved repetition by repetition."""
    for c in found:
        for _ in range(warmup):
            c.call()
    _sync(device)
    times: dict[int, list[float]] = {i: [] for i in range(len(found))}
    for _ in range(iters):
        for i, c in enumerate(found):
            start = time.perf_counter()
            c.call()
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return times


def bench(checkpoint: Path, preset: str, device: torch.device, shape: tuple[int, int],
          batch: int, names: list[str], precisions: list[str], iters: int, warmup: int,
          cache: Path, e2e: bool = False, built: dict | None = None) -> list[dict]:
    """One table block: every candidate at one preset, input size and batch."""
    x = torch.randn(batch, 3, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    found = candidates(checkpoint, preset, device, shape, batch, names, precisions, cache, x,
                       e2e, {} if built is None else built)
    times = measure(found, device, iters, warmup)
    reference = found[0].call().float().cpu()
    base = statistics.median(times[0])
    rows = []
    for i, c in enumerate(found):
        median = statistics.median(times[i])
        row = {'preset': preset, 'input': f'{shape[0]}x{shape[1]}', 'batch': batch,
               'runtime': c.runtime, 'precision': c.precision, 'median_ms': 1e3 * median,
               'p90_ms': 1e3 * float(np.percentile(times[i], 90)),
               'images_per_s': batch / median, 'speedup': base / median,
               'prepare_s': c.prepare_s, 'device': str(device)}
        if not c.runtime.startswith('e2e'):
            fidelity = runtimes.compare(reference.numpy(), c.call().float().cpu().numpy(),
                                        shape, c.precision)
            row |= {'max_abs': fidelity.max_abs, 'min_cosine': fidelity.min_cosine}
        rows.append(row)
    print_rows(rows, header=False)
    return rows


HEADER = (f'| {"preset":<15} | {"input":<8} | {"batch":>5} | {"runtime":<11} | {"prec":<4} | '
          f'{"median ms":>9} | {"p90 ms":>8} | {"images/s":>9} | {"x eager":>7} | '
          f'{"max abs":>8} | {"min cos":>9} | {"prep s":>6} |')


def print_rows(rows: list[dict], header: bool = True) -> None:
    if header:
        print(HEADER)
        print('|' + '|'.join('-' * (len(cell) + 2) for cell in HEADER.split('|')[1:-1]
                             if cell) + '|')
    for r in rows:
        fid = (f'{r["max_abs"]:>8.1e} | {r["min_cosine"]:>9.6f}' if 'max_abs' in r
               else f'{"":>8} | {"":>9}')
        print(f'| {r["preset"]:<15} | {r["input"]:<8} | {r["batch"]:>5} | {r["runtime"]:<11} | '
              f'{r["precision"]:<4} | {r["median_ms"]:>9.2f} | {r["p90_ms"]:>8.2f} | '
              f'{r["images_per_s"]:>9.1f} | {r["speedup"]:>7.2f} | {fid} | '
              f'{r["prepare_s"]:>6.1f} |', flush=True)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be HxW, got {text!r}') from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f'size must be at least 32x32, got {text!r}')
    return h, w


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'auto' (default cpu)")
    p.add_argument('--presets', nargs='+', default=list(PRESETS), choices=list(PRESETS))
    p.add_argument('--sizes', nargs='+', type=parse_size, default=[(384, 512), (192, 256)],
                   metavar='HxW', help='model input sizes (DINOv2: nearest multiples of 14)')
    p.add_argument('--batches', nargs='+', type=int, default=[1, 4])
    p.add_argument('--runtimes', nargs='+', default=None,
                   choices=[n for n in runtimes.RUNTIME_NAMES if n != 'auto'],
                   help='default: torch and every runtime of the device')
    p.add_argument('--precisions', nargs='+', default=None, choices=list(PRECISIONS),
                   help='default: fp32 bf16 on a CPU, fp32 fp16 bf16 on CUDA')
    p.add_argument('--iters', type=int, default=9, help='interleaved repetitions (median)')
    p.add_argument('--warmup', type=int, default=1, help='untimed calls of each first')
    p.add_argument('--e2e', action='store_true',
                   help='add Extractor.extract (auto) on uint8 480x640 camera images')
    return p


def main() -> int:
    args = parser().parse_args()
    device = resolve_device(args.device)
    names = args.runtimes or ['torch', *(n for n, cls in runtimes.RUNTIMES.items()
                                         if device.type in cls.device_types)]
    precisions = args.precisions or DEFAULT_PRECISIONS[device.type]
    print(f'torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, '
          f'{args.iters} interleaved repetitions')
    print_rows([])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = write_checkpoints(Path(tmp), args.presets)
        built: dict = {}
        for preset in args.presets:
            for size in args.sizes:
                for batch in args.batches:
                    bench(checkpoints[preset], preset, device, fit_shape(preset, size), batch,
                          names, precisions, args.iters, args.warmup, Path(tmp) / 'cache',
                          args.e2e, built)
                built.clear()  # free the extractors of the finished shape
    return 0


if __name__ == '__main__':
    sys.exit(main())
