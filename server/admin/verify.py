"""``admin verify``: every stored file against the size and cksum recorded at install.

Each file row gets one verdict (:class:`Verdict`). ``missing`` and
``changed`` are failures (the tool exits non-zero); ``unrecorded`` (a row
installed before sizes and cksums were recorded) is reported, not a failure:
there is nothing to compare with. A file that differs is checked once more
against its row read again, so that a version a running server installs
meanwhile (rename, then commit: server/storage/commit.py) is not reported.
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from protocol import Cksum
from protocol.printable import quoted

from ..storage.folder import stored_path
from ..storage.inventory import Inventory, StoredFile

#: Read this much of a file at a time: memory stays bounded.
READ_CHUNK = 1024 * 1024
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(
    os, "O_BINARY", 0
)


class Verdict(enum.Enum):
    """What checking one file found."""

    OK = "ok"
    CHANGED = "changed"
    MISSING = "missing"
    UNRECORDED = "no checksum recorded"

    @property
    def failed(self) -> bool:
        """Whether this verdict makes ``verify`` exit non-zero."""
        return self in (Verdict.CHANGED, Verdict.MISSING)


@dataclass(frozen=True)
class Check:
    """One file's verdict, and why."""

    stored: StoredFile
    verdict: Verdict
    detail: str = ""


def check_all(inventory: Inventory, data_dir: Path) -> list[Check]:
    """Check every file row.

    Raises:
        StoreUnusable: the database cannot be read.
    """
    checks = []
    for stored in inventory.files():
        check = check_file(stored, data_dir)
        if check.verdict.failed:
            again = inventory.refreshed(stored)
            if again is not None and again != stored:
                check = check_file(again, data_dir)
        checks.append(check)
    return checks


def check_file(stored: StoredFile, data_dir: Path) -> Check:
    """One file against its row."""
    path = stored_path(data_dir, stored.path_name)
    if path is None:
        return Check(
            stored, Verdict.MISSING, f"{quoted(stored.path_name)} is not a stored file's name"
        )
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return Check(stored, Verdict.MISSING, "no such file")
    except OSError as exc:
        return Check(stored, Verdict.MISSING, f"cannot open it: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Check(stored, Verdict.MISSING, "not a regular file")
        if stored.size is None or stored.cksum is None:
            return Check(stored, Verdict.UNRECORDED, "installed before checksums were recorded")
        size, value = _cksum(file)
    if size != stored.size:
        return Check(stored, Verdict.CHANGED, f"{size} bytes, {stored.size} recorded")
    if value != stored.cksum:
        return Check(stored, Verdict.CHANGED, f"cksum {value}, {stored.cksum} recorded")
    return Check(stored, Verdict.OK)


def _cksum(file: BinaryIO) -> tuple[int, int]:
    """The size and POSIX cksum of an open file, read in chunks."""
    total = Cksum()
    size = 0
    while chunk := file.read(READ_CHUNK):
        total.update(chunk)
        size += len(chunk)
    return size, total.value
