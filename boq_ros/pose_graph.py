"""A reference pose-graph SLAM backend over keyframes: odometry chain plus verified loops, ISAM2.

Each keyframe is a GTSAM ``Pose3`` of the robot base in the map frame. The first keyframe gets a
tight prior at its odometry pose, so the optimised map frame starts equal to the odometry frame;
every next one an odometry factor (the odometry increment from the previous keyframe, sigmas
growing with the motion, see ``PoseGraphSettings``); a verified loop adds a factor between the
query and the match keyframe with its relative pose and covariance, floored (the estimator's
covariance is over-confident) and wrapped in a robust kernel (a false loop gets a small weight
instead of pulling the map apart). ISAM2 solves incrementally; after new loops ``update`` runs
extra iterations until no pose moves, because the robust weights are only right once the
linearisation point is.

Frames and covariances follow docs/verification.md: a loop's ``relative_pose`` is T_from_to
(the ``to`` keyframe's base in the ``from`` keyframe's base frame: a LoopCandidate's
``relative_pose_base`` with from = query, to = match), its covariance is over (x y z rx ry rz) for
the perturbation t' = t + d_t, R' = exp([d_rot]x) R in the ``from`` frame; ``to_gtsam_covariance``
converts it to GTSAM's tangent convention. The backend has no randomness: the same calls in the
same order give bit-identical poses.
"""
from dataclasses import dataclass
from pathlib import Path
import time

import gtsam
import numpy as np

from boq_ros.settings import PoseGraphSettings
from boq_ros.verification.verifier import local_frame_covariance

PRIOR_SIGMA = 1e-6
"""Sigma (m and rad) of the first keyframe's prior: it pins the map frame to the odometry frame."""
RELINEARIZE_THRESHOLD = 1e-4
"""ISAM2 relinearises a pose whose correction exceeds this (rad, m)."""


class PoseGraphError(ValueError):
    """Raised for a keyframe or loop the graph cannot take; the message names the cause."""


@dataclass(frozen=True)
class LoopEdge:
    """A loop factor and how well the optimised poses agree with it."""

    key_from: int
    key_to: int
    relative_pose: np.ndarray  # 4x4 T_from_to as measured
    whitened_error: float  # Mahalanobis distance of the residual at the optimised poses
    weight: float  # the robust kernel's weight there: 1 trusted, near 0 treated as an outlier


@dataclass(frozen=True)
class _LoopFactor:
    key_from: int
    key_to: int
    relative_pose: np.ndarray
    gaussian: gtsam.noiseModel.Gaussian  # the floored covariance, GTSAM's convention


def _rotation_angle(rotation: np.ndarray) -> float:
    return float(np.linalg.norm(gtsam.Rot3.Logmap(gtsam.Rot3.ClosestTo(rotation))))


def _checked_pose(pose: np.ndarray, what: str) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise PoseGraphError(f'{what} must be a 4x4 matrix, got shape {pose.shape}')
    if not np.isfinite(pose).all():
        raise PoseGraphError(f'{what} has non-finite values')
    rotation = pose[:3, :3]
    if (np.abs(pose[3] - (0.0, 0.0, 0.0, 1.0)).max() > 1e-9
            or np.abs(rotation @ rotation.T - np.eye(3)).max() > 1e-6
            or np.linalg.det(rotation) < 0.0):
        raise PoseGraphError(f'{what} is not a rigid transform (rotation matrix and last row '
                             '0 0 0 1)')
    return pose


def _gtsam_pose(pose: np.ndarray) -> gtsam.Pose3:
    return gtsam.Pose3(gtsam.Rot3.ClosestTo(pose[:3, :3]), pose[:3, 3])


def to_gtsam_covariance(covariance: np.ndarray, relative_pose: np.ndarray) -> np.ndarray:
    """Return a loop covariance of our convention in GTSAM's Pose3 tangent convention.

    GTSAM perturbs in the pose's own frame (``local_frame_covariance``) and orders the tangent
    rotation first: xi = (w, v).
    """
    local = local_frame_covariance(covariance, relative_pose)
    order = [3, 4, 5, 0, 1, 2]
    return local[np.ix_(order, order)]


def floored_covariance(covariance: np.ndarray, min_sigma_translation: float,
                       min_sigma_rotation: float) -> np.ndarray:
    """Return the covariance raised to at least the floor sigmas in every direction.

    In the units of the floors (each axis divided by its floor sigma) eigenvalues below 1 become
    1: the result is >= diag(floor^2) and >= the input, and keeps the input's larger directions
    and correlations. A singular input (a direction unobserved) becomes invertible.
    """
    scale = np.array([min_sigma_translation] * 3 + [min_sigma_rotation] * 3)
    unit = covariance / np.outer(scale, scale)
    values, vectors = np.linalg.eigh(0.5 * (unit + unit.T))
    unit = (vectors * np.maximum(values, 1.0)) @ vectors.T
    out = unit * np.outer(scale, scale)
    return 0.5 * (out + out.T)


def _robust_kernel(name: str, width: float) -> gtsam.noiseModel.mEstimator.Base | None:
    if name == 'none':
        return None
    kernels = gtsam.noiseModel.mEstimator
    makers = {'cauchy': kernels.Cauchy, 'huber': kernels.Huber,
              'geman_mcclure': kernels.GemanMcClure}
    return makers[name].Create(width)


class PoseGraph:
    """Keyframe poses optimised from odometry and loop closures (ISAM2, robust loops)."""

    def __init__(self, settings: PoseGraphSettings | None = None) -> None:
        self.settings = settings or PoseGraphSettings()
        self._kernel = _robust_kernel(self.settings.robust_kernel,
                                      self.settings.robust_kernel_width)
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(RELINEARIZE_THRESHOLD)
        params.relinearizeSkip = 1
        self._isam = gtsam.ISAM2(params)
        self._keys: list[int] = []
        self._index: dict[int, int] = {}  # key -> GTSAM variable (its position in _keys)
        self._odometry: list[np.ndarray] = []
        self._poses: list[np.ndarray] = []  # optimised, or predicted since the last update
        self._odometry_edges: list[tuple[int, int, gtsam.Pose3, np.ndarray]] = []
        self._loops: list[_LoopFactor] = []
        self._new_factors = gtsam.NonlinearFactorGraph()
        self._new_values = gtsam.Values()
        self._new_loops = 0
        self._params = params
        self._prior: gtsam.PriorFactorPose3 | None = None

    # -- building ----------------------------------------------------------------------------
    def add_keyframe(self, key: int, odometry_pose: np.ndarray) -> None:
        """Add a keyframe: `key` its sensor stamp (ns, increasing), its base pose in odom."""
        if isinstance(key, bool) or not isinstance(key, int | np.integer):
            raise PoseGraphError(f'keyframe key must be an integer stamp in ns, got {key!r}')
        key = int(key)
        if key in self._index:
            raise PoseGraphError(f'keyframe {key} is already in the graph')
        if self._keys and key < self._keys[-1]:
            raise PoseGraphError(f'keyframe {key} is older than the latest keyframe '
                                 f'{self._keys[-1]}: keys must increase')
        odometry_pose = _checked_pose(odometry_pose, f'odometry pose of keyframe {key}').copy()
        variable = len(self._keys)
        if not self._keys:
            guess = odometry_pose
            self._prior = gtsam.PriorFactorPose3(
                variable, _gtsam_pose(odometry_pose),
                gtsam.noiseModel.Isotropic.Sigma(6, PRIOR_SIGMA))
            self._new_factors.add(self._prior)
        else:
            increment = np.linalg.inv(self._odometry[-1]) @ odometry_pose
            sigmas = self._odometry_sigmas(increment)
            measured = _gtsam_pose(increment)
            self._new_factors.add(gtsam.BetweenFactorPose3(
                variable - 1, variable, measured, gtsam.noiseModel.Diagonal.Sigmas(sigmas)))
            self._odometry_edges.append((variable - 1, variable, measured, sigmas))
            guess = self._poses[-1] @ increment
        self._new_values.insert(variable, _gtsam_pose(guess))
        self._keys.append(key)
        self._index[key] = variable
        self._odometry.append(odometry_pose)
        self._poses.append(guess)

    def _odometry_sigmas(self, increment: np.ndarray) -> np.ndarray:
        """Return the odometry factor's sigmas (GTSAM order: rotation, then translation)."""
        s = self.settings
        distance = float(np.linalg.norm(increment[:3, 3]))
        angle = _rotation_angle(increment[:3, :3])
        translation = max(s.odometry_min_sigma_translation_m,
                          s.odometry_translation_sigma_per_m * distance)
        rotation = max(s.odometry_min_sigma_rotation_rad,
                       s.odometry_rotation_sigma_per_m * distance
                       + s.odometry_rotation_sigma_per_rad * angle)
        return np.array([rotation] * 3 + [translation] * 3)

    def add_loop(self, key_from: int, key_to: int, relative_pose: np.ndarray,
                 covariance: np.ndarray | None) -> bool:
        """Add a loop T_from_to with its covariance (ours, 6x6 or a message's 36 values).

        A covariance of None or all -1 is unknown: the settings' loop sigmas stand in.

        Return False when a keyframe is not in the graph (the caller may retry once it is).
        """
        if key_from == key_to:
            raise PoseGraphError(f'a loop needs two keyframes, got {key_from} twice')
        relative_pose = _checked_pose(relative_pose,
                                      f'relative pose of loop {key_from} -> {key_to}').copy()
        covariance = self._loop_covariance(covariance, key_from, key_to)
        if key_from not in self._index or key_to not in self._index:
            return False
        gaussian = gtsam.noiseModel.Gaussian.Covariance(
            to_gtsam_covariance(covariance, relative_pose))
        loop = _LoopFactor(key_from, key_to, relative_pose, gaussian)
        self._new_factors.add(self._loop_factor(loop))
        self._loops.append(loop)
        self._new_loops += 1
        return True

    def _loop_factor(self, loop: _LoopFactor) -> gtsam.BetweenFactorPose3:
        noise = loop.gaussian if self._kernel is None else gtsam.noiseModel.Robust.Create(
            self._kernel, loop.gaussian)
        return gtsam.BetweenFactorPose3(self._index[loop.key_from], self._index[loop.key_to],
                                        _gtsam_pose(loop.relative_pose), noise)

    def _loop_covariance(self, covariance: np.ndarray | None, key_from: int,
                         key_to: int) -> np.ndarray:
        """Return the floored loop covariance in our convention (defaults when unknown)."""
        s = self.settings
        what = f'covariance of loop {key_from} -> {key_to}'
        if covariance is not None:
            covariance = np.asarray(covariance, dtype=np.float64)
            if covariance.shape not in ((6, 6), (36,)):
                raise PoseGraphError(f'{what} must be 6x6, got shape {covariance.shape}')
            covariance = covariance.reshape(6, 6)
            if np.all(covariance == -1.0):
                covariance = None
        if covariance is None:
            covariance = np.diag([s.loop_sigma_translation_m ** 2] * 3
                                 + [s.loop_sigma_rotation_rad ** 2] * 3)
        if not np.isfinite(covariance).all():
            raise PoseGraphError(f'{what} has non-finite values')
        size = float(np.abs(covariance).max())
        if np.abs(covariance - covariance.T).max() > 1e-9 * size:
            raise PoseGraphError(f'{what} is not symmetric')
        if np.linalg.eigvalsh(covariance)[0] < -1e-9 * size:
            raise PoseGraphError(f'{what} is not positive semi-definite')
        return floored_covariance(covariance, s.loop_min_sigma_translation_m,
                                  s.loop_min_sigma_rotation_rad)

    # -- solving -----------------------------------------------------------------------------
    def update(self) -> float:
        """Optimise with what was added since the last update; return the seconds it took.

        Should the solver fail (it raises on a system it cannot solve), the graph is rebuilt
        without the loops added since the last update, and PoseGraphError says so: one bad
        batch never wedges the graph (ISAM2 keeps a failed batch's variables).
        """
        if self._new_factors.size() == 0:
            return 0.0
        start = time.perf_counter()
        try:
            self._isam.update(self._new_factors, self._new_values)
            if self._new_loops:
                for _ in range(self.settings.loop_iterations):
                    if not self._isam.update().getVariablesRelinearized():
                        break
        except RuntimeError as err:
            dropped = self._rebuild_without_new_loops()
            raise PoseGraphError(f'the solver failed ({err}); the graph was rebuilt without '
                                 f'the {dropped} loop(s) added since the last update') from None
        finally:
            self._new_factors = gtsam.NonlinearFactorGraph()
            self._new_values = gtsam.Values()
            self._new_loops = 0
        self._read_estimate()
        return time.perf_counter() - start

    def _read_estimate(self) -> None:
        estimate = self._isam.calculateEstimate()
        self._poses = [estimate.atPose3(i).matrix() for i in range(len(self._keys))]

    def _rebuild_without_new_loops(self) -> int:
        """Start ISAM2 afresh from every factor but the new loops; return how many were dropped."""
        dropped = self._new_loops
        if dropped:
            del self._loops[-dropped:]
        graph = gtsam.NonlinearFactorGraph()
        graph.add(self._prior)
        for i, j, measured, sigmas in self._odometry_edges:
            graph.add(gtsam.BetweenFactorPose3(i, j, measured,
                                               gtsam.noiseModel.Diagonal.Sigmas(sigmas)))
        for loop in self._loops:
            graph.add(self._loop_factor(loop))
        values = gtsam.Values()
        for i, pose in enumerate(self._poses):
            values.insert(i, _gtsam_pose(pose))
        self._isam = gtsam.ISAM2(self._params)
        self._isam.update(graph, values)
        self._read_estimate()
        return dropped

    # -- reading -----------------------------------------------------------------------------
    @property
    def keys(self) -> list[int]:
        """The keyframe keys, oldest first."""
        return list(self._keys)

    @property
    def newest_key(self) -> int | None:
        """The latest keyframe's key; None before the first."""
        return self._keys[-1] if self._keys else None

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def loop_count(self) -> int:
        """Loops in the graph."""
        return len(self._loops)

    def _variable(self, key: int) -> int:
        if key not in self._index:
            raise PoseGraphError(f'keyframe {key} is not in the graph')
        return self._index[key]

    def pose(self, key: int) -> np.ndarray:
        """Return a keyframe's optimised base pose in the map frame (4x4).

        Keyframes added since the last update are predicted from odometry.
        """
        return self._poses[self._variable(key)].copy()

    def poses(self) -> dict[int, np.ndarray]:
        """Return every keyframe's optimised pose, by key (see ``pose``)."""
        return {key: pose.copy() for key, pose in zip(self._keys, self._poses)}

    def odometry_pose(self, key: int) -> np.ndarray:
        """Return a keyframe's base pose in the odometry frame, as it was added."""
        return self._odometry[self._variable(key)].copy()

    def map_from_odom(self) -> np.ndarray:
        """Return the map -> odom transform a node publishes (identity before any keyframe).

        It is the latest keyframe's optimised pose times the inverse of its odometry pose.
        """
        if not self._keys:
            return np.eye(4)
        return self._poses[-1] @ np.linalg.inv(self._odometry[-1])

    def loops(self) -> list[LoopEdge]:
        """Return the loops with their whitened error and robust weight at the current poses."""
        out = []
        for loop in self._loops:
            a = self._poses[self._index[loop.key_from]]
            b = self._poses[self._index[loop.key_to]]
            residual = gtsam.Pose3.Logmap(_gtsam_pose(loop.relative_pose).between(
                _gtsam_pose(np.linalg.inv(a) @ b)))
            distance = float(np.linalg.norm(loop.gaussian.whiten(residual)))
            weight = 1.0 if self._kernel is None else float(self._kernel.weight(distance))
            out.append(LoopEdge(loop.key_from, loop.key_to, loop.relative_pose.copy(),
                                distance, weight))
        return out

    def write_g2o(self, path: str | Path) -> Path:
        """Write the graph with the current poses in g2o format (vertex i is ``keys[i]``).

        Loop edges carry their Gaussian information (g2o has no robust kernels); the first
        keyframe's prior is not written (g2o has no priors). gtsam.writeG2o prints 6 significant
        digits.
        """
        path = Path(path)
        graph = gtsam.NonlinearFactorGraph()
        for i, j, measured, sigmas in self._odometry_edges:
            graph.add(gtsam.BetweenFactorPose3(i, j, measured,
                                               gtsam.noiseModel.Diagonal.Sigmas(sigmas)))
        for loop in self._loops:
            graph.add(gtsam.BetweenFactorPose3(self._index[loop.key_from],
                                               self._index[loop.key_to],
                                               _gtsam_pose(loop.relative_pose), loop.gaussian))
        values = gtsam.Values()
        for i, pose in enumerate(self._poses):
            values.insert(i, _gtsam_pose(pose))
        gtsam.writeG2o(graph, values, str(path))
        return path

    def factor_graph(self) -> tuple[gtsam.NonlinearFactorGraph, gtsam.Values]:
        """Return every factor added (robust loops included) and the current poses.

        For a batch solver on the same problem (checks, benchmarks).
        """
        graph = gtsam.NonlinearFactorGraph()
        graph.push_back(self._isam.getFactorsUnsafe())
        graph.push_back(self._new_factors)
        values = gtsam.Values()
        for i, pose in enumerate(self._poses):
            values.insert(i, _gtsam_pose(pose))
        return graph, values
