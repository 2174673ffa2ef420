"""Ground truth for loop closure and place recognition: where every keyframe really was.

Positions are looked up by (session, sensor stamp), the key that offline runs and live-node
records share. A map keyframe is *eligible* for a query under the same rule the detector's
exclusion filter uses, so that a ground-truth positive is always something the detector could
have proposed: a keyframe of another session always is; one of the query's own session only when
it is in the query's past by at least ``exclusion_seconds`` and more than ``exclusion_keyframes``
keyframes (``seq < query_seq - exclusion_keyframes`` and
``stamp <= query_stamp - exclusion_seconds``).

Orientations are optional (a NavSatFix track has none); with them, the ground truth also gives
the relative pose of two keyframes, which verified loops' estimated poses are scored against.
"""
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from boq_ros.trajectory import matrix_from_quaternion

if TYPE_CHECKING:
    from boq_ros.eval.records import CandidateRecord
    from boq_ros.trajectory import Trajectory

_CHUNK = 1024  # query rows per block of the query x map distance matrix


class GroundTruthError(ValueError):
    """Raised for inconsistent ground truth or a record whose keyframe it does not know."""


@dataclass(frozen=True, eq=False)
class KeyframePositions:
    """Keyframes (session, stamp, seq within the session), true positions (m), orientations.

    `orientations` are [N, 4] unit quaternions (x y z w) of the keyframes' base in the ground
    truth's frame, or None when the ground truth has none.
    """

    sessions: tuple[str, ...]
    stamps_ns: np.ndarray
    seqs: np.ndarray
    xyz: np.ndarray
    orientations: np.ndarray | None = None
    _index: dict[tuple[str, int], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        stamps = np.asarray(self.stamps_ns, dtype=np.int64).reshape(-1)
        seqs = np.asarray(self.seqs, dtype=np.int64).reshape(-1)
        xyz = np.asarray(self.xyz, dtype=np.float64)
        n = len(self.sessions)
        if stamps.shape != (n,) or seqs.shape != (n,):
            raise GroundTruthError(
                f'sessions, stamps_ns and seqs must have one entry per keyframe '
                f'({n}, {stamps.size}, {seqs.size})')
        if xyz.ndim != 2 or xyz.shape[0] != n or xyz.shape[1] not in (2, 3):
            raise GroundTruthError(f'xyz must have shape [{n}, 3] (or [{n}, 2]), '
                                   f'got {list(xyz.shape)}')
        if not np.isfinite(xyz).all():
            raise GroundTruthError('xyz contains non-finite positions')
        if xyz.shape[1] == 2:
            xyz = np.concatenate([xyz, np.zeros((n, 1))], axis=1)
        quats = self.orientations
        if quats is not None:
            quats = np.asarray(quats, dtype=np.float64)
            if quats.shape != (n, 4) or not np.isfinite(quats).all():
                raise GroundTruthError(f'orientations must be [{n}, 4] finite quaternions '
                                       f'(x y z w), got {list(quats.shape)}')
            norms = np.linalg.norm(quats, axis=1)
            if (norms < 1e-9).any():
                raise GroundTruthError('orientations contain a zero quaternion')
            quats = quats / norms[:, None]
        index = {}
        for i, key in enumerate(zip(self.sessions, stamps.tolist())):
            if key in index:
                raise GroundTruthError(f'duplicate keyframe: session {key[0]!r} stamp {key[1]}')
            index[key] = i
        object.__setattr__(self, 'sessions', tuple(self.sessions))
        object.__setattr__(self, 'stamps_ns', stamps)
        object.__setattr__(self, 'seqs', seqs)
        object.__setattr__(self, 'xyz', xyz)
        object.__setattr__(self, 'orientations', quats)
        object.__setattr__(self, '_index', index)

    def __len__(self) -> int:
        return len(self.sessions)

    def index_of(self, session: str, stamp_ns: int) -> int:
        """Row of the keyframe (session, stamp_ns); GroundTruthError if unknown."""
        try:
            return self._index[(session, int(stamp_ns))]
        except KeyError:
            raise GroundTruthError(
                f'no ground truth for keyframe session {session!r} stamp {stamp_ns} ns') from None

    def pose(self, row: int) -> np.ndarray | None:
        """Return the 4x4 pose of a keyframe's base in the ground truth's frame (None: unknown)."""
        if self.orientations is None:
            return None
        out = np.eye(4)
        out[:3, :3] = matrix_from_quaternion(self.orientations[row])
        out[:3, 3] = self.xyz[row]
        return out

    @classmethod
    def from_sequence(cls, sessions: Sequence[str], stamps_ns: Sequence[int],
                      xyz: np.ndarray, orientations: np.ndarray | None = None
                      ) -> 'KeyframePositions':
        """Build positions, numbering each session's keyframes in stamp order as a map would."""
        stamps = np.asarray(stamps_ns, dtype=np.int64)
        seqs = np.zeros(len(sessions), dtype=np.int64)
        names = np.asarray(sessions, dtype=object)
        for name in dict.fromkeys(sessions):
            rows = np.flatnonzero(names == name)
            seqs[rows[np.argsort(stamps[rows], kind='stable')]] = np.arange(rows.size)
        return cls(tuple(sessions), stamps, seqs, xyz, orientations)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Query and map keyframe positions plus the exclusion window that defines eligibility.

    For loop closure within one run, ``map`` and ``queries`` are the same keyframes; for place
    recognition across runs they are the map run and the query run (different sessions).
    """

    map: KeyframePositions
    queries: KeyframePositions
    exclusion_seconds: float = 0.0
    exclusion_keyframes: int = 0

    def __post_init__(self) -> None:
        if not self.exclusion_seconds >= 0.0:
            raise GroundTruthError(
                f'exclusion_seconds must be >= 0, got {self.exclusion_seconds}')
        if self.exclusion_keyframes < 0:
            raise GroundTruthError(
                f'exclusion_keyframes must be >= 0, got {self.exclusion_keyframes}')

    def eligible(self, query_rows: np.ndarray) -> np.ndarray:
        """Boolean [len(query_rows), len(map)]: which map keyframes each query may match."""
        q = self.queries
        m = self.map
        q_sessions = np.asarray(q.sessions, dtype=object)[query_rows]
        same = q_sessions[:, None] == np.asarray(m.sessions, dtype=object)[None, :]
        window_ns = int(round(self.exclusion_seconds * 1e9))
        past = ((m.seqs[None, :] < q.seqs[query_rows, None] - self.exclusion_keyframes)
                & (m.stamps_ns[None, :] <= q.stamps_ns[query_rows, None] - window_ns))
        return ~same | past

    def distances(self, query_rows: np.ndarray) -> np.ndarray:
        """Euclidean distances [len(query_rows), len(map)] in metres."""
        diff = self.queries.xyz[query_rows, None, :] - self.map.xyz[None, :, :]
        return np.sqrt((diff * diff).sum(axis=-1))

    def has_positive(self, radius_m: float) -> np.ndarray:
        """Per query, whether some eligible map keyframe lies within `radius_m`."""
        out = np.zeros(len(self.queries), dtype=bool)
        if len(self.map) == 0:
            return out
        for start in range(0, len(self.queries), _CHUNK):
            rows = np.arange(start, min(start + _CHUNK, len(self.queries)))
            out[rows] = ((self.distances(rows) <= radius_m) & self.eligible(rows)).any(axis=1)
        return out

    def eligible_pair(self, query_row: int, map_row: int) -> bool:
        """Whether one map keyframe may match one query (the scalar form of `eligible`)."""
        q, m = self.queries, self.map
        if q.sessions[query_row] != m.sessions[map_row]:
            return True
        window_ns = int(round(self.exclusion_seconds * 1e9))
        return bool(m.seqs[map_row] < q.seqs[query_row] - self.exclusion_keyframes
                    and m.stamps_ns[map_row] <= q.stamps_ns[query_row] - window_ns)

    def distance(self, query_row: int, map_row: int) -> float:
        """Distance in metres between a query keyframe and a map keyframe."""
        return float(np.linalg.norm(self.queries.xyz[query_row] - self.map.xyz[map_row]))

    def relative_pose(self, query_row: int, map_row: int) -> np.ndarray | None:
        """Return the map keyframe's base in the query's base frame (4x4), None without poses.

        inv(T_world_query) @ T_world_match: what a verified loop's ``relative_pose_base``
        estimates.
        """
        query, match = self.queries.pose(query_row), self.map.pose(map_row)
        if query is None or match is None:
            return None
        return np.linalg.inv(query) @ match


def ground_truth_for_records(records: Sequence['CandidateRecord'],
                             trajectories: Mapping[str, 'Trajectory'],
                             exclusion_seconds: float, exclusion_keyframes: int,
                             max_gap_s: float | None = 2.0
                             ) -> tuple[GroundTruth, list['CandidateRecord'], int]:
    """Ground truth for recorded candidates (e.g. the live node's, via replay).

    The map is every keyframe that was queried or matched: complete for a map that grew with
    the recording (loop closure); for a prebuilt map, build `GroundTruth` from its keyframes
    instead. `trajectories` maps each session to its true trajectory (in one common frame).
    Records whose query or match has no ground truth (outside the trajectory, or in a gap
    longer than `max_gap_s`) are dropped; returns the ground truth, the kept records and the
    number dropped.
    """
    keys: dict[tuple[str, int], int] = {}
    for rec in records:
        keys.setdefault((rec.query_session, rec.query_stamp_ns), rec.query_seq)
        if rec.has_match:
            keys.setdefault((rec.match_session, rec.match_stamp_ns), rec.match_seq)
    known: dict[tuple[str, int], np.ndarray] = {}
    turned: dict[tuple[str, int], np.ndarray] | None = {}  # None: a session has no orientations
    for session in dict.fromkeys(s for s, _ in keys):
        if session not in trajectories:
            raise GroundTruthError(f'no trajectory for session {session!r} '
                                   f'(have: {", ".join(trajectories) or "none"})')
        stamps = np.array(sorted(t for s, t in keys if s == session), np.int64)
        xyz, quats, valid = trajectories[session].interpolate(stamps, max_gap_s)
        known.update({(session, int(t)): p for t, p, ok in zip(stamps, xyz, valid) if ok})
        if quats is None:
            turned = None
        elif turned is not None:
            turned.update({(session, int(t)): q for t, q, ok in zip(stamps, quats, valid) if ok})
    kept = [r for r in records if (r.query_session, r.query_stamp_ns) in known
            and (not r.has_match or (r.match_session, r.match_stamp_ns) in known)]
    rows = sorted(k for k in keys if k in known)
    sessions = [s for s, _ in rows]
    stamps = np.array([t for _, t in rows], np.int64)
    xyz = np.array([known[k] for k in rows]).reshape(len(rows), 3)
    quats = None if turned is None else np.array([turned[k] for k in rows]).reshape(len(rows), 4)
    numbered = KeyframePositions.from_sequence(sessions, stamps, xyz)
    recorded = np.array([keys[k] for k in rows], np.int64)
    seqs = np.where(recorded >= 0, recorded, numbered.seqs)
    positions = KeyframePositions(tuple(sessions), stamps, seqs, xyz, quats)
    return (GroundTruth(positions, positions, exclusion_seconds, exclusion_keyframes), kept,
            len(records) - len(kept))
