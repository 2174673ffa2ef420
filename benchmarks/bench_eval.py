"""Evaluation throughput on this machine, split into bag reading, decoding, model and search.

Generates a synthetic recording (raw rgb8 and JPEG topics), then times each stage of
`boq-ros eval` on its own, with the code the evaluator runs (its frame pipeline): bag reading
with CDR deserialisation (`sources.bag_frames`), image decoding (`pipeline.decode`), descriptor
extraction (random ResNet-50 BoQ weights: the cost is the same as with the released ones) and
the detector's search over a growing map.
Prints one table; the end-to-end rate is 1 / (sum of the per-frame stage costs).

    .venv/bin/python benchmarks/bench_eval.py                  # about a minute on 2 cores
    .venv/bin/python benchmarks/bench_eval.py --size 1280 720 --model-frames 8
"""
import argparse
from pathlib import Path
import tempfile
import time

import numpy as np
import torch

from boq_ros.bags import open_bag
from boq_ros.detector import DetectorConfig, LoopDetector
from boq_ros.extractor import Extractor
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta
from boq_ros.model import load_boq
from boq_ros.model.checkpoint import write_random_checkpoint
from boq_ros.pipeline import decode
from boq_ros.preprocess import PreprocessConfig
from boq_ros.sources import bag_frames
from boq_ros.synth import COMPRESSED_TOPIC, IMAGE_TOPIC, generate_recording


def timed_read(bag_path: Path, topic: str) -> tuple[int, float, list]:
    start = time.perf_counter()
    with open_bag(bag_path) as bag:
        frames = list(bag_frames(bag, [topic]))
    return len(frames), time.perf_counter() - start, frames


def timed_decode(frames: list) -> tuple[float, list]:
    start = time.perf_counter()
    images = [decode(f.image) for f in frames]
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=200, help='frames in the recording')
    parser.add_argument('--size', type=int, nargs=2, default=(640, 480), metavar=('W', 'H'))
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='mcap')
    parser.add_argument('--model-frames', type=int, default=16,
                        help='frames pushed through the model (the slow stage)')
    parser.add_argument('--input-size', '--height', dest='input_size', type=int, default=384,
                        help='model input size (image height, aspect ratio kept)')
    parser.add_argument('--map-size', type=int, default=2000,
                        help='keyframes run through the detector (grow mode, 16384-d)')
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bag_path = tmp / 'bench'
        laps = max(1, args.frames // 50)
        generate_recording(bag_path, storage=args.storage, laps=laps,
                           frames_per_lap=args.frames // laps, image_size=tuple(args.size))
        images = None
        for topic, name in ((IMAGE_TOPIC, 'raw rgb8'), (COMPRESSED_TOPIC, 'JPEG')):
            n, read_s, messages = timed_read(bag_path, topic)
            decode_s, decoded = timed_decode(messages)
            rows.append((f'bag reading ({name}, {args.storage})', n, read_s))
            rows.append((f'decoding ({name})', n, decode_s))
            images = images or decoded  # (array, encoding) of the raw topic
        model = load_boq(write_random_checkpoint(tmp / 'random.pth', 'resnet50-16384'))
        extractor = Extractor(model, device='cpu', preprocess=PreprocessConfig(
            'height', args.input_size), batch_size=8)
        arrays = [array for array, _ in images[:args.model_frames]]
        encodings = [encoding for _, encoding in images[:args.model_frames]]
        extractor.extract(arrays[:2], encodings[:2])  # warm-up
        start = time.perf_counter()
        extractor.extract(arrays, encodings)
        rows.append((f'model (ResNet-50 BoQ, CPU, input size {args.input_size})', len(arrays),
                     time.perf_counter() - start))
        rng = np.random.default_rng(0)
        base = rng.normal(size=(64, extractor.dim)).astype(np.float32)
        descs = base[rng.integers(0, 64, args.map_size)] + rng.normal(
            size=(args.map_size, extractor.dim)).astype(np.float32)
        descs /= np.linalg.norm(descs, axis=1, keepdims=True)
        metas = [KeyframeMeta(stamp_ns=i * 200_000_000, session='run')
                 for i in range(args.map_size)]
        kmap = KeyframeMap(extractor.dim, model_id='bench', preprocess={})
        detector = LoopDetector(kmap, DetectorConfig(top_k=20, exclusion_seconds=30.0))
        start = time.perf_counter()
        detector.process_batch(descs, metas)
        rows.append((f'search (detector, map grows to {args.map_size})', args.map_size,
                     time.perf_counter() - start))

    print(f'CPU threads: {torch.get_num_threads()}, image {args.size[0]}x{args.size[1]}\n')
    print('| stage | frames | seconds | frames/s | ms/frame |')
    print('|---|---|---|---|---|')
    for name, n, seconds in rows:
        print(f'| {name} | {n} | {seconds:.3f} | {n / seconds:.1f} | {1000 * seconds / n:.2f} |')
    per_frame = {name.split(' (')[0]: seconds / n for name, n, seconds in rows
                 if 'raw' not in name}
    total = sum(per_frame.values())
    print(f'\nend to end (JPEG topic): {1 / total:.2f} frames/s; bag reading is '
          f'{100 * per_frame["bag reading"] / total:.2f} % of the time')


if __name__ == '__main__':
    main()
