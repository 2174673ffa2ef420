"""Confinement of the node's map reads and writes to one configured directory.

The save and load services take paths from any client on the ROS graph; resolving them
(symlinks included) and refusing anything outside the directory keeps a client from
overwriting or reading files elsewhere on the robot.
"""
import os
from pathlib import Path


class ForbiddenMapPath(PermissionError):
    """Raised for a map path that resolves outside the map directory."""


def map_root(directory: str | os.PathLike) -> Path:
    """Return the absolute, symlink-free map directory (`~` expanded)."""
    text = os.fspath(directory)
    if not text:
        raise ValueError('map_directory is empty: set it to the directory that holds the maps')
    return Path(text).expanduser().resolve()


def resolve_map_path(root: Path, path: str | os.PathLike) -> Path:
    """Resolve `path` (relative to `root`, or absolute) and refuse it unless strictly inside."""
    text = os.fspath(path)
    if not text:
        raise ValueError('empty map path: name a map inside the map directory')
    target = (root / Path(text).expanduser()).resolve()
    if target == root or not target.is_relative_to(root):
        raise ForbiddenMapPath(
            f'map path {text!r} resolves to {target}, outside the map directory {root}')
    return target
