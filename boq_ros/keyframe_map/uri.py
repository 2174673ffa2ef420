"""Which store a map URI names, and opening it: how the detector, node, eval and CLI pick one.

- `faiss:DIR` or `DIR`: the embedded FAISS map saved in a directory;
- `milvus://HOST:PORT/COLLECTION`: a collection of a Milvus server (`?index=hnsw&ef=128` ...);
- `milvus-lite:FILE.db`: a Milvus Lite file (one process, exact search).
"""
import os
from pathlib import Path
from typing import Any

from boq_ros.keyframe_map.base import KeyframeStore
from boq_ros.keyframe_map.index import IndexSpec
from boq_ros.keyframe_map.map import KeyframeMap
from boq_ros.keyframe_map.schema import MapError

MILVUS_SCHEMES = ('milvus://', 'milvus-lite:')


def is_milvus(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and uri.startswith(MILVUS_SCHEMES)


def faiss_path(uri: str | os.PathLike) -> Path:
    """Return the directory of a `faiss:DIR` URI or a plain path."""
    text = os.fspath(uri)
    if text.startswith('faiss:'):
        text = text[len('faiss:'):]
    if not text:
        raise MapError('empty map path: name a map directory (faiss:DIR or DIR)')
    if '://' in text:
        raise MapError(f'map URI {os.fspath(uri)!r}: unknown scheme (use faiss:DIR, '
                       'milvus://HOST:PORT/COLLECTION or milvus-lite:FILE.db)')
    return Path(text).expanduser()


def open_store(uri: str | os.PathLike, *, model_id: str | None = None, dim: int | None = None,
               preprocess: dict[str, Any] | None = None, index: IndexSpec | None = None,
               create: bool = False) -> KeyframeStore:
    """Open the map at `uri`, refusing another model's; `create` makes a new one if none is there.

    A new FAISS map lives in memory until saved (to the URI's directory); `index` is its index
    (a loaded FAISS map keeps its own unless `index` names another).
    """
    if is_milvus(uri):
        from boq_ros.keyframe_map.milvus import MilvusStore  # noqa: PLC0415

        return MilvusStore.open(uri, dim=dim, model_id=model_id, preprocess=preprocess,
                                create=create)
    path = faiss_path(uri)
    if (path / 'schema.json').is_file() or not create:
        kmap = KeyframeMap.load(path, expect_model_id=model_id, expect_dim=dim)
        if index is not None and index != kmap.index_spec:
            kmap.rebuild_index(index)
        return kmap
    if dim is None or model_id is None or preprocess is None:
        raise MapError(f'{path}: creating a map needs the model id, descriptor dimension and '
                       'preprocessing')
    return KeyframeMap(dim, model_id=model_id, preprocess=preprocess,
                       index=index or IndexSpec())


def save_copy(store: KeyframeStore, path: str | os.PathLike) -> Path:
    """Save a FAISS map of `store` at `path` (the map itself, or a copy of a Milvus store)."""
    if isinstance(store, KeyframeMap):
        return store.save(path)
    copy = KeyframeMap(store.dim, model_id=store.model_id, preprocess=store.preprocess,
                       map_id=f'{store.map_id}-copy')  # a later copy replaces this one
    copy.merge(store)
    return copy.save(path)
