"""The metadata store (:class:`~server.storage.base.MetadataStore`) in PostgreSQL, over psycopg 3.

Group commit as in SQLite (server/storage/sqlite.py): one transaction per
loop round, a savepoint per request (:meth:`PostgresMetadata.transaction`),
so that a request that fails undoes its own writes only; the round's COMMIT
goes out through :meth:`PostgresMetadata.begin_round_commit`, whose socket
the loop can wait on (server/storage/postgres/roundcommit.py). Every COMMIT
is durable (``synchronous_commit`` as the database sets it: on by default).

Round trips, not statements, are what a request costs (~0.1 ms each on
loopback, and the loop waits for each): a request's writes are queued, with
its ``SAVEPOINT`` and ``RELEASE`` if it read after writing (none for a request
whose writes all wait: a failure among them loses the round anyway), and go
out as one multi-statement message
(parameters bound as literals: server/storage/postgres/literals.py; sent and read
without a cursor: server/storage/postgres/message.py) with the next read
that must see them or with the round's ``COMMIT``. A queued write of a
request that has ended cannot be undone alone once it fails (its answer
waits for the round): such a failure loses the round. A client's row and
its binding are read together (with its failure counts, when the
coordination's tables are in this database:
:meth:`PostgresMetadata.client_read_with_failures`), an 825's name with the
client counts and, when the name is free and one more client fits, its
insert (:meth:`PostgresMetadata.register_if_free`: one statement, sent again
when another node's round changed the counts meanwhile); these
reads are prepared once per connection (:class:`_Prepared`) and called with
``EXECUTE``, as are the writes of a session, so that a batch's text is not
planned again at every call. A write whose outcome the request needs at
once (that insert; a name registered by :meth:`~PostgresMetadata.insert_client`:
:class:`~server.errors.NameTaken`) goes out at once, with the writes queued
before it; if the connection is lost then and nothing of the round had gone
out before, that request alone fails (its answer a refusal): the round is
not lost. :attr:`PostgresMetadata.round_trips` and
:attr:`~PostgresMetadata.statements` count them (bench/sessions.py).

A lost connection (or one whose answer does not come within
:data:`ANSWER_PATIENCE`: a stalled backend, server/storage/postgres/message.py)
loses the round under way (the loop closes its connections unanswered), and
is made again in a worker thread, never the loop's
(server/storage/postgres/reconnect.py): the attempt begins as soon as the
loss is seen, then at most once per :data:`RECONNECT_INTERVAL` while
the database stays away; until a connection is made, every call fails at
once with :class:`~server.errors.StorageFault`.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors

from ...errors import NameTaken, StorageFault, StoreUnusable
from ...peer import address_group
from ..base import Binding, ClientRow, FileRow, file_row_and_path_names, timestamp, wait_for
from ..coordination import ClientReadWithFailures, FailureCounts
from . import fence, schema
from ..urltext import without_password
from .connect import connect, fault, reason
from .message import Messenger, PatientConnection
from .reconnect import Reconnection
from .roundcommit import PgRoundCommit

log = logging.getLogger(__name__)

_BEGIN = "BEGIN"
_SAVEPOINT = "SAVEPOINT request"
_RELEASE = "RELEASE request"
_ROLLBACK_TO = "ROLLBACK TO request"
_ROLLBACK = "ROLLBACK"
_COMMIT = "COMMIT"
#: The one write whose failure is its own request's answer (NameTaken), not the round's
#: loss: a client's insert, refused for its name or (as the other stores do) its id.
_INSERT_CONSTRAINTS = frozenset({"clients_name_key", "clients_pkey"})

_CLIENT_FIELDS = (
    "ID", "Name", "PublicKey", "LastSeen", "AESKey", "Edition", "Crc", "RegisteredFrom",
)
_CLIENT_COLUMNS = ", ".join(_CLIENT_FIELDS)
#: A binding's columns, after the client's in the read of both.
_BINDING_FIELDS = 4
#: A client's row with its binding: the two reads a request makes one after the other
#: (its admission rules, server/session.py), in one round trip.
_SELECT_CLIENT_AND_BINDING = (
    "SELECT c.ID, c.Name, c.PublicKey, c.LastSeen, c.AESKey, c.Edition, c.Crc,"
    " c.RegisteredFrom, b.ID, b.Address, b.IssuedAt, b.LastUsed"
    " FROM clients c LEFT JOIN key_bindings b ON b.ID = c.ID WHERE c.ID = %s"
)
#: Where the failure counts go in that read (the coordination's SQL: two columns).
_FAILURES_HERE = "{failures}"
_SELECT_CLIENT_BINDING_AND_FAILURES = _SELECT_CLIENT_AND_BINDING.replace(
    " FROM clients c", f", {_FAILURES_HERE} FROM clients c", 1
)
_SELECT_CLIENT = f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE ID = %s"
_SELECT_CLIENT_BY_NAME = f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE Name = %s"
#: What an 825 reads: the name's row (all NULL for none) with the total and one group's
#: count (a group never counted: 0), one row in one statement.
_SELECT_NAME_AND_COUNTS = (
    f"SELECT {', '.join('c.' + field for field in _CLIENT_FIELDS)},"
    " (SELECT Clients FROM client_counts WHERE AddressGroup = %s),"
    " COALESCE((SELECT Clients FROM client_counts WHERE AddressGroup = %s), 0)"
    " FROM (SELECT 1) AS one LEFT JOIN clients c ON c.Name = %s"
)
#: An 825's usual case in one statement: the client is inserted if no one holds the name and
#: the total and the group's count are below the cap and the group's share; the name's row
#: (all NULL for none), the counts before, whether it was inserted, and whether the counts
#: it read were stale. A name or id taken meanwhile (another node's) inserts nothing, with
#: no error. Before inserting, it locks the total's row (the lock the count's trigger takes
#: anyway, until the round ends: every insert and delete of a client updates that row), so
#: that no other node's registration or deletion is in flight; if that row changed since the
#: statement's snapshot (another node's round committed meanwhile, often the one waited
#: for), the counts read are stale: nothing is inserted, and the statement is sent again,
#: its lock held, to read them exactly (:meth:`PostgresMetadata.register_if_free`).
_REGISTER_IF_FREE = (
    f"WITH named AS (SELECT {_CLIENT_COLUMNS} FROM clients WHERE Name = %s),"
    " counted AS (SELECT total.Clients AS total, total.xmin AS version,"
    " COALESCE((SELECT Clients FROM client_counts WHERE AddressGroup = %s), 0) AS in_group"
    " FROM (SELECT 1) AS one LEFT JOIN client_counts total ON total.AddressGroup = %s),"
    " fits AS (SELECT 1 FROM counted WHERE NOT EXISTS (SELECT 1 FROM named)"
    " AND COALESCE(total, 0) < %s AND in_group < %s),"
    " claimed AS (SELECT xmin AS version FROM client_counts WHERE AddressGroup = %s"
    " AND EXISTS (SELECT 1 FROM fits) FOR NO KEY UPDATE),"
    " inserted AS (INSERT INTO clients"
    " (ID, Name, LastSeen, Edition, UnusedSince, RegisteredFrom, AddressGroup)"
    " SELECT %s, %s, %s, %s, %s, %s, %s FROM counted JOIN claimed"
    " ON claimed.version = counted.version ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT named.*, counted.total, counted.in_group, EXISTS (SELECT 1 FROM inserted),"
    " EXISTS (SELECT 1 FROM claimed WHERE NOT claimed.version = counted.version)"
    " FROM counted LEFT JOIN named ON true"
)
_REGISTER_IF_FREE_TYPES = (
    "text", "text", "text", "bigint", "bigint", "text",
    "bytea", "text", "text", "text", "float8", "text", "text",
)
_COUNT_CLIENTS = "SELECT Clients FROM client_counts WHERE AddressGroup = %s"
#: The total and one group's count, in one statement (a group never counted: 0).
_COUNT_CLIENTS_AND_GROUP = (
    "SELECT (SELECT Clients FROM client_counts WHERE AddressGroup = %s),"
    " COALESCE((SELECT Clients FROM client_counts WHERE AddressGroup = %s), 0)"
)
_UNUSED_KEYED = (
    "SELECT ID FROM clients"
    " WHERE PublicKey IS NOT NULL AND UnusedSince IS NOT NULL AND UnusedSince < %s"
)
#: Sent before a statement that deletes clients: the total's row locked first, as an 825's
#: insert locks it (:data:`_REGISTER_IF_FREE`), before any client's row, so that every
#: round takes the locks of the count and of a client in the same order (the count's
#: trigger takes the total's after the client's: a round holding the total that deletes a
#: client another round had locked would deadlock with it).
_LOCK_TOTAL = (
    f"SELECT 1 FROM client_counts WHERE AddressGroup = '{schema.TOTAL_GROUP}' FOR NO KEY UPDATE"
)
#: Through the index clients_keyless; the bindings go with the rows, in one statement.
_DELETE_STALE_KEYLESS = (
    "WITH gone AS (DELETE FROM clients WHERE PublicKey IS NULL AND UnusedSince < %s"
    " RETURNING ID), unbound AS (DELETE FROM key_bindings WHERE ID IN (SELECT ID FROM gone))"
    " SELECT count(*) FROM gone"
)
_INSERT_CLIENT = (
    "INSERT INTO clients (ID, Name, LastSeen, Edition, UnusedSince, RegisteredFrom, AddressGroup)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_SET_EDITION = "UPDATE clients SET Edition = %s WHERE ID = %s"
_SET_CRC = "UPDATE clients SET Crc = %s WHERE ID = %s"
_DELETE_CLIENT = "DELETE FROM clients WHERE ID = %s"
_SET_KEYS = "UPDATE clients SET PublicKey = %s, AESKey = %s, LastSeen = %s WHERE ID = %s"
_SET_AES_KEY = "UPDATE clients SET AESKey = %s, LastSeen = %s WHERE ID = %s"
_SET_LAST_SEEN = "UPDATE clients SET LastSeen = %s WHERE ID = %s"
_FILE_COLUMNS = "ID, FileName, PathName, Verified, BlobKey, PendingKey, Node"
_SELECT_FILE = f"SELECT {_FILE_COLUMNS} FROM files WHERE ID = %s AND FileName = %s"
_SELECT_FILES = f"SELECT {_FILE_COLUMNS} FROM files ORDER BY ID, FileName"
#: Two index lookups per key (files_blob_key, files_pending_key), whatever the table holds.
_REFERENCED_KEYS = (
    "SELECT BlobKey FROM files WHERE BlobKey = ANY(%s)"
    " UNION SELECT PendingKey FROM files WHERE PendingKey = ANY(%s)"
)
_SUM_STORED_BYTES = "SELECT COALESCE(SUM(Size), 0) FROM files WHERE ID = %s"
_SELECT_CLIENT_FILES = f"SELECT {_FILE_COLUMNS} FROM files WHERE ID = %s"
#: A file's row inserted or reset, and its client used from now on: one statement.
_UPSERT_FILE = (
    "WITH used AS (UPDATE clients SET UnusedSince = NULL"
    " WHERE ID = %s AND UnusedSince IS NOT NULL)"
    " INSERT INTO files (ID, FileName, PathName, Verified, BlobKey, Node)"
    " VALUES (%s, %s, %s, false, %s, %s)"
    " ON CONFLICT (ID, FileName) DO UPDATE SET PathName = excluded.PathName, Verified = false,"
    " BlobKey = excluded.BlobKey, PendingKey = NULL, Node = excluded.Node"
)
#: A pending pointer set names the node that sets it; one cleared leaves the node as it was.
_SET_PENDING = (
    "UPDATE files SET PendingKey = %s, Node = COALESCE(%s, Node) WHERE ID = %s AND FileName = %s"
)
_PROMOTE_PENDING = (
    "UPDATE files SET BlobKey = %s, PendingKey = NULL, Node = %s WHERE ID = %s AND FileName = %s"
)
_SET_VERIFIED = "UPDATE files SET Verified = %s WHERE ID = %s AND FileName = %s"
_DELETE_FILE = "DELETE FROM files WHERE ID = %s AND FileName = %s"
_SET_CONTENT = "UPDATE files SET Size = %s, Cksum = %s WHERE ID = %s AND FileName = %s"
_DELETE_CLIENT_FILES = "DELETE FROM files WHERE ID = %s"
_SELECT_BINDING = "SELECT ID, Address, IssuedAt, LastUsed FROM key_bindings WHERE ID = %s"
#: A binding made (or made again), and its client's unused time started again: one statement.
_BIND = (
    "WITH bound AS (INSERT INTO key_bindings (ID, Address, IssuedAt, LastUsed)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT (ID) DO UPDATE SET Address = excluded.Address,"
    " IssuedAt = excluded.IssuedAt, LastUsed = excluded.LastUsed)"
    " UPDATE clients SET UnusedSince = %s WHERE ID = %s AND UnusedSince IS NOT NULL"
)
_SET_BINDING_USED = "UPDATE key_bindings SET LastUsed = %s WHERE ID = %s AND LastUsed < %s"
#: A request's two stamps of one client (the key's use, the request's time): one statement.
_SET_STAMPS = (
    "WITH used AS (UPDATE key_bindings SET LastUsed = %s WHERE ID = %s AND LastUsed < %s)"
    " UPDATE clients SET LastSeen = %s WHERE ID = %s"
)
_DELETE_BINDING = "DELETE FROM key_bindings WHERE ID = %s"
# Start-up: the address groups under this run's grouping (--ipv6-prefix), and the counts.
_REGISTERED_FROM = (
    "SELECT DISTINCT RegisteredFrom, AddressGroup FROM clients WHERE RegisteredFrom IS NOT NULL"
)
_SET_GROUP = "UPDATE clients SET AddressGroup = %s WHERE RegisteredFrom = %s"
_RECOUNT = (
    "DELETE FROM client_counts",
    f"INSERT INTO client_counts SELECT '{schema.TOTAL_GROUP}', count(*) FROM clients",
    "INSERT INTO client_counts SELECT AddressGroup, count(*) FROM clients"
    " WHERE AddressGroup IS NOT NULL GROUP BY AddressGroup",
)

@dataclass(frozen=True)
class _Prepared:
    """A statement of a request, prepared once per connection: in a batch (a simple query,
    its parameters literals) its text would be parsed and planned at every call."""

    name: str
    statement: str
    #: Its parameters' types, in order (none given: the database's, from where they go).
    types: tuple[str, ...] = ()

    @property
    def prepare(self) -> str:
        """SQL: the statement prepared under its name, its placeholders numbered."""
        pieces = self.statement.split(_PLACEHOLDER)
        numbered = pieces[0] + "".join(
            f"${number}{piece}" for number, piece in enumerate(pieces[1:], start=1)
        )
        types = f" ({', '.join(self.types)})" if self.types else ""
        return f"PREPARE {self.name}{types} AS {numbered}"

    @functools.cached_property
    def execute(self) -> str:
        """The statement's call, its parameters placeholders (bound as literals)."""
        placeholders = self.statement.count(_PLACEHOLDER)
        return f"EXECUTE {self.name} ({', '.join([_PLACEHOLDER] * placeholders)})"


_PLACEHOLDER = "%s"
#: The statements of a request, prepared: its reads (a client, an 825's name, a file's
#: row) and the writes of a session (825, 826, 828, 900) and of an 827.
_PREPARED = (
    _Prepared("cd_client", _SELECT_CLIENT_AND_BINDING, ("bytea",)),
    _Prepared("cd_name", _SELECT_NAME_AND_COUNTS, ("text", "text", "text")),
    _Prepared("cd_register", _REGISTER_IF_FREE, _REGISTER_IF_FREE_TYPES),
    _Prepared("cd_file", _SELECT_FILE, ("bytea", "bytea")),
    _Prepared("cd_client_files", _SELECT_CLIENT_FILES, ("bytea",)),
    _Prepared("cd_insert_client", _INSERT_CLIENT),
    _Prepared("cd_set_edition", _SET_EDITION),
    _Prepared("cd_set_crc", _SET_CRC),
    _Prepared("cd_set_keys", _SET_KEYS),
    _Prepared("cd_set_aes_key", _SET_AES_KEY),
    _Prepared("cd_set_last_seen", _SET_LAST_SEEN),
    _Prepared("cd_upsert_file", _UPSERT_FILE),
    _Prepared("cd_set_pending", _SET_PENDING),
    _Prepared("cd_promote_pending", _PROMOTE_PENDING),
    _Prepared("cd_set_verified", _SET_VERIFIED),
    _Prepared("cd_set_content", _SET_CONTENT),
    _Prepared("cd_bind", _BIND),
    _Prepared("cd_set_binding_used", _SET_BINDING_USED),
    _Prepared("cd_set_stamps", _SET_STAMPS),
)
#: The upload fence, prepared once the coordination's tables it reads are there
#: (:meth:`PostgresMetadata.prepare_fence`).
_FENCE = _Prepared("cd_fence", fence.STATEMENT, fence.PARAMETER_TYPES)
#: The client read that brings the failure counts too (its text made at run time).
_CLIENT_WITH_FAILURES = "cd_client_failures"
_CLIENT_WITH_FAILURES_TYPES = ("float8", "bytea")

#: Seconds between attempts to connect again after the connection was lost.
RECONNECT_INTERVAL = 1.0
#: Seconds the answer of a message waited for (a request's reads, and the writes sent with
#: them) may take: past them, the database is taken for stalled and the connection for
#: lost (server/storage/postgres/message.py), and the loop serves again. A request's
#: statements read and write a few rows by key; a lock they wait for is held no longer
#: than another node's round. A migration, at the start, waits without a deadline.
ANSWER_PATIENCE = 5.0

_Statement = tuple[str, Sequence[Any]]
#: Placeholders in the write queue: a request's savepoint, sent with its first write.
_MARK = (_SAVEPOINT, ())


@dataclass
class _Level:
    """One open :meth:`PostgresMetadata.transaction` (they nest)."""

    #: Where its SAVEPOINT sits in the write queue.
    mark: int
    #: The queue flushes before it opened: its SAVEPOINT went out once this grew.
    flushes: int


class PostgresMetadata:
    """The server's connection to PostgreSQL (one thread uses it).

    Raises (``open``):
        StoreUnusable: the database refuses, or its schema is newer than ours.
    Raises (every other method):
        StorageFault: the database failed, or cannot be reached.
    """

    def __init__(
        self, conninfo: str, group_of: Callable[[str], str], node: str | None = None
    ) -> None:
        self._conninfo = conninfo
        self._group_of = group_of
        #: A client's row, binding and failure counts, the statement of
        #: :meth:`client_read_with_failures`.
        self._with_failures = ""
        #: The node this server is (``--node-name``), written into the rows it points at a
        #: blob (:attr:`FileRow.node`); None: ``admin``'s, which points none.
        self.node = node
        self._db: PatientConnection | None = None
        self._seen: dict[bytes, float] = {}
        self._used: dict[bytes, float] = {}
        #: Writes not yet sent, with the savepoints of the open levels.
        self._queue: list[_Statement] = []
        self._levels: list[_Level] = []
        self._flushes = 0
        #: The round's BEGIN has gone out.
        self._in_round = False
        #: The last request's RELEASE, sent with the next batch (a COMMIT needs none).
        self._release_owed = False
        #: The queue holds ended requests' writes: they go with the next read or the COMMIT,
        #: and a failure among them loses the round (their answers wait for it).
        self._deferred = False
        #: Why the round's writes are gone (reported once, by finish_round).
        self._round_lost: str | None = None
        self._commit: PgRoundCommit | None = None
        self._closed = False
        #: A lost connection is made again off the loop thread.
        self._reconnection: Reconnection[PatientConnection] = Reconnection(
            "database", RECONNECT_INTERVAL, _discard
        )
        #: Sends a batch as one message, its parameters bound by its connection's quoting rules.
        self._messenger: Messenger | None = None
        #: The statements prepared on each new connection (:class:`_Prepared`), by text.
        self._prepared = {prepared.statement: prepared for prepared in _PREPARED}
        #: The connection they are prepared on.
        self._prepared_on: psycopg.Connection | None = None
        #: Round trips and statements sent (bench/sessions.py reads them).
        self.round_trips = 0
        self.statements = 0

    @classmethod
    def open(
        cls, conninfo: str, group_of: Callable[[str], str] = address_group,
        node: str | None = None,
    ) -> PostgresMetadata:
        """Connect, bring the schema up to date, and count the clients by address group.

        Raises:
            StoreUnusable: the database refuses, or its schema is newer than this server's.
        """
        store = cls(conninfo, group_of, node)
        store._db = connect(conninfo)
        try:
            migrate(store._db, conninfo)
            store._regroup()
            store._prepare_statements(store._db)
            store._db.patience = ANSWER_PATIENCE
        except psycopg.Error as exc:
            store._db.close()
            raise StoreUnusable(
                f"cannot use {without_password(conninfo)}: {reason(exc)}"
            ) from exc
        except StoreUnusable:
            store._db.close()
            raise
        return store

    def _regroup(self) -> None:
        """Group the registering addresses as this run does; make the counts from the rows."""
        db = self._live()
        with db.transaction():
            found = db.execute(_REGISTERED_FROM).fetchall()
            moved = [
                (self._group_of(address), address) for address, group in found
                if self._group_of(address) != group
            ]
            if moved:
                log.info("address groups changed for %d address(es): recounting", len(moved))
                db.cursor().executemany(_SET_GROUP, moved)
                for statement in _RECOUNT:
                    db.execute(statement)

    # -- the connection ------------------------------------------------------------

    def _live(self) -> PatientConnection:
        """The connection; if it was lost (the round it carried is lost with it), the one
        made again in the reconnection's thread, once there is one.

        Raises:
            StorageFault: the store is closed, a commit is under way, or no
                connection is made yet (an attempt is under way, or the database
                could not be reached).
        """
        if self._closed:
            raise StorageFault("database: closed")
        if self._commit is not None:
            raise StorageFault("database: the round's commit is under way")
        db = self._db
        if db is not None and not db.closed:
            return db
        if self._in_round:
            self._lose_round("the connection was lost")
        db = self._reconnection.take(self._connector())
        self._db = db
        self._statements_prepared(db)
        return db

    def _connector(self) -> Callable[[], PatientConnection]:
        """What makes the connection again, in the reconnection's thread: connect, and
        prepare the requests' statements (neither in the loop's thread).

        The returned function raises StorageFault: the database refused.
        """
        conninfo, prepare = self._conninfo, self._prepare_text()

        def make() -> PatientConnection:
            db = connect(conninfo)
            db.patience = ANSWER_PATIENCE
            try:
                db.execute(prepare)
            except psycopg.Error as exc:
                db.close()
                raise fault(exc) from exc
            return db

        return make

    def _prepare_text(self) -> str:
        """SQL: the requests' statements prepared, outside any transaction (one round trip)."""
        return ";".join(prepared.prepare for prepared in self._prepared.values())

    def _prepare_statements(self, db: psycopg.Connection) -> None:
        """Prepare the requests' statements on a new connection (:meth:`_prepare_text`).

        Raises:
            psycopg.Error: the database refused.
        """
        db.execute(self._prepare_text())
        self._statements_prepared(db)

    def _statements_prepared(self, db: psycopg.Connection) -> None:
        """The requests' statements are prepared on ``db``: its round trip counted."""
        self._prepared_on = db
        self.round_trips += 1
        self.statements += len(self._prepared)

    def _reconnect_now(self) -> None:
        """The connection is lost: begin making it again (in the reconnection's thread),
        so that it is there, or being made, when the next request comes."""
        self._reconnection.start(self._connector())

    def _lose_round(self, why: str) -> None:
        """The round's writes are gone: finish_round raises; the next write begins anew."""
        if self._in_round:  # else no write of the round had gone out
            self._round_lost = self._round_lost or why
        self._in_round = False
        self._release_owed = False
        self._deferred = False
        self._queue.clear()
        self._levels.clear()
        db = self._db
        if db is not None and not db.closed and db.info.transaction_status != _IDLE:
            try:
                db.execute(_ROLLBACK)
            except psycopg.Error:
                db.close()

    def _send(self, read: _Statement | None) -> list[tuple]:
        """Send the queued writes (with BEGIN if the round has none yet) and ``read``, in
        one round trip; the read's rows.

        Raises:
            StorageFault: the database refused a statement (the caller's savepoint
                undoes what went out), or the connection failed (the round is lost).
        """
        db = self._live()
        batch = self._queue
        self._queue = []
        deferred, self._deferred = self._deferred, False
        begins = False  # this message begins the round: none of the round's went out before
        if batch:  # the savepoints queued in it go out: their levels are sent
            self._flushes += 1
            if not self._in_round and (self._levels or deferred):
                batch.insert(0, (_BEGIN, ()))
                self._in_round = begins = True
        if self._release_owed:
            batch.insert(0, (_RELEASE, ()))
            self._release_owed = False
        if read is not None:
            batch.append(read)
        self.round_trips += 1
        self.statements += len(batch)
        try:  # one message: one round trip, and less loop CPU than a pipeline
            rows = self._messenger_of(db).rows(self._calls(db, batch))
            return rows if read is not None else []
        except psycopg.OperationalError as exc:
            if db.closed or db.broken:
                log.warning("database: the connection is lost (%s)", reason(exc))
                if begins and not deferred:  # it carried the calling request's writes only:
                    self._in_round = False  # that request fails, and no other's is lost
                self._lose_round(reason(exc))
                self._reconnect_now()
            raise fault(exc) from exc
        except psycopg.Error as exc:
            if deferred and not _is_the_callers(exc):  # an ended request's write failed
                self._lose_round(reason(exc))
            elif not self._levels and self._in_round:  # no savepoint to go back to
                self._lose_round(reason(exc))
            raise (fence.lease_lost() if fence.refused(exc) else fault(exc)) from exc

    def _calls(self, db: psycopg.Connection, batch: list[_Statement]) -> list[_Statement]:
        """The batch with each prepared statement as its EXECUTE (on the connection they
        are prepared on; as text on another)."""
        if self._prepared_on is not db:
            return batch
        prepared = self._prepared
        return [
            (found.execute, params) if (found := prepared.get(statement)) else (statement, params)
            for statement, params in batch
        ]

    def _messenger_of(self, db: psycopg.Connection) -> Messenger:
        """What sends a batch on ``db`` as one message (made again for a new connection:
        its quoting rules)."""
        if self._messenger is None or self._messenger.db is not db:
            self._messenger = Messenger(db)
        return self._messenger

    def _one_message(self, db: psycopg.Connection, batch: list[_Statement]) -> str:
        """Statements with their parameters bound as literals, as one text."""
        return self._messenger_of(db).binder.text(batch)

    def _write(self, statement: str, *params: Any) -> None:
        """Queue a write; outside any transaction, send it at once."""
        self._live()
        self._queue.append((statement, params))
        if not self._levels:
            self._send(None)

    def _read(self, statement: str, *params: Any) -> list[tuple]:
        """Rows, after the queued writes went out (the read must see them)."""
        self._live()
        if self._queue and any(entry is not _MARK for entry in self._queue):
            return self._send((statement, params))
        return self._send_read_only((statement, params))

    def _send_read_only(self, read: _Statement) -> list[tuple]:
        queue, self._queue = self._queue, []  # savepoints only: they wait for a write
        try:
            return self._send(read)
        finally:
            self._queue = queue + self._queue

    # -- transactions and rounds ---------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A request's writes: a savepoint in the round's transaction (begun with its first write).

        They are kept, or undone on any exception; the round's commit writes
        them. Pending LastSeen/LastUsed updates ride along.

        Raises:
            StorageFault: the database refused a write, or cannot be reached.
        """
        self._live()
        level = _Level(mark=len(self._queue), flushes=self._flushes)
        self._queue.append(_MARK)
        self._levels.append(level)
        try:
            yield
            if len(self._levels) == 1:
                self._queue_stamps()
        except BaseException:
            self._undo(level)
            raise
        try:
            self._keep(level)
        except StorageFault:
            self._undo(level, sent_with_error=True)
            raise
        if not self._levels:
            self._seen.clear()
            self._used.clear()

    def _keep(self, level: _Level) -> None:
        """A level ends well: its savepoint goes (with its writes, if it is the outermost).

        Raises:
            StorageFault: the round was lost under it, or its writes were refused.
        """
        if not self._levels or self._levels[-1] is not level:
            lost = self._round_lost
            raise StorageFault(f"database: the round's writes were rolled back ({lost})")
        if level.flushes == self._flushes:  # its SAVEPOINT has not gone out yet
            if len(self._queue) == level.mark + 1:  # and it wrote nothing
                del self._queue[level.mark]
                self._levels.pop()
                return
            if len(self._levels) > 1:  # its writes join the enclosing level's
                del self._queue[level.mark]
                self._levels.pop()
                return
            # The outermost, none of it sent: its writes wait for the next read or the
            # COMMIT, where a failure among them loses the round whatever savepoint they
            # had (their answers wait for it): none goes out, nor its RELEASE.
            del self._queue[level.mark]
            self._deferred = True
            self._levels.pop()
            return
        if len(self._levels) == 1 and not self._queue:  # all of it went out already
            self._release_owed = True
        else:  # its writes wait for the next read or the COMMIT
            self._queue.append((_RELEASE, ()))
            self._deferred = self._deferred or len(self._levels) == 1
        self._levels.pop()

    def _undo(self, level: _Level, sent_with_error: bool = False) -> None:
        """A level fails: drop what it queued; roll back what it sent."""
        if not self._levels or self._levels[-1] is not level:
            return  # the round was lost under it
        self._levels.pop()
        if level.flushes == self._flushes and not sent_with_error:
            del self._queue[level.mark:]  # nothing of it went out
            return
        self._queue.clear()  # all queued since its SAVEPOINT went out is its own
        db = self._db
        if db is None or db.closed or not self._in_round:
            return
        try:
            db.execute(f"{_ROLLBACK_TO}; {_RELEASE}")
        except psycopg.Error as exc:
            self._lose_round(reason(exc))

    def _queue_stamps(self) -> None:
        """The noted stamps, as writes: one statement per client (both of its stamps)."""
        seen, used = self._seen, self._used
        for client_id, when in seen.items():
            key_used = used.get(client_id)
            if key_used is None:
                self._queue.append((_SET_LAST_SEEN, (timestamp(when), client_id)))
            else:
                self._queue.append((_SET_STAMPS, (
                    key_used, client_id, key_used, timestamp(when), client_id,
                )))
        for client_id, when in used.items():
            if client_id not in seen:
                self._queue.append((_SET_BINDING_USED, (when, client_id, when)))

    def flush(self) -> None:
        """Commit pending LastSeen/LastUsed updates, if any."""
        if self._seen or self._used:
            with self.transaction():
                pass

    def begin_round_commit(self, *, durable: bool) -> PgRoundCommit | None:
        """Send the round's COMMIT without waiting (every commit is durable).

        None: the round wrote nothing, so its answers (refusals, reads) need
        no database, even one that cannot be reached now. Until the commit's
        advance() has returned True or raised, no other method may be called.

        Raises:
            StorageFault: the round is lost (its writes are gone), or the
                database cannot be reached for its writes.
        """
        lost, self._round_lost = self._round_lost, None
        if lost is not None:
            raise StorageFault(f"database: the round's writes were rolled back ({lost})")
        if not self._queue and not self._in_round:
            return None
        db = self._live()
        batch, self._queue = self._queue, []
        if not self._in_round:
            batch.insert(0, (_BEGIN, ()))
        batch.append((_COMMIT, ()))
        self._in_round = False
        self._release_owed = False
        self._deferred = False
        self.round_trips += 1
        self.statements += len(batch)
        message = self._one_message(db, self._calls(db, batch)).encode()
        commit = PgRoundCommit(db.pgconn, message, self._commit_done)
        self._commit = commit
        return commit

    def _commit_done(self, failure: str | None) -> None:
        """The round commit ended (``failure``: why it did not commit)."""
        self._commit = None
        db = self._db
        if failure is None or db is None or db.closed:
            return
        if db.pgconn.status != _OK:
            db.close()
            self._reconnect_now()
        elif db.info.transaction_status != _IDLE:  # a write failed: the rest was skipped
            try:
                db.execute(_ROLLBACK)
            except psycopg.Error:
                db.close()

    def finish_round(self, *, durable: bool) -> None:
        """The round's commit, waited for (admin tools, tests, start-up, today's loop).

        Raises:
            StorageFault: the round is lost; no answer of it may go out.
        """
        wait_for(self.begin_round_commit(durable=durable))

    def sync(self) -> None:
        """Commit the round so far (durably, as every commit)."""
        self.finish_round(durable=True)

    def close(self) -> None:
        """Write pending stamps, commit, and disconnect (again: nothing)."""
        if self._closed:
            return
        try:
            if self._db is not None and not self._db.closed:
                self.flush()
                self.sync()
        finally:
            self._closed = True
            self._reconnection.close()
            if self._db is not None:
                self._db.close()
            log.info(
                "database: %d round trip(s), %d statement(s) since start",
                self.round_trips, self.statements,
            )

    # -- clients ---------------------------------------------------------------------

    def client_by_id(self, client_id: bytes) -> ClientRow | None:
        """The client with this id, if any."""
        return _client(self._read(_SELECT_CLIENT, client_id))

    def client_and_binding(self, client_id: bytes) -> tuple[ClientRow | None, Binding | None]:
        """The client with this id and its key binding, in one round trip."""
        rows = self._read(_SELECT_CLIENT_AND_BINDING, client_id)
        if not rows:
            return None, None
        return self._client_and_binding(client_id, rows[0])

    def _client_and_binding(
        self, client_id: bytes, row: tuple
    ) -> tuple[ClientRow | None, Binding | None]:
        """A row of the client read with its binding (and whatever follows them)."""
        fields = len(_CLIENT_FIELDS)
        binding = row[fields:fields + _BINDING_FIELDS]
        return (_client([row[:fields]]),
                None if binding[0] is None else self._binding(client_id, binding))

    @property
    def conninfo(self) -> str:
        """The database, as given (the coordination reads along only in the same one)."""
        return self._conninfo

    def client_read_with_failures(
        self, failure_columns: Callable[[str, str], str], window: float
    ) -> ClientReadWithFailures:
        """:meth:`client_and_binding` with the client's failure counts within ``window``, in
        the same statement: ``failure_columns`` (the coordination's, whose tables these are)
        gives their two columns for the client and its AES key."""
        self._with_failures = _SELECT_CLIENT_BINDING_AND_FAILURES.replace(
            _FAILURES_HERE, failure_columns("c.ID", "c.AESKey")
        )
        self._prepare_along(_Prepared(
            _CLIENT_WITH_FAILURES, self._with_failures, _CLIENT_WITH_FAILURES_TYPES
        ), "the client read")

        def read(client_id: bytes) -> tuple[ClientRow | None, Binding | None, FailureCounts | None]:
            rows = self._read(self._with_failures, window, client_id)
            if not rows:
                return None, None, None
            client, binding = self._client_and_binding(client_id, rows[0])
            under_key, in_window = rows[0][-2:]
            return client, binding, FailureCounts(under_key or 0, int(in_window))

        return read

    def _prepare_along(self, prepared: _Prepared, what: str) -> None:
        """A statement on the coordination's tables, prepared from now on: on this
        connection (outside a round) and on every one made again."""
        self._prepared[prepared.statement] = prepared
        db = self._db
        if db is not None and not db.closed and self._prepared_on is db and not self._in_round:
            try:
                db.execute(prepared.prepare)
            except psycopg.Error as exc:  # the statements go as text until the next connection
                log.warning("database: cannot prepare %s: %s", what, reason(exc))
                self._prepared_on = None

    def prepare_along(self, name: str, statement: str, types: tuple[str, ...], what: str) -> None:
        """A write on the coordination's tables (:meth:`queue_along`), prepared as ``name``
        (its parameters of ``types``) from now on."""
        self._prepare_along(_Prepared(name, statement, types), what)

    def queue_along(self, statement: str, *params: Any) -> None:
        """Queue a write on the coordination's tables in the round's transaction, in a level
        of its own: it goes out with the round's next message (a read's, or the COMMIT), and
        its failure loses the round, as an ended request's write.

        Raises:
            StorageFault: the store cannot be used (closed, no connection).
        """
        with self.transaction():
            self._write(statement, *params)

    def prepare_fence(self) -> None:
        """The upload fence (:meth:`queue_fence`) is prepared from now on: the
        coordination's tables it reads are there."""
        self._prepare_along(_FENCE, "the upload fence")

    def client_by_name(self, name: str) -> ClientRow | None:
        """The client with this name, if any."""
        return _client(self._read(_SELECT_CLIENT_BY_NAME, name))

    def client_by_name_and_counts(
        self, name: str, group: str
    ) -> tuple[ClientRow | None, tuple[int, int]]:
        """The client with this name, if any, and the counts (:meth:`client_counts`): one
        round trip."""
        row = self._read(_SELECT_NAME_AND_COUNTS, schema.TOTAL_GROUP, group, name)[0]
        fields = len(_CLIENT_FIELDS)
        total, in_group = row[fields:]
        client = None if row[0] is None else _client([row[:fields]])
        return client, (int(total or 0), int(in_group))

    def count_clients(self, group: str | None = None) -> int:
        """How many clients are registered, or registered from one address group (kept by a
        trigger: no scan)."""
        rows = self._read(_COUNT_CLIENTS, schema.TOTAL_GROUP if group is None else group)
        return int(rows[0][0]) if rows else 0

    def client_counts(self, group: str) -> tuple[int, int]:
        """How many clients are registered, and how many from one address group: one round
        trip."""
        total, in_group = self._read(_COUNT_CLIENTS_AND_GROUP, schema.TOTAL_GROUP, group)[0]
        return int(total or 0), int(in_group)

    def unused_clients(self, before: float) -> list[bytes]:
        """Clients with a key that never stored a file, their last key issued before ``before``."""
        return [row[0] for row in self._read(_UNUSED_KEYED, before)]

    def delete_stale_keyless(self, before: float) -> int:
        """Forget keyless registrations made (or made again) before ``before``; return how many."""
        self._live()
        self._queue.append((_LOCK_TOTAL, ()))  # in the same message (:data:`_LOCK_TOTAL`)
        return int(self._send((_DELETE_STALE_KEYLESS, (before,)))[0][0])

    def insert_client(
        self, client_id: bytes, name: str, now: float, edition: str, address: str | None = None
    ) -> None:
        """Register a name (no keys yet) in a protocol edition, from ``address``; sent at once.

        Raises:
            NameTaken: another client holds the name, or the id.
        """
        group = None if address is None else self._group_of(address)
        self._live()
        self._queue.append(
            (_INSERT_CLIENT, (client_id, name, timestamp(now), edition, now, address, group))
        )
        try:
            self._send(None)
        except StorageFault as exc:
            if isinstance(exc.__cause__, pg_errors.UniqueViolation):
                raise NameTaken(name) from exc
            raise

    def register_if_free(
        self, client_id: bytes, name: str, now: float, edition: str, address: str, group: str,
        room: tuple[int, int],
    ) -> tuple[ClientRow | None, tuple[int, int], bool]:
        """Register the name if it is free and there is room: one round trip, with the writes
        queued before it (the insert is the request's: in its savepoint); one more when
        another node's round changed the counts meanwhile (:data:`_REGISTER_IF_FREE`)."""
        self._live()
        statement = (_REGISTER_IF_FREE, (
            name, group, schema.TOTAL_GROUP, *room, schema.TOTAL_GROUP,
            client_id, name, timestamp(now), edition, now, address, self._group_of(address),
        ))
        row = self._send(statement)[0]
        fields = len(_CLIENT_FIELDS)
        total, in_group, inserted, stale = row[fields:]
        if stale:  # read again under the lock now held: exactly
            row = self._send(statement)[0]
            total, in_group, inserted, _ = row[fields:]
        client = None if row[0] is None else _client([row[:fields]])
        return client, (int(total or 0), int(in_group)), bool(inserted)

    def set_edition(self, client_id: bytes, edition: str) -> None:
        """The edition the client's requests turned out to be."""
        self._write(_SET_EDITION, edition, client_id)

    def set_crc(self, client_id: bytes, flavour: str) -> None:
        """The CRC flavour the client confirmed."""
        self._write(_SET_CRC, flavour, client_id)

    def delete_client(self, client_id: bytes) -> None:
        """Forget a keyless registration and its binding."""
        self._live()
        self._queue.append((_LOCK_TOTAL, ()))  # in the same message (:data:`_LOCK_TOTAL`)
        self._write(_DELETE_CLIENT, client_id)
        self._write(_DELETE_BINDING, client_id)

    def forget_client(self, client_id: bytes) -> None:
        """Remove every row of a client: its files, its binding, itself (the total's lock
        taken before the files': :data:`_LOCK_TOTAL`)."""
        self._live()
        self._queue.append((_LOCK_TOTAL, ()))
        self._write(_DELETE_CLIENT_FILES, client_id)
        self.delete_client(client_id)

    def set_keys(self, client_id: bytes, public_key: bytes, aes_key: bytes, now: float) -> None:
        """Store the public key and the first AES key (826)."""
        self._write(_SET_KEYS, public_key, aes_key, timestamp(now), client_id)

    def set_aes_key(self, client_id: bytes, aes_key: bytes, now: float) -> None:
        """Store a fresh AES key (827)."""
        self._write(_SET_AES_KEY, aes_key, timestamp(now), client_id)

    def note_seen(self, client_id: bytes, now: float) -> None:
        """Record a request's time; written with the next commit or flush."""
        self._seen[client_id] = now

    # -- files -----------------------------------------------------------------------

    def file_row(self, client_id: bytes, file_name: bytes) -> FileRow | None:
        """The row of one of the client's files, if any."""
        rows = self._read(_SELECT_FILE, client_id, file_name)
        return _file(rows[0]) if rows else None

    def file_rows(self) -> list[FileRow]:
        """Every row of ``files``."""
        return [_file(row) for row in self._read(_SELECT_FILES)]

    def referenced_keys(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` a row points at: two index lookups per key."""
        if not keys:
            return set()
        listed = list(keys)
        return {row[0] for row in self._read(_REFERENCED_KEYS, listed, listed)}

    def stored_bytes(self, client_id: bytes) -> int:
        """The size of every file the client has stored, verified or not."""
        return int(self._read(_SUM_STORED_BYTES, client_id)[0][0])

    def file_row_and_path_names(
        self, client_id: bytes, file_name: bytes
    ) -> tuple[FileRow | None, list[str]]:
        """The file's row, if any, and the path names the client's rows point at: one
        round trip."""
        rows = self._read(_SELECT_CLIENT_FILES, client_id)
        return file_row_and_path_names(map(_file, rows), file_name)

    def upsert_file(
        self, client_id: bytes, file_name: bytes, path_name: str, blob_key: str | None = None
    ) -> None:
        """Insert or reset a file's row with Verified false, pointing at ``blob_key``:
        the client is used from now on."""
        self._write(_UPSERT_FILE, client_id, client_id, file_name, path_name, blob_key, self.node)

    def queue_fence(self, statement: str, *params: Any) -> None:
        """Queue the upload fence (server/storage/postgres/fence.py) in the request's
        transaction: it goes out with the next read, which raises LeaseLost if it refuses."""
        self._write(statement, *params)

    def set_pending(self, client_id: bytes, file_name: bytes, blob_key: str | None) -> None:
        """Point the file's pending version at ``blob_key`` (None: none)."""
        node = None if blob_key is None else self.node
        self._write(_SET_PENDING, blob_key, node, client_id, file_name)

    def promote_pending(self, client_id: bytes, file_name: bytes, blob_key: str) -> None:
        """The 900's swap: the file points at ``blob_key``, with no pending version."""
        self._write(_PROMOTE_PENDING, blob_key, self.node, client_id, file_name)

    def set_verified(self, client_id: bytes, file_name: bytes, verified: bool) -> None:
        """Set a file's Verified flag (900: true, 902: false)."""
        self._write(_SET_VERIFIED, verified, client_id, file_name)

    def set_content(self, client_id: bytes, file_name: bytes, size: int, cksum: int) -> None:
        """Record the size and cksum of the content a file's row now stands for."""
        self._write(_SET_CONTENT, size, cksum, client_id, file_name)

    def delete_file(self, client_id: bytes, file_name: bytes) -> None:
        """Remove a file's row."""
        self._write(_DELETE_FILE, client_id, file_name)

    # -- key bindings ----------------------------------------------------------------

    def binding(self, client_id: bytes) -> Binding | None:
        """Who may use the client's key, and since when."""
        rows = self._read(_SELECT_BINDING, client_id)
        return self._binding(client_id, rows[0]) if rows else None

    def _binding(self, client_id: bytes, row: tuple) -> Binding:
        """A binding row, its last use counting one noted since the last write."""
        used = max(row[3], self._used.get(client_id, row[3]))
        return Binding(id=row[0], address=row[1], issued_at=row[2], last_used=used)

    def set_binding(self, client_id: bytes, address: str, now: float) -> None:
        """Bind the client's key (or registration) to an address from now."""
        self._write(_BIND, client_id, address, now, now, now, client_id)
        self._used.pop(client_id, None)

    def note_key_used(self, client_id: bytes, now: float) -> None:
        """Record a use of the key; written with the next commit or flush."""
        self._used[client_id] = now


_IDLE = psycopg.pq.TransactionStatus.IDLE
_OK = psycopg.pq.ConnStatus.OK


def _discard(db: psycopg.Connection) -> None:
    """Close a connection made again for a store that closed meanwhile."""
    db.close()


def migrate(db: psycopg.Connection, conninfo: str) -> tuple[int, int]:
    """Bring the schema up to :data:`~.schema.SCHEMA_VERSION`; (version found, version now).

    One transaction, under an advisory lock: servers starting together migrate once.

    Raises:
        StoreUnusable: the database's schema is newer than this server's.
        psycopg.Error: the database refused.
    """
    make_table, read_version = schema.version_statements()
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATION_LOCK,))
        db.execute(make_table)
        rows = db.execute(read_version).fetchall()
        found = int(rows[0][0]) if rows else 0
        if found > schema.SCHEMA_VERSION:
            raise StoreUnusable(
                f"{without_password(conninfo)}: schema version {found} is newer than this"
                f" server's {schema.SCHEMA_VERSION}; left untouched"
            )
        for version, statements in schema.steps(found):
            log.info("migrating the schema to version %d", version)
            for statement in statements:
                db.execute(statement)
        if not rows:
            db.execute("INSERT INTO schema_version VALUES (%s)", (schema.SCHEMA_VERSION,))
        elif found != schema.SCHEMA_VERSION:
            db.execute("UPDATE schema_version SET Version = %s", (schema.SCHEMA_VERSION,))
    return found, schema.SCHEMA_VERSION


def migrate_at(conninfo: str) -> tuple[int, int]:
    """Connect, migrate (see :func:`migrate`) and disconnect.

    Raises:
        StoreUnusable: the database refuses, or its schema is newer than this server's.
    """
    db = connect(conninfo)
    try:
        return migrate(db, conninfo)
    except psycopg.Error as exc:
        raise StoreUnusable(f"cannot use {without_password(conninfo)}: {reason(exc)}") from exc
    finally:
        db.close()


def _is_the_callers(exc: psycopg.Error) -> bool:
    """Whether a batch's failure is the caller's own, after the ended requests' writes: a
    taken name, or the upload fence's refusal."""
    return fence.refused(exc) or (
        isinstance(exc, pg_errors.UniqueViolation)
        and exc.diag.constraint_name in _INSERT_CONSTRAINTS
    )


def _client(rows: list[tuple]) -> ClientRow | None:
    if not rows:
        return None
    row = rows[0]
    return ClientRow(
        id=bytes(row[0]), name=row[1], public_key=_bytes(row[2]), last_seen=row[3],
        aes_key=_bytes(row[4]), edition=row[5], crc=row[6], registered_from=row[7],
    )


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _file(row: tuple) -> FileRow:
    return FileRow(
        id=bytes(row[0]), file_name=bytes(row[1]), path_name=row[2], verified=bool(row[3]),
        blob_key=row[4], pending_key=row[5], node=row[6],
    )
