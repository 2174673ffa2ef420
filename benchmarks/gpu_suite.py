"""Every GPU measurement of the BoQ model in one short run (a few minutes on an H100).

Run from the repository root:  python3 benchmarks/gpu_suite.py   (or --smoke on a CPU)
Needs only torch, torchvision and numpy; writes $OUT/gpu_suite.json when OUT is set.

Tables (benchmarks/bench_model.py's, candidates interleaved): both presets, batch 1/8/32,
fp32 (TF32 off) / fp16 / bf16: eager forward and the torch runtime (CUDA graphs), then TensorRT
(torch-tensorrt, when installed) at fp16 / bf16 (one engine per preset and precision; fp32
engines are left out to keep the run short), plus end-to-end from
uint8 480x640 camera images (runtime auto); then torch.compile (max-autotune) for ResNet-50 bf16
at batch 1 and 32 while the time budget lasts. Fidelity: GPU fp32 vs CPU fp32 max |diff| per
preset (plain and Extractor path), and fp16/bf16 vs fp32 cosine and error relative to the
distance between images' descriptors; every table row also has its own max abs / min cosine.
Targets: ResNet-50 BoQ at 384x512 at least 6,000 images/s at batch 32 (fp16 or bf16, best
runtime) and at most 0.8 ms at batch 1.
"""
import argparse
import json
import os
from pathlib import Path
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_model  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from boq_ros.extractor import Extractor, resolve_device  # noqa: E402
from boq_ros.model import PRESETS, load_boq  # noqa: E402
from boq_ros.preprocess import PreprocessConfig  # noqa: E402
from boq_ros.runtimes import RUNTIMES  # noqa: E402


def fidelity(checkpoint: Path, preset: str, device: torch.device, camera: tuple[int, int],
             height: int | None) -> dict:
    """Compare the device against the CPU in fp32, and reduced precisions against fp32."""
    config = PreprocessConfig.default_for(preset)
    if height is not None:
        config = PreprocessConfig(config.policy, height, config.multiple)
    size = config.output_size(*camera)
    x = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = load_boq(checkpoint, preset=preset)(x)[0]
        on_device = load_boq(checkpoint, preset=preset).to(device)(x.to(device))[0].cpu()
    result = {'preset': preset, 'input': f'{size[0]}x{size[1]}',
              'plain_fp32_vs_cpu_max_abs': float((on_device - reference).abs().max())}
    # End to end from camera data: upload + resize + normalise on the device vs the CPU.
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (*camera, 3), dtype=np.uint8),
              rng.integers(0, 65536, camera, dtype=np.uint16)]
    encodings = ['bgr8', 'mono16']
    cpu = Extractor(load_boq(checkpoint, preset=preset), device='cpu', preprocess=config,
                    optimize=False).extract(frames, encodings)
    gpu = Extractor(load_boq(checkpoint, preset=preset), device=device,
                    preprocess=config).extract(frames, encodings)
    result['e2e_device_vs_cpu_max_abs'] = float(np.abs(gpu - cpu).max())
    fp32 = None
    for precision in ('fp32', 'fp16', 'bf16'):
        extractor = Extractor(load_boq(checkpoint, preset=preset), device=device,
                              precision=precision, preprocess=config)
        desc = extractor.describe_tensor(x).float().cpu()
        if precision == 'fp32':
            fp32 = desc
            result['extractor_fp32_vs_cpu_max_abs'] = float((desc - reference).abs().max())
            # A batch of 3 replays the graph captured for 4 (padded): same numbers as eager.
            eager = Extractor(load_boq(checkpoint, preset=preset), device=device,
                              preprocess=config, cuda_graphs=False)
            result['extractor_b3_graph_vs_eager_max_abs'] = float(
                (extractor.describe_tensor(x[:3]).cpu() - eager.describe_tensor(x[:3]).cpu())
                .abs().max())
            del eager
        else:
            result[f'{precision}_vs_fp32_min_cosine'] = float((desc * fp32).sum(1).min())
            # Random weights make all descriptors nearly parallel: relate the error to the
            # distance between different images' fp32 descriptors instead.
            spread = torch.pdist(fp32).median()
            result[f'{precision}_err_over_spread'] = float(
                (desc - fp32).norm(dim=1).max() / spread)
        del extractor
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--smoke', action='store_true',
                   help='tiny sizes and iteration counts; runs on a CPU in about a minute')
    p.add_argument('--device', default='auto')
    p.add_argument('--iters', type=int, default=None, help='timed calls per configuration')
    p.add_argument('--budget-s', type=float, default=270,
                   help='torch.compile rows run only while the suite is under this (default 270)')
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (fidelity and speed)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    if args.smoke:
        batches, iters, warmup, camera, height = [1, 2], 1, 1, (120, 160), 112
        precisions = ['fp32', 'bf16']
    else:
        batches, iters, warmup, camera, height = [1, 8, 32], 30, 5, (480, 640), None
        precisions = ['fp32', 'fp16', 'bf16']
    iters = args.iters or iters
    gpu_runtimes = [name for name, cls in RUNTIMES.items()
                    if 'cuda' in cls.device_types and name != 'compile']
    reduced = [p for p in precisions if p != 'fp32']
    env = {'torch': torch.__version__, 'python': platform.python_version(), 'device': str(device),
           'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
           'cudnn': torch.backends.cudnn.version() if device.type == 'cuda' else None,
           'runtimes': {name: RUNTIMES[name].unavailable(device, 'fp16') or 'available'
                        for name in ('tensorrt', 'compile')},
           'smoke': args.smoke, 'iters': iters, 'warmup': warmup}
    print(json.dumps(env))
    started = time.perf_counter()
    rows, fidelities = [], []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = bench_model.write_checkpoints(Path(tmp), list(PRESETS))
        cache = Path(tmp) / 'cache'
        for preset in PRESETS:
            fidelities.append(fidelity(checkpoints[preset], preset, device, camera, height))
            print(json.dumps(fidelities[-1]), flush=True)
        bench_model.print_rows([])
        for preset in PRESETS:
            config = PreprocessConfig.default_for(preset)
            if height is not None:
                config = PreprocessConfig(config.policy, height, config.multiple)
            shape = config.output_size(*camera)
            built: dict = {}
            for batch in batches:  # TensorRT engines (one per precision) only where it pays
                rows += bench_model.bench(checkpoints[preset], preset, device, shape, batch,
                                          ['torch'], precisions, iters, warmup, cache,
                                          e2e=True, built=built)
                rows += bench_model.bench(checkpoints[preset], preset, device, shape, batch,
                                          gpu_runtimes, reduced, iters, warmup, cache,
                                          built=built)
            del built
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        resnet = 'resnet50-16384'
        shape = PreprocessConfig.default_for(resnet).output_size(*camera) if height is None \
            else PreprocessConfig('height', height).output_size(*camera)
        for batch in (batches[0], batches[-1]):
            if time.perf_counter() - started > args.budget_s:
                print(f'compile rows skipped: the suite is past --budget-s {args.budget_s:g}')
                break
            rows += bench_model.bench(checkpoints[resnet], resnet, device, shape, batch,
                                      ['compile'], ['bf16'], iters, warmup, cache)
    print('\nAll rows:')
    bench_model.print_rows(rows)
    targets = {}
    fast = [r for r in rows if r['preset'] == 'resnet50-16384' and r['precision'] in
            ('fp16', 'bf16') and r['runtime'] not in ('eager', 'e2e auto')]
    for batch, key, better in ((32, 'resnet_fp16_bf16_b32_images_per_s>=6000', 'images_per_s'),
                               (1, 'resnet_fp16_bf16_b1_median_ms<=0.8', 'median_ms')):
        best = [r for r in fast if r['batch'] == batch]
        if best:
            pick = (max if better == 'images_per_s' else min)(best, key=lambda r: r[better])
            value = pick[better]
            targets[key] = {'met': value >= 6000 if batch == 32 else value <= 0.8,
                            'value': value, 'runtime': pick['runtime'],
                            'precision': pick['precision']}
    summary = {'env': env, 'rows': rows, 'fidelity': fidelities, 'targets': targets,
               'wall_s': time.perf_counter() - started}
    print('\nFidelity:')
    for f in fidelities:
        print('  ' + ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                               for k, v in f.items()))
    print(f'Targets: {json.dumps(targets)}\nTotal {summary["wall_s"]:.0f} s')
    if os.environ.get('OUT'):
        out = Path(os.environ['OUT']) / 'gpu_suite.json'
        out.write_text(json.dumps(summary, indent=1))
        print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
