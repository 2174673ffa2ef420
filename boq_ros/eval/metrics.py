"""The numbers the field reports for loop closure and place recognition, from candidate records.

The same `evaluate` scores the offline pipeline and what the live node published, so that the two
can be compared number for number. Definitions (see docs/eval.md):

- A candidate is *correct* when its map keyframe is eligible for the query (outside the exclusion
  window, see `GroundTruth`) and lies within ``radius_m`` of the query's true position. A query is
  *positive* when some eligible map keyframe lies within the radius.
- Recall@K: fraction of positive queries with a correct candidate among their first K.
- Precision-recall: each query's top-1 candidate is accepted at threshold t when its similarity is
  >= t. Thresholds are the distinct top-1 similarities, high to low, so tied queries are accepted
  together (one curve point per distinct value; the order of tied records never matters).
  Precision = TP / accepted, recall = TP / positive queries.
- AUC-PR: sum over curve points of (R_i - R_{i-1}) * P_i from R_0 = 0 (average precision).
- Maximum recall at 100 % precision, and the lowest threshold that reaches it (None when the most
  similar top-1 is already wrong).
- F1-max over the curve; Extended Precision EP = (P at the first curve point + R at 100 % P) / 2.
- Accepted loops (the accepted record of each query, at any rank): correct when eligible and
  within ``radius_m``, or when its metric relative pose (pose kinds METRIC, ODOMETRY_SCALE) is
  within ``pose_translation_m`` and ``pose_rotation_deg`` of the ground-truth relative pose.
  Precision = correct / accepted; recall = positive queries with a correct accepted loop /
  positive queries.
- ``pr_score='inliers'`` (a verified run): the curve's points are the accepted loops, scored by
  their inlier count and judged as accepted loops; queries without an accepted loop are no
  point. Recall@K stays that of retrieval (the records' candidate lists).
- Relative pose errors of the accepted loops with a pose, against the ground truth: rotation
  (every posed kind) and translation (METRIC and ODOMETRY_SCALE), median and 90th percentile.
Quantities that divide by zero (no positives, no candidates) are None (JSON null).
"""
from collections.abc import Sequence
from dataclasses import dataclass, field
import math
from typing import Any, Literal

import numpy as np

from boq_ros.eval.groundtruth import GroundTruth
from boq_ros.eval.records import POSE_KIND_NAMES, SCALED_POSE_KINDS, CandidateRecord
from boq_ros.settings import SettingError, check_settings, setting
from boq_ros.trajectory import matrix_from_quaternion


class EvalConfigError(SettingError):
    """Raised for an invalid evaluation setting; the message names it."""


@dataclass(frozen=True)
class EvalConfig:
    """What counts as a revisit, and which Recall@K to report (checked when made)."""

    radius_m: float = setting(
        25.0, 'A candidate within this many metres of the query is a true revisit (25: the '
        'outdoor benchmarks; about 5 for KITTI-style driving, less indoors).',
        section='Evaluation', low=0.0, high=1e6, above_low=True)
    recall_ks: tuple[int, ...] = (1, 5, 10, 20)
    pose_translation_m: float = 1.0  # an accepted loop whose metric pose is this close ...
    pose_rotation_deg: float = 5.0  # ... and turned this little from the truth is correct

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a radius or K that would make every number meaningless."""
        try:
            check_settings(self)
        except SettingError as err:
            raise EvalConfigError(str(err)) from None
        if not self.recall_ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1
                                     for k in self.recall_ks):
            raise EvalConfigError(f'recall_ks must be positive integers, got {self.recall_ks}')
        for name in ('pose_translation_m', 'pose_rotation_deg'):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise EvalConfigError(f'{name} must be a positive number, got {value!r}')


@dataclass(frozen=True, eq=False)
class PRCurve:
    """Precision and recall of the top-1 decision at every distinct similarity threshold."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_positives: int
    found: np.ndarray | None = None  # positive queries found; None: every true positive is one

    @property
    def precision(self) -> np.ndarray:
        """Precision at each threshold (never divides by zero: each point accepts a query)."""
        return self.tp / np.maximum(self.tp + self.fp, 1)

    @property
    def recall(self) -> np.ndarray | None:
        """Recall at each threshold, None without positives."""
        if self.num_positives == 0:
            return None
        return (self.tp if self.found is None else self.found) / self.num_positives


def precision_recall_curve(similarities: np.ndarray, correct: np.ndarray,
                           num_positives: int, recalled: np.ndarray | None = None) -> PRCurve:
    """Curve of the top-1 decisions; ties share one point (see the module docstring).

    `recalled` (a subset of `correct`) marks the true positives that count for recall, when
    some correct decision has no positive query (a loop correct by its pose, beyond the radius).
    """
    sims = np.asarray(similarities, dtype=np.float64).reshape(-1)
    good = np.asarray(correct, dtype=bool).reshape(-1)
    found = good if recalled is None else np.asarray(recalled, dtype=bool).reshape(-1)
    if sims.shape != good.shape or found.shape != good.shape:
        raise ValueError('similarities and correct must have the same length')
    if sims.size and not np.isfinite(sims).all():
        raise ValueError('similarities must be finite')
    if (found & ~good).any():
        raise ValueError('recalled decisions must be correct ones')
    if int(found.sum()) > num_positives:
        raise ValueError(f'{int(found.sum())} correct top-1 candidates but only '
                         f'{num_positives} positive queries')
    order = np.argsort(-sims, kind='stable')
    sims, good, found = sims[order], good[order], found[order]
    tp = np.cumsum(good)
    fp = np.cumsum(~good)
    last_of_value = np.flatnonzero(np.append(sims[1:] != sims[:-1], sims.size > 0))
    return PRCurve(sims[last_of_value], tp[last_of_value].astype(np.int64),
                   fp[last_of_value].astype(np.int64), int(num_positives),
                   None if recalled is None else np.cumsum(found)[last_of_value].astype(np.int64))


@dataclass(frozen=True)
class PRSummary:
    """The scalar summaries of a precision-recall curve."""

    auc_pr: float | None
    max_recall_at_full_precision: float | None
    threshold_at_full_precision: float | None
    f1_max: float | None
    threshold_at_f1_max: float | None
    extended_precision: float | None


def summarize_curve(curve: PRCurve) -> PRSummary:
    """AUC-PR, recall at 100 % precision, F1-max and Extended Precision of a curve."""
    recall = curve.recall
    if recall is None or curve.thresholds.size == 0:
        return PRSummary(None, None, None, None, None, None)
    precision = curve.precision
    auc = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    perfect = np.flatnonzero(curve.fp == 0)
    if perfect.size and curve.tp[perfect[-1]] > 0:
        r_at_p100 = float(recall[perfect[-1]])
        t_at_p100 = float(curve.thresholds[perfect[-1]])
    else:
        r_at_p100, t_at_p100 = 0.0, None
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    best = int(np.argmax(f1))
    ep = (float(precision[0]) + r_at_p100) / 2
    return PRSummary(auc, r_at_p100, t_at_p100, float(f1[best]),
                     float(curve.thresholds[best]), ep)


@dataclass(frozen=True)
class DecisionStats:
    """Precision and recall of what the detector actually accepted (the accepted records)."""

    accepted: int
    true_positives: int
    precision: float | None
    recall: float | None
    correct_by_pose: int = 0  # true positives beyond the radius, correct by their pose alone


def _spread(values: np.ndarray) -> dict[str, float | int | None]:
    """Count, median and 90th percentile (None when empty)."""
    if values.size == 0:
        return {'count': 0, 'median': None, 'p90': None}
    return {'count': int(values.size), 'median': float(np.median(values)),
            'p90': float(np.percentile(values, 90))}


@dataclass(frozen=True, eq=False)
class PoseErrors:
    """Errors of the accepted loops' relative poses against the ground truth."""

    loops_by_kind: dict[str, int]  # accepted loops by pose kind (POSE_KIND_NAMES)
    rotation_deg: np.ndarray  # every accepted loop with a pose
    translation_m: np.ndarray  # those with a metric translation (METRIC, ODOMETRY_SCALE)
    ground_truth_orientations: bool  # False: the ground truth has none, no error is known

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (median and p90, None when no loop has a pose)."""
        return {'loops_by_pose_kind': dict(self.loops_by_kind),
                'ground_truth_orientations': self.ground_truth_orientations,
                'rotation_deg': _spread(self.rotation_deg),
                'translation_m': _spread(self.translation_m)}


def pose_error(estimate: Sequence[float], truth: np.ndarray) -> tuple[float, float]:
    """Rotation (deg) and translation (m) error of an (x y z qx qy qz qw) pose vs a 4x4 one."""
    rotation = matrix_from_quaternion(estimate[3:])
    cos = (np.trace(truth[:3, :3].T @ rotation) - 1.0) / 2.0
    angle = math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))
    return angle, float(np.linalg.norm(np.asarray(estimate[:3]) - truth[:3, 3]))


@dataclass(eq=False)
class EvalResult:
    """Everything `evaluate` measured; `to_dict` gives the JSON report's metrics section."""

    config: EvalConfig
    num_queries: int
    num_positive_queries: int
    num_queries_with_candidates: int
    candidate_depth: int
    recall_at: dict[int, float | None]
    curve: PRCurve
    summary: PRSummary
    decisions: DecisionStats
    top1_query_rows: np.ndarray = field(repr=False)
    top1_map_rows: np.ndarray = field(repr=False)
    top1_similarity: np.ndarray = field(repr=False)
    top1_correct: np.ndarray = field(repr=False)
    top1_accepted: np.ndarray = field(repr=False)
    positive_queries: np.ndarray = field(repr=False)
    pr_score: str = 'similarity'
    pose_errors: PoseErrors | None = None
    accepted_query_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64),
                                            repr=False)
    accepted_map_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64),
                                          repr=False)
    accepted_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    first_correct_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64),
                                           repr=False)  # per query; int64 max: none correct

    def kept_in_top(self, n: int) -> float | None:
        """Return the share of revisits in the top `n` that became correct loops.

        That is, of the positive queries with a correct candidate in their top `n`, those whose
        accepted loop is correct: what verification keeps of what retrieval found there.
        """
        found = (self.first_correct_rank < n) & self.positive_queries
        if not found.any():
            return None
        kept = np.zeros_like(found)
        kept[self.accepted_query_rows[self.accepted_correct]] = True
        return float((kept & found).sum() / found.sum())

    def to_dict(self, include_curve: bool = True) -> dict[str, Any]:
        """JSON-ready metrics (None for undefined values)."""
        out: dict[str, Any] = {
            'radius_m': self.config.radius_m,
            'num_queries': self.num_queries,
            'num_positive_queries': self.num_positive_queries,
            'num_queries_with_candidates': self.num_queries_with_candidates,
            'candidate_depth': self.candidate_depth,
            'recall_at': {str(k): v for k, v in self.recall_at.items()},
            'auc_pr': self.summary.auc_pr,
            'max_recall_at_100_precision': self.summary.max_recall_at_full_precision,
            'threshold_at_100_precision': self.summary.threshold_at_full_precision,
            'f1_max': self.summary.f1_max,
            'threshold_at_f1_max': self.summary.threshold_at_f1_max,
            'extended_precision': self.summary.extended_precision,
            'accepted': {
                'count': self.decisions.accepted,
                'true_positives': self.decisions.true_positives,
                'correct_by_pose': self.decisions.correct_by_pose,
                'precision': self.decisions.precision,
                'recall': self.decisions.recall,
            },
            'loops_kept_at': {str(k): self.kept_in_top(k) for k in self.recall_at
                              if k <= self.candidate_depth},
            'pr_score': self.pr_score,
            'pose_errors': None if self.pose_errors is None else self.pose_errors.to_dict(),
        }
        if include_curve:
            recall = self.curve.recall
            out['pr_curve'] = {
                'threshold': self.curve.thresholds.tolist(),
                'precision': self.curve.precision.tolist(),
                'recall': None if recall is None else recall.tolist(),
            }
        return out


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


PRScore = Literal['similarity', 'inliers']


@dataclass(frozen=True)
class _Accepted:
    """One query's accepted record, judged."""

    query_row: int
    map_row: int
    record: CandidateRecord
    correct: bool
    by_pose: bool  # correct by its pose alone (beyond the radius)


def _judge_accepted(rec: CandidateRecord, q_row: int, m_row: int, gt: GroundTruth,
                    config: EvalConfig, rotations: list[float],
                    translations: list[float]) -> _Accepted:
    """Judge an accepted loop (radius, else metric pose) and collect its pose errors."""
    eligible = gt.eligible_pair(q_row, m_row)
    near = eligible and gt.distance(q_row, m_row) <= config.radius_m
    pose_ok = False
    truth = gt.relative_pose(q_row, m_row) if rec.relative_pose is not None else None
    if truth is not None and rec.pose_kind:
        rotation, translation = pose_error(rec.relative_pose, truth)
        rotations.append(rotation)
        if rec.pose_kind in SCALED_POSE_KINDS:
            translations.append(translation)
            pose_ok = eligible and (translation <= config.pose_translation_m
                                    and rotation <= config.pose_rotation_deg)
    return _Accepted(q_row, m_row, rec, near or pose_ok, pose_ok and not near)


def evaluate(records: Sequence[CandidateRecord], ground_truth: GroundTruth,
             config: EvalConfig | None = None, pr_score: PRScore = 'similarity'
             ) -> EvalResult:
    """Score candidate records against ground truth (offline run or live-node recording).

    `pr_score` is what the precision-recall curve sweeps: the top-1 similarity (retrieval and
    appearance-only loops), or the inliers of the accepted loops (a verified run).
    """
    config = config or EvalConfig()
    config.validate()
    if pr_score not in ('similarity', 'inliers'):
        raise ValueError(f"pr_score must be 'similarity' or 'inliers', got {pr_score!r}")
    gt = ground_truth
    n_queries = len(gt.queries)
    positive = gt.has_positive(config.radius_m)
    first_correct = np.full(n_queries, np.iinfo(np.int64).max, dtype=np.int64)
    top1: dict[int, tuple[int, float, bool, bool]] = {}
    accepted: dict[int, _Accepted] = {}
    rotations: list[float] = []
    translations: list[float] = []
    depth = 0
    for rec in records:
        q_row = gt.queries.index_of(rec.query_session, rec.query_stamp_ns)
        if not rec.has_match:
            continue
        m_row = gt.map.index_of(rec.match_session, rec.match_stamp_ns)
        correct = gt.eligible_pair(q_row, m_row) and (
            gt.distance(q_row, m_row) <= config.radius_m)
        depth = max(depth, rec.rank + 1)
        if correct:
            first_correct[q_row] = min(first_correct[q_row], rec.rank)
        if rec.rank == 0:
            if q_row in top1:
                raise ValueError(f'two rank-0 records for query session {rec.query_session!r} '
                                 f'stamp {rec.query_stamp_ns}')
            top1[q_row] = (m_row, rec.similarity, correct, rec.accepted)
        if rec.accepted:
            if q_row in accepted:
                raise ValueError(f'two accepted records for query session '
                                 f'{rec.query_session!r} stamp {rec.query_stamp_ns}')
            accepted[q_row] = _judge_accepted(rec, q_row, m_row, gt, config, rotations,
                                              translations)
    n_pos = int(positive.sum())
    recall_at = {k: (None if k > depth or n_pos == 0
                     else float(((first_correct < k) & positive).sum() / n_pos))
                 for k in sorted(config.recall_ks)}
    q_rows = np.array(sorted(top1), dtype=np.int64)
    entries = [top1[r] for r in q_rows.tolist()]
    m_rows = np.array([e[0] for e in entries], dtype=np.int64)
    sims = np.array([e[1] for e in entries], dtype=np.float64)
    good = np.array([e[2] for e in entries], dtype=bool)
    acc = np.array([e[3] for e in entries], dtype=bool)
    loops = [accepted[r] for r in sorted(accepted)]
    acc_q = np.array([a.query_row for a in loops], dtype=np.int64)
    acc_good = np.array([a.correct for a in loops], dtype=bool)
    acc_found = acc_good & positive[acc_q]
    if pr_score == 'similarity':
        curve = precision_recall_curve(sims, good, n_pos)
    else:
        curve = precision_recall_curve(
            np.array([float(a.record.inliers) for a in loops], dtype=np.float64), acc_good,
            n_pos, acc_found)
    n_acc = len(loops)
    n_acc_tp = int(acc_good.sum())
    decisions = DecisionStats(n_acc, n_acc_tp, _ratio(n_acc_tp, n_acc),
                              _ratio(int(acc_found.sum()), n_pos),
                              sum(a.by_pose for a in loops))
    kinds = dict.fromkeys(POSE_KIND_NAMES, 0)
    for a in loops:
        kinds[POSE_KIND_NAMES[a.record.pose_kind]] += 1
    pose_errors = PoseErrors(kinds, np.array(rotations), np.array(translations),
                             gt.queries.orientations is not None
                             and gt.map.orientations is not None)
    return EvalResult(config, n_queries, n_pos, len(top1), depth, recall_at, curve,
                      summarize_curve(curve), decisions, q_rows, m_rows, sims, good, acc,
                      positive, pr_score, pose_errors, acc_q,
                      np.array([a.map_row for a in loops], dtype=np.int64), acc_good,
                      first_correct)
