"""Loop-closure candidate logic, shared by the live node and the offline evaluation.

For every query keyframe the detector searches the keyframe map (never the query session's own
recent past), ranks the top-k map keyframes by cosine similarity and decides whether the best one
is a loop closure. The tests, in order (docs/detector.md has the rationale):

1. threshold: best similarity >= the query's threshold. ``fixed`` uses ``threshold``;
   ``adaptive`` uses ``max(threshold, min_j sim(query, r_j) - adaptive_offset)`` over the
   query's own last ``adaptive_window`` keyframes r_j of its session (pySLAM's idea: a revisit
   must look at least as similar as the keyframes the camera has just seen); with no earlier
   keyframe the fixed threshold applies.
2. margin: best similarity minus that of the best map keyframe *outside the best's region*
   >= ``min_margin``. The region of a keyframe is its session's keyframes within
   ``consistency_keyframes`` seq of it: neighbours of the best are the same place, not rivals.
3. consistency: ``consistency`` consecutive queries of the session whose best passed 1 and 2
   matched the same region (same map session, seq within ``consistency_keyframes`` of the
   previous match).

Exclusion: a map keyframe of the query's own session is a candidate only when
``seq < n - exclusion_keyframes`` and ``stamp <= query_stamp - exclusion_seconds``, with n the
seq the query gets in the map (its session's size before it); other sessions are never excluded.
"""
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from enum import IntEnum
import math
from typing import Literal

import numpy as np

from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta, RecentWindow, SearchFilter

_CHUNK = 64  # queries per batched search in process_batch


class DetectorConfigError(ValueError):
    """Raised for an invalid detector setting; the message names the field."""


class DetectorInputError(ValueError):
    """Raised for a descriptor or keyframe the detector cannot process."""


@dataclass(frozen=True)
class DetectorConfig:
    """How candidates are searched, tested and whether queries join the map."""

    top_k: int = 5
    exclusion_seconds: float = 30.0
    exclusion_keyframes: int = 50
    threshold_mode: Literal['fixed', 'adaptive'] = 'fixed'
    threshold: float = 0.6
    adaptive_window: int = 5
    adaptive_offset: float = 0.0
    min_margin: float = 0.0
    consistency: int = 1
    consistency_keyframes: int = 10
    mode: Literal['grow', 'static', 'both'] = 'grow'

    def validate(self) -> None:
        """Raise DetectorConfigError naming the first invalid field."""
        def bad(name: str, why: str) -> DetectorConfigError:
            return DetectorConfigError(f'{name} {why}, got {getattr(self, name)!r}')

        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ('int', int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(f.name, 'must be an integer')
            if f.type in ('float', float) and not (
                    isinstance(value, int | float) and not isinstance(value, bool)
                    and math.isfinite(value)):
                raise bad(f.name, 'must be a finite number')
        if self.top_k < 1:
            raise bad('top_k', 'must be >= 1')
        for name in ('exclusion_seconds', 'exclusion_keyframes', 'adaptive_offset',
                     'min_margin', 'consistency_keyframes'):
            if getattr(self, name) < 0:
                raise bad(name, 'must be >= 0')
        if not -1.0 <= self.threshold <= 1.0:
            raise bad('threshold', 'must be a cosine similarity in [-1, 1]')
        if self.adaptive_window < 1:
            raise bad('adaptive_window', 'must be >= 1')
        if self.consistency < 1:
            raise bad('consistency', 'must be >= 1')
        if self.threshold_mode not in ('fixed', 'adaptive'):
            raise bad('threshold_mode', "must be 'fixed' or 'adaptive'")
        if self.mode not in ('grow', 'static', 'both'):
            raise bad('mode', "must be 'grow', 'static' or 'both'")

    @property
    def search_depth(self) -> int:
        """Map keyframes fetched per query: enough to always find the best's rival for the margin.

        The best's region holds at most 2 * consistency_keyframes + 1 keyframes.
        """
        return self.top_k + 2 * self.consistency_keyframes + 1


class Status(IntEnum):
    """Candidate status; the values are those of boq_ros/LoopCandidate.msg."""

    APPEARANCE_ONLY = 0
    VERIFIED = 1
    REJECTED = 2


@dataclass
class Candidate:
    """One map keyframe proposed for a query, with the evidence for the decision."""

    keyframe_id: int
    meta: KeyframeMeta
    similarity: float
    rank: int
    margin: float
    status: Status
    reason: str = ''


@dataclass
class Detection:
    """The decision for one query keyframe (published whether or not it was accepted)."""

    query: KeyframeMeta
    candidates: list[Candidate] = field(default_factory=list)
    accepted: bool = False
    threshold: float = 0.0
    added: bool = False


@dataclass
class _Streak:
    session: str
    seq: int
    count: int


class LoopDetector:
    """Turn query descriptors into loop-closure decisions against a keyframe map."""

    def __init__(self, keyframe_map: KeyframeMap, config: DetectorConfig) -> None:
        self.map = keyframe_map
        self._recent: dict[str, deque[np.ndarray]] = {}
        self._streaks: dict[str, _Streak] = {}
        self._sessions_seen: set[str] = set()
        self.config = config

    @property
    def config(self) -> DetectorConfig:
        """The settings in force; assigning new ones (a parameter update) validates them first."""
        return self._config

    @config.setter
    def config(self, config: DetectorConfig) -> None:
        config.validate()
        self._config = config
        for session, recent in self._recent.items():
            if recent.maxlen != config.adaptive_window:
                self._recent[session] = deque(recent, maxlen=config.adaptive_window)

    @property
    def adds(self) -> bool:
        """Whether query keyframes join the map (modes grow and both)."""
        return self.config.mode != 'static'

    def process(self, descriptor: np.ndarray, meta: KeyframeMeta) -> Detection:
        """Search, decide, then add the query to the map per the mode."""
        descriptor = np.asarray(descriptor)
        if descriptor.ndim != 1:
            raise DetectorInputError(
                f'descriptor must be one vector, got shape {list(descriptor.shape)}')
        return self.process_batch(descriptor[None, :], [meta])[0]

    def process_batch(self, descriptors: np.ndarray,
                      metas: Sequence[KeyframeMeta]) -> list[Detection]:
        """Process queries in order as `process` would, with one batched search per chunk."""
        descs = self._check_input(descriptors, metas)
        detections: list[Detection] = []
        for start in range(0, len(metas), _CHUNK):
            stop = min(start + _CHUNK, len(metas))
            detections.extend(self._process_chunk(descs[start:stop], list(metas[start:stop])))
        return detections

    # -- internals ------------------------------------------------------------------------
    def _check_input(self, descriptors: np.ndarray,
                     metas: Sequence[KeyframeMeta]) -> np.ndarray:
        descs = np.asarray(descriptors)
        if descs.ndim != 2 or descs.shape[1] != self.map.dim:
            raise DetectorInputError(
                f'descriptors must have shape [N, {self.map.dim}], got {list(descs.shape)}')
        if descs.shape[0] != len(metas):
            raise DetectorInputError(
                f'{descs.shape[0]} descriptors but {len(metas)} keyframe metadata entries')
        descs = descs.astype(np.float32, copy=False)
        if not np.isfinite(descs).all():
            raise DetectorInputError('descriptors contain NaN or infinite values')
        if self.config.mode == 'both':
            for meta in metas:
                if meta.session not in self._sessions_seen and self.map.session_size(
                        meta.session) > 0:
                    raise DetectorInputError(
                        f'mode both grows a new session, but session {meta.session!r} is '
                        'already in the prebuilt map')
        for meta in metas:
            self._sessions_seen.add(meta.session)
        return descs

    def _process_chunk(self, descs: np.ndarray, metas: list[KeyframeMeta]) -> list[Detection]:
        cfg = self.config
        if self.adds:
            new_ids = [int(i) for i in self.map.add(descs, metas)]
            queries = [self.map.meta(i) for i in new_ids]
            query_seqs = [q.seq for q in queries]
        else:
            new_ids = []
            queries = list(metas)
            query_seqs = [self.map.session_size(m.session) for m in metas]
        position_of_new = {kf_id: pos for pos, kf_id in enumerate(new_ids)}
        window_ns = int(round(cfg.exclusion_seconds * 1e9))

        def eligible(pos: int, kf: KeyframeMeta) -> bool:
            if kf.id in position_of_new and position_of_new[kf.id] >= pos:
                return False  # the query itself or a later query of this chunk
            if kf.session != queries[pos].session:
                return True
            return (kf.seq < query_seqs[pos] - cfg.exclusion_keyframes
                    and kf.stamp_ns <= queries[pos].stamp_ns - window_ns)

        # One search per session of the chunk, with the least exclusive window of its queries
        # (that of its latest query); each query then drops what its own window and the chunk
        # order exclude, and searches alone in the rare case that left too few hits.
        by_session: dict[str, list[int]] = {}
        for pos, query in enumerate(queries):
            by_session.setdefault(query.session, []).append(pos)
        depth = cfg.search_depth
        hits_of: dict[int, list[tuple[KeyframeMeta, float]] | None] = {}
        known: dict[int, KeyframeMeta] = {}  # metadata looked up in this chunk
        for session, positions in by_session.items():
            fetch = depth + 2 * len(positions)
            window = SearchFilter(recent=(RecentWindow(
                session, max(queries[p].stamp_ns for p in positions) - window_ns + 1,
                max(query_seqs[p] for p in positions) - cfg.exclusion_keyframes),))
            result = self.map.search(descs[positions], fetch, window)
            for row, pos in enumerate(positions):
                hits = self._eligible_hits(result.ids[row], result.similarities[row], fetch,
                                           depth, lambda kf, p=pos: eligible(p, kf), known)
                if hits is None:
                    own = SearchFilter(recent=(RecentWindow(
                        session, queries[pos].stamp_ns - window_ns + 1,
                        query_seqs[pos] - cfg.exclusion_keyframes),))
                    single = fetch
                    while hits is None:
                        single *= 2
                        res = self.map.search(descs[pos:pos + 1], single, own)
                        hits = self._eligible_hits(res.ids[0], res.similarities[0], single,
                                                   depth, lambda kf, p=pos: eligible(p, kf),
                                                   known)
                hits_of[pos] = hits
        return [self._decide(descs[pos], query, hits_of[pos])
                for pos, query in enumerate(queries)]

    def _eligible_hits(self, ids: np.ndarray, sims: np.ndarray, fetched: int, depth: int,
                       eligible: Callable[[KeyframeMeta], bool],
                       known: dict[int, KeyframeMeta]
                       ) -> list[tuple[KeyframeMeta, float]] | None:
        """Up to `depth` eligible hits, best first; None if more may hide beyond `fetched`."""
        hits = []
        valid = 0
        for kf_id, sim in zip(ids.tolist(), sims.tolist()):
            if kf_id < 0:
                break
            valid += 1
            kf = known.get(kf_id)
            if kf is None:
                kf = known[kf_id] = self.map.meta(kf_id)
            if eligible(kf):
                hits.append((kf, float(sim)))
        if len(hits) < depth and valid == fetched:
            return None
        hits.sort(key=lambda h: (-h[1], h[0].id))
        return hits[:depth]

    def _threshold(self, descriptor: np.ndarray, session: str) -> float:
        cfg = self.config
        recent = self._recent.setdefault(session, deque(maxlen=cfg.adaptive_window))
        threshold = cfg.threshold
        if cfg.threshold_mode == 'adaptive' and recent:
            own = float(np.min(np.stack(recent) @ descriptor))
            threshold = max(threshold, own - cfg.adaptive_offset)
        recent.append(descriptor.copy())
        return threshold

    def _same_region(self, a: KeyframeMeta, b: KeyframeMeta) -> bool:
        return a.session == b.session and abs(a.seq - b.seq) <= self.config.consistency_keyframes

    def _margins(self, hits: list[tuple[KeyframeMeta, float]]) -> list[float]:
        """Similarity minus the best lower-ranked hit outside the candidate's region.

        Without such a rival among the hits, the rival is the last hit when the list was cut at
        the search depth (so the margin is a lower bound), else 0 (nothing else is alike).
        """
        full = len(hits) == self.config.search_depth
        margins = []
        for i, (kf, sim) in enumerate(hits):
            rival = next((s for other, s in hits[i + 1:] if not self._same_region(kf, other)),
                         None)
            if rival is None:
                rival = hits[-1][1] if full else 0.0
            margins.append(sim - rival)
        return margins

    def _decide(self, descriptor: np.ndarray, query: KeyframeMeta,
                hits: list[tuple[KeyframeMeta, float]]) -> Detection:
        cfg = self.config
        threshold = self._threshold(descriptor, query.session)
        detection = Detection(query=query, threshold=threshold, added=self.adds)
        if not hits:
            self._streaks.pop(query.session, None)
            return detection
        margins = self._margins(hits)
        best, best_sim = hits[0]
        reason = ''
        if best_sim < threshold:
            reason = 'threshold'
        elif margins[0] < cfg.min_margin:
            reason = 'margin'
        if reason:
            self._streaks.pop(query.session, None)
        else:
            streak = self._streaks.get(query.session)
            if streak is not None and streak.session == best.session and abs(
                    streak.seq - best.seq) <= cfg.consistency_keyframes:
                streak = _Streak(best.session, best.seq, streak.count + 1)
            else:
                streak = _Streak(best.session, best.seq, 1)
            self._streaks[query.session] = streak
            if streak.count < cfg.consistency:
                reason = 'consistency'
        detection.accepted = not reason
        for rank, ((kf, sim), margin) in enumerate(zip(hits[:cfg.top_k], margins)):
            own_reason = 'threshold' if sim < threshold else reason
            detection.candidates.append(Candidate(
                keyframe_id=kf.id, meta=kf, similarity=sim, rank=rank, margin=margin,
                status=Status.REJECTED if own_reason else Status.APPEARANCE_ONLY,
                reason=own_reason))
        return detection

