"""The keyframe map: what loop closure and relocalisation search, online and offline.

Descriptors (full dimension, always kept so that any index can be rebuilt), per-keyframe
metadata, optional local features (for geometric verification) and a schema, behind one lock so
that a detector thread can search while another adds.  Removal only hides rows (ids are never
reused); the next save writes the live rows.  An index rebuild happens beside the live index,
without that lock, and is swapped in atomically.
"""
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
import json
import os
from pathlib import Path
import threading
from typing import Any
import uuid

import numpy as np

from boq_ros import __version__
from boq_ros.keyframe_map import store
from boq_ros.keyframe_map.base import (
    KeyframeBlock,
    KeyframeStore,
    SearchFilter,
    SearchResult,
    check_filter,
    check_k,
    check_mergeable,
    check_vectors,
)
from boq_ros.keyframe_map.features import FeatureStore, LocalFeatures
from boq_ros.keyframe_map.index import IndexSpec, SearchIndex
from boq_ros.keyframe_map.meta import KeyframeMeta, MetaTable, check_meta
from boq_ros.keyframe_map.rows import ChunkedRows, FileRows
from boq_ros.keyframe_map.schema import SCHEMA_VERSION, MapError, MapSchema

METRICS = ('ip',)
REBUILD_ATTEMPTS = 3
"""Aside rebuilds tried before one is done under the lock (a rollback that cuts into the rows
being indexed makes an aside rebuild start again)."""
Savepoint = tuple[int, int, dict[str, int], int]
"""Rows, next id, next seq per session and feature kinds of a map at one moment."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='milliseconds')


@dataclass
class _State:
    map_id: str
    created: str
    modified: str
    next_id: int
    history: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


class KeyframeMap(KeyframeStore):
    """The embedded store: FAISS index, descriptors + metadata + schema in one process."""

    def __init__(self, dim: int, *, model_id: str, preprocess: dict[str, Any],
                 index: IndexSpec = IndexSpec(), metric: str = 'ip',
                 storage_dtype: str = 'float32', map_id: str | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise MapError(f'descriptor dimension must be a positive integer, got {dim!r}')
        if not isinstance(model_id, str) or not model_id:
            raise MapError('model_id must be a non-empty string (it names the descriptor model)')
        if not isinstance(preprocess, dict):
            raise MapError(f'preprocess must be a dict, got {type(preprocess).__name__}')
        try:
            json.dumps(preprocess)
        except (TypeError, ValueError) as exc:
            raise MapError(f'preprocess must be JSON-serialisable: {exc}') from exc
        if metric not in METRICS:
            raise MapError(f'metric {metric!r} is not supported (descriptors are unit vectors: '
                           f'use "ip", cosine similarity)')
        if not isinstance(index, IndexSpec):
            raise MapError(f'index must be an IndexSpec, got {type(index).__name__}')
        if storage_dtype not in ('float32', 'float16'):
            raise MapError(f'storage_dtype must be "float32" or "float16", got {storage_dtype!r}')
        self.dim, self.model_id, self.metric = int(dim), model_id, metric
        self.preprocess = json.loads(json.dumps(preprocess))
        self._lock = threading.RLock()
        self._rebuild_lock = threading.Lock()  # one rebuild or re-tune at a time
        self._low_water: int | None = None  # fewest rows since an aside rebuild's snapshot
        self._rows = ChunkedRows(self.dim, np.dtype(storage_dtype))
        self._table = MetaTable()
        self._features = FeatureStore()
        self._search = SearchIndex(index, self.dim)
        self._next_seq: dict[str, int] = {}
        self._path: Path | None = None  # where it was last loaded from or saved to
        now = utc_now()
        self._state = _State(map_id or uuid.uuid4().hex, now, now, 0,
                             [{'event': 'created', 'time': now, 'package_version': __version__}])

    # -- identity -----------------------------------------------------------------------------
    @property
    def map_id(self) -> str:
        return self._state.map_id

    @property
    def uri(self) -> str:
        return f'faiss:{self._path}' if self._path is not None else 'faiss:(in memory)'

    @property
    def index_spec(self) -> IndexSpec:
        return self._search.spec

    @property
    def schema(self) -> MapSchema:
        with self._lock:
            return MapSchema(
                schema_version=SCHEMA_VERSION, map_id=self.map_id, model_id=self.model_id,
                dim=self.dim, metric=self.metric, preprocess=dict(self.preprocess),
                index=self._search.spec.to_dict(), index_state=self._search.state,
                index_trained_on=self._search.trained_on,
                storage_dtype=self._rows.dtype.name, package_version=__version__,
                created=self._state.created, modified=self._state.modified, count=len(self),
                next_id=self._state.next_id, history=tuple(dict(h) for h in self._state.history),
                files=dict(self._state.files), local_features=self._features.specs(),
                index_tuning=dict(self._search.tuning))

    def __len__(self) -> int:
        with self._lock:
            return int(self._table.live_mask().sum())

    def session_size(self, session: str) -> int:
        """Next seq of `session` (0 when the map holds none of it)."""
        with self._lock:
            return self._next_seq.get(session, 0)

    def sessions(self) -> dict[str, int]:
        """Keyframe count of every session in the map."""
        with self._lock:
            codes = self._table.columns()['session'][self._table.live_mask()]
            counts = np.bincount(codes, minlength=len(self._table.vocab['session'].words))
            words = self._table.vocab['session'].words
            return {words[c]: int(n) for c, n in enumerate(counts) if n}

    def statistics(self) -> dict[str, Any]:
        """Count what a user checks before trusting a map: sessions, poses, local features."""
        with self._lock:
            return {**self._table.statistics(),
                    **self._features.statistics(self._table.live_mask())}

    # -- validation ---------------------------------------------------------------------------
    def _check_vectors(self, x: Any, what: str) -> np.ndarray:
        return check_vectors(x, self.dim, what)

    def _row_of(self, keyframe_id: int) -> int:
        ids = self._table.columns()['id']
        row = int(np.searchsorted(ids, keyframe_id))
        if row == len(ids) or ids[row] != keyframe_id or not self._table.live[row]:
            raise MapError(f'no keyframe with id {keyframe_id} in map {self.map_id}')
        return row

    # -- growth -------------------------------------------------------------------------------
    def add(self, descriptors: np.ndarray, metas: Sequence[KeyframeMeta],
            features: Sequence[LocalFeatures | None] | None = None) -> np.ndarray:
        """Append keyframes; returns their new ids (input id/seq are ignored and assigned here).

        `features` holds each keyframe's local features (None: it has none).
        """
        x = self._check_vectors(descriptors, 'descriptors')
        metas = list(metas)
        if len(metas) != len(x):
            raise MapError(f'got {len(x)} descriptors but {len(metas)} metadata entries')
        for i, meta in enumerate(metas):
            check_meta(meta, f'metas[{i}]')
        features = [None] * len(metas) if features is None else list(features)
        if len(features) != len(metas):
            raise MapError(f'got {len(features)} local features entries for {len(metas)} '
                           f'keyframes')
        with self._lock:
            self._features.check(features, 'features')
            ids = self._state.next_id + np.arange(len(x), dtype=np.int64)
            seqs = np.empty(len(x), np.int64)
            next_seq = dict(self._next_seq)
            for i, meta in enumerate(metas):
                seqs[i] = next_seq.get(meta.session, 0)
                next_seq[meta.session] = int(seqs[i]) + 1
            # Nothing is committed until every part took the keyframes: a failure half way
            # (memory, index training) leaves the map exactly as it was, rows and index aligned.
            count, kinds = len(self._rows), len(self._features.kinds)
            self._table.append(metas, ids, seqs, self.map_id, ids)
            try:
                self._features.append(count, features)
                self._rows.append(x)
                self._search.add(x, self._rows, self._table.live_mask())
            except BaseException:
                self._rollback(count, kinds)
                raise
            self._next_seq = next_seq
            self._state.next_id += len(x)
            self._state.modified = utc_now()
            return ids

    def _rollback(self, count: int, kinds: int) -> None:
        """Forget the rows from `count` on and re-index the rest (after a failed append).

        The index drops the rows in place when its kind can (flat, IVF: no retraining, the
        tuning kept); else (HNSW, or the failed add trained the index) it is rebuilt, keeping
        the tuning unless the training is redone.
        """
        self._table.truncate(count)
        self._features.truncate(count, kinds)
        self._rows.truncate(count)
        if self._low_water is not None:
            self._low_water = min(self._low_water, count)
        old = self._search
        if old.truncate(count):
            return
        search = SearchIndex(old.spec, self.dim)
        keep = old.tuning if old.trained_on <= count else None
        search.rebuild(self._rows, self._table.live_mask(), tuning=keep)
        self._search = search

    def savepoint(self) -> Savepoint:
        """Mark the map's growth so far, for :meth:`rollback` (a caller's all-or-nothing step)."""
        with self._lock:
            return (len(self._rows), self._state.next_id, dict(self._next_seq),
                    len(self._features.kinds))

    def rollback(self, savepoint: Savepoint) -> None:
        """Forget every keyframe added since `savepoint` (ids and seqs are handed out again)."""
        count, next_id, next_seq, kinds = savepoint
        with self._lock:
            if len(self._rows) == count:
                return
            if len(self._rows) < count or self._state.next_id < next_id:
                raise MapError('rollback to a savepoint this map has not passed')
            self._rollback(count, kinds)
            self._state.next_id, self._next_seq = next_id, dict(next_seq)

    def skip_ids_below(self, next_id: int) -> None:
        """Give new keyframes ids from `next_id` on: ids of a map are never reused.

        Needed when an older save of a map is loaded after newer keyframes were published.
        """
        with self._lock:
            if next_id > self._state.next_id:
                self._state.history.append({'event': 'skip_ids', 'from': self._state.next_id,
                                            'to': int(next_id), 'time': utc_now()})
                self._state.next_id = int(next_id)

    def find(self, metas: Sequence[KeyframeMeta]) -> np.ndarray:
        """Ids of keyframes already in the map with the same session, camera and stamp (-1: none).

        A keyframe's identity is where and when its image was taken: adding a recording twice
        would otherwise store every keyframe twice.
        """
        found = np.full(len(metas), -1, np.int64)
        with self._lock:
            cols, live = self._table.columns(), self._table.live_mask()
            if not len(metas) or not live.any():
                return found
            stamps = np.array([int(m.stamp_ns) for m in metas], np.int64)
            rows = np.flatnonzero(live & np.isin(cols['stamp_ns'], stamps))
            vocab = self._table.vocab
            where = {(int(cols['stamp_ns'][r]), vocab['session'].words[cols['session'][r]],
                      vocab['camera'].words[cols['camera'][r]]): int(cols['id'][r]) for r in rows}
            for i, m in enumerate(metas):
                found[i] = where.get((int(m.stamp_ns), m.session, m.camera), -1)
        return found

    def remove_session(self, session: str) -> int:
        """Hide every keyframe of `session` from search and lookup; returns how many."""
        with self._lock:
            codes = self._table.codes_of('session', frozenset([session]))
            if not len(codes):
                return 0
            live = self._table.live_mask()
            hit = (self._table.columns()['session'] == codes[0]) & live
            live[hit] = False
            self._next_seq.pop(session, None)
            removed = int(hit.sum())
            if removed:
                self._state.modified = utc_now()
                self._state.history.append({'event': 'remove_session', 'session': session,
                                            'keyframes': removed, 'time': self._state.modified})
            return removed

    def merge(self, other: KeyframeStore) -> None:
        """Append `other`'s keyframes under new ids; source_map/source_id keep their origin."""
        check_mergeable(self, other)
        if not isinstance(other, KeyframeMap):
            self._merge_store(other)
            return
        with self._lock, other._lock:
            rows = np.flatnonzero(other._table.live_mask())
            self._features.check_from(other._features, rows, f'cannot merge map {other.map_id}')
            ids = self._state.next_id + np.arange(len(rows), dtype=np.int64)
            count, kinds = len(self._rows), len(self._features.kinds)
            self._table.append_rows(other._table, rows, ids)
            try:
                self._features.append_from(other._features, rows, count)
                for block in other._rows.raw_blocks(rows):
                    self._rows.append(block)
                    self._search.add(np.asarray(block, np.float32), self._rows,
                                     self._table.live_mask()[:len(self._rows)])
            except BaseException:
                self._rollback(count, kinds)
                raise
            self._next_seq.update(other._next_seq)
            self._state.next_id += len(rows)
            self._state.modified = utc_now()
            self._state.history.append({
                'event': 'merge', 'source_map': other.map_id, 'keyframes': len(rows),
                'first_id': int(ids[0]) if len(ids) else None, 'time': self._state.modified,
                'source_history': list(other._state.history)})

    def _merge_store(self, other: KeyframeStore) -> None:
        """Merge from another kind of store, block by block (all or nothing)."""
        with self._lock:
            savepoint, first = self.savepoint(), self._state.next_id
            try:
                for block in other.keyframes():
                    x = self._check_vectors(block.descriptors, f'map {other.map_id}')
                    self._features.check(block.features, f'cannot merge map {other.map_id}')
                    ids = self._state.next_id + np.arange(len(x), dtype=np.int64)
                    seqs = np.array([m.seq for m in block.metas], np.int64)
                    count = len(self._rows)
                    for i, meta in enumerate(block.metas):
                        check_meta(meta, f'map {other.map_id} keyframe {int(block.ids[i])}')
                        source_map, source_id = block.provenance[i]
                        self._table.append([meta], ids[i:i + 1], seqs[i:i + 1], source_map,
                                           np.array([source_id], np.int64))
                        self._next_seq[meta.session] = max(
                            self._next_seq.get(meta.session, 0), meta.seq + 1)
                    self._features.append(count, block.features)
                    self._rows.append(x)
                    self._search.add(x, self._rows, self._table.live_mask())
                    self._state.next_id += len(x)
            except BaseException:
                self.rollback(savepoint)
                raise
            self._state.modified = utc_now()
            self._state.history.append({
                'event': 'merge', 'source_map': other.map_id, 'source_uri': other.uri,
                'keyframes': self._state.next_id - first, 'first_id': first,
                'time': self._state.modified})

    # -- lookup and search --------------------------------------------------------------------
    def meta(self, keyframe_id: int) -> KeyframeMeta:
        with self._lock:
            return self._table.meta(self._row_of(keyframe_id))

    def provenance(self, keyframe_id: int) -> tuple[str, int]:
        """(map_id, id) under which the keyframe was first added (differs after a merge)."""
        with self._lock:
            rec = self._table.rows[self._row_of(keyframe_id)]
            return self._table.vocab['source_map'].words[int(rec['source_map'])], \
                int(rec['source_id'])

    def descriptor(self, keyframe_id: int) -> np.ndarray:
        with self._lock:
            return self._rows.take(np.array([self._row_of(keyframe_id)]))[0]

    def features(self, keyframe_id: int) -> LocalFeatures | None:
        """Return a keyframe's local features (fresh arrays), None when it was added without."""
        with self._lock:
            return self._features.get(self._row_of(keyframe_id))

    def _mask(self, flt: SearchFilter | None) -> np.ndarray | None:
        live = self._table.live_mask()
        all_live = bool(live.all())
        check_filter(flt)
        if flt is None:
            return None if all_live else live.copy()
        cols, table = self._table.columns(), self._table
        mask = live.copy()
        if flt.sessions is not None:
            mask &= np.isin(cols['session'], table.codes_of('session', flt.sessions))
        if flt.robots is not None:
            mask &= np.isin(cols['robot_id'], table.codes_of('robot_id', flt.robots))
        if flt.exclude_sessions:
            mask &= ~np.isin(cols['session'], table.codes_of('session', flt.exclude_sessions))
        for window in flt.recent:
            code = table.codes_of('session', frozenset([window.session]))
            if len(code):
                mask &= ~((cols['session'] == code[0])
                          & ((cols['stamp_ns'] >= window.since_stamp_ns)
                             | (cols['seq'] >= window.since_seq)))
        return mask

    def search(self, queries: np.ndarray, k: int,
               flt: SearchFilter | None = None) -> SearchResult:
        """Best `k` keyframes per query among those `flt` admits (safe during add())."""
        q = self._check_vectors(queries, 'queries')
        k = check_k(k)
        with self._lock:
            mask = self._mask(flt)
            if len(self._rows) == 0 or (mask is not None and not mask.any()):
                return SearchResult.empty(len(q), k)
            sims, rows = self._search.search(q, int(k), mask, self._rows)
            ids = np.where(rows >= 0, self._table.columns()['id'][np.maximum(rows, 0)], -1)
            return SearchResult(ids.astype(np.int64), sims.astype(np.float32))

    def rebuild_index(self, index: IndexSpec | None = None) -> None:
        """Re-learn the trained parts from every stored descriptor, and re-tune (a new spec).

        The new index is built and tuned aside, from a snapshot of the rows, without the lock
        that searches and adds take: both go on against the current index meanwhile.  Then,
        under the lock, the keyframes added since the snapshot are indexed too and the new
        index replaces the old in one assignment.  Removals need no catching up (the live mask
        is applied at search time).  A rollback that cuts into the snapshot's rows makes the
        build start again (after REBUILD_ATTEMPTS, it runs under the lock).
        """
        if index is not None and not isinstance(index, IndexSpec):
            raise MapError(f'index must be an IndexSpec, got {type(index).__name__}')
        with self._rebuild_lock:
            for _ in range(REBUILD_ATTEMPTS):
                with self._lock:
                    spec = index or self._search.spec
                    count = len(self._rows)
                    rows = self._rows.snapshot(count)
                    live = self._table.live_mask()[:count].copy()
                    self._low_water = count
                try:
                    search = SearchIndex(spec, self.dim)
                    search.rebuild(rows, live)
                    with self._lock:
                        if self._low_water < count:
                            continue  # rows it indexed were rolled back (and maybe replaced)
                        self._catch_up(search, count)
                        self._search = search
                        return
                finally:
                    with self._lock:
                        self._low_water = None
            with self._lock:
                search = SearchIndex(index or self._search.spec, self.dim)
                search.rebuild(self._rows, self._table.live_mask())
                self._search = search

    def _catch_up(self, search: SearchIndex, count: int) -> None:
        """Index the rows added after row `count` into `search` (under the lock)."""
        for start in range(count, len(self._rows), 8192):
            stop = min(start + 8192, len(self._rows))
            block = self._rows.take(np.arange(start, stop))
            search.add(block, self._rows.snapshot(stop), self._table.live_mask()[:stop])

    def tune_index(self) -> None:
        """Choose the index's search parameters again, for the map as it is now.

        The index is not rebuilt: held-out keyframes are searched in short batches, each under
        the lock (searches and adds interleave with them), and the exact truth is computed
        without it; the new parameters replace the old in one assignment.
        """
        with self._rebuild_lock:
            with self._lock:
                search = self._search
                count = len(self._rows)
                rows = self._rows.snapshot(count)
                live = self._table.live_mask()[:count].copy()
                self._low_water = count
            try:
                from boq_ros.keyframe_map import tuning  # noqa: PLC0415
                record = tuning.tune(search, rows, live, self._lock) if search.approximate \
                    else {}
                with self._lock:
                    if self._search is search and self._low_water == count:
                        search.set_tuning(record)
            finally:
                with self._lock:
                    self._low_water = None

    def refresh_index(self) -> str:
        """After building a map: re-learn or re-tune what was learnt from under half the map.

        Returns what was done: 'rebuilt' (trained parts learnt from fewer than half of today's
        keyframes: rebuild_index, which re-tunes too), 'tuned' (an approximate index never
        tuned, or tuned on fewer than half of them: tune_index) or ''.
        """
        with self._lock:
            count, search = len(self), self._search
            status = search.tuning.get('status')
            stale = status in ('tuned', 'fixed') and \
                search.tuning.get('keyframes', 0) < count // 2
            retune = search.approximate and (search.needs_tuning(count) or stale)
        if 0 < search.trained_on < count // 2:
            self.rebuild_index()
            return 'rebuilt'
        if retune:
            self.tune_index()
            return 'tuned'
        return ''

    # -- disk ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, replace_other: bool = False) -> Path:
        """Write the map atomically (see keyframe_map/store.py); returns the map directory.

        An earlier save of this map is replaced; another map at `path` only with
        `replace_other` (a client of the node's save service must not erase someone's map).
        Only the snapshot is taken under the lock: searches and adds go on while the
        descriptors are written (stored rows never change, new ones are not part of it).
        """
        there = store.map_id_at(Path(path))
        if there is not None and there != self.map_id and not replace_other:
            raise MapError(f'refusing to replace the map at {path}: it is another map '
                           f'({there}, this one is {self.map_id}); save to another path or '
                           'remove it first')
        with self._lock:
            live = self._table.live_mask()
            block, blob = self._table.compacted()
            cache = self._search.cache() if live.all() else None
            rows = np.flatnonzero(live)
            features = self._features.snapshot(rows)
            vocab = {n: list(v.words) for n, v in self._table.vocab.items()}
            modified = utc_now()
            schema = replace(self.schema, modified=modified, files={})
        target, files = store.write_map(Path(path), schema, self._rows.raw_blocks(rows),
                                        len(rows), self._rows.dtype, block, vocab, blob,
                                        cache or {}, features)
        with self._lock:
            self._state.modified, self._state.files = modified, files
            self._path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, *, expect_model_id: str | None = None,
             expect_dim: int | None = None, mmap: bool = True,
             index: IndexSpec | None = None, verify: bool = True) -> 'KeyframeMap':
        """Open a saved map, refusing anything that does not match or fails its checksums.

        `verify=False` skips hashing the descriptors (sizes are still checked) for huge maps.
        The index is the saved one on the CPU unless `index` asks for another (e.g. CUDA).
        """
        def expect(schema: MapSchema) -> None:
            if expect_model_id is not None and schema.model_id != expect_model_id:
                raise MapError(f'{path}: map was built with model {schema.model_id!r}, '
                               f'expected {expect_model_id!r}')
            if expect_dim is not None and schema.dim != expect_dim:
                raise MapError(f'{path}: map descriptors are {schema.dim}-d, expected '
                               f'{expect_dim}-d')

        stored = store.read_map(Path(path), mmap=mmap, verify=verify, expect=expect)
        schema = stored.schema
        saved_spec = replace(IndexSpec.from_dict(schema.index), device='cpu')
        spec = index if index is not None else saved_spec  # the device is a runtime choice
        self = cls(schema.dim, model_id=schema.model_id, preprocess=schema.preprocess,
                   index=spec, metric=schema.metric, storage_dtype=schema.storage_dtype)
        descriptors = stored.descriptors
        if isinstance(descriptors, np.memmap) and len(descriptors):
            descriptors = FileRows.from_memmap(descriptors)  # read with pread, never mapped
        self._rows = ChunkedRows(self.dim, self._rows.dtype, descriptors)
        self._table = stored.table
        self._features = stored.features
        if schema.next_id <= (int(self._table.rows['id'][-1]) if len(self._table) else -1):
            raise MapError(f'{path}: schema next_id {schema.next_id} is not above the largest '
                           f'keyframe id')
        cols = self._table.columns()
        words = self._table.vocab['session'].words
        for code in np.unique(cols['session']):
            self._next_seq[words[code]] = int(cols['seq'][cols['session'] == code].max()) + 1
        self._state = _State(schema.map_id, schema.created, schema.modified, schema.next_id,
                             [dict(h) for h in schema.history], dict(schema.files))
        if spec != saved_spec or not self._search.restore(stored.cache, len(self._rows),
                                                               schema.index_trained_on,
                                                               schema.index_tuning):
            self._search.rebuild(self._rows, self._table.live_mask())
        self._path = Path(path).resolve()
        return self

    # -- the rest of the store interface --------------------------------------------------------
    def keyframes(self, batch: int = 1024) -> Iterator[KeyframeBlock]:
        with self._lock:
            rows = np.flatnonzero(self._table.live_mask())
        for start in range(0, len(rows), batch):
            with self._lock:
                part = rows[start:start + batch]
                cols = self._table.columns()
                words = self._table.vocab['source_map'].words
                yield KeyframeBlock(
                    cols['id'][part].copy(), self._rows.take(part).astype(np.float32),
                    [self._table.meta(int(r)) for r in part],
                    [self._features.get(int(r)) for r in part],
                    [(words[int(cols['source_map'][r])], int(cols['source_id'][r]))
                     for r in part])

    def flush(self) -> int:
        return 0  # every add is in memory at once; save() makes it durable

    def health(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass  # nothing is held open: the map is this process's memory and files

    def info(self) -> dict[str, Any]:
        schema = self.schema
        return {'uri': self.uri, 'map_id': schema.map_id, 'model_id': schema.model_id,
                'dim': schema.dim, 'metric': schema.metric, 'keyframes': schema.count,
                'sessions': self.sessions(), 'index': schema.index,
                'index_tuning': schema.index_tuning, 'preprocess': schema.preprocess}
