"""Per-keyframe metadata, held as columns so that filters over a million keyframes stay vectorised.

Strings that repeat (session, robot, camera, frames, pose source, source map) are stored as codes
into small vocabularies; image references, unique per keyframe, live in one UTF-8 blob.  The
on-disk form is the same columns (`TABLE_DTYPE`), a vocabulary JSON and the blob: no pickle.
"""
from dataclasses import dataclass
import math
from typing import Any

import numpy as np

from boq_ros.keyframe_map.schema import MapError

Pose = tuple[float, float, float, float, float, float, float]

CATEGORICAL = ('session', 'robot_id', 'camera', 'frame_id', 'pose_frame', 'pose_source',
               'source_map')
"""Columns stored as vocabulary codes (few distinct values per map)."""

TABLE_DTYPE = np.dtype([
    ('id', '<i8'), ('seq', '<i8'), ('stamp_ns', '<i8'), ('source_id', '<i8'),
    *[(name, '<i4') for name in CATEGORICAL],
    ('pose', '<f8', (7,)), ('image_ref', '<i8', (2,)),
])
"""One row per keyframe: ids, codes, pose (NaN when absent), [start, end) into the image blob."""

QUATERNION_TOLERANCE = 1e-2


@dataclass
class KeyframeMeta:
    """What a backend needs to act on a match: stable id, sensor stamp, origin and pose."""

    stamp_ns: int
    session: str = ''
    robot_id: str = ''
    camera: str = ''
    frame_id: str = ''
    pose: Pose | None = None  # x y z qx qy qz qw; quaternion all NaN when only position is known
    pose_frame: str = ''
    pose_source: str = ''
    image_ref: str = ''
    id: int = -1
    seq: int = -1


def check_meta(meta: Any, where: str) -> None:
    """Refuse metadata the table cannot store faithfully."""
    if not isinstance(meta, KeyframeMeta):
        raise MapError(f'{where}: expected KeyframeMeta, got {type(meta).__name__}')
    if isinstance(meta.stamp_ns, bool) or not isinstance(meta.stamp_ns, (int, np.integer)):
        raise MapError(f'{where}: stamp_ns must be an integer (nanoseconds), '
                       f'got {type(meta.stamp_ns).__name__}')
    if not 0 <= int(meta.stamp_ns) < 2 ** 63:
        raise MapError(f'{where}: stamp_ns {meta.stamp_ns} is outside [0, 2^63)')
    for name in (*CATEGORICAL[:-1], 'image_ref'):
        value = getattr(meta, name)
        if not isinstance(value, str):
            raise MapError(f'{where}: {name} must be a str, got {type(value).__name__}')
        try:
            value.encode('utf-8')
        except UnicodeEncodeError as exc:  # e.g. a surrogate-escaped file name
            raise MapError(f'{where}: {name} is not valid UTF-8 text: {value!r}') from exc
    if meta.pose is not None:
        try:
            pose = [float(v) for v in meta.pose]
        except (TypeError, ValueError) as exc:
            raise MapError(f'{where}: pose must be 7 numbers (x y z qx qy qz qw)') from exc
        if len(pose) != 7 or not all(math.isfinite(v) for v in pose[:3]):
            raise MapError(f'{where}: pose must be 7 numbers (x y z qx qy qz qw) with a finite '
                           f'position, got {meta.pose!r}')
        quaternion = pose[3:]
        if all(math.isnan(v) for v in quaternion):
            return  # position only (e.g. GNSS): orientation unknown
        if not all(math.isfinite(v) for v in quaternion) or \
                abs(math.hypot(*quaternion) - 1.0) > QUATERNION_TOLERANCE:
            raise MapError(f'{where}: pose quaternion must be unit length (or all NaN when '
                           f'unknown), got {tuple(quaternion)!r}')


class Vocabulary:
    """Two-way mapping between a column's strings and their int32 codes."""

    def __init__(self, words: list[str] | None = None) -> None:
        self.words: list[str] = list(words or [])
        self.codes: dict[str, int] = {w: i for i, w in enumerate(self.words)}
        if len(self.codes) != len(self.words):
            raise MapError('duplicate string in a metadata vocabulary')

    def code(self, word: str) -> int:
        """Return the code of `word`, adding it when new."""
        found = self.codes.get(word)
        if found is None:
            found = self.codes[word] = len(self.words)
            self.words.append(word)
        return found


class MetaTable:
    """Columns of all keyframes ever added (rows are never reordered; removal clears `live`)."""

    def __init__(self) -> None:
        self.rows = np.zeros(0, TABLE_DTYPE)
        self.live = np.zeros(0, bool)
        self.count = 0
        self.vocab = {name: Vocabulary() for name in CATEGORICAL}
        self.blob = bytearray()

    def __len__(self) -> int:
        return self.count

    def columns(self) -> np.ndarray:
        """View of the filled rows (live or not)."""
        return self.rows[:self.count]

    def live_mask(self) -> np.ndarray:
        return self.live[:self.count]

    def _reserve(self, extra: int) -> None:
        need = self.count + extra
        if need <= len(self.rows):
            return
        capacity = max(need, 2 * len(self.rows), 1024)
        rows = np.zeros(capacity, TABLE_DTYPE)
        rows[:self.count] = self.rows[:self.count]
        live = np.zeros(capacity, bool)
        live[:self.count] = self.live[:self.count]
        self.rows, self.live = rows, live

    def append(self, metas: list[KeyframeMeta], ids: np.ndarray, seqs: np.ndarray,
               source_map: str, source_ids: np.ndarray) -> None:
        """Append rows for already validated metadata."""
        self._reserve(len(metas))
        block = np.zeros(len(metas), TABLE_DTYPE)
        block['id'], block['seq'], block['source_id'] = ids, seqs, source_ids
        block['stamp_ns'] = [int(m.stamp_ns) for m in metas]
        for name in CATEGORICAL[:-1]:
            vocab = self.vocab[name]
            block[name] = [vocab.code(getattr(m, name)) for m in metas]
        block['source_map'] = self.vocab['source_map'].code(source_map)
        block['pose'] = [m.pose if m.pose is not None else (math.nan,) * 7 for m in metas]
        refs = [meta.image_ref.encode('utf-8') for meta in metas]
        ends = len(self.blob) + np.cumsum([len(r) for r in refs], dtype=np.int64)
        block['image_ref'] = np.stack([ends - [len(r) for r in refs], ends], axis=1) \
            if refs else np.zeros((0, 2), np.int64)
        self.blob += b''.join(refs)
        self.rows[self.count:self.count + len(metas)] = block
        self.live[self.count:self.count + len(metas)] = True
        self.count += len(metas)

    def append_rows(self, other: 'MetaTable', rows: np.ndarray, ids: np.ndarray) -> None:
        """Append `other`'s rows under new ids, re-coding strings into this table's vocabulary."""
        self._reserve(len(rows))
        block = other.rows[rows].copy()
        block['id'] = ids
        for name in CATEGORICAL:
            mapping = np.array([self.vocab[name].code(w) for w in other.vocab[name].words],
                               np.int32)
            block[name] = mapping[block[name]]
        base = len(self.blob)
        for i, (start, end) in enumerate(block['image_ref']):
            self.blob += other.blob[start:end]
            block['image_ref'][i] = (base, len(self.blob))
            base = len(self.blob)
        self.rows[self.count:self.count + len(rows)] = block
        self.live[self.count:self.count + len(rows)] = True
        self.count += len(rows)

    def truncate(self, count: int) -> None:
        """Forget the rows from `count` on (undo of an add that failed half way)."""
        del self.blob[int(self.rows['image_ref'][count - 1, 1]) if count else 0:]
        self.live[count:self.count] = False
        self.count = count

    def meta(self, row: int) -> KeyframeMeta:
        """Rebuild the KeyframeMeta of one row."""
        rec = self.rows[row]
        text = {name: self.vocab[name].words[int(rec[name])] for name in CATEGORICAL[:-1]}
        pose = None if math.isnan(rec['pose'][0]) else tuple(float(v) for v in rec['pose'])
        start, end = (int(v) for v in rec['image_ref'])
        return KeyframeMeta(stamp_ns=int(rec['stamp_ns']), pose=pose,
                            image_ref=self.blob[start:end].decode('utf-8'),
                            id=int(rec['id']), seq=int(rec['seq']), **text)

    def statistics(self) -> dict[str, Any]:
        """Count live keyframes per session, robot, camera, pose source and source map."""
        live = self.live_mask()
        cols = self.columns()[live]
        out: dict[str, Any] = {'keyframes': int(live.sum()),
                               'removed_keyframes': int((~live).sum())}
        for name in ('session', 'robot_id', 'camera', 'pose_source', 'source_map'):
            words = self.vocab[name].words
            codes, counts = np.unique(cols[name], return_counts=True)
            out[f'{name}s'] = {words[c]: int(n) for c, n in zip(codes, counts)}
        out['with_pose'] = int(np.isfinite(cols['pose'][:, 0]).sum())
        if len(cols):
            out['stamp_range_ns'] = [int(cols['stamp_ns'].min()), int(cols['stamp_ns'].max())]
        return out

    def codes_of(self, column: str, words: frozenset[str]) -> np.ndarray:
        """Codes of the given strings that occur in `column` (unknown strings match nothing)."""
        vocab = self.vocab[column].codes
        return np.array([vocab[w] for w in words if w in vocab], np.int32)

    def compacted(self) -> tuple[np.ndarray, bytes]:
        """Live rows with the image blob rewritten to hold only their references."""
        block = self.columns()[self.live_mask()].copy()
        blob = bytearray()
        for i, (start, end) in enumerate(block['image_ref']):
            block['image_ref'][i] = (len(blob), len(blob) + end - start)
            blob += self.blob[start:end]
        return block, bytes(blob)

    @classmethod
    def from_arrays(cls, block: np.ndarray, vocab: dict[str, list[str]],
                    blob: bytes) -> 'MetaTable':
        """Rebuild a table from its stored form, refusing inconsistent content."""
        if block.dtype != TABLE_DTYPE or block.ndim != 1:
            raise MapError(f'keyframes.npy: unexpected layout {block.dtype} (expected '
                           f'{TABLE_DTYPE})')
        if set(vocab) != set(CATEGORICAL):
            raise MapError(f'strings.json: expected the vocabularies {sorted(CATEGORICAL)}, '
                           f'got {sorted(vocab)}')
        table = cls()
        for name in CATEGORICAL:
            words = vocab[name]
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise MapError(f'strings.json: vocabulary {name!r} must be a list of strings')
            table.vocab[name] = Vocabulary(words)
            codes = block[name]
            if len(codes) and (codes.min() < 0 or codes.max() >= len(words)):
                raise MapError(f'keyframes.npy: column {name!r} refers to strings missing '
                               f'from strings.json')
        if len(block) > 1 and not np.all(np.diff(block['id']) > 0):
            raise MapError('keyframes.npy: keyframe ids are not strictly increasing')
        if len(block) and block['id'][0] < 0:
            raise MapError('keyframes.npy: negative keyframe id')
        refs = block['image_ref']
        if len(block) and (refs.min() < 0 or refs.max() > len(blob)
                           or np.any(refs[:, 1] < refs[:, 0])):
            raise MapError('keyframes.npy: image references point outside image_refs.npy')
        table.rows = np.array(block, TABLE_DTYPE)
        table.live = np.ones(len(block), bool)
        table.count = len(block)
        table.blob = bytearray(blob)
        return table
