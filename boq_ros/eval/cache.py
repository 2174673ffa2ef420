"""Descriptor cache: re-running an evaluation with other thresholds or radii costs no inference.

An entry is keyed by everything that changes the descriptors: the bag's identity (resolved path,
and name, size and modification time of each of its files), the image topic, the model id
(preset and checkpoint checksum), the preprocessing, the precision, the image-size limit and the
keyframe policy. Stage timings and the frames skipped by cause are stored with the descriptors,
so a re-run from the cache still reports them. An entry is stored as an ``.npz`` of plain arrays
(loaded without pickle) plus a JSON side file, both written atomically; an unreadable or
inconsistent entry counts as a miss and is recomputed.
"""
from dataclasses import dataclass
import hashlib
import json
import os
from pathlib import Path
from typing import Any
import zipfile

import numpy as np

CACHE_VERSION = 2  # 2: FramePipeline stage names, skipped frames by cause


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

    @property
    def frames(self) -> int:
        """Frames read (keyframes or not)."""
        return len(self.frame_stamps_ns)


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
            with np.load(arrays_path, allow_pickle=False) as data:
                descriptors = data['descriptors']
                stamps = data['stamps_ns']
                frame_stamps = data['frame_stamps_ns']
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        if not isinstance(meta, dict):
            return None
        frame_ids, timings = meta.get('frame_ids'), meta.get('timings_s')
        skipped = meta.get('skipped')
        if (not isinstance(frame_ids, list) or not isinstance(timings, dict)
                or not isinstance(skipped, dict) or descriptors.ndim != 2
                or len(frame_ids) != len(descriptors)
                or stamps.shape != (len(descriptors),)):
            return None
        return CachedDescriptors(descriptors, stamps, frame_ids, frame_stamps, dict(timings),
                                 dict(skipped))

    def store(self, key: str, entry: CachedDescriptors, parts: dict[str, Any]) -> None:
        """Write an entry atomically; `parts` (the key's inputs) is kept for inspection."""
        self.root.mkdir(parents=True, exist_ok=True)
        arrays_path, meta_path = self._paths(key)
        tmp_arrays = arrays_path.with_name(f'{key}.tmp.npz')
        np.savez(tmp_arrays, descriptors=np.asarray(entry.descriptors, dtype=np.float32),
                 stamps_ns=np.asarray(entry.stamps_ns, dtype=np.int64),
                 frame_stamps_ns=np.asarray(entry.frame_stamps_ns, dtype=np.int64))
        os.replace(tmp_arrays, arrays_path)
        tmp_meta = meta_path.with_name(f'{key}.tmp.json')
        tmp_meta.write_text(json.dumps({'key': parts, 'frame_ids': entry.frame_ids,
                                        'timings_s': entry.timings_s,
                                        'skipped': entry.skipped}, indent=1),
                            encoding='utf-8')
        os.replace(tmp_meta, meta_path)
