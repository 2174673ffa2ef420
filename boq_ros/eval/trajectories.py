"""How much the loops corrected the drift: keyframe trajectories against ground truth, and a plot.

Every trajectory is compared at the same keyframe stamps: the odometry the robot had, and the
pose graph's optimised estimate, each against the ground truth interpolated there. ATE is the
RMSE after an SE(3) alignment (Umeyama without scale: the odometry and the loop poses are
metric), RPE is between consecutive keyframes (boq_ros/eval/trajectory_error.py).
"""
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import os
from pathlib import Path
from typing import Any

import numpy as np

from boq_ros.eval.records import CandidateRecord
from boq_ros.eval.trajectory_error import (
    AteResult,
    RpeResult,
    absolute_trajectory_error,
    relative_pose_error,
)
from boq_ros.settings import PoseGraphSettings
from boq_ros.slam import GraphInput, inputs_from_records, optimise
from boq_ros.trajectory import Trajectory, TrajectoryError
from boq_ros.verification.verifier import transform_from

ALIGNMENT = 'se3'


@dataclass(frozen=True)
class TrajectoryScore:
    """One estimate's errors against ground truth at the keyframe stamps."""

    label: str
    ate: AteResult
    rpe: RpeResult
    loops: int | None = None  # loop factors behind the estimate (None: not a pose graph)

    def to_dict(self) -> dict[str, Any]:
        """Return the report's entry (metres and degrees)."""
        return {'label': self.label, 'keyframes': int(self.ate.errors.size),
                'alignment': self.ate.alignment, 'ate_rmse_m': self.ate.rmse,
                'ate_median_m': self.ate.median, 'ate_max_m': self.ate.max,
                'rpe_translation_rmse_m': self.rpe.translation_rmse,
                'rpe_rotation_rmse_deg': self.rpe.rotation_rmse_deg, 'loops': self.loops}


def poses_at(trajectory: Trajectory, stamps_ns: np.ndarray, what: str,
             max_gap_s: float = 0.5) -> np.ndarray:
    """Return the 4x4 poses of `trajectory` at `stamps_ns`; refuse a stamp it cannot give."""
    if trajectory.orientations is None:
        raise TrajectoryError(f'{what} has no orientations: relative pose errors need them')
    positions, orientations, valid = trajectory.interpolate(stamps_ns, max_gap_s)
    if not valid.all():
        bad = int(np.asarray(stamps_ns)[~valid][0])
        raise TrajectoryError(f'{what} has no pose at keyframe stamp {bad} ns '
                              f'({int((~valid).sum())} of {valid.size} stamps)')
    return np.stack([transform_from([*p, *q]) for p, q in zip(positions, orientations)])


def score(label: str, estimate: np.ndarray, reference: np.ndarray,
          loops: int | None = None) -> TrajectoryScore:
    """Score an estimate (N x 4 x 4) against the reference poses at the same stamps."""
    return TrajectoryScore(label, absolute_trajectory_error(estimate, reference, ALIGNMENT),
                           relative_pose_error(estimate, reference, delta=1), loops)


class DriftStudy:
    """The keyframes of one run's records: ground truth, odometry and loops at their stamps.

    Scores the odometry alone, the reference backend run offline on the records' loops (the
    rule of boq_ros/slam.py, as pose_graph_node applies it live), and any other estimate.
    """

    def __init__(self, records: Sequence[CandidateRecord], odometry: Trajectory,
                 ground_truth: Trajectory) -> None:
        self.stamps = np.array(sorted({r.query_stamp_ns for r in records}), dtype=np.int64)
        if self.stamps.size < 3:
            raise TrajectoryError(f'{self.stamps.size} keyframes: too few for trajectory errors')
        self.reference = poses_at(ground_truth, self.stamps, 'the ground truth')
        self.odometry = poses_at(odometry, self.stamps, 'the odometry')
        self.inputs = inputs_from_records(records, odometry)
        self._row = {int(s): i for i, s in enumerate(self.stamps)}

    @property
    def loops(self) -> int:
        """Metric verified loops in the records."""
        return sum(1 for i in self.inputs if i.loop is not None and i.loop.metric)

    def edges(self) -> list[tuple[int, int]]:
        """(query row, match row) of the metric loops, for plots."""
        return [(self._row[i.stamp_ns], self._row[i.loop.match_stamp_ns]) for i in self.inputs
                if i.loop is not None and i.loop.metric and i.loop.match_stamp_ns in self._row]

    def odometry_score(self) -> TrajectoryScore:
        """Score the odometry alone."""
        return score('odometry alone', self.odometry, self.reference)

    def estimate_score(self, label: str, estimate: Trajectory, loops: int | None
                       ) -> TrajectoryScore:
        """Score an estimate given as a trajectory (e.g. the live backend's TUM file)."""
        return score(label, poses_at(estimate, self.stamps, label, max_gap_s=None),
                     self.reference, loops)

    def graph_score(self, label: str, settings: PoseGraphSettings,
                    inputs: Sequence[GraphInput] | None = None) -> TrajectoryScore:
        """Score the reference backend run offline on the records' loops (or on `inputs`)."""
        graph = optimise(self.inputs if inputs is None else inputs, settings)
        poses = graph.graph.poses()
        missing = [int(s) for s in self.stamps if int(s) not in poses]
        if missing:
            causes = ', '.join(f'{cause} {n}' for cause, n in graph.skipped.items())
            raise TrajectoryError(f'the pose graph skipped {len(missing)} keyframes (first at '
                                  f'{missing[0]} ns; {causes or "no cause counted"})')
        return score(label, np.stack([poses[int(s)] for s in self.stamps]), self.reference,
                     graph.loops_added)


def format_table(scores: Sequence[Mapping[str, Any]]) -> str:
    """Return a markdown table of scores (`TrajectoryScore.to_dict`), ATE ratios to the first."""
    base = scores[0]['ate_rmse_m'] if scores else float('nan')
    lines = ['| trajectory | loops | ATE RMSE (m, SE(3)) | ATE max (m) | RPE trans (m) | '
             'RPE rot (deg) | ATE: first / this |', '|---|---|---|---|---|---|---|']
    for s in scores:
        ate = s['ate_rmse_m']
        ratio = base / ate if ate > 0 else float('inf')
        loops = '-' if s['loops'] is None else s['loops']
        lines.append(f'| {s["label"]} | {loops} | {ate:.3f} | {s["ate_max_m"]:.3f} | '
                     f'{s["rpe_translation_rmse_m"]:.4f} | {s["rpe_rotation_rmse_deg"]:.3f} | '
                     f'{ratio:.1f}x |')
    return '\n'.join(lines) + '\n'


def plot_trajectories(path: str | os.PathLike, reference: np.ndarray,
                      estimates: Mapping[str, AteResult],
                      loops: Sequence[tuple[int, int]] = (), loops_of: str | None = None
                      ) -> Path:
    """Plot ground truth and the aligned estimates from above, with the loop edges of one.

    ``loops`` are (query row, match row) pairs drawn on the aligned estimate ``loops_of``.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    ax.plot(reference[:, 0, 3], reference[:, 1, 3], color='black', lw=2.2, label='ground truth')
    colours = ['tab:red', 'tab:blue', 'tab:green', 'tab:orange']
    for (label, ate), colour in zip(estimates.items(), colours):
        xy = ate.aligned[:, :2, 3]
        ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=1.3,
                label=f'{label} (ATE {ate.rmse:.2f} m)')
    if loops and loops_of is not None:
        xy = estimates[loops_of].aligned[:, :2, 3]
        for i, (q, m) in enumerate(loops):
            ax.plot([xy[q, 0], xy[m, 0]], [xy[q, 1], xy[m, 1]], color='tab:purple', lw=0.6,
                    alpha=0.7, label=f'loop edges ({len(loops)})' if i == 0 else None)
    ax.set_aspect('equal')
    ax.set_xlabel('x (m)')
    ax.set_ylabel('y (m)')
    ax.set_title('Keyframe trajectories, SE(3)-aligned to ground truth')
    ax.legend(loc='best', fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
