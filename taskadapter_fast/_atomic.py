"""Atomic file writes: a temporary file in the destination's folder, renamed into place on success.

A reader (or a run killed mid-save and resumed) sees either the old file or the whole new one, never half
a file; a failed write leaves the destination as it was and removes the temporary file. Each writer gets its
own temporary name, so two processes writing the same file at once never interleave: the last rename wins.

A write the OS refuses (a full disk, a read-only folder, ...) raises `WriteError`, an OSError whose message
names the destination and the cause in one line, whatever the writing library raised.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

# How libraries that hide the OSError say it: Rust's io::Error ("... (os error 28)", safetensors) and Python's text.
_ERRNO_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


class WriteError(OSError):
    """A file could not be written: `filename` is the destination, `strerror` the cause in words."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def os_errno(error: BaseException, folder: str | os.PathLike | None = None) -> int | None:
    """The errno behind `error`, where it can be told; else None.

    An OSError in its chain (torch's zip writer raises a RuntimeError over the OSError of the file object it
    wrote to), an errno in its text (safetensors' "os error 28"), or else, with `folder` given, ENOSPC when that
    folder's file system has no space left (a library that says nothing usable about why its write failed).
    """
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno:
            return link.errno
        match = _ERRNO_TEXT.search(str(link))
        if match:
            return int(match.group(1) or match.group(2))
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)  # as a traceback shows
    if folder is not None and not isinstance(error, _WHAT_WAS_WRITTEN) and _no_space_left(folder):
        return errno.ENOSPC
    return None


# Errors about what was being written (a bug, bad data), not about the disk, even when that disk is full too.
_WHAT_WAS_WRITTEN = (TypeError, ValueError, AttributeError, LookupError, NameError, ArithmeticError, AssertionError)


def _no_space_left(folder: str | os.PathLike) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    free = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail  # root may also use the blocks kept for root
    return free * stat.f_frsize < 64 << 10  # less than a few blocks: the write that failed used up the rest


def as_write_error(path: str | os.PathLike, error: BaseException) -> BaseException:
    """`error` as a `WriteError` naming `path` where the OS refused the write; other errors (a bug in what was
    being written, say) as they are."""
    if isinstance(error, WriteError):
        return error
    code = os_errno(error, Path(path).parent)
    if code is None:
        return error
    return WriteError(code, reason(code), str(path))


def reason(code: int) -> str:
    """An errno in words, as a message goes on: "no space left on device"."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


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
    not for caches). A failure the OS caused is raised as a `WriteError` naming `path`.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        # mkstemp's 0600 (which some writers, safetensors among them, also give a file they replace) would
        # make checkpoints and results unreadable to everyone else: the mode open() gives instead.
        os.chmod(tmp, _FILE_MODE)
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None  # renamed: its name is free again, perhaps already another writer's temporary file
    except Exception as error:
        # Told while the failed write still holds its space (a library that hides errno is read by statvfs).
        failure = as_write_error(path, error)
        if failure is error:
            raise
        raise failure from error
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_savefig(figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """A Matplotlib figure saved as a PNG at `path` through `atomic_path`: whole or not at all, errors naming it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    return Path(path)
