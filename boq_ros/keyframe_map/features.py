"""Local features of keyframes: what geometric verification needs, computed once, kept with them.

Held like the descriptors: concatenated arrays that only grow (keypoints, depth, one descriptor
array per kind, since dimensions and dtypes differ) and one table row per keyframe with its
offsets, so that a loaded map memory-maps the arrays and `get(row)` slices them on demand.
Rows past the table's end have no features: a map that never held any costs nothing.
"""
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
import math
import numbers
import re
from typing import Any

import numpy as np

from boq_ros.keyframe_map.rows import ChunkedRows
from boq_ros.keyframe_map.schema import MapError

KIND_PATTERN = re.compile(r'[a-z0-9][a-z0-9_-]{0,31}')
"""Feature kinds name a file (features_descriptors_<kind>.npy): short, lowercase, no dots."""
DESCRIPTOR_DTYPES = ('uint8', 'float16')

FEATURE_DTYPE = np.dtype([
    ('kind', '<i4'), ('count', '<i4'), ('keypoints', '<i8'), ('descriptors', '<i8'),
    ('depth', '<i8'), ('image_size', '<i4', (2,)), ('intrinsics', '<f8', (4,)),
])
"""One row per keyframe: kind code (-1: no features), keypoint count, where its keypoints,
descriptors (in its kind's array) and depth (-1: none) start, image size, intrinsics (NaN:
uncalibrated)."""
EMPTY_ROW = np.array((-1, 0, 0, 0, -1, (0, 0), (math.nan,) * 4), FEATURE_DTYPE)

TABLE_FILE = 'features.npy'
KEYPOINTS_FILE = 'features_keypoints.npy'
DEPTH_FILE = 'features_depth.npy'
MERGE_ROWS = 256
"""Keyframes copied per step of a merge (bounded memory with memory-mapped sources)."""


def descriptor_file(kind: str) -> str:
    """Name the file that holds the descriptors of one feature kind."""
    return f'features_descriptors_{kind}.npy'


def _shape(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f'{value.dtype} {list(value.shape)}'
    return type(value).__name__


@dataclass(frozen=True)
class LocalFeatures:
    """What geometric verification needs of one keyframe (computed once, stored with it)."""

    kind: str                  # feature kind: 'sift', 'orb', 'xfeat', 'aliked', ...
    # [N, 2] float32, undistorted pixel coordinates in the ideal pinhole camera `intrinsics`
    keypoints: np.ndarray
    descriptors: np.ndarray    # [N, D] uint8 (sift, orb) or float16 (learned kinds)
    image_size: tuple[int, int]  # width, height of the image they were found in
    # fx, fy, cx, cy; None: uncalibrated camera
    intrinsics: tuple[float, float, float, float] | None = None
    # [N] float32 metres at the keypoints, NaN where unknown; None: no depth image
    depth: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not KIND_PATTERN.fullmatch(self.kind):
            raise MapError(f'local features kind must be 1-32 lowercase letters, digits, _ or - '
                           f'(it names a file), got {self.kind!r}')
        kp = self.keypoints
        if not isinstance(kp, np.ndarray) or kp.dtype != np.float32 or kp.ndim != 2 \
                or kp.shape[1] != 2:
            raise MapError(f'local features keypoints must be an [N, 2] float32 array, got '
                           f'{_shape(kp)}')
        if not np.isfinite(kp).all():
            raise MapError('local features keypoints contain NaN or infinity')
        n, desc = len(kp), self.descriptors
        if not isinstance(desc, np.ndarray) or desc.dtype.name not in DESCRIPTOR_DTYPES \
                or desc.ndim != 2 or desc.shape[0] != n or desc.shape[1] < 1:
            raise MapError(f'local features descriptors must be an [{n}, D] uint8 or float16 '
                           f'array (one row per keypoint), got {_shape(desc)}')
        if desc.dtype == np.float16 and not np.isfinite(desc).all():
            raise MapError('local features descriptors contain NaN or infinity')
        size = self.image_size
        if not isinstance(size, (tuple, list, np.ndarray)) or len(size) != 2 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                for v in size):
            raise MapError(f'local features image_size must be (width, height) in positive '
                           f'integers, got {size!r}')
        object.__setattr__(self, 'image_size', (int(size[0]), int(size[1])))
        if self.intrinsics is not None:
            k = self.intrinsics
            numeric = isinstance(k, (tuple, list, np.ndarray)) and len(k) == 4 and all(
                isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in k)
            k = tuple(float(v) for v in k) if numeric else ()
            if not numeric or not all(math.isfinite(v) for v in k) or k[0] <= 0 or k[1] <= 0:
                raise MapError(f'local features intrinsics must be 4 finite numbers (fx, fy, '
                               f'cx, cy) with positive focal lengths, got {self.intrinsics!r}')
            object.__setattr__(self, 'intrinsics', k)
        depth = self.depth
        if depth is not None:
            if not isinstance(depth, np.ndarray) or depth.dtype != np.float32 \
                    or depth.shape != (n,):
                raise MapError(f'local features depth must be a [{n}] float32 array (one value '
                               f'per keypoint) or None, got {_shape(depth)}')
            if (~np.isnan(depth) & ~(np.isfinite(depth) & (depth > 0))).any():
                raise MapError('local features depth must be positive metres, or NaN where '
                               'unknown')

    @property
    def nbytes(self) -> int:
        """Return the bytes of its arrays: what the map stores (plus a 72-byte table row)."""
        depth = 0 if self.depth is None else self.depth.nbytes
        return self.keypoints.nbytes + self.descriptors.nbytes + depth


@dataclass(frozen=True)
class ArrayStream:
    """An .npy file to write: its shape and dtype, and its rows as blocks produced on demand."""

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Iterable[np.ndarray]


Kind = tuple[str, int, np.dtype]
"""A feature kind, its descriptor dimension and dtype."""


def parse_kinds(specs: Sequence[Any]) -> list[Kind]:
    """Read the schema's local_features entries, naming the first malformed one."""
    kinds: list[Kind] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or set(spec) != {'kind', 'dim', 'dtype'} \
                or not isinstance(spec['kind'], str) or not KIND_PATTERN.fullmatch(spec['kind']) \
                or isinstance(spec['dim'], bool) or not isinstance(spec['dim'], int) \
                or spec['dim'] < 1 or spec['dtype'] not in DESCRIPTOR_DTYPES:
            raise MapError(f'schema.json: local_features[{i}] must be {{"kind": name, "dim": '
                           f'D, "dtype": "uint8" or "float16"}}, got {spec!r}')
        if spec['kind'] in (k for k, _, _ in kinds):
            raise MapError(f'schema.json: local_features names kind {spec["kind"]!r} twice')
        kinds.append((spec['kind'], spec['dim'], np.dtype(spec['dtype'])))
    return kinds


def _end(starts: np.ndarray, counts: np.ndarray, used: np.ndarray) -> int:
    """Return where the used ranges end (0 when none is used)."""
    return int((starts[used] + counts[used]).max(initial=0))


def _ranges(source: ChunkedRows, starts: np.ndarray, counts: np.ndarray) -> Iterator[np.ndarray]:
    """Yield the rows [start, start + count) of each range of `source`, in order, in blocks."""
    ends = np.cumsum(counts)
    first = 0
    while first < len(starts):
        limit = ends[first] - counts[first] + source.chunk_rows
        last = max(first + 1, int(np.searchsorted(ends, limit, side='right')))
        n = counts[first:last]
        index = np.repeat(starts[first:last] - (np.cumsum(n) - n), n) + np.arange(n.sum())
        yield source.take(index, source.dtype)
        first = last


class FeatureStore:
    """The local features of a map's rows (aligned with its MetaTable rows)."""

    def __init__(self) -> None:
        self.kinds: list[Kind] = []
        self.table = np.zeros(0, FEATURE_DTYPE)
        self.count = 0
        self.keypoints = ChunkedRows(2, np.dtype(np.float32))
        self.depth = ChunkedRows(1, np.dtype(np.float32))
        self.descriptors: list[ChunkedRows] = []

    def specs(self) -> tuple[dict[str, Any], ...]:
        """Return the kinds as the schema's local_features entries."""
        return tuple({'kind': kind, 'dim': dim, 'dtype': dtype.name}
                     for kind, dim, dtype in self.kinds)

    def check(self, features: Sequence[Any], where: str) -> None:
        """Refuse entries that are not LocalFeatures or whose descriptors do not fit their kind."""
        known = {kind: (dim, dtype) for kind, dim, dtype in self.kinds}
        for i, f in enumerate(features):
            if f is None:
                continue
            if not isinstance(f, LocalFeatures):
                raise MapError(f'{where}[{i}]: expected LocalFeatures or None, got '
                               f'{type(f).__name__}')
            shape = (f.descriptors.shape[1], f.descriptors.dtype)
            stored = known.setdefault(f.kind, shape)
            if stored != shape:
                raise MapError(f'{where}[{i}]: {f.kind} descriptors are {shape[0]} x {shape[1]}, '
                               f'this map stores {stored[0]} x {stored[1]} for that kind')

    def check_from(self, other: 'FeatureStore', rows: np.ndarray, where: str) -> None:
        """Refuse a merge of `other`'s rows whose kinds this map stores with other shapes."""
        codes = other.table['kind'][rows[rows < other.count]]
        known = {kind: (dim, dtype) for kind, dim, dtype in self.kinds}
        for code in np.unique(codes[codes >= 0]):
            kind, dim, dtype = other.kinds[code]
            stored = known.get(kind, (dim, dtype))
            if stored != (dim, dtype):
                raise MapError(f'{where}: its {kind} descriptors are {dim} x {dtype}, this map '
                               f'stores {stored[0]} x {stored[1]} for that kind')

    def _code(self, kind: str, dim: int, dtype: np.dtype) -> int:
        for code, (name, _, _) in enumerate(self.kinds):
            if name == kind:
                return code
        self.kinds.append((kind, dim, dtype))
        self.descriptors.append(ChunkedRows(dim, dtype))
        return len(self.kinds) - 1

    def append(self, first_row: int, features: Sequence[LocalFeatures | None]) -> None:
        """Store the features of rows `first_row`, ... (checked by `check`; None: it has none)."""
        used = [i for i, f in enumerate(features) if f is not None]
        if not used:
            return
        stop = first_row + used[-1] + 1
        if stop > len(self.table):
            table = np.full(max(stop, 2 * len(self.table), 1024), EMPTY_ROW)
            table[:self.count] = self.table[:self.count]
            self.table = table
        block = np.full(used[-1] + 1, EMPTY_ROW)
        for i in used:
            f = features[i]
            code = self._code(f.kind, f.descriptors.shape[1], f.descriptors.dtype)
            block[i] = (code, len(f.keypoints), len(self.keypoints), len(self.descriptors[code]),
                        -1 if f.depth is None else len(self.depth), f.image_size,
                        f.intrinsics or (math.nan,) * 4)
            self.keypoints.append(f.keypoints)
            self.descriptors[code].append(f.descriptors)
            if f.depth is not None:
                self.depth.append(f.depth[:, None])
        self.table[self.count:first_row] = EMPTY_ROW
        self.table[first_row:stop] = block
        self.count = stop

    def append_from(self, other: 'FeatureStore', rows: np.ndarray, first_row: int) -> None:
        """Copy the features of `other`'s rows to rows `first_row`, ... (checked by check_from)."""
        rows = rows[:np.searchsorted(rows, other.count)]  # sorted; rows past the table: none
        for start in range(0, len(rows), MERGE_ROWS):
            self.append(first_row + start,
                        [other.get(int(r)) for r in rows[start:start + MERGE_ROWS]])

    def truncate(self, rows: int, kinds: int) -> None:
        """Forget rows from `rows` on and kinds from `kinds` on (undo of an add or a merge).

        Every array is cut where the ranges of the rows kept end, which also drops what an
        append that failed half way wrote before its table rows.
        """
        self.count = min(self.count, rows)
        del self.kinds[kinds:], self.descriptors[kinds:]
        kept = self.table[:self.count]
        counts = kept['count'].astype(np.int64)
        self.keypoints.truncate(_end(kept['keypoints'], counts, kept['kind'] >= 0))
        self.depth.truncate(_end(kept['depth'], counts, kept['depth'] >= 0))
        for code, stored in enumerate(self.descriptors):
            stored.truncate(_end(kept['descriptors'], counts, kept['kind'] == code))

    def get(self, row: int) -> LocalFeatures | None:
        """Return the features of one row (fresh arrays), None when it has none."""
        if row >= self.count or self.table['kind'][row] < 0:
            return None
        rec = self.table[row]
        n, code = int(rec['count']), int(rec['kind'])
        kind, _, dtype = self.kinds[code]
        depth = None if rec['depth'] < 0 else \
            self.depth.take(np.arange(n) + rec['depth']).reshape(n)
        intrinsics = None if np.isnan(rec['intrinsics'][0]) else \
            tuple(float(v) for v in rec['intrinsics'])
        return LocalFeatures(
            kind, self.keypoints.take(np.arange(n) + rec['keypoints']),
            self.descriptors[code].take(np.arange(n) + rec['descriptors'], dtype),
            (int(rec['image_size'][0]), int(rec['image_size'][1])), intrinsics, depth)

    def statistics(self, live: np.ndarray) -> dict[str, Any]:
        """Count live keyframes with features, per kind, and the bytes of their arrays."""
        rows = self.table[:self.count][live[:self.count]]
        rows = rows[rows['kind'] >= 0]
        per_keypoint = np.array([dim * dtype.itemsize for _, dim, dtype in self.kinds], np.int64)
        nbytes = rows['count'].astype(np.int64) * (
            8 + per_keypoint[rows['kind']] + 4 * (rows['depth'] >= 0))
        counts = np.bincount(rows['kind'], minlength=len(self.kinds))
        total = int(nbytes.sum())
        return {'with_features': len(rows),
                'feature_kinds': {kind: int(n) for (kind, _, _), n in zip(self.kinds, counts)
                                  if n},
                'feature_bytes': total,
                'feature_bytes_per_keyframe': round(total / len(rows), 1) if len(rows) else 0.0}

    def snapshot(self, rows: np.ndarray) -> dict[str, ArrayStream]:
        """Return the files of the given rows' features, compacted (none if no kind is known).

        The arrays are read when the streams are consumed, outside the map's lock: the stored
        ranges of existing rows never change.
        """
        if not self.kinds:
            return {}
        table = np.full(len(rows), EMPTY_ROW)
        inside = rows < self.count
        table[inside] = self.table[rows[inside]]
        counts = table['count'].astype(np.int64)
        files: dict[str, ArrayStream] = {}

        def compact(column: str, used: np.ndarray, source: ChunkedRows, name: str,
                    tail: tuple[int, ...]) -> None:
            starts, n = table[column][used], counts[used]
            table[column][used] = np.cumsum(n) - n
            files[name] = ArrayStream((int(n.sum()), *tail), source.dtype,
                                      _ranges(source, starts, n))

        compact('keypoints', table['kind'] >= 0, self.keypoints, KEYPOINTS_FILE, (2,))
        compact('depth', table['depth'] >= 0, self.depth, DEPTH_FILE, ())
        for code, (kind, dim, _) in enumerate(self.kinds):
            compact('descriptors', table['kind'] == code, self.descriptors[code],
                    descriptor_file(kind), (dim,))
        files[TABLE_FILE] = ArrayStream(table.shape, FEATURE_DTYPE, [table])
        return files

    @classmethod
    def from_arrays(cls, kinds: list[Kind], table: np.ndarray, keypoints: np.ndarray,
                    depth: np.ndarray, descriptors: list[np.ndarray],
                    count: int) -> 'FeatureStore':
        """Rebuild a store from its files (arrays may be memory maps), refusing bad content."""
        if table.dtype != FEATURE_DTYPE or table.shape != (count,):
            raise MapError(f'{TABLE_FILE}: expected {count} rows of {FEATURE_DTYPE}, got '
                           f'{_shape(table)}')
        if keypoints.dtype != np.float32 or keypoints.ndim != 2 or keypoints.shape[1] != 2:
            raise MapError(f'{KEYPOINTS_FILE}: expected float32 [M, 2], got {_shape(keypoints)}')
        if depth.dtype != np.float32 or depth.ndim != 1:
            raise MapError(f'{DEPTH_FILE}: expected float32 [M], got {_shape(depth)}')
        for (kind, dim, dtype), array in zip(kinds, descriptors):
            if array.dtype != dtype or array.ndim != 2 or array.shape[1] != dim:
                raise MapError(f'{descriptor_file(kind)}: expected {dtype} [M, {dim}] '
                               f'(schema.json), got {_shape(array)}')
        code, n = table['kind'], table['count'].astype(np.int64)
        has = code >= 0
        if (code >= len(kinds)).any() or (code < -1).any():
            raise MapError(f'{TABLE_FILE}: refers to feature kinds missing from schema.json')
        if (n < 0).any() or (n[~has] != 0).any():
            raise MapError(f'{TABLE_FILE}: bad keypoint counts')
        lengths = [(table['keypoints'], has, len(keypoints), KEYPOINTS_FILE),
                   (table['depth'], table['depth'] >= 0, len(depth), DEPTH_FILE)]
        lengths += [(table['descriptors'], code == c, len(array), descriptor_file(kind))
                    for c, ((kind, _, _), array) in enumerate(zip(kinds, descriptors))]
        for starts, used, length, name in lengths:
            if (starts[used] < 0).any() or _end(starts, n, used) > length:
                raise MapError(f'{TABLE_FILE}: ranges point outside {name}')
        if (table['depth'][~has] != -1).any() or (table['depth'] < -1).any() \
                or (table['image_size'][has] <= 0).any():
            raise MapError(f'{TABLE_FILE}: bad depth references or image sizes')
        k = table['intrinsics'][has]
        calibrated = ~np.isnan(k).all(axis=1)
        if not (np.isfinite(k[calibrated]).all() and (k[calibrated][:, :2] > 0).all()):
            raise MapError(f'{TABLE_FILE}: intrinsics must be finite with positive focal '
                           f'lengths, or all NaN')
        store = cls()
        store.kinds = list(kinds)
        store.table = np.array(table, FEATURE_DTYPE)
        store.count = count
        store.keypoints = ChunkedRows(2, np.dtype(np.float32), keypoints)
        store.depth = ChunkedRows(1, np.dtype(np.float32), depth.reshape(-1, 1))
        store.descriptors = [ChunkedRows(dim, dtype, array)
                             for (_, dim, dtype), array in zip(kinds, descriptors)]
        return store
