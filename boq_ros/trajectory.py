"""Timed poses: the ground truth that place recognition and keyframe selection are judged by.

Recordings carry their poses in many ways (odometry, pose topics, TF, GNSS fixes, TUM or KITTI
files next to the bag); evaluation needs one thing: the position (and orientation) at an image's
timestamp. :class:`Trajectory` loads all of them and interpolates (linear + slerp), refusing to
guess outside the covered time range or across gaps.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING
import warnings

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from boq_ros.bags import Bag


class TrajectoryError(ValueError):
    """Raised for trajectories that cannot be built: empty, unsorted, malformed files, ..."""


# Message types that carry a pose (NavSatFix: a position only), as Trajectory.from_bag reads them.
POSE_TYPES = ('nav_msgs/msg/Odometry', 'geometry_msgs/msg/PoseStamped',
              'geometry_msgs/msg/PoseWithCovarianceStamped', 'tf2_msgs/msg/TFMessage',
              'sensor_msgs/msg/NavSatFix')


def pose_topics(bag: Bag) -> dict[str, str]:
    """Return topic -> message type of the topics :meth:`Trajectory.from_bag` can read."""
    return {name: info.msgtype for name, info in sorted(bag.topics.items())
            if info.msgtype in POSE_TYPES}


GROUND_TRUTH_NAMESPACE = '/ground_truth/'
"""Pose topics under this namespace hold exact poses (a simulator's, a motion capture's)."""


def ground_truth_topics(bag: Bag) -> dict[str, str]:
    """Return topic -> type of the pose topics under ``/ground_truth/``.

    Evaluation scores against them, never against odometry that only estimates them.
    """
    return {name: msgtype for name, msgtype in pose_topics(bag).items()
            if name.startswith(GROUND_TRUTH_NAMESPACE)}


def _pose_topic_list(bag: Bag) -> str:
    """Describe a bag's pose-capable topics for an error message, so the fix is one look away."""
    found = pose_topics(bag)
    if not found:
        return f'the bag has no pose topics (it needs one of {", ".join(POSE_TYPES)})'
    return 'pose topics: ' + ', '.join(f'{name} ({msgtype})' for name, msgtype in found.items())


_WGS84_A = 6378137.0
_WGS84_E2 = 6.69437999014e-3


def _ecef(lat_deg: np.ndarray, lon_deg: np.ndarray, alt: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    n = _WGS84_A / np.sqrt(1.0 - _WGS84_E2 * np.sin(lat) ** 2)
    return np.stack([(n + alt) * np.cos(lat) * np.cos(lon),
                     (n + alt) * np.cos(lat) * np.sin(lon),
                     (n * (1.0 - _WGS84_E2) + alt) * np.sin(lat)], axis=-1)


def geodetic_to_enu(latitude: np.ndarray, longitude: np.ndarray, altitude: np.ndarray,
                    origin: tuple[float, float, float]) -> np.ndarray:
    """Convert WGS84 fixes to local east-north-up metres about ``origin`` (lat, lon, alt)."""
    lat0, lon0, alt0 = origin
    delta = _ecef(np.asarray(latitude, float), np.asarray(longitude, float),
                  np.asarray(altitude, float)) - _ecef(np.array(lat0), np.array(lon0),
                                                      np.array(alt0))
    phi, lam = math.radians(lat0), math.radians(lon0)
    rotation = np.array([
        [-math.sin(lam), math.cos(lam), 0.0],
        [-math.sin(phi) * math.cos(lam), -math.sin(phi) * math.sin(lam), math.cos(phi)],
        [math.cos(phi) * math.cos(lam), math.cos(phi) * math.sin(lam), math.sin(phi)],
    ])
    return delta @ rotation.T


def quaternion_from_matrix(rotation: np.ndarray) -> np.ndarray:
    """Convert 3x3 rotation matrices [..., 3, 3] to unit quaternions [..., 4] (x, y, z, w)."""
    r = np.asarray(rotation, dtype=np.float64)
    # Squared magnitudes of the four components (always >= 0 up to rounding); take the largest
    # for numerical stability and derive the signs of the others from it.
    trace = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    w2 = 1 + trace
    x2 = 1 + r[..., 0, 0] - r[..., 1, 1] - r[..., 2, 2]
    y2 = 1 - r[..., 0, 0] + r[..., 1, 1] - r[..., 2, 2]
    z2 = 1 - r[..., 0, 0] - r[..., 1, 1] + r[..., 2, 2]
    sq = np.stack([x2, y2, z2, w2], axis=-1)
    best = np.argmax(sq, axis=-1)
    s = np.sqrt(np.maximum(np.take_along_axis(sq, best[..., None], -1)[..., 0], 1e-300)) * 2
    xy = r[..., 0, 1] + r[..., 1, 0]
    xz = r[..., 0, 2] + r[..., 2, 0]
    yz = r[..., 1, 2] + r[..., 2, 1]
    wx = r[..., 2, 1] - r[..., 1, 2]
    wy = r[..., 0, 2] - r[..., 2, 0]
    wz = r[..., 1, 0] - r[..., 0, 1]
    candidates = np.stack([
        np.stack([s / 4, xy / s, xz / s, wx / s], -1),
        np.stack([xy / s, s / 4, yz / s, wy / s], -1),
        np.stack([xz / s, yz / s, s / 4, wz / s], -1),
        np.stack([wx / s, wy / s, wz / s, s / 4], -1),
    ], axis=-2)
    q = np.take_along_axis(candidates, best[..., None, None], -2)[..., 0, :]
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def matrix_from_quaternion(quaternion: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return the 3x3 rotation of a quaternion (x, y, z, w; normalised here)."""
    x, y, z, w = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions [..., 4] (shortest path)."""
    q0 = np.asarray(q0, float)
    q1 = np.asarray(q1, float).copy()
    t = np.asarray(t, float)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-6
    safe = np.where(near, 1.0, sin_theta)
    w0 = np.where(near, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    w1 = np.where(near, t, np.sin(t * theta) / safe)
    q = w0 * q0 + w1 * q1
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


_MAX_STAMP_S = Decimal(2**63) / 1_000_000_000


def _parse_ns(text: str, where: str) -> int:
    """Parse decimal seconds exactly into integer nanoseconds (floats lose ns at epoch scale)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise TrajectoryError(f'{where}: cannot parse timestamp {text!r}') from None
    if not value.is_finite():
        raise TrajectoryError(f'{where}: timestamp {text!r} is not finite')
    if value.copy_abs() >= _MAX_STAMP_S:  # before scaling (abs() would overflow on 1e9999999)
        raise TrajectoryError(f'{where}: timestamp {text!r} is out of range (int64 nanoseconds)')
    return int((value * 1_000_000_000).to_integral_value())


def _parse_floats(fields: list[str], where: str) -> list[float]:
    try:
        values = [float(f) for f in fields]
    except ValueError as err:
        raise TrajectoryError(f'{where}: {err}') from None
    if not all(math.isfinite(v) for v in values):
        raise TrajectoryError(f'{where}: values must be finite')
    return values


def _data_lines(path: Path) -> list[tuple[int, list[str]]]:
    with open(path, encoding='utf-8') as f:
        lines = f.read().splitlines()
    result = []
    for number, line in enumerate(lines, start=1):
        text = line.split('#', 1)[0].replace(',', ' ').strip()
        if text:
            result.append((number, text.split()))
    return result


@dataclass(frozen=True)
class Trajectory:
    """Poses at strictly increasing integer-nanosecond stamps; orientation optional (GNSS)."""

    stamps_ns: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray | None = None

    def __post_init__(self) -> None:
        stamps = np.asarray(self.stamps_ns)
        if stamps.ndim != 1 or stamps.size == 0:
            raise TrajectoryError(f'trajectory is empty or stamps are not 1-D ({stamps.shape})')
        if not np.issubdtype(stamps.dtype, np.integer):
            raise TrajectoryError(f'stamps must be integer nanoseconds, got {stamps.dtype}')
        stamps = stamps.astype(np.int64)
        bad = np.flatnonzero(np.diff(stamps) <= 0)
        if bad.size:
            raise TrajectoryError(
                f'stamps must be strictly increasing; index {bad[0] + 1} ({stamps[bad[0] + 1]}) '
                f'follows {stamps[bad[0]]}')
        positions = np.asarray(self.positions, dtype=np.float64)
        if positions.shape != (stamps.size, 3):
            raise TrajectoryError(f'positions must be [{stamps.size}, 3], got {positions.shape}')
        if not np.isfinite(positions).all():
            raise TrajectoryError('positions must be finite')
        orientations = self.orientations
        if orientations is not None:
            orientations = np.asarray(orientations, dtype=np.float64)
            if orientations.shape != (stamps.size, 4):
                raise TrajectoryError(
                    f'orientations must be [{stamps.size}, 4] (x, y, z, w), '
                    f'got {orientations.shape}')
            norms = np.linalg.norm(orientations, axis=1)
            if not (np.isfinite(norms).all() and (norms > 1e-9).all()):
                raise TrajectoryError('orientations must be finite, non-zero quaternions')
            orientations = orientations / norms[:, None]
        object.__setattr__(self, 'stamps_ns', stamps)
        object.__setattr__(self, 'positions', positions)
        object.__setattr__(self, 'orientations', orientations)

    def __len__(self) -> int:
        return int(self.stamps_ns.size)

    @property
    def duration_s(self) -> float:
        """Time covered, in seconds."""
        return float(self.stamps_ns[-1] - self.stamps_ns[0]) / 1e9

    def path_length(self) -> float:
        """Distance travelled along the poses, in metres."""
        return float(np.linalg.norm(np.diff(self.positions, axis=0), axis=1).sum())

    def interpolate(self, stamps_ns: np.ndarray | int, max_gap_s: float | None = 2.0
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Return positions [M, 3], orientations [M, 4] or None, and a validity mask [M].

        A stamp is valid when it lies within the covered time range and its two neighbouring
        poses are at most ``max_gap_s`` apart (None: no limit); invalid rows are NaN.
        """
        query = np.atleast_1d(np.asarray(stamps_ns))
        if not np.issubdtype(query.dtype, np.integer):
            raise TrajectoryError(f'stamps must be integer nanoseconds, got {query.dtype}')
        query = query.astype(np.int64)
        stamps = self.stamps_ns
        n = stamps.size
        if n == 1:
            upper = np.zeros(query.shape, np.int64)
            lower = upper
            t = np.zeros(query.shape)
            valid = query == stamps[0]
        else:
            upper = np.clip(np.searchsorted(stamps, query, side='left'), 1, n - 1)
            lower = upper - 1
            span = stamps[upper] - stamps[lower]
            t = (query - stamps[lower]).astype(np.float64) / span
            valid = (query >= stamps[0]) & (query <= stamps[-1])
            if max_gap_s is not None:
                valid &= span <= max_gap_s * 1e9
        positions = self.positions[lower] + t[:, None] * (
            self.positions[upper] - self.positions[lower])
        positions[~valid] = np.nan
        orientations = None
        if self.orientations is not None:
            orientations = slerp(self.orientations[lower], self.orientations[upper], t)
            orientations[~valid] = np.nan
        return positions, orientations, valid

    @classmethod
    def from_bag(cls, bag: Bag | str | os.PathLike, topic: str,
                 child_frame: str | None = None) -> Trajectory:
        """Load a pose topic of a bag, by message type (Odometry, PoseStamped, ..., NavSatFix).

        Stamps are header stamps. For ``tf2_msgs/TFMessage`` topics, ``child_frame`` picks the
        transforms to use; for Odometry it optionally filters on ``child_frame_id``. NavSatFix
        fixes become east-north-up metres about the first valid fix, without orientation.
        """
        from boq_ros.bags import Bag, open_bag, stamp_to_ns

        if not isinstance(bag, Bag):
            with open_bag(bag) as opened:
                return cls.from_bag(opened, topic, child_frame)
        info = bag.topics.get(topic)
        if info is None:
            raise TrajectoryError(
                f'topic {topic!r} is not in bag {bag.path}; {_pose_topic_list(bag)}')
        msgtype = info.msgtype
        child = child_frame.lstrip('/') if child_frame else None
        if msgtype not in POSE_TYPES:
            raise TrajectoryError(
                f'topic {topic!r} has type {msgtype}; poses come from {", ".join(POSE_TYPES)}; '
                f'in bag {bag.path}: {_pose_topic_list(bag)}')
        if msgtype == 'tf2_msgs/msg/TFMessage' and child is None:
            raise TrajectoryError(f'topic {topic!r} carries TF: pass child_frame')

        stamps: list[int] = []
        rows: list[tuple[float, ...]] = []
        for message in bag.messages([topic]):
            msg = message.decode()
            if msgtype == 'sensor_msgs/msg/NavSatFix':
                values = (msg.latitude, msg.longitude, msg.altitude)
                if msg.status.status < 0 or not all(map(math.isfinite, values[:2])):
                    continue
                stamps.append(stamp_to_ns(msg.header.stamp))
                rows.append(values)
                continue
            if msgtype == 'tf2_msgs/msg/TFMessage':
                for tf in msg.transforms:
                    if tf.child_frame_id.lstrip('/') == child:
                        p, q = tf.transform.translation, tf.transform.rotation
                        stamps.append(stamp_to_ns(tf.header.stamp))
                        rows.append((p.x, p.y, p.z, q.x, q.y, q.z, q.w))
                continue
            if msgtype == 'nav_msgs/msg/Odometry':
                if child is not None and msg.child_frame_id.lstrip('/') != child:
                    continue
                pose = msg.pose.pose
            elif msgtype == 'geometry_msgs/msg/PoseWithCovarianceStamped':
                pose = msg.pose.pose
            else:
                pose = msg.pose
            p, q = pose.position, pose.orientation
            stamps.append(stamp_to_ns(msg.header.stamp))
            rows.append((p.x, p.y, p.z, q.x, q.y, q.z, q.w))
        if rows and msgtype != 'sensor_msgs/msg/NavSatFix':
            # A pose a broken message carries (NaN, a zero quaternion) is dropped, not fatal.
            data = np.asarray(rows, dtype=np.float64)
            norms = np.linalg.norm(data[:, 3:], axis=1)
            good = np.isfinite(data).all(axis=1) & (norms > 1e-9)
            if not good.all():
                bad = int(np.argmin(good))
                warnings.warn(f'{bag.path} {topic}: {int((~good).sum())} of {len(rows)} poses '
                              f'are not finite or have a zero quaternion and are dropped '
                              f'(first at {stamps[bad]} ns)', stacklevel=2)
                stamps = [s for s, g in zip(stamps, good) if g]
                rows = [r for r, g in zip(rows, good) if g]
        if not stamps:
            what = f' with child frame {child!r}' if child else ''
            raise TrajectoryError(f'topic {topic!r} in {bag.path} has no usable poses{what}')

        stamp_array = np.asarray(stamps, dtype=np.int64)
        order = np.argsort(stamp_array, kind='stable')
        stamp_array = stamp_array[order]
        keep = np.concatenate([[True], np.diff(stamp_array) > 0])
        data = np.asarray(rows, dtype=np.float64)[order][keep]
        stamp_array = stamp_array[keep]
        if msgtype == 'sensor_msgs/msg/NavSatFix':
            altitude = np.where(np.isfinite(data[:, 2]), data[:, 2], 0.0)
            origin = (data[0, 0], data[0, 1], altitude[0])
            return cls(stamp_array, geodetic_to_enu(data[:, 0], data[:, 1], altitude, origin))
        return cls(stamp_array, data[:, :3], data[:, 3:])

    @classmethod
    def from_tum(cls, path: str | os.PathLike) -> Trajectory:
        """Load a TUM file: ``timestamp tx ty tz qx qy qz qw`` per line, seconds, '#' comments."""
        path = Path(path)
        stamps, rows = [], []
        for number, fields in _data_lines(path):
            where = f'{path}:{number}'
            if len(fields) != 8:
                raise TrajectoryError(
                    f'{where}: expected 8 values (timestamp tx ty tz qx qy qz qw), '
                    f'got {len(fields)}')
            stamp = _parse_ns(fields[0], where)
            if stamps and stamp <= stamps[-1]:
                raise TrajectoryError(f'{where}: timestamp is not after the previous line')
            stamps.append(stamp)
            rows.append(_parse_floats(fields[1:], where))
        if not stamps:
            raise TrajectoryError(f'{path} holds no poses')
        data = np.asarray(rows)
        return cls(np.asarray(stamps, np.int64), data[:, :3], data[:, 3:])

    @classmethod
    def from_kitti(cls, path: str | os.PathLike,
                   times_path_or_stamps: str | os.PathLike | np.ndarray) -> Trajectory:
        """Load KITTI poses (a 3x4 row-major [R|t] per line) with a times file or ns stamps."""
        path = Path(path)
        rows = []
        for number, fields in _data_lines(path):
            where = f'{path}:{number}'
            if len(fields) != 12:
                raise TrajectoryError(f'{where}: expected 12 values (3x4 pose), got {len(fields)}')
            matrix = np.asarray(_parse_floats(fields, where)).reshape(3, 4)
            rotation = matrix[:, :3]
            if (not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-3)
                    or np.linalg.det(rotation) <= 0):
                raise TrajectoryError(f'{where}: rotation part is not a rotation matrix')
            rows.append(matrix)
        if not rows:
            raise TrajectoryError(f'{path} holds no poses')
        if isinstance(times_path_or_stamps, np.ndarray):
            stamps = times_path_or_stamps
        else:
            times_path = Path(times_path_or_stamps)
            stamps = np.asarray([_parse_ns(fields[0], f'{times_path}:{number}')
                                 for number, fields in _data_lines(times_path)], np.int64)
        if len(stamps) != len(rows):
            raise TrajectoryError(f'{path} has {len(rows)} poses but {len(stamps)} timestamps')
        poses = np.stack(rows)
        return cls(np.asarray(stamps), poses[:, :, 3], quaternion_from_matrix(poses[:, :, :3]))

    def to_tum(self, path: str | os.PathLike) -> None:
        """Write a TUM file (exact ns stamps; identity orientation if the trajectory has none)."""
        orientations = self.orientations
        if orientations is None:
            orientations = np.tile([0.0, 0.0, 0.0, 1.0], (len(self), 1))
        with open(path, 'w', encoding='utf-8') as f:
            f.write('# timestamp tx ty tz qx qy qz qw\n')
            for stamp, p, q in zip(self.stamps_ns.tolist(), self.positions, orientations):
                sec, nsec = divmod(abs(stamp), 1_000_000_000)
                sign = '-' if stamp < 0 else ''
                values = ' '.join(repr(float(v)) for v in (*p, *q))
                f.write(f'{sign}{sec}.{nsec:09d} {values}\n')
