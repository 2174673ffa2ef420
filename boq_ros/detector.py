"""Loop-closure candidate logic, shared by the live node and the offline evaluation.

For every query keyframe the detector searches the keyframe map (never the query session's own
recent past), ranks the top-k map keyframes by cosine similarity and runs the best one through
an ordered list of named tests (``TESTS``; docs/detector.md has the rationale):

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
4. verification: the :class:`Verifier` given to the detector tries the candidates that passed
   the threshold, best first, at most its ``top_n`` of them and within its ``budget_s`` per query
   (the first is always tried), and stops at the first it confirms: that one is the accepted
   match (status VERIFIED), whatever its rank. Without a verifier the test passes and the best
   candidate is accepted appearance-only.

Only after the decision does the query join the map (modes grow and both), as the last step.
A batch is decided and added all or nothing: when anything fails, neither the map nor the
detector's state (streaks, adaptive window) changed, so a retry is exact and adds nothing twice.

Exclusion: a map keyframe of the query's own session is a candidate only when
``seq < n - exclusion_keyframes`` and ``stamp <= query_stamp - exclusion_seconds``, with n the
seq the query gets in the map (its session's size before it); other sessions are never excluded.
"""
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
import time
from typing import Protocol

import numpy as np

from boq_ros.keyframe_map import (
    KeyframeMap,
    KeyframeMeta,
    LocalFeatures,
    RecentWindow,
    SearchFilter,
)
from boq_ros.settings import DetectorConfig
from boq_ros.settings import DetectorConfigError as DetectorConfigError  # re-exported

_CHUNK = 64  # queries per batched search

TESTS = ('threshold', 'margin', 'consistency', 'verification')
"""The tests a best candidate must pass, in order; each is the method ``_test_<name>``."""


class DetectorInputError(ValueError):
    """Raised for a descriptor or keyframe the detector cannot process."""


class Status(IntEnum):
    """Candidate status; the values are those of boq_ros/LoopCandidate.msg."""

    APPEARANCE_ONLY = 0
    VERIFIED = 1
    REJECTED = 2


class PoseKind(IntEnum):
    """What a verified relative pose is; the values are those of boq_ros/LoopCandidate.msg."""

    NONE = 0  # no pose (uncalibrated camera: fundamental-matrix inlier test only)
    METRIC = 1  # PnP against depth: rotation and metric translation
    UP_TO_SCALE = 2  # essential matrix: rotation and the translation's direction (unit norm)
    ODOMETRY_SCALE = 3  # essential matrix, translation scaled by the odometry distance


@dataclass
class Verification:
    """What the verification test found for one candidate."""

    verified: bool
    reason: str = ''  # why not, when not verified
    cause: str = ''  # the reason's kind, one of REJECTION_CAUSES ('' when verified)
    matches: int = 0  # putative correspondences
    inliers: int = 0  # correspondences consistent with the estimated geometry
    estimator: str = ''  # 'pnp', 'essential', 'fundamental' ('' when none ran)
    pose_kind: PoseKind = PoseKind.NONE
    relative_pose: np.ndarray | None = None  # 4x4 T_query_match: match camera in query frame
    covariance: np.ndarray | None = None  # 6x6 over x y z rx ry rz (docs/verification.md)
    relative_pose_base: np.ndarray | None = None  # the same, match base in the query's base
    covariance_base: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def inlier_ratio(self) -> float:
        """Return inliers / matches (0 without matches)."""
        return self.inliers / self.matches if self.matches else 0.0


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
    verification: Verification | None = None  # when the verification test tried it


@dataclass
class Detection:
    """The decision for one query keyframe (published whether or not it was accepted)."""

    query: KeyframeMeta
    candidates: list[Candidate] = field(default_factory=list)
    accepted: bool = False
    threshold: float = 0.0
    added: bool = False

    @property
    def match(self) -> Candidate | None:
        """Return the accepted candidate (the verified one, else the best), None if rejected."""
        if not self.accepted:
            return None
        return next((c for c in self.candidates if c.status == Status.VERIFIED),
                    self.candidates[0])


REJECTION_CAUSES = ('no_query_features', 'no_match_features', 'kinds_differ', 'few_matches',
                    'geometry', 'few_inliers', 'low_inlier_ratio')
"""Why verification rejects a candidate: counted by cause in /diagnostics and eval."""


class Verifier(Protocol):
    """The verification test: confirms a loop with geometry the descriptors do not see."""

    top_n: int  # candidates tried per query, best first
    budget_s: float  # no further candidate is tried once a query's verification took this long

    def verify(self, query: KeyframeMeta, candidate: Candidate,
               features: LocalFeatures | None) -> Verification:
        """Verify one candidate against the query's local features (None: it has none)."""


@dataclass(frozen=True)
class _Streak:
    session: str
    seq: int
    count: int


@dataclass
class _State:
    """What the detector remembers between queries; copied per batch, kept only on success."""

    recent: dict[str, deque] = field(default_factory=dict)  # session -> last descriptors
    streaks: dict[str, _Streak] = field(default_factory=dict)  # query session -> streak

    def copy(self) -> '_State':
        return _State({s: deque(d, maxlen=d.maxlen) for s, d in self.recent.items()},
                      dict(self.streaks))


@dataclass
class _Query:
    """One query on its way through the tests."""

    descriptor: np.ndarray
    meta: KeyframeMeta
    seq: int  # the seq it gets (or would get) in the map
    features: LocalFeatures | None
    hits: list[tuple[KeyframeMeta, float]]
    threshold: float = 0.0
    margins: list[float] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


class LoopDetector:
    """Turn query descriptors into loop-closure decisions against a keyframe map."""

    def __init__(self, keyframe_map: KeyframeMap, config: DetectorConfig,
                 verifier: Verifier | None = None) -> None:
        self.map = keyframe_map
        self.verifier = verifier
        self._state = _State()
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
        recent = self._state.recent
        for session, window in recent.items():
            if window.maxlen != config.adaptive_window:
                recent[session] = deque(window, maxlen=config.adaptive_window)

    @property
    def adds(self) -> bool:
        """Whether query keyframes join the map (modes grow and both)."""
        return self.config.mode != 'static'

    def process(self, descriptor: np.ndarray, meta: KeyframeMeta,
                features: LocalFeatures | None = None) -> Detection:
        """Search, decide, then add the query (with its local features) to the map per the mode."""
        return self.process_batch(self._one(descriptor), [meta], [features])[0]

    def process_batch(self, descriptors: np.ndarray, metas: Sequence[KeyframeMeta],
                      features: Sequence[LocalFeatures | None] | None = None
                      ) -> list[Detection]:
        """Process queries in order exactly as `process` would one by one, searching in batches.

        `features` are the queries' local features: what verification matches, and what the map
        stores with them. All or nothing: on an exception the map and the detector's state are
        as before the call.
        """
        descs = self._check_input(descriptors, metas)
        metas = list(metas)
        features = list(features) if features is not None else [None] * len(metas)
        if len(features) != len(metas):
            raise DetectorInputError(f'{len(features)} feature sets for {len(metas)} queries')
        state = self._state.copy()
        savepoint = self.map.savepoint()
        detections: list[Detection] = []
        try:
            for start, stop in self._runs(metas):
                run = [self._decide(q, state) for q in self._search(
                    descs[start:stop], metas[start:stop], features[start:stop])]
                if self.adds:  # the last step, after the decision; the next run must see it
                    self._add_run(run, descs[start:stop], metas[start:stop],
                                  features[start:stop])
                detections += run
        except BaseException:
            self.map.rollback(savepoint)
            raise
        self._state = state
        self._sessions_seen.update(meta.session for meta in metas)
        return detections

    def query(self, descriptor: np.ndarray, meta: KeyframeMeta, top_k: int | None = None,
              features: LocalFeatures | None = None) -> Detection:
        """Decide for one query without side effects: no map insertion, no state change.

        Threshold, margin and verification apply; consistency, which needs a stream, does not.
        This is what a relocalisation request asks.
        """
        cfg = self.config
        descs = self._check_input(self._one(descriptor), [meta], register=False)
        probe = LoopDetector(self.map, replace(cfg, mode='static', consistency=1,
                                               top_k=top_k or cfg.top_k), self.verifier)
        probe._state = self._state.copy()
        return probe._decide(probe._search(descs, [meta], [features])[0], probe._state,
                             remember=False)

    # -- input and runs -------------------------------------------------------------------
    @staticmethod
    def _one(descriptor: np.ndarray) -> np.ndarray:
        descriptor = np.asarray(descriptor)
        if descriptor.ndim != 1:
            raise DetectorInputError(
                f'descriptor must be one vector, got shape {list(descriptor.shape)}')
        return descriptor[None, :]

    def _check_input(self, descriptors: np.ndarray, metas: Sequence[KeyframeMeta],
                     register: bool = True) -> np.ndarray:
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
        if register and self.config.mode == 'both':
            for meta in metas:
                if meta.session not in self._sessions_seen and self.map.session_size(
                        meta.session) > 0:
                    raise DetectorInputError(
                        f'mode both grows a new session, but session {meta.session!r} is '
                        'already in the prebuilt map')
        return descs

    def _runs(self, metas: list[KeyframeMeta]) -> Iterator[tuple[int, int]]:
        """Split a batch into runs whose queries cannot see each other.

        Then one search before the run joins the map gives exactly what one query at a time
        would. When queries never join the map, any chunk is such a run; when they do, a run
        holds one session and at most exclusion_keyframes + 1 queries (a query never sees its
        session's last exclusion_keyframes keyframes, and always sees other sessions).
        """
        limit = min(_CHUNK, self.config.exclusion_keyframes + 1) if self.adds else _CHUNK
        start = 0
        for i in range(1, len(metas) + 1):
            if i == len(metas) or i - start >= limit or (
                    self.adds and metas[i].session != metas[start].session):
                yield start, i
                start = i

    def _add_run(self, detections: list[Detection], descs: np.ndarray,
                 metas: list[KeyframeMeta], features: list[LocalFeatures | None]) -> None:
        stored = features if any(f is not None for f in features) else None
        for detection, kf_id in zip(detections, self.map.add(descs, metas, stored)):
            detection.query = self.map.meta(int(kf_id))
            detection.added = True

    # -- search ---------------------------------------------------------------------------
    def _search(self, descs: np.ndarray, metas: list[KeyframeMeta],
                features: list[LocalFeatures | None]) -> list[_Query]:
        """Eligible hits of each query of a run, best first, against the map as it is."""
        cfg = self.config
        next_seq: dict[str, int] = {}
        seqs = []
        for meta in metas:
            seq = next_seq.get(meta.session, self.map.session_size(meta.session))
            seqs.append(seq)
            if self.adds:
                next_seq[meta.session] = seq + 1
        window_ns = int(round(cfg.exclusion_seconds * 1e9))

        def eligible(pos: int, kf: KeyframeMeta) -> bool:
            if kf.session != metas[pos].session:
                return True
            return (kf.seq < seqs[pos] - cfg.exclusion_keyframes
                    and kf.stamp_ns <= metas[pos].stamp_ns - window_ns)

        # One search per session, with the least exclusive window of its queries (that of its
        # latest query); each query then drops what its own window excludes, and searches
        # alone in the rare case that left too few hits.
        by_session: dict[str, list[int]] = {}
        for pos, meta in enumerate(metas):
            by_session.setdefault(meta.session, []).append(pos)
        depth = cfg.search_depth
        hits_of: dict[int, list[tuple[KeyframeMeta, float]]] = {}
        known: dict[int, KeyframeMeta] = {}  # metadata looked up in this run
        for session, positions in by_session.items():
            fetch = depth + 2 * len(positions)
            window = SearchFilter(recent=(RecentWindow(
                session, max(metas[p].stamp_ns for p in positions) - window_ns + 1,
                max(seqs[p] for p in positions) - cfg.exclusion_keyframes),))
            result = self.map.search(descs[positions], fetch, window)
            for row, pos in enumerate(positions):
                hits = self._eligible_hits(result.ids[row], result.similarities[row], fetch,
                                           depth, lambda kf, p=pos: eligible(p, kf), known)
                if hits is None:
                    own = SearchFilter(recent=(RecentWindow(
                        session, metas[pos].stamp_ns - window_ns + 1,
                        seqs[pos] - cfg.exclusion_keyframes),))
                    single = fetch
                    while hits is None:
                        single *= 2
                        res = self.map.search(descs[pos:pos + 1], single, own)
                        hits = self._eligible_hits(res.ids[0], res.similarities[0], single,
                                                   depth, lambda kf, p=pos: eligible(p, kf),
                                                   known)
                hits_of[pos] = hits
        return [_Query(descs[pos], meta, seqs[pos], features[pos], hits_of[pos])
                for pos, meta in enumerate(metas)]

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

    # -- decision -------------------------------------------------------------------------
    def _threshold(self, query: _Query, state: _State, remember: bool) -> float:
        cfg = self.config
        session = query.meta.session
        recent = state.recent.get(session)
        if recent is None:
            recent = state.recent[session] = deque(maxlen=cfg.adaptive_window)
        threshold = cfg.threshold
        if cfg.threshold_mode == 'adaptive' and recent:
            own = float(np.min(np.stack(recent) @ query.descriptor))
            threshold = max(threshold, own - cfg.adaptive_offset)
        if remember:
            recent.append(query.descriptor.copy())
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

    def _test_threshold(self, query: _Query, best: Candidate, state: _State) -> bool:
        return best.similarity >= query.threshold

    def _test_margin(self, query: _Query, best: Candidate, state: _State) -> bool:
        return best.margin >= self.config.min_margin

    def _test_consistency(self, query: _Query, best: Candidate, state: _State) -> bool:
        session, match = query.meta.session, best.meta
        streak = state.streaks.get(session)
        if streak is not None and streak.session == match.session and abs(
                streak.seq - match.seq) <= self.config.consistency_keyframes:
            streak = _Streak(match.session, match.seq, streak.count + 1)
        else:
            streak = _Streak(match.session, match.seq, 1)
        state.streaks[session] = streak
        return streak.count >= self.config.consistency

    def _test_verification(self, query: _Query, best: Candidate, state: _State) -> bool:
        verifier = self.verifier
        if verifier is None:
            return True
        start = time.monotonic()
        eligible = [c for c in query.candidates if c.similarity >= query.threshold]
        for tried, candidate in enumerate(eligible[:verifier.top_n]):
            if tried and time.monotonic() - start >= verifier.budget_s:
                break
            candidate.verification = verifier.verify(query.meta, candidate, query.features)
            if candidate.verification.verified:
                return True
        return False

    def _decide(self, query: _Query, state: _State, remember: bool = True) -> Detection:
        cfg = self.config
        query.threshold = self._threshold(query, state, remember)
        detection = Detection(query=query.meta, threshold=query.threshold)
        if not query.hits:
            state.streaks.pop(query.meta.session, None)
            return detection
        query.margins = self._margins(query.hits)
        detection.candidates = [
            Candidate(keyframe_id=kf.id, meta=kf, similarity=sim, rank=rank, margin=margin,
                      status=Status.APPEARANCE_ONLY)
            for rank, ((kf, sim), margin) in enumerate(zip(query.hits[:cfg.top_k],
                                                           query.margins))]
        best = detection.candidates[0]
        query.candidates = detection.candidates
        failed = next((name for name in TESTS
                       if not getattr(self, f'_test_{name}')(query, best, state)), '')
        if failed in ('threshold', 'margin'):
            state.streaks.pop(query.meta.session, None)  # a streak counts passing queries only
        detection.accepted = not failed
        for c in detection.candidates:
            c.reason = 'threshold' if c.similarity < query.threshold else failed
            if c.verification is not None:  # tried: its own verdict
                c.reason = '' if c.verification.verified else (
                    f'verification: {c.verification.reason}')
                c.status = Status.VERIFIED if c.verification.verified else Status.REJECTED
            elif c.reason == 'verification':
                c.reason = 'verification: not tried (top_n or time budget reached)'
            if c.reason:
                c.status = Status.REJECTED
        return detection
