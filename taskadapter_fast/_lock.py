"""One writer at a time: an exclusive `flock` on a lock file, which the OS drops when its holder's process ends.

A process killed with SIGKILL leaves at most the lock file, never a held lock, so nothing needs cleaning
by hand. The holder writes its process id and host into the file for the message a refused process
prints; whether the lock is held is decided by `flock` alone, never by that text (a process id says
nothing across containers or hosts sharing a folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path


class LockHeld(RuntimeError):
    """Another process holds the lock (the message names it: its process id and host, as it wrote them)."""


class FileLock:
    """An exclusive lock on `path`, held from construction until `release()` (or the end of a `with` block).

    Raises `LockHeld` at once when another process (or another FileLock of this process) holds it. Release
    deletes the lock file, so a finished job leaves none behind.
    """

    def __init__(self, path: str | os.PathLike, what: str | None = None):
        self.path = Path(path)
        self._fd: int | None = None
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise LockHeld(f"{what or self.path} is in use by {holder} (lock file {self.path})") from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # its holder deleted the file on release between our open and flock: lock the new one
                os.close(fd)
        with contextlib.suppress(OSError):  # only for others' messages (a full disk fails the job's own writes)
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())

    def release(self) -> None:
        """Delete the lock file and drop the lock (the file first: nobody can lock the old file after it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    """What the holder wrote about itself ("pid N on HOST"), or a placeholder while it has not written yet."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "another process"
