"""Detector logic on hand-made descriptors (similarities chosen exactly, no model involved)."""
import dataclasses

import numpy as np
import pytest

from boq_ros.detector import (
    Detection,
    DetectorConfig,
    DetectorConfigError,
    DetectorInputError,
    LoopDetector,
    Status,
)
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta

DIM = 64
Q = np.eye(DIM, dtype=np.float32)[0]  # the query direction


def toward(similarity: float, axis: int) -> np.ndarray:
    """Unit vector with the given cosine similarity to Q, otherwise along its own axis."""
    v = np.zeros(DIM, dtype=np.float32)
    v[0] = similarity
    v[axis] = np.sqrt(1 - similarity ** 2)
    return v


def meta(stamp_s: float, session: str = 'run') -> KeyframeMeta:
    return KeyframeMeta(stamp_ns=int(stamp_s * 1e9), session=session, camera='cam')


def new_map() -> KeyframeMap:
    return KeyframeMap(DIM, model_id='test', preprocess={})


def prebuilt(sims: list[float], session: str = 'map') -> KeyframeMap:
    """A map whose keyframe seq i has similarity sims[i] to Q."""
    kmap = new_map()
    kmap.add(np.stack([toward(s, i + 1) for i, s in enumerate(sims)]),
             [meta(i, session) for i in range(len(sims))])
    return kmap


def config(**kw) -> DetectorConfig:
    base = dict(top_k=3, exclusion_seconds=0.0, exclusion_keyframes=0, threshold=0.5,
                consistency_keyframes=2, mode='static')
    base.update(kw)
    return DetectorConfig(**base)


def test_config_errors_name_the_field():
    for kw, name in [({'top_k': 0}, 'top_k'), ({'threshold': 1.5}, 'threshold'),
                     ({'exclusion_seconds': -1.0}, 'exclusion_seconds'),
                     ({'mode': 'grown'}, 'mode'), ({'threshold_mode': 'auto'}, 'threshold_mode'),
                     ({'consistency': 0}, 'consistency'), ({'top_k': 2.5}, 'top_k'),
                     ({'min_margin': float('nan')}, 'min_margin')]:
        with pytest.raises(DetectorConfigError, match=name):
            DetectorConfig(**kw).validate()
    DetectorConfig().validate()


def test_ranking_threshold_and_statuses():
    det = LoopDetector(prebuilt([0.3, 0.9, 0.7, 0.45]), config(threshold=0.5))
    d = det.process(Q, meta(100, 'query'))
    assert [c.meta.seq for c in d.candidates] == [1, 2, 3]
    assert [c.rank for c in d.candidates] == [0, 1, 2]
    assert [round(c.similarity, 5) for c in d.candidates] == [0.9, 0.7, 0.45]
    assert d.accepted and d.threshold == 0.5 and not d.added
    assert [c.status for c in d.candidates] == [Status.APPEARANCE_ONLY, Status.APPEARANCE_ONLY,
                                                Status.REJECTED]
    assert d.candidates[2].reason == 'threshold'
    assert d.query.id == -1  # static: the query was not added
    assert len(det.map) == 4
    d = LoopDetector(prebuilt([0.3, 0.4]), config()).process(Q, meta(100, 'query'))
    assert not d.accepted
    assert all(c.status == Status.REJECTED and c.reason == 'threshold' for c in d.candidates)


def test_margin_ignores_the_best_keyframes_neighbours():
    # seq 0 and 1 are one region (consistency_keyframes=2); seq 5 is the rival.
    kmap = prebuilt([0.9, 0.89, 0.1, 0.1, 0.1, 0.8])
    d = LoopDetector(kmap, config(min_margin=0.05)).process(Q, meta(100, 'query'))
    assert d.accepted
    assert d.candidates[0].margin == pytest.approx(0.1, abs=1e-5)
    assert d.candidates[1].margin == pytest.approx(0.09, abs=1e-5)
    assert d.candidates[2].margin == pytest.approx(0.8 - 0.1, abs=1e-5)  # no rival: last hit
    d = LoopDetector(kmap, config(min_margin=0.15)).process(Q, meta(100, 'query'))
    assert not d.accepted
    assert [c.reason for c in d.candidates] == ['margin'] * 3


def test_margin_without_any_rival_is_the_similarity():
    d = LoopDetector(prebuilt([0.9, 0.88]), config(min_margin=0.5)).process(Q, meta(9, 'q'))
    assert d.candidates[0].margin == pytest.approx(0.9, abs=1e-5)
    assert d.accepted


def test_adaptive_threshold_from_the_sessions_own_recent_keyframes():
    kmap = prebuilt([0.7])
    det = LoopDetector(kmap, config(threshold_mode='adaptive', threshold=0.5, adaptive_window=2,
                                    adaptive_offset=0.05))
    first = det.process(Q, meta(10, 'q'))
    assert first.threshold == 0.5  # nothing seen yet: the fixed threshold
    det.process(toward(0.8, 40), meta(11, 'q'))
    third = det.process(Q, meta(12, 'q'))
    # own last two keyframes: Q (sim 1.0) and toward(0.8): min 0.8 - 0.05
    assert third.threshold == pytest.approx(0.75, abs=1e-6)
    assert not third.accepted and third.candidates[0].reason == 'threshold'
    other = det.process(Q, meta(13, 'other'))  # per session
    assert other.threshold == 0.5 and other.accepted


def test_consistency_needs_consecutive_queries_on_one_region():
    kmap = prebuilt([0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.85])
    det = LoopDetector(kmap, config(consistency=2))
    near_0 = Q
    near_9 = toward(0.85, 10)  # the descriptor of seq 9
    outcomes = [det.process(d, meta(50 + i, 'q')) for i, d in
                enumerate([near_0, near_0, near_9, near_0, near_0, near_0])]
    assert [d.accepted for d in outcomes] == [False, True, False, False, True, True]
    assert outcomes[0].candidates[0].reason == 'consistency'


def test_exclusion_window_by_keyframes_and_seconds_in_grow_mode():
    det = LoopDetector(new_map(), config(mode='grow', top_k=20, exclusion_keyframes=3,
                                                exclusion_seconds=4.5))
    results = [det.process(Q, meta(t)) for t in range(10)]
    assert [r.query.seq for r in results] == list(range(10))
    assert all(r.added and r.query.id >= 0 for r in results)
    # query n may see seq < n - 3 with stamp <= n - 4.5 s: seq <= n - 5
    for n, r in enumerate(results):
        assert sorted(c.meta.seq for c in r.candidates) == list(range(max(n - 4, 0)))
    # another session sees everything, at once
    other = det.process(Q, meta(10, 'other'))
    assert len(other.candidates) == 10


def test_both_mode_grows_only_a_new_session():
    kmap = prebuilt([0.9, 0.2])
    det = LoopDetector(kmap, config(mode='both'))
    d = det.process(Q, meta(1, 'live'))
    assert d.added and d.query.session == 'live' and d.query.seq == 0
    assert len(kmap) == 3
    with pytest.raises(DetectorInputError, match="'map'"):
        det.process(Q, meta(2, 'map'))


def test_bad_input_is_refused():
    det = LoopDetector(prebuilt([0.9]), config())
    with pytest.raises(DetectorInputError, match='shape'):
        det.process(np.ones(DIM + 1, np.float32), meta(1, 'q'))
    with pytest.raises(DetectorInputError, match='NaN'):
        det.process(np.full(DIM, np.nan, np.float32), meta(1, 'q'))
    with pytest.raises(DetectorInputError, match='metadata'):
        det.process_batch(np.ones((2, DIM), np.float32), [meta(1, 'q')])


def signature(d: Detection):
    return (d.query.id, d.query.seq, d.accepted, round(d.threshold, 5),
            [(c.keyframe_id, round(c.similarity, 5), c.rank, round(c.margin, 5), c.status,
              c.reason) for c in d.candidates])


@pytest.mark.parametrize('mode', ['grow', 'static', 'both'])
def test_batch_equals_sequential(mode):
    rng = np.random.default_rng(3)
    # A run that loops over 12 places with noise, two sessions interleaved: 150 queries,
    # more than two batch chunks, dense stamps so that the seconds window matters.
    places = rng.normal(size=(12, DIM)).astype(np.float32)
    n = 150
    descs = places[np.arange(n) % 12] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32)
    descs /= np.linalg.norm(descs, axis=1, keepdims=True)
    metas = [meta(0.1 * i + (0.05 if i % 3 == 0 else 0), 'a' if i % 3 else 'b')
             for i in range(n)]
    cfg = config(mode=mode, top_k=4, exclusion_keyframes=5, exclusion_seconds=2.0,
                 threshold=0.4, min_margin=0.02, consistency=2, consistency_keyframes=3,
                 threshold_mode='adaptive', adaptive_offset=0.3)

    def fresh():
        kmap = new_map()
        if mode != 'grow':
            base = places + 0.3 * rng_map.normal(size=places.shape).astype(np.float32)
            kmap.add(base / np.linalg.norm(base, axis=1, keepdims=True),
                     [meta(i, 'map') for i in range(12)])
        return LoopDetector(kmap, cfg)

    rng_map = np.random.default_rng(7)
    sequential = fresh()
    expected = [signature(sequential.process(d, m)) for d, m in zip(descs, metas)]
    rng_map = np.random.default_rng(7)
    batched = fresh()
    got = [signature(d) for d in batched.process_batch(descs, metas)]
    assert got == expected
    assert any(e[2] for e in expected) and not all(e[2] for e in expected)
    assert len(batched.map) == len(sequential.map)


def test_config_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DetectorConfig().top_k = 3


def test_new_settings_are_validated_and_keep_the_state():
    det = LoopDetector(prebuilt([0.7]), config(threshold_mode='adaptive', adaptive_window=3))
    for t in range(3):
        det.process(toward(0.9 - 0.1 * t, 40 + t), meta(t, 'q'))
    with pytest.raises(DetectorConfigError, match='top_k'):
        det.config = config(top_k=0)
    det.config = config(threshold_mode='adaptive', adaptive_window=1, threshold=0.1)
    # only the last own keyframe (sim 0.7 to Q) sets the threshold now
    assert det.process(Q, meta(9, 'q')).threshold == pytest.approx(0.7, abs=1e-6)


@pytest.mark.parametrize('batched', [False, True])
def test_exclusion_boundaries_are_inclusive_in_seconds_and_exclusive_in_keyframes(batched):
    # A keyframe exactly exclusion_seconds old is eligible; the one exactly
    # exclusion_keyframes back is not (seq < n - exclusion_keyframes).
    cases = [(dict(exclusion_seconds=2.0, exclusion_keyframes=0), 2),
             (dict(exclusion_seconds=0.0, exclusion_keyframes=2), 3),
             (dict(exclusion_seconds=0.0, exclusion_keyframes=0), 1)]
    for window, gap in cases:
        det = LoopDetector(new_map(), config(mode='grow', top_k=20, **window))
        metas = [meta(t) for t in range(8)]
        results = (det.process_batch(np.stack([Q] * 8), metas) if batched
                   else [det.process(Q, m) for m in metas])
        for n, r in enumerate(results):
            assert sorted(c.meta.seq for c in r.candidates) == list(range(max(n - gap + 1, 0)))


# -- the ordered tests, decision before insertion, retries, side-effect-free queries ----------
class _Verifier:
    """Verifies the keyframe ids in `good`; records every call."""

    def __init__(self, good: set[int], top_n: int = 10, budget_s: float = 10.0) -> None:
        self.good, self.top_n, self.budget_s = good, top_n, budget_s
        self.calls: list[tuple[int, int, object]] = []

    def verify(self, query, candidate, features):
        from boq_ros.detector import Verification

        self.calls.append((query.stamp_ns, candidate.keyframe_id, features))
        if candidate.keyframe_id in self.good:
            return Verification(True, matches=40, inliers=30)
        return Verification(False, '12 inliers < 20', matches=30, inliers=12)


def test_tests_run_in_order_and_the_verification_slot_decides_last():
    from boq_ros.detector import TESTS

    assert TESTS == ('threshold', 'margin', 'consistency', 'verification')
    kmap = prebuilt([0.9, 0.4])
    yes = _Verifier({0})
    ok = LoopDetector(kmap, config(), yes).process(Q, meta(100, 'q'), features='img')
    assert ok.accepted and ok.candidates[0].status == Status.VERIFIED
    assert ok.match is ok.candidates[0] and ok.match.verification.inliers == 30
    assert yes.calls == [(100 * 10**9, 0, 'img')]
    nobody = _Verifier(set())
    no = LoopDetector(kmap, config(threshold=0.5), nobody).process(Q, meta(101, 'q'))
    assert not no.accepted and no.match is None
    assert no.candidates[0].status == Status.REJECTED
    assert no.candidates[0].reason == 'verification: 12 inliers < 20'
    assert no.candidates[1].reason == 'threshold' and len(nobody.calls) == 1
    low = LoopDetector(kmap, config(threshold=0.95), nobody).process(Q, meta(102, 'q'))
    assert low.candidates[0].reason == 'threshold' and len(nobody.calls) == 1  # cheap first
    plain = LoopDetector(kmap, config()).process(Q, meta(103, 'q'))
    assert plain.accepted and plain.candidates[0].status == Status.APPEARANCE_ONLY
    assert plain.match is plain.candidates[0]


def test_verification_tries_the_top_n_best_first_and_stops_at_the_first_verified():
    kmap = prebuilt([0.9, 0.85, 0.8, 0.75, 0.7])
    verifier = _Verifier({2, 3}, top_n=4)
    found = LoopDetector(kmap, config(threshold=0.5, top_k=5), verifier).process(
        Q, meta(100, 'q'))
    assert [c for _, c, _ in verifier.calls] == [0, 1, 2]
    assert found.accepted and found.match.keyframe_id == 2 and found.match.rank == 2
    assert [c.status for c in found.candidates] == [
        Status.REJECTED, Status.REJECTED, Status.VERIFIED, Status.APPEARANCE_ONLY,
        Status.APPEARANCE_ONLY]
    few = _Verifier({3}, top_n=2)
    missed = LoopDetector(kmap, config(threshold=0.5, top_k=5), few).process(Q, meta(101, 'q'))
    assert [c for _, c, _ in few.calls] == [0, 1] and not missed.accepted
    assert missed.candidates[2].reason.startswith('verification: not tried')
    hurry = _Verifier({3}, top_n=5, budget_s=0.0)  # the first is always tried, then no more
    LoopDetector(kmap, config(threshold=0.5, top_k=5), hurry).process(Q, meta(102, 'q'))
    assert [c for _, c, _ in hurry.calls] == [0]


def test_the_query_joins_the_map_after_the_decision():
    kmap = new_map()
    seen = []
    search = kmap.search

    def spy(queries, k, flt=None):
        seen.append(len(kmap))
        return search(queries, k, flt)

    kmap.search = spy
    detector = LoopDetector(kmap, config(mode='grow'))
    first = detector.process(Q, meta(0))
    assert seen == [0] and len(kmap) == 1 and first.added and first.query.id == 0
    assert first.candidates == []  # it never met itself


def test_a_failed_batch_changes_nothing_and_a_retry_adds_each_keyframe_once(monkeypatch):
    kmap = new_map()
    detector = LoopDetector(kmap, config(mode='grow', consistency=2, exclusion_keyframes=1))
    detector.process(toward(0.99, 5), meta(0))
    state = detector._state.copy()
    add, calls = kmap.add, []

    def add_once(*args):  # the first run joins the map, the second fails
        calls.append(len(args[1]))
        if len(calls) > 1:
            raise MemoryError('full')
        return add(*args)

    monkeypatch.setattr(kmap, 'add', add_once)
    descs = np.stack([toward(0.9, 6), toward(0.9, 7), toward(0.9, 8)])
    metas = [meta(1), meta(2), meta(3, 'other')]  # two runs: the session changes
    with pytest.raises(MemoryError):
        detector.process_batch(descs, metas)
    assert calls == [2, 1]
    assert len(kmap) == 1 and kmap.session_size('run') == 1 and kmap.schema.next_id == 1
    assert detector._state.streaks == state.streaks
    monkeypatch.setattr(kmap, 'add', add)
    again = [detector.process(d, m) for d, m in zip(descs, metas)]
    assert [d.query.id for d in again] == [1, 2, 3] and len(kmap) == 4
    assert [kmap.meta(i).seq for i in range(4)] == [0, 1, 2, 0]


def test_relocalisation_queries_have_no_side_effects():
    kmap = prebuilt([0.9, 0.3])
    detector = LoopDetector(kmap, config(consistency=3, mode='grow'))
    state = dataclasses.replace(detector._state)
    before = (len(kmap), kmap.schema.next_id)
    for _ in range(3):
        answer = detector.query(Q, meta(50, 'q'), top_k=1)
        assert answer.accepted and len(answer.candidates) == 1  # no consistency streak needed
        assert not answer.added and answer.query.id == -1
    assert (len(kmap), kmap.schema.next_id) == before
    assert detector._state.streaks == state.streaks == {}
    assert detector._state.recent == {}
