"""Candidate records: the one format both the offline pipeline and the live node's outputs use.

A record is one (query, candidate) pair; a query that was searched but had no candidate (empty
map, everything inside the exclusion window) is kept as one record with ``rank == -1`` so that the
evaluation knows it was processed. Records are stored as JSON lines, one record per line, so that
a recorder can append while the node runs and a crash loses at most the last line.

Verification fields: ``status`` and ``pose_kind`` hold the values of boq_ros/LoopCandidate.msg
(``boq_ros.detector.Status`` and ``PoseKind``), ``inliers`` the geometric inliers (0 when not
verified), ``relative_pose`` the match's base in the query's base frame (x y z qx qy qz qw) of a
verified candidate with a pose, else None, and ``covariance`` its 6x6 covariance (36 numbers,
row-major, x y z rx ry rz as LoopCandidate's relative_pose_base; None when unknown).
``accepted`` marks the accepted candidate of a query, at whatever rank verification found it.
Files written before these fields existed still read: the fields take their defaults.
"""
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, fields
import json
import math
import os
from pathlib import Path
from typing import Any

NO_MATCH = -1  # match_id, match_seq and rank of the record of a query without candidates

STATUS_NAMES = ('appearance_only', 'verified', 'rejected')
"""Names of the status values (boq_ros.detector.Status, LoopCandidate.STATUS_*)."""
STATUS_VERIFIED = 1
POSE_KIND_NAMES = ('none', 'metric', 'up_to_scale', 'odometry_scale')
"""Names of the pose kind values (boq_ros.detector.PoseKind, LoopCandidate.POSE_*)."""
POSE_METRIC = 1
POSE_ODOMETRY_SCALE = 3
SCALED_POSE_KINDS = (POSE_METRIC, POSE_ODOMETRY_SCALE)
"""Pose kinds whose translation is in metres (the others: a direction, or no pose)."""


class RecordFormatError(ValueError):
    """Raised when a record or a records file is malformed (names the line and the field)."""


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate proposed for one query keyframe, keyed so ground truth can be joined to it."""

    query_id: int
    query_stamp_ns: int
    query_session: str
    query_camera: str
    query_seq: int
    match_id: int
    match_stamp_ns: int
    match_session: str
    match_seq: int
    similarity: float
    rank: int
    accepted: bool
    status: int = 0
    inliers: int = 0
    pose_kind: int = 0
    relative_pose: tuple[float, ...] | None = None
    covariance: tuple[float, ...] | None = None

    @property
    def has_match(self) -> bool:
        """Whether this record carries a candidate (False for a query with an empty top-k)."""
        return self.rank >= 0

    def validate(self) -> None:
        """Refuse values that would silently corrupt an evaluation."""
        if self.rank < NO_MATCH:
            raise RecordFormatError(f'rank must be >= -1, got {self.rank}')
        if self.has_match and not math.isfinite(self.similarity):
            raise RecordFormatError(f'similarity must be finite, got {self.similarity}')
        if self.query_stamp_ns < 0 or (self.has_match and self.match_stamp_ns < 0):
            raise RecordFormatError('stamps must be non-negative nanoseconds')
        if not self.query_session:
            raise RecordFormatError('query_session must not be empty')
        if not 0 <= self.status < len(STATUS_NAMES):
            raise RecordFormatError(f'status must be 0..{len(STATUS_NAMES) - 1}, got '
                                    f'{self.status}')
        if not 0 <= self.pose_kind < len(POSE_KIND_NAMES):
            raise RecordFormatError(f'pose_kind must be 0..{len(POSE_KIND_NAMES) - 1}, got '
                                    f'{self.pose_kind}')
        if self.inliers < 0:
            raise RecordFormatError(f'inliers must be >= 0, got {self.inliers}')
        pose = self.relative_pose
        if pose is not None:
            if len(pose) != 7 or not all(math.isfinite(v) for v in pose):
                raise RecordFormatError(f'relative_pose must be 7 finite numbers (x y z qx qy '
                                        f'qz qw), got {pose}')
            if abs(math.hypot(*pose[3:]) - 1.0) > 1e-3:
                raise RecordFormatError(f'relative_pose needs a unit quaternion, got {pose[3:]}')
        cov = self.covariance
        if cov is not None:
            if pose is None:
                raise RecordFormatError('covariance without a relative_pose')
            if len(cov) != 36 or not all(math.isfinite(v) for v in cov):
                raise RecordFormatError(f'covariance must be 36 finite numbers, got {len(cov)}')


_VECTORS = ('relative_pose', 'covariance')
_TYPES: dict[str, type] = {f.name: f.type for f in fields(CandidateRecord)
                           if f.name not in _VECTORS}
_OPTIONAL = {f.name for f in fields(CandidateRecord) if f.default is not MISSING}
"""Fields with a default: a file written before they existed lacks them."""


def no_match_record(query_id: int, query_stamp_ns: int, query_session: str, query_camera: str,
                    query_seq: int) -> CandidateRecord:
    """Record of a query that was searched but got no candidate."""
    return CandidateRecord(query_id, query_stamp_ns, query_session, query_camera, query_seq,
                           NO_MATCH, 0, '', NO_MATCH, 0.0, NO_MATCH, False)


def record_to_dict(record: CandidateRecord) -> dict[str, Any]:
    """Plain dict of a record (the JSON-lines schema)."""
    data = asdict(record)
    for name in _VECTORS:
        if data[name] is not None:
            data[name] = list(data[name])
    return data


def _vector(name: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise RecordFormatError(f'record field {name} must be null or a list of numbers, '
                                f'got {type(value).__name__}')
    return tuple(float(v) for v in value)


def record_from_dict(data: dict[str, Any]) -> CandidateRecord:
    """Parse one record, checking that every field is present and has the right type."""
    names = [*_TYPES, *_VECTORS]
    missing = [name for name in names if name not in data and name not in _OPTIONAL]
    if missing:
        raise RecordFormatError(f'record lacks field(s) {", ".join(missing)}')
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RecordFormatError(f'record has unknown field(s) {", ".join(unknown)}')
    values: dict[str, Any] = {}
    for name, kind in _TYPES.items():
        if name not in data:
            continue  # an optional field of an older file: its default
        value = data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RecordFormatError(
                f'record field {name} must be {kind.__name__}, got {type(value).__name__}')
        values[name] = value
    for name in _VECTORS:
        values[name] = _vector(name, data.get(name))
    record = CandidateRecord(**values)
    record.validate()
    return record


def write_records(path: str | os.PathLike, records: Iterable[CandidateRecord],
                  append: bool = False) -> int:
    """Write records as JSON lines (or append them); return how many were written."""
    count = 0
    with open(path, 'a' if append else 'w', encoding='utf-8') as stream:
        for record in records:
            stream.write(json.dumps(record_to_dict(record), allow_nan=False) + '\n')
            count += 1
    return count


def read_records(path: str | os.PathLike) -> list[CandidateRecord]:
    """Read a JSON-lines records file; errors name the file and line.

    An unterminated last line that is not valid JSON is what a recorder killed mid-write
    leaves: it is skipped (every other malformed line is refused).
    """
    path = Path(path)
    records = []
    with open(path, encoding='utf-8') as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    if not line.endswith('\n'):  # only the last line can lack it
                        break  # the cut-off last line of a crashed recorder
                    raise
                if not isinstance(data, dict):
                    raise RecordFormatError('a record must be a JSON object')
                records.append(record_from_dict(data))
            except (json.JSONDecodeError, RecordFormatError) as exc:
                raise RecordFormatError(f'{path}:{number}: {exc}') from exc
    return records
