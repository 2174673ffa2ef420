"""The map's identity card: what produced its descriptors and how they are stored and indexed.

A loader compares it with what it expects before trusting a single vector, so every field that
changes the meaning of a descriptor (model, dimension, metric, preprocessing) lives here.
"""
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 3
"""Version of the on-disk layout; bumped on any incompatible change (see docs/map.md)."""
READABLE_VERSIONS = (1, 2, 3)
"""Versions a loader reads: version 1 maps have no local features (`local_features` absent),
versions 1 and 2 no tuned search parameters (`index_tuning` absent, their index entry fixes
every parameter)."""


class MapError(ValueError):
    """A keyframe map refused an input or a file; the message names what does not match."""


class MapNotFound(MapError):
    """No map is stored where a URI points (a node growing a Milvus map then creates it)."""


@dataclass(frozen=True)
class MapSchema:
    """Everything a reader must know before trusting a map's descriptors."""

    schema_version: int
    map_id: str
    model_id: str
    dim: int
    metric: str
    preprocess: dict[str, Any]
    index: dict[str, Any]
    index_state: str
    index_trained_on: int
    storage_dtype: str
    package_version: str
    created: str
    modified: str
    count: int
    next_id: int
    history: tuple[dict[str, Any], ...] = ()
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    local_features: tuple[dict[str, Any], ...] = ()  # kind, dim, dtype of each feature kind
    index_tuning: dict[str, Any] = field(default_factory=dict)  # keyframe_map/tuning.py

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy (the form written to schema.json)."""
        out = asdict(self)
        out['history'] = [dict(h) for h in self.history]
        out['local_features'] = [dict(k) for k in self.local_features]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> 'MapSchema':
        """Parse schema.json content, naming the first missing or mistyped field."""
        if not isinstance(data, dict):
            raise MapError('schema.json: expected a JSON object')
        version = data.get('schema_version')
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise MapError(f'schema.json: schema version {version!r} is not supported '
                           f'(this boq_ros reads versions '
                           f'{", ".join(map(str, READABLE_VERSIONS))})')
        types = {'map_id': str, 'model_id': str, 'dim': int, 'metric': str, 'preprocess': dict,
                 'index': dict, 'index_state': str, 'index_trained_on': int,
                 'storage_dtype': str,
                 'package_version': str, 'created': str, 'modified': str, 'count': int,
                 'next_id': int, 'history': list, 'files': dict}
        if version >= 2:
            types['local_features'] = list
        if version >= 3:
            types['index_tuning'] = dict
        for key, kind in types.items():
            if key not in data:
                raise MapError(f'schema.json: missing field {key!r}')
            if not isinstance(data[key], kind) or isinstance(data[key], bool):
                raise MapError(f'schema.json: field {key!r} should be {kind.__name__}, '
                               f'got {type(data[key]).__name__}')
        values = {key: data[key] for key in types}
        values['history'] = tuple(values['history'])
        values['local_features'] = tuple(values.get('local_features', ()))
        values['index_tuning'] = _check_tuning(values.get('index_tuning', {}))
        return cls(schema_version=version, **values)


def _check_tuning(record: dict[str, Any]) -> dict[str, Any]:
    """Refuse a tuning record whose search parameters a search could not use."""
    for name in ('ivf_nprobe', 'hnsw_ef_search', 'rerank'):
        if name in record:
            value, low = record[name], 0 if name == 'rerank' else 1
            if type(value) is not int or value < low:
                raise MapError(f'schema.json: index_tuning {name} must be an integer >= {low}, '
                               f'got {value!r}')
    if 'status' in record and not isinstance(record['status'], str):
        raise MapError(f'schema.json: index_tuning status must be a string, got '
                       f'{record["status"]!r}')
    return dict(record)
