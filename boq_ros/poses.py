"""The one pose lookup policy: which pose a camera frame gets from a stream of timed poses.

The live node (odometry messages), `map build` and `eval` (a recording's pose topic) all ask a
:class:`PoseBuffer`, so a keyframe grown live and one built offline from the same recording store
the same pose. The pose at an image stamp t is interpolated (linear position, slerp orientation)
between the poses just before and just after t when both are within ``tolerance_s`` of t;
otherwise it is the nearer of the two if that one is within ``tolerance_s``; otherwise there is
none. Poses are 7-tuples ``x y z qx qy qz qw``; the quaternion is all NaN when only the position
is known (GNSS).
"""
import bisect
from collections.abc import Sequence
import math

import numpy as np

from boq_ros.keyframe_map.meta import Pose
from boq_ros.trajectory import slerp

__all__ = ['Pose', 'PoseBuffer', 'PoseError']

_NS = 1_000_000_000
HISTORY_S = 30.0
"""Poses and external keyframe stamps older than this (before the newest one) are forgotten."""


class PoseError(ValueError):
    """Raised for a pose that cannot be used (non-finite position, zero quaternion)."""


def make_pose(position: Sequence[float], quaternion_xyzw: Sequence[float] | None) -> Pose:
    """Check and normalise a position and optional quaternion into a Pose."""
    p = [float(v) for v in position]
    if len(p) != 3 or not all(math.isfinite(v) for v in p):
        raise PoseError(f'position must be 3 finite values, got {tuple(position)!r}')
    if quaternion_xyzw is None:
        return (*p, math.nan, math.nan, math.nan, math.nan)
    q = [float(v) for v in quaternion_xyzw]
    norm = math.sqrt(sum(v * v for v in q)) if len(q) == 4 else 0.0
    if not (math.isfinite(norm) and norm > 1e-9):
        raise PoseError(f'quaternion must be 4 finite values, not all zero, '
                        f'got {tuple(quaternion_xyzw)!r}')
    return (*p, *(v / norm for v in q))


class PoseBuffer:
    """Timed poses of one stream (in any arrival order), kept for `history_s` before the newest.

    Not thread-safe: feed and ask it from one thread (the node's input callbacks are serialised).
    """

    def __init__(self, tolerance_s: float, history_s: float = HISTORY_S, frame: str = '',
                 source: str = '') -> None:
        self.tolerance_ns = int(round(tolerance_s * _NS))
        self.history_ns = int(history_s * _NS)
        self.frame, self.source = frame, source  # stored with every pose taken from here
        self._stamps: list[int] = []
        self._poses: list[Pose] = []
        self.silent = False  # no pose came while a frame waited for one: don't wait again

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_ns(self) -> int | None:
        """Stamp of the newest pose, None when empty."""
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, position: Sequence[float],
            quaternion_xyzw: Sequence[float] | None = None, frame: str | None = None) -> None:
        """Record a pose; PoseError if it is unusable. `frame`: the frame it is expressed in."""
        pose = make_pose(position, quaternion_xyzw)
        self.silent = False
        stamp_ns = int(stamp_ns)
        index = bisect.bisect_right(self._stamps, stamp_ns)
        self._stamps.insert(index, stamp_ns)
        self._poses.insert(index, pose)
        if frame is not None:
            self.frame = frame
        drop = bisect.bisect_left(self._stamps, self._stamps[-1] - self.history_ns)
        if drop:
            del self._stamps[:drop], self._poses[:drop]

    def clear(self) -> None:
        """Forget every pose (a new time base)."""
        self._stamps.clear()
        self._poses.clear()

    def decidable(self, stamp_ns: int) -> bool:
        """Whether the pose at `stamp_ns` is final: no pose yet to come can change it.

        True when a pose at or after the stamp is known, or when the newest pose is more than
        the tolerance older than it (the stream stopped); before the first pose only once the
        stream is known to be `silent` (a frame waited for it in vain).
        """
        newest = self.newest_ns
        if newest is None:
            return self.silent
        return newest >= stamp_ns or newest < stamp_ns - self.tolerance_ns

    def lookup(self, stamp_ns: int) -> Pose | None:
        """Return the pose at `stamp_ns` under the policy of this module, or None."""
        stamps, tol = self._stamps, self.tolerance_ns
        after = bisect.bisect_left(stamps, stamp_ns)
        before = after - 1 if after == len(stamps) or stamps[after] != stamp_ns else after
        b_ok = before >= 0 and stamp_ns - stamps[before] <= tol
        a_ok = after < len(stamps) and stamps[after] - stamp_ns <= tol
        if b_ok and a_ok:
            if stamps[after] == stamps[before]:
                return self._poses[after]
            return _interpolate(self._poses[before], self._poses[after],
                                (stamp_ns - stamps[before]) / (stamps[after] - stamps[before]))
        if b_ok or a_ok:
            return self._poses[before if b_ok else after]
        return None


def _interpolate(p0: Pose, p1: Pose, t: float) -> Pose:
    position = [a + t * (b - a) for a, b in zip(p0[:3], p1[:3])]
    q0, q1 = np.asarray(p0[3:]), np.asarray(p1[3:])
    if not (np.isfinite(q0).all() and np.isfinite(q1).all()):
        return (*position, math.nan, math.nan, math.nan, math.nan)
    return (*position, *(float(v) for v in slerp(q0, q1, np.float64(t))))
