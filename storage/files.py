"""Atomic file writes: write to a temporary name in the target folder, flush it to disk, then rename
into place."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a finished file's bytes to the disk (``os.fsync``), so a crash after the rename cannot
    leave a complete-looking file with lost pages."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path) -> Path:
    """fsync ``tmp``, ``os.replace`` it onto ``path`` and fsync the folder. Returns ``path``."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary ``.<name>.<hex>.tmp`` beside ``path``, fsync it, then
    ``os.replace`` it onto ``path``, so readers see the old file or the whole new one, never a part,
    even after a crash. The temporary file is removed if ``write`` fails. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
