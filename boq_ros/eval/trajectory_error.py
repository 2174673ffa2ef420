"""Trajectory error metrics: absolute trajectory error (ATE) and relative pose error (RPE).

The usual definitions (Sturm et al., IROS 2012, the TUM RGB-D benchmark), so that the figures can
be compared with published ones and with tools such as evo:

- Alignment (Umeyama, PAMI 1991): the rotation R, translation t and scale s that minimise
  sum_i |q_i - (s R p_i + t)|^2 over the estimated positions p_i and reference positions q_i;
  ``se3`` fixes s = 1, ``sim3`` estimates it (monocular systems), ``none`` is the identity.
- ATE: the translation errors |q_i - (s R p_i + t)| after alignment; rmse, mean, median, max.
- RPE over every pair (i, i + delta): E = inv(inv(Q_i) Q_j) inv(P_i) P_j, P the estimated and Q
  the reference poses; the translation error is |t(E)|, the rotation error the angle of R(E).
  No alignment: relative motions do not depend on the frame the estimate is expressed in
  (a monocular estimate's scale does matter: scale it first, e.g. by the sim3 ATE's scale).

Poses are matched by the caller: row i of the estimate and of the reference are the same stamp.
"""
from dataclasses import dataclass
from typing import Literal

import numpy as np

Alignment = Literal['se3', 'sim3', 'none']
ALIGNMENTS = ('se3', 'sim3', 'none')


class TrajectoryMetricError(ValueError):
    """Raised for trajectories the metrics cannot compare; the message names the cause."""


@dataclass(frozen=True)
class AteResult:
    """Absolute trajectory error: the position errors after alignment, and the alignment."""

    alignment: str
    rmse: float  # metres (units of the reference)
    mean: float
    median: float
    max: float
    errors: np.ndarray  # (N,) per pose
    rotation: np.ndarray  # (3, 3) R of the alignment: aligned = s R p + t
    translation: np.ndarray  # (3,)
    scale: float
    aligned: np.ndarray  # (N, 4, 4) the estimate in the reference frame (for plots)


@dataclass(frozen=True)
class RpeResult:
    """Relative pose error over the pairs (i, i + delta)."""

    delta: int
    translation_rmse: float  # metres
    rotation_rmse_deg: float
    translation_errors: np.ndarray  # (N - delta,)
    rotation_errors_deg: np.ndarray  # (N - delta,)


def _positions(name: str, positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise TrajectoryMetricError(f'{name} must be (N, 3) positions, got shape '
                                   f'{positions.shape}')
    if not np.isfinite(positions).all():
        raise TrajectoryMetricError(f'{name} has non-finite positions')
    return positions


def _poses(name: str, poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise TrajectoryMetricError(f'{name} must be (N, 4, 4) poses, got shape {poses.shape}')
    if not np.isfinite(poses).all():
        raise TrajectoryMetricError(f'{name} has non-finite poses')
    return poses


def _pair(estimate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    estimate, reference = _poses('estimate', estimate), _poses('reference', reference)
    if len(estimate) != len(reference):
        raise TrajectoryMetricError(f'the estimate has {len(estimate)} poses and the reference '
                                   f'{len(reference)}: match them by stamp first')
    return estimate, reference


def align(estimate_positions: np.ndarray, reference_positions: np.ndarray,
          with_scale: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Return (R, t, s) mapping the estimate onto the reference in least squares (Umeyama).

    Needs at least 3 positions that are not all on one line (else the rotation about that line,
    or everything, is undetermined).
    """
    p = _positions('estimate_positions', estimate_positions)
    q = _positions('reference_positions', reference_positions)
    if len(p) != len(q):
        raise TrajectoryMetricError(f'{len(p)} estimated positions and {len(q)} reference '
                                   'positions: match them by stamp first')
    if len(p) < 3:
        raise TrajectoryMetricError(f'alignment needs at least 3 positions, got {len(p)}')
    p_mean, q_mean = p.mean(axis=0), q.mean(axis=0)
    p_c, q_c = p - p_mean, q - q_mean
    cross = q_c.T @ p_c / len(p)
    u, d, vt = np.linalg.svd(cross)
    spread = max(np.abs(p_c).max(), np.abs(q_c).max())
    if spread == 0.0 or d[1] <= 1e-12 * spread ** 2:
        raise TrajectoryMetricError('the positions are degenerate for an alignment (all equal '
                                   'or on one line)')
    signs = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[2] = -1.0
    rotation = (u * signs) @ vt
    scale = 1.0
    if with_scale:
        scale = float((d * signs).sum() / (p_c ** 2).sum(axis=1).mean())
    translation = q_mean - scale * rotation @ p_mean
    return rotation, translation, scale


def absolute_trajectory_error(estimate: np.ndarray, reference: np.ndarray,
                              alignment: Alignment = 'se3') -> AteResult:
    """Return the ATE of `estimate` against `reference` (N x 4 x 4 each, matched by row)."""
    if alignment not in ALIGNMENTS:
        raise TrajectoryMetricError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got "
                                   f'{alignment!r}')
    estimate, reference = _pair(estimate, reference)
    if len(estimate) == 0:
        raise TrajectoryMetricError('the trajectories are empty')
    if alignment == 'none':
        rotation, translation, scale = np.eye(3), np.zeros(3), 1.0
    else:
        rotation, translation, scale = align(estimate[:, :3, 3], reference[:, :3, 3],
                                             with_scale=alignment == 'sim3')
    aligned = estimate.copy()
    aligned[:, :3, :3] = rotation @ estimate[:, :3, :3]
    aligned[:, :3, 3] = scale * estimate[:, :3, 3] @ rotation.T + translation
    errors = np.linalg.norm(aligned[:, :3, 3] - reference[:, :3, 3], axis=1)
    return AteResult(alignment=alignment, rmse=float(np.sqrt(np.mean(errors ** 2))),
                     mean=float(errors.mean()), median=float(np.median(errors)),
                     max=float(errors.max()), errors=errors, rotation=rotation,
                     translation=translation, scale=scale, aligned=aligned)


def _inverse(poses: np.ndarray) -> np.ndarray:
    out = np.zeros_like(poses)
    rot_t = np.swapaxes(poses[..., :3, :3], -1, -2)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum('...ij,...j->...i', rot_t, poses[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def rotation_angle(rotation: np.ndarray) -> np.ndarray:
    """Return the angle (rad) of rotation matrices (..., 3, 3), accurate near 0 and pi too."""
    w = np.stack([rotation[..., 2, 1] - rotation[..., 1, 2],
                  rotation[..., 0, 2] - rotation[..., 2, 0],
                  rotation[..., 1, 0] - rotation[..., 0, 1]], axis=-1)
    cos = (np.trace(rotation, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.arctan2(0.5 * np.linalg.norm(w, axis=-1), cos)


def relative_pose_error(estimate: np.ndarray, reference: np.ndarray,
                        delta: int = 1) -> RpeResult:
    """Return the RPE of `estimate` against `reference` over every pair (i, i + delta)."""
    estimate, reference = _pair(estimate, reference)
    if isinstance(delta, bool) or not isinstance(delta, int) or delta < 1:
        raise TrajectoryMetricError(f'delta must be a positive number of poses, got {delta!r}')
    if len(estimate) <= delta:
        raise TrajectoryMetricError(f'{len(estimate)} poses have no pair {delta} apart')
    rel_est = _inverse(estimate[:-delta]) @ estimate[delta:]
    rel_ref = _inverse(reference[:-delta]) @ reference[delta:]
    error = _inverse(rel_ref) @ rel_est
    translation = np.linalg.norm(error[:, :3, 3], axis=1)
    rotation = np.degrees(rotation_angle(error[:, :3, :3]))
    return RpeResult(delta=delta, translation_rmse=float(np.sqrt(np.mean(translation ** 2))),
                     rotation_rmse_deg=float(np.sqrt(np.mean(rotation ** 2))),
                     translation_errors=translation, rotation_errors_deg=rotation)

