"""Descriptor storage that grows without ever copying what it already holds.

A loaded map's descriptors stay in their file (`FileRows`: rows are read on demand with
`pread`); new keyframes go into fixed-size chunks, so growth costs no doubling copies and a
16384-d map can grow past RAM-sized arrays.
"""
from collections.abc import Iterator
import os

import numpy as np

CHUNK_BYTES = 64 << 20


class FileRows:
    """Read-only [N, dim] rows of an .npy file, read with pread instead of a memory map.

    Re-ranking touches a few rows per query at random.  Through a memory map every touched row
    maps whole page-cache folios into the process (about 1.5 MB per row of a freshly written
    file, measured on this project's kernel; large folios are up to 2 MB): after a few hundred
    searches a 1M-keyframe map counts the whole descriptor file as resident.  pread copies only
    the rows asked for; the page cache keeps what the kernel decides, shared and reclaimable.
    The file descriptor keeps the file readable after a later save replaces the map directory
    (like a memory map does).
    """

    def __init__(self, path: str, offset: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path, self.offset = str(path), int(offset)
        self.shape, self.dtype = (int(shape[0]), int(shape[1])), np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDONLY)

    @classmethod
    def from_memmap(cls, array: np.memmap) -> 'FileRows':
        """Read the rows of a C-ordered memory map (as np.load(mmap_mode='r') returns it)."""
        return cls(array.filename, array.offset, array.shape, array.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        fd = getattr(self, 'fd', None)
        if fd is not None:
            os.close(fd)
            self.fd = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) in the file's dtype (one pread)."""
        out = np.empty((stop - start, self.shape[1]), self.dtype)
        self._read_into(memoryview(out.reshape(-1).view(np.uint8)),
                        self.offset + start * self.row_bytes)
        return out

    def _read_into(self, view: memoryview, pos: int) -> None:
        done, want = 0, view.nbytes
        while done < want:
            got = os.preadv(self.fd, [view[done:]], pos + done)
            if got <= 0:
                raise OSError(f'{self.path}: short read at byte {pos + done} (file truncated?)')
            done += got

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        """Gather rows: one pread per run of consecutive rows (in sorted order)."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step != 1:
                raise IndexError('FileRows slices take step 1')
            return self.read(start, max(start, stop))
        rows = np.asarray(rows, np.int64).reshape(-1)
        n = len(rows)
        buf = np.empty((n, self.shape[1]), self.dtype)
        if not n:
            return buf
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f'row out of range for {self.shape[0]} rows')
        ascending = n == 1 or bool((rows[1:] > rows[:-1]).all())
        order = None if ascending else np.argsort(rows, kind='stable')
        ordered = rows if order is None else rows[order]
        starts = np.flatnonzero(np.diff(ordered, prepend=ordered[0] - 2) != 1)
        view, size = memoryview(buf.reshape(-1).view(np.uint8)), self.row_bytes
        for first, last in zip(starts.tolist(), [*starts[1:].tolist(), n]):
            self._read_into(view[first * size:last * size],
                            self.offset + int(ordered[first]) * size)
        if order is None:
            return buf
        out = np.empty_like(buf)
        out[order] = buf
        return out


class ChunkedRows:
    """Append-only [N, dim] matrix made of chunks (the first may be a memory map)."""

    def __init__(self, dim: int, dtype: np.dtype, base: 'np.ndarray | FileRows | None' = None
                 ) -> None:
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

    def snapshot(self, count: int) -> 'ChunkedRows':
        """Return a read-only view of the first `count` rows: later appends do not change it.

        It shares the chunks (no copy).  Only a truncate below `count` followed by new appends
        could change rows it holds; the map detects that case (its low-water mark).
        """
        view = ChunkedRows.__new__(ChunkedRows)
        view.dim, view.dtype, view.chunk_rows = self.dim, self.dtype, self.chunk_rows
        view._chunks, view._fill = [], []
        left = count
        for chunk, fill in zip(list(self._chunks), list(self._fill)):
            if left <= 0:
                break
            view._chunks.append(chunk)
            view._fill.append(min(fill, left))
            left -= fill
        view._reindex()
        if len(view) != count:
            raise ValueError(f'snapshot of {count} rows from {len(self)}')
        return view

    def append(self, block: np.ndarray) -> None:
        """Copy `block` ([n, dim], any float dtype) in, converting to the storage dtype."""
        pos = 0
        while pos < len(block):
            last = self._chunks[-1] if self._chunks else None
            if last is None or self._fill[-1] == len(last) or isinstance(last, FileRows) \
                    or not last.flags.writeable:
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
                    # (a FileRows chunk reads the block here: nothing stays mapped)
            return
        for start in range(0, len(rows), step):
            yield self.take(rows[start:start + step])

    def raw_blocks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the given rows in the storage dtype, in bounded blocks (for writing to disk)."""
        for start in range(0, len(rows), self.chunk_rows):
            yield self.take(rows[start:start + self.chunk_rows], self.dtype)
