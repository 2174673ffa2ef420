"""Search structures over the map's descriptors, always rebuildable from the stored vectors.

Exact search reads every stored value per query (16384-d: 64 KiB per keyframe), so large maps
need a reduction (PCA learned from the map) and/or an approximate index (HNSW, IVF-PQ).  The
approximate configurations re-rank their best candidates with the full stored descriptors, so
the similarities they return are exact cosines of the returned keyframes; only the candidate set
is approximate.  Trained parts are learned from the map once it holds enough keyframes; below
that minimum the index is exact and says so in its state.
"""
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import faiss
import numpy as np

from boq_ros.keyframe_map.rows import ChunkedRows
from boq_ros.keyframe_map.schema import MapError
from boq_ros.settings import INDEX_KINDS

Kind = Literal['flat', 'flat_fp16', 'hnsw', 'ivfpq']
KINDS = INDEX_KINDS
FLAT_KINDS = ('flat', 'flat_fp16')

IVFPQ_MIN_KEYFRAMES = 10_000
"""IVF-PQ trains once the map holds max(this, 40 * nlist) keyframes (PQ: 256 centroids)."""
PCA_MIN_FACTOR = 2
"""PCA trains once the map holds PCA_MIN_FACTOR * pca_dim keyframes."""
PCA_SAMPLE = 2048
"""PCA learns from max(PCA_SAMPLE, 2 * pca_dim) keyframes (an eigendecomposition of that size)."""
TRAIN_SAMPLE = 65_536
"""IVF-PQ learns from at most this many keyframes."""
ADD_BLOCK = 8192
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
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None
    pq_m: int | None = None
    ivf_nprobe: int = 16
    device: str = 'cpu'
    rerank: int = 32

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MapError(f'index kind {self.kind!r} is not one of {", ".join(KINDS)}')
        for name in ('hnsw_m', 'hnsw_ef_search', 'ivf_nprobe'):
            if _bad_int(getattr(self, name), 1):
                raise MapError(f'index {name} must be a positive integer, '
                               f'got {getattr(self, name)!r}')
        if _bad_int(self.rerank, 0):
            raise MapError(f'index rerank must be an integer >= 0, got {self.rerank!r}')
        for name in ('pca_dim', 'ivf_nlist', 'pq_m'):
            value = getattr(self, name)
            if value is not None and _bad_int(value, 1):
                raise MapError(f'index {name} must be a positive integer or None, got {value!r}')
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
        if self.kind == 'ivfpq':
            need = max(need, IVFPQ_MIN_KEYFRAMES, 40 * (self.ivf_nlist or 0))
        return need

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'IndexSpec':
        """Parse the schema's index entry, refusing unknown fields."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MapError(f'schema.json: unknown index field(s) {unknown}')
        return cls(**data)


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

        A few queries go through one matrix-vector product each: on a loaded machine a small
        matrix product paid for BLAS thread hand-over (16 ms against 0.8 ms, 16384 -> 512).
        """
        centred = x - self.mean
        if len(x) < SMALL_BATCH:
            y = np.stack([self.components @ row for row in centred])
        else:
            y = centred @ self.components.T
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return (y / np.maximum(norms, 1e-12)).astype(np.float32)


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
        else:
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, spec.nlist_for(count),
                                     spec.pq_m_for(dim), 8, ip)
        return cls(index, spec, kind)

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, q: np.ndarray, k: int,
               mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        bits = None if mask is None else np.packbits(mask, bitorder='little')
        sel = None if bits is None else faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        if self.kind == 'hnsw':
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.spec.hnsw_ef_search, k))
        elif self.kind == 'ivfpq':
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.spec.ivf_nprobe)
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

    def search(self, q: np.ndarray, k: int,
               mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        queries = torch.from_numpy(q).to(self.device, self.dtype)
        sims = (queries @ self.data[:self.count].T).float()
        if mask is not None:
            sims[:, ~torch.from_numpy(mask).to(self.device)] = -torch.inf
        top = min(k, self.count)
        values, rows = torch.topk(sims, top, dim=1)
        values, rows = values.cpu().numpy(), rows.cpu().numpy().astype(np.int64)
        rows[~np.isfinite(values)] = -1
        out_v = np.full((len(q), k), -np.inf, np.float32)
        out_r = np.full((len(q), k), -1, np.int64)
        out_v[:, :top], out_r[:, :top] = values, rows
        return out_v, out_r



class SearchIndex:
    """The map's search structure over row numbers: exact, or trained and re-ranked."""

    def __init__(self, spec: IndexSpec, dim: int) -> None:
        spec.check_dim(dim)
        self.spec, self.dim = spec, dim
        self.pca: Pca | None = None
        self.backend: _FaissBackend | _TorchBackend = self._exact_backend()
        self.trained = spec.min_keyframes() == 0
        self.trained_on = 0
        self.state = self._describe()

    def _exact_backend(self) -> '_FaissBackend | _TorchBackend':
        """Return the backend used before training: the spec's own if it needs none, else exact."""
        half = self.spec.kind == 'flat_fp16'
        if self.spec.device != 'cpu':
            return _TorchBackend(self.dim, half, self.spec.device)
        kind = self.spec.kind if self.spec.min_keyframes() == 0 else \
            ('flat_fp16' if half else 'flat')
        return _FaissBackend.create(self.spec, kind, self.dim, 0)

    def _describe(self) -> str:
        if self.trained and self.spec.min_keyframes():
            return f'trained on {self.trained_on} keyframes'
        if self.trained:
            return 'ready (nothing to train)'
        return (f'exact fallback: {self.spec.kind}'
                f'{f" + pca {self.spec.pca_dim}" if self.spec.pca_dim else ""} trains at '
                f'{self.spec.min_keyframes()} keyframes')

    @property
    def approximate(self) -> bool:
        return self.pca is not None or self.backend.kind in ('hnsw', 'ivfpq')

    def rebuild(self, rows: ChunkedRows) -> None:
        """Learn the trained parts (when the map is large enough) and index every row."""
        count = len(rows)
        need = self.spec.min_keyframes()
        if need == 0 or count < need:
            self.pca, self.trained = None, need == 0
            self.backend = self._exact_backend()
        else:
            self._train(rows)
            self.trained_on = count
        for block in rows.blocks(block_rows=ADD_BLOCK):
            self.backend.add(self._reduce(block))
        self.state = self._describe()

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

    def add(self, block: np.ndarray, rows: ChunkedRows) -> None:
        """Index `block`, the last rows of `rows`; learns the trained parts once enough exist."""
        if not self.trained and len(rows) >= self.spec.min_keyframes():
            self.rebuild(rows)
            return
        self.backend.add(self._reduce(block))

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
               rows: ChunkedRows) -> tuple[np.ndarray, np.ndarray]:
        """Best `k` rows per query among rows where `mask` holds: (similarities, rows or -1)."""
        if not self.approximate:
            return self.backend.search(queries, k, mask)
        fetch = max(k, self.spec.rerank)
        sims, cand = self.backend.search(self._reduce(queries), fetch, mask)
        if self.spec.rerank == 0:
            return sims[:, :k], cand[:, :k]
        valid = cand >= 0
        wanted = np.unique(cand[valid])
        vectors = rows.take(wanted)
        exact = np.full(cand.shape, -np.inf, np.float32)
        for i in range(len(queries)):
            pos = np.searchsorted(wanted, cand[i, valid[i]])
            exact[i, valid[i]] = vectors[pos] @ queries[i]
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

    def restore(self, cache: dict[str, np.ndarray], count: int, trained_on: int) -> bool:
        """Adopt a cached index of `count` rows; False when it does not fit the spec."""
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
        self.state = self._describe()
        return True


_FAISS_TYPES = {'flat': faiss.IndexFlatIP, 'flat_fp16': faiss.IndexScalarQuantizer,
                'hnsw': faiss.IndexHNSWFlat, 'ivfpq': faiss.IndexIVFPQ}
