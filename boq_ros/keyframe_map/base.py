"""What every keyframe store offers: the embedded FAISS map and the Milvus store alike.

The detector, the node, evaluation and the CLI hold a `KeyframeStore` and never ask which one:
a store is picked by its URI (keyframe_map/uri.py).  Ids are the store's (never reused); seqs
count a session's keyframes in order; a session has one writer at a time.
"""
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from boq_ros.keyframe_map.features import LocalFeatures
from boq_ros.keyframe_map.meta import KeyframeMeta
from boq_ros.keyframe_map.schema import MapError

NORM_TOLERANCE = 1e-2
"""Descriptors must have |norm - 1| <= this (BoQ descriptors are L2-normalised; fp16 drift)."""


def check_vectors(x: Any, dim: int, what: str) -> np.ndarray:
    """Return `x` as contiguous float32 [N, dim] unit vectors, or name the first bad row."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise MapError(f'{what}: expected shape [N, {dim}], got {list(x.shape)}')
    if not np.issubdtype(x.dtype, np.floating):
        raise MapError(f'{what}: expected floating point values, got {x.dtype}')
    x = np.ascontiguousarray(x, np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise MapError(f'{what}: row {int(np.argmax(bad))} contains NaN or infinity')
    norms = np.linalg.norm(x, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        raise MapError(f'{what}: row {row} is not L2-normalised (norm {norms[row]:.4f}, '
                       f'tolerance {NORM_TOLERANCE})')
    return x


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MapError(f'k must be a positive integer, got {k!r}')
    return int(k)


@dataclass(frozen=True)
class RecentWindow:
    """The robot's own recent past in one session, which must not match itself."""

    session: str
    since_stamp_ns: int
    since_seq: int


def _words(value: Any, name: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise MapError(f'search filter {name} must be a collection of str, got {value!r}')
    return frozenset(value)


@dataclass(frozen=True)
class SearchFilter:
    """Which keyframes a search may return (sessions, robots, temporal exclusion windows)."""

    sessions: frozenset[str] | None = None
    robots: frozenset[str] | None = None
    exclude_sessions: frozenset[str] = frozenset()
    recent: tuple[RecentWindow, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, 'sessions', _words(self.sessions, 'sessions'))
        object.__setattr__(self, 'robots', _words(self.robots, 'robots'))
        object.__setattr__(self, 'exclude_sessions',
                           _words(self.exclude_sessions, 'exclude_sessions'))
        recent = tuple(self.recent)
        if not all(isinstance(w, RecentWindow) for w in recent):
            raise MapError('search filter recent must hold RecentWindow entries')
        object.__setattr__(self, 'recent', recent)

    def admits(self, meta: KeyframeMeta) -> bool:
        """Whether one keyframe passes (what an engine's filter expression must agree with)."""
        if self.sessions is not None and meta.session not in self.sessions:
            return False
        if self.robots is not None and meta.robot_id not in self.robots:
            return False
        if meta.session in self.exclude_sessions:
            return False
        return not any(meta.session == w.session and (meta.stamp_ns >= w.since_stamp_ns
                                                      or meta.seq >= w.since_seq)
                       for w in self.recent)


def check_filter(flt: Any) -> None:
    if flt is not None and not isinstance(flt, SearchFilter):
        raise MapError(f'filter must be a SearchFilter, got {type(flt).__name__}')


@dataclass
class SearchResult:
    """Top-k per query, best first; id -1 / similarity -inf where fewer than k passed."""

    ids: np.ndarray
    similarities: np.ndarray

    @classmethod
    def empty(cls, queries: int, k: int) -> 'SearchResult':
        return cls(np.full((queries, k), -1, np.int64), np.full((queries, k), -np.inf, np.float32))


@dataclass
class KeyframeBlock:
    """Consecutive keyframes of a store (what a merge or an export copies), in id order."""

    ids: np.ndarray
    descriptors: np.ndarray
    metas: list[KeyframeMeta]
    features: list[LocalFeatures | None]
    provenance: list[tuple[str, int]]  # (map_id, id) where each keyframe was first added


class KeyframeStore(ABC):
    """One model's keyframes (descriptors, metadata, local features), searchable as it grows."""

    dim: int
    model_id: str
    metric: str
    preprocess: dict[str, Any]

    @property
    @abstractmethod
    def map_id(self) -> str:
        """Stable identity of the map (the source of every keyframe's provenance)."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """Where the store lives, in the form keyframe_map.uri.open_store takes."""

    @abstractmethod
    def __len__(self) -> int:
        """Live keyframes."""

    @abstractmethod
    def session_size(self, session: str) -> int:
        """Next seq of `session` (0 when the store holds none of it)."""

    @abstractmethod
    def sessions(self) -> dict[str, int]:
        """Keyframe count of every session."""

    @abstractmethod
    def statistics(self) -> dict[str, Any]:
        """Count what a user checks before trusting a map ('keyframes', 'with_features')."""

    @abstractmethod
    def add(self, descriptors: np.ndarray, metas: Sequence[KeyframeMeta],
            features: Sequence[LocalFeatures | None] | None = None) -> np.ndarray:
        """Append keyframes; returns their new ids (input id/seq are ignored, assigned here)."""

    @abstractmethod
    def savepoint(self) -> Any:
        """Mark the growth so far, for :meth:`rollback` (a caller's all-or-nothing step)."""

    @abstractmethod
    def rollback(self, savepoint: Any) -> None:
        """Forget every keyframe added since `savepoint`."""

    @abstractmethod
    def find(self, metas: Sequence[KeyframeMeta]) -> np.ndarray:
        """Ids of keyframes with the same session, camera and stamp (-1: none)."""

    @abstractmethod
    def remove_session(self, session: str) -> int:
        """Remove every keyframe of `session` from search and lookup; returns how many."""

    @abstractmethod
    def merge(self, other: 'KeyframeStore') -> None:
        """Append `other`'s keyframes under new ids, keeping where they were first added."""

    @abstractmethod
    def meta(self, keyframe_id: int) -> KeyframeMeta:
        """Metadata of one keyframe (MapError if there is none with that id)."""

    @abstractmethod
    def provenance(self, keyframe_id: int) -> tuple[str, int]:
        """(map_id, id) under which the keyframe was first added (differs after a merge)."""

    @abstractmethod
    def descriptor(self, keyframe_id: int) -> np.ndarray:
        """Return the stored descriptor of one keyframe."""

    @abstractmethod
    def features(self, keyframe_id: int) -> LocalFeatures | None:
        """Local features of one keyframe, None when it was added without."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int,
               flt: SearchFilter | None = None) -> SearchResult:
        """Best `k` keyframes per query among those `flt` admits."""

    @abstractmethod
    def keyframes(self, batch: int = 1024) -> Iterator[KeyframeBlock]:
        """Every live keyframe, in id order, `batch` at a time."""

    @abstractmethod
    def refresh_index(self) -> str:
        """After building: bring the index up to date with the whole store; says what was done."""

    @abstractmethod
    def flush(self) -> int:
        """Write what is still pending (after a failed write); returns keyframes still pending."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """Counters of the store's link to its engine (empty for an embedded store)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Describe the store as `boq-ros map info` prints it: identity, model, counts, index."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (an embedded store holds none)."""


def check_mergeable(target: KeyframeStore, source: KeyframeStore) -> None:
    """Refuse a merge of another model's keyframes, of a store into itself, or of shared sessions.

    A session has one writer: two stores that both hold one cannot be merged.
    """
    if not isinstance(source, KeyframeStore):
        raise MapError(f'can only merge a keyframe store, got {type(source).__name__}')
    if source is target or source.map_id == target.map_id:
        raise MapError('cannot merge a map into itself')
    for name in ('model_id', 'dim', 'metric', 'preprocess'):
        mine, theirs = getattr(target, name), getattr(source, name)
        if mine != theirs:
            raise MapError(f'cannot merge map {source.map_id}: {name} differs '
                           f'(this map: {mine!r}, other: {theirs!r})')
    overlap = sorted(set(target.sessions()) & set(source.sessions()))
    if overlap:
        raise MapError(f'cannot merge map {source.map_id}: both maps hold session(s) '
                       f'{overlap}; remove or rename them first')
