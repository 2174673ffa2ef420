"""Keyframes and verified loops into the pose graph, by one rule for the node and offline runs.

`pose_graph_node` (ROS) turns each ``LoopCandidateArray`` it receives into a :class:`GraphInput`
and the offline runs (`boq-ros eval`, the demo) turn each query's candidate records into the same;
:class:`KeyframeGraph` decides what each input adds to the :class:`~boq_ros.pose_graph.PoseGraph`:
a node per keyframe at its odometry pose, and a loop factor for an accepted candidate that
geometric verification confirmed with a metric relative pose. Everything else is counted, never
guessed: a loop without a metric pose (uncalibrated camera, essential matrix only) adds nothing,
and a match the graph does not hold (a keyframe of a map loaded before this run) neither.
"""
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
import math

import numpy as np

from boq_ros.eval.records import POSE_METRIC, STATUS_VERIFIED, CandidateRecord
from boq_ros.pose_graph import PoseGraph, PoseGraphError
from boq_ros.settings import PoseGraphSettings
from boq_ros.trajectory import Trajectory
from boq_ros.verification.verifier import transform_from

SKIP_CAUSES = ('out_of_order', 'no_odometry', 'loop_not_metric', 'match_not_in_graph',
               'loop_refused')
"""Why an input added less than it carried (counted per cause in :attr:`KeyframeGraph.skipped`)."""


@dataclass(frozen=True)
class Loop:
    """An accepted, verified loop: the match's base pose in the query's base frame."""

    match_stamp_ns: int
    relative_pose: np.ndarray  # 4x4, T_query_match (LoopCandidate.relative_pose_base)
    covariance: np.ndarray | None  # 6x6, x y z rx ry rz (docs/verification.md); None: unknown
    metric: bool  # pose kind METRIC: the translation is in metres


@dataclass(frozen=True)
class GraphInput:
    """One query keyframe's contribution: its stamp and odometry pose, and its loop if any."""

    stamp_ns: int
    odometry_pose: np.ndarray | None  # 4x4 base pose in the odometry frame; None: unknown
    loop: Loop | None = None


class KeyframeGraph:
    """A pose graph fed keyframe by keyframe, with the counts of what it did not take."""

    def __init__(self, settings: PoseGraphSettings) -> None:
        self.graph = PoseGraph(settings)
        self.skipped: Counter[str] = Counter()
        self.loops_added = 0

    def add(self, item: GraphInput) -> bool:
        """Add one keyframe (and its loop); return whether the graph changed.

        Keyframes of several cameras at one stamp are one graph node (one robot pose).
        """
        newest = self.graph.newest_key
        if newest is not None and item.stamp_ns < newest:
            self.skipped['out_of_order'] += 1
            return False
        changed = False
        if newest is None or item.stamp_ns > newest:
            if item.odometry_pose is None:
                self.skipped['no_odometry'] += 1
                return False
            self.graph.add_keyframe(item.stamp_ns, item.odometry_pose)
            changed = True
        loop = item.loop
        if loop is not None:
            if not loop.metric:
                self.skipped['loop_not_metric'] += 1
            elif loop.match_stamp_ns == item.stamp_ns:
                pass  # another camera of the same robot pose: no constraint
            else:
                try:
                    added = self.graph.add_loop(item.stamp_ns, loop.match_stamp_ns,
                                                loop.relative_pose, loop.covariance)
                except PoseGraphError:  # e.g. a covariance that is not positive semi-definite
                    self.skipped['loop_refused'] += 1
                    return changed
                if added:
                    self.loops_added += 1
                    changed = True
                else:
                    self.skipped['match_not_in_graph'] += 1
        return changed


def loop_of_records(records: Sequence[CandidateRecord]) -> Loop | None:
    """Return the loop of one query's records: its accepted candidate if verified with a pose."""
    accepted = next((r for r in records if r.accepted and r.has_match), None)
    if (accepted is None or accepted.status != STATUS_VERIFIED
            or accepted.relative_pose is None):
        return None
    cov = (None if accepted.covariance is None
           else np.asarray(accepted.covariance, dtype=np.float64).reshape(6, 6))
    return Loop(accepted.match_stamp_ns, transform_from(accepted.relative_pose), cov,
                metric=accepted.pose_kind == POSE_METRIC)


def inputs_from_records(records: Iterable[CandidateRecord], odometry: Trajectory,
                        max_gap_s: float = 0.5) -> list[GraphInput]:
    """Graph inputs of candidate records, oldest stamp first (as the backend node adds them).

    The odometry pose of each query is interpolated in ``odometry`` (None where it has no pose
    within ``max_gap_s`` or no orientation); the node interpolates its odometry buffer the same
    way, so both agree to float rounding where the odometry has a pose near each stamp.
    """
    by_query: dict[tuple[int, str, str], list[CandidateRecord]] = {}
    for r in records:
        by_query.setdefault((r.query_stamp_ns, r.query_session, r.query_camera), []).append(r)
    if not by_query:
        return []
    keys = sorted(by_query, key=lambda key: key[0])  # stable: cameras at one stamp keep order
    stamps = np.array([key[0] for key in keys], dtype=np.int64)
    positions, orientations, valid = odometry.interpolate(stamps, max_gap_s)
    out = []
    for i, rows in enumerate(by_query[key] for key in keys):
        pose = None
        if valid[i] and orientations is not None and math.isfinite(orientations[i][3]):
            pose = transform_from([*positions[i], *orientations[i]])
        out.append(GraphInput(int(stamps[i]), pose, loop_of_records(rows)))
    return out


def optimise(inputs: Iterable[GraphInput], settings: PoseGraphSettings) -> KeyframeGraph:
    """Run the backend offline over graph inputs, one update per change as the node does."""
    graph = KeyframeGraph(settings)
    for item in inputs:
        if graph.add(item):
            graph.graph.update()
    return graph


def with_wrong_loops(inputs: Sequence[GraphInput], fraction: float, seed: int = 0,
                     min_separation: int = 10) -> tuple[list[GraphInput], int]:
    """Return the inputs with `fraction` of their loops pointed at wrong keyframes, and how many.

    A robustness check: each chosen loop keeps its relative pose and covariance (it claims the
    same confidence) but names a random earlier keyframe at least `min_separation` keyframes
    away from its true match, as a perceptual-aliasing false positive that passed verification.
    """
    rng = np.random.default_rng(seed)
    order = {item.stamp_ns: i for i, item in enumerate(inputs)}
    with_loops = [i for i, item in enumerate(inputs) if item.loop is not None]
    count = int(round(fraction * len(with_loops)))
    chosen = set(rng.choice(with_loops, size=count, replace=False).tolist()) if count else set()
    out = list(inputs)
    done = 0
    for i in sorted(chosen):
        loop = inputs[i].loop
        true_row = order.get(loop.match_stamp_ns, i)
        rows = [r for r in range(i) if abs(r - true_row) >= min_separation
                and i - r >= min_separation]
        if not rows:
            continue
        wrong = inputs[int(rng.choice(rows))].stamp_ns
        out[i] = replace(inputs[i], loop=replace(loop, match_stamp_ns=wrong))
        done += 1
    return out, done
