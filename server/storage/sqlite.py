"""``defensive.db``: the metadata store (:class:`~server.storage.base.MetadataStore`) in SQLite.

The tables ``clients`` and ``files`` carry the column names of the protocol
(docs/PROTOCOL.md, "Server rules"); the server's own data, the key bindings
(docs/KEY_BINDING.md), lives in a table of its own, ``key_bindings``. No
``sqlite3`` type leaves this module: its errors become
:class:`~server.errors.StorageFault`, a taken name :class:`~server.errors.NameTaken`.

Group commit: one SQLite transaction per loop round. The first write of a
round opens it (``BEGIN IMMEDIATE``); each request's writes are a savepoint
in it, so that a request that fails undoes its own writes only. WAL mode and
``synchronous=NORMAL``: :meth:`SqliteMetadata.sync` commits the round so far
(its pages reach the WAL once, however many requests wrote them) and makes it
durable with one fsync of the WAL. The loop ends every round with
:meth:`SqliteMetadata.begin_round_commit`: the COMMIT, in the loop thread
(it writes the round's pages to the WAL in the page cache: quick), and, if
the round has answers, the fsync of the WAL, handed back as a
:class:`WalSync` (a :class:`~server.storage.base.DurableStep`) that the
loop's round worker runs (server/roundworker.py), beside the round's blob
seals and before its publishes (server/storage/commit.py); the answers go
out only after it (server/loop.py), so that nothing is answered before it
is on disk.
:meth:`SqliteMetadata.finish_round` is the same, waited for. If SQLite rolls the
round back (it does after a full disk or an I/O error), or its commit fails,
the round is lost: :meth:`finish_round` raises, and the loop closes the
connections the round was to answer, unanswered (their writes are gone).

A database that is not SQLite, or fails ``quick_check``, or lacks a column, is
refused with :class:`~server.errors.StoreUnusable` before anything is written to it. So is one
the server cannot write (a read-only file, file system or folder, or SQLite's
own read-only flag): SQLite would open it read-only without a word, and every
request would get 1607. The check is a real write attempt, not permission
bits, which root ignores.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Collection, Iterator, ParamSpec, TypeVar

from ..errors import BadStoreUrl, DurabilityLost, NameTaken, StorageFault, StoreUnusable
from ..peer import address_group
from .base import (
    Binding, ClientRow, FileRow, StoreUrl, file_row_and_path_names, register_if_free_in_steps,
    timestamp, wait_for,
)

if TYPE_CHECKING:
    from .inventory import Inventory

log = logging.getLogger(__name__)

#: A request's writes within the round's transaction.
_SAVEPOINT = "SAVEPOINT request"
_RELEASE = "RELEASE request"
_ROLLBACK_TO = "ROLLBACK TO request"

DB_NAME = "defensive.db"
_SQLITE_MAGIC = b"SQLite format 3\0"
_MS = 1000
#: Short, not SQLite's usual seconds: the loop is one thread, so while a
#: statement waits every connection waits; a write that cannot get the lock
#: soon fails instead (1607, the client retries).
DEFAULT_BUSY_TIMEOUT = 0.25
#: SQLite takes its busy timeout as a signed 32-bit count of milliseconds.
MAX_BUSY_TIMEOUT = (2**31 - 1) // _MS
#: The option of a ``sqlite:`` URL that sets it (``?busy_timeout=SECONDS``).
BUSY_TIMEOUT_OPTION = "busy_timeout"
_OK = "ok"
#: Opening the file for writing is the probe; nothing is written through it.
_WRITE_PROBE_FLAGS = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
#: The WAL file and the folder are opened only to be fsynced.
_SYNC_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_WAL_SUFFIX = "-wal"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS clients (
        ID BLOB PRIMARY KEY,
        Name TEXT NOT NULL UNIQUE,
        PublicKey BLOB,
        LastSeen TEXT,
        AESKey BLOB,
        Edition TEXT NOT NULL DEFAULT 'v3',
        Crc TEXT NOT NULL DEFAULT 'cksum',
        UnusedSince REAL,
        RegisteredFrom TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS files (
        ID BLOB NOT NULL,
        FileName TEXT NOT NULL,
        PathName TEXT NOT NULL,
        Verified INTEGER NOT NULL DEFAULT 0,
        Cksum INTEGER,
        Size INTEGER,
        BlobKey TEXT,
        PendingKey TEXT,
        PRIMARY KEY (ID, FileName)
    )""",
    """CREATE TABLE IF NOT EXISTS key_bindings (
        ID BLOB PRIMARY KEY,
        Address TEXT NOT NULL,
        IssuedAt REAL NOT NULL,
        LastUsed REAL NOT NULL
    )""",
)
#: Columns added since the first schema: a database without them gets them
#: (with their defaults) when it is opened.
_ADDED_COLUMNS = {
    "clients": {
        "Edition": "TEXT NOT NULL DEFAULT 'v3'",
        "Crc": "TEXT NOT NULL DEFAULT 'cksum'",
        # When the client's unused time began: its registration or its last
        # key (the binding's IssuedAt); NULL once it stored a file.
        "UnusedSince": "REAL",
        # The exact address of the 825 (or 827) that registered it: its
        # address group's share of the client cap counts it.
        "RegisteredFrom": "TEXT",
    },
    # The stored content's cksum and size, recorded at install (NULL before).
    # The blob the row points at, and a pending version's (server/storage/commit.py):
    # NULL in the rows of before (their content is what PathName reads).
    "files": {"Cksum": "INTEGER", "Size": "INTEGER", "BlobKey": "TEXT", "PendingKey": "TEXT"},
}
#: What an added column holds in the rows that were there before it (run
#: right after the column is added). A client without a binding gets the
#: time of the migration (keyless ones: 0, lapsed, as they were already).
_FILLED_COLUMNS = {
    ("clients", "UnusedSince"): (
        "UPDATE clients SET UnusedSince = CASE WHEN PublicKey IS NULL"
        " THEN COALESCE((SELECT IssuedAt FROM key_bindings b WHERE b.ID = clients.ID), 0)"
        " ELSE COALESCE((SELECT IssuedAt FROM key_bindings b WHERE b.ID = clients.ID), :now)"
        " END WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.ID = clients.ID)"
    ),
    # The nearest thing recorded: the address its key (or registration) is bound to.
    ("clients", "RegisteredFrom"): (
        "UPDATE clients SET RegisteredFrom ="
        " (SELECT Address FROM key_bindings b WHERE b.ID = clients.ID)"
    ),
}
#: Made after the columns: the keyless registrations by age, so that finding
#: the lapsed ones reads what it deletes, not every row.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS clients_keyless ON clients (UnusedSince)"
    " WHERE PublicKey IS NULL",
    "CREATE INDEX IF NOT EXISTS clients_unused ON clients (UnusedSince)"
    " WHERE PublicKey IS NOT NULL AND UnusedSince IS NOT NULL",
    # The rows pointing at a blob, so that the sweeper reads what it asks about.
    "CREATE INDEX IF NOT EXISTS files_blob_key ON files (BlobKey) WHERE BlobKey IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS files_pending_key ON files (PendingKey)"
    " WHERE PendingKey IS NOT NULL",
)
#: The SQL function that gives an address's group (server/peer.py), for _COUNTS.
_GROUP_FUNCTION = "address_group"
#: The number of clients, in all and per address group of RegisteredFrom,
#: kept with the rows by triggers (the counts are read at every registration
#: that meets the cap or a share of it: a COUNT(*) would read every row).
#: TEMP: made from the rows at each open (so under the grouping of this
#: run's ``--ipv6-prefix``), and rolled back with them.
_COUNTS = (
    "CREATE TEMP TABLE client_total (Clients INTEGER NOT NULL)",
    "INSERT INTO client_total SELECT COUNT(*) FROM main.clients",
    "CREATE TEMP TABLE client_groups (AddressGroup TEXT PRIMARY KEY, Clients INTEGER NOT NULL)",
    f"INSERT INTO client_groups SELECT {_GROUP_FUNCTION}(RegisteredFrom), COUNT(*)"
    " FROM main.clients WHERE RegisteredFrom IS NOT NULL GROUP BY 1",
    "CREATE TEMP TRIGGER client_added AFTER INSERT ON main.clients BEGIN"
    " UPDATE client_total SET Clients = Clients + 1;"
    f" INSERT INTO client_groups SELECT {_GROUP_FUNCTION}(NEW.RegisteredFrom), 1"
    " WHERE NEW.RegisteredFrom IS NOT NULL"
    " ON CONFLICT (AddressGroup) DO UPDATE SET Clients = Clients + 1; END",
    "CREATE TEMP TRIGGER client_removed AFTER DELETE ON main.clients BEGIN"
    " UPDATE client_total SET Clients = Clients - 1;"
    f" UPDATE client_groups SET Clients = Clients - 1"
    f" WHERE AddressGroup = {_GROUP_FUNCTION}(OLD.RegisteredFrom);"
    " DELETE FROM client_groups WHERE Clients <= 0"
    f" AND AddressGroup = {_GROUP_FUNCTION}(OLD.RegisteredFrom); END",
)
_REQUIRED_COLUMNS = {
    "clients": {"ID", "Name", "PublicKey", "LastSeen", "AESKey"},
    "files": {"ID", "FileName", "PathName", "Verified"},
    "key_bindings": {"ID", "Address", "IssuedAt", "LastUsed"},
}

_CLIENT_COLUMNS = "ID, Name, PublicKey, LastSeen, AESKey, Edition, Crc, RegisteredFrom"
_SELECT_CLIENT_BY_ID = f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE ID = ?"
_SELECT_CLIENT_BY_NAME = f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE Name = ?"
_BINDING_COLUMNS = "ID, Address, IssuedAt, LastUsed"
#: A request's reads of its client: the row and its binding, one statement.
_SELECT_CLIENT_AND_BINDING = (
    "SELECT " + ", ".join(f"c.{column}" for column in _CLIENT_COLUMNS.split(", "))
    + ", " + ", ".join(f"b.{column}" for column in _BINDING_COLUMNS.split(", "))
    + " FROM clients c LEFT JOIN key_bindings b ON b.ID = c.ID WHERE c.ID = ?"
)
_CLIENT_COLUMN_COUNT = len(_CLIENT_COLUMNS.split(", "))
_COUNT_CLIENTS = "SELECT Clients FROM temp.client_total"
_COUNT_GROUP_CLIENTS = "SELECT Clients FROM temp.client_groups WHERE AddressGroup = ?"
#: Through the index clients_keyless.
_STALE_KEYLESS = "SELECT ID FROM clients WHERE PublicKey IS NULL AND UnusedSince < ?"
#: Through the index clients_unused.
_UNUSED_KEYED = (
    "SELECT ID FROM clients"
    " WHERE PublicKey IS NOT NULL AND UnusedSince IS NOT NULL AND UnusedSince < ?"
)
_INSERT_CLIENT = (
    "INSERT INTO clients (ID, Name, LastSeen, Edition, UnusedSince, RegisteredFrom)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
#: A new binding (a registration made again, a key issued) starts the unused time again.
_SET_UNUSED_SINCE = "UPDATE clients SET UnusedSince = ? WHERE ID = ? AND UnusedSince IS NOT NULL"
#: A client that stored a file is used: it never lapses.
_SET_USED = "UPDATE clients SET UnusedSince = NULL WHERE ID = ? AND UnusedSince IS NOT NULL"
_SET_EDITION = "UPDATE clients SET Edition = ? WHERE ID = ?"
_SET_CRC = "UPDATE clients SET Crc = ? WHERE ID = ?"
_DELETE_CLIENT = "DELETE FROM clients WHERE ID = ?"
_SET_KEYS = "UPDATE clients SET PublicKey = ?, AESKey = ?, LastSeen = ? WHERE ID = ?"
_SET_AES_KEY = "UPDATE clients SET AESKey = ?, LastSeen = ? WHERE ID = ?"
_SET_LAST_SEEN = "UPDATE clients SET LastSeen = ? WHERE ID = ?"
_FILE_COLUMNS = "ID, FileName, PathName, Verified, BlobKey, PendingKey"
_SELECT_FILE = f"SELECT {_FILE_COLUMNS} FROM files WHERE ID = ? AND FileName = ?"
_SELECT_FILES = f"SELECT {_FILE_COLUMNS} FROM files"
#: The primary key (ID, FileName) indexes it: the client's rows only are read.
_SUM_STORED_BYTES = "SELECT COALESCE(SUM(Size), 0) FROM files WHERE ID = ?"
_SELECT_CLIENT_FILES = f"SELECT {_FILE_COLUMNS} FROM files WHERE ID = ?"
_UPSERT_FILE = (
    "INSERT INTO files (ID, FileName, PathName, Verified, BlobKey) VALUES (?, ?, ?, 0, ?)"
    " ON CONFLICT (ID, FileName) DO UPDATE SET PathName = excluded.PathName, Verified = 0,"
    " BlobKey = excluded.BlobKey, PendingKey = NULL"
)
_SET_PENDING = "UPDATE files SET PendingKey = ? WHERE ID = ? AND FileName = ?"
_PROMOTE_PENDING = (
    "UPDATE files SET BlobKey = ?, PendingKey = NULL WHERE ID = ? AND FileName = ?"
)
_SET_VERIFIED = "UPDATE files SET Verified = ? WHERE ID = ? AND FileName = ?"
_DELETE_FILE = "DELETE FROM files WHERE ID = ? AND FileName = ?"
_SET_CONTENT = "UPDATE files SET Size = ?, Cksum = ? WHERE ID = ? AND FileName = ?"
#: Through the indexes files_blob_key and files_pending_key: ``{marks}`` is one ``?`` per key.
_REFERENCED_KEYS = (
    "SELECT BlobKey FROM files WHERE BlobKey IN ({marks})"
    " UNION SELECT PendingKey FROM files WHERE PendingKey IN ({marks})"
)
_DELETE_CLIENT_FILES = "DELETE FROM files WHERE ID = ?"
_SELECT_BINDING = f"SELECT {_BINDING_COLUMNS} FROM key_bindings WHERE ID = ?"
_UPSERT_BINDING = (
    "INSERT INTO key_bindings (ID, Address, IssuedAt, LastUsed) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (ID) DO UPDATE SET Address = excluded.Address,"
    " IssuedAt = excluded.IssuedAt, LastUsed = excluded.LastUsed"
)
_SET_BINDING_USED = "UPDATE key_bindings SET LastUsed = ? WHERE ID = ? AND LastUsed < ?"
_DELETE_BINDING = "DELETE FROM key_bindings WHERE ID = ?"


def file_name_value(name: bytes) -> str | bytes:
    """How a wire file name is kept: TEXT where it is UTF-8, else the BLOB."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name


def _name_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except IsADirectoryError as exc:
        raise StoreUnusable(f"{path} is a folder, not a database file") from exc
    except OSError as exc:
        raise StoreUnusable(f"cannot read {path}: {exc.strerror}") from exc
    if head and head != _SQLITE_MAGIC:
        raise StoreUnusable(f"{path} is not an SQLite database; left untouched")


def _check_file_writable(path: Path) -> None:
    """The file (if any) opens for writing, and its folder takes the WAL files.

    Raises:
        StoreUnusable: read-only file, file system or folder.
    """
    try:
        fd = os.open(path, _WRITE_PROBE_FLAGS)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreUnusable(f"{path} is read-only ({exc.strerror or exc})") from exc
    else:
        os.close(fd)
    # access() reports a read-only mount or an immutable folder even to root.
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreUnusable(
            f"{path.parent} is not writable: SQLite keeps {path.name}-wal and -shm there"
        )


def _why_unopenable(path: Path, exc: sqlite3.Error) -> str:
    """What is wrong with a database path SQLite could not open ("unable to open ...")."""
    if path.is_symlink() and not path.exists():
        return f"it is a symbolic link to {os.readlink(path)}, which does not exist"
    if not path.parent.is_dir():
        return f"its folder {path.parent} does not exist or is not a folder"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"permission denied on its folder {path.parent}"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "permission denied"
    return str(exc)


def _probe_write(connection: sqlite3.Connection, path: Path) -> None:
    """Write ``user_version`` back unchanged and roll back: a real write probe.

    SQLite's own read-only cases (a file opened read-only, a header write
    version it does not know) show only at the first write, not at BEGIN.

    Raises:
        StoreUnusable: the database cannot be written (read-only, or locked
            by another process beyond the busy timeout).
    """
    try:
        connection.execute("BEGIN IMMEDIATE")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        connection.execute(f"PRAGMA user_version = {int(version)}")
    except sqlite3.OperationalError as exc:
        raise StoreUnusable(f"cannot write {path} ({exc}); left untouched") from exc
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")


_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


def _translated(method: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
    """Run a store method; an SQLite error leaves it as :class:`StorageFault`."""

    @functools.wraps(method)
    def run(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StorageFault(f"database: {exc}") from exc

    return run


class WalSync:
    """The round's :class:`~server.storage.base.DurableStep`: committed; the fsync of the
    WAL, for the caller's worker thread to run (:meth:`run`), and its outcome (:meth:`finish`)."""

    def __init__(self, store: SqliteMetadata) -> None:
        self._store = store
        #: Why the fsync failed, once it ran.
        self._error: OSError | None = None

    def run(self) -> bool:
        """One fsync of the WAL (any thread; the store is called by no one meanwhile);
        whether it held."""
        try:
            self._store._fsync_wal()
        except OSError as exc:
            self._error = exc
            return False
        self._store._unsynced = False
        return True

    def finish(self) -> None:
        """The fsync is done: the round is durable.

        Raises:
            DurabilityLost: the fsync failed (as :meth:`SqliteMetadata.sync`).
        """
        self._store._synced(self._error)


class SqliteMetadata:
    """The server's single SQLite connection (one thread uses it).

    Raises (``open``):
        StoreUnusable: not SQLite, corrupt, read-only, or missing a column.
    Raises (every other method):
        StorageFault: SQLite failed (locked, read-only, disk full, I/O).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._seen: dict[bytes, float] = {}
        self._used: dict[bytes, float] = {}
        #: A commit is in the WAL and not yet fsynced.
        self._unsynced = False
        #: SQLite rolled back this round's transaction after an error: the
        #: writes of its earlier requests are gone (see the module doc).
        self._round_lost: str | None = None
        #: The WAL file, open for fsync from the first sync on (-1 until then).
        self._wal_fd = -1
        #: Why an fsync failed: from then on no sync succeeds (:class:`DurabilityLost`).
        self._durability_lost: str | None = None
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        group_of: Callable[[str], str] = address_group,
    ) -> SqliteMetadata:
        """Open or create the database, check it, set WAL and NORMAL sync (see :meth:`sync`).

        ``busy_timeout``: seconds a statement waits for a lock another
        process holds (``sqlite:…?busy_timeout=``). ``group_of``:
        an address's group (server/peer.py, with the server's
        ``--ipv6-prefix``), which :meth:`count_clients` counts by.
        """
        path = Path(path)
        _check_header(path)
        _check_file_writable(path)
        try:
            connection = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnusable(f"cannot open {path}: {_why_unopenable(path, exc)}") from exc
        try:
            connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout * _MS)}")
            connection.create_function(_GROUP_FUNCTION, 1, group_of, deterministic=True)
            result = connection.execute("PRAGMA quick_check").fetchone()[0]
            if result != _OK:
                raise StoreUnusable(f"{path} is corrupt ({result}); left untouched")
            _probe_write(connection, path)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            # The TEMP tables (_COUNTS) are small and made again at each open.
            connection.execute("PRAGMA temp_store = MEMORY")
            for statement in _SCHEMA:
                connection.execute(statement)
            cls._check_columns(connection, path)
            for statement in (*_INDEXES, *_COUNTS):
                connection.execute(statement)
        except sqlite3.Error as exc:
            connection.close()
            raise StoreUnusable(f"{path} is unusable ({exc}); left untouched") from exc
        except StoreUnusable:
            connection.close()
            raise
        return cls(connection, path)

    @staticmethod
    def _check_columns(connection: sqlite3.Connection, path: Path) -> None:
        for table, required in _REQUIRED_COLUMNS.items():
            rows = connection.execute(f"PRAGMA table_info({table})").fetchall()
            present = {row[1] for row in rows}
            missing = required - present
            if missing:
                raise StoreUnusable(
                    f"{path}: table {table} lacks {', '.join(sorted(missing))}"
                )
            for column, declaration in _ADDED_COLUMNS.get(table, {}).items():
                if column not in present:
                    log.info("adding column %s.%s to %s", table, column, path)
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
                    filling = _FILLED_COLUMNS.get((table, column))
                    if filling:
                        connection.execute(filling, {"now": time.time()})

    def close(self) -> None:
        """Write pending timestamps, make them durable, and close (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            self.sync()
        finally:
            if self._wal_fd != -1:
                os.close(self._wal_fd)
                self._wal_fd = -1
            self._db.close()

    @property
    def unsynced(self) -> bool:
        """Whether a write is not yet durable (:meth:`sync` has work to do).

        Not part of :class:`~server.storage.base.MetadataStore`: the group
        commit's own tests look at it.
        """
        return self._unsynced or self._db.in_transaction

    def begin_round_commit(self, *, durable: bool) -> WalSync | None:
        """The loop's end of a round: COMMIT here; with ``durable``, the WAL's fsync for the
        caller to run off its thread (the :class:`WalSync` returned; None if there is
        nothing to make durable).

        Raises:
            StorageFault: the round is lost (SQLite rolled it back, or its
                commit failed: reported here, once); no answer of the round
                may go out.
            DurabilityLost: an fsync failed earlier.
        """
        self._check_durability()
        lost, self._round_lost = self._round_lost, None
        if lost is not None:
            raise StorageFault(f"database: the round's writes were rolled back ({lost})")
        try:
            self._commit()
        except StorageFault:
            self._round_lost = None  # reported to the loop, which owns the round
            raise
        if not durable or not self._unsynced:
            return None
        return WalSync(self)

    def _synced(self, error: OSError | None) -> None:
        """The fsync of a :class:`WalSync` ran (``error``: it failed).

        Raises:
            DurabilityLost: it failed.
        """
        if error is not None:
            self._durability_lost = error.strerror or str(error)
            raise DurabilityLost(f"database sync: {self._durability_lost}") from error

    def finish_round(self, *, durable: bool) -> None:
        """The same, waited for (:func:`~server.storage.base.wait_for`).

        Raises:
            StorageFault: the round is lost, or the fsync failed; no answer of
                the round may go out.
        """
        wait_for(self.begin_round_commit(durable=durable))

    def _check_durability(self) -> None:
        """Raises DurabilityLost if an fsync ever failed on this database."""
        if self._durability_lost is not None:
            raise DurabilityLost(f"database sync failed earlier ({self._durability_lost})")

    def _commit(self) -> None:
        """Commit the round's transaction, if one is open.

        Raises:
            StorageFault: the commit failed: the round is lost (every
                request of it lost its writes, not only the caller's).
        """
        if not self._db.in_transaction:
            return
        self._unsynced = True  # from here on, the round may have reached the WAL
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._round_lost = str(exc)
            raise StorageFault(f"database: {exc}") from exc

    def sync(self) -> None:
        """Commit the round so far and make every commit durable: one fsync of the WAL.

        Raises:
            StorageFault: the commit failed; the round's writes are gone.
            DurabilityLost: the fsync failed, now or at an earlier sync: the
                writes since the last good sync may never be on disk, and
                nothing may be answered on this database again.
        """
        self._check_durability()
        lost = self._round_lost
        if lost is not None:  # reported to the loop by finish_round
            raise StorageFault(f"database: the round's writes were rolled back ({lost})")
        self._commit()
        if not self._unsynced:
            return
        try:
            self._fsync_wal()
        except OSError as exc:
            self._durability_lost = exc.strerror or str(exc)
            raise DurabilityLost(f"database sync: {self._durability_lost}") from exc
        self._unsynced = False

    def _fsync_wal(self) -> None:
        """One fsync of the WAL (the first one opens it and fsyncs its folder).

        Raises:
            OSError: it failed.
        """
        if self._wal_fd == -1:
            self._wal_fd = os.open(f"{self.path}{_WAL_SUFFIX}", _SYNC_FLAGS)
            # The WAL's folder entry is durable once, for the store's life.
            folder = os.open(self.path.parent, _SYNC_FLAGS)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        os.fsync(self._wal_fd)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A request's writes: a savepoint in the round's transaction (opened if need be).

        They are kept, or undone on any exception; the round's commit
        (:meth:`finish_round`, :meth:`sync`) writes them. Pending
        LastSeen/LastUsed updates ride along.

        Raises:
            StorageFault: SQLite failed to begin or to write.
        """
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(_SAVEPOINT)
        except sqlite3.Error as exc:
            raise StorageFault(f"database: {exc}") from exc
        try:
            yield
            self._write_pending()
            self._db.execute(_RELEASE)
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute(_ROLLBACK_TO)
                self._db.execute(_RELEASE)
            else:  # SQLite rolled the whole round back (disk full, I/O error)
                self._round_lost = str(exc)
            if isinstance(exc, sqlite3.Error):
                raise StorageFault(f"database: {exc}") from exc
            raise
        self._seen.clear()
        self._used.clear()

    @_translated
    def flush(self) -> None:
        """Commit pending LastSeen/LastUsed updates, if any."""
        if self._seen or self._used:
            with self.transaction():
                pass

    def _write_pending(self) -> None:
        for client_id, when in self._seen.items():
            self._db.execute(_SET_LAST_SEEN, (timestamp(when), client_id))
        for client_id, when in self._used.items():
            self._db.execute(_SET_BINDING_USED, (when, client_id, when))

    # -- clients --------------------------------------------------------------

    @_translated
    def client_by_id(self, client_id: bytes) -> ClientRow | None:
        """The client with this id, if any."""
        row = self._db.execute(_SELECT_CLIENT_BY_ID, (client_id,)).fetchone()
        return _client(row)

    @_translated
    def client_and_binding(self, client_id: bytes) -> tuple[ClientRow | None, Binding | None]:
        """The client and its binding: one SELECT, the binding LEFT JOINed."""
        row = self._db.execute(_SELECT_CLIENT_AND_BINDING, (client_id,)).fetchone()
        if row is None:
            return None, None
        binding = row[_CLIENT_COLUMN_COUNT:]
        return _client(row[:_CLIENT_COLUMN_COUNT]), (
            None if binding[0] is None else self._binding(binding)
        )

    @_translated
    def client_by_name(self, name: str) -> ClientRow | None:
        """The client with this name, if any."""
        row = self._db.execute(_SELECT_CLIENT_BY_NAME, (name,)).fetchone()
        return _client(row)

    def client_by_name_and_counts(
        self, name: str, group: str
    ) -> tuple[ClientRow | None, tuple[int, int]]:
        """The client with this name, and the counts (three reads in process)."""
        return self.client_by_name(name), self.client_counts(group)

    @_translated
    def count_clients(self, group: str | None = None) -> int:
        """How many clients are registered, or registered from one address group.

        A number kept with the rows: no scan.
        """
        if group is None:
            return self._db.execute(_COUNT_CLIENTS).fetchone()[0]
        row = self._db.execute(_COUNT_GROUP_CLIENTS, (group,)).fetchone()
        return 0 if row is None else row[0]

    def client_counts(self, group: str) -> tuple[int, int]:
        """How many clients, in all and from one address group (two reads in process)."""
        return self.count_clients(), self.count_clients(group)

    @_translated
    def unused_clients(self, before: float) -> list[bytes]:
        """Clients with a key that never stored a file, their last key issued before ``before``.

        Reads what it returns (an index by age), not every row.
        """
        return [row[0] for row in self._db.execute(_UNUSED_KEYED, (before,))]

    @_translated
    def delete_stale_keyless(self, before: float) -> int:
        """Forget keyless registrations made (or made again) before ``before``; return how many.

        Reads what it deletes (an index by age), not every row.
        """
        stale = [row[0] for row in self._db.execute(_STALE_KEYLESS, (before,))]
        for client_id in stale:
            self.delete_client(client_id)
        return len(stale)

    @_translated
    def insert_client(
        self, client_id: bytes, name: str, now: float, edition: str, address: str | None = None
    ) -> None:
        """Register a name (no keys yet) in a protocol edition, from ``address``.

        Raises:
            NameTaken: another client holds the name, or the id.
        """
        try:
            self._db.execute(
                _INSERT_CLIENT, (client_id, name, timestamp(now), edition, now, address)
            )
        except sqlite3.IntegrityError as exc:
            raise NameTaken(name) from exc

    #: Register the name if it is free and there is room (a read, then the insert).
    register_if_free = register_if_free_in_steps

    @_translated
    def set_edition(self, client_id: bytes, edition: str) -> None:
        """The edition the client's requests turned out to be."""
        self._db.execute(_SET_EDITION, (edition, client_id))

    @_translated
    def set_crc(self, client_id: bytes, flavour: str) -> None:
        """The CRC flavour the client confirmed."""
        self._db.execute(_SET_CRC, (flavour, client_id))

    @_translated
    def delete_client(self, client_id: bytes) -> None:
        """Forget a keyless registration and its binding."""
        self._db.execute(_DELETE_CLIENT, (client_id,))
        self._db.execute(_DELETE_BINDING, (client_id,))

    @_translated
    def forget_client(self, client_id: bytes) -> None:
        """Remove every row of a client: its files, its binding, itself."""
        self._db.execute(_DELETE_CLIENT_FILES, (client_id,))
        self.delete_client(client_id)

    @_translated
    def set_keys(self, client_id: bytes, public_key: bytes, aes_key: bytes, now: float) -> None:
        """Store the public key and the first AES key (826)."""
        self._db.execute(_SET_KEYS, (public_key, aes_key, timestamp(now), client_id))

    @_translated
    def set_aes_key(self, client_id: bytes, aes_key: bytes, now: float) -> None:
        """Store a fresh AES key (827)."""
        self._db.execute(_SET_AES_KEY, (aes_key, timestamp(now), client_id))

    def note_seen(self, client_id: bytes, now: float) -> None:
        """Record a request's time; written with the next commit or flush."""
        self._seen[client_id] = now

    # -- files ----------------------------------------------------------------

    @_translated
    def file_row(self, client_id: bytes, file_name: bytes) -> FileRow | None:
        """The row of one of the client's files, if any."""
        row = self._db.execute(
            _SELECT_FILE, (client_id, file_name_value(file_name))
        ).fetchone()
        return None if row is None else _file(row)

    @_translated
    def file_rows(self) -> list[FileRow]:
        """Every row of ``files``."""
        return [_file(row) for row in self._db.execute(_SELECT_FILES)]

    @_translated
    def stored_bytes(self, client_id: bytes) -> int:
        """The size of every file the client has stored, verified or not."""
        return self._db.execute(_SUM_STORED_BYTES, (client_id,)).fetchone()[0]

    def file_row_and_path_names(
        self, client_id: bytes, file_name: bytes
    ) -> tuple[FileRow | None, list[str]]:
        """The file's row, if any, and the path names the client's rows point at."""
        rows = self._db.execute(_SELECT_CLIENT_FILES, (client_id,))
        return file_row_and_path_names(map(_file, rows), file_name)

    @_translated
    def upsert_file(
        self, client_id: bytes, file_name: bytes, path_name: str, blob_key: str | None = None
    ) -> None:
        """Insert or reset a file's row with Verified false, pointing at ``blob_key``:
        the client is used from now on."""
        self._db.execute(
            _UPSERT_FILE, (client_id, file_name_value(file_name), path_name, blob_key)
        )
        self._db.execute(_SET_USED, (client_id,))

    @_translated
    def set_pending(self, client_id: bytes, file_name: bytes, blob_key: str | None) -> None:
        """Point the file's pending version at ``blob_key`` (None: none)."""
        self._db.execute(_SET_PENDING, (blob_key, client_id, file_name_value(file_name)))

    @_translated
    def promote_pending(self, client_id: bytes, file_name: bytes, blob_key: str) -> None:
        """The 900's swap: the file points at ``blob_key``, with no pending version."""
        self._db.execute(_PROMOTE_PENDING, (blob_key, client_id, file_name_value(file_name)))

    @_translated
    def set_verified(self, client_id: bytes, file_name: bytes, verified: bool) -> None:
        """Set a file's Verified flag (900: true, 902: false)."""
        self._db.execute(
            _SET_VERIFIED, (int(verified), client_id, file_name_value(file_name))
        )

    @_translated
    def set_content(self, client_id: bytes, file_name: bytes, size: int, cksum: int) -> None:
        """Record the size and cksum of the content a file's row now stands for."""
        self._db.execute(_SET_CONTENT, (size, cksum, client_id, file_name_value(file_name)))

    @_translated
    def referenced_keys(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` a row points at: two index lookups per key."""
        if not keys:
            return set()
        listed = list(keys)
        query = _REFERENCED_KEYS.format(marks=", ".join("?" * len(listed)))
        return {row[0] for row in self._db.execute(query, listed + listed)}

    @_translated
    def delete_file(self, client_id: bytes, file_name: bytes) -> None:
        """Remove a file's row."""
        self._db.execute(_DELETE_FILE, (client_id, file_name_value(file_name)))

    # -- key bindings ---------------------------------------------------------

    @_translated
    def binding(self, client_id: bytes) -> Binding | None:
        """Who may use the client's key, and since when."""
        row = self._db.execute(_SELECT_BINDING, (client_id,)).fetchone()
        return None if row is None else self._binding(row)

    def _binding(self, row: tuple) -> Binding:
        """A key_bindings row, a noted use counted."""
        used = max(row[3], self._used.get(row[0], row[3]))
        return Binding(id=row[0], address=row[1], issued_at=row[2], last_used=used)

    @_translated
    def set_binding(self, client_id: bytes, address: str, now: float) -> None:
        """Bind the client's key (or registration) to an address from now."""
        self._db.execute(_UPSERT_BINDING, (client_id, address, now, now))
        self._db.execute(_SET_UNUSED_SINCE, (now, client_id))
        self._used.pop(client_id, None)

    def note_key_used(self, client_id: bytes, now: float) -> None:
        """Record a use of the key; written with the next commit or flush."""
        self._used[client_id] = now


def _client(row: tuple | None) -> ClientRow | None:
    if row is None:
        return None
    return ClientRow(
        id=row[0], name=row[1], public_key=row[2], last_seen=row[3], aes_key=row[4],
        edition=row[5], crc=row[6], registered_from=row[7],
    )


def _file(row: tuple) -> FileRow:
    return FileRow(
        id=row[0], file_name=_name_bytes(row[1]), path_name=row[2], verified=bool(row[3]),
        blob_key=row[4], pending_key=row[5],
    )



class SqliteBackend:
    """``sqlite:///PATH[?busy_timeout=SECONDS]``: the metadata store in one SQLite file."""

    scheme = "sqlite"
    #: How ``--help`` shows its URL.
    form = (
        f"sqlite:///PATH[?{BUSY_TIMEOUT_OPTION}=SECONDS] (the seconds a write waits for a lock"
        f" another process holds, default {DEFAULT_BUSY_TIMEOUT:g}; every connection waits"
        " meanwhile)"
    )
    #: The default place, as ``--help`` shows it.
    default_form = f"sqlite:///DATA-DIR/{DB_NAME}"
    #: One server alone opens the file (its data folder's lock).
    shared = False

    def default(self, data_dir: Path) -> StoreUrl:
        """``defensive.db`` in the data folder."""
        return StoreUrl(self.scheme, Path(data_dir) / DB_NAME)

    def check(self, url: StoreUrl) -> None:
        """A local file; the one option ``busy_timeout``, 0 to :data:`MAX_BUSY_TIMEOUT` seconds.

        Raises:
            BadStoreUrl: a host, another option, or a bad timeout.
        """
        self._busy_timeout(url)

    def _busy_timeout(self, url: StoreUrl) -> float:
        if url.host not in ("", "localhost"):
            raise BadStoreUrl(f"{url}: an SQLite database is a local file: sqlite:///PATH")
        unknown = sorted(set(url.options) - {BUSY_TIMEOUT_OPTION})
        if unknown:
            raise BadStoreUrl(
                f"{url}: unknown option {unknown[0]!r} (sqlite: takes {BUSY_TIMEOUT_OPTION})"
            )
        text = url.options.get(BUSY_TIMEOUT_OPTION)
        if text is None:
            return DEFAULT_BUSY_TIMEOUT
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= MAX_BUSY_TIMEOUT:  # NaN too
            raise BadStoreUrl(
                f"{url}: {BUSY_TIMEOUT_OPTION} must be seconds from 0 to {MAX_BUSY_TIMEOUT}"
            )
        return seconds

    def open(
        self, url: StoreUrl, group_of: Callable[[str], str], node: str | None = None
    ) -> SqliteMetadata:
        """The server's store (see :meth:`SqliteMetadata.open`); one server opens it, so
        ``node`` is not recorded (every row is its own).

        Raises:
            StoreUnusable: not SQLite, corrupt, read-only, or missing a column.
        """
        return SqliteMetadata.open(url.path, self._busy_timeout(url), group_of)

    def open_inventory(self, url: StoreUrl) -> Inventory:
        """The read-only view ``admin`` lists from (it writes nothing).

        Raises:
            StoreUnusable: there is no database, or it cannot be read.
        """
        from .inventory import Inventory  # it names DB_NAME from here

        return Inventory.open(url.path)

    def migrate(self, url: StoreUrl) -> str:
        """Open the database and close it: opening adds the columns it lacks.

        Raises:
            StoreUnusable: see :meth:`open`.
        """
        self.open(url, address_group).close()
        return "columns up to date"

    def open_coordination(self, url: StoreUrl, node: str, lease: float) -> None:
        """None: one server alone opens an SQLite file (its data folder's lock)."""
        return None


BACKEND = SqliteBackend()
