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


# --- verification: accepted loops at any rank, their poses, the inliers curve ----------------
def yaw_quaternion(yaw):
    return [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]


def posed_run(x, yaw):
    """A run along x with headings `yaw` (radians), one keyframe per second."""
    n = len(x)
    quats = np.array([yaw_quaternion(a) for a in yaw])
    return KeyframePositions(('run',) * n, (np.arange(n) + 1) * 10**9, np.arange(n),
                             np.c_[x, np.zeros((n, 2))], quats)


def vrec(q, m, rank, pos, accepted=False, inliers=0, pose=None, kind=1):
    """Verified-run record of query row q -> map row m with a relative pose (x y yaw)."""
    relative = None
    if pose is not None:
        relative = (pose[0], pose[1], 0.0, *yaw_quaternion(pose[2]))
    return CandidateRecord(q, int(pos.stamps_ns[q]), 'run', 'cam', q, m, int(pos.stamps_ns[m]),
                           'run', m, 0.9 - 0.1 * rank, rank, accepted,
                           status=1 if accepted else 2, inliers=inliers,
                           pose_kind=kind if pose is not None else 0, relative_pose=relative)


def test_accepted_loops_at_any_rank_judged_by_radius_or_pose():
    # x = 0, 10, 20, 0, 12, 30 m, all heading +x; exclusion 1 keyframe; radius 3 m.
    pos = posed_run([0, 10, 20, 0, 12, 30], [0.0] * 6)
    gt = GroundTruth(pos, pos, exclusion_seconds=0.0, exclusion_keyframes=1)
    config = EvalConfig(radius_m=3.0, recall_ks=(1, 2))
    records = [
        # q3 at x=0: rank 0 (x=10) rejected, rank 1 (x=0) verified with a true pose
        vrec(3, 1, 0, pos, inliers=9), vrec(3, 0, 1, pos, True, 40, (0.05, 0.0, 0.01)),
        # q4 at x=12: the match at x=10 is 2 m away (within the radius), its pose is off
        vrec(4, 1, 0, pos, True, 30, (-1.0, 0.5, 0.3)),
        # q5 at x=30: the match at x=20 is 10 m away, but its metric pose is right: correct
        vrec(5, 2, 0, pos, True, 20, (-10.2, 0.1, 0.02)),
    ]
    result = evaluate(records, gt, config, pr_score='inliers')
    assert result.num_positive_queries == 2  # q3 (matches 0) and q4 (matches 1)
    assert result.recall_at == {1: 0.5, 2: 1.0}  # retrieval: q3's correct match at rank 1
    d = result.decisions
    assert (d.accepted, d.true_positives, d.correct_by_pose) == (3, 3, 1)
    assert d.precision == 1.0 and d.recall == 1.0  # q5 is no positive: not in the recall
    np.testing.assert_array_equal(result.accepted_map_rows, [0, 1, 2])
    # curve over inliers 40 (q3), 30 (q4), 20 (q5): all correct, q5 adds no recall
    np.testing.assert_allclose(result.curve.thresholds, [40, 30, 20])
    np.testing.assert_allclose(result.curve.precision, [1, 1, 1])
    np.testing.assert_allclose(result.curve.recall, [0.5, 1.0, 1.0])
    assert result.summary.threshold_at_full_precision == 20.0
    errors = result.to_dict()['pose_errors']
    assert errors['loops_by_pose_kind'] == {'none': 0, 'metric': 3, 'up_to_scale': 0,
                                            'odometry_scale': 0}
    assert errors['rotation_deg']['count'] == errors['translation_m']['count'] == 3
    rotations = sorted(math.degrees(a) for a in (0.01, 0.3, 0.02))
    assert errors['rotation_deg']['median'] == pytest.approx(rotations[1])
    assert errors['rotation_deg']['p90'] == pytest.approx(np.percentile(rotations, 90))
    translations = sorted([0.05, math.hypot(1.0, 0.5), math.hypot(0.2, 0.1)])
    assert errors['translation_m']['median'] == pytest.approx(translations[1])
    # The same records scored by similarity: the top-1 decisions, as for appearance-only.
    by_similarity = evaluate(records, gt, config)
    assert by_similarity.pr_score == 'similarity'
    np.testing.assert_allclose(by_similarity.curve.precision, [1 / 3])  # one tie at 0.9
    assert by_similarity.decisions == d  # the accepted loops do not depend on the curve


def test_pose_rule_needs_a_metric_pose_and_ground_truth_orientations():
    pos = posed_run([0, 10, 20, 30], [0.0, 0.0, 0.0, math.pi / 2])
    gt = GroundTruth(pos, pos, exclusion_seconds=0.0, exclusion_keyframes=0)
    # q3 (x=30, turned 90 deg left) -> m2 (x=20): truth is m2 10 m behind, i.e. at y = -10
    # in q3's base frame, turned -90 deg.
    truth = gt.relative_pose(3, 2)
    np.testing.assert_allclose(truth[:3, 3], [0, 10, 0], atol=1e-9)
    right = (0.0, 10.0, -math.pi / 2)
    for kind, correct in ((1, True), (3, True), (2, False)):  # up to scale: radius only
        result = evaluate([vrec(3, 2, 0, pos, True, 50, right, kind)], gt,
                          EvalConfig(radius_m=5.0))
        assert result.decisions.true_positives == int(correct), kind
        spread = result.pose_errors.to_dict()
        assert spread['rotation_deg']['count'] == 1
        assert spread['translation_m']['count'] == (0 if kind == 2 else 1)
    flat = KeyframePositions(pos.sessions, pos.stamps_ns, pos.seqs, pos.xyz)  # no orientations
    result = evaluate([vrec(3, 2, 0, flat, True, 50, right)], GroundTruth(flat, flat),
                      EvalConfig(radius_m=5.0))
    assert result.decisions.true_positives == 0
    assert result.to_dict()['pose_errors']['ground_truth_orientations'] is False
    with pytest.raises(ValueError, match='two accepted records'):
        evaluate([vrec(3, 2, 0, pos, True), vrec(3, 1, 1, pos, True)], gt)


def test_recalled_subset_of_a_curve():
    curve = precision_recall_curve(np.array([3.0, 2.0, 1.0]), np.array([1, 1, 0]), 1,
                                   recalled=np.array([0, 1, 0]))
    np.testing.assert_allclose(curve.precision, [1, 1, 2 / 3])
    np.testing.assert_allclose(curve.recall, [0, 1, 1])
    with pytest.raises(ValueError, match='correct ones'):
        precision_recall_curve(np.array([1.0]), np.array([0]), 1, recalled=np.array([1]))


def test_records_with_verification_fields_round_trip(tmp_path):
    import json

    pos = posed_run([0, 10, 20, 0], [0.0] * 4)
    verified = vrec(3, 0, 2, pos, True, 42, (0.1, -0.2, 0.05), kind=3)
    records = [vrec(3, 1, 0, pos, inliers=7), verified, no_match_record(1, 5, 'run', 'cam', 1)]
    path = tmp_path / 'records.jsonl'
    write_records(path, records)
    back = read_records(path)
    assert back == records and back[1].relative_pose == verified.relative_pose
    assert json.loads(path.read_text().splitlines()[1])['relative_pose'][3:5] == [0.0, 0.0]
    # a file written before the verification fields existed reads with their defaults
    old = {k: v for k, v in json.loads(path.read_text().splitlines()[0]).items()
           if k not in ('status', 'inliers', 'pose_kind', 'relative_pose')}
    path.write_text(json.dumps(old) + '\n')
    (record,) = read_records(path)
    assert (record.status, record.inliers, record.pose_kind, record.relative_pose) == (
        0, 0, 0, None)
    for field, value, message in (('status', 5, 'status must be'),
                                  ('pose_kind', -1, 'pose_kind must be'),
                                  ('inliers', -3, 'inliers must be'),
                                  ('relative_pose', [1, 2, 3], 'relative_pose must be 7'),
                                  ('relative_pose', [0, 0, 0, 0, 0, 0, 2], 'unit quaternion'),
                                  ('relative_pose', 'x', 'null or a list')):
        path.write_text(json.dumps({**old, field: value}) + '\n')
        with pytest.raises(RecordFormatError, match=message):
            read_records(path)


def test_record_values_are_the_message_and_detector_values():
    from boq_ros.detector import PoseKind, Status
    from boq_ros.eval import records

    assert records.STATUS_NAMES == tuple(s.name.lower() for s in Status)
    assert records.POSE_KIND_NAMES[1:] == tuple(k.name.lower() for k in PoseKind)[1:]
    assert records.STATUS_VERIFIED == Status.VERIFIED
    assert records.SCALED_POSE_KINDS == (PoseKind.METRIC, PoseKind.ODOMETRY_SCALE)


def test_cached_local_features_round_trip(tmp_path):
    from boq_ros.eval.cache import CachedDescriptors, DescriptorCache
    from boq_ros.keyframe_map import LocalFeatures

    rng = np.random.default_rng(0)

    def features(n, depth=True, calibrated=True):
        return LocalFeatures('sift', rng.uniform(0, 100, (n, 2)).astype(np.float32),
                             rng.integers(0, 255, (n, 128)).astype(np.uint8), (320, 240),
                             (200.0, 200.0, 160.0, 120.0) if calibrated else None,
                             rng.uniform(1, 5, n).astype(np.float32) if depth else None)

    kept = [features(5), None, features(0), features(3, depth=False, calibrated=False)]
    entry = CachedDescriptors(np.eye(4, dtype=np.float32), np.arange(4), list('abcd'),
                              np.arange(6), {'features': 0.5}, {}, kept,
                              {'feature_errors': 1, 'depth_errors': 0})
    cache = DescriptorCache(tmp_path)
    cache.store('k', entry, {})
    back = cache.load('k')
    assert back.feature_notes == entry.feature_notes and back.features[1] is None
    for a, b in zip(kept, back.features):
        if a is None:
            continue
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)
        assert (a.kind, a.image_size, a.intrinsics) == (b.kind, b.image_size, b.intrinsics)
        assert (a.depth is None) == (b.depth is None)
        if a.depth is not None:
            np.testing.assert_array_equal(a.depth, b.depth)
    assert back.features[2].descriptors.shape == (0, 128)
    entry.features = None  # without verification: no feature arrays at all
    cache.store('plain', entry, {})
    assert cache.load('plain').features is None
