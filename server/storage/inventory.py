"""A read-only view of the metadata for the operator's tool, safe beside the server.

:class:`InventoryView` is what ``admin`` asks of any metadata backend (the
factory's ``open_inventory``); :class:`Inventory` is SQLite's, on ``defensive.db``.

The database is opened read-only (``mode=ro``): nothing here can write, so
the ``admin`` commands that only look need no lock and run beside a server
(WAL mode: a reader neither waits for the server nor makes it wait). A
database from before the ``Cksum``/``Size`` columns reads as if they were
NULL. No ``sqlite3`` type leaves this module: errors become
:class:`~server.errors.StoreUnusable`.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from ..errors import StoreUnusable

_MS = 1000
#: A reader waits this long for a writer's checkpoint before giving up.
READ_BUSY_TIMEOUT = 5.0
_CLIENT_ID_BYTES = 16
_CLIENT_ID_HEX = re.compile(f"[0-9a-fA-F]{{{2 * _CLIENT_ID_BYTES}}}")
_CONTENT_COLUMNS = ("Cksum", "Size")

_SELECT_CLIENTS = (
    "SELECT c.ID, c.Name, c.Edition, c.LastSeen, c.PublicKey IS NOT NULL,"
    " COUNT(f.FileName), SUM({size})"
    " FROM clients c LEFT JOIN files f ON f.ID = c.ID"
    " {where} GROUP BY c.ID ORDER BY c.Name"
)
_SELECT_FILES = (
    "SELECT f.ID, c.Name, f.FileName, f.PathName, f.Verified, {size}, {cksum}"
    " FROM files f LEFT JOIN clients c ON c.ID = f.ID"
    " {where} ORDER BY c.Name, f.FileName"
)
#: Clients that never stored a file, the longest unused first (UnusedSince
#: and RegisteredFrom read NULL in a database of before them).
_SELECT_UNUSED = (
    "SELECT c.ID, c.Name, c.PublicKey IS NOT NULL, {registered_from}, {unused_since}, c.LastSeen"
    " FROM clients c WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.ID = c.ID)"
    " ORDER BY {unused_since}, c.Name"
)
_UNUSED_COLUMNS = ("RegisteredFrom", "UnusedSince")
_SELECT_FILE = (
    "SELECT f.ID, c.Name, f.FileName, f.PathName, f.Verified, {size}, {cksum}"
    " FROM files f LEFT JOIN clients c ON c.ID = f.ID WHERE f.ID = ? AND f.FileName = ?"
)


@dataclass(frozen=True)
class ClientSummary:
    """A client as the operator sees it."""

    id: bytes
    name: str
    edition: str
    last_seen: str | None
    has_key: bool
    files: int
    #: The sum of the recorded sizes (files installed before sizes were recorded count 0).
    bytes: int


@dataclass(frozen=True)
class UnusedClient:
    """A client that never stored a file: it lapses (docs/OPERATING.md, "Clients that lapse")."""

    id: bytes
    name: str
    has_key: bool
    #: The exact address that registered it (None in a database of before this was kept).
    registered_from: str | None
    #: When its unused time began (its registration or last key; None: not recorded).
    unused_since: float | None
    last_seen: str | None


@dataclass(frozen=True)
class StoredFile:
    """A row of ``files``, with its client's name and what was recorded at install."""

    client_id: bytes
    client_name: str | None
    file_name: str | bytes
    path_name: str
    verified: bool
    size: int | None
    cksum: int | None


class InventoryView(Protocol):
    """What ``admin`` reads of a metadata store; every method may raise StoreUnusable."""

    def close(self) -> None: ...
    def clients(self) -> list[ClientSummary]: ...
    def client_by_name(self, name: str) -> ClientSummary | None: ...
    def client_by_id(self, client_id: bytes) -> ClientSummary | None: ...
    def files(self, client_id: bytes | None = None) -> list[StoredFile]: ...
    def refreshed(self, stored: StoredFile) -> StoredFile | None: ...
    def unused_clients(self) -> list[UnusedClient]: ...


class Inventory:
    """Read-only queries over one SQLite database (an :class:`InventoryView`)."""

    def __init__(self, connection: sqlite3.Connection, path: Path, content_columns: bool) -> None:
        self._db = connection
        self.path = path
        # An old database without the columns reads NULL for them.
        cksum, size = (f"f.{name}" for name in _CONTENT_COLUMNS) if content_columns else (
            "NULL", "NULL"
        )
        self._columns = {"cksum": cksum, "size": size}

    @classmethod
    def open(cls, path: Path) -> Inventory:
        """Open the database at ``path`` (a data folder's ``defensive.db``) read-only.

        Raises:
            StoreUnusable: there is none, or it cannot be read.
        """
        path = Path(path)
        try:
            is_file = path.is_file()
        except OSError as exc:  # a folder that cannot be searched
            raise StoreUnusable(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not is_file:
            raise StoreUnusable(
                f"no database at {path}: not a cipherdrop data folder (has a server run on it?)"
            )
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            connection = sqlite3.connect(uri, uri=True, isolation_level=None)
            connection.execute(f"PRAGMA busy_timeout = {round(READ_BUSY_TIMEOUT * _MS)}")
            columns = {row[1] for row in connection.execute("PRAGMA table_info(files)")}
        except sqlite3.Error as exc:
            raise StoreUnusable(f"cannot read {path}: {exc}") from exc
        if not columns:
            connection.close()
            raise StoreUnusable(f"{path} has no files table: not a cipherdrop database")
        return cls(connection, path, set(_CONTENT_COLUMNS) <= columns)

    def close(self) -> None:
        """Let go of the database."""
        self._db.close()

    def clients(self) -> list[ClientSummary]:
        """Every client, by name.

        Raises:
            StoreUnusable: the database cannot be read.
        """
        query = _SELECT_CLIENTS.format(where="", **self._columns)
        return [_summary(row) for row in self._query(query, ())]

    def client_by_name(self, name: str) -> ClientSummary | None:
        """The client with exactly this name, or None.

        Raises:
            StoreUnusable: the database cannot be read.
        """
        return self._one_client("WHERE c.Name = ?", name)

    def client_by_id(self, client_id: bytes) -> ClientSummary | None:
        """The client with this id, or None.

        Raises:
            StoreUnusable: the database cannot be read.
        """
        return self._one_client("WHERE c.ID = ?", client_id)

    def _one_client(self, where: str, key: str | bytes) -> ClientSummary | None:
        found = self._query(_SELECT_CLIENTS.format(where=where, **self._columns), (key,))
        return _summary(found[0]) if found else None

    def files(self, client_id: bytes | None = None) -> list[StoredFile]:
        """Every file row, or one client's.

        Raises:
            StoreUnusable: the database cannot be read.
        """
        if client_id is None:
            rows = self._query(_SELECT_FILES.format(where="", **self._columns), ())
        else:
            query = _SELECT_FILES.format(where="WHERE f.ID = ?", **self._columns)
            rows = self._query(query, (client_id,))
        return [_stored(row) for row in rows]

    def refreshed(self, stored: StoredFile) -> StoredFile | None:
        """The same row read again (a server may have replaced the file meanwhile).

        Raises:
            StoreUnusable: the database cannot be read.
        """
        rows = self._query(
            _SELECT_FILE.format(**self._columns), (stored.client_id, stored.file_name)
        )
        return _stored(rows[0]) if rows else None

    def unused_clients(self) -> list[UnusedClient]:
        """Every client that never stored a file, the longest unused first.

        Raises:
            StoreUnusable: the database cannot be read.
        """
        present = {row[1] for row in self._query("PRAGMA table_info(clients)", ())}
        registered_from, unused_since = (
            f"c.{name}" if name in present else "NULL" for name in _UNUSED_COLUMNS
        )
        query = _SELECT_UNUSED.format(registered_from=registered_from, unused_since=unused_since)
        return [
            UnusedClient(
                id=row[0], name=row[1], has_key=bool(row[2]), registered_from=row[3],
                unused_since=row[4], last_seen=row[5],
            )
            for row in self._query(query, ())
        ]

    def _query(self, query: str, parameters: tuple) -> list[tuple]:
        try:
            return self._db.execute(query, parameters).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnusable(f"cannot read {self.path}: {exc}") from exc


def parse_client_id(text: str) -> bytes | None:
    """A client id from exactly its 32 hex digits (as ``admin clients`` shows it), or None.

    Nothing looser: ``bytes.fromhex`` alone would also take spaces, and a name
    such as ``"AB CD …"`` would then select another client.
    """
    if _CLIENT_ID_HEX.fullmatch(text) is None:
        return None
    return bytes.fromhex(text)


def _summary(row: tuple) -> ClientSummary:
    return ClientSummary(
        id=row[0], name=row[1], edition=row[2], last_seen=row[3], has_key=bool(row[4]),
        files=row[5], bytes=row[6] or 0,
    )


def _stored(row: tuple) -> StoredFile:
    return StoredFile(
        client_id=row[0], client_name=row[1], file_name=row[2], path_name=row[3],
        verified=bool(row[4]), size=row[5], cksum=row[6],
    )
