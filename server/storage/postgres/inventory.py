"""``admin``'s read-only view of the metadata in PostgreSQL (an ``InventoryView``).

A read-only session (``default_transaction_read_only``): nothing here can
write, and it neither waits for the servers nor makes them wait (MVCC). A
file name reads as text where it is UTF-8, as SQLite's inventory gives it.
"""

from __future__ import annotations

import psycopg

from ...errors import StoreUnusable
from ..inventory import ClientSummary, StoredFile, UnusedClient
from ..urltext import without_password
from .connect import connect, reason

_READ_ONLY = "SET default_transaction_read_only = on"
_HAS_SCHEMA = "SELECT to_regclass('schema_version') IS NOT NULL"
_SELECT_CLIENTS = (
    "SELECT c.ID, c.Name, c.Edition, c.LastSeen, c.PublicKey IS NOT NULL,"
    " COUNT(f.FileName), SUM(f.Size)"
    " FROM clients c LEFT JOIN files f ON f.ID = c.ID"
    " {where} GROUP BY c.ID ORDER BY c.Name"
)
_SELECT_FILES = (
    "SELECT f.ID, c.Name, f.FileName, f.PathName, f.Verified, f.Size, f.Cksum"
    " FROM files f LEFT JOIN clients c ON c.ID = f.ID {where} ORDER BY c.Name, f.FileName"
)
_SELECT_UNUSED = (
    "SELECT c.ID, c.Name, c.PublicKey IS NOT NULL, c.RegisteredFrom, c.UnusedSince, c.LastSeen"
    " FROM clients c WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.ID = c.ID)"
    " ORDER BY c.UnusedSince, c.Name"
)


class PgInventory:
    """Read-only queries over the store's database."""

    def __init__(self, db: psycopg.Connection, conninfo: str) -> None:
        self._db = db
        self._where = without_password(conninfo)

    @classmethod
    def open(cls, conninfo: str) -> PgInventory:
        """A read-only session on the database.

        Raises:
            StoreUnusable: it refuses, or holds no cipherdrop schema.
        """
        db = connect(conninfo)
        inventory = cls(db, conninfo)
        try:
            db.execute(_READ_ONLY)
            has_schema = inventory._query(_HAS_SCHEMA, ())[0][0]
        except StoreUnusable:
            db.close()
            raise
        if not has_schema:
            db.close()
            raise StoreUnusable(
                f"{inventory._where} holds no cipherdrop schema (has a server run on it?)"
            )
        return inventory

    def close(self) -> None:
        """Disconnect."""
        self._db.close()

    def clients(self) -> list[ClientSummary]:
        """Every client, by name."""
        return [_summary(row) for row in self._query(_SELECT_CLIENTS.format(where=""), ())]

    def client_by_name(self, name: str) -> ClientSummary | None:
        """The client with exactly this name, or None."""
        return self._one_client("WHERE c.Name = %s", name)

    def client_by_id(self, client_id: bytes) -> ClientSummary | None:
        """The client with this id, or None."""
        return self._one_client("WHERE c.ID = %s", client_id)

    def _one_client(self, where: str, key: str | bytes) -> ClientSummary | None:
        found = self._query(_SELECT_CLIENTS.format(where=where), (key,))
        return _summary(found[0]) if found else None

    def files(self, client_id: bytes | None = None) -> list[StoredFile]:
        """Every file row, or one client's."""
        if client_id is None:
            rows = self._query(_SELECT_FILES.format(where=""), ())
        else:
            rows = self._query(_SELECT_FILES.format(where="WHERE f.ID = %s"), (client_id,))
        return [_stored(row) for row in rows]

    def refreshed(self, stored: StoredFile) -> StoredFile | None:
        """The same row read again (a server may have replaced the file meanwhile)."""
        name = stored.file_name
        key = name.encode("utf-8") if isinstance(name, str) else name
        rows = self._query(
            _SELECT_FILES.format(where="WHERE f.ID = %s AND f.FileName = %s"),
            (stored.client_id, key),
        )
        return _stored(rows[0]) if rows else None

    def unused_clients(self) -> list[UnusedClient]:
        """Every client that never stored a file, the longest unused first."""
        return [
            UnusedClient(
                id=bytes(row[0]), name=row[1], has_key=bool(row[2]), registered_from=row[3],
                unused_since=row[4], last_seen=row[5],
            )
            for row in self._query(_SELECT_UNUSED, ())
        ]

    def _query(self, query: str, parameters: tuple) -> list[tuple]:
        try:
            return self._db.execute(query, parameters).fetchall()
        except psycopg.Error as exc:
            raise StoreUnusable(f"cannot read {self._where}: {reason(exc)}") from exc


def _summary(row: tuple) -> ClientSummary:
    return ClientSummary(
        id=bytes(row[0]), name=row[1], edition=row[2], last_seen=row[3], has_key=bool(row[4]),
        files=int(row[5]), bytes=int(row[6] or 0),
    )


def _stored(row: tuple) -> StoredFile:
    raw = bytes(row[2])
    try:
        file_name: str | bytes = raw.decode("utf-8")
    except UnicodeDecodeError:
        file_name = raw
    return StoredFile(
        client_id=bytes(row[0]), client_name=row[1], file_name=file_name, path_name=row[3],
        verified=bool(row[4]), size=row[5], cksum=row[6],
    )
