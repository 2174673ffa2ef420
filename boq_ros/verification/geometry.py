"""Robust two-view geometry with the covariance of its estimate.

Three estimators, by what the keyframes carry:

- ``pnp``: the match keyframe's keypoints have depth: 3D points in the match camera against
  the query's pixels, RANSAC then Levenberg-Marquardt on the inliers; a metric pose.
- ``essential``: both cameras are calibrated but no depth: rotation and the direction of the
  translation (the essential matrix cannot see scale), RANSAC then Gauss-Newton on the Sampson
  errors of the inliers.
- ``fundamental``: no intrinsics: an inlier test only, no pose.

Inliers along one line in an image (collinear points, or a plane through a camera centre) fit
a whole family of models: every estimator refuses them (GeometryError) rather than return an
arbitrary one.

Poses are ``T_query_match``: the match camera's pose in the query camera's frame (optical
frames, x right, y down, z forward), so ``X_query = R @ X_match + t``.

Covariance (6x6, order x y z rx ry rz like geometry_msgs/PoseWithCovariance): for a
perturbation applied in the query frame, ``R' = exp([d_rot]x) R``, ``t' = t + d_t``, it is
``s^2 (J^T J)^-1`` with J the Jacobian of the inliers' residuals (reprojection error in pixels
for PnP, Sampson error for the essential matrix) and ``s^2`` their variance estimated from the
residuals themselves (sum of squares over degrees of freedom), at least ``MIN_SIGMA_PX^2``.
The depth of the 3D points is treated as exact, so depth noise is not in it.
"""
from dataclasses import dataclass

import cv2
import numpy as np

RANSAC_CONFIDENCE = 0.999
RANSAC_ITERATIONS = 2000
RANSAC_SEED = 0
MIN_SIGMA_PX = 0.3
"""Floor of the residuals' standard deviation: keypoints are not located better than this, so
two identical images (a parked robot) cannot claim a pose known exactly."""
"""OpenCV's RNG is seeded before every robust estimate: the same pair always gives the same
inliers, so the live node and an offline run decide alike."""


DEGENERATE_SPREAD = 2.0
"""Inliers whose pixels lie within this many RANSAC thresholds (standard deviation across their
principal line) of one line in either image are degenerate: a line of points (or a plane through
a camera centre) fits a whole family of models, so the estimate is arbitrary."""


class GeometryError(ValueError):
    """Raised when an estimator could not produce a model (degenerate input)."""


def _check_spread(threshold_px: float, **pixels: np.ndarray) -> None:
    """Raise GeometryError when the inliers' pixels in one image lie along one line."""
    for image, uv in pixels.items():
        centred = uv - uv.mean(axis=0)
        across = float(np.sqrt(max(np.linalg.eigvalsh(centred.T @ centred / len(uv))[0], 0.0)))
        if across < DEGENERATE_SPREAD * threshold_px:
            raise GeometryError(f'degenerate: the {len(uv)} inliers lie along one line in the '
                                f'{image} image ({across:.1f} px across it)')


@dataclass
class Geometry:
    """A robustly estimated model and its support."""

    estimator: str  # 'pnp', 'essential' or 'fundamental'
    inliers: np.ndarray  # bool mask over the correspondences
    rotation: np.ndarray | None = None  # 3x3 R of T_query_match
    translation: np.ndarray | None = None  # t of T_query_match (unit norm for 'essential')
    covariance: np.ndarray | None = None  # 6x6, see the module docstring
    rms_px: float = 0.0  # root mean square residual of the inliers, pixels

    @property
    def count(self) -> int:
        """Return the number of inliers."""
        return int(self.inliers.sum())


def skew(v: np.ndarray) -> np.ndarray:
    """Return the cross-product matrices of vectors [..., 3]."""
    out = np.zeros((*v.shape[:-1], 3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def _rodrigues(v: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(v, np.float64).reshape(3, 1))[0]


def _covariance(jac: np.ndarray, residuals: np.ndarray, dof_used: int) -> np.ndarray | None:
    """Return s^2 (J^T J)^-1 for residuals [n] and J [n, 6]; None if not observable."""
    dof = len(residuals) - dof_used
    if dof <= 0:
        return None
    sigma2 = max(float(residuals @ residuals) / dof, MIN_SIGMA_PX ** 2)
    info = jac.T @ jac
    if not np.all(np.isfinite(info)) or np.linalg.cond(info) > 1e12:
        return None
    cov = sigma2 * np.linalg.inv(info)
    return 0.5 * (cov + cov.T)


# -- PnP ------------------------------------------------------------------------------------
def _reprojection(points: np.ndarray, pixels: np.ndarray, k: np.ndarray, rotation: np.ndarray,
                  translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals [2n] and their Jacobian [2n, 6] (d_t, d_rot applied in the query frame)."""
    q = points @ rotation.T + translation
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    res = np.stack([fx * x / z + cx - pixels[:, 0], fy * y / z + cy - pixels[:, 1]], axis=1)
    dproj = np.zeros((len(q), 2, 3))
    dproj[:, 0, 0], dproj[:, 0, 2] = fx / z, -fx * x / z ** 2
    dproj[:, 1, 1], dproj[:, 1, 2] = fy / z, -fy * y / z ** 2
    # dq/d_t = I; dq/d_rot = -[q - t]x (a rotation about the query frame's origin).
    dq = np.concatenate([np.broadcast_to(np.eye(3), (len(q), 3, 3)),
                         -skew(q - translation)], axis=2)
    jac = np.einsum('nij,njk->nik', dproj, dq)
    return res.reshape(-1), jac.reshape(-1, 6)


def pnp(points_match: np.ndarray, pixels_query: np.ndarray, k_query: np.ndarray,
        threshold_px: float) -> Geometry:
    """Estimate T_query_match from 3D points of the match camera and the query's pixels."""
    points = np.ascontiguousarray(points_match, np.float64).reshape(-1, 3)
    pixels = np.ascontiguousarray(pixels_query, np.float64).reshape(-1, 2)
    if len(points) < 6:
        raise GeometryError(f'{len(points)} correspondences with depth: PnP needs 6')
    usac = cv2.UsacParams()  # MAGSAC++ with local optimisation: a wrong pair costs ~3 ms, not
    usac.sampler = cv2.SAMPLING_UNIFORM  # the ~60 ms of plain RANSAC that never stops early
    usac.score = cv2.SCORE_METHOD_MAGSAC
    usac.loMethod = cv2.LOCAL_OPTIM_SIGMA
    usac.threshold, usac.confidence = threshold_px, RANSAC_CONFIDENCE
    usac.maxIterations, usac.randomGeneratorState = RANSAC_ITERATIONS, RANSAC_SEED
    cv2.setRNGSeed(RANSAC_SEED)
    try:
        found = cv2.solvePnPRansac(points, pixels, k_query, None, params=usac)
        ok, rvec, tvec, idx = found[0], found[-3], found[-2], found[-1]
    except cv2.error as err:
        raise GeometryError(f'PnP failed: {err.err or err}') from None
    if not ok or idx is None or len(idx) < 6:
        raise GeometryError('PnP found no pose with 6 inliers')
    mask = np.zeros(len(points), bool)
    for _ in range(2):  # refine on the inliers, then take the inliers of the refined pose
        sel = np.flatnonzero(mask) if mask.any() else idx.reshape(-1)
        rvec, tvec = cv2.solvePnPRefineLM(points[sel], pixels[sel], k_query, None, rvec, tvec)
        rotation, translation = _rodrigues(rvec), tvec.reshape(3)
        res, _ = _reprojection(points, pixels, k_query, rotation, translation)
        depth = points @ rotation[2] + translation[2]
        mask = (np.hypot(res[0::2], res[1::2]) <= threshold_px) & (depth > 0)
        if mask.sum() < 6:
            raise GeometryError('PnP: fewer than 6 inliers after refinement')
    _check_spread(threshold_px, query=pixels[mask])
    res, jac = _reprojection(points[mask], pixels[mask], k_query, rotation, translation)
    return Geometry('pnp', mask, rotation, translation, _covariance(jac, res, 6),
                    float(np.sqrt(np.mean(res ** 2) * 2)))


# -- essential matrix -----------------------------------------------------------------------
def _normalised(pixels: np.ndarray, k: np.ndarray) -> np.ndarray:
    return (pixels - k[:2, 2]) / np.array([k[0, 0], k[1, 1]])


def _sampson(xm: np.ndarray, xq: np.ndarray, rotation: np.ndarray,
             translation: np.ndarray) -> np.ndarray:
    """Sampson distances (normalised units) of the correspondences under E = [t]x R."""
    e = skew(translation) @ rotation
    hm = np.concatenate([xm, np.ones((len(xm), 1))], axis=1)
    hq = np.concatenate([xq, np.ones((len(xq), 1))], axis=1)
    ex, etx = hm @ e.T, hq @ e
    num = np.einsum('ij,ij->i', hq, ex)
    den = np.sqrt(ex[:, 0] ** 2 + ex[:, 1] ** 2 + etx[:, 0] ** 2 + etx[:, 1] ** 2)
    return num / np.maximum(den, 1e-12)


def essential(pixels_match: np.ndarray, k_match: np.ndarray, pixels_query: np.ndarray,
              k_query: np.ndarray, threshold_px: float) -> Geometry:
    """Estimate rotation and translation direction of T_query_match from calibrated pixels."""
    pm = np.asarray(pixels_match, np.float64).reshape(-1, 2)
    pq = np.asarray(pixels_query, np.float64).reshape(-1, 2)
    if len(pm) < 8:
        raise GeometryError(f'{len(pm)} correspondences: the essential matrix needs 8')
    xm, xq = _normalised(pm, k_match), _normalised(pq, k_query)
    focal = float(np.mean([k_match[0, 0], k_match[1, 1], k_query[0, 0], k_query[1, 1]]))
    threshold = threshold_px / focal
    cv2.setRNGSeed(RANSAC_SEED)
    try:
        e, mask = cv2.findEssentialMat(xm, xq, np.eye(3), method=cv2.USAC_MAGSAC,
                                       prob=RANSAC_CONFIDENCE, threshold=threshold,
                                       maxIters=RANSAC_ITERATIONS)
        if e is None or e.shape != (3, 3):
            raise GeometryError('no essential matrix fits the correspondences')
        _, rotation, tvec, mask = cv2.recoverPose(e, xm, xq, np.eye(3), mask=mask.copy())
    except cv2.error as err:
        raise GeometryError(f'essential matrix failed: {err.err or err}') from None
    translation = tvec.reshape(3)
    inliers = mask.reshape(-1) > 0
    if inliers.sum() < 5:
        raise GeometryError('fewer than 5 correspondences in front of both cameras')
    # RANSAC's model is not the least-squares fit of its inliers (with outliers about, 5-10
    # times the error the covariance states): refine, drop what no longer fits, refine again.
    for _ in range(2):
        rotation, translation, res, jac = _refine_essential(xm[inliers], xq[inliers], rotation,
                                                            translation, focal)
        keep = np.abs(res) <= threshold_px
        if keep.all():
            break
        inliers[np.flatnonzero(inliers)[~keep]] = False
        if inliers.sum() < 5:
            raise GeometryError('fewer than 5 correspondences fit the refined essential matrix')
    else:
        res, jac = _sampson_jacobian(xm[inliers], xq[inliers], rotation, translation, focal)
    _check_spread(threshold_px, match=pm[inliers], query=pq[inliers])
    # Scale is not observed: the translation's covariance is that of its direction (rank 2);
    # the caller scales it and states the scale's own uncertainty.
    cov = None
    dof = len(res) - 5
    if dof > 0:
        sigma2 = max(float(res @ res) / dof, MIN_SIGMA_PX ** 2)
        cov = sigma2 * np.linalg.pinv(jac.T @ jac, rcond=1e-9)
        cov = 0.5 * (cov + cov.T)
    return Geometry('essential', inliers, rotation, translation, cov,
                    float(np.sqrt(np.mean(res ** 2))))


def _moved(rotation: np.ndarray, translation: np.ndarray,
           delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the perturbation (d_t, d_rot) of the module docstring; the direction stays unit."""
    moved = translation + delta[:3]
    return _rodrigues(delta[3:]) @ rotation, moved / np.linalg.norm(moved)


def _sampson_jacobian(xm: np.ndarray, xq: np.ndarray, rotation: np.ndarray,
                      translation: np.ndarray, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Sampson errors (pixels) [n] and their Jacobian [n, 6] in the module's convention."""
    res = _sampson(xm, xq, rotation, translation) * focal
    jac = np.zeros((len(res), 6))
    step = 1e-6
    for i in range(6):  # numerical: Sampson's error has no short analytic Jacobian
        d = np.zeros(6)
        d[i] = step
        jac[:, i] = (_sampson(xm, xq, *_moved(rotation, translation, d)) * focal - res) / step
    return res, jac


def _refine_essential(xm: np.ndarray, xq: np.ndarray, rotation: np.ndarray,
                      translation: np.ndarray, focal: float, iterations: int = 10
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Newton on the Sampson errors; return R, t, residuals and Jacobian at the end."""
    res, jac = _sampson_jacobian(xm, xq, rotation, translation, focal)
    for _ in range(iterations):
        delta = np.linalg.lstsq(jac, -res, rcond=1e-8)[0]  # minimum norm: scale is free
        r2, t2 = _moved(rotation, translation, delta)
        res2, jac2 = _sampson_jacobian(xm, xq, r2, t2, focal)
        if not res2 @ res2 < res @ res:
            break
        rotation, translation, res, jac = r2, t2, res2, jac2
        if np.abs(delta).max() < 1e-10:
            break
    return rotation, translation, res, jac


def fundamental(pixels_match: np.ndarray, pixels_query: np.ndarray,
                threshold_px: float) -> Geometry:
    """Count the correspondences consistent with one fundamental matrix (no pose)."""
    pm = np.asarray(pixels_match, np.float64).reshape(-1, 2)
    pq = np.asarray(pixels_query, np.float64).reshape(-1, 2)
    if len(pm) < 8:
        raise GeometryError(f'{len(pm)} correspondences: the fundamental matrix needs 8')
    cv2.setRNGSeed(RANSAC_SEED)
    try:
        f, mask = cv2.findFundamentalMat(pm, pq, cv2.USAC_MAGSAC, threshold_px,
                                         RANSAC_CONFIDENCE, RANSAC_ITERATIONS)
    except cv2.error as err:
        raise GeometryError(f'fundamental matrix failed: {err.err or err}') from None
    if f is None or mask is None:
        raise GeometryError('no fundamental matrix fits the correspondences')
    inliers = mask.reshape(-1) > 0
    if inliers.sum() < 2:
        raise GeometryError('no fundamental matrix fits the correspondences')
    _check_spread(threshold_px, match=pm[inliers], query=pq[inliers])
    return Geometry('fundamental', inliers)
