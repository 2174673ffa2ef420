"""Candidate records: the one format both the offline pipeline and the live node's outputs use.

A record is one (query, candidate) pair; a query that was searched but had no candidate (empty
map, everything inside the exclusion window) is kept as one record with ``rank == -1`` so that the
evaluation knows it was processed. Records are stored as JSON lines, one record per line, so that
a recorder can append while the node runs and a crash loses at most the last line.
"""
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
import json
import math
import os
from pathlib import Path
from typing import Any

NO_MATCH = -1  # match_id, match_seq and rank of the record of a query without candidates


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


_TYPES = {f.name: f.type for f in fields(CandidateRecord)}


def no_match_record(query_id: int, query_stamp_ns: int, query_session: str, query_camera: str,
                    query_seq: int) -> CandidateRecord:
    """Record of a query that was searched but got no candidate."""
    return CandidateRecord(query_id, query_stamp_ns, query_session, query_camera, query_seq,
                           NO_MATCH, 0, '', NO_MATCH, 0.0, NO_MATCH, False)


def record_to_dict(record: CandidateRecord) -> dict[str, Any]:
    """Plain dict of a record (the JSON-lines schema)."""
    return asdict(record)


def record_from_dict(data: dict[str, Any]) -> CandidateRecord:
    """Parse one record, checking that every field is present and has the right type."""
    missing = [name for name in _TYPES if name not in data]
    if missing:
        raise RecordFormatError(f'record lacks field(s) {", ".join(missing)}')
    unknown = sorted(set(data) - set(_TYPES))
    if unknown:
        raise RecordFormatError(f'record has unknown field(s) {", ".join(unknown)}')
    values = {}
    for name, kind in _TYPES.items():
        value = data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RecordFormatError(
                f'record field {name} must be {kind.__name__}, got {type(value).__name__}')
        values[name] = value
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
