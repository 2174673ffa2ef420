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
    if encoding == 'mono16':  # 10/12-bit cameras fill only part of the range: stretch it
        top = max(int(image.max()), 1)
        return (image.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    return image


MATCH_BLOCK = 1024
"""Query descriptors compared at once: memory stays bounded (block x candidate keypoints)."""


def l2_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the Euclidean distances [Na, Nb] between two descriptor sets (float32)."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the Hamming distances [Na, Nb] between binary descriptors (uint8 rows)."""
    bits_a = np.unpackbits(a, axis=1).astype(np.float32)
    bits_b = np.unpackbits(b, axis=1).astype(np.float32)
    return bits_a.sum(1)[:, None] + bits_b.sum(1)[None, :] - 2.0 * (bits_a @ bits_b.T)


def ratio_mutual_matches(a: np.ndarray, b: np.ndarray,
                         distances: Callable[[np.ndarray, np.ndarray], np.ndarray],
                         ratio: float) -> np.ndarray:
    """Lowe's ratio test on a's two nearest neighbours in b, plus the mutual-nearest check.

    Computed in blocks of MATCH_BLOCK rows of a. Returns index pairs [M, 2] (into a, into b).
    """
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    if a.shape[1] != b.shape[1] or a.dtype != b.dtype:
        raise FeatureError(f'descriptors differ: {a.shape[1]} x {a.dtype} against '
                           f'{b.shape[1]} x {b.dtype}')
    nearest = np.empty(len(a), np.int64)
    passes = np.empty(len(a), bool)
    column_best = np.full(len(b), np.inf)
    column_arg = np.full(len(b), -1, np.int64)
    for start in range(0, len(a), MATCH_BLOCK):
        d = distances(a[start:start + MATCH_BLOCK], b)
        rows = np.arange(len(d))
        two = np.argpartition(d, 1, axis=1)[:, :2]
        first, second = d[rows, two[:, 0]], d[rows, two[:, 1]]
        nearest[start:start + len(d)] = np.where(first <= second, two[:, 0], two[:, 1])
        passes[start:start + len(d)] = np.minimum(first, second) < ratio * np.maximum(
            first, second)
        block_best, block_arg = d.min(axis=0), d.argmin(axis=0) + start
        better = block_best < column_best  # ties keep the earlier row, as one argmin would
        column_best[better], column_arg[better] = block_best[better], block_arg[better]
    rows = np.arange(len(a))
    keep = passes & (column_arg[nearest] == rows)
    return np.stack([rows[keep], nearest[keep]], axis=1).astype(np.int64)


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
        return ratio_mutual_matches(a.descriptors.astype(np.float32),
                                    b.descriptors.astype(np.float32), l2_distances, self.ratio)


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
        return ratio_mutual_matches(a.descriptors, b.descriptors, hamming_distances,
                                    self.ratio)


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


ASPECT_TOLERANCE = 0.01
"""A camera model or depth image whose aspect ratio differs from the image's by more than this
(relative) is not for this image: its pixels would map to the wrong rays."""


def _same_aspect(size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    return abs(size[0] * image_size[1] / (size[1] * image_size[0]) - 1.0) <= ASPECT_TOLERANCE


def check_depth(depth: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Return a depth image as HxW if it can be aligned to an image of `image_size`.

    FeatureError otherwise: another shape, or another aspect ratio (not registered to it).
    """
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2 or depth.shape[0] < 1 or depth.shape[1] < 1:
        raise FeatureError(f'a depth image must be HxW, got shape {list(depth.shape)}')
    if not _same_aspect((depth.shape[1], depth.shape[0]), image_size):
        raise FeatureError(f'the depth image {depth.shape[1]}x{depth.shape[0]} is not aligned '
                           f'to the {image_size[0]}x{image_size[1]} image (another aspect '
                           'ratio): register depth to the colour camera')
    return depth


def extract_features(kind: FeatureKind, image: np.ndarray, encoding: str = 'rgb8',
                     camera: CameraModel | None = None, depth: np.ndarray | None = None,
                     depth_range: tuple[float, float] = (0.1, 50.0)) -> LocalFeatures:
    """Detect features in an image (a canonical encoding); undistort them, sample the depth.

    A camera model for another image size of the same aspect ratio is scaled to this one (a
    resized image). Keypoints the lens model cannot undistort into the image's neighbourhood
    (fisheye corners, a diverging model) are dropped. FeatureError names what cannot be used.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] < 8 or image.shape[1] < 8:
        raise FeatureError(f'cannot detect features in an image of shape {list(image.shape)}')
    height, width = image.shape[:2]
    if depth is not None:
        depth = check_depth(depth, (width, height))
    if camera is not None and not _same_aspect((camera.width, camera.height), (width, height)):
        raise FeatureError(f'the camera model is for {camera.width}x{camera.height} images, '
                           f'this one is {width}x{height} (another aspect ratio)')
    try:
        points, descriptors = kind.detect(to_gray(image, encoding))
    except cv2.error as err:
        raise FeatureError(f'cannot detect features in a {encoding} image of shape '
                           f'{list(image.shape)} ({image.dtype}): {err.err}') from None
    depth_at = None
    if depth is not None:
        depth_at = sample_depth(depth, points, (width, height), depth_range)
    intrinsics = None
    if camera is not None:
        camera = camera.scaled_to(width, height)
        points = camera.undistort(points)
        intrinsics = camera.intrinsics
        keep = (np.isfinite(points).all(axis=1)
                & (np.abs(points[:, 0] - width / 2) <= 2 * width)
                & (np.abs(points[:, 1] - height / 2) <= 2 * height))
        points, descriptors = points[keep], descriptors[keep]
        depth_at = depth_at[keep] if depth_at is not None else None
    return LocalFeatures(kind=kind.kind, keypoints=points.astype(np.float32),
                         descriptors=descriptors, image_size=(width, height),
                         intrinsics=intrinsics, depth=depth_at)
