"""``admin verify``: every stored file against the size and cksum recorded at install.

Each file row gets one verdict (:class:`Verdict`). ``missing`` and
``changed`` are failures (the tool exits non-zero); ``unrecorded`` (a row
installed before sizes and cksums were recorded) is reported, not a failure:
there is nothing to compare with. A file that differs is checked once more
against its row read again, so that a version a running server installs
meanwhile (commit, then publish: server/storage/commit.py) is not reported. Files are
read through the blob store's reader (:meth:`BlobReader.open`), whatever the backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import BinaryIO

from protocol import Cksum

from ..errors import StorageFault
from ..storage.base import BlobReader
from ..storage.inventory import InventoryView, StoredFile

#: Read this much of a file at a time: memory stays bounded.
READ_CHUNK = 1024 * 1024


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


def check_all(inventory: InventoryView, blobs: BlobReader) -> list[Check]:
    """Check every file row.

    Raises:
        StoreUnusable: the database cannot be read.
    """
    checks = []
    for stored in inventory.files():
        check = check_file(stored, blobs)
        if check.verdict.failed:
            again = inventory.refreshed(stored)
            if again is not None and again != stored:
                check = check_file(again, blobs)
        checks.append(check)
    return checks


def check_file(stored: StoredFile, blobs: BlobReader) -> Check:
    """One file against its row, read through the blob store."""
    try:
        file = blobs.open(stored.path_name)
    except StorageFault as exc:  # BlobMissing; not a stored file's name, not a file, unreadable
        return Check(stored, Verdict.MISSING, str(exc))
    with file:
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
