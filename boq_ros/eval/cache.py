"""Descriptor cache: re-running an evaluation with other thresholds or radii costs no inference.

An entry is keyed by everything that changes the descriptors: the bag's identity (resolved path,
and name, size and modification time of each of its files), the image topic, the model id
(preset and checkpoint checksum), the preprocessing, the precision, the image-size limit and the
keyframe policy; with verification, also the local-feature settings and the depth and
camera_info topics, since the keyframes' local features are stored with their descriptors (so a
re-run verifies without decoding an image). Stage timings and the frames skipped by cause are
stored with the descriptors, so a re-run from the cache still reports them. An entry is stored
as an ``.npz`` of plain arrays (loaded without pickle) plus a JSON side file, both written
atomically; an unreadable or inconsistent entry counts as a miss and is recomputed.

Local features are stored like the keyframe map stores them: concatenated arrays (keypoints,
descriptors, depth) and per keyframe its keypoint count (-1: no features), image size and
intrinsics (NaN: uncalibrated); offsets are the running sum of the counts.
"""
from dataclasses import dataclass, field
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any
import zipfile

import numpy as np

from boq_ros.keyframe_map.features import LocalFeatures
from boq_ros.keyframe_map.schema import MapError

CACHE_VERSION = 3  # 2: FramePipeline stage names, skipped frames by cause; 3: local features

_FEATURE_ARRAYS = ('feature_counts', 'feature_keypoints', 'feature_descriptors',
                   'feature_depth', 'feature_has_depth', 'feature_image_size',
                   'feature_intrinsics')


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/boq_ros/descriptors`` (``~/.cache`` when unset)."""
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'boq_ros' / 'descriptors'


def bag_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a bag by path and (name, size, mtime) of its files: changes when it changes."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f'bag {path} does not exist')
    files = sorted(p for p in path.rglob('*') if p.is_file()) if path.is_dir() else [path]
    return {'path': str(path),
            'files': [[p.relative_to(path).as_posix() if path.is_dir() else p.name,
                       p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def cache_key(parts: dict[str, Any]) -> str:
    """Hex digest of the canonical JSON of `parts` (any JSON-serialisable values)."""
    canonical = json.dumps({'version': CACHE_VERSION, **parts}, sort_keys=True,
                           separators=(',', ':'))
    return hashlib.sha256(canonical.encode('utf-8')).hexdigest()[:32]


@dataclass
class CachedDescriptors:
    """Keyframe descriptors of one bag and topic, with what is needed to evaluate them again."""

    descriptors: np.ndarray
    stamps_ns: np.ndarray
    frame_ids: list[str]
    frame_stamps_ns: np.ndarray  # every frame read, keyframe or not
    timings_s: dict[str, float]  # pipeline stage -> seconds
    skipped: dict[str, int]  # pipeline.SKIP_CAUSES -> frames skipped for it
    features: list[LocalFeatures | None] | None = None  # per keyframe; None: not verifying
    feature_notes: dict[str, int] = field(default_factory=dict)  # feature / depth errors

    @property
    def frames(self) -> int:
        """Frames read (keyframes or not)."""
        return len(self.frame_stamps_ns)


def pack_features(features: list[LocalFeatures | None]) -> tuple[str, dict[str, np.ndarray]]:
    """Return the feature kind and the arrays of keyframes' local features (one kind)."""
    present = [f for f in features if f is not None]
    kinds = {f.kind for f in present}
    if len(kinds) > 1:
        raise ValueError(f'one feature kind per entry, got {sorted(kinds)}')
    dim, dtype = ((present[0].descriptors.shape[1], present[0].descriptors.dtype) if present
                  else (1, np.dtype(np.uint8)))
    n = len(features)
    counts = np.array([-1 if f is None else len(f.keypoints) for f in features], np.int64)
    has_depth = np.array([f is not None and f.depth is not None for f in features], bool)
    sizes = np.array([(0, 0) if f is None else f.image_size for f in features],
                     np.int64).reshape(n, 2)
    intrinsics = np.array([(math.nan,) * 4 if f is None or f.intrinsics is None
                           else f.intrinsics for f in features], np.float64).reshape(n, 4)

    def joined(arrays: list[np.ndarray], shape: tuple[int, ...], kind: Any) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.zeros(shape, kind)

    arrays = {
        'feature_counts': counts,
        'feature_keypoints': joined([f.keypoints for f in present], (0, 2), np.float32),
        'feature_descriptors': joined([f.descriptors for f in present], (0, dim), dtype),
        'feature_depth': joined([f.depth if f.depth is not None
                                 else np.full(len(f.keypoints), np.nan, np.float32)
                                 for f in present], (0,), np.float32),
        'feature_has_depth': has_depth, 'feature_image_size': sizes,
        'feature_intrinsics': intrinsics,
    }
    return (present[0].kind if present else 'none'), arrays


def unpack_features(kind: str, arrays: dict[str, np.ndarray]) -> list[LocalFeatures | None]:
    """Rebuild the keyframes' local features (ValueError / MapError if inconsistent)."""
    counts = arrays['feature_counts']
    keypoints, descriptors = arrays['feature_keypoints'], arrays['feature_descriptors']
    depth = arrays['feature_depth']
    total = int(counts[counts > 0].sum())
    if len(keypoints) != total or len(descriptors) != total or len(depth) != total:
        raise ValueError('feature arrays do not add up to the keypoint counts')
    out: list[LocalFeatures | None] = []
    start = 0
    for i, count in enumerate(counts.tolist()):
        if count < 0:
            out.append(None)
            continue
        stop = start + count
        intrinsics = arrays['feature_intrinsics'][i]
        out.append(LocalFeatures(
            kind=kind, keypoints=keypoints[start:stop], descriptors=descriptors[start:stop],
            image_size=tuple(int(v) for v in arrays['feature_image_size'][i]),
            intrinsics=None if np.isnan(intrinsics).any() else tuple(intrinsics.tolist()),
            depth=depth[start:stop] if arrays['feature_has_depth'][i] else None))
        start = stop
    return out


class DescriptorCache:
    """A directory of cached descriptor sets."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f'{key}.npz', self.root / f'{key}.json'

    def load(self, key: str) -> CachedDescriptors | None:
        """Return the entry for `key`, or None when absent or unreadable."""
        arrays_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text(encoding='utf-8'))
            if not isinstance(meta, dict):
                return None
            kind = meta.get('feature_kind')
            with np.load(arrays_path, allow_pickle=False) as data:
                descriptors = data['descriptors']
                stamps = data['stamps_ns']
                frame_stamps = data['frame_stamps_ns']
                features = None
                if isinstance(kind, str):
                    features = unpack_features(kind, {k: data[k] for k in _FEATURE_ARRAYS})
        except (OSError, ValueError, KeyError, MapError, zipfile.BadZipFile):
            return None
        frame_ids, timings = meta.get('frame_ids'), meta.get('timings_s')
        skipped, notes = meta.get('skipped'), meta.get('feature_notes', {})
        if (not isinstance(frame_ids, list) or not isinstance(timings, dict)
                or not isinstance(skipped, dict) or not isinstance(notes, dict)
                or descriptors.ndim != 2 or len(frame_ids) != len(descriptors)
                or stamps.shape != (len(descriptors),)
                or (features is not None and len(features) != len(descriptors))):
            return None
        return CachedDescriptors(descriptors, stamps, frame_ids, frame_stamps, dict(timings),
                                 dict(skipped), features, dict(notes))

    def store(self, key: str, entry: CachedDescriptors, parts: dict[str, Any]) -> None:
        """Write an entry atomically; `parts` (the key's inputs) is kept for inspection."""
        self.root.mkdir(parents=True, exist_ok=True)
        arrays_path, meta_path = self._paths(key)
        tmp_arrays = arrays_path.with_name(f'{key}.tmp.npz')
        kind, feature_arrays = (None, {}) if entry.features is None else pack_features(
            entry.features)
        np.savez(tmp_arrays, descriptors=np.asarray(entry.descriptors, dtype=np.float32),
                 stamps_ns=np.asarray(entry.stamps_ns, dtype=np.int64),
                 frame_stamps_ns=np.asarray(entry.frame_stamps_ns, dtype=np.int64),
                 **feature_arrays)
        os.replace(tmp_arrays, arrays_path)
        tmp_meta = meta_path.with_name(f'{key}.tmp.json')
        tmp_meta.write_text(json.dumps({'key': parts, 'frame_ids': entry.frame_ids,
                                        'timings_s': entry.timings_s,
                                        'skipped': entry.skipped, 'feature_kind': kind,
                                        'feature_notes': entry.feature_notes}, indent=1),
                            encoding='utf-8')
        os.replace(tmp_meta, meta_path)
