"""File checksums that identify weights files and verify stored map arrays."""
import hashlib
import os

_BLOCK = 16 << 20  # read in 16 MiB blocks: bounded memory for files of any size


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's contents, read block by block."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(_BLOCK):
            digest.update(chunk)
    return digest.hexdigest()
