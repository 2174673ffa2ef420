"""Metrics against hand-computed values and an independent brute-force implementation."""
import math

import numpy as np
import pytest

from boq_ros.eval.groundtruth import GroundTruth, GroundTruthError, KeyframePositions
from boq_ros.eval.metrics import (
    EvalConfig,
    EvalConfigError,
    evaluate,
    precision_recall_curve,
    summarize_curve,
)
from boq_ros.eval.records import (
    CandidateRecord,
    RecordFormatError,
    no_match_record,
    read_records,
    write_records,
)


def curve_and_summary(sims, correct, num_pos):
    curve = precision_recall_curve(np.array(sims), np.array(correct), num_pos)
    return curve, summarize_curve(curve)


def test_hand_computed_curve_with_a_tie():
    curve, s = curve_and_summary([0.9, 0.8, 0.8, 0.7, 0.6], [1, 1, 0, 1, 0], 4)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(curve.precision, [1, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(curve.recall, [0.25, 0.5, 0.75, 0.75])
    assert s.auc_pr == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 3 / 4)
    assert s.max_recall_at_full_precision == pytest.approx(0.25)
    assert s.threshold_at_full_precision == pytest.approx(0.9)
    assert s.f1_max == pytest.approx(0.75)
    assert s.threshold_at_f1_max == pytest.approx(0.7)
    assert s.extended_precision == pytest.approx((1 + 0.25) / 2)


def test_tied_records_give_the_same_curve_in_any_order():
    a = precision_recall_curve(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1]), 2)
    b = precision_recall_curve(np.array([0.5, 0.9, 0.9]), np.array([1, 0, 1]), 2)
    for x, y in ((a.thresholds, b.thresholds), (a.tp, b.tp), (a.fp, b.fp)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(a.precision, [0.5, 2 / 3])
    s = summarize_curve(a)
    # The tie at the top mixes a true and a false positive: no threshold gives 100 % precision.
    assert s.max_recall_at_full_precision == 0.0
    assert s.threshold_at_full_precision is None
    assert s.extended_precision == pytest.approx(0.25)


def test_wrong_best_candidate_means_zero_recall_at_full_precision():
    _, s = curve_and_summary([0.9, 0.5], [0, 1], 1)
    assert s.max_recall_at_full_precision == 0.0
    assert s.threshold_at_full_precision is None
    assert s.auc_pr == pytest.approx(0.5)
    assert s.extended_precision == 0.0


def test_no_positives_gives_undefined_recall_metrics():
    curve, s = curve_and_summary([0.7, 0.2], [0, 0], 0)
    assert curve.recall is None
    np.testing.assert_allclose(curve.precision, [0.0, 0.0])
    assert s.auc_pr is None and s.f1_max is None and s.extended_precision is None


def test_all_positive_and_correct_is_perfect():
    _, s = curve_and_summary([0.9, 0.8, 0.3], [1, 1, 1], 3)
    assert (s.auc_pr, s.max_recall_at_full_precision, s.f1_max, s.extended_precision) == (
        1.0, 1.0, 1.0, 1.0)
    assert s.threshold_at_full_precision == pytest.approx(0.3)


def test_empty_curve():
    curve, s = curve_and_summary([], [], 3)
    assert curve.thresholds.size == 0
    assert s.auc_pr is None


def test_more_correct_than_positives_is_refused():
    with pytest.raises(ValueError, match='positive'):
        precision_recall_curve(np.array([0.5, 0.4]), np.array([1, 1]), 1)


# --- evaluate() on a hand-made loop-closure case -------------------------------------------
def line_run(n, session='run', step_m=1.0, dt_s=1.0, x=None):
    xs = np.arange(n) * step_m if x is None else np.asarray(x, dtype=float)
    stamps = (np.arange(n) * dt_s * 1e9).astype(np.int64) + 10**9
    return KeyframePositions((session,) * n, stamps, np.arange(n), np.c_[xs, np.zeros((n, 2))])


def rec(q, m, rank, sim, pos, accepted=False):
    """Record of query row q -> map row m (same session)."""
    return CandidateRecord(q, int(pos.stamps_ns[q]), pos.sessions[q], 'cam', q,
                           m, int(pos.stamps_ns[m]), pos.sessions[m], m, sim, rank, accepted)


def test_evaluate_loop_closure_by_hand():
    # A 6-keyframe run going out and back: x = 0, 10, 20, 20, 10, 0 m; exclusion = 1 keyframe.
    pos = line_run(6, x=[0, 10, 20, 20, 10, 0])
    gt = GroundTruth(pos, pos, exclusion_seconds=0.0, exclusion_keyframes=1)
    # Eligible: seq < q - 1. With radius 5 m positives are q4 (matches 1) and q5 (matches 0);
    # q3 is at x=20 like q2, but q2 is inside q3's exclusion window.
    records = [
        no_match_record(0, int(pos.stamps_ns[0]), 'run', 'cam', 0),
        rec(3, 0, 0, 0.95, pos), rec(3, 1, 1, 0.5, pos),          # q3: no positive -> FP
        rec(4, 0, 0, 0.9, pos, accepted=True), rec(4, 1, 1, 0.8, pos),  # q4: correct at rank 1
        rec(5, 0, 0, 0.7, pos, accepted=True), rec(5, 1, 1, 0.6, pos),  # q5: correct at rank 0
    ]
    result = evaluate(records, gt, EvalConfig(radius_m=5.0, recall_ks=(1, 2, 5)))
    assert result.num_queries == 6
    assert result.num_positive_queries == 2
    assert result.num_queries_with_candidates == 3
    assert result.candidate_depth == 2
    assert result.recall_at == {1: 0.5, 2: 1.0, 5: None}
    # top-1 ordered by similarity: q3 (FP), q4 (FP), q5 (TP)
    np.testing.assert_allclose(result.curve.precision, [0, 0, 1 / 3])
    np.testing.assert_allclose(result.curve.recall, [0, 0, 0.5])
    assert result.summary.max_recall_at_full_precision == 0.0
    assert result.decisions.accepted == 2
    assert result.decisions.true_positives == 1
    assert result.decisions.precision == 0.5 and result.decisions.recall == 0.5
    report = result.to_dict()
    assert report['recall_at'] == {'1': 0.5, '2': 1.0, '5': None}
    assert report['pr_curve']['threshold'] == [0.95, 0.9, 0.7]


def test_match_inside_the_exclusion_window_is_never_correct():
    pos = line_run(4, x=[0, 0, 0, 0])
    gt = GroundTruth(pos, pos, exclusion_seconds=1.5, exclusion_keyframes=0)
    # q3 may match 0 and 1 (3 - 1.5 s); 2 is only 1 s old.
    result = evaluate([rec(3, 2, 0, 0.99, pos)], gt, EvalConfig(radius_m=1.0))
    assert result.num_positive_queries == 2  # q2 (matches 0) and q3
    assert not result.top1_correct[0]


def test_evaluate_refuses_unknown_keyframes_and_bad_config():
    pos = line_run(3)
    gt = GroundTruth(pos, pos)
    bad = CandidateRecord(9, 123, 'run', 'cam', 9, 0, int(pos.stamps_ns[0]), 'run', 0, 0.5, 0,
                          False)
    with pytest.raises(GroundTruthError, match='stamp 123'):
        evaluate([bad], gt)
    with pytest.raises(EvalConfigError, match=r'radius_m must be in \(0, 1e\+06\]'):
        evaluate([], gt, EvalConfig(radius_m=0.0))
    with pytest.raises(EvalConfigError, match='recall_ks'):
        EvalConfig(recall_ks=(0,))
    with pytest.raises(GroundTruthError, match='exclusion_keyframes'):
        GroundTruth(pos, pos, exclusion_keyframes=-1)
    with pytest.raises(GroundTruthError, match='duplicate'):
        KeyframePositions(('a', 'a'), [1, 1], [0, 1], np.zeros((2, 3)))


# --- independent brute force on random cases ---------------------------------------------
def brute_force(records, gt, radius, ks):
    q, m = gt.queries, gt.map
    window = int(round(gt.exclusion_seconds * 1e9))

    def eligible(i, j):
        if q.sessions[i] != m.sessions[j]:
            return True
        return m.seqs[j] < q.seqs[i] - gt.exclusion_keyframes and \
            m.stamps_ns[j] <= q.stamps_ns[i] - window

    def near(i, j):
        return math.dist(q.xyz[i], m.xyz[j]) <= radius

    qrow = {(q.sessions[i], int(q.stamps_ns[i])): i for i in range(len(q))}
    mrow = {(m.sessions[j], int(m.stamps_ns[j])): j for j in range(len(m))}
    positive = [any(eligible(i, j) and near(i, j) for j in range(len(m))) for i in range(len(q))]
    lists = {}
    for r in records:
        if r.rank >= 0:
            lists.setdefault(qrow[(r.query_session, r.query_stamp_ns)], []).append(r)
    n_pos = sum(positive)
    recall = {}
    for k in ks:
        hits = 0
        for i, lst in lists.items():
            if any(r.rank < k and eligible(i, mrow[(r.match_session, r.match_stamp_ns)])
                   and near(i, mrow[(r.match_session, r.match_stamp_ns)]) for r in lst):
                hits += 1
        recall[k] = hits / n_pos
    top = []
    for i, lst in lists.items():
        r = min(lst, key=lambda r: r.rank)
        j = mrow[(r.match_session, r.match_stamp_ns)]
        top.append((r.similarity, eligible(i, j) and near(i, j)))
    points = []
    for t in sorted({s for s, _ in top}, reverse=True):
        tp = sum(1 for s, c in top if s >= t and c)
        fp = sum(1 for s, c in top if s >= t and not c)
        points.append((t, tp / (tp + fp), tp / n_pos))
    auc, prev = 0.0, 0.0
    for _, p, r in points:
        auc += (r - prev) * p
        prev = r
    full = [(t, r) for t, p, r in points if p == 1.0]
    r100 = max((r for _, r in full), default=0.0)
    f1 = max((2 * p * r / (p + r) if p + r else 0.0) for _, p, r in points)
    return recall, points, auc, r100, f1, (points[0][1] + r100) / 2


@pytest.mark.parametrize('seed', range(6))
def test_evaluate_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_map, n_query = 40, 25
    # Two sessions share one 30 x 30 m area; the queries are a third run plus the map itself.
    m_sessions = tuple(rng.choice(['a', 'b'], n_map))
    m = KeyframePositions.from_sequence(m_sessions, rng.permutation(n_map) * 10**9,
                                        rng.uniform(0, 30, (n_map, 2)))
    q_sessions = m_sessions[:n_query] if seed % 2 else ('c',) * n_query
    q_stamps = m.stamps_ns[:n_query] if seed % 2 else rng.permutation(n_query) * 10**9
    q_xyz = m.xyz[:n_query] if seed % 2 else rng.uniform(0, 30, (n_query, 3))
    q = KeyframePositions.from_sequence(q_sessions, q_stamps, q_xyz)
    gt = GroundTruth(m, q, exclusion_seconds=float(rng.integers(0, 5)),
                     exclusion_keyframes=int(rng.integers(0, 4)))
    records = []
    for i in range(n_query):
        if rng.random() < 0.15:
            continue  # queries without records still count as positives
        choices = rng.choice(n_map, size=6, replace=False)
        # coarse similarities force ties
        sims = np.sort(np.round(rng.uniform(0, 1, 6), 1))[::-1]
        for rank, (j, s) in enumerate(zip(choices, sims)):
            records.append(CandidateRecord(
                i, int(q.stamps_ns[i]), q.sessions[i], 'cam', int(q.seqs[i]),
                int(j), int(m.stamps_ns[j]), m.sessions[j], int(m.seqs[j]), float(s), rank,
                False))
    rng.shuffle(records)
    ks = (1, 3, 6)
    result = evaluate(records, gt, EvalConfig(radius_m=8.0, recall_ks=ks))
    recall, points, auc, r100, f1, ep = brute_force(records, gt, 8.0, ks)
    assert result.recall_at == pytest.approx(recall)
    np.testing.assert_allclose(result.curve.thresholds, [t for t, _, _ in points])
    np.testing.assert_allclose(result.curve.precision, [p for _, p, _ in points])
    np.testing.assert_allclose(result.curve.recall, [r for _, _, r in points])
    assert result.summary.auc_pr == pytest.approx(auc)
    assert result.summary.max_recall_at_full_precision == pytest.approx(r100)
    assert result.summary.f1_max == pytest.approx(f1)
    assert result.summary.extended_precision == pytest.approx(ep)


# --- records file ------------------------------------------------------------------------
def test_records_round_trip_and_errors(tmp_path):
    pos = line_run(3)
    records = [rec(2, 0, 0, 0.5, pos, accepted=True), no_match_record(1, 5, 'run', 'cam', 1)]
    path = tmp_path / 'records.jsonl'
    assert write_records(path, records) == 2
    assert read_records(path) == records
    path.write_text(path.read_text() + '{"query_id": 1}\n')
    with pytest.raises(RecordFormatError, match=r'records.jsonl:3: .*lacks field'):
        read_records(path)
    path.write_text('{"nope"\n')
    with pytest.raises(RecordFormatError, match=':1:'):
        read_records(path)
    # a recorder killed mid-write leaves a cut-off last line: the records before it count
    write_records(path, records)
    path.write_text(path.read_text() + '{"query_id": 3, "query_st')
    assert read_records(path) == records
    path.write_text(path.read_text() + 'amp_ns": 1}\n')  # a complete bad line is refused
    with pytest.raises(RecordFormatError, match=':3:'):
        read_records(path)


# --- ground truth for recorded candidates, and the descriptor cache ------------------------
def test_ground_truth_for_records_drops_keyframes_without_poses():
    from boq_ros.eval.groundtruth import ground_truth_for_records
    from boq_ros.trajectory import Trajectory

    pos = line_run(6, x=[0, 10, 20, 20, 10, 0])
    # the trajectory starts one second late: keyframe 0 (stamp 1 s) has no ground truth
    traj = Trajectory(np.arange(2, 8) * 10**9, np.c_[[10, 20, 20, 10, 0, 0], np.zeros((6, 2))])
    records = [rec(4, 1, 0, 0.9, pos), rec(5, 0, 0, 0.7, pos), rec(5, 1, 1, 0.6, pos),
               no_match_record(2, int(pos.stamps_ns[2]), 'run', 'cam', 2)]
    gt, kept, dropped = ground_truth_for_records(records, {'run': traj}, 0.0, 1)
    assert dropped == 1 and kept == [records[0], records[2], records[3]]
    assert len(gt.queries) == 4  # keyframes 1, 2, 4, 5
    np.testing.assert_array_equal(gt.queries.seqs, [1, 2, 4, 5])  # as recorded
    np.testing.assert_allclose(gt.queries.xyz[:, 0], [10, 20, 10, 0])
    with pytest.raises(GroundTruthError, match="no trajectory for session 'run'"):
        ground_truth_for_records(records, {'other': traj}, 0.0, 1)


def test_descriptor_cache_round_trip_and_corrupt_entries(tmp_path):
    from boq_ros.eval.cache import CachedDescriptors, DescriptorCache, bag_identity, cache_key

    bag = tmp_path / 'bag'
    bag.mkdir()
    (bag / 'metadata.yaml').write_text('x')
    parts = {'bag': bag_identity(bag), 'topic': '/cam'}
    key = cache_key(parts)
    assert key != cache_key({**parts, 'topic': '/other'})
    cache = DescriptorCache(tmp_path / 'cache')
    assert cache.load(key) is None
    skipped = {'decode': 2, 'depth': 0, 'no_pose': 0, 'descriptor': 0}
    entry = CachedDescriptors(np.eye(3, dtype=np.float32), np.array([1, 2, 3]),
                              ['a', 'b', 'c'], np.arange(5), {'describe': 1.5}, skipped)
    cache.store(key, entry, parts)
    back = cache.load(key)
    np.testing.assert_array_equal(back.descriptors, entry.descriptors)
    assert (back.frame_ids, back.frames, back.timings_s, back.skipped) == (
        ['a', 'b', 'c'], 5, {'describe': 1.5}, skipped)  # skips are kept with descriptors
    (tmp_path / 'cache' / f'{key}.json').write_text('["not", "an", "object"]')
    assert cache.load(key) is None
    cache.store(key, entry, parts)
    (tmp_path / 'cache' / f'{key}.npz').write_bytes(b'not a zip')
    assert cache.load(key) is None
    (bag / 'metadata.yaml').write_text('changed!')
    assert cache_key({'bag': bag_identity(bag), 'topic': '/cam'}) != key


def test_radius_is_a_setting():
    from boq_ros.settings import settings_of

    (radius,) = settings_of(EvalConfig)
    assert (radius.name, radius.section, radius.range_text()) == (
        'radius_m', 'Evaluation', '(0, 1e+06]')
    assert radius.default == EvalConfig().radius_m == 25.0
