"""The map on disk: a directory of numpy arrays, a JSON vocabulary and a JSON schema; no pickle.

Layout of MAP_DIR (schema version 2; version 1 is the same without local features):

    schema.json       MapSchema: model, dim, metric, preprocessing, index, times, and the size
                      and sha256 of every other file (written last: its presence marks a
                      complete directory)
    descriptors.npy   [count, dim] float32 or float16, L2-normalised rows, full dimension
    keyframes.npy     [count] structured array, meta.TABLE_DTYPE (ids strictly increasing)
    strings.json      the vocabularies that keyframes.npy's string codes index
    image_refs.npy    uint8 blob of the UTF-8 image references
    index.faiss, pca_mean.npy, pca_components.npy   optional cache of the trained index
    features.npy      [count] features.FEATURE_DTYPE: each keyframe's local feature kind, count,
                      offsets into the arrays below, image size, intrinsics (all written only
                      when schema.json's local_features names a kind)
    features_keypoints.npy             [M, 2] float32 keypoints of all keyframes
    features_depth.npy                 [M_depth] float32 depth of the keyframes that have it
    features_descriptors_<kind>.npy    [M_kind, dim] uint8 or float16, one file per kind

Saving is atomic: everything is written and fsynced into `.NAME.new-TOKEN` beside the target,
then the old map is renamed to `.NAME.old-TOKEN`, the new one renamed in, and the old one
removed.  A kill between the two renames leaves no MAP_DIR: `read_map` finishes the swap
(a `.new-` directory holding schema.json is complete) before reading.  One writer per map.
"""
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
import hashlib
import io
import json
import os
from pathlib import Path
import shutil
from typing import Any
import uuid

import numpy as np

from boq_ros.checksum import file_sha256
from boq_ros.keyframe_map import features as feat
from boq_ros.keyframe_map.meta import MetaTable
from boq_ros.keyframe_map.schema import MapError, MapSchema

CACHE_FILES = ('index.faiss', 'pca_mean.npy', 'pca_components.npy')
REQUIRED_FILES = ('descriptors.npy', 'keyframes.npy', 'strings.json', 'image_refs.npy')


@dataclass
class StoredMap:
    """What read_map found, validated: the schema, the arrays and any index cache."""

    schema: MapSchema
    descriptors: np.ndarray
    table: MetaTable
    cache: dict[str, np.ndarray]
    features: feat.FeatureStore


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _write(path: Path, chunks: Iterable[bytes]) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    with open(path, 'wb') as f:
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return {'sha256': digest.hexdigest(), 'bytes': size}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _siblings(target: Path, kind: str) -> list[Path]:
    """Leftovers of saves of `target`, oldest first (one may vanish while we look)."""
    found = []
    for path in target.parent.glob(f'.{target.name}.{kind}-*'):
        try:
            found.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    return [path for _, path in sorted(found)]


def _npy_chunks(name: str, stream: feat.ArrayStream) -> Iterable[bytes]:
    """Yield an .npy file's header, then its rows block by block (bounded memory)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {'descr': np.lib.format.dtype_to_descr(stream.dtype), 'fortran_order': False,
                 'shape': stream.shape})
    yield header.getvalue()
    written = 0
    for block in stream.blocks:
        written += len(block)
        yield np.ascontiguousarray(block, stream.dtype).tobytes()
    if written != stream.shape[0]:
        raise MapError(f'internal error: wrote {written} rows of {name}, expected '
                       f'{stream.shape[0]}')


def write_map(target: Path, schema: MapSchema, blocks: Iterable[np.ndarray], count: int,
              dtype: np.dtype, table: np.ndarray, vocab: dict[str, list[str]], blob: bytes,
              cache: dict[str, np.ndarray], features: dict[str, feat.ArrayStream]
              ) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Write a map directory atomically; returns (directory, files entry of its schema)."""
    target = target.absolute()
    if not target.parent.is_dir():
        raise MapError(f'cannot save map to {target}: {target.parent} is not a directory')
    if target.exists() and not (target / 'schema.json').is_file():
        raise MapError(f'refusing to replace {target}: it exists and is not a keyframe map '
                       f'(no schema.json)')
    recover(target)
    for stale in _siblings(target, 'new') + _siblings(target, 'old'):
        shutil.rmtree(stale, ignore_errors=True)
    token = uuid.uuid4().hex[:12]
    tmp = target.parent / f'.{target.name}.new-{token}'
    tmp.mkdir()
    try:
        descriptors = feat.ArrayStream((count, schema.dim), np.dtype(dtype), blocks)
        files = {'descriptors.npy': _write(tmp / 'descriptors.npy',
                                           _npy_chunks('descriptors.npy', descriptors))}
        files['keyframes.npy'] = _write(tmp / 'keyframes.npy', [_npy_bytes(table)])
        files['strings.json'] = _write(tmp / 'strings.json', [json.dumps(vocab).encode()])
        files['image_refs.npy'] = _write(tmp / 'image_refs.npy',
                                         [_npy_bytes(np.frombuffer(blob, np.uint8))])
        for name, stream in features.items():
            files[name] = _write(tmp / name, _npy_chunks(name, stream))
        for name, array in cache.items():
            files[name] = _write(tmp / name, [array.tobytes() if name == 'index.faiss'
                                              else _npy_bytes(array)])
        final = replace(schema, files=files)
        _write(tmp / 'schema.json', [json.dumps(final.to_dict(), indent=1).encode()])
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f'.{target.name}.old-{token}'
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except FileNotFoundError:
        # A reader's recover() saw no target between the two renames and finished the swap
        # itself with this (complete) directory: the map is saved.
        if not (target / 'schema.json').is_file():
            raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target, files


def map_id_at(target: Path) -> str | None:
    """Return the map_id of the map stored at `target`, None when nothing readable is there."""
    recover(target)
    try:
        raw = json.loads((target / 'schema.json').read_text(encoding='utf-8'))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw.get('map_id') if isinstance(raw, dict) else None


def recover(target: Path) -> None:
    """Finish a save that was killed between its two renames (no-op when target exists)."""
    if target.exists():
        return
    complete = [p for p in _siblings(target, 'new') if (p / 'schema.json').is_file()]
    previous = _siblings(target, 'old')
    if not complete and not previous:
        return
    try:
        os.rename((complete or previous)[-1], target)
    except FileNotFoundError:
        if not target.exists():  # else the writer (or another reader) got there first
            raise
    _fsync_dir(target.parent)


def _check_file(root: Path, name: str, entry: Any, hash_it: bool) -> Path:
    """Check a file's size against schema.json, and its sha256 when `hash_it`."""
    path = root / name
    if not isinstance(entry, dict) or not isinstance(entry.get('bytes'), int) \
            or not isinstance(entry.get('sha256'), str):
        raise MapError(f'{root}: schema.json has no valid size/sha256 entry for {name}')
    if not path.is_file():
        raise MapError(f'{root}: {name} is missing')
    size = path.stat().st_size
    if size != entry['bytes']:
        raise MapError(f'{root}: {name} has {size} bytes, schema.json says {entry["bytes"]} '
                       f'(truncated or replaced)')
    if hash_it:
        found = file_sha256(path)
        if found != entry['sha256']:
            raise MapError(f'{root}: {name} fails its checksum (sha256 {found[:16]}..., '
                           f'schema.json says {entry["sha256"][:16]}...): the file is corrupt '
                           f'or was modified')
    return path


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode='r' if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MapError(f'{path.parent}: {path.name} is not a readable .npy file: {exc}') from exc


def read_map(target: Path, *, mmap: bool, verify: bool,
             expect: Callable[[MapSchema], None] | None = None) -> StoredMap:
    """Read and validate a map directory; every inconsistency is a MapError naming it.

    `expect` checks the schema before any file is hashed (a wrong model fails at once).
    """
    recover(target)
    if not target.is_dir():
        raise MapError(f'no keyframe map at {target}')
    try:
        raw = json.loads((target / 'schema.json').read_text(encoding='utf-8'))
    except FileNotFoundError as exc:
        raise MapError(f'{target}: schema.json is missing (not a keyframe map)') from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise MapError(f'{target}: schema.json is not valid JSON: {exc}') from exc
    schema = MapSchema.from_dict(raw)
    if expect is not None:
        expect(schema)
    paths = {name: _check_file(target, name, schema.files.get(name),
                               verify or name != 'descriptors.npy')
             for name in REQUIRED_FILES}
    descriptors = _load_npy(paths['descriptors.npy'], mmap)
    if descriptors.dtype.name != schema.storage_dtype or \
            descriptors.shape != (schema.count, schema.dim):
        raise MapError(f'{target}: descriptors.npy holds {descriptors.dtype} '
                       f'{list(descriptors.shape)}, schema.json says {schema.storage_dtype} '
                       f'[{schema.count}, {schema.dim}]')
    block = _load_npy(paths['keyframes.npy'])
    if block.shape != (schema.count,):
        raise MapError(f'{target}: keyframes.npy has {block.shape} rows, schema.json says '
                       f'{schema.count}')
    try:
        vocab = json.loads(paths['strings.json'].read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MapError(f'{target}: strings.json is not valid JSON: {exc}') from exc
    if not isinstance(vocab, dict):
        raise MapError(f'{target}: strings.json must hold an object of vocabularies')
    blob = _load_npy(paths['image_refs.npy'])
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise MapError(f'{target}: image_refs.npy must be a 1-D uint8 array')
    table = MetaTable.from_arrays(block, vocab, blob.tobytes())
    cache = {}
    for name in CACHE_FILES:
        entry = schema.files.get(name)
        if entry is None:
            continue
        try:
            path = _check_file(target, name, entry, True)
        except MapError:
            continue  # a cache is never trusted blindly: rebuilt from the descriptors instead
        cache[name] = np.fromfile(path, np.uint8) if name == 'index.faiss' else _load_npy(path)
    return StoredMap(schema, descriptors, table, cache, _read_features(target, schema, mmap,
                                                                       verify))


def _read_features(target: Path, schema: MapSchema, mmap: bool,
                   verify: bool) -> feat.FeatureStore:
    """Check and open the local feature files (memory-mapped arrays: read only when sliced).

    `verify=False` skips hashing the arrays, like the descriptors; the table is always hashed.
    """
    kinds = feat.parse_kinds(schema.local_features)
    if not kinds:
        return feat.FeatureStore()
    names = [feat.TABLE_FILE, feat.KEYPOINTS_FILE, feat.DEPTH_FILE,
             *(feat.descriptor_file(kind) for kind, _, _ in kinds)]
    paths = [_check_file(target, name, schema.files.get(name),
                         verify or name == feat.TABLE_FILE) for name in names]
    table, keypoints, depth, *descriptors = (_load_npy(path, mmap and name != feat.TABLE_FILE)
                                             for name, path in zip(names, paths))
    try:
        return feat.FeatureStore.from_arrays(kinds, table, keypoints, depth, descriptors,
                                             schema.count)
    except MapError as exc:
        raise MapError(f'{target}: {exc}') from exc
