"""Start-up repair after a crash: the files and the database agree again.

The server writes a file as a ``.tmp-`` file, commits its row (Verified
false), then renames the file onto its final name. A crash at any point
leaves at worst: a temp file (removed), a row whose file never got its name
(the row is removed), or a row reset to Verified false beside the previous
file (kept: the client never got 1603 and sends again). A final file with no
row is not something the server makes; it is moved aside, not deleted. Nor is
anything in a client folder that is not a regular file (a folder, symlink or
fifo, even one named ``.tmp-*``), or a client folder that is not a folder:
each is moved aside as it is, never followed, opened or deleted. An entry
that cannot be moved is logged and left; start-up goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .db import Database
from .files import FileStore, StorageError, StoredFile

log = logging.getLogger(__name__)

_NOT_A_FILE = "is not a regular file"
_NOT_A_FOLDER = "is not a real client folder"


@dataclass(frozen=True)
class RecoveryReport:
    """What start-up repair did."""

    temp_files_removed: int
    rows_removed: int
    files_quarantined: int
    strays_moved: int


def recover(db: Database, store: FileStore) -> RecoveryReport:
    """Remove temp files, rows without files; move files without rows and strays aside.

    Raises:
        OSError: the folder cannot be read or changed.
        sqlite3.Error: the database cannot be changed.
    """
    temps = store.remove_temp_files()
    if temps:
        log.warning("removed %d temp file(s) left by an interrupted upload", temps)
    strays = sum(
        _set_aside(store, stray, _NOT_A_FILE if stray.client_hex else _NOT_A_FOLDER)
        for stray in store.strays()
    )
    rows = db.file_rows()
    rows_removed = 0
    with db.transaction():
        for row in rows:
            if not store.exists(row.path_name):
                log.warning("file %s is missing; its row is removed", row.path_name)
                db.delete_file(row.id, row.file_name)
                rows_removed += 1
    known = {row.path_name for row in rows}
    quarantined = 0
    for stored in store.stored_files():
        if stored.path_name not in known:
            quarantined += _set_aside(store, stored, "has no database row")
    return RecoveryReport(temps, rows_removed, quarantined, strays)


def _set_aside(store: FileStore, entry: StoredFile, why: str) -> bool:
    """Move one entry to ``.orphaned/`` and log it; False (logged) if it cannot move."""
    try:
        target = store.quarantine(entry)
    except (OSError, StorageError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.warning("%s %s; cannot move it aside (%s): left in place", entry.path_name, why, reason)
        return False
    log.warning("%s %s; moved to %s", entry.path_name, why, target)
    return True
