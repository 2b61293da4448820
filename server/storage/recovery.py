"""Start-up repair after a crash: the files and the database agree again.

The server writes a file as a ``.tmp-`` file, commits its row (Verified
false), then renames the file onto its final name. A crash at any point
leaves at worst: a temp file (removed), a row whose file never got its name
(the row is removed), or a row reset to Verified false beside the previous
file (kept: the client never got 1603 and sends again). A final file with no
row is not something the server makes; it is moved aside, not deleted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .db import Database
from .files import FileStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryReport:
    """What start-up repair did."""

    temp_files_removed: int
    rows_removed: int
    files_quarantined: int


def recover(db: Database, store: FileStore) -> RecoveryReport:
    """Remove temp files, rows without files; move files without rows aside.

    Raises:
        OSError: the folder cannot be read or changed.
        sqlite3.Error: the database cannot be changed.
    """
    temps = store.remove_temp_files()
    if temps:
        log.warning("removed %d temp file(s) left by an interrupted upload", temps)
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
            target = store.quarantine(stored)
            log.warning("%s has no database row; moved to %s", stored.path_name, target)
            quarantined += 1
    return RecoveryReport(temps, rows_removed, quarantined)
