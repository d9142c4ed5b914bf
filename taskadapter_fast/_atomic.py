"""Atomic file writes: a temporary file in the destination's folder, renamed into place on success.

A reader (or a run killed mid-save and resumed) sees either the old file or the whole new one, never half
a file; a failed write leaves the destination as it was and removes the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which would race with other threads.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path next to `path` for the caller to write; on success it replaces `path`.

    fsync: flush the temporary file to disk before the rename (worth it for files a crash must not lose,
    not for caches).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp's 0600 (which some writers, safetensors among them, also give a file they replace) would
        # make checkpoints and results unreadable to everyone else: the mode open() gives instead.
        os.chmod(tmp, _FILE_MODE)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
