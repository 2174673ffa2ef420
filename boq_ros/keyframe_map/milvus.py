"""The Milvus store: one keyframe map shared by a fleet, in a Milvus collection.

One collection per map holds a row per keyframe: id, descriptor, seq, stamp, session, robot,
camera, frames, pose, image reference, provenance.  The model id, dimension and preprocessing live
in a second collection, `<name>_features` (row keyframe_id -1; Milvus Lite keeps no collection
descriptions), and a store refuses another model's map as the FAISS map refuses another model's
directory.  That collection also holds local features (for geometric verification) as base64
text chunks (Milvus 2.3 has no bytes field).

Several processes write one collection: ids are `writer << 40 | counter`, `writer` a random
23-bit number checked unused when the store opens; a session has one writer.  A write the server
does not take (down, restarting) stays pending in this process, searchable, and is retried by the
next add or by :meth:`flush` after a back-off, so no keyframe is lost while the process lives.
Filters (sessions, robots, temporal exclusion windows) are evaluated by the engine.
"""
import base64
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
import io
import json
import logging
import math
import secrets
import threading
import time
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit
import uuid

import numpy as np

from boq_ros import __version__
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
from boq_ros.keyframe_map.features import LocalFeatures
from boq_ros.keyframe_map.meta import KeyframeMeta, check_meta
from boq_ros.keyframe_map.schema import MapError, MapNotFound

STORE_VERSION = 1
"""Layout version of the collections (the description's `boq_ros_store`)."""
DESCRIPTION_ID = -1
"""keyframe_id of the description row in the features collection."""
TEXT_FIELDS = {'session': 512, 'robot_id': 512, 'camera': 512, 'frame_id': 512,
               'pose_frame': 512, 'pose_source': 512, 'image_ref': 4096, 'source_map': 64}
"""VARCHAR fields and their maximum length in bytes."""
META_FIELDS = ('seq', 'stamp_ns', 'source_id', *TEXT_FIELDS, 'pose', 'has_features')
WRITER_BITS, COUNTER_BITS = 23, 40
CHUNK_CHARS = 65532  # base64 text per feature row (VARCHAR holds at most 65535 bytes)
PARTS = 256  # feature rows per keyframe at most (16 MB of local features)
INSERT_ROWS = 256  # rows per insert request (a 16384-d descriptor is 64 KB)
MAX_K = 16384  # Milvus's largest top-k
QUERY_IDS = 1000  # ids per `id in [...]` query
META_CACHE = 200_000
RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Back-off between attempts while the server refuses writes or searches."""
CONSISTENCY = ('strong', 'session', 'bounded', 'eventually')
INDEXES = {'flat': 'FLAT', 'hnsw': 'HNSW', 'ivfsq8': 'IVF_SQ8', 'ivfpq': 'IVF_PQ'}
"""Our index kinds and Milvus's names for them (milvus-lite: flat only)."""
LITE_COLLECTION = 'keyframes'
NOT_LOADED = ('not loaded', "state 'released'")
"""What the server and Milvus Lite say of a collection to load first (after a restart)."""

T = TypeVar('T')


class StoreUnavailable(MapError):
    """The Milvus server did not answer (down, restarting, unreachable)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='milliseconds')


@dataclass(frozen=True)
class MilvusLocation:
    """Where a Milvus store lives and how it is searched (parsed from its URI)."""

    uri: str
    client_uri: str          # what pymilvus connects to: http://host:port or a lite file
    collection: str
    lite: bool
    index: str = 'flat'
    params: dict[str, int] = field(default_factory=dict)  # nlist, nprobe, m, ef, pq_m
    consistency: str = 'session'
    timeout_s: float = 10.0


URI_KEYS = ('index', 'nlist', 'nprobe', 'm', 'ef', 'pq_m', 'consistency', 'timeout_s',
            'collection')


def parse_location(uri: str) -> MilvusLocation:
    """Parse `milvus://host:port/collection?...` or `milvus-lite:FILE?...` (clear errors)."""
    lite = uri.startswith('milvus-lite:')
    parts = urlsplit(uri)
    try:
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(
            parts.query)))
    except ValueError as exc:
        raise MapError(f'map URI {uri!r}: cannot parse its query {parts.query!r}') from exc
    unknown = sorted(set(query) - set(URI_KEYS))
    if unknown:
        raise MapError(f'map URI {uri!r}: unknown option(s) {unknown} (known: '
                       f'{", ".join(URI_KEYS)})')
    if lite:
        path = uri[len('milvus-lite:'):].split('?', 1)[0]
        if not path:
            raise MapError(f'map URI {uri!r}: name the milvus-lite file, e.g. '
                           'milvus-lite:maps/site.db')
        if not path.endswith('.db'):
            raise MapError(f'map URI {uri!r}: a milvus-lite file name must end in .db')
        client_uri, collection = path, query.pop('collection', LITE_COLLECTION)
    else:
        if parts.scheme != 'milvus' or not parts.hostname:
            raise MapError(f'map URI {uri!r}: expected milvus://HOST:PORT/COLLECTION')
        try:
            port = parts.port or 19530
        except ValueError as exc:
            raise MapError(f'map URI {uri!r}: the port is not a number in 1-65535') from exc
        collection = parts.path.strip('/')
        if 'collection' in query:
            raise MapError(f'map URI {uri!r}: the collection is the path of a milvus:// URI')
        host = f'[{parts.hostname}]' if ':' in parts.hostname else parts.hostname
        client_uri = f'http://{host}:{port}'
    if not collection or not (collection[0].isalpha() or collection[0] == '_') or not all(
            c.isalnum() or c == '_' for c in collection) or len(collection) > 200:
        raise MapError(f'map URI {uri!r}: collection name {collection!r} must be 1-200 letters, '
                       'digits or _, not starting with a digit (Milvus names)')
    index = query.pop('index', 'flat')
    if index not in INDEXES:
        raise MapError(f'map URI {uri!r}: index {index!r} is not one of {", ".join(INDEXES)}')
    if lite and index != 'flat':
        raise MapError(f'map URI {uri!r}: milvus-lite offers exact search only (index=flat); '
                       f'use a Milvus server for {index}')
    consistency = query.pop('consistency', 'session')
    if consistency not in CONSISTENCY:
        raise MapError(f'map URI {uri!r}: consistency {consistency!r} is not one of '
                       f'{", ".join(CONSISTENCY)}')
    try:
        timeout_s = float(query.pop('timeout_s', 10.0))
        params = {k: int(v) for k, v in query.items()}
    except ValueError as exc:
        raise MapError(f'map URI {uri!r}: index parameters and timeout_s must be numbers: '
                       f'{exc}') from exc
    if not math.isfinite(timeout_s) or timeout_s <= 0 or any(v < 1 for v in params.values()):
        raise MapError(f'map URI {uri!r}: timeout_s and index parameters must be positive')
    return MilvusLocation(uri, client_uri, collection, lite, index, params, consistency,
                          timeout_s)


def encode_features(features: LocalFeatures) -> bytes:
    """Serialise local features without pickle: a JSON header, then the raw arrays."""
    arrays = {'keypoints': features.keypoints, 'descriptors': features.descriptors}
    if features.depth is not None:
        arrays['depth'] = features.depth
    header = {'kind': features.kind, 'image_size': list(features.image_size),
              'intrinsics': list(features.intrinsics) if features.intrinsics else None,
              'arrays': {k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()}}
    head = json.dumps(header).encode()
    out = io.BytesIO()
    out.write(len(head).to_bytes(4, 'little'))
    out.write(head)
    for a in arrays.values():
        out.write(np.ascontiguousarray(a).tobytes())
    return out.getvalue()


def decode_features(data: bytes, where: str) -> LocalFeatures:
    try:
        size = int.from_bytes(data[:4], 'little')
        header = json.loads(data[4:4 + size])
        offset, arrays = 4 + size, {}
        for name, (dtype, shape) in header['arrays'].items():
            dt = np.dtype(dtype)
            count = int(np.prod(shape))
            arrays[name] = np.frombuffer(data, dt, count, offset).reshape(shape).copy()
            offset += count * dt.itemsize
        intrinsics = tuple(header['intrinsics']) if header['intrinsics'] else None
        return LocalFeatures(header['kind'], arrays['keypoints'], arrays['descriptors'],
                             tuple(header['image_size']), intrinsics, arrays.get('depth'))
    except (ValueError, KeyError, TypeError) as exc:
        raise MapError(f'{where}: stored local features are damaged: {exc}') from exc


def _literal(text: str) -> str:
    """Quote a string for Milvus's expression language (it accepts JSON escapes)."""
    return json.dumps(text)


def filter_expression(flt: SearchFilter | None) -> str:
    """Translate `flt` into the engine's filter expression ('' admits everything)."""
    terms = []
    if flt is None:
        return ''
    if flt.sessions is not None:
        terms.append(f'session in [{", ".join(map(_literal, sorted(flt.sessions)))}]')
    if flt.robots is not None:
        terms.append(f'robot_id in [{", ".join(map(_literal, sorted(flt.robots)))}]')
    if flt.exclude_sessions:
        terms.append('session not in '
                     f'[{", ".join(map(_literal, sorted(flt.exclude_sessions)))}]')
    for w in flt.recent:
        terms.append(f'not (session == {_literal(w.session)} and (stamp_ns >= '
                     f'{int(w.since_stamp_ns)} or seq >= {int(w.since_seq)}))')
    if flt.sessions is not None and not flt.sessions or \
            flt.robots is not None and not flt.robots:
        return 'id < 0'  # an empty admitted set: `in []` is not accepted by every version
    return ' and '.join(f'({t})' for t in terms)


def _pose_json(pose: tuple[float, ...] | None) -> dict[str, Any]:
    if pose is None:
        return {}
    return {'xyzq': [None if math.isnan(v) else float(v) for v in pose]}


def _pose_of(value: dict[str, Any] | None) -> tuple[float, ...] | None:
    if not value or 'xyzq' not in value:
        return None
    return tuple(math.nan if v is None else float(v) for v in value['xyzq'])


def meta_of(row: dict[str, Any]) -> KeyframeMeta:
    return KeyframeMeta(
        stamp_ns=int(row['stamp_ns']), session=row['session'], robot_id=row['robot_id'],
        camera=row['camera'], frame_id=row['frame_id'], pose=_pose_of(row.get('pose')),
        pose_frame=row['pose_frame'], pose_source=row['pose_source'],
        image_ref=row['image_ref'], id=int(row['id']), seq=int(row['seq']))


@dataclass
class _Pending:
    """Rows added here that the server has not confirmed yet."""

    ids: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    features: list[tuple[int, bytes]] = field(default_factory=list)  # keyframe id, encoded
    deletes: list[str] = field(default_factory=list)  # filters whose delete failed
    attempted: set[int] = field(default_factory=set)  # ids sent at least once


class MilvusStore(KeyframeStore):
    """A keyframe map in a Milvus collection (server or milvus-lite), shared by processes."""

    def __init__(self, location: MilvusLocation, client: Any, description: dict[str, Any]
                 ) -> None:
        self.location = location
        self._client = client
        self._description = description
        self.dim = int(description['dim'])
        self.model_id = description['model_id']
        self.metric = description['metric']
        self.preprocess = description['preprocess']
        self._features_collection = f'{location.collection}_features'
        self._lock = threading.RLock()
        self._pending = _Pending()
        self._metas: dict[int, KeyframeMeta] = {}
        self._next_seq: dict[str, int] = {}
        self._counter = 0
        self._writer = self._claim_writer()
        self._down_until = 0.0
        self._failures = 0
        self._counts = {'failed_writes': 0, 'failed_searches': 0, 'retried_writes': 0}
        self._last_error = ''
        self._count_cache = 0

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str, *, dim: int | None = None, model_id: str | None = None,
             preprocess: dict[str, Any] | None = None, create: bool = False) -> 'MilvusStore':
        """Open the collection at `uri`, refusing another model's; create it when asked.

        `dim`/`model_id` are what the caller's model produces (checked against a stored map);
        creating needs them and `preprocess`.
        """
        location = parse_location(uri)
        client = _connect(location)
        name = location.collection
        try:
            try:
                if not client.has_collection(name, timeout=location.timeout_s):
                    if not create:
                        raise MapNotFound(f'{uri}: no such map (collection {name!r} does not '
                                          'exist); build one first (boq-ros map build --out '
                                          'URI)')
                    if dim is None or model_id is None or preprocess is None:
                        raise MapError(f'{uri}: creating a map needs the model id, descriptor '
                                       'dimension and preprocessing')
                    _create(client, location, dim, model_id, preprocess)
                description = _read_description(client, location)  # loads the features one
                client.load_collection(name, timeout=location.timeout_s * 6)
            except MapError:
                raise
            except Exception as exc:  # noqa: BLE001 - pymilvus raises many types
                raise StoreUnavailable(f'{uri}: {_reason(exc)}') from exc
            if model_id is not None and description['model_id'] != model_id:
                raise MapError(f'{uri}: map was built with model '
                               f'{description["model_id"]!r}, expected {model_id!r}')
            if dim is not None and description['dim'] != dim:
                raise MapError(f'{uri}: map descriptors are {description["dim"]}-d, expected '
                               f'{dim}-d')
            store = cls(location, client, description)
            store._count_cache = store._count('id >= 0')
        except BaseException:
            client.close()
            raise
        return store

    def _claim_writer(self) -> int:
        """Pick a writer number no row of the collection uses yet (random, then checked)."""
        for _ in range(8):
            writer = secrets.randbelow(2 ** WRITER_BITS - 1) + 1
            low, high = writer << COUNTER_BITS, (writer + 1) << COUNTER_BITS
            hit = self._remote(lambda w=low, h=high: self._client.query(
                self.location.collection, filter=f'id >= {w} and id < {h}',
                output_fields=['id'], limit=1, timeout=self.location.timeout_s))
            if not hit:
                return writer
        raise MapError(f'{self.uri}: no free writer number found')

    def _load(self) -> None:
        for name in (self.location.collection, self._features_collection):
            self._client.load_collection(name, timeout=self.location.timeout_s * 6)

    # -- identity -----------------------------------------------------------------------------
    @property
    def map_id(self) -> str:
        return self._description['map_id']

    @property
    def uri(self) -> str:
        return self.location.uri

    def _remote(self, call: Callable[[], T]) -> T:
        """Run one request; every failure becomes StoreUnavailable.

        A collection the server forgot to load (after a restart) is loaded and the request run
        again.
        """
        try:
            try:
                return call()
            except Exception as exc:
                if not any(cause in str(exc) for cause in NOT_LOADED):
                    raise
                self._load()
                return call()
        except Exception as exc:  # noqa: BLE001
            raise StoreUnavailable(f'{self.uri}: {_reason(exc)}') from exc

    def _query(self, name: str, expr: str, fields: Sequence[str], limit: int | None = None
               ) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {'filter': expr, 'output_fields': list(fields),
                                  'timeout': self.location.timeout_s,
                                  'consistency_level': self._consistency()}
        if limit is not None:
            kwargs['limit'] = limit
        return list(self._remote(lambda: self._client.query(name, **kwargs)))

    def _consistency(self) -> str:
        return self.location.consistency.capitalize()

    def _count(self, expr: str) -> int:
        rows = self._query(self.location.collection, expr, ['count(*)'])
        return int(rows[0]['count(*)'])

    # -- counts -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Keyframes on the server (the last count it gave while away) plus pending ones."""
        with self._lock:
            if time.monotonic() >= self._down_until:
                try:
                    self._count_cache = self._count('id >= 0')
                except StoreUnavailable as err:
                    self._fail(err)
            return self._count_cache + len(self._pending.ids)

    def session_size(self, session: str) -> int:
        with self._lock:
            if session not in self._next_seq:
                self._next_seq[session] = self._count(f'session == {_literal(session)}')
            return self._next_seq[session]

    def sessions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rows in self._iterate(['session']):
            for row in rows:
                counts[row['session']] = counts.get(row['session'], 0) + 1
        with self._lock:
            for row in self._pending.rows:
                counts[row['session']] = counts.get(row['session'], 0) + 1
        return counts

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            pending = self._pending.rows
            return {'keyframes': len(self),
                    'with_features': self._count('has_features == true')
                    + sum(bool(r['has_features']) for r in pending),
                    'pending_keyframes': len(pending)}

    # -- growth -------------------------------------------------------------------------------
    def add(self, descriptors: np.ndarray, metas: Sequence[KeyframeMeta],
            features: Sequence[LocalFeatures | None] | None = None) -> np.ndarray:
        x = check_vectors(descriptors, self.dim, 'descriptors')
        metas = list(metas)
        if len(metas) != len(x):
            raise MapError(f'got {len(x)} descriptors but {len(metas)} metadata entries')
        features = [None] * len(metas) if features is None else list(features)
        if len(features) != len(metas):
            raise MapError(f'got {len(features)} local features entries for {len(metas)} '
                           f'keyframes')
        for i, (meta, feat) in enumerate(zip(metas, features)):
            _check_row(meta, feat, f'metas[{i}]')
        encoded = [encode_features(f) if f is not None else None for f in features]
        for i, blob in enumerate(encoded):
            if blob is not None and len(blob) * 4 // 3 + 4 > CHUNK_CHARS * PARTS:
                raise MapError(f'features[{i}]: {len(blob)} bytes of local features is more '
                               'than a keyframe can hold')
        with self._lock:
            for meta in metas:
                self.session_size(meta.session)  # known before ids are handed out
            ids = np.array([self._new_id() for _ in metas], np.int64)
            for kf_id, meta, vec, blob in zip(ids.tolist(), metas, x, encoded):
                seq = self._next_seq[meta.session]
                self._next_seq[meta.session] = seq + 1
                self._queue(self._row(kf_id, seq, meta, vec, blob is not None, self.map_id,
                                      kf_id), blob)
            self._write()
            return ids

    def _new_id(self) -> int:
        if self._counter >= 2 ** COUNTER_BITS:
            self._writer, self._counter = self._claim_writer(), 0
        self._counter += 1
        return self._writer << COUNTER_BITS | (self._counter - 1)

    def _row(self, kf_id: int, seq: int, meta: KeyframeMeta, vec: np.ndarray,
             has_features: bool, source_map: str, source_id: int) -> dict[str, Any]:
        row: dict[str, Any] = {'id': int(kf_id), 'vector': vec, 'seq': int(seq),
                               'stamp_ns': int(meta.stamp_ns), 'source_id': int(source_id),
                               'source_map': source_map, 'pose': _pose_json(meta.pose),
                               'has_features': bool(has_features)}
        for name in TEXT_FIELDS:
            if name != 'source_map':
                row[name] = getattr(meta, name)
        return row

    def _queue(self, row: dict[str, Any], features: bytes | None) -> None:
        """Make a new keyframe pending (the next write sends it) and known to meta()."""
        self._pending.ids.append(row['id'])
        self._pending.rows.append(row)
        if features is not None:
            self._pending.features.append((row['id'], features))
        self._remember(meta_of(row))

    def _remember(self, meta: KeyframeMeta) -> None:
        self._metas[meta.id] = meta
        if len(self._metas) > META_CACHE:
            del self._metas[next(iter(self._metas))]

    def _write(self, force: bool = False) -> None:
        """Send what is pending unless the server failed within the back-off (or `force`)."""
        pending = self._pending
        if not (pending.ids or pending.deletes) or (
                not force and time.monotonic() < self._down_until):
            return
        try:
            for expr in list(pending.deletes):
                self._delete(expr)
                pending.deletes.remove(expr)
            retried = pending.attempted.intersection(pending.ids)
            if retried:  # a lost reply may hide a write the server took: never store twice
                self._counts['retried_writes'] += len(retried)
                stored = set(self._existing(sorted(retried)))
                keep = [i for i, kf_id in enumerate(pending.ids) if kf_id not in stored]
                pending.ids = [pending.ids[i] for i in keep]
                pending.rows = [pending.rows[i] for i in keep]
                pending.features = [f for f in pending.features if f[0] not in stored]
            pending.attempted.update(pending.ids)
            self._insert_features(pending.features)
            pending.features = []
            while pending.ids:
                rows = pending.rows[:INSERT_ROWS]
                self._remote(lambda r=rows: self._client.insert(
                    self.location.collection, r, timeout=self.location.timeout_s))
                self._count_cache += len(rows)
                del pending.rows[:INSERT_ROWS], pending.ids[:INSERT_ROWS]
            pending.attempted.clear()
            self._failures, self._down_until = 0, 0.0
        except StoreUnavailable as err:
            self._counts['failed_writes'] += 1
            self._fail(err)

    def _fail(self, err: Exception) -> None:
        self._last_error = str(err)
        self._down_until = time.monotonic() + RETRY_S[min(self._failures, len(RETRY_S) - 1)]
        self._failures += 1

    def _insert_features(self, features: list[tuple[int, bytes]]) -> None:
        """Write feature chunks (before their keyframe rows: a row's has_features is true)."""
        rows = []
        for kf_id, blob in features:
            text = base64.b64encode(blob).decode('ascii')
            for part, start in enumerate(range(0, max(len(text), 1), CHUNK_CHARS)):
                rows.append({'keyframe_id': kf_id, 'part': part,
                             'data': text[start:start + CHUNK_CHARS],
                             'unused': np.zeros(2, np.float32)})
        for start in range(0, len(rows), 64):
            block = rows[start:start + 64]
            self._remote(lambda b=block: self._client.insert(
                self._features_collection, b, timeout=self.location.timeout_s))

    def _existing(self, ids: Sequence[int]) -> list[int]:
        found = []
        for start in range(0, len(ids), QUERY_IDS):
            part = ids[start:start + QUERY_IDS]
            found += [int(r['id']) for r in self._query(
                self.location.collection, f'id in {list(part)}', ['id'])]
        return found

    def _delete(self, expr: str) -> None:
        for name, field_expr in ((self.location.collection, expr),
                                 (self._features_collection, expr.replace('id', 'keyframe_id'))):
            self._remote(lambda n=name, e=field_expr: self._client.delete(
                n, filter=e, timeout=self.location.timeout_s))

    def flush(self) -> int:
        with self._lock:
            self._write()
            return len(self._pending.ids)

    def savepoint(self) -> tuple[int, int, dict[str, int]]:
        with self._lock:
            return self._writer, self._counter, dict(self._next_seq)

    def rollback(self, savepoint: tuple[int, int, dict[str, int]]) -> None:
        writer, counter, next_seq = savepoint
        with self._lock:
            if writer != self._writer or counter > self._counter:
                raise MapError('rollback to a savepoint this store has not passed')
            if counter == self._counter:
                return
            low, high = writer << COUNTER_BITS | counter, writer << COUNTER_BITS | self._counter
            pending = self._pending
            keep = [i for i, kf_id in enumerate(pending.ids) if not low <= kf_id < high]
            sent = any(low <= kf_id < high for kf_id in pending.attempted) or len(keep) + (
                high - low) > len(pending.ids)
            pending.ids = [pending.ids[i] for i in keep]
            pending.rows = [pending.rows[i] for i in keep]
            pending.features = [f for f in pending.features if not low <= f[0] < high]
            for kf_id in range(low, high):
                self._metas.pop(kf_id, None)
            if sent:  # some reached the server (or may have): delete them there
                pending.deletes.append(f'id >= {low} and id < {high}')
                self._write(force=True)
            self._counter, self._next_seq = counter, dict(next_seq)

    def find(self, metas: Sequence[KeyframeMeta]) -> np.ndarray:
        found = np.full(len(metas), -1, np.int64)
        stamps = sorted({int(m.stamp_ns) for m in metas})
        where: dict[tuple[int, str, str], int] = {}
        for start in range(0, len(stamps), QUERY_IDS):
            for row in self._query(self.location.collection,
                                   f'stamp_ns in {stamps[start:start + QUERY_IDS]}',
                                   ['id', 'stamp_ns', 'session', 'camera']):
                where[(int(row['stamp_ns']), row['session'], row['camera'])] = int(row['id'])
        with self._lock:
            for row in self._pending.rows:
                where[(row['stamp_ns'], row['session'], row['camera'])] = row['id']
        for i, m in enumerate(metas):
            found[i] = where.get((int(m.stamp_ns), m.session, m.camera), -1)
        return found

    def remove_session(self, session: str) -> int:
        with self._lock:
            self.flush()
            expr = f'session == {_literal(session)}'
            ids = [int(r['id']) for rows in self._iterate(['id'], expr) for r in rows]
            for start in range(0, len(ids), QUERY_IDS):
                part = ids[start:start + QUERY_IDS]
                self._remote(lambda p=part: self._client.delete(
                    self._features_collection, filter=f'keyframe_id in {p}',
                    timeout=self.location.timeout_s))
            self._remote(lambda: self._client.delete(self.location.collection, filter=expr,
                                                     timeout=self.location.timeout_s))
            self._next_seq.pop(session, None)
            for kf_id in [k for k, m in self._metas.items() if m.session == session]:
                del self._metas[kf_id]
            self._count_cache -= len(ids)
            return len(ids)

    def merge(self, other: KeyframeStore) -> None:
        check_mergeable(self, other)
        with self._lock:
            savepoint = self.savepoint()
            try:
                for block in other.keyframes():
                    x = check_vectors(block.descriptors, self.dim, f'map {other.map_id}')
                    for i, (meta, feat, (source_map, source_id)) in enumerate(zip(
                            block.metas, block.features, block.provenance)):
                        _check_row(meta, feat, f'map {other.map_id} keyframe {block.ids[i]}')
                        self._queue(self._row(self._new_id(), meta.seq, meta, x[i],
                                              feat is not None, source_map, source_id),
                                    encode_features(feat) if feat is not None else None)
                        self._next_seq[meta.session] = max(
                            self._next_seq.get(meta.session, 0), meta.seq + 1)
                    self._write(force=True)
                    if self._pending.ids:
                        raise StoreUnavailable(f'{self.uri}: merge interrupted: '
                                               f'{self._last_error}')
            except BaseException:
                self.rollback(savepoint)
                raise

    # -- lookup and search --------------------------------------------------------------------
    def meta(self, keyframe_id: int) -> KeyframeMeta:
        kf_id = int(keyframe_id)
        with self._lock:
            meta = self._metas.get(kf_id)
        if meta is not None:
            return replace(meta)
        rows = self._query(self.location.collection, f'id == {kf_id}', ['id', *META_FIELDS])
        if not rows:
            raise MapError(f'no keyframe with id {kf_id} in map {self.map_id}')
        meta = meta_of(rows[0])
        with self._lock:
            self._remember(meta)
        return replace(meta)

    def _row_of(self, kf_id: int, fields: Sequence[str]) -> dict[str, Any]:
        with self._lock:
            for row in self._pending.rows:
                if row['id'] == kf_id:
                    return row
        rows = self._query(self.location.collection, f'id == {int(kf_id)}', ['id', *fields])
        if not rows:
            raise MapError(f'no keyframe with id {kf_id} in map {self.map_id}')
        return rows[0]

    def provenance(self, keyframe_id: int) -> tuple[str, int]:
        row = self._row_of(int(keyframe_id), ['source_map', 'source_id'])
        return row['source_map'], int(row['source_id'])

    def descriptor(self, keyframe_id: int) -> np.ndarray:
        return np.asarray(self._row_of(int(keyframe_id), ['vector'])['vector'], np.float32)

    def features(self, keyframe_id: int) -> LocalFeatures | None:
        kf_id = int(keyframe_id)
        with self._lock:
            for pending_id, blob in self._pending.features:
                if pending_id == kf_id:
                    return decode_features(blob, f'keyframe {kf_id}')
        if not self._row_of(kf_id, ['has_features'])['has_features']:
            return None
        return self._stored_features(kf_id)

    def _stored_features(self, kf_id: int) -> LocalFeatures:
        """Read a keyframe's feature chunks (its row says it has features)."""
        rows = self._query(self._features_collection, f'keyframe_id == {kf_id}',
                           ['part', 'data'])
        parts = {int(r['part']): r['data'] for r in rows}  # a retried write may repeat a part
        if not parts or sorted(parts) != list(range(len(parts))):
            raise MapError(f'{self.uri}: local features of keyframe {kf_id} are incomplete')
        return decode_features(base64.b64decode(''.join(parts[i] for i in range(len(parts)))),
                               f'keyframe {kf_id}')

    def _search_params(self, k: int) -> dict[str, Any]:
        p = self.location.params
        params: dict[str, Any] = {}
        if self.location.index == 'hnsw':
            params['ef'] = max(k, p.get('ef', 128))
        elif self.location.index in ('ivfsq8', 'ivfpq'):
            params['nprobe'] = p.get('nprobe', 32)
        return {'metric_type': 'IP', 'params': params}

    def search(self, queries: np.ndarray, k: int,
               flt: SearchFilter | None = None) -> SearchResult:
        q = check_vectors(queries, self.dim, 'queries')
        k = check_k(k)
        check_filter(flt)
        result = SearchResult.empty(len(q), k)
        if not len(q):
            return result
        expr = filter_expression(flt)
        limit = min(k, MAX_K)
        hits: list[list[tuple[float, int]]] = [[] for _ in q]
        with self._lock:
            self._write()
            down = time.monotonic() < self._down_until
            pending_rows = list(self._pending.rows)
        if not down:
            try:
                answer = self._remote(lambda: self._client.search(
                    self.location.collection, data=list(q), limit=limit, filter=expr,
                    output_fields=list(META_FIELDS), search_params=self._search_params(limit),
                    timeout=self.location.timeout_s, consistency_level=self._consistency()))
                with self._lock:
                    for i, found in enumerate(answer):
                        for hit in found:
                            row = {'id': hit['id'], **hit['entity']}
                            self._remember(meta_of(row))
                            hits[i].append((float(hit['distance']), int(hit['id'])))
            except StoreUnavailable as err:
                with self._lock:
                    self._counts['failed_searches'] += 1
                    self._fail(err)
        if pending_rows:  # not on the server yet: searched here, exactly
            admitted = [r for r in pending_rows
                        if flt is None or flt.admits(meta_of(r))]
            if admitted:
                sims = q @ np.stack([r['vector'] for r in admitted]).T
                ids = [r['id'] for r in admitted]
                for i in range(len(q)):
                    hits[i] += [(float(s), kf_id) for s, kf_id in zip(sims[i], ids)]
        for i, found in enumerate(hits):
            found.sort(key=lambda h: (-h[0], h[1]))
            for j, (sim, kf_id) in enumerate(found[:limit]):
                result.ids[i, j], result.similarities[i, j] = kf_id, sim
        return result

    def _iterate(self, fields: Sequence[str], expr: str = 'id >= 0', batch: int = 1024
                 ) -> Iterator[list[dict[str, Any]]]:
        """Rows of the collection in id order, `batch` at a time (pages by id)."""
        last = -1
        while True:
            rows = self._query(self.location.collection, f'({expr}) and id > {last}',
                               ['id', *fields], limit=batch)
            if not rows:
                return
            rows.sort(key=lambda r: int(r['id']))
            yield rows
            last = int(rows[-1]['id'])

    def keyframes(self, batch: int = 1024) -> Iterator[KeyframeBlock]:
        self.flush()
        for rows in self._iterate(['vector', *META_FIELDS], batch=batch):
            metas = [meta_of(r) for r in rows]
            yield KeyframeBlock(
                np.array([m.id for m in metas], np.int64),
                np.array([r['vector'] for r in rows], np.float32).reshape(-1, self.dim), metas,
                [self._stored_features(m.id) if r['has_features'] else None
                 for m, r in zip(metas, rows)],
                [(r['source_map'], int(r['source_id'])) for r in rows])

    def refresh_index(self) -> str:
        """Write what is pending and seal it (the server builds its index as segments fill)."""
        with self._lock:
            self._write(force=True)
            if self._pending.ids:
                raise StoreUnavailable(f'{self.uri}: {len(self._pending.ids)} keyframes not '
                                       f'written: {self._last_error}')
            if not self.location.lite:
                self._remote(lambda: self._client.flush(self.location.collection,
                                                        timeout=self.location.timeout_s * 6))
            return 'flushed'

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {**self._counts, 'pending_keyframes': len(self._pending.ids),
                    'reachable': time.monotonic() >= self._down_until,
                    'last_error': self._last_error}

    def info(self) -> dict[str, Any]:
        d = self._description
        return {'uri': self.uri, 'map_id': self.map_id, 'model_id': self.model_id,
                'dim': self.dim, 'metric': self.metric, 'keyframes': len(self),
                'sessions': self.sessions(), 'index': {'kind': self.location.index,
                                                       **self.location.params},
                'created': d['created'], 'package_version': d['package_version'],
                'preprocess': self.preprocess, 'engine': 'milvus-lite' if self.location.lite
                else 'milvus', 'consistency': self.location.consistency,
                **({'pending_keyframes': len(self._pending.ids)} if self._pending.ids else {})}

    def close(self) -> None:
        with self._lock:
            self._write(force=True)
            self._client.close()


def _reason(exc: BaseException) -> str:
    message = getattr(exc, 'message', None) or str(exc) or type(exc).__name__
    return ' '.join(str(message).split())[:400]


def _check_row(meta: KeyframeMeta, features: LocalFeatures | None, where: str) -> None:
    check_meta(meta, where)
    for name, limit in TEXT_FIELDS.items():
        if name != 'source_map' and len(getattr(meta, name).encode()) > limit:
            raise MapError(f'{where}: {name} is longer than {limit} bytes (the Milvus store '
                           'keeps at most that)')
    if features is not None and not isinstance(features, LocalFeatures):
        raise MapError(f'{where}: features must be LocalFeatures or None, got '
                       f'{type(features).__name__}')


def _connect(location: MilvusLocation) -> Any:
    try:
        from pymilvus import MilvusClient  # noqa: PLC0415 - only Milvus users need it
    except ImportError as exc:
        raise MapError(f'{location.uri}: the Milvus store needs pymilvus (pip install '
                       'pymilvus; milvus-lite for milvus-lite: URIs)') from exc
    # Every failed request becomes a StoreUnavailable or MapError naming the cause (counted by
    # the node); pymilvus would log each one again with its traceback.
    logging.getLogger('pymilvus.decorators').setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=location.client_uri, timeout=location.timeout_s)
    except Exception as exc:  # noqa: BLE001
        raise StoreUnavailable(f'cannot reach Milvus at {location.client_uri} (from '
                               f'{location.uri}): {_reason(exc)}') from exc


def _create(client: Any, location: MilvusLocation, dim: int, model_id: str,
            preprocess: dict[str, Any]) -> None:
    from pymilvus import DataType, MilvusClient  # noqa: PLC0415

    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= 32768:
        raise MapError(f'{location.uri}: descriptor dimension {dim!r} is outside what Milvus '
                       'holds (1-32768)')
    description = {'boq_ros_store': STORE_VERSION, 'map_id': uuid.uuid4().hex,
                   'model_id': model_id, 'dim': int(dim), 'metric': 'ip',
                   'preprocess': preprocess, 'created': utc_now(),
                   'package_version': __version__}
    schema = MilvusClient.create_schema(auto_id=False, description='boq_ros keyframe map')
    schema.add_field('id', DataType.INT64, is_primary=True)
    schema.add_field('vector', DataType.FLOAT_VECTOR, dim=int(dim))
    for name in ('seq', 'stamp_ns', 'source_id'):
        schema.add_field(name, DataType.INT64)
    for name, length in TEXT_FIELDS.items():
        schema.add_field(name, DataType.VARCHAR, max_length=length)
    schema.add_field('pose', DataType.JSON)
    schema.add_field('has_features', DataType.BOOL)
    index = client.prepare_index_params()
    p = location.params
    params = {'hnsw': {'M': p.get('m', 32), 'efConstruction': 200},
              'ivfsq8': {'nlist': p.get('nlist', 1024)},
              'ivfpq': {'nlist': p.get('nlist', 1024), 'm': p.get('pq_m', 64), 'nbits': 8},
              }.get(location.index, {})
    index.add_index('vector', index_type=INDEXES[location.index], metric_type='IP',
                    params=params)
    features = MilvusClient.create_schema(auto_id=True, description=json.dumps(
        {'boq_ros_features_of': location.collection}))
    features.add_field('id', DataType.INT64, is_primary=True)
    features.add_field('keyframe_id', DataType.INT64)
    features.add_field('part', DataType.INT64)
    features.add_field('data', DataType.VARCHAR, max_length=CHUNK_CHARS)
    features.add_field('unused', DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
    features_index = client.prepare_index_params()
    features_index.add_index('unused', index_type='FLAT', metric_type='L2')
    timeout = location.timeout_s * 6
    for name, fields, params in ((f'{location.collection}_features', features, features_index),
                                 (location.collection, schema, index)):
        try:
            client.create_collection(name, schema=fields, index_params=params, timeout=timeout)
        except Exception:  # noqa: BLE001 - another writer created it first: theirs stands
            if not client.has_collection(name, timeout=timeout):
                raise
        if fields is features:  # a racing creator's description may land too: the first wins
            client.insert(name, [{'keyframe_id': DESCRIPTION_ID, 'part': 0,
                                  'data': json.dumps(description),
                                  'unused': np.zeros(2, np.float32)}], timeout=timeout)


def _read_description(client: Any, location: MilvusLocation) -> dict[str, Any]:
    name = f'{location.collection}_features'
    if not client.has_collection(name, timeout=location.timeout_s):
        raise MapError(f'{location.uri}: collection {location.collection!r} is not a boq_ros '
                       f'keyframe map (no {name} collection)')
    client.load_collection(name, timeout=location.timeout_s * 6)
    rows = client.query(name, filter=f'keyframe_id == {DESCRIPTION_ID}',
                        output_fields=['id', 'data'], timeout=location.timeout_s,
                        consistency_level='Strong')
    try:
        if not rows:
            raise ValueError('no description row')
        description = json.loads(min(rows, key=lambda r: int(r['id']))['data'])
        if description.get('boq_ros_store') != STORE_VERSION:
            raise ValueError(f'store version {description.get("boq_ros_store")!r}')
        for name in ('map_id', 'model_id', 'dim', 'metric', 'preprocess'):
            description[name]  # noqa: B018 - KeyError names a missing field
    except (ValueError, KeyError, AttributeError) as exc:
        raise MapError(f'{location.uri}: collection {location.collection!r} is not a boq_ros '
                       f'keyframe map (its description: {exc})') from exc
    return description
