"""The detector's verification test: local features of query and candidate, robust geometry.

For one candidate: match the query's local features (computed by the pipeline, given to the
detector with the query) against those the map stored with the candidate, then, by what the two
keyframes carry (docs/verification.md):

1. candidate keyframe with depth, query calibrated: PnP, a metric pose (``PoseKind.METRIC``);
2. query with depth, candidate calibrated: PnP the other way, the pose inverted (metric);
3. both calibrated: essential matrix, rotation + translation direction, scaled by the odometry
   distance between the two keyframes when both have poses of the same session;
4. otherwise: fundamental-matrix inlier test, no pose (``min_inliers_uncalibrated``).

A candidate is verified when its inliers reach the estimator's threshold
(``min_inliers_pnp``, ``min_inliers_essential``, ``min_inliers_fundamental``) and
``min_inlier_ratio``; the reason says which test failed otherwise.
"""
from dataclasses import dataclass
import math
import time
from typing import Any

import cv2
import numpy as np

from boq_ros.detector import Candidate, PoseKind, Verification
from boq_ros.keyframe_map import KeyframeMap, KeyframeMeta, LocalFeatures
from boq_ros.settings import VerificationSettings
from boq_ros.trajectory import matrix_from_quaternion, quaternion_from_matrix
from boq_ros.verification import geometry
from boq_ros.verification.camera import CameraModel, intrinsics_matrix
from boq_ros.verification.features import (
    FeatureError,
    FeatureKind,
    extract_features,
    make_feature_kind,
)


def _points_3d(features: LocalFeatures, rows: np.ndarray) -> np.ndarray:
    fx, fy, cx, cy = features.intrinsics
    z = features.depth[rows].astype(np.float64)
    uv = features.keypoints[rows].astype(np.float64)
    return np.stack([(uv[:, 0] - cx) / fx * z, (uv[:, 1] - cy) / fy * z, z], axis=1)


def pose_matrix(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Return the 4x4 rigid transform [R t; 0 1]."""
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, translation
    return out


def perturbed(pose: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Apply the covariance convention's perturbation (d_t, d_rot) to a 4x4 pose."""
    rot = cv2.Rodrigues(np.asarray(delta[3:], np.float64).reshape(3, 1))[0]
    return pose_matrix(rot @ pose[:3, :3], pose[:3, 3] + delta[:3])


def rotation_vector(rot: np.ndarray) -> np.ndarray:
    """Return the axis-angle vector of a rotation matrix, exact for tiny angles too.

    (cv2.Rodrigues returns 0 below about 1e-5 rad, which would zero numerical Jacobians.)
    """
    w = 0.5 * np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    sin, cos = float(np.linalg.norm(w)), (float(np.trace(rot)) - 1.0) / 2.0
    if cos < -0.99:  # near 180 degrees the antisymmetric part loses the axis
        return cv2.Rodrigues(rot)[0].reshape(3)
    return w if sin < 1e-300 else w * math.atan2(sin, cos) / sin


def difference(pose: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Return the perturbation (d_t, d_rot) that takes `reference` to `pose`."""
    rot = rotation_vector(pose[:3, :3] @ reference[:3, :3].T)
    return np.concatenate([pose[:3, 3] - reference[:3, 3], rot])


def propagate(covariance: np.ndarray, pose: np.ndarray, function: Any) -> np.ndarray:
    """Return the covariance of function(pose) to first order (numerical Jacobian)."""
    out = function(pose)
    jac = np.zeros((6, 6))
    step = 1e-6
    for i in range(6):
        d = np.zeros(6)
        d[i] = step
        jac[:, i] = difference(function(perturbed(pose, d)), out) / step
    cov = jac @ covariance @ jac.T
    return 0.5 * (cov + cov.T)


def local_frame_covariance(covariance: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Return a covariance of ours in the pose's own frame (g2o's, GTSAM's, RTAB-Map's).

    Ours perturbs in the frame the pose is expressed in: t' = t + d_t, R' = exp([d_rot]x) R.
    Optimisers perturb in the pose's frame: T' = T Exp(v, w), so t' = t + R v, R' = R exp([w]x)
    to first order; equal when v = R^T d_t and w = R^T d_rot. Same order (x y z rx ry rz).
    """
    rotation_t = np.asarray(pose, dtype=np.float64)[:3, :3].T
    jacobian = np.zeros((6, 6))
    jacobian[:3, :3] = jacobian[3:, 3:] = rotation_t
    out = jacobian @ np.asarray(covariance, dtype=np.float64) @ jacobian.T
    return 0.5 * (out + out.T)


def transform_from(xyz_quaternion: list[float] | tuple[float, ...]) -> np.ndarray:
    """Return the 4x4 transform of (x y z qx qy qz qw)."""
    values = [float(v) for v in xyz_quaternion]
    return pose_matrix(matrix_from_quaternion(values[3:]), np.array(values[:3]))


def xyz_quaternion(pose: np.ndarray) -> tuple[float, ...]:
    """Return (x y z qx qy qz qw) of a 4x4 transform, qw >= 0 (the inverse of transform_from)."""
    q = quaternion_from_matrix(pose[:3, :3])
    if q[3] < 0:
        q = -q
    return (*(float(v) for v in pose[:3, 3]), *(float(v) for v in q))


def in_base_frame(result: Verification, camera_in_base: np.ndarray) -> None:
    """Fill the base-frame pose and covariance of a posed result (T_b_c T_qm T_c_b)."""
    if result.relative_pose is None:
        return
    base_from_camera, camera_from_base = camera_in_base, np.linalg.inv(camera_in_base)

    def to_base(pose: np.ndarray) -> np.ndarray:
        return base_from_camera @ pose @ camera_from_base

    result.relative_pose_base = to_base(result.relative_pose)
    if result.covariance is not None:
        result.covariance_base = propagate(result.covariance, result.relative_pose, to_base)


def relocalized(match_pose: tuple[float, ...], relative_pose_base: np.ndarray,
                covariance_base: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the query's pose in the match pose's frame, with its covariance in that frame.

    That is T_map_match inv(T_query_match); None when the match pose has no orientation.
    """
    if any(math.isnan(v) for v in match_pose):
        return None
    map_from_match = transform_from(match_pose)

    def compose(relative: np.ndarray) -> np.ndarray:
        return map_from_match @ np.linalg.inv(relative)

    return compose(relative_pose_base), propagate(covariance_base, relative_pose_base, compose)


@dataclass
class _Pair:
    query: LocalFeatures
    match: LocalFeatures
    pairs: np.ndarray  # [M, 2] rows into (query, match)


class GeometricVerifier:
    """Verifies loop candidates against the local features the keyframe map stores."""

    def __init__(self, settings: VerificationSettings, keyframe_map: KeyframeMap | None = None,
                 kind: FeatureKind | None = None) -> None:
        self.settings = settings
        self.map = keyframe_map
        self.kind = kind or make_feature_kind(settings)
        self.camera_in_base = transform_from(settings.camera_in_base)

    @property
    def top_n(self) -> int:
        """Return how many candidates the detector may try per query."""
        return self.settings.verify_top_n

    @property
    def budget_s(self) -> float:
        """Return the per-query time budget."""
        return self.settings.verify_budget_s

    def features(self, image: np.ndarray, encoding: str = 'rgb8',
                 camera: CameraModel | None = None,
                 depth: np.ndarray | None = None) -> LocalFeatures:
        """Compute what a keyframe stores for verification (FeatureError if impossible)."""
        return extract_features(self.kind, image, encoding, camera, depth,
                                tuple(self.settings.depth_range_m))

    # -- the detector's slot ----------------------------------------------------------------
    def verify(self, query: KeyframeMeta, candidate: Candidate,
               features: LocalFeatures | None) -> Verification:
        """Verify one candidate against the query's local features (None: it has none)."""
        start = time.perf_counter()
        stored = None
        if features is not None and self.map is not None:
            stored = self.map.features(candidate.keyframe_id)
        if features is None:
            result = Verification(False, 'the query keyframe has no local features',
                                  'no_query_features')
        elif stored is None:
            result = Verification(False, 'the candidate keyframe has no stored local features '
                                         '(a map built without verification)',
                                  'no_match_features')
        else:
            result = self.verify_features(features, stored, query, candidate.meta)
        result.seconds = time.perf_counter() - start
        return result

    def verify_features(self, query: LocalFeatures, match: LocalFeatures,
                        query_meta: KeyframeMeta | None = None,
                        match_meta: KeyframeMeta | None = None) -> Verification:
        """Verify two keyframes' features; the metadata give the odometry scale if any."""
        if query.kind != match.kind:
            return Verification(False, f'feature kinds differ: query {query.kind}, candidate '
                                       f'{match.kind}', 'kinds_differ')
        try:
            pair = _Pair(query, match, self.kind.match(query, match))
        except FeatureError as err:  # same kind, other descriptor size (another model)
            return Verification(False, str(err), 'kinds_differ')
        matches = len(pair.pairs)
        cfg = self.settings
        calibrated = query.intrinsics is not None and match.intrinsics is not None
        need = min(cfg.min_inliers_pnp, cfg.min_inliers_essential) if calibrated else (
            cfg.min_inliers_fundamental)
        if matches < need:
            return Verification(False, f'{matches} matches < {need} inliers needed',
                                'few_matches', matches=matches)
        try:
            result = self._geometry(pair, query_meta, match_meta) if calibrated else (
                self._uncalibrated(pair))
        except geometry.GeometryError as err:
            return Verification(False, str(err), 'geometry', matches=matches)
        ratio = result.inlier_ratio
        need = {'pnp': cfg.min_inliers_pnp, 'essential': cfg.min_inliers_essential,
                'fundamental': cfg.min_inliers_fundamental}[result.estimator]
        if result.inliers < need:
            result.reason = (f'{result.inliers} inliers < {need} ({result.estimator}, '
                             f'{matches} matches)')
            result.cause = 'few_inliers'
        elif ratio < self.settings.min_inlier_ratio:
            result.reason = (f'inlier ratio {ratio:.2f} < {self.settings.min_inlier_ratio:g} '
                             f'({result.estimator})')
            result.cause = 'low_inlier_ratio'
        result.verified = not result.reason
        in_base_frame(result, self.camera_in_base)
        return result

    # -- geometry by what the keyframes carry -----------------------------------------------
    def _uncalibrated(self, pair: _Pair) -> Verification:
        q, m = pair.pairs[:, 0], pair.pairs[:, 1]
        geo = geometry.fundamental(pair.match.keypoints[m], pair.query.keypoints[q],
                                   self.settings.ransac_threshold_px)
        return Verification(False, matches=len(pair.pairs), inliers=geo.count,
                            estimator='fundamental')

    def _geometry(self, pair: _Pair, query_meta: KeyframeMeta | None,
                  match_meta: KeyframeMeta | None) -> Verification:
        q, m = pair.pairs[:, 0], pair.pairs[:, 1]
        thr = self.settings.ransac_threshold_px
        need = self.settings.min_inliers_pnp
        kq, km = intrinsics_matrix(pair.query.intrinsics), intrinsics_matrix(pair.match.intrinsics)
        matches = len(pair.pairs)
        for with_depth, other, forward in ((pair.match, pair.query, True),
                                           (pair.query, pair.match, False)):
            if with_depth.depth is None:
                continue
            rows_d, rows_o = (m, q) if forward else (q, m)
            known = np.isfinite(with_depth.depth[rows_d])
            if known.sum() < need:
                continue  # too little depth at the matches: the other side, or no depth
            geo = geometry.pnp(_points_3d(with_depth, rows_d[known]),
                               other.keypoints[rows_o[known]],
                               intrinsics_matrix(other.intrinsics), thr)
            pose, cov = pose_matrix(geo.rotation, geo.translation), geo.covariance
            if not forward:  # estimated T_match_query
                if cov is not None:
                    cov = propagate(cov, pose, np.linalg.inv)
                pose = np.linalg.inv(pose)
            return Verification(False, matches=matches, inliers=geo.count, estimator='pnp',
                                pose_kind=PoseKind.METRIC, relative_pose=pose, covariance=cov)
        geo = geometry.essential(pair.match.keypoints[m], km, pair.query.keypoints[q], kq, thr)
        pose, cov = pose_matrix(geo.rotation, geo.translation), geo.covariance
        scale = _odometry_distance(query_meta, match_meta)
        kind = PoseKind.UP_TO_SCALE if scale is None else PoseKind.ODOMETRY_SCALE
        if cov is not None:
            # The essential matrix does not see scale: the variance along the translation is
            # that of a scale known to 100 % (1 sigma) - odometry's distance between the
            # keyframes (bases, not cameras, and drifted), or 1 for a unit translation.
            s = 1.0 if scale is None else scale
            cov = cov.copy()
            cov[:3, :] *= s
            cov[:, :3] *= s
            direction = geo.translation / np.linalg.norm(geo.translation)
            cov[:3, :3] += s * s * np.outer(direction, direction)
        if scale is not None:
            pose[:3, 3] *= scale
        return Verification(False, matches=matches, inliers=geo.count, estimator='essential',
                            pose_kind=kind, relative_pose=pose, covariance=cov)


def _odometry_distance(a: KeyframeMeta | None, b: KeyframeMeta | None) -> float | None:
    """Odometry distance between two keyframes of one session with poses, else None."""
    if a is None or b is None or a.pose is None or b.pose is None:
        return None
    if a.session != b.session or a.pose_frame != b.pose_frame:
        return None
    distance = math.dist(a.pose[:3], b.pose[:3])
    return distance if distance > 0 else None


def verify_pair(query_image: np.ndarray, match_image: np.ndarray, *,
                query_camera: CameraModel | None = None,
                match_camera: CameraModel | None = None,
                query_depth: np.ndarray | None = None, match_depth: np.ndarray | None = None,
                settings: VerificationSettings | None = None,
                encoding: str = 'rgb8') -> Verification:
    """Verify two images directly (tests, benchmarks, a quick check of a camera setup)."""
    verifier = GeometricVerifier(settings or VerificationSettings())
    start = time.perf_counter()
    result = verifier.verify_features(
        verifier.features(query_image, encoding, query_camera, query_depth),
        verifier.features(match_image, encoding, match_camera, match_depth))
    result.seconds = time.perf_counter() - start
    return result
