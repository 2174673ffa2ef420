"""Per-query cost of geometric verification at 640x480, per feature kind; prints a table.

    python benchmarks/bench_verify.py                  # every kind, 3 repetitions (minutes)
    python benchmarks/bench_verify.py --repeats 9 --kinds sift orb
    python benchmarks/bench_verify.py --device cuda    # the learned kinds on the GPU

What a query costs in the node: its local features are extracted once, then each of the top-N
candidates is matched against the features the map stored with it and the robust geometry runs
(verify_features: matching, then PnP against the candidate's depth). So per kind:

- extract: ms per keyframe (detect + describe, undistort, sample the depth);
- match: ms per candidate for the matcher alone; match+geom: matching plus the geometry;
- top-N: extract + N x (match+geom), for N in --top-n (default 1 5 10);
- bytes/kf: LocalFeatures.nbytes with depth (what the map stores per keyframe, + a table row),
  and B/kp per keypoint (the street renders give fewer keypoints than max_keypoints).

Keyframes: renders of the synthetic street (boq_ros.synth.World(0)) at 640x480 with exact depth,
several poses along it; candidates: each render against its neighbour (a true loop: matches,
geometry, mostly verified), plus, when test/realdata.py's cache already holds the data (no
download here), the 7-Scenes pair seq-01 frame 0 vs 2 (real 640x480 colour + registered depth).
Repetitions are interleaved (each repetition runs every kind in turn), and the figures are
medians over keyframes or candidates and repetitions, so that a load change on a shared machine
hits every kind alike. A kind whose optional package is missing is skipped and said so.
"""
import argparse
import os
from pathlib import Path
import platform
import statistics
import sys
import time

import numpy as np

from boq_ros.keyframe_map import LocalFeatures
from boq_ros.settings import VerificationSettings
from boq_ros.synth import World, camera_intrinsics
from boq_ros.verification import FEATURE_KINDS, CameraModel, FeatureError, GeometricVerifier

SIZE = (640, 480)
POSES = [(20.0, 0.0, 1.57), (19.8, 0.6, 1.62), (19.5, 1.4, 1.70), (19.0, 2.4, 1.78),
         (18.4, 3.3, 1.85), (17.9, 4.2, 1.95)]
"""Along the street, 0.6-1 m and 3-6 deg apart: each pose is a loop candidate of the next."""


def machine() -> str:
    """Describe the CPU, its cores and the load average."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    load = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    return f'{model}, {cores} cores usable ({os.cpu_count()} online), load average {load}'


def synthetic_views() -> list[tuple[str, np.ndarray, np.ndarray, CameraModel]]:
    world, cam = World(0), CameraModel(*SIZE, *camera_intrinsics(SIZE))
    views = []
    for pose in POSES:
        rgb, depth = world.render(*pose, SIZE, with_depth=True)
        views.append((f'street {pose[0]:.1f},{pose[1]:.1f}', rgb, depth, cam))
    return views


def real_views() -> tuple[list[tuple[str, np.ndarray, np.ndarray, CameraModel]], str]:
    """The 7-Scenes pair when test/realdata.py's cache holds every source; never downloads."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test'))
    try:
        import realdata  # noqa: PLC0415 (a test helper, optional here)
    except ImportError as exc:
        return [], f'real pair skipped: cannot import test/realdata.py ({exc})'
    missing = [s.name for s in realdata.SOURCES if not (realdata.cache_dir() / s.key).is_dir()]
    if missing:
        return [], (f'real pair skipped: {", ".join(missing)} not in {realdata.cache_dir()} '
                    '(run the real-data tests once to fetch them)')
    views = []
    for name in ('7scenes/seq-01/frame-000000', '7scenes/seq-01/frame-000002'):
        view = realdata.views()[name]
        height, width = view.image.shape[:2]
        fx, fy, cx, cy = view.intrinsics
        cam = CameraModel.from_camera_info(width, height, [fx, 0, cx, 0, fy, cy, 0, 0, 1])
        views.append((name, np.ascontiguousarray(view.image), view.depth, cam))
    return views, 'real pair: 7-Scenes stairs seq-01 frame 0 vs 2 (640x480, registered depth)'


def median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values) if values else float('nan')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--repeats', type=int, default=3,
                        help='interleaved repetitions (default 3; medians over them)')
    parser.add_argument('--kinds', nargs='+', default=list(FEATURE_KINDS),
                        choices=list(FEATURE_KINDS), help='feature kinds (default: all)')
    parser.add_argument('--top-n', nargs='+', type=int, default=[1, 5, 10],
                        help='candidates verified per query (default 1 5 10)')
    parser.add_argument('--device', default='cpu',
                        help="feature_device of the learned kinds (default cpu; 'auto', 'cuda')")
    parser.add_argument('--max-keypoints', type=int, default=VerificationSettings().max_keypoints,
                        help='keypoints per keyframe (default: the setting default)')
    parser.add_argument('--no-real', action='store_true', help='synthetic renders only')
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error('--repeats must be >= 1')

    print(f'machine: {machine()}')
    try:
        import cv2  # noqa: PLC0415
        import torch  # noqa: PLC0415
        print(f'OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), torch '
              f'{torch.__version__} ({torch.get_num_threads()} threads), learned kinds on '
              f'{args.device}')
    except ImportError:
        pass
    views = synthetic_views()
    note = 'real pair skipped (--no-real)'
    if not args.no_real:
        real, note = real_views()
        views += real
    n_synth = len(POSES)
    # candidates: (query index, match index) - each street pose against the next, the real pair
    pairs = [(i + 1, i) for i in range(n_synth - 1)]
    if len(views) > n_synth:
        pairs.append((n_synth, n_synth + 1))
    print(f'keyframes: {n_synth} street renders {SIZE[0]}x{SIZE[1]} with depth'
          f'{" + 2 real" if len(views) > n_synth else ""}; {len(pairs)} candidate pairs; {note}')

    verifiers, skipped = {}, []
    for kind in args.kinds:
        settings = VerificationSettings(feature_kind=kind, feature_device=args.device,
                                        max_keypoints=args.max_keypoints)
        try:
            verifier = GeometricVerifier(settings)
            # warm-up: loads the networks, first-call allocations
            warm = [verifier.features(v[1], 'rgb8', v[3], v[2]) for v in views[:2]]
            verifier.verify_features(warm[1], warm[0])
        except FeatureError as exc:
            skipped.append(f'{kind}: {exc}')
            continue
        verifiers[kind] = verifier

    # samples[kind][source]: extraction seconds, match seconds, match+geometry seconds
    sources = ['street'] + (['7-Scenes'] if len(views) > n_synth else [])
    source_of = ['street'] * n_synth + ['7-Scenes'] * (len(views) - n_synth)
    samples = {k: {src: ([], [], []) for src in sources} for k in verifiers}
    stored: dict[str, list[LocalFeatures]] = {}
    outcome = {k: {src: [] for src in sources} for k in verifiers}
    for rep in range(args.repeats):
        for kind, verifier in verifiers.items():
            feats = []
            for i, (_, rgb, depth, cam) in enumerate(views):
                start = time.perf_counter()
                feats.append(verifier.features(rgb, 'rgb8', cam, depth))
                samples[kind][source_of[i]][0].append(time.perf_counter() - start)
            stored[kind] = feats
            for q, m in pairs:
                extract, match, verify = samples[kind][source_of[q]]
                start = time.perf_counter()
                verifier.kind.match(feats[q], feats[m])
                match.append(time.perf_counter() - start)
                start = time.perf_counter()
                result = verifier.verify_features(feats[q], feats[m])
                verify.append(time.perf_counter() - start)
                if rep == 0:
                    outcome[kind][source_of[q]].append((result.verified, result.inliers))

    header = (f'{"kind":<18} {"kp/kf":>6} {"bytes/kf":>9} {"B/kp":>5} {"extract":>8} '
              f'{"match":>7} {"m+geom":>7} '
              + ' '.join(f'{f"top-{n}":>7}' for n in args.top_n)
              + f' {"verified":>9} {"inliers":>8}')
    for src in sources:
        rows = [i for i, s in enumerate(source_of) if s == src]
        print()
        print(f'{src}: per-query verification cost, ms (median of {args.repeats} interleaved '
              'repetitions; extract per keyframe, match and m+geom per candidate, top-N = '
              'extract + N x m+geom; bytes/kf with depth)')
        print(header)
        print('-' * len(header))
        for kind in verifiers:
            feats = [stored[kind][i] for i in rows]
            keypoints = statistics.median(len(f.keypoints) for f in feats)
            nbytes = statistics.median(f.nbytes for f in feats)
            per_kp = statistics.median(f.nbytes / max(len(f.keypoints), 1) for f in feats)
            ext, mat, ver = (median_ms(v) for v in samples[kind][src])
            tops = ' '.join(f'{ext + n * ver:7.1f}' for n in args.top_n)
            done = outcome[kind][src]
            ok = f'{sum(v for v, _ in done)}/{len(done)}'
            inliers = statistics.median(i for _, i in done)
            print(f'{kind:<18} {keypoints:6.0f} {nbytes:9.0f} {per_kp:5.0f} {ext:8.1f} '
                  f'{mat:7.1f} {ver:7.1f} {tops} {ok:>9} {inliers:8.0f}')
    for line in skipped:
        print(f'skipped {line}')
    print(f'load average after: {" ".join(f"{v:.2f}" for v in os.getloadavg())}')


if __name__ == '__main__':
    main()
