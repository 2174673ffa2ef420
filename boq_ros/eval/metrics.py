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
Quantities that divide by zero (no positives, no candidates) are None (JSON null).
"""
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from boq_ros.eval.groundtruth import GroundTruth
from boq_ros.eval.records import CandidateRecord
from boq_ros.settings import SettingError, check_settings, setting


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


@dataclass(frozen=True, eq=False)
class PRCurve:
    """Precision and recall of the top-1 decision at every distinct similarity threshold."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_positives: int

    @property
    def precision(self) -> np.ndarray:
        """Precision at each threshold (never divides by zero: each point accepts a query)."""
        return self.tp / np.maximum(self.tp + self.fp, 1)

    @property
    def recall(self) -> np.ndarray | None:
        """Recall at each threshold, None without positives."""
        if self.num_positives == 0:
            return None
        return self.tp / self.num_positives


def precision_recall_curve(similarities: np.ndarray, correct: np.ndarray,
                           num_positives: int) -> PRCurve:
    """Curve of the top-1 decisions; ties share one point (see the module docstring)."""
    sims = np.asarray(similarities, dtype=np.float64).reshape(-1)
    good = np.asarray(correct, dtype=bool).reshape(-1)
    if sims.shape != good.shape:
        raise ValueError('similarities and correct must have the same length')
    if sims.size and not np.isfinite(sims).all():
        raise ValueError('similarities must be finite')
    if int(good.sum()) > num_positives:
        raise ValueError(f'{int(good.sum())} correct top-1 candidates but only '
                         f'{num_positives} positive queries')
    order = np.argsort(-sims, kind='stable')
    sims, good = sims[order], good[order]
    tp = np.cumsum(good)
    fp = np.cumsum(~good)
    last_of_value = np.flatnonzero(np.append(sims[1:] != sims[:-1], sims.size > 0))
    return PRCurve(sims[last_of_value], tp[last_of_value].astype(np.int64),
                   fp[last_of_value].astype(np.int64), int(num_positives))


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
    """Precision and recall of what the detector actually accepted (top-1, accepted flag)."""

    accepted: int
    true_positives: int
    precision: float | None
    recall: float | None


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
                'precision': self.decisions.precision,
                'recall': self.decisions.recall,
            },
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


def evaluate(records: Sequence[CandidateRecord], ground_truth: GroundTruth,
             config: EvalConfig | None = None) -> EvalResult:
    """Score candidate records against ground truth (offline run or live-node recording)."""
    config = config or EvalConfig()
    config.validate()
    gt = ground_truth
    n_queries = len(gt.queries)
    positive = gt.has_positive(config.radius_m)
    first_correct = np.full(n_queries, np.iinfo(np.int64).max, dtype=np.int64)
    top1: dict[int, tuple[int, float, bool, bool]] = {}
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
    curve = precision_recall_curve(sims, good, n_pos)
    n_acc = int(acc.sum())
    n_acc_tp = int((acc & good).sum())
    decisions = DecisionStats(n_acc, n_acc_tp, _ratio(n_acc_tp, n_acc), _ratio(n_acc_tp, n_pos))
    return EvalResult(config, n_queries, n_pos, len(top1), depth, recall_at, curve,
                      summarize_curve(curve), decisions, q_rows, m_rows, sims, good, acc,
                      positive)
