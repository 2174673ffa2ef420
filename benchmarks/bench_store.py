"""Keyframe store benchmark: Milvus standalone vs the embedded FAISS map on this machine.

Same clustered synthetic descriptors as bench_map.py (at --dim, 512 by default: what a PCA-512
map indexes), same revisit queries, recall@1/@10 against exact search.  Per store: insert rate
(adds of --batch keyframes through the store interface, until every keyframe is searchable and
indexed), single-query search latency p50/p99 (k=10, no filter, then with a session filter), and
memory (FAISS: this process's RSS growth; Milvus: the server processes' RSS).  The Milvus server
is the `milvus` wheel's standalone 2.3.5 binary run by boq_ros.keyframe_map.milvus_local
(loopback only), started fresh for each size.

    python3 benchmarks/bench_store.py --sizes 100000            # about 4 minutes on 2 cores
    python3 benchmarks/bench_store.py --sizes 100000 1000000 --milvus-index ivfsq8 hnsw
"""
import argparse
import gc
from pathlib import Path
import sys
import tempfile
import time

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_map import CHUNK, Clustered, exact_topk, percentiles, rss_bytes  # noqa: E402

from boq_ros.keyframe_map import IndexSpec, KeyframeMap, KeyframeMeta, SearchFilter  # noqa: E402
from boq_ros.keyframe_map.milvus_local import LocalMilvus  # noqa: E402
from boq_ros.keyframe_map.uri import open_store  # noqa: E402

QUERIES = 200
SESSIONS = 8


def metas(start: int, stop: int) -> list[KeyframeMeta]:
    return [KeyframeMeta(stamp_ns=i, session=f's{i % SESSIONS}', robot_id=f'r{i % 2}')
            for i in range(start, stop)]


def fill(store, gen: Clustered, size: int, batch: int) -> float:
    start = time.perf_counter()
    for block in range(0, size, CHUNK):  # the generator's vectors depend on its chunks
        x = gen.places(block, min(block + CHUNK, size))
        for first in range(0, len(x), batch):
            stop = min(first + batch, len(x))
            store.add(x[first:stop], metas(block + first, block + stop))
    store.refresh_index()
    return time.perf_counter() - start


def wait_indexed(store, size: int) -> None:
    """Until the server's index covers every row (it builds as sealed segments arrive)."""
    client, name = store._client, store.location.collection
    while True:
        info = client.describe_index(name, 'vector')
        if int(info.get('indexed_rows', 0)) >= size and not int(
                info.get('pending_index_rows', 0)):
            return
        time.sleep(1)


def measure(store, queries: np.ndarray, truth: np.ndarray) -> dict:
    rows = {}
    flt = SearchFilter(sessions={'s1', 's2', 's3'})
    for name, f in (('', None), ('_filtered', flt)):
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            result = store.search(q[None], 10, f)
            times.append(time.perf_counter() - t)
            found.append([store.meta(i).stamp_ns if i >= 0 else -1 for i in result.ids[0]])
        rows[f'p50{name}'], rows[f'p99{name}'] = percentiles(times)
        if f is None:
            found = np.array(found)
            rows['r1'] = float(np.mean(found[:, 0] == truth[:, 0]))
            rows['r10'] = float(np.mean([len(set(a) & set(b)) / 10
                                         for a, b in zip(found, truth)]))
    return rows


def server_rss(local: LocalMilvus) -> int:
    root = psutil.Process(local._proc.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[100_000])
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--batch', type=int, default=1000, help='keyframes per add')
    parser.add_argument('--faiss-index', default='ivfsq8', help='FAISS map index kind')
    parser.add_argument('--milvus-index', nargs='+', default=['ivfsq8'],
                        help='Milvus index kinds (URI index=...): flat, ivfsq8, ivfpq, hnsw')
    parser.add_argument('--nlist', type=int, default=1024)
    parser.add_argument('--nprobe', type=int, default=16)
    parser.add_argument('--ef', type=int, default=64)
    args = parser.parse_args()
    table = []
    for size in args.sizes:
        gen = Clustered(args.dim, 64, max(100, size // 100))
        queries = gen.revisits(QUERIES, size)
        truth = exact_topk(gen, queries, size)
        gc.collect()
        before = rss_bytes()
        kmap = KeyframeMap(args.dim, model_id='bench', preprocess={},
                           index=IndexSpec(kind=args.faiss_index))
        seconds = fill(kmap, gen, size, args.batch)
        row = {'store': f'faiss {args.faiss_index}', 'size': size, 'insert': size / seconds,
               'mem_mb': (rss_bytes() - before) / 2 ** 20, **measure(kmap, queries, truth)}
        table.append(row)
        print(row, flush=True)
        del kmap
        gc.collect()
        for kind in args.milvus_index:
            with tempfile.TemporaryDirectory() as tmp, LocalMilvus(Path(tmp)) as local:
                params = {'flat': '', 'hnsw': f'&m=16&ef={args.ef}',
                          'ivfsq8': f'&nlist={args.nlist}&nprobe={args.nprobe}',
                          'ivfpq': f'&nlist={args.nlist}&nprobe={args.nprobe}&pq_m=64'}[kind]
                store = open_store(f'{local.uri}/bench?index={kind}{params}&timeout_s=120',
                                   model_id='bench', dim=args.dim, preprocess={}, create=True)
                start = time.perf_counter()
                fill(store, gen, size, args.batch)
                wait_indexed(store, size)
                seconds = time.perf_counter() - start
                row = {'store': f'milvus {kind}', 'size': size, 'insert': size / seconds,
                       'mem_mb': server_rss(local) / 2 ** 20, **measure(store, queries, truth)}
                table.append(row)
                print(row, flush=True)
                store.close()
    print(f'\nkeyframe stores, {args.dim}-d, {QUERIES} single queries k=10 ({psutil.cpu_count()} '
          'cores)')
    print(f'{"store":18} {"size":>8} {"insert/s":>9} {"p50 ms":>7} {"p99 ms":>7} '
          f'{"filt p50":>8} {"filt p99":>8} {"R@1":>6} {"R@10":>6} {"mem MB":>7}')
    for r in table:
        print(f'{r["store"]:18} {r["size"]:>8} {r["insert"]:>9.0f} {r["p50"]:>7.2f} '
              f'{r["p99"]:>7.2f} {r["p50_filtered"]:>8.2f} {r["p99_filtered"]:>8.2f} '
              f'{r["r1"]:>6.3f} {r["r10"]:>6.3f} {r["mem_mb"]:>7.0f}')


if __name__ == '__main__':
    main()
