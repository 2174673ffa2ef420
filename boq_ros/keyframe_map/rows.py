"""Descriptor storage that grows without ever copying what it already holds.

A loaded map's descriptors stay a read-only memory map; new keyframes go into fixed-size chunks,
so growth costs no doubling copies and a 16384-d map can grow past RAM-sized arrays.
"""
from collections.abc import Iterator

import numpy as np

CHUNK_BYTES = 64 << 20


class ChunkedRows:
    """Append-only [N, dim] matrix made of chunks (the first may be a memory map)."""

    def __init__(self, dim: int, dtype: np.dtype, base: np.ndarray | None = None) -> None:
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.chunk_rows = max(1, CHUNK_BYTES // (dim * self.dtype.itemsize))
        self._chunks: list[np.ndarray] = []
        self._fill: list[int] = []
        if base is not None and len(base):
            self._chunks.append(base)
            self._fill.append(len(base))
        self._starts = np.zeros(1, np.int64)
        self._reindex()

    def _reindex(self) -> None:
        self._starts = np.concatenate([[0], np.cumsum(self._fill, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def append(self, block: np.ndarray) -> None:
        """Copy `block` ([n, dim], any float dtype) in, converting to the storage dtype."""
        pos = 0
        while pos < len(block):
            if not self._chunks or self._fill[-1] == len(self._chunks[-1]) \
                    or not self._chunks[-1].flags.writeable:
                self._chunks.append(np.empty((self.chunk_rows, self.dim), self.dtype))
                self._fill.append(0)
            chunk, fill = self._chunks[-1], self._fill[-1]
            take = min(len(block) - pos, len(chunk) - fill)
            chunk[fill:fill + take] = block[pos:pos + take]
            self._fill[-1] = fill + take
            pos += take
        self._reindex()

    def truncate(self, count: int) -> None:
        """Drop the rows from `count` on (undo of an add that failed half way)."""
        excess = len(self) - count
        while excess > 0:
            if self._fill[-1] <= excess:
                excess -= self._fill.pop()
                self._chunks.pop()
            else:
                self._fill[-1] -= excess
                excess = 0
        self._reindex()

    def take(self, rows: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
        """Gather rows as a [len(rows), dim] array of `dtype`."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.dim), dtype)
        which = np.searchsorted(self._starts, rows, side='right') - 1
        for c in np.unique(which):
            sel = which == c
            out[sel] = self._chunks[c][rows[sel] - self._starts[c]]
        return out

    def blocks(self, rows: np.ndarray | None = None,
               block_rows: int | None = None) -> Iterator[np.ndarray]:
        """Yield float32 blocks of the given rows (all rows when None), in order."""
        step = block_rows or self.chunk_rows
        if rows is None:
            for chunk, fill in zip(self._chunks, self._fill):
                for start in range(0, fill, step):
                    yield np.asarray(chunk[start:min(fill, start + step)], np.float32)
            return
        for start in range(0, len(rows), step):
            yield self.take(rows[start:start + step])

    def raw_blocks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the given rows in the storage dtype, in bounded blocks (for writing to disk)."""
        for start in range(0, len(rows), self.chunk_rows):
            yield self.take(rows[start:start + self.chunk_rows], self.dtype)
