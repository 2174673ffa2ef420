"""Camera intrinsics: what turns pixels into rays, from sensor_msgs/CameraInfo or by hand.

Verification works on undistorted pixel coordinates of an ideal pinhole camera (fx, fy, cx, cy
of the calibration, distortion removed), so that keypoints stored in the map stay usable
whatever the camera's distortion model was.
"""
from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import Any

import cv2
import numpy as np

DISTORTION_MODELS = ('', 'plumb_bob', 'rational_polynomial', 'equidistant')
"""CameraInfo distortion models understood ('' and plumb_bob with all-zero D: none)."""


UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-4)
"""Iterations of the inverse distortion: OpenCV's default (5 fixed-point steps) leaves 0.3-0.8 px
in the corners of an ordinary plumb_bob lens; this converges to 1e-4 px (reprojection error)."""


MIN_FOV_DEG, MAX_FOV_DEG = 0.5, 179.0
"""Fields of view a pinhole model can describe; outside them K does not fit the image size."""


class CameraModelError(ValueError):
    """Raised for intrinsics that cannot describe a camera; the message names the field."""


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics plus lens distortion of one camera at one image size."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = ''
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (self.width > 0 and self.height > 0):
            raise CameraModelError(f'image size must be positive, got {self.width}x'
                                   f'{self.height}')
        values = (self.fx, self.fy, self.cx, self.cy, *self.distortion)
        if not all(math.isfinite(v) for v in values):
            raise CameraModelError('intrinsics and distortion must be finite numbers')
        if not (self.fx > 0 and self.fy > 0):
            raise CameraModelError(f'focal lengths must be > 0, got fx={self.fx}, fy={self.fy} '
                                   '(an uncalibrated CameraInfo has K all zero)')
        for side, focal, axis in ((self.width, self.fx, 'x'), (self.height, self.fy, 'y')):
            fov = math.degrees(2 * math.atan(side / (2 * focal)))
            if not MIN_FOV_DEG <= fov <= MAX_FOV_DEG:
                raise CameraModelError(
                    f'f{axis}={focal:g} gives a {fov:.3g} deg field of view over {side} pixels: '
                    f'no pinhole camera has that (K and the image size do not belong together)')
        if self.distortion_model not in DISTORTION_MODELS:
            raise CameraModelError(
                f'distortion model {self.distortion_model!r} is not supported (use one of '
                f'{", ".join(repr(m) for m in DISTORTION_MODELS[1:])})')
        need = {'equidistant': (4,), 'plumb_bob': (0, 4, 5), 'rational_polynomial': (8, 12, 14),
                '': (0,)}[self.distortion_model]
        if len(self.distortion) not in need:
            raise CameraModelError(
                f'distortion model {self.distortion_model or "none"!r} takes '
                f'{" or ".join(map(str, need))} coefficients, got {len(self.distortion)}')

    @classmethod
    def from_camera_info(cls, width: int, height: int, k: Sequence[float],
                         d: Sequence[float] = (), distortion_model: str = '') -> 'CameraModel':
        """Make the model from CameraInfo's fields (row-major K; D in the model's order)."""
        try:
            k = [float(v) for v in k]
            d = tuple(float(v) for v in d)
            width, height = int(width), int(height)
        except (TypeError, ValueError, OverflowError) as err:
            raise CameraModelError(f'CameraInfo fields are not numbers: {err}') from None
        if len(k) != 9:
            raise CameraModelError(f'K must hold 9 values, got {len(k)}')
        if any(k) and (k[1] != 0 or k[3] != 0 or k[6] != 0 or k[7] != 0 or k[8] != 1):
            raise CameraModelError(f'K must be [fx 0 cx; 0 fy cy; 0 0 1] (no skew), got {k}')
        model = distortion_model
        if model in ('', 'plumb_bob') and not any(d):
            model, d = '', ()
        return cls(width, height, k[0], k[4], k[2], k[5], model, d)

    @classmethod
    def from_message(cls, msg: Any) -> 'CameraModel':
        """Make the model from a sensor_msgs/CameraInfo message (ROS or rosbags)."""
        return cls.from_camera_info(msg.width, msg.height, list(msg.k), list(msg.d),
                                    str(msg.distortion_model))

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """Return (fx, fy, cx, cy) of the undistorted pinhole camera."""
        return (self.fx, self.fy, self.cx, self.cy)

    @property
    def matrix(self) -> np.ndarray:
        """Return the 3x3 camera matrix K."""
        return intrinsics_matrix(self.intrinsics)

    def scaled_to(self, width: int, height: int) -> 'CameraModel':
        """Return the model for the same camera at another image size (a resized image)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return CameraModel(width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                           (self.cy + 0.5) * sy - 0.5, self.distortion_model, self.distortion)

    def undistort(self, points: np.ndarray) -> np.ndarray:
        """Map distorted pixel coordinates [N, 2] to those of the ideal pinhole camera."""
        points = np.asarray(points, np.float64).reshape(-1, 1, 2)
        if not self.distortion_model or len(points) == 0:
            return points.reshape(-1, 2).astype(np.float32)
        k, d = self.matrix, np.asarray(self.distortion, np.float64)
        if self.distortion_model == 'equidistant':
            out = cv2.fisheye.undistortPoints(points, k, d, P=k)
        elif hasattr(cv2, 'undistortPointsIter'):  # OpenCV 4
            out = cv2.undistortPointsIter(points, k, d, None, k, UNDISTORT_CRITERIA)
        else:  # OpenCV 5 took the criteria into undistortPoints
            out = cv2.undistortPoints(points, k, d, R=None, P=k, criteria=UNDISTORT_CRITERIA)
        return out.reshape(-1, 2).astype(np.float32)


def intrinsics_matrix(intrinsics: Sequence[float]) -> np.ndarray:
    """Return K for (fx, fy, cx, cy)."""
    fx, fy, cx, cy = intrinsics
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
