"""Local features for geometric verification: the kinds, how each detects and matches.

Every kind is one entry of ``FEATURE_KINDS`` (name -> factory taking the verification
settings); adding a kind means adding a class with ``detect`` and ``match`` and one entry
there. :func:`extract_features` turns an image (plus its camera model and aligned depth) into
the :class:`~boq_ros.keyframe_map.LocalFeatures` the map stores: keypoints undistorted, depth
sampled at the keypoints.
"""
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from boq_ros.keyframe_map import LocalFeatures
from boq_ros.verification.camera import CameraModel

if TYPE_CHECKING:
    from boq_ros.settings import VerificationSettings

DEPTH_EDGE = 0.05
"""A keypoint's depth is kept only when its 3x3 neighbourhood agrees to this fraction: at an
object's edge the nearest depth pixel may belong to the background."""


class FeatureError(ValueError):
    """Raised when features cannot be computed (bad image, missing optional package)."""


class FeatureKind(Protocol):
    """One kind of local feature: detection on an image and matching of two keyframes."""

    kind: str

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return keypoints [N, 2] (pixels, float32) and descriptors [N, D] of a grey image."""

    def match(self, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        """Return index pairs [M, 2] (into a, into b) of putative correspondences."""


_TO_GRAY = {'rgb8': cv2.COLOR_RGB2GRAY, 'bgr8': cv2.COLOR_BGR2GRAY,
            'rgba8': cv2.COLOR_RGBA2GRAY, 'bgra8': cv2.COLOR_BGRA2GRAY}


def to_gray(image: np.ndarray, encoding: str) -> np.ndarray:
    """Return the 8-bit grey image every kind detects on (any canonical encoding)."""
    if encoding in _TO_GRAY:
        return cv2.cvtColor(image, _TO_GRAY[encoding])
    if encoding == 'mono16':
        return (image >> 8).astype(np.uint8)
    return image


def ratio_mutual_matches(distances_ab: np.ndarray, distances_ba_best: np.ndarray,
                         ratio: float) -> np.ndarray:
    """Lowe's ratio test in both directions plus the mutual-nearest check.

    `distances_ab` is the full [Na, Nb] distance matrix; returns index pairs [M, 2].
    """
    if distances_ab.shape[0] < 2 or distances_ab.shape[1] < 2:
        return np.zeros((0, 2), np.int64)
    order = np.argpartition(distances_ab, 1, axis=1)[:, :2]
    rows = np.arange(len(distances_ab))
    first, second = distances_ab[rows, order[:, 0]], distances_ab[rows, order[:, 1]]
    swap = first > second
    best = np.where(swap, order[:, 1], order[:, 0])
    d1, d2 = np.minimum(first, second), np.maximum(first, second)
    keep = d1 < ratio * d2
    mutual = distances_ba_best[best] == rows
    keep &= mutual
    return np.stack([rows[keep], best[keep]], axis=1).astype(np.int64)


class Sift:
    """OpenCV SIFT, L2 distances, ratio test + mutual check; descriptors stored as uint8."""

    kind = 'sift'

    def __init__(self, max_keypoints: int, ratio: float) -> None:
        self._sift = cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=0.02)
        self.ratio = ratio

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints, desc = self._sift.detectAndCompute(gray, None)
        points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
        if desc is None:
            return points, np.zeros((0, 128), np.uint8)
        # OpenCV's SIFT values are whole numbers in 0..255: uint8 holds them exactly.
        return points, np.clip(np.rint(desc), 0, 255).astype(np.uint8)

    def match(self, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
        if len(da) < 2 or len(db) < 2:
            return np.zeros((0, 2), np.int64)
        sq = (da * da).sum(1)[:, None] + (db * db).sum(1)[None, :] - 2.0 * (da @ db.T)
        dist = np.sqrt(np.maximum(sq, 0.0))
        return ratio_mutual_matches(dist, dist.argmin(axis=0), self.ratio)


class Orb:
    """OpenCV ORB, Hamming distances, ratio test + mutual check."""

    kind = 'orb'

    def __init__(self, max_keypoints: int, ratio: float) -> None:
        self._orb = cv2.ORB_create(nfeatures=max_keypoints)
        self.ratio = ratio

    def detect(self, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints, desc = self._orb.detectAndCompute(gray, None)
        points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
        return points, desc if desc is not None else np.zeros((0, 32), np.uint8)

    def match(self, a: LocalFeatures, b: LocalFeatures) -> np.ndarray:
        if len(a.descriptors) < 2 or len(b.descriptors) < 2:
            return np.zeros((0, 2), np.int64)
        bits_a = np.unpackbits(a.descriptors, axis=1).astype(np.float32)
        bits_b = np.unpackbits(b.descriptors, axis=1).astype(np.float32)
        # Hamming distance from dot products of the bit vectors.
        dist = bits_a.sum(1)[:, None] + bits_b.sum(1)[None, :] - 2.0 * (bits_a @ bits_b.T)
        return ratio_mutual_matches(dist, dist.argmin(axis=0), self.ratio)


def _learned(name: str) -> Callable[['VerificationSettings'], FeatureKind]:
    def make(settings: 'VerificationSettings') -> FeatureKind:
        from boq_ros.verification import learned  # noqa: PLC0415 (torch + optional packages)

        return learned.make(name, settings)
    return make


FEATURE_KINDS: dict[str, Callable[['VerificationSettings'], FeatureKind]] = {
    'sift': lambda s: Sift(s.max_keypoints, s.match_ratio),
    'orb': lambda s: Orb(s.max_keypoints, s.match_ratio),
    'xfeat': _learned('xfeat'),
    'xfeat_lighterglue': _learned('xfeat_lighterglue'),
    'aliked_lightglue': _learned('aliked_lightglue'),
}
"""Every feature kind by name (the names are VerificationSettings.feature_kind's choices)."""


def make_feature_kind(settings: 'VerificationSettings') -> FeatureKind:
    """Build the feature kind the settings name (FeatureError if its package is missing)."""
    return FEATURE_KINDS[settings.feature_kind](settings)


def sample_depth(depth: np.ndarray, points: np.ndarray, image_size: tuple[int, int],
                 depth_range: tuple[float, float]) -> np.ndarray:
    """Depth (m) at pixel `points` of an image of `image_size`; NaN where unknown or at an edge.

    The depth image is aligned to the colour image, possibly at another resolution.
    """
    height, width = depth.shape
    sx, sy = width / image_size[0], height / image_size[1]
    u = np.clip(np.floor((points[:, 0] + 0.5) * sx).astype(np.int64), 0, width - 1)
    v = np.clip(np.floor((points[:, 1] + 0.5) * sy).astype(np.int64), 0, height - 1)
    padded = np.pad(depth.astype(np.float32), 1, constant_values=np.nan)
    window = np.stack([padded[v + 1 + dv, u + 1 + du]
                       for dv in (-1, 0, 1) for du in (-1, 0, 1)], axis=1)
    centre = window[:, 4]
    with np.errstate(invalid='ignore'):
        spread = np.abs(window - centre[:, None]).max(axis=1) if len(window) else centre
        ok = (np.isfinite(window).all(axis=1) & (spread <= DEPTH_EDGE * centre)
              & (centre >= depth_range[0]) & (centre <= depth_range[1]))
    return np.where(ok, centre, np.nan).astype(np.float32)


def extract_features(kind: FeatureKind, image: np.ndarray, encoding: str = 'rgb8',
                     camera: CameraModel | None = None, depth: np.ndarray | None = None,
                     depth_range: tuple[float, float] = (0.1, 50.0)) -> LocalFeatures:
    """Detect features in an image (a canonical encoding); undistort them, sample the depth.

    A camera model for another image size is scaled to this one (a resized image).
    """
    if image.ndim not in (2, 3) or image.shape[0] < 8 or image.shape[1] < 8:
        raise FeatureError(f'cannot detect features in an image of shape {list(image.shape)}')
    height, width = image.shape[:2]
    points, descriptors = kind.detect(to_gray(image, encoding))
    depth_at = None
    if depth is not None:
        depth_at = sample_depth(depth, points, (width, height), depth_range)
    intrinsics = None
    if camera is not None:
        camera = camera.scaled_to(width, height)
        points = camera.undistort(points)
        intrinsics = camera.intrinsics
    return LocalFeatures(kind=kind.kind, keypoints=points.astype(np.float32),
                         descriptors=descriptors, image_size=(width, height),
                         intrinsics=intrinsics, depth=depth_at)
