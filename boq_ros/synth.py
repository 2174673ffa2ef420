"""Test recordings with exact ground truth: a textured street loop driven several times.

Loop-closure logic, map building, evaluation and replay need recordings in which the true
revisits are known, and tests must generate them (no data downloads). The world is a ring-shaped
street between two facade walls whose texture is unique per place (buildings, windows, signs,
murals); the camera drives the loop ``laps`` times. Later laps (and other sessions of the same
world) revisit every place from another lateral offset and yaw and under other lighting (gain,
gamma, colour cast), so the same place looks alike and different places look different, without
any claim to photorealism. Rendering is a vectorised column ray cast (a few ms per frame); the
same cast gives an exact z-depth image and the pinhole intrinsics are known, so recordings can
carry ``CameraInfo`` and aligned depth for testing geometric verification. With an
:class:`OdometryDrift`, ``/odom`` drifts as a real wheel or visual odometry does, and the exact
poses move to ``/ground_truth/odom``, so evaluation and pose-graph tests see realistic odometry.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
import math
import numbers
import os
from pathlib import Path
from typing import Any, Literal, overload

import cv2
import numpy as np

from boq_ros.bags import (
    make_camera_info_msg,
    make_compressed_msg,
    make_image_msg,
    make_odometry_msg,
    make_tf_msg,
    write_bag,
)
from boq_ros.trajectory import Trajectory

IMAGE_TOPIC = '/camera/image_raw'
COMPRESSED_TOPIC = '/camera/image_raw/compressed'
CAMERA_INFO_TOPIC = '/camera/camera_info'
DEPTH_TOPIC = '/camera/depth/image_raw'
ODOM_TOPIC = '/odom'
GROUND_TRUTH_TOPIC = '/ground_truth/odom'
"""Exact poses of ``base_link`` (frame ``world``), written when ``/odom`` drifts."""
GROUND_TRUTH_FRAME = 'world'
TF_TOPIC = '/tf'
CAMERA_FRAME = 'camera'
"""Frame of every camera message: the ROS optical frame (x right, y down, z forward)."""
HFOV_RAD = math.radians(90.0)
"""Horizontal field of view of the recordings' camera."""
MAX_DEPTH_MM = 65535
"""Depth at or beyond this (in millimetres) does not fit ``16UC1`` and is written as 0."""
START_NS = 1_700_000_000 * 1_000_000_000
"""Stamp of the first frame of variant 0; variant v starts v days later."""


class SynthError(ValueError):
    """Raised for generator parameters that cannot give a sensible recording."""


@dataclass(frozen=True)
class OdometryDrift:
    """Errors of a wheel or visual odometry, applied to every increment of the true pose stream.

    An increment is the motion of ``base_link`` between two consecutive odometry stamps, in the
    base frame of the first: forward and lateral translation (m) of length ``s`` and a heading
    change (rad). The odometry integrates the perturbed increments from the true first pose::

        translation' = (1 + scale_bias) * translation + N(0, (translation_noise * s)^2) per axis
        heading'     = heading + heading_bias_per_m * s + N(0, heading_noise_per_sqrt_m^2 * s)

    so its error grows smoothly with the distance travelled and never jumps; where the heading
    terms dominate (:data:`DEMO_DRIFT`) it is mostly a slow bending of the path, as with real
    odometry. The noise is drawn from the recording's ``seed`` and ``variant`` by a generator
    of its own: the images are the same with and without drift. All zero reproduces the truth.
    """

    translation_noise: float = 0.0
    """1-sigma noise of each translation component, as a fraction of the step length (0.02:
    2 %)."""
    heading_noise_per_sqrt_m: float = 0.0
    """Heading random walk, rad per square-root metre: after d metres its 1 sigma is
    ``heading_noise_per_sqrt_m * sqrt(d)``."""
    heading_bias_per_m: float = 0.0
    """Heading error gained per metre travelled, rad/m (a gyro bias or a miscalibrated wheel
    base); positive turns the odometry counter-clockwise."""
    scale_bias: float = 0.0
    """Relative error of the distance travelled (a wheel radius error): 0.01 reads 1 % long."""

    # Beyond these an odometry is broken (or the value is in the wrong unit, e.g. degrees).
    _LIMITS = {'translation_noise': (0.0, 0.5, ''),
               'heading_noise_per_sqrt_m': (0.0, 0.5, ' rad/sqrt(m)'),
               'heading_bias_per_m': (-0.1, 0.1, ' rad/m'), 'scale_bias': (-0.5, 0.5, '')}

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            low, high, unit = self._LIMITS[field.name]
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise SynthError(f'OdometryDrift.{field.name} must be a number, got {value!r}')
            if not low <= value <= high:  # also refuses NaN
                raise SynthError(f'OdometryDrift.{field.name} must be within '
                                 f'[{low}, {high}]{unit}, got {value}')

    def apply(self, x: np.ndarray, y: np.ndarray, yaw: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the drifted (x, y, yaw) of a true planar pose stream, from its first pose.

        ``rng`` draws three standard normals per increment (forward, lateral, heading).
        """
        c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
        dx, dy = np.diff(x), np.diff(y)
        forward, lateral = c * dx + s * dy, c * dy - s * dx
        turn = np.angle(np.exp(1j * np.diff(yaw)))
        step = np.hypot(forward, lateral)
        noise = rng.standard_normal((3, step.size))
        forward = (1 + self.scale_bias) * forward + self.translation_noise * step * noise[0]
        lateral = (1 + self.scale_bias) * lateral + self.translation_noise * step * noise[1]
        turn = (turn + self.heading_bias_per_m * step
                + self.heading_noise_per_sqrt_m * np.sqrt(step) * noise[2])
        # Compose the increments: each one is rotated by the heading the odometry had before it.
        drifted_yaw = yaw[0] + np.concatenate([[0.0], np.cumsum(turn)])
        c, s = np.cos(drifted_yaw[:-1]), np.sin(drifted_yaw[:-1])
        drifted_x = x[0] + np.concatenate([[0.0], np.cumsum(c * forward - s * lateral)])
        drifted_y = y[0] + np.concatenate([[0.0], np.cumsum(s * forward + c * lateral)])
        return drifted_x, drifted_y, drifted_yaw


DEMO_DRIFT = OdometryDrift(translation_noise=0.02, heading_noise_per_sqrt_m=0.004,
                           heading_bias_per_m=0.002, scale_bias=0.01)
"""Drift for the demo recording (3 laps, 379 m): its odometry at the 300 frames is 4.9 m ATE
RMSE from the truth after SE(3) alignment; at the end it is 16 m and 46 degrees off."""


@dataclass(frozen=True)
class RecordingInfo:
    """What a generated recording holds, with the exact ground truth of every frame."""

    path: Path
    storage: str
    session: str
    topics: dict[str, str]
    n_frames: int
    duration_s: float
    trajectory: Trajectory
    """Exact poses of ``base_link`` at the odometry stamps (/odom without drift, else
    /ground_truth/odom)."""
    odometry: Trajectory
    """What /odom carries: :attr:`trajectory` itself without drift, else the drifted odometry."""
    frame_stamps_ns: np.ndarray
    frame_positions: np.ndarray
    frame_yaws: np.ndarray
    frame_laps: np.ndarray
    image_size: tuple[int, int]
    intrinsics: tuple[float, float, float, float]
    """(fx, fy, cx, cy) of :func:`camera_intrinsics`, as in the recording's CameraInfo."""
    frame_camera_poses: np.ndarray
    """[N, 4, 4] camera-to-world transforms (optical frame) of :func:`camera_pose_world`."""


def camera_intrinsics(image_size: tuple[int, int],
                      hfov_rad: float = HFOV_RAD) -> tuple[float, float, float, float]:
    """Return the renderer's pinhole (fx, fy, cx, cy) in the OpenCV/ROS pixel convention.

    The renderer casts column u through pixel centre u + 0.5 measured from the image's left edge;
    OpenCV and ``CameraInfo`` put pixel centres at integer coordinates, hence the -0.5. Pixels are
    square (fy = fx).
    """
    width, height = image_size
    if width <= 0 or height <= 0:
        raise SynthError(f'image_size must be positive, got {image_size}')
    if not 0 < hfov_rad < math.pi:
        raise SynthError(f'hfov_rad must be within (0, pi), got {hfov_rad}')
    f = width / (2 * math.tan(hfov_rad / 2))
    return f, f, width / 2 - 0.5, height / 2 - 0.5


def camera_pose_world(x: float, y: float, yaw: float) -> np.ndarray:
    """Return the 4x4 camera-to-world transform of the optical frame of a rendered view.

    Back-projecting pixels with depth needs it. The camera sits at (x, y, CAMERA_HEIGHT), level,
    looking along ``yaw``: optical z is (cos yaw, sin yaw, 0), x (image right) is
    (sin yaw, -cos yaw, 0) and y (image down) is world -z.
    """
    c, s = math.cos(yaw), math.sin(yaw)
    pose = np.eye(4)
    pose[:3, 0] = (s, -c, 0.0)
    pose[:3, 1] = (0.0, 0.0, -1.0)
    pose[:3, 2] = (c, s, 0.0)
    pose[:3, 3] = (x, y, World.CAMERA_HEIGHT)
    return pose


def depth_to_mm(depth_m: np.ndarray) -> np.ndarray:
    """Convert z-depth in metres (0 = none) to ``16UC1`` millimetres, 0 where it does not fit."""
    mm = np.round(np.asarray(depth_m, np.float64) * 1000.0)
    return np.where((mm > 0) & (mm < MAX_DEPTH_MM), mm, 0).astype(np.uint16)


def _hsv_colour(rng: np.random.Generator, sat: tuple[float, float],
                val: tuple[float, float]) -> tuple[int, int, int, int]:
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]])
    return (*(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]), 255)


def _facade(rng: np.random.Generator, length_m: float, height_m: float,
            px_per_m: int) -> np.ndarray:
    """Paint a strip of buildings whose look changes every few metres (wraps seamlessly)."""
    height, length = round(height_m * px_per_m), round(length_m * px_per_m)
    tex = np.zeros((height, length, 4), np.uint8)  # alpha 0 above the roofs: sky
    letters = 'ABCDEFGHJKLMNPRSTUVWXYZ0123456789'
    x0 = 0
    while x0 < length:
        width = round(rng.uniform(4.0, 10.0) * px_per_m)
        if length - (x0 + width) < 3 * px_per_m:
            width = length - x0
        x1 = x0 + width
        roof = round(rng.uniform(0.55, 1.0) * height)
        tex[height - roof:, x0:x1] = _hsv_colour(rng, (0.2, 0.9), (0.35, 0.95))
        # Windows: a building-specific grid, some lit.
        dx, dy = rng.uniform(1.2, 2.6) * px_per_m, rng.uniform(1.4, 2.2) * px_per_m
        ww, wh = dx * rng.uniform(0.35, 0.7), dy * rng.uniform(0.35, 0.65)
        dark, lit = _hsv_colour(rng, (0, 0.5), (0.05, 0.3)), _hsv_colour(rng, (0, 0.6), (0.8, 1))
        y = height - roof + 0.4 * dy
        while y + wh < height - 2.4 * px_per_m:
            x = x0 + 0.5 * dx
            while x + ww < x1:
                colour = lit if rng.random() < 0.3 else dark
                cv2.rectangle(tex, (int(x), int(y)), (int(x + ww), int(y + wh)), colour, -1)
                x += dx
            y += dy
        # A door, a shop sign with letters, sometimes a mural.
        door_x = int(x0 + rng.uniform(0.2, 0.8) * width)
        cv2.rectangle(tex, (door_x, height - 2 * px_per_m), (door_x + px_per_m, height),
                      _hsv_colour(rng, (0.3, 1), (0.2, 0.7)), -1)
        sign_w = int(min(width * 0.8, rng.uniform(2.0, 4.5) * px_per_m))
        sx = int(x0 + rng.uniform(0.05, 0.95) * (width - sign_w))
        sy = height - round(2.3 * px_per_m)
        cv2.rectangle(tex, (sx, sy - px_per_m // 2), (sx + sign_w, sy),
                      _hsv_colour(rng, (0.6, 1), (0.7, 1)), -1)
        text = ''.join(rng.choice(list(letters), size=max(2, sign_w // (px_per_m // 2))))
        cv2.putText(tex, text, (sx + 2, sy - 3), cv2.FONT_HERSHEY_SIMPLEX, px_per_m / 70,
                    _hsv_colour(rng, (0, 0.3), (0, 0.2)), max(1, px_per_m // 16), cv2.LINE_AA)
        if rng.random() < 0.6:
            centre = (int(x0 + rng.uniform(0.2, 0.8) * width),
                      int(height - roof + rng.uniform(0.2, 0.5) * roof))
            radius = int(rng.uniform(0.6, 1.6) * px_per_m)
            cv2.circle(tex, centre, radius, _hsv_colour(rng, (0.7, 1), (0.6, 1)), -1)
            cv2.circle(tex, centre, radius // 2, _hsv_colour(rng, (0.7, 1), (0.3, 1)), -1)
        x0 = x1
    return tex


class World:
    """A ring street between two textured walls, fixed by ``seed``; renders pinhole views."""

    TRACK_RADIUS = 20.0
    INNER_RADIUS = 16.5
    OUTER_RADIUS = 23.5
    WALL_HEIGHT = 7.0
    CAMERA_HEIGHT = 1.6
    PX_PER_M = 24
    LEVELS = 4

    def __init__(self, seed: int = 0) -> None:
        if seed < 0:
            raise SynthError(f'seed must be >= 0, got {seed}')
        rng = np.random.default_rng([seed, 7])
        outer = _facade(rng, 2 * math.pi * self.OUTER_RADIUS, self.WALL_HEIGHT, self.PX_PER_M)
        inner = _facade(rng, 2 * math.pi * self.INNER_RADIUS, self.WALL_HEIGHT, self.PX_PER_M)
        self._inner_offset = outer.shape[1]
        self._lengths = (outer.shape[1], inner.shape[1])
        atlas = np.concatenate([outer, inner], axis=1)
        # Pre-blurred copies stand in for mipmaps: far walls sample a smoother texture, so small
        # viewpoint changes do not alias into different pixels.
        levels = np.stack([atlas] + [
            cv2.GaussianBlur(atlas, (0, 0), 0.6 * 2 ** level) for level in range(1, self.LEVELS)])
        self._tex_shape = levels.shape[1:3]
        # One RGBA texel per uint32: rendering is then a single flat gather.
        self._texels = np.ascontiguousarray(levels).view(np.uint32).reshape(-1)

    @overload
    def render(self, x: float, y: float, yaw: float, image_size: tuple[int, int] = ...,
               hfov_rad: float = ..., *, with_depth: Literal[False] = ...) -> np.ndarray: ...

    @overload
    def render(self, x: float, y: float, yaw: float, image_size: tuple[int, int] = ...,
               hfov_rad: float = ..., *,
               with_depth: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...

    def render(self, x: float, y: float, yaw: float, image_size: tuple[int, int] = (320, 240),
               hfov_rad: float = math.radians(90.0), *,
               with_depth: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Render the rgb8 view of a camera at (x, y) looking along ``yaw`` (level, no roll).

        With ``with_depth``, return ``(rgb, depth)``: depth is float32 z-depth in metres along
        the optical axis (see :func:`camera_pose_world`), exact from the same ray cast; sky
        pixels are 0. Intrinsics: :func:`camera_intrinsics`.
        """
        width, height = image_size
        if math.hypot(x, y) <= self.INNER_RADIUS or math.hypot(x, y) >= self.OUTER_RADIUS:
            raise SynthError(f'camera at ({x:.2f}, {y:.2f}) is not on the street')
        f, _, cx, cy = camera_intrinsics(image_size, hfov_rad)
        alpha = np.arctan((np.arange(width) - cx) / f)
        beta = yaw - alpha
        dx, dy = np.cos(beta), np.sin(beta)
        b = x * dx + y * dy
        c_out = x * x + y * y - self.OUTER_RADIUS ** 2
        t_hit = -b + np.sqrt(b * b - c_out)
        disc_in = b * b - (x * x + y * y - self.INNER_RADIUS ** 2)
        t_in = -b - np.sqrt(np.maximum(disc_in, 0.0))
        hits_inner = (disc_in > 0) & (t_in > 0)
        t_hit = np.where(hits_inner, t_in, t_hit)
        hx, hy = x + t_hit * dx, y + t_hit * dy
        turn = (np.arctan2(hy, hx) / (2 * math.pi)) % 1.0
        # Seen from the street, the outer wall runs against the angle: mirror it so that
        # its lettering reads the right way round.
        column = np.where(hits_inner,
                          self._inner_offset + (turn * self._lengths[1]).astype(np.int64),
                          ((1.0 - turn) * self._lengths[0]).astype(np.int64))
        tex_rows, tex_cols = self._tex_shape
        column = np.minimum(column, tex_cols - 1)
        depth = t_hit * np.cos(alpha)
        level = np.clip(np.log2(np.maximum(self.PX_PER_M * depth / f, 1.0)), 0,
                        self.LEVELS - 1).astype(np.int64)

        # Texture row of every pixel: metres below the wall top times texels per metre. A wall
        # point at z-depth `depth` seen in a row of `slope` lies CAMERA_HEIGHT + slope * depth
        # high; rows past the wall bottom see the ground first.
        slope = (cy - np.arange(height)) / f
        row_f = ((self.WALL_HEIGHT - self.CAMERA_HEIGHT) * self.PX_PER_M
                 - slope[:, None] * (depth * self.PX_PER_M)[None, :])
        row = np.clip(row_f.astype(np.int64), 0, tex_rows - 1)
        texels = self._texels[(level * tex_rows * tex_cols + column)[None, :] + row * tex_cols]
        # Sky and ground: a vertical gradient each, as RGBA uint32 per image row.
        shade = np.clip(np.abs(slope) * 1.5, 0, 1)[:, None]
        sky = _rgba32(np.array([150, 190, 235]) * (1.0 - 0.35 * shade))
        ground = _rgba32(np.array([95, 90, 85]) * (1.0 - 0.4 * (1 - shade)))
        alpha = texels.view(np.uint8).reshape(height, width, 4)[..., 3]
        above = (row_f < 0) | (alpha < 128)
        on_ground = row_f >= tex_rows
        texels = np.where(above, sky, np.where(on_ground, ground, texels))
        rgb = cv2.cvtColor(texels.view(np.uint8).reshape(height, width, 4), cv2.COLOR_RGBA2RGB)
        if not with_depth:
            return rgb
        # The ground plane z=0 is met at z-depth CAMERA_HEIGHT / -slope (slope < 0 there). Per
        # row and per column vectors, in float32: a single pass over the image.
        ground_depth = (self.CAMERA_HEIGHT / np.maximum(-slope, 1e-12)).astype(np.float32)
        z_depth = np.where(on_ground, ground_depth[:, None], depth.astype(np.float32)[None, :])
        z_depth[above] = 0.0
        return rgb, z_depth


def _rgba32(rgb: np.ndarray) -> np.ndarray:
    """Pack [N, 3] colours into opaque RGBA uint32 texels [N, 1]."""
    rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)
    return np.ascontiguousarray(rgba).view(np.uint32)


def _lighting(seed: int, variant: int, lap: int) -> np.ndarray | None:
    """Return a per-channel lookup table (gain, gamma, colour cast), None for the reference."""
    if variant == 0 and lap == 0:
        return None
    rng = np.random.default_rng([seed, variant, lap, 11])
    gain, gamma = rng.uniform(0.65, 1.25), rng.uniform(0.7, 1.45)
    cast = rng.uniform(0.85, 1.15, size=3)
    levels = (np.arange(256) / 255.0) ** gamma
    table = np.clip(255.0 * gain * levels[:, None] * cast[None, :], 0, 255)
    return table.astype(np.uint8).reshape(256, 1, 3)


def _pose_at(t: np.ndarray, lap_s: float, variant: int,
             frames_per_lap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth (x, y, yaw) at times t (s): smooth, continuous over laps."""
    radius0 = World.TRACK_RADIUS
    phase = variant * 0.37 * 2 * math.pi / frames_per_lap
    # Along-track wobble (+-0.6 m), lateral offset (+-0.75 m) and yaw jitter (+-0.08 rad) differ
    # between laps and variants, so a revisit is never the exact same viewpoint.
    theta = 2 * math.pi * t / lap_s + phase + 0.6 / radius0 * np.sin(math.pi * t / lap_s)
    radius = radius0 + 0.75 * np.sin(math.pi * t / lap_s + variant * 1.1)
    jitter = 0.08 * np.sin(2 * math.pi * t / 3.7 + variant * 2.3)
    return radius * np.cos(theta), radius * np.sin(theta), theta + math.pi / 2 + jitter


def _yaw_quaternions(yaw: np.ndarray) -> np.ndarray:
    zeros = np.zeros_like(yaw)
    return np.stack([zeros, zeros, np.sin(yaw / 2), np.cos(yaw / 2)], axis=-1)


@dataclass(frozen=True)
class RecordingTrajectories:
    """The poses a recording writes, computed without rendering: what drift tests need."""

    frame_stamps_ns: np.ndarray
    ground_truth: Trajectory
    """Exact poses of ``base_link`` at the odometry stamps."""
    odometry: Trajectory
    """What /odom carries: ``ground_truth`` itself without drift."""


@dataclass(frozen=True)
class _Motion:
    """Stamps and poses of a recording, as the arrays its messages are written from."""

    frame_t: np.ndarray
    frame_stamps: np.ndarray
    frame_poses: tuple[np.ndarray, np.ndarray, np.ndarray]  # x, y, yaw of every frame
    odom_stamps: np.ndarray
    true_positions: np.ndarray
    true_quaternions: np.ndarray
    odom_positions: np.ndarray
    odom_quaternions: np.ndarray


def _motion(laps: int, frames_per_lap: int, rate_hz: float, odom_rate_hz: float, seed: int,
            variant: int, odometry_drift: OdometryDrift | None) -> _Motion:
    """Compute the frame and odometry stamps, the true poses and the (drifted) odometry."""
    if laps < 1 or frames_per_lap < 4:
        raise SynthError(f'need laps >= 1 and frames_per_lap >= 4, got {laps}, {frames_per_lap}')
    if not (rate_hz > 0 and odom_rate_hz > 0):
        raise SynthError(f'rates must be positive, got {rate_hz} and {odom_rate_hz}')
    if variant < 0:
        raise SynthError(f'variant must be >= 0, got {variant}')
    if seed < 0:
        raise SynthError(f'seed must be >= 0, got {seed}')
    start_ns = START_NS + variant * 86_400 * 1_000_000_000
    lap_s = frames_per_lap / rate_hz
    frame_t = np.arange(laps * frames_per_lap) / rate_hz
    frame_stamps = start_ns + np.round(frame_t * 1e9).astype(np.int64)
    odom_t = np.arange(math.ceil(frame_t[-1] * odom_rate_hz - 1e-9) + 1) / odom_rate_hz
    odom_stamps = start_ns + np.round(odom_t * 1e9).astype(np.int64)
    ox, oy, oyaw = _pose_at(odom_t, lap_s, variant, frames_per_lap)
    true_positions = np.stack([ox, oy, np.zeros_like(ox)], axis=-1)
    true_quaternions = _yaw_quaternions(oyaw)
    odom_positions, odom_quaternions = true_positions, true_quaternions
    if odometry_drift is not None:
        # A generator of its own (not the world's or the lighting's): images do not change.
        rng = np.random.default_rng([seed, variant, 13])
        dx, dy, dyaw = odometry_drift.apply(ox, oy, oyaw, rng)
        odom_positions = np.stack([dx, dy, np.zeros_like(dx)], axis=-1)
        odom_quaternions = _yaw_quaternions(dyaw)
    return _Motion(frame_t, frame_stamps, _pose_at(frame_t, lap_s, variant, frames_per_lap),
                   odom_stamps, true_positions, true_quaternions, odom_positions,
                   odom_quaternions)


def recording_trajectories(*, laps: int = 2, frames_per_lap: int = 60, rate_hz: float = 5.0,
                           odom_rate_hz: float = 20.0, seed: int = 0, variant: int = 0,
                           odometry_drift: OdometryDrift | None = None
                           ) -> RecordingTrajectories:
    """Return the stamps and poses :func:`generate_recording` writes with these parameters.

    The same numbers as the recording's, without rendering or writing anything (a 300 frame
    recording takes seconds, this takes milliseconds).
    """
    motion = _motion(laps, frames_per_lap, rate_hz, odom_rate_hz, seed, variant, odometry_drift)
    truth = Trajectory(motion.odom_stamps, motion.true_positions, motion.true_quaternions)
    odometry = truth if odometry_drift is None else Trajectory(
        motion.odom_stamps, motion.odom_positions, motion.odom_quaternions)
    return RecordingTrajectories(motion.frame_stamps, truth, odometry)


def generate_recording(path: str | os.PathLike, *,
                       storage: Literal['sqlite3', 'mcap'] = 'sqlite3', laps: int = 2,
                       frames_per_lap: int = 60, image_size: tuple[int, int] = (320, 240),
                       rate_hz: float = 5.0, raw: bool = True, compressed: bool = True,
                       odom_rate_hz: float = 20.0, seed: int = 0, session: str = 'demo',
                       variant: int = 0, tf: bool = False, camera_info: bool = True,
                       depth: bool = True,
                       odometry_drift: OdometryDrift | None = None) -> RecordingInfo:
    """Write a rosbag2 recording of ``laps`` drives around the world of ``seed``.

    ``variant`` picks the session: 0 has reference lighting on its first lap; other variants
    of the same seed revisit the same places with other offsets, timing and lighting (see
    :func:`generate_query_recording`). Topics: /camera/image_raw (rgb8), its /compressed (JPEG),
    /odom (exact ground truth; with ``odometry_drift`` the drifted odometry, and the exact
    ground truth on /ground_truth/odom), with ``camera_info`` /camera/camera_info (the exact
    pinhole intrinsics, no distortion), with ``depth`` /camera/depth/image_raw (16UC1 z-depth
    in mm, 0 = none, aligned with the colour image) and, with ``tf``, /tf (odom -> base_link,
    as /odom says). Camera messages share the colour image's stamp and frame; camera info and
    depth are logged just before the image, so a consumer holds them when the image arrives.
    """
    width, height = image_size
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise SynthError(f'image_size must be within 16..4096 pixels, got {image_size}')
    if not (raw or compressed):
        raise SynthError('raw and compressed are both False: the recording would hold no images')
    motion = _motion(laps, frames_per_lap, rate_hz, odom_rate_hz, seed, variant, odometry_drift)
    world = World(seed)
    n_frames = laps * frames_per_lap
    frame_t, frame_stamps, odom_stamps = motion.frame_t, motion.frame_stamps, motion.odom_stamps
    fx, fy, fyaw = motion.frame_poses
    odom_positions, odom_quaternions = motion.odom_positions, motion.odom_quaternions
    intrinsics = camera_intrinsics(image_size, HFOV_RAD)
    fx_px, fy_px, cx_px, cy_px = intrinsics
    k_matrix = [fx_px, 0.0, cx_px, 0.0, fy_px, cy_px, 0.0, 0.0, 1.0]

    topics = {ODOM_TOPIC: 'nav_msgs/msg/Odometry'}
    if odometry_drift is not None:
        topics[GROUND_TRUTH_TOPIC] = 'nav_msgs/msg/Odometry'
    if raw:
        topics[IMAGE_TOPIC] = 'sensor_msgs/msg/Image'
    if compressed:
        topics[COMPRESSED_TOPIC] = 'sensor_msgs/msg/CompressedImage'
    if camera_info:
        topics[CAMERA_INFO_TOPIC] = 'sensor_msgs/msg/CameraInfo'
    if depth:
        topics[DEPTH_TOPIC] = 'sensor_msgs/msg/Image'
    if tf:
        topics[TF_TOPIC] = 'tf2_msgs/msg/TFMessage'

    # Events in log-time order: odometry is logged 1 ms after its stamp; camera info, depth and
    # images 2, 2.5 and 3 ms after theirs (kinds 2, 3 and 1).
    events = [(int(s) + 1_000_000, 0, k) for k, s in enumerate(odom_stamps)]
    events += [(int(s) + 3_000_000, 1, k) for k, s in enumerate(frame_stamps)]
    if camera_info:
        events += [(int(s) + 2_000_000, 2, k) for k, s in enumerate(frame_stamps)]
    if depth:
        events += [(int(s) + 2_500_000, 3, k) for k, s in enumerate(frame_stamps)]
    events.sort()
    rendered: tuple[int, np.ndarray, np.ndarray | None] | None = None  # the frame in hand
    with write_bag(path, storage) as bag:
        for log_ns, kind, k in events:
            if kind == 0:
                stamp = int(odom_stamps[k])
                bag.write(ODOM_TOPIC, topics[ODOM_TOPIC],
                          make_odometry_msg(stamp, odom_positions[k], odom_quaternions[k]), log_ns)
                if tf:
                    bag.write(TF_TOPIC, topics[TF_TOPIC],
                              make_tf_msg(stamp, 'odom', 'base_link', odom_positions[k],
                                          odom_quaternions[k]), log_ns)
                if odometry_drift is not None:
                    bag.write(GROUND_TRUTH_TOPIC, topics[GROUND_TRUTH_TOPIC],
                              make_odometry_msg(stamp, motion.true_positions[k],
                                                motion.true_quaternions[k],
                                                frame_id=GROUND_TRUTH_FRAME), log_ns)
                continue
            stamp = int(frame_stamps[k])
            if kind == 2:
                bag.write(CAMERA_INFO_TOPIC, topics[CAMERA_INFO_TOPIC],
                          make_camera_info_msg(stamp, CAMERA_FRAME, width, height, k_matrix,
                                               [0.0] * 5), log_ns)
                continue
            if rendered is None or rendered[0] != k:  # one ray cast for depth and colour
                if depth:
                    image, z_depth = world.render(fx[k], fy[k], fyaw[k], image_size, HFOV_RAD,
                                                  with_depth=True)
                    rendered = (k, image, depth_to_mm(z_depth))
                else:
                    rendered = (k, world.render(fx[k], fy[k], fyaw[k], image_size, HFOV_RAD),
                                None)
            _, image, depth_mm = rendered
            if kind == 3:
                bag.write(DEPTH_TOPIC, topics[DEPTH_TOPIC],
                          make_image_msg(depth_mm, '16UC1', stamp, CAMERA_FRAME), log_ns)
                continue
            table = _lighting(seed, variant, k // frames_per_lap)
            if table is not None:
                image = cv2.LUT(image, table)
            if raw:
                bag.write(IMAGE_TOPIC, topics[IMAGE_TOPIC],
                          make_image_msg(image, 'rgb8', stamp, CAMERA_FRAME), log_ns)
            if compressed:
                bag.write(COMPRESSED_TOPIC, topics[COMPRESSED_TOPIC],
                          make_compressed_msg(image, 'rgb8', stamp, CAMERA_FRAME), log_ns)

    truth = Trajectory(odom_stamps, motion.true_positions, motion.true_quaternions)
    return RecordingInfo(
        path=Path(path), storage=storage, session=session, topics=topics, n_frames=n_frames,
        duration_s=float(frame_t[-1]), trajectory=truth,
        odometry=truth if odometry_drift is None else Trajectory(
            odom_stamps, odom_positions, odom_quaternions),
        frame_stamps_ns=frame_stamps,
        frame_positions=np.stack([fx, fy, np.zeros_like(fx)], axis=-1),
        frame_yaws=fyaw, frame_laps=np.arange(n_frames) // frames_per_lap,
        image_size=(width, height), intrinsics=intrinsics,
        frame_camera_poses=np.stack([camera_pose_world(fx[k], fy[k], fyaw[k])
                                     for k in range(n_frames)]))


def generate_query_recording(path: str | os.PathLike, *, variant: int = 1,
                             session: str = 'query', **kwargs: Any) -> RecordingInfo:
    """Write another session of the same world (same ``seed``) for map-vs-query evaluation."""
    if variant < 1:
        raise SynthError(f'a query session needs variant >= 1, got {variant}')
    return generate_recording(path, variant=variant, session=session, **kwargs)
