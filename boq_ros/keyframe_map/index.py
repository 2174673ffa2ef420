"""Search structures over the map's descriptors, always rebuildable from the stored vectors.

Exact search reads every stored value per query (16384-d: 64 KiB per keyframe), so large maps
need a reduction (PCA learned from the map) and/or an approximate index (HNSW, IVF-PQ).  The
approximate configurations re-rank their best candidates with the full stored descriptors, so
the similarities they return are exact cosines of the returned keyframes; only the candidate set
is approximate.  Trained parts are learned from the map once it holds enough keyframes; below
that minimum the index is exact and says so in its state.

The search parameters of the approximate kinds (`ivf_nprobe`, `hnsw_ef_search`, `rerank`) are
chosen at build time from target recalls (keyframe_map/tuning.py) unless the spec fixes them;
the chosen values are part of the schema (`index_tuning`), so a reloaded map searches the same
way.
"""
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import faiss
import numpy as np

from boq_ros.keyframe_map.rows import ChunkedRows
from boq_ros.keyframe_map.schema import MapError
from boq_ros.settings import INDEX_KINDS

Kind = Literal['flat', 'flat_fp16', 'hnsw', 'ivfpq', 'ivfsq8']
KINDS = INDEX_KINDS
FLAT_KINDS = ('flat', 'flat_fp16')
IVF_KINDS = ('ivfpq', 'ivfsq8')

IVF_MIN_KEYFRAMES = 10_000
"""The IVF kinds train once the map holds max(this, 40 * nlist) keyframes (PQ: 256 centroids)."""
IVFPQ_MIN_KEYFRAMES = IVF_MIN_KEYFRAMES  # its former name
KNOBS = ('ivf_nprobe', 'hnsw_ef_search', 'rerank')
"""Search-time parameters: None in a spec means chosen from the target recalls."""
UNTUNED = {'ivf_nprobe': 16, 'hnsw_ef_search': 128, 'rerank': 32}
"""What an approximate index searches with before it is tuned (a map below TUNE_MIN_KEYFRAMES
keyframes, or one that was built before tuning existed and fixes none of them)."""
PCA_MIN_FACTOR = 2
"""PCA trains once the map holds PCA_MIN_FACTOR * pca_dim keyframes."""
PCA_SAMPLE = 2048
"""PCA learns from max(PCA_SAMPLE, 2 * pca_dim) keyframes (an eigendecomposition of that size)."""
TRAIN_SAMPLE = 65_536
"""IVF-PQ learns from at most this many keyframes."""
ADD_BLOCK = 8192
BLOCK_BYTES = 64 << 20
"""Rows are indexed (and scanned by tuning) in blocks of at most ADD_BLOCK rows and this size."""


def block_rows(rows: ChunkedRows) -> int:
    """Rows per block when streaming every stored row (bounded memory at 16384-d)."""
    return max(1, min(ADD_BLOCK, BLOCK_BYTES // (rows.dim * 4)))

SMALL_BATCH = 16
"""Query batches below this search on one thread: OpenMP's hand-over costs more than it saves
for a few queries, and far more (x40 measured) when other processes load the CPUs."""


@dataclass(frozen=True)
class IndexSpec:
    """How the map is searched; part of the schema so a reloaded map searches the same way."""

    kind: Kind = 'flat'
    pca_dim: int | None = None
    pca_whiten: bool = False
    hnsw_m: int = 32
    hnsw_ef_search: int | None = None
    ivf_nlist: int | None = None
    pq_m: int | None = None
    ivf_nprobe: int | None = None
    device: str = 'cpu'
    rerank: int | None = None
    target_recall_at_1: float = 0.99
    target_recall_at_10: float = 0.95
    tune_queries: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MapError(f'index kind {self.kind!r} is not one of {", ".join(KINDS)}')
        if _bad_int(self.hnsw_m, 2):
            raise MapError(f'index hnsw_m must be an integer >= 2, got {self.hnsw_m!r}')
        for name in ('hnsw_ef_search', 'ivf_nprobe'):
            value = getattr(self, name)
            if value is not None and _bad_int(value, 1):
                raise MapError(f'index {name} must be a positive integer, or None to tune it '
                               f'from the target recalls, got {value!r}')
        if self.rerank is not None and _bad_int(self.rerank, 0):
            raise MapError(f'index rerank must be an integer >= 0, or None to tune it from the '
                           f'target recalls, got {self.rerank!r}')
        for name in ('pca_dim', 'ivf_nlist', 'pq_m'):
            value = getattr(self, name)
            if value is not None and _bad_int(value, 1):
                raise MapError(f'index {name} must be a positive integer or None, got {value!r}')
        for name in ('target_recall_at_1', 'target_recall_at_10'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not 0.0 < value <= 1.0:
                raise MapError(f'index {name} must be a number in (0, 1], got {value!r}')
        if _bad_int(self.tune_queries, 100) or self.tune_queries > 100_000:
            raise MapError(f'index tune_queries must be an integer in [100, 100000], got '
                           f'{self.tune_queries!r}')
        if self.ivf_nlist is not None and self.ivf_nprobe is not None \
                and self.ivf_nprobe > self.ivf_nlist:
            raise MapError(f'index ivf_nprobe {self.ivf_nprobe} exceeds ivf_nlist '
                           f'{self.ivf_nlist} (it probes that many of the lists)')
        if not isinstance(self.pca_whiten, bool):
            raise MapError(f'index pca_whiten must be a bool, got {self.pca_whiten!r}')
        if self.pca_whiten and self.pca_dim is None:
            raise MapError('index pca_whiten needs pca_dim')
        if not isinstance(self.device, str) or not (
                self.device == 'cpu' or self.device.split(':')[0] == 'cuda'):
            raise MapError(f'index device must be "cpu" or "cuda[:N]", got {self.device!r}')
        if self.device != 'cpu' and self.kind not in FLAT_KINDS:
            raise MapError(f'index device {self.device!r} supports only the flat kinds '
                           f'(exact search with torch), not {self.kind!r}')

    def check_dim(self, dim: int) -> None:
        """Refuse a spec that cannot index `dim`-dimensional descriptors."""
        if self.pca_dim is not None and self.pca_dim >= dim:
            raise MapError(f'index pca_dim {self.pca_dim} must be below the descriptor '
                           f'dimension {dim}')
        reduced = self.pca_dim or dim
        if self.kind == 'ivfpq' and reduced % self.pq_m_for(reduced):
            raise MapError(f'index pq_m {self.pq_m} must divide the indexed dimension {reduced}')

    @property
    def approximate(self) -> bool:
        """Whether the trained index returns approximate candidates (re-ranked, tunable)."""
        return self.pca_dim is not None or self.kind not in FLAT_KINDS

    def knobs(self) -> tuple[str, ...]:
        """Name the search parameters this kind uses (tuned when None, else fixed)."""
        if not self.approximate:
            return ()
        own = {'hnsw': ('hnsw_ef_search',), 'ivfpq': ('ivf_nprobe',),
               'ivfsq8': ('ivf_nprobe',)}.get(self.kind, ())
        return (*own, 'rerank')

    def tuned_knobs(self) -> tuple[str, ...]:
        """Name the search parameters left to tuning (None in the spec)."""
        return tuple(k for k in self.knobs() if getattr(self, k) is None)

    def pq_m_for(self, dim: int) -> int:
        """PQ sub-quantizers: given, or one per 8 dimensions (8-bit codes, dim bytes / 8)."""
        if self.pq_m is not None:
            return self.pq_m
        return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)

    def nlist_for(self, count: int) -> int:
        """IVF lists: given, or about sqrt(count) (at least 16)."""
        return self.ivf_nlist or max(16, int(np.sqrt(count)))

    def min_keyframes(self) -> int:
        """Keyframes needed before the trained parts are learned (0: nothing to train)."""
        need = 0
        if self.pca_dim is not None:
            need = PCA_MIN_FACTOR * self.pca_dim
        if self.kind in IVF_KINDS:
            need = max(need, IVF_MIN_KEYFRAMES, 40 * (self.ivf_nlist or 0))
        return need

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'IndexSpec':
        """Parse the schema's index entry, refusing unknown fields.

        Entries written before tuning existed (schema versions 1 and 2) name every search
        parameter with a number: they load as fixed parameters, so such a map searches exactly
        as it did (rebuild it with None parameters to tune them).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MapError(f'schema.json: unknown index field(s) {unknown}')
        try:
            return cls(**data)
        except MapError as exc:
            raise MapError(f'schema.json: {exc}') from exc


def _bad_int(value: Any, minimum: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum


class Pca:
    """Projection learned from the map: y = normalise(components @ (x - mean))."""

    def __init__(self, mean: np.ndarray, components: np.ndarray) -> None:
        self.mean = np.ascontiguousarray(mean, np.float32)
        self.components = np.ascontiguousarray(components, np.float32)  # [pca_dim, dim]

    @classmethod
    def fit(cls, sample: np.ndarray, dim: int, whiten: bool) -> 'Pca':
        """Learn the top `dim` components of `sample` (via its Gram matrix when n < d)."""
        mean = sample.mean(axis=0)
        centred = sample - mean
        n, d = centred.shape
        if n >= d:
            values, vectors = np.linalg.eigh(np.asarray(centred.T @ centred, np.float64))
            values, basis = values[::-1][:dim], vectors[:, ::-1][:, :dim]
        else:
            values, vectors = np.linalg.eigh(np.asarray(centred @ centred.T, np.float64))
            values, vectors = values[::-1][:dim], vectors[:, ::-1][:, :dim]
            floor = max(float(values[0]), 1.0) * 1e-12
            basis = (centred.T @ vectors.astype(np.float32)) / np.sqrt(
                np.maximum(values, floor)).astype(np.float32)
        if whiten:
            variance = np.maximum(values / max(n - 1, 1), max(float(values[0]), 1.0) * 1e-12)
            basis = basis / np.sqrt(variance).astype(np.float32)
        return cls(mean, basis.T)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Project and L2-normalise rows of `x`.

        A few queries are projected on the calling thread (faiss's SIMD inner products), not by
        BLAS: numpy's OpenBLAS splits even one matrix-vector product over its threads, whose
        hand-over and busy-waiting cost up to 30x the work on 2 shared cores (docs/map.md).
        """
        centred = np.ascontiguousarray(x - self.mean, np.float32)
        if len(x) < SMALL_BATCH:
            y = np.stack([inner_products(self.components, row) for row in centred])
        else:
            y = centred @ self.components.T
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return (y / np.maximum(norms, 1e-12)).astype(np.float32)


def inner_products(rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Return rows @ vector, computed on this thread (faiss SIMD): no BLAS thread pool."""
    rows = np.ascontiguousarray(rows, np.float32)
    vector = np.ascontiguousarray(vector, np.float32)
    out = np.empty(len(rows), np.float32)
    if len(rows):
        faiss.fvec_inner_products_ny(faiss.swig_ptr(out), faiss.swig_ptr(vector),
                                     faiss.swig_ptr(rows), rows.shape[1], len(rows))
    return out


class _FaissBackend:
    """A FAISS inner-product index whose ids are the map's row numbers."""

    def __init__(self, index: Any, spec: IndexSpec, kind: str) -> None:
        self.index, self.spec, self.kind = index, spec, kind

    @classmethod
    def create(cls, spec: IndexSpec, kind: str, dim: int, count: int) -> '_FaissBackend':
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == 'flat':
            index = faiss.IndexFlatIP(dim)
        elif kind == 'flat_fp16':
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, ip)
        elif kind == 'hnsw':
            index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, ip)
        elif kind == 'ivfsq8':
            index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim,
                                                  spec.nlist_for(count),
                                                  faiss.ScalarQuantizer.QT_8bit, ip)
        else:
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, spec.nlist_for(count),
                                     spec.pq_m_for(dim), 8, ip)
        return cls(index, spec, kind)

    def truncate(self, count: int) -> bool:
        """Drop the rows from `count` on; False when this kind cannot remove rows (HNSW)."""
        if len(self) <= count:
            return True
        if self.kind == 'hnsw':
            return False
        self.index.remove_ids(faiss.IDSelectorRange(count, len(self)))
        return len(self) == count

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None,
               knob: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best `k` rows per query among `mask` (rows past its end excluded).

        `knob` is efSearch (HNSW) or nprobe (IVF), ignored by the flat kinds.
        """
        bits = None if mask is None else np.packbits(mask, bitorder='little')
        # The bitmap's size is in bytes: rows past the mask read as excluded.
        sel = None if bits is None else faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        if self.kind == 'hnsw':
            ef = UNTUNED['hnsw_ef_search'] if knob is None else knob
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(ef, k))
        elif self.kind in IVF_KINDS:
            params = faiss.SearchParametersIVF(
                sel=sel, nprobe=UNTUNED['ivf_nprobe'] if knob is None else knob)
        else:
            params = faiss.SearchParameters(sel=sel)
        threads = faiss.omp_get_max_threads()
        if len(q) < SMALL_BATCH:
            faiss.omp_set_num_threads(1)
        try:
            sims, rows = self.index.search(q, k, params=params)
        finally:
            faiss.omp_set_num_threads(threads)
        del bits  # the selector points into it until the search is done
        sims[rows < 0] = -np.inf
        return sims, rows

    def to_bytes(self) -> np.ndarray:
        return faiss.serialize_index(self.index)


class _TorchBackend:
    """Exact search on a GPU: all vectors resident, one matrix product per query batch."""

    def __init__(self, dim: int, half: bool, device: str) -> None:
        import torch  # noqa: PLC0415 (only GPU maps need torch)
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise MapError(f'index device {device!r} requested but CUDA is not available')
        self.torch = torch
        self.kind = 'flat_fp16' if half else 'flat'
        self.dtype = torch.float16 if half else torch.float32
        self.data = torch.empty((1024, dim), dtype=self.dtype, device=self.device)
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        need = self.count + len(x)
        if need > len(self.data):
            grown = self.torch.empty((max(need, 2 * len(self.data)), self.data.shape[1]),
                                     dtype=self.dtype, device=self.device)
            grown[:self.count] = self.data[:self.count]
            self.data = grown
        self.data[self.count:need] = self.torch.from_numpy(x).to(self.device, self.dtype)
        self.count = need

    def __len__(self) -> int:
        return self.count

    def truncate(self, count: int) -> bool:
        self.count = min(self.count, count)
        return True

    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None,
               knob: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        queries = torch.from_numpy(q).to(self.device, self.dtype)
        sims = (queries @ self.data[:self.count].T).float()
        if mask is not None:
            keep = np.zeros(self.count, bool)
            keep[:min(len(mask), self.count)] = mask[:self.count]
            sims[:, ~torch.from_numpy(keep).to(self.device)] = -torch.inf
        top = min(k, self.count)
        values, rows = torch.topk(sims, top, dim=1)
        values, rows = values.cpu().numpy(), rows.cpu().numpy().astype(np.int64)
        rows[~np.isfinite(values)] = -1
        out_v = np.full((len(q), k), -np.inf, np.float32)
        out_r = np.full((len(q), k), -1, np.int64)
        out_v[:, :top], out_r[:, :top] = values, rows
        return out_v, out_r



class SearchIndex:
    """The map's search structure over row numbers: exact, or trained, tuned and re-ranked."""

    def __init__(self, spec: IndexSpec, dim: int) -> None:
        spec.check_dim(dim)
        self.spec, self.dim = spec, dim
        self.pca: Pca | None = None
        self.backend: _FaissBackend | _TorchBackend = self._exact_backend()
        self.trained = spec.min_keyframes() == 0
        self.trained_on = 0
        self.tuning: dict[str, Any] = {}
        self.knobs = self._knobs({})
        self.state = self._describe()

    def _exact_backend(self) -> '_FaissBackend | _TorchBackend':
        """Return the backend used before training: the spec's own if it needs none, else exact."""
        half = self.spec.kind == 'flat_fp16'
        if self.spec.device != 'cpu':
            return _TorchBackend(self.dim, half, self.spec.device)
        kind = self.spec.kind if self.spec.min_keyframes() == 0 else \
            ('flat_fp16' if half else 'flat')
        return _FaissBackend.create(self.spec, kind, self.dim, 0)

    def _knobs(self, tuning: dict[str, Any]) -> dict[str, int]:
        """Effective search parameters: the spec's fixed ones, else tuned, else UNTUNED."""
        out = {}
        for name in KNOBS:
            fixed = getattr(self.spec, name)
            out[name] = fixed if fixed is not None else int(tuning.get(name) or UNTUNED[name])
        return out

    def _describe(self) -> str:
        if self.trained and self.spec.min_keyframes():
            base = f'trained on {self.trained_on} keyframes'
        elif self.trained:
            base = 'ready (nothing to train)'
        else:
            return (f'exact fallback: {self.spec.kind}'
                    f'{f" + pca {self.spec.pca_dim}" if self.spec.pca_dim else ""} trains at '
                    f'{self.spec.min_keyframes()} keyframes')
        if not self.approximate:
            return base
        from boq_ros.keyframe_map.tuning import describe  # noqa: PLC0415 (circular)
        return f'{base}; {describe(self.tuning, self.spec, self.knobs)}'

    @property
    def approximate(self) -> bool:
        return self.pca is not None or self.backend.kind in ('hnsw', *IVF_KINDS)

    def set_tuning(self, tuning: dict[str, Any]) -> None:
        """Adopt a tuning record (what tuning.tune returns, or a saved map's schema entry)."""
        self.tuning = dict(tuning)
        self.knobs = self._knobs(self.tuning)  # one assignment: a search sees old or new
        self.state = self._describe()

    def needs_tuning(self, live_count: int) -> bool:
        """Whether this index is approximate and was never tuned although it could be."""
        from boq_ros.keyframe_map.tuning import TUNE_MIN_KEYFRAMES  # noqa: PLC0415
        return self.approximate and self.tuning.get('status') in (None, 'too small') \
            and live_count >= TUNE_MIN_KEYFRAMES

    def rebuild(self, rows: ChunkedRows, live: np.ndarray | None = None,
                tuning: dict[str, Any] | None = None) -> None:
        """Learn the trained parts (when the map is large enough), index every row, tune.

        `live` marks the rows tuning may draw held-out queries from (None: all); `tuning`
        adopts that record instead of tuning again (a rollback keeps the map's tuning).
        """
        count = len(rows)
        need = self.spec.min_keyframes()
        if need == 0 or count < need:
            self.pca, self.trained = None, need == 0
            self.backend = self._exact_backend()
        else:
            self._train(rows)
            self.trained_on = count
        for block in rows.blocks(block_rows=block_rows(rows)):
            self.backend.add(self._reduce(block))
        if tuning is not None:
            self.set_tuning(tuning)
        else:
            self.tune(rows, live)

    def tune(self, rows: ChunkedRows, live: np.ndarray | None, lock: Any = None) -> None:
        """Choose the tuned search parameters from the target recalls (tuning.py).

        `lock` is held around each batch of index searches when the index is shared with
        concurrent adds (a private index being built aside needs none).
        """
        if not self.approximate:
            self.set_tuning({})
            return
        from boq_ros.keyframe_map import tuning  # noqa: PLC0415 (circular)
        self.set_tuning(tuning.tune(self, rows, live, lock))

    def _train(self, rows: ChunkedRows) -> None:
        count = len(rows)
        rng = np.random.default_rng(0)
        self.pca = None
        if self.spec.pca_dim is not None:
            size = min(count, max(PCA_SAMPLE, 2 * self.spec.pca_dim))
            sample = rows.take(np.sort(rng.choice(count, size, replace=False)))
            self.pca = Pca.fit(sample, self.spec.pca_dim, self.spec.pca_whiten)
        reduced = self.spec.pca_dim or self.dim
        if self.spec.device != 'cpu':
            self.backend = _TorchBackend(reduced, self.spec.kind == 'flat_fp16',
                                         self.spec.device)
        else:
            self.backend = _FaissBackend.create(self.spec, self.spec.kind, reduced, count)
            if not self.backend.index.is_trained:
                size = min(count, TRAIN_SAMPLE)
                picked = np.sort(rng.choice(count, size, replace=False))
                sample = np.concatenate([self._reduce(b) for b in rows.blocks(picked)])
                self.backend.index.train(sample)
        self.trained = True

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x if self.pca is None else self.pca.apply(x), np.float32)

    def add(self, block: np.ndarray, rows: ChunkedRows, live: np.ndarray | None = None) -> None:
        """Index `block`, the last rows of `rows`; learns the trained parts once enough exist.

        The first time an approximate index reaches the tuning minimum it is tuned here (a
        small map: well under a second); later tuning happens when the index is rebuilt.
        """
        if not self.trained and len(rows) >= self.spec.min_keyframes():
            self.rebuild(rows, live)
            return
        self.backend.add(self._reduce(block))
        status = self.tuning.get('status')
        if self.approximate and status in (None, 'too small'):
            if status is None or self.needs_tuning(len(rows) if live is None else
                                                   int(live.sum())):
                self.tune(rows, live)  # below the minimum: records 'too small' (no work)

    def truncate(self, count: int) -> bool:
        """Forget rows from `count` on (a rollback); False when only a rebuild can."""
        if self.trained_on > count:
            return False  # trained by the add being undone: the trained parts must go too
        return self.backend.truncate(count)

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
               rows: ChunkedRows) -> tuple[np.ndarray, np.ndarray]:
        """Best `k` rows per query among rows where `mask` holds: (similarities, rows or -1)."""
        if not self.approximate:
            return self.backend.search(queries, k, mask)
        knobs = self.knobs  # read once: a concurrent re-tune swaps the whole dict
        rerank = knobs['rerank']
        fetch = max(k, rerank)
        knob = knobs['hnsw_ef_search'] if self.backend.kind == 'hnsw' else knobs['ivf_nprobe']
        sims, cand = self.backend.search(self._reduce(queries), fetch, mask, knob)
        if rerank == 0:
            return sims[:, :k], cand[:, :k]
        exact = exact_similarities(queries, cand, rows)
        order = np.argsort(-exact, axis=1, kind='stable')[:, :k]
        out_s = np.take_along_axis(exact, order, axis=1)
        out_r = np.where(np.isfinite(out_s), np.take_along_axis(cand, order, axis=1), -1)
        return out_s, out_r

    def cache(self) -> dict[str, np.ndarray] | None:
        """Arrays that let a reload skip training and indexing (None: cheap to rebuild)."""
        if not (self.trained and self.approximate and isinstance(self.backend, _FaissBackend)):
            return None
        out = {'index.faiss': self.backend.to_bytes()}
        if self.pca is not None:
            out['pca_mean.npy'] = self.pca.mean
            out['pca_components.npy'] = self.pca.components
        return out

    def restore(self, cache: dict[str, np.ndarray], count: int, trained_on: int,
                tuning: dict[str, Any] | None = None) -> bool:
        """Adopt a cached index of `count` rows and its tuning; False when it does not fit."""
        spec = self.spec
        if spec.device != 'cpu' or count < spec.min_keyframes() or \
                (spec.pca_dim is None and spec.kind in FLAT_KINDS):
            return False
        try:
            index = faiss.deserialize_index(cache['index.faiss'])
        except (KeyError, RuntimeError):
            return False
        if type(index) is not _FAISS_TYPES[spec.kind] or index.ntotal != count \
                or index.d != (spec.pca_dim or self.dim):
            return False
        pca = None
        if spec.pca_dim is not None:
            mean, components = cache.get('pca_mean.npy'), cache.get('pca_components.npy')
            if mean is None or components is None or mean.shape != (self.dim,) \
                    or components.shape != (spec.pca_dim, self.dim):
                return False
            pca = Pca(mean, components)
        self.pca, self.trained = pca, True
        self.backend = _FaissBackend(index, spec, spec.kind)
        self.trained_on = trained_on
        self.set_tuning(tuning or {})
        return True


def exact_similarities(queries: np.ndarray, cand: np.ndarray, rows: ChunkedRows) -> np.ndarray:
    """Exact cosine of every candidate row with its query (-inf where cand is -1).

    A few queries: the candidates' rows are read per query and scored on this thread (faiss
    SIMD, no BLAS thread pool); a batch: the distinct rows are read once and scored by faiss.
    """
    valid = cand >= 0
    if len(queries) < SMALL_BATCH:
        exact = np.full(cand.shape, -np.inf, np.float32)
        for i in range(len(queries)):
            exact[i, valid[i]] = inner_products(rows.take(cand[i, valid[i]]), queries[i])
        return exact
    wanted = np.unique(cand[valid])
    vectors = np.ascontiguousarray(rows.take(wanted), np.float32)
    pos = np.where(valid, np.searchsorted(wanted, cand), -1).astype(np.int64)
    exact = np.empty(cand.shape, np.float32)
    q = np.ascontiguousarray(queries, np.float32)
    faiss.fvec_inner_products_by_idx(faiss.swig_ptr(exact), faiss.swig_ptr(q),
                                     faiss.swig_ptr(vectors), faiss.swig_ptr(pos), q.shape[1],
                                     len(q), cand.shape[1])
    return exact


_FAISS_TYPES = {'flat': faiss.IndexFlatIP, 'flat_fp16': faiss.IndexScalarQuantizer,
                'hnsw': faiss.IndexHNSWFlat, 'ivfpq': faiss.IndexIVFPQ,
                'ivfsq8': faiss.IndexIVFScalarQuantizer}
