"""Which camera frames become keyframes of the map (and queries of the detector).

Describing every frame of a 30 Hz camera wastes compute and floods the map with near-duplicates;
backends expect keyframes every N seconds, every d metres / theta radians of odometry (LIO-SAM:
1 m, 0.2 rad) or exactly at the SLAM system's own keyframes so that ids agree. The selector is
fed the same stream by the live node and by the offline map builder and evaluator, so both pick
the same keyframes; it never sees images, only stamps and poses.
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
import math
from typing import Literal

import numpy as np

KeyframeMode = Literal['every_frame', 'interval', 'distance', 'external']
MODES = ('every_frame', 'interval', 'distance', 'external')
HISTORY_S = 30.0
"""Poses and external keyframe stamps older than this (before the newest one) are forgotten."""

_NS = 1_000_000_000


class KeyframeError(ValueError):
    """Raised for an invalid keyframe policy or pose."""


@dataclass(frozen=True)
class KeyframePolicy:
    """When to take a keyframe; the thresholds of other modes are ignored.

    ``distance`` takes a keyframe after ``distance_m`` of travel or ``angle_rad`` of rotation
    (use ``math.inf`` to disable either), using the pose nearest in time within
    ``pose_tolerance_s``. ``external`` takes the frame whose stamp is within
    ``external_tolerance_s`` of a stamp given to :meth:`KeyframeSelector.add_external`.
    """

    mode: KeyframeMode = 'every_frame'
    interval_s: float = 1.0
    distance_m: float = 1.0
    angle_rad: float = 0.2
    pose_tolerance_s: float = 0.1
    external_tolerance_s: float = 0.01

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise KeyframeError(f'unknown keyframe mode {self.mode!r} (use {", ".join(MODES)})')
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise KeyframeError(f'interval_s must be positive and finite, got {self.interval_s}')
        for name in ('distance_m', 'angle_rad'):
            value = getattr(self, name)
            if math.isnan(value) or value <= 0:
                raise KeyframeError(f'{name} must be positive (inf disables it), got {value}')
        if math.isinf(self.distance_m) and math.isinf(self.angle_rad):
            raise KeyframeError('distance_m and angle_rad cannot both be infinite')
        for name in ('pose_tolerance_s', 'external_tolerance_s'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise KeyframeError(f'{name} must be finite and >= 0, got {value}')


def _rotation_angle(q0: np.ndarray, q1: np.ndarray) -> float:
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(q0, q1)))))


class KeyframeSelector:
    """Decides, frame by frame, whether a frame becomes a keyframe under a policy.

    Decisions are per camera (each camera gets its own keyframe every N seconds or d metres).
    ``stats`` counts offered and accepted frames and frames refused for lack of a pose.
    """

    def __init__(self, policy: KeyframePolicy | None = None) -> None:
        self.policy = policy or KeyframePolicy()
        self._pose_stamps: list[int] = []
        self._poses: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._external: list[int] = []
        self._last_stamp: dict[str, int] = {}
        self._last_pose: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._last_external: dict[str, int] = {}
        self._stats = {'offered': 0, 'accepted': 0, 'no_pose': 0}

    @property
    def stats(self) -> dict[str, int]:
        """Counters: offered, accepted, no_pose (distance mode without a pose near in time)."""
        return dict(self._stats)

    def update_pose(self, stamp_ns: int, position: Sequence[float],
                    quaternion_xyzw: Sequence[float] | None = None) -> None:
        """Record a pose (odometry); poses may arrive out of order."""
        p = np.asarray(position, dtype=np.float64)
        if p.shape != (3,) or not np.isfinite(p).all():
            raise KeyframeError(f'position must be 3 finite values, got {position!r}')
        q = None
        if quaternion_xyzw is not None:
            q = np.asarray(quaternion_xyzw, dtype=np.float64)
            norm = float(np.linalg.norm(q)) if q.shape == (4,) else 0.0
            if not (math.isfinite(norm) and norm > 1e-9):
                raise KeyframeError(f'quaternion must be 4 finite values, not all zero, '
                                    f'got {quaternion_xyzw!r}')
            q = q / norm
        stamp_ns = int(stamp_ns)
        index = bisect.bisect_right(self._pose_stamps, stamp_ns)
        self._pose_stamps.insert(index, stamp_ns)
        self._poses.insert(index, (p, q))
        _forget_before(self._pose_stamps, self._poses, self._pose_stamps[-1] - HISTORY_S * _NS)

    def add_external(self, stamp_ns: int) -> None:
        """Record the stamp of a keyframe chosen elsewhere (the SLAM system)."""
        bisect.insort(self._external, int(stamp_ns))
        _forget_before(self._external, None, self._external[-1] - HISTORY_S * _NS)

    def offer(self, stamp_ns: int, camera: str = '') -> bool:
        """Say whether the frame of ``camera`` at ``stamp_ns`` becomes a keyframe."""
        stamp_ns = int(stamp_ns)
        self._stats['offered'] += 1
        mode = self.policy.mode
        if mode == 'interval':
            accept = self._interval(stamp_ns, camera)
        elif mode == 'distance':
            accept = self._distance(stamp_ns, camera)
        elif mode == 'external':
            accept = self._matches_external(stamp_ns, camera)
        else:
            accept = True
        if accept:
            self._stats['accepted'] += 1
            self._last_stamp[camera] = stamp_ns
        return accept

    def _interval(self, stamp_ns: int, camera: str) -> bool:
        last = self._last_stamp.get(camera)
        # A jump backwards by more than the interval is a clock reset (bag loop): accept.
        return last is None or abs(stamp_ns - last) >= self.policy.interval_s * _NS

    def _distance(self, stamp_ns: int, camera: str) -> bool:
        pose = self._nearest_pose(stamp_ns)
        if pose is None:
            self._stats['no_pose'] += 1
            return False
        last = self._last_pose.get(camera)
        if last is not None:
            moved = float(np.linalg.norm(pose[0] - last[0]))
            turned = (_rotation_angle(pose[1], last[1])
                      if pose[1] is not None and last[1] is not None else 0.0)
            if moved < self.policy.distance_m and turned < self.policy.angle_rad:
                return False
        self._last_pose[camera] = pose
        return True

    def _nearest_pose(self, stamp_ns: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        stamps = self._pose_stamps
        index = bisect.bisect_left(stamps, stamp_ns)
        best = min((i for i in (index - 1, index) if 0 <= i < len(stamps)),
                   key=lambda i: abs(stamps[i] - stamp_ns), default=None)
        if best is None or abs(stamps[best] - stamp_ns) > self.policy.pose_tolerance_s * _NS:
            return None
        return self._poses[best]

    def _matches_external(self, stamp_ns: int, camera: str) -> bool:
        tolerance = self.policy.external_tolerance_s * _NS
        used = self._last_external.get(camera)
        stamps = self._external
        lo = bisect.bisect_left(stamps, stamp_ns - tolerance)
        hi = bisect.bisect_right(stamps, stamp_ns + tolerance)
        candidates = [s for s in stamps[lo:hi] if used is None or s > used]
        if not candidates:
            return False
        self._last_external[camera] = min(candidates, key=lambda s: abs(s - stamp_ns))
        return True


def _forget_before(stamps: list[int], values: list | None, oldest: float) -> None:
    count = bisect.bisect_left(stamps, oldest)
    if count:
        del stamps[:count]
        if values is not None:
            del values[:count]
