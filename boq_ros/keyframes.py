"""Which camera frames become keyframes of the map (and queries of the detector).

Describing every frame of a 30 Hz camera wastes compute and floods the map with near-duplicates;
backends expect keyframes every N seconds, every d metres / theta radians of odometry (LIO-SAM:
1 m, 0.2 rad) or exactly at the SLAM system's own keyframes so that ids agree. The selector is
fed the same stream by the live node and by the offline map builder and evaluator (through
``boq_ros.pipeline``), so both pick the same keyframes; it never sees images, only stamps and
poses.
"""
from __future__ import annotations

import bisect
import math

import numpy as np

from boq_ros.poses import HISTORY_S, Pose
from boq_ros.settings import KeyframeError as KeyframeError  # re-exported
from boq_ros.settings import KeyframePolicy

_NS = 1_000_000_000


def _rotation_angle(q0: np.ndarray, q1: np.ndarray) -> float:
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(q0, q1)))))


class KeyframeSelector:
    """Decides, frame by frame, whether a frame becomes a keyframe under a policy.

    Decisions are per camera (each camera gets its own keyframe every N seconds or d metres).
    ``stats`` counts offered and accepted frames and frames refused for lack of a pose.
    """

    def __init__(self, policy: KeyframePolicy | None = None) -> None:
        self.policy = policy or KeyframePolicy()
        self._external: list[int] = []
        self._last_stamp: dict[str, int] = {}
        self._last_pose: dict[str, Pose] = {}
        self._last_external: dict[str, int] = {}
        self._stats = {'offered': 0, 'accepted': 0, 'no_pose': 0}

    @property
    def stats(self) -> dict[str, int]:
        """Counters: offered, accepted, no_pose (distance mode without a pose)."""
        return dict(self._stats)

    def add_external(self, stamp_ns: int) -> None:
        """Record the stamp of a keyframe chosen elsewhere (the SLAM system)."""
        bisect.insort(self._external, int(stamp_ns))
        _forget_before(self._external, self._external[-1] - HISTORY_S * _NS)

    def forget_external(self) -> None:
        """Forget the external keyframe stamps (their stream started a new time base)."""
        self._external.clear()
        self._last_external.clear()

    def offer(self, stamp_ns: int, camera: str = '', pose: Pose | None = None) -> bool:
        """Say whether the frame of ``camera`` at ``stamp_ns`` (taken at `pose`) is a keyframe."""
        stamp_ns = int(stamp_ns)
        self._stats['offered'] += 1
        mode = self.policy.keyframe_mode
        if mode == 'interval':
            accept = self._interval(stamp_ns, camera)
        elif mode == 'distance':
            accept = self._distance(pose, camera)
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
        return last is None or abs(stamp_ns - last) >= self.policy.keyframe_interval_s * _NS

    def _distance(self, pose: Pose | None, camera: str) -> bool:
        if pose is None:
            self._stats['no_pose'] += 1
            return False
        last = self._last_pose.get(camera)
        if last is not None:
            moved = float(np.linalg.norm(np.subtract(pose[:3], last[:3])))
            q0, q1 = np.asarray(pose[3:]), np.asarray(last[3:])
            turned = (_rotation_angle(q0, q1)
                      if np.isfinite(q0).all() and np.isfinite(q1).all() else 0.0)
            if moved < self.policy.keyframe_distance_m and turned < self.policy.keyframe_angle_rad:
                return False
        self._last_pose[camera] = pose
        return True

    def _matches_external(self, stamp_ns: int, camera: str) -> bool:
        tolerance = self.policy.keyframe_stamp_tolerance_s * _NS
        used = self._last_external.get(camera)
        stamps = self._external
        lo = bisect.bisect_left(stamps, stamp_ns - tolerance)
        hi = bisect.bisect_right(stamps, stamp_ns + tolerance)
        candidates = [s for s in stamps[lo:hi] if used is None or s > used]
        if not candidates:
            return False
        self._last_external[camera] = min(candidates, key=lambda s: abs(s - stamp_ns))
        return True


def _forget_before(stamps: list[int], oldest: float) -> None:
    count = bisect.bisect_left(stamps, oldest)
    if count:
        del stamps[:count]
