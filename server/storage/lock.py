"""One server per data folder: an exclusive lock on ``<data dir>/.cipherdrop.lock``.

A second server on the same folder would remove the first one's temp files at
start-up and race it on every file. The server takes the lock before start-up
repair touches anything and holds it until it exits (the kernel drops it when
the process dies, even by SIGKILL). The lock file itself stays: removing it
would let a third server lock a new file while the first still holds the old.

POSIX uses ``flock``; Windows locks the file's first byte with
``msvcrt.locking``; elsewhere the server runs unlocked with a warning.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

from ..errors import LockError

log = logging.getLogger(__name__)

LOCK_NAME = ".cipherdrop.lock"
_LOCK_MODE = 0o600
#: ``msvcrt.locking`` locks a byte range: the first byte is enough.
_LOCKED_BYTES = 1
_OPEN_FLAGS = (
    os.O_RDWR
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
#: What a lock held elsewhere raises (flock: EWOULDBLOCK; msvcrt: EACCES).
_HELD_ERRNOS = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK}


def lock_path(data_dir: Path) -> Path:
    """Where the lock of a data folder is."""
    return Path(data_dir) / LOCK_NAME


def _try_lock(fd: int) -> bool:
    """Take the lock without waiting; False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, _LOCKED_BYTES)
    except OSError as exc:
        if exc.errno in _HELD_ERRNOS:
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, _LOCKED_BYTES)


class DataDirLock:
    """The exclusive lock of one data folder, held by this process."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Create the lock file if needed and lock it, without waiting.

        Raises:
            LockError: the folder does not exist or cannot be written, or
                another server holds the lock.
        """
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise LockError(f"data folder {data_dir} does not exist")
        path = lock_path(data_dir)
        try:
            fd = os.open(path, _OPEN_FLAGS, _LOCK_MODE)
        except OSError as exc:
            raise LockError(
                f"data folder {data_dir} is not writable: cannot open {path.name}"
                f" ({exc.strerror or exc})"
            ) from exc
        try:
            locked = _try_lock(fd)
        except OSError as exc:
            os.close(fd)
            raise LockError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        if not locked:
            os.close(fd)
            raise LockError(
                f"data folder {data_dir.resolve()} is in use by another server"
                f" (it holds {path.name})"
            )
        if fcntl is None and msvcrt is None:
            log.warning("no file locking on this platform: nothing stops a second server on %s",
                        data_dir)
        return cls(path, fd)

    def release(self) -> None:
        """Drop the lock (the file stays); a second call does nothing."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _unlock(fd)
        finally:
            os.close(fd)


def is_locked(data_dir: Path) -> bool:
    """Whether a server holds the data folder (for admin tools reading beside it)."""
    try:
        fd = os.open(lock_path(data_dir), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return False
    try:
        if not _try_lock(fd):
            return True
        _unlock(fd)
        return False
    finally:
        os.close(fd)
