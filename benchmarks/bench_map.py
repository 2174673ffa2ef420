"""Keyframe map benchmark: build and tuning time, memory, query latency and recall per index kind.

Descriptors are clustered synthetic vectors, not uniform noise: C cluster centres in a latent
space of --latent dimensions, places = centre + noise, queries = revisits (a place's latent
vector perturbed), all mapped to the descriptor dimension by one fixed random linear map, plus
isotropic noise (so the vectors are not exactly low-rank), then L2-normalised.  Recall@k is
measured against exact (brute-force, full-dimension) search over the same vectors.

The approximate kinds choose their search parameters (nprobe / ef_search, rerank) from the map's
target recalls (--target-recall-at-1, --target-recall-at-10) on held-out keyframes of the map
itself (keyframe_map/tuning.py); the table shows what was chosen and how long tuning took.  The
benchmark's own queries (perturbed revisits) are not seen by tuning.

Each (size, index) row runs in its own process so that its RSS delta is its own.  A 1M x 16384
float32 matrix (64 GB) does not fit in RAM: sizes above --full-dim-max are generated directly at
--large-dim (the dimension the index sees after PCA), which is stated in the table.
--load-check saves the map, then a fresh process loads it as a robot does (descriptors stay in
the file and re-ranking reads its rows with pread), runs the same queries one by one and reports
their latency, recall and what the process holds resident (anonymous + file-mapped RSS growth).

    python3 benchmarks/bench_map.py --sizes 10000                 # about a minute on 2 cores
    python3 benchmarks/bench_map.py --sizes 100000 --kinds ivfsq8+pca512 ivfpq+pca512 --retrain
    python3 benchmarks/bench_map.py --sizes 1000000 --kinds ivfsq8 ivfpq --retrain --load-check
    python3 benchmarks/bench_map.py --gpu-only --sizes 10000 100000   # torch + numpy only
"""
import argparse
import gc
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time

import numpy as np

CHUNK = 4096


def rss_bytes(field: str = 'VmRSS') -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    return 0


class Clustered:
    """Deterministic clustered descriptors, generated chunk by chunk."""

    def __init__(self, dim: int, latent: int, centres: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.latent = dim, latent
        self.centres = rng.standard_normal((centres, latent)).astype(np.float32)
        self.lift = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
        self.seed = seed

    def _finish(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = z @ self.lift
        x += 0.25 * rng.standard_normal(x.shape, dtype=np.float32) * np.linalg.norm(
            x, axis=1, keepdims=True) / np.sqrt(self.dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def _place_latent(self, rows: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, int(rows[0])])
        return self.centres[rows % len(self.centres)] + 0.6 * rng.standard_normal(
            (len(rows), self.latent), dtype=np.float32)

    def places(self, start: int, stop: int) -> np.ndarray:
        rows = np.arange(start, stop)
        return self._finish(self._place_latent(rows),
                            np.random.default_rng([self.seed, 2, start]))

    def revisits(self, n: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 3])
        rows = np.sort(rng.choice(size, n, replace=False))
        z = np.concatenate([self._place_latent(np.arange(s, min(s + CHUNK, size)))[
            rows[(rows >= s) & (rows < s + CHUNK)] - s] for s in range(0, size, CHUNK)])
        z += 0.25 * rng.standard_normal(z.shape, dtype=np.float32)
        return self._finish(z, rng)


def exact_topk(gen: Clustered, queries: np.ndarray, size: int, k: int = 10) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for start in range(0, size, CHUNK):
        sims = queries @ gen.places(start, min(start + CHUNK, size)).T
        all_s = np.concatenate([best_s, sims], axis=1)
        all_i = np.concatenate([best_i, start + np.broadcast_to(
            np.arange(sims.shape[1]), sims.shape)], axis=1)
        order = np.argsort(-all_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
    return best_i


def parse_kind(text: str) -> dict:
    """'hnsw+pca512w' -> IndexSpec fields (w: whitened)."""
    kind, _, pca = text.partition('+pca')
    spec = {'kind': kind}
    if pca:
        spec['pca_dim'] = int(pca.rstrip('w'))
        spec['pca_whiten'] = pca.endswith('w')
    return spec


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)) * 1e3, float(np.percentile(samples, 99)) * 1e3


def one_row(args: argparse.Namespace) -> dict:
    from boq_ros.keyframe_map import IndexSpec, KeyframeMap, KeyframeMeta

    size, dim = args.one_size, args.one_dim
    gen = Clustered(dim, args.latent, args.centres)
    queries = gen.revisits(args.queries, size)
    truth = exact_topk(gen, queries, size)
    spec = IndexSpec(**json.loads(args.one_spec), target_recall_at_1=args.target_recall_at_1,
                     target_recall_at_10=args.target_recall_at_10)
    gc.collect()
    rss0 = rss_bytes()
    start = time.perf_counter()
    kmap = KeyframeMap(dim, model_id='bench', preprocess={}, index=spec)
    for s in range(0, size, CHUNK):
        block = gen.places(s, min(s + CHUNK, size))
        kmap.add(block, [KeyframeMeta(stamp_ns=s + i, session='bench')
                         for i in range(len(block))])
    if args.retrain:
        kmap.refresh_index()  # as `map build` does: learn and tune on the whole map
    build_s = time.perf_counter() - start
    rss = rss_bytes() - rss0
    stored = size * dim * 4
    search = kmap._search
    index_bytes = (len(search.backend.to_bytes()) if search.approximate
                   else size * (search.pca.components.shape[0] if search.pca else dim)
                   * (2 if spec.kind == 'flat_fp16' else 4))
    if search.pca is not None:
        index_bytes += search.pca.components.nbytes
    tuning = kmap.schema.index_tuning
    short = {'ivf_nprobe': 'nprobe', 'hnsw_ef_search': 'ef_search', 'rerank': 'rerank'}
    params = ', '.join(f'{short[k]} {search.knobs[k]}' for k in spec.knobs()) or '-'
    n_single = min(len(queries), args.max_single)
    single, ids = time_single(kmap, queries[:n_single])
    batch = []
    for s in range(0, n_single - 7, 8):
        t = time.perf_counter()
        kmap.search(queries[s:s + 8], 10)
        batch.append(time.perf_counter() - t)
    truth = truth[:n_single]
    r1, r10 = recall(ids, truth)
    loaded = None
    if args.load_check:  # the saved map, loaded as a robot does, in a fresh process
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            path = kmap.save(Path(tmp) / 'map')
            np.save(Path(tmp) / 'queries.npy', queries[:n_single])
            np.save(Path(tmp) / 'truth.npy', truth)
            del kmap, search
            gc.collect()
            out = subprocess.run([sys.executable, __file__, '--loaded-rss', str(path)],
                                 capture_output=True, text=True, check=True)
            loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return {'size': size, 'dim': dim, 'index': args.one_kind, 'params': params,
            'tuning': tuning, 'build_s': build_s, 'tune_s': tuning.get('seconds'),
            'rss_mb': rss / 2**20, 'stored_mb': stored / 2**20,
            'index_mb': index_bytes / 2**20, 'p50_1': percentiles(single)[0],
            'p99_1': percentiles(single)[1], 'p50_8': percentiles(batch)[0],
            'p99_8': percentiles(batch)[1], 'recall1': r1, 'recall10': r10,
            'queries': n_single, 'loaded': loaded, 'load': os.getloadavg()[0]}


def time_single(kmap, queries: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Search the queries one by one: (seconds per query, top-10 ids)."""
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        res = kmap.search(q[None], 10)
        times.append(time.perf_counter() - t)
        ids.append(res.ids[0])
    return times, np.array(ids)


def recall(ids: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    r1 = float(np.mean(ids[:, 0] == truth[:, 0]))
    r10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))
    return r1, r10


def loaded_rss(path: str) -> None:
    """Load the map as a robot does, search the saved queries; print latency, recall, memory.

    Memory is this fresh process's growth in anonymous RSS (what it owns: index, metadata) and
    in file-backed RSS (file pages mapped into it), from before the load to after the searches.
    """
    from boq_ros.keyframe_map import KeyframeMap
    queries = np.load(Path(path).parent / 'queries.npy')
    truth = np.load(Path(path).parent / 'truth.npy')
    anon, mapped = rss_bytes('RssAnon'), rss_bytes('RssFile')
    start = time.perf_counter()
    kmap = KeyframeMap.load(path, mmap=True, verify=False)
    load_s = time.perf_counter() - start
    times, ids = time_single(kmap, queries)
    r1, r10 = recall(ids, truth)
    print(json.dumps({'anon_mb': (rss_bytes('RssAnon') - anon) / 2**20,
                      'file_mb': (rss_bytes('RssFile') - mapped) / 2**20, 'load_s': load_s,
                      'p50_1': percentiles(times)[0], 'p99_1': percentiles(times)[1],
                      'recall1': r1, 'recall10': r10,
                      'state': kmap.schema.index_state}))


def gpu_rows(args: argparse.Namespace) -> None:
    import torch
    if not torch.cuda.is_available():
        sys.exit('--gpu-only needs CUDA')
    print(f'# torch exact search on {torch.cuda.get_device_name()}, dim {args.dim}')
    print('| keyframes | storage | GPU MB | p50 1q ms | p99 1q ms | p50 8q ms | p99 8q ms |')
    print('|---|---|---|---|---|---|---|')
    for size in args.sizes:
        gen = Clustered(args.dim, args.latent, args.centres)
        queries = torch.from_numpy(gen.revisits(64, size)).cuda()
        full = torch.empty((size, args.dim), dtype=torch.float32, device='cuda')
        for s in range(0, size, CHUNK):
            full[s:s + CHUNK] = torch.from_numpy(gen.places(s, min(s + CHUNK, size)))
        for dtype in (torch.float16, torch.float32):
            data = full if dtype == torch.float32 else full.half()
            times = {1: [], 8: []}
            for n in (1, 8):
                for i in range(0, 64 - n + 1, n):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    torch.topk(queries[i:i + n].to(dtype) @ data.T, 10, dim=1)[1].cpu()
                    times[n].append(time.perf_counter() - t)
            p1, p8 = percentiles(times[1][3:]), percentiles(times[8][1:])
            print(f'| {size} | {str(dtype)[6:]} | {data.numel() * data.element_size() / 2**20:.0f}'
                  f' | {p1[0]:.2f} | {p1[1]:.2f} | {p8[0]:.2f} | {p8[1]:.2f} |')
            del data
        del full
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[10_000])
    parser.add_argument('--dim', type=int, default=16384, help='descriptor dimension')
    parser.add_argument('--kinds', nargs='+',
                        default=['flat', 'flat_fp16', 'hnsw+pca512', 'ivfpq+pca512',
                                 'ivfsq8+pca512', 'flat+pca512'],
                        help="index kinds, '+pcaN' adds PCA to N dims ('+pcaNw': whitened)")
    parser.add_argument('--full-dim-max', type=int, default=100_000,
                        help='sizes above this are generated at --large-dim')
    parser.add_argument('--large-dim', type=int, default=512)
    parser.add_argument('--latent', type=int, default=256)
    parser.add_argument('--centres', type=int, default=2000)
    parser.add_argument('--queries', type=int, default=200)
    parser.add_argument('--max-single', type=int, default=200,
                        help='queries timed one by one (exact search at scale is slow)')
    parser.add_argument('--retrain', action='store_true',
                        help='re-learn (or re-tune) the index from the whole map after adding, '
                             'as `boq-ros map build` does (KeyframeMap.refresh_index)')
    parser.add_argument('--target-recall-at-1', type=float, default=0.99)
    parser.add_argument('--target-recall-at-10', type=float, default=0.95)
    parser.add_argument('--load-check', action='store_true',
                        help='also save each map, load it memory-mapped and report its RSS')
    parser.add_argument('--tmp', default=None, help='where --load-check saves (default: TMPDIR)')
    parser.add_argument('--verbose', action='store_true', help='print each tuning record')
    parser.add_argument('--gpu-only', action='store_true',
                        help='only the torch exact search on CUDA (needs torch + numpy)')
    parser.add_argument('--loaded-rss', help=argparse.SUPPRESS)
    parser.add_argument('--one-size', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--one-dim', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--one-kind', help=argparse.SUPPRESS)
    parser.add_argument('--one-spec', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu_only:
        gpu_rows(args)
        return
    if args.loaded_rss:
        loaded_rss(args.loaded_rss)
        return
    if args.one_size:
        print(json.dumps(one_row(args)))
        return
    print(f'# clustered synthetic descriptors: {args.centres} centres in a {args.latent}-d '
          f'latent space, places = centre + noise, queries = {args.queries} perturbed revisits, '
          f'lifted by a fixed random linear map, isotropic noise, L2-normalised; targets '
          f'recall@1 {args.target_recall_at_1}, recall@10 {args.target_recall_at_10}; '
          f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start')
    print('| keyframes | dim | index | tuned params | build s | tune s | RSS MB | stored MB | '
          'index MB | p50 1q ms | p99 1q ms | p50 8q ms | p99 8q ms | R@1 | R@10 | '
          'loaded p50 / p99 1q ms | loaded R@1 / R@10 | loaded anon + file MB | load |')
    print('|' + '---|' * 19)
    for size in args.sizes:
        dim = args.dim if size <= args.full_dim_max else args.large_dim
        for kind in args.kinds:
            spec = parse_kind(kind)
            if spec.get('pca_dim') and spec['pca_dim'] >= dim:
                continue
            cmd = [sys.executable, __file__, '--one-size', str(size), '--one-dim', str(dim),
                   '--one-kind', kind, '--one-spec', json.dumps(spec), '--latent',
                   str(args.latent), '--centres', str(args.centres), '--queries',
                   str(args.queries), '--max-single', str(args.max_single),
                   '--target-recall-at-1', str(args.target_recall_at_1),
                   '--target-recall-at-10', str(args.target_recall_at_10)]
            cmd += ['--retrain'] if args.retrain else []
            if args.load_check:
                cmd += ['--load-check'] + (['--tmp', args.tmp] if args.tmp else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(f'| {size} | {dim} | {kind} | failed: {out.stderr.strip()[-200:]} |')
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            t, ld = r['tuning'], r['loaded']
            tune = '-' if r['tune_s'] is None else f"{r['tune_s']:.1f}"
            if t.get('status') in ('tuned', 'fixed') and not t.get('targets_met'):
                tune += ' (targets not met)'
            loaded = ('- | - | -' if ld is None else
                      f"{ld['p50_1']:.2f} / {ld['p99_1']:.2f} | {ld['recall1']:.3f} / "
                      f"{ld['recall10']:.3f} | {ld['anon_mb']:.0f} + {ld['file_mb']:.0f}")
            print(f"| {size} | {dim} | {kind} | {r['params']} | {r['build_s']:.1f} | {tune} | "
                  f"{r['rss_mb']:.0f} | {r['stored_mb']:.0f} | {r['index_mb']:.0f} | "
                  f"{r['p50_1']:.2f} | {r['p99_1']:.2f} | {r['p50_8']:.2f} | {r['p99_8']:.2f} | "
                  f"{r['recall1']:.3f} | {r['recall10']:.3f} | {loaded} | {r['load']:.1f} |",
                  flush=True)
            if args.verbose:
                print(f'#   {kind} tuning: {json.dumps(t)}', flush=True)


if __name__ == '__main__':
    main()
