"""The coordination seam (:mod:`.coordination`) in PostgreSQL: what the nodes share, as rows.

Each node has a connection of its own (autocommit: each call is one
statement, committed at once, so one round trip; nothing waits for a
round of the metadata store). Its commits do not wait for the WAL to reach
the disk (``synchronous_commit = off``): a database crash may forget the
last few holds, leases and failures, which is what a restart of a single
server forgets too; the metadata's own commits stay durable. Its tables
are created if absent, under a version of their own (``coordination_version``):

* ``coordination_nodes``: one row per node name ever used, numbering it:
  while a node runs, its coordination connection holds a session-level
  advisory lock of two numbers (:data:`NODE_LOCKS`, then its own), which
  PostgreSQL releases the moment the connection ends, however the node
  stops (a killed process's socket closes, its backend exits). Numbers
  are the table's, so two names never share a lock; a node that finds its
  name's lock held by another connection (a node of the same name, or its
  own previous run, still going) waits :data:`NAME_WAIT` for it, then is
  refused.
* ``coordination_leases``: one row per hold or lease (kind, key, node,
  expiry), taken with ``INSERT … ON CONFLICT … DO UPDATE … WHERE`` the
  holder is this node, or the row has lapsed, or its node's lock is not
  held (the node is gone: its holds and leases are void at once), so that
  two live nodes never hold the same key at once. ``pg_locks`` is read
  only then, on a conflict. Expiries are the database's clock (``now()``):
  the nodes' clocks need not agree. A complete upload's row is written
  behind its lease's (:mod:`.fence`, on the store's connection: the lease's
  row deleted in that round, locked until it ends, gone with its commit);
  the renewal and the purge skip the rows so locked, never waiting for
  this node's own round.
* ``coordination_key_failures``: per client, the key its count is of (a
  digest: the key itself stays in the metadata) and that count;
  ``coordination_failures``: one row per failed decryption, with its time.
* The purge leader holds a session-level advisory lock
  (``pg_try_advisory_lock``): released when its connection ends, however
  the node stops, so that another node takes over.

Round trips are what a call costs the loop (~0.1 ms each on loopback, and
the loop waits for each): a write whose answer nothing waits for (a hold on
a new registration, the release of an upload's lease that stopped before
its end: a complete one's goes with its round, by the fence) is sent without
waiting (prepared once per connection: its text alone would be planned at
every call), its answer read before the connection's next statement (and a
failure among them logged, as a failed release always was: the row lapses,
or goes at the next renewal); an upload's lease, waited for, is prepared
too, and its call is one message read without a cursor (:mod:`.message`).
A hold is so in place before the 825 that
made it is answered: its answer is read (:meth:`PgCoordination.settle`)
as the round's commit begins, by when it has mostly arrived. :attr:`PgCoordination.round_trips`
counts the waited ones, :attr:`PgCoordination.unanswered` the others
(bench/sessions.py, at the close).

A call that fails raises :class:`~server.errors.StorageFault`; a broken
connection is made again in a worker thread, never the loop's
(server/storage/postgres/reconnect.py), begun as soon as the loss is seen
(else by the next call), and used by the first call after it is made (the
name lock and the leadership are then asked for again); meanwhile calls
fail at once, and after a failed attempt the next begins no sooner than
:data:`RECONNECT_DELAY` later.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

from ...errors import StorageFault, StoreUnusable
from ..coordination import (
    REGISTRATION, UPLOAD, ClientReadWithFailures, FailureCounts, RegistrationHold, UploadFence,
    UploadLease, upload_key,
)
from . import fence
from .connect import liveness
from .reconnect import Reconnection

try:
    import psycopg
    from psycopg import pq
    from psycopg.waiting import Ready, Wait

    from .message import Messenger, PatientConnection, ready_by
except ImportError:  # pragma: no cover - the default install has no PostgreSQL
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: The tables' layout this code writes; a database with a later one is refused
#: (2: nodes hold their name's lock; a node of version 1 holds none, and would
#: seem gone to the others).
VERSION = 2
#: The advisory lock (one 64-bit number) the purge leader holds, and the one
#: that makes concurrent table creation take turns.
PURGE_LOCK = 0x63645F7075726765  # "cd_purge"
SCHEMA_LOCK = 0x63645F736368656D  # "cd_schem"
#: The first of the two 32-bit numbers of every node's lock (the second is
#: its number in ``coordination_nodes``): a two-number advisory lock never
#: meets a one-number one such as the two above.
NODE_LOCKS = 0x63645F6E  # "cd_n"
#: Seconds a starting node waits for its name's lock (its previous run's
#: backend may still be going) before it is refused.
NAME_WAIT = 5.0
#: Seconds between two attempts at that lock.
NAME_RETRY = 0.1
#: Seconds to connect (a start-up waits meanwhile; a reconnection's thread, not the loop, later).
CONNECT_TIMEOUT = 2
#: Milliseconds one call may take before it fails (the loop waits meanwhile).
STATEMENT_TIMEOUT_MS = 2000
#: Seconds the answer of a call may take, waited for or read later when sent without
#: waiting (its statement's timeout, and a margin): past them, the database is taken
#: for stalled and the connection for lost (a backend stopped while its host still
#: acknowledges would otherwise keep the loop waiting for ever;
#: server/storage/postgres/message.py).
ANSWER_PATIENCE = STATEMENT_TIMEOUT_MS / 1000 + 1.0
#: Seconds after a failed attempt to connect again before the next begins (calls
#: fail at once meanwhile).
RECONNECT_DELAY = 1.0
#: Bytes of the digest that stands for an AES key in the failure counts.
KEY_TAG_SIZE = 16
INSTALL = "pip install 'cipherdrop[postgres]'"

_SCHEMA = (
    "SELECT pg_advisory_xact_lock(%(lock)s)",
    "CREATE TABLE IF NOT EXISTS coordination_version (version integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS coordination_leases ("
    " kind text NOT NULL, key bytea NOT NULL, node text NOT NULL,"
    " expires timestamptz NOT NULL, blob text, PRIMARY KEY (kind, key))",
    "CREATE INDEX IF NOT EXISTS coordination_leases_node ON coordination_leases (node)",
    "CREATE TABLE IF NOT EXISTS coordination_key_failures ("
    " client_id bytea PRIMARY KEY, key_tag bytea NOT NULL, failures integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS coordination_failures ("
    " client_id bytea NOT NULL, at timestamptz NOT NULL)",
    "CREATE INDEX IF NOT EXISTS coordination_failures_client"
    " ON coordination_failures (client_id, at)",
    "CREATE TABLE IF NOT EXISTS coordination_nodes ("
    " node text PRIMARY KEY, number integer GENERATED ALWAYS AS IDENTITY UNIQUE)",
    "INSERT INTO coordination_version"
    " SELECT %(version)s WHERE NOT EXISTS (SELECT 1 FROM coordination_version)",
    "UPDATE coordination_version SET version = %(version)s WHERE version < %(version)s",
)
_READ_VERSION = "SELECT max(version) FROM coordination_version"
#: The server settings of the coordination's connection (libpq's ``options``).
_SETTINGS = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c synchronous_commit=off"

_LEASE_FOR = "now() + %(lease)s * interval '1 second'"
_NUMBER_NODE = (
    "WITH named AS (INSERT INTO coordination_nodes (node) VALUES (%(node)s)"
    "  ON CONFLICT (node) DO NOTHING RETURNING number)"
    " SELECT number FROM named UNION ALL"
    " SELECT number FROM coordination_nodes WHERE node = %(node)s"
)
_TRY_NAME = "SELECT pg_try_advisory_lock(%(space)s, %(number)s)"


def _node_alive(node: str) -> str:
    """SQL: whether the node named by the column ``node`` holds its lock (it runs)."""
    return (
        "EXISTS (SELECT 1 FROM coordination_nodes AS named JOIN pg_locks AS locked"
        f"  ON locked.locktype = 'advisory' AND locked.classid = {NODE_LOCKS}"
        "  AND locked.objid = named.number AND locked.objsubid = 2 AND locked.granted"
        "  AND locked.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        f" WHERE named.node = {node})"
    )


def _takable(held: str) -> str:
    """SQL: whether the row ``held`` may be taken by ``excluded``'s node.

    Its own, lapsed, or its node gone: the lock is read last, so only on a
    conflict with a live-looking row of another node.
    """
    return (
        f"{held}.node = excluded.node OR {held}.expires <= now()"
        f" OR NOT {_node_alive(held + '.node')}"
    )


_TAKE = (
    "INSERT INTO coordination_leases AS held (kind, key, node, expires, blob)"
    f" VALUES (%(kind)s, %(key)s, %(node)s, {_LEASE_FOR}, %(blob)s)"
    " ON CONFLICT (kind, key) DO UPDATE"
    " SET node = excluded.node, expires = excluded.expires, blob = excluded.blob"
    f" WHERE {_takable('held')}"
    " RETURNING 1"
)
#: :data:`_TAKE` of a registration's hold, its placeholders positional (kind, key, node,
#: lease), for the store's transactions (:meth:`PgCoordination.hold_along`).
_HOLD = (
    "INSERT INTO coordination_leases AS held (kind, key, node, expires)"
    " VALUES (%s, %s, %s, now() + %s * interval '1 second')"
    " ON CONFLICT (kind, key) DO UPDATE"
    " SET node = excluded.node, expires = excluded.expires, blob = NULL"
    f" WHERE {_takable('held')}"
)
_HOLD_TYPES = ("text", "bytea", "text", "float8")
_HELD_ELSEWHERE = (
    "SELECT 1 FROM coordination_leases AS held"
    " WHERE kind = %(kind)s AND key = %(key)s AND node <> %(node)s AND expires > now()"
    f" AND {_node_alive('held.node')}"
)
#: One key at a time, by equality: matched against an array (``= ANY``, a
#: join with ``unnest``), the planner may read every row of the kind.
_RELEASE = (
    "DELETE FROM coordination_leases"
    " WHERE kind = %(kind)s AND key = %(key)s AND node = %(node)s"
)
_LIVE_BLOBS = (
    "SELECT blob FROM coordination_leases"
    " WHERE kind = %(kind)s AND expires > now() AND blob IS NOT NULL"
)
_UPLOADING = (
    "SELECT DISTINCT substring(key from 1 for %(size)s) FROM coordination_leases"
    " WHERE kind = %(kind)s AND expires > now()"
    " AND substring(key from 1 for %(size)s) = ANY(%(clients)s)"
)
#: One statement: this node's current holds and leases renewed (or taken
#: again where lapsed and free), its others deleted (the two sets are disjoint).
#: Its rows locked by an upload fence (server/storage/postgres/fence.py: this
#: node's own round, committing on the store's connection) are left as they are
#: (``SKIP LOCKED``), neither renewed nor deleted: waiting for that round would
#: wait for the loop that waits here.
_RENEW = (
    "WITH held (kind, key, blob) AS"
    " (SELECT * FROM unnest(%(kinds)s::text[], %(keys)s::bytea[], %(blobs)s::text[])),"
    " mine AS (SELECT kind, key FROM coordination_leases WHERE node = %(node)s"
    "  FOR UPDATE SKIP LOCKED),"
    " gone AS (DELETE FROM coordination_leases AS old USING mine"
    "  WHERE old.kind = mine.kind AND old.key = mine.key"
    "  AND NOT EXISTS (SELECT 1 FROM held WHERE held.kind = old.kind AND held.key = old.key)),"
    " renewed AS (UPDATE coordination_leases AS old"
    f"  SET expires = {_LEASE_FOR}, blob = held.blob FROM mine, held"
    "  WHERE old.kind = mine.kind AND old.key = mine.key"
    "  AND held.kind = old.kind AND held.key = old.key)"
    " INSERT INTO coordination_leases AS taken (kind, key, node, expires, blob)"
    f" SELECT kind, key, %(node)s, {_LEASE_FOR}, blob FROM held"
    " WHERE NOT EXISTS (SELECT 1 FROM coordination_leases AS old"
    "  WHERE old.kind = held.kind AND old.key = held.key AND old.node = %(node)s)"
    " ON CONFLICT (kind, key) DO UPDATE"
    " SET node = excluded.node, expires = excluded.expires, blob = excluded.blob"
    f" WHERE {_takable('taken')}"
)
_IN_WINDOW = (
    "SELECT count(*) FROM coordination_failures"
    " WHERE client_id = %(client)s AND at > now() - %(window)s * interval '1 second'"
)
_FAILURES = (
    "SELECT (SELECT failures FROM coordination_key_failures"
    "  WHERE client_id = %(client)s AND key_tag = %(tag)s),"
    f" ({_IN_WINDOW})"
)
#: One statement: the per-key count raised (or started again under a new
#: key), the failure's row added; the window's count does not see that row yet: +1.
_NOTE_FAILURE = (
    "WITH counted AS (INSERT INTO coordination_key_failures AS old VALUES (%(client)s, %(tag)s, 1)"
    "  ON CONFLICT (client_id) DO UPDATE SET failures = CASE WHEN old.key_tag = excluded.key_tag"
    "  THEN old.failures + 1 ELSE 1 END, key_tag = excluded.key_tag RETURNING failures),"
    " noted AS (INSERT INTO coordination_failures VALUES (%(client)s, now()))"
    f" SELECT (SELECT failures FROM counted), ({_IN_WINDOW}) + 1"
)
_TRY_LEAD = "SELECT pg_try_advisory_lock(%(lock)s)"
#: A node that stops hands the leadership over at once (its backend would,
#: but only once it notices the connection closed).
_STOP_LEADING = "SELECT pg_advisory_unlock_all()"
#: A lapsed lease locked by an upload fence is left for the next purge.
_PURGE = (
    "WITH failures AS (DELETE FROM coordination_failures"
    "  WHERE at <= now() - %(window)s * interval '1 second'),"
    " lapsed AS (SELECT kind, key FROM coordination_leases WHERE expires <= now()"
    "  FOR UPDATE SKIP LOCKED)"
    " DELETE FROM coordination_leases AS old USING lapsed"
    " WHERE old.kind = lapsed.kind AND old.key = lapsed.key"
)


def failure_columns(client: str, aes_key: str) -> str:
    """SQL: two columns, the failure counts of the client whose id is the column ``client``:
    under the key in the column ``aes_key`` (its tag, :func:`key_tag`, made by the
    database: NULL for none), and within the window its one placeholder gives in seconds
    (the statement's own time: within an open transaction too). For a read on another
    connection of the same database: the store's client read (:meth:`PgCoordination.read_along`).
    """
    return (
        f"(SELECT failures FROM coordination_key_failures WHERE client_id = {client}"
        f" AND key_tag = substring(sha256({aes_key}) from 1 for {KEY_TAG_SIZE})),"
        f" (SELECT count(*) FROM coordination_failures WHERE client_id = {client}"
        "  AND at > statement_timestamp() - %s * interval '1 second')"
    )


#: The types of the parameters of the statements sent without waiting, by name.
_PARAMETER_TYPES = {"kind": "text", "key": "bytea", "node": "text", "lease": "float8",
                    "blob": "text"}
_NAMED_PARAMETER = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class _Prepared:
    """A statement of every session (sent without waiting, or an upload's lease), prepared
    once per connection: sent as simple query text (libpq's ``PQsendQuery``), it would be
    planned at every call, and :data:`_TAKE`'s plan (it may read ``pg_locks``) is the
    costly part of it."""

    name: str
    statement: str

    @property
    def prepare(self) -> str:
        """SQL: the statement prepared under its name, its parameters numbered."""
        names = self._names()
        numbered = _NAMED_PARAMETER.sub(lambda found: f"${names.index(found[1]) + 1}",
                                        self.statement)
        types = ", ".join(_PARAMETER_TYPES[name] for name in names)
        return f"PREPARE {self.name} ({types}) AS {numbered}"

    @functools.cached_property
    def execute(self) -> str:
        """The statement's call, its parameters placeholders (bound as literals, in the
        order of :meth:`values`)."""
        return f"EXECUTE {self.name} ({', '.join(['%s'] * len(self._names()))})"

    def values(self, named: Mapping[str, object]) -> tuple[object, ...]:
        """The parameters of :attr:`execute`, from their values by name."""
        return tuple([named[name] for name in self._names()])

    def _names(self) -> tuple[str, ...]:
        """Its parameters' names, in order: found once per statement (a call's every value
        passes here)."""
        return _parameter_names(self.statement)


@functools.lru_cache(maxsize=None)
def _parameter_names(statement: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_NAMED_PARAMETER.findall(statement)))


#: A hold sent without waiting, and an upload's lease waited for: one statement.
_TAKE_PREPARED = _Prepared("cd_take", _TAKE)
_RELEASE_UNANSWERED = _Prepared("cd_release", _RELEASE)


class _PendingTake:
    """An upload's lease sent without waiting (:meth:`PgCoordination.begin_take_upload`)."""

    def __init__(self, coordination: PgCoordination) -> None:
        self._coordination = coordination
        self._answered = False
        self._held = False
        self._failure: StorageFault | None = None

    def answer(self, *, held: bool = False, failure: StorageFault | None = None) -> None:
        """Its answer, read by the coordination."""
        self._answered, self._held, self._failure = True, held, failure

    def taken(self) -> bool:
        """Whether this node holds the lease; its answer is read first if it has not been.

        Raises:
            StorageFault: the database refused it, or the connection was lost.
        """
        if not self._answered:
            self._coordination.settle()
        if self._failure is not None:
            raise self._failure
        if not self._answered:  # pragma: no cover - settle answers every take it sent
            raise StorageFault("coordination: the upload lease went unanswered")
        return self._held


def key_tag(aes_key: bytes) -> bytes:
    """What stands for an AES key in the failure counts: a digest, never the key."""
    return hashlib.sha256(aes_key).digest()[:KEY_TAG_SIZE]


class PgCoordination:
    """The nodes' coordination in a PostgreSQL database, on a connection of this node's."""

    def __init__(self, conninfo: str, node: str, lease: float) -> None:
        """Connect and create the tables if absent.

        Raises:
            StoreUnusable: no psycopg, the database refuses, or its tables are
                of a later version.
        """
        if psycopg is None:
            raise StoreUnusable(f"PostgreSQL needs psycopg: {INSTALL}")
        self.node = node
        self._conninfo = conninfo
        self._lease = lease
        self._leader = False
        #: Whether the connection holds this node's name lock.
        self._named = False
        #: The second number of this node's lock (``coordination_nodes``).
        self._number = 0
        self._connection: Any = None
        #: A lost connection is made again off the loop thread.
        self._reconnection: Reconnection[Any] = Reconnection(
            "coordination", RECONNECT_DELAY, _discard
        )
        #: A statement sent without waiting whose answer is still to be read.
        self._unanswered = False
        #: The upload lease it asks for, if it is one (its answer is its caller's).
        self._pending_take: _PendingTake | None = None
        #: The statements prepared on the connection (:class:`_Prepared`).
        self._prepared: set[str] = set()
        #: Sends a prepared statement's call as one message on the connection.
        self._messenger: Messenger | None = None
        #: Round trips waited for, and messages sent without waiting (logged at the close).
        self.round_trips = 0
        self.unanswered = 0
        try:
            connection = self._connection = self._open_connection()
            with connection.transaction():
                for statement in _SCHEMA:
                    connection.execute(statement, {"lock": SCHEMA_LOCK, "version": VERSION})
            version = connection.execute(_READ_VERSION).fetchone()[0]
        except (psycopg.Error, StorageFault) as exc:
            self.close()
            raise StoreUnusable(f"cannot coordinate in the database: {_reason(exc)}") from exc
        if version > VERSION:
            self.close()
            raise StoreUnusable(
                f"the coordination tables are of version {version}, made by a later server"
                f" (this one knows {VERSION})"
            )
        try:
            self._take_name()
            self.renew((), ())  # what a previous run of this name held is not this run's
        except StoreUnusable:
            self.close()
            raise
        except StorageFault as exc:
            self.close()
            raise StoreUnusable(f"cannot coordinate in the database: {_reason(exc)}") from exc

    def _take_name(self) -> None:
        """Number this node's name and take its lock, waiting :data:`NAME_WAIT` for it.

        Raises:
            StoreUnusable: another connection holds it all that time.
            StorageFault: the database failed.
        """
        given_up = time.monotonic() + NAME_WAIT
        while True:
            row = self._execute_unnamed(_NUMBER_NODE, {"node": self.node})
            if row is not None:  # None: the name was being numbered by another at once
                self._number = row[0]
                if self._try_name():
                    return
            if time.monotonic() >= given_up:
                raise StoreUnusable(
                    f"another node named {self.node!r} is connected to the database"
                    " (give each node its own --node-name; a node started again takes"
                    f" its name once its previous run's connection is gone, {NAME_WAIT:g} s"
                    " at most)"
                )
            time.sleep(NAME_RETRY)

    def _try_name(self) -> bool:
        """Take this node's name lock on the connection, unless another holds it."""
        row = self._execute_unnamed(_TRY_NAME, {"space": NODE_LOCKS, "number": self._number})
        self._named = bool(row and row[0])
        return self._named

    def _connect(self) -> Any:
        """The connection; if it was lost, the one made again in the reconnection's
        thread, once there is one.

        Raises:
            StorageFault: none is made yet (an attempt is under way, or the database
                could not be reached).
        """
        if self._connection is None or self._connection.closed:
            self._leader = False
            self._named = False
            self._prepared.clear()
            self._connection = self._reconnection.take(self._open_connection)
        return self._connection

    def _open_connection(self) -> Any:
        """A new connection (at the start, or in the reconnection's thread: it touches no
        state of this object).

        Raises:
            StorageFault: the database cannot be reached, or refuses.
        """
        try:
            connection = PatientConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                **liveness(self._conninfo, _SETTINGS),
                application_name=f"cipherdrop coordination {self.node}"[:63],
            )
        except psycopg.Error as exc:
            raise StorageFault(f"cannot connect to the database: {_reason(exc)}") from exc
        connection.patience = ANSWER_PATIENCE
        return connection

    def _execute(self, statement: str, values: Mapping[str, object]) -> Sequence[Any] | None:
        """One statement, one round trip: its first row, if any.

        Raises:
            StorageFault: it failed (a broken connection is opened again next time).
        """
        rows = self._rows(statement, values)
        return rows[0] if rows else None

    def _rows(self, statement: str, values: Mapping[str, object]) -> list[Sequence[Any]]:
        """One statement, one round trip: its rows (none for a statement without).

        On a new connection, this node's name lock is taken first (one
        round trip more): without it, its holds and leases are void to the
        others, and it takes none.

        Raises:
            StorageFault: it failed (a broken connection is opened again
                next time), or another connection still holds the name (this
                node's previous one, not yet gone: asked again next time).
        """
        self._ensure_named()
        return self._rows_unnamed(statement, values)

    def _ensure_named(self) -> None:
        """Take this node's name lock if the connection is new (one round trip then).

        Raises:
            StorageFault: another connection still holds it (this node's
                previous one, not yet gone: asked again next time), or the
                database failed.
        """
        if not self._named and not self._try_name():
            raise StorageFault(
                f"coordination: node {self.node!r}'s name is still held by another connection"
            )

    def _execute_unnamed(
        self, statement: str, values: Mapping[str, object]
    ) -> Sequence[Any] | None:
        """:meth:`_execute` without the name lock (to take it)."""
        rows = self._rows_unnamed(statement, values)
        return rows[0] if rows else None

    def _rows_unnamed(self, statement: str, values: Mapping[str, object]) -> list[Sequence[Any]]:
        """:meth:`_rows` without the name lock."""
        self._collect()
        connection = self._connect()
        self.round_trips += 1
        try:
            cursor = connection.execute(statement, values)
            return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            if connection.broken:
                self._drop_connection()
            raise StorageFault(f"coordination: {_reason(exc)}") from exc

    def _send_unanswered(self, prepared: _Prepared, values: Mapping[str, object]) -> None:
        """The statement, not waited for: its answer is read before the connection's next
        statement (:meth:`_collect`). Prepared first on a new connection (one round trip).

        Raises:
            StorageFault: it could not be sent (a broken connection is opened again next
                time), or the name lock could not be taken (see :meth:`_rows`).
        """
        self._prepare(prepared)
        self._collect()
        connection = self._connect()
        try:
            messenger = self._messenger_of(connection)
            connection.pgconn.send_query(messenger.binder.text(
                [(prepared.execute, prepared.values(values))]
            ).encode(connection.info.encoding))
        except psycopg.Error as exc:
            if connection.broken:
                self._drop_connection()
            raise StorageFault(f"coordination: {_reason(exc)}") from exc
        self._unanswered = True
        self.unanswered += 1

    def _prepare(self, prepared: _Prepared) -> None:
        """Take the name lock if needed, and prepare the statement on a new connection (one
        round trip each, once per connection).

        Raises:
            StorageFault: see :meth:`_rows`.
        """
        self._ensure_named()
        if prepared.name not in self._prepared:
            self._rows(prepared.prepare, {})
            self._prepared.add(prepared.name)

    def _call(self, prepared: _Prepared, values: Mapping[str, object]) -> list[tuple]:
        """A prepared statement's rows, waited for (one round trip; one more to prepare it on
        a new connection): one message, without a cursor (:mod:`.message`).

        Raises:
            StorageFault: see :meth:`_rows`.
        """
        self._prepare(prepared)
        self._collect()
        connection = self._connect()
        self.round_trips += 1
        try:
            return self._messenger_of(connection).rows(
                [(prepared.execute, prepared.values(values))]
            )
        except psycopg.Error as exc:
            if connection.broken:
                self._drop_connection()
            raise StorageFault(f"coordination: {_reason(exc)}") from exc

    def _messenger_of(self, connection: Any) -> Messenger:
        """What sends one message on ``connection`` (made again for a new one)."""
        if self._messenger is None or self._messenger.db is not connection:
            self._messenger = Messenger(connection)
        return self._messenger

    def read_along(self, store: object, window: float) -> ClientReadWithFailures | None:
        """The client read of a PostgreSQL store of this database, with the failure counts
        (:func:`failure_columns`) in the same statement; None for any other store."""
        from .store import PostgresMetadata

        if not isinstance(store, PostgresMetadata) or store.conninfo != self._conninfo:
            return None
        return store.client_read_with_failures(failure_columns, window)

    def fence_along(self, store: object) -> UploadFence | None:
        """The upload fence (server/storage/postgres/fence.py) in a PostgreSQL store of this
        database; None for any other store."""
        from .store import PostgresMetadata

        if not isinstance(store, PostgresMetadata) or store.conninfo != self._conninfo:
            return None
        store.prepare_fence()

        def fence_upload(lease: UploadLease) -> None:
            key = upload_key(lease.client_id, lease.file_name)
            store.queue_fence(fence.STATEMENT, UPLOAD, key, self.node, lease.blob_key)

        return fence_upload

    def hold_along(self, store: object) -> RegistrationHold | None:
        """A registration's hold queued in a PostgreSQL store of this database (its round's
        transaction: in place with the registration's row, no message of its own); None
        for any other store."""
        from .store import PostgresMetadata

        if not isinstance(store, PostgresMetadata) or store.conninfo != self._conninfo:
            return None
        store.prepare_along("cd_hold", _HOLD, _HOLD_TYPES, "the registration hold")

        def hold(client_id: bytes) -> None:
            store.queue_along(_HOLD, REGISTRATION, client_id, self.node, self._lease)

        return hold

    def settle(self) -> None:
        """Read the answer of what was sent without waiting (see :meth:`_collect`)."""
        self._collect()

    def _collect(self) -> None:
        """Read the answer of the statement sent without waiting, if any: by now it has
        mostly arrived. A failure in it is logged (the lease it would have deleted lapses,
        or goes at the next renewal; a hold it would have taken is this node's only)."""
        if not self._unanswered:
            return
        self._unanswered = False
        take, self._pending_take = self._pending_take, None
        connection = self._connection
        if connection is None or connection.closed:
            if take is not None:
                take.answer(failure=StorageFault("coordination: the connection was lost"))
            return
        pgconn = connection.pgconn
        failure = None
        rows = 0
        deadline = time.monotonic() + ANSWER_PATIENCE
        while True:
            if not _answer_in(pgconn, deadline):
                failure = failure or f"no answer within {ANSWER_PATIENCE:g} s"
                self._drop_connection()
                break
            result = pgconn.get_result()
            if result is None:
                break
            if result.status == pq.ExecStatus.FATAL_ERROR and failure is None:
                primary = result.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
                failure = (primary or pgconn.error_message or b"error").decode("utf-8", "replace")
            elif result.status == pq.ExecStatus.TUPLES_OK:
                rows += result.ntuples
        if self._connection is connection and pgconn.status != pq.ConnStatus.OK:
            self._drop_connection()
            failure = failure or "the connection was lost"
        if take is not None:  # its caller hears of a failure
            take.answer(held=rows > 0, failure=None if failure is None else StorageFault(
                f"coordination: {' '.join(failure.split())}"
            ))
        elif failure is not None:
            log.warning(
                "coordination: a hold or release sent without waiting failed (a hold is this"
                " node's only; a lease lapses, or goes at the next renewal): %s",
                " ".join(failure.split()),
            )

    def _drop_connection(self) -> None:
        """The connection is closed (lost, or at the close): unless this is the close, it
        begins to be made again at once, so that it is there, or being made, at the next call."""
        self._leader = False
        self._named = False
        self._unanswered = False
        take, self._pending_take = self._pending_take, None
        if take is not None:
            take.answer(failure=StorageFault("coordination: the connection was lost"))
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._reconnection.start(self._open_connection)

    def _lease_values(self, kind: str, key: bytes, blob: str | None = None) -> dict[str, object]:
        return {"kind": kind, "key": key, "node": self.node, "lease": self._lease, "blob": blob}

    # -- holds and leases -----------------------------------------------------

    def hold_registration(self, client_id: bytes) -> None:
        """This node holds the keyless registration ``client_id`` (sent without waiting: a
        new id is held by no other node)."""
        self._send_unanswered(_TAKE_PREPARED, self._lease_values(REGISTRATION, client_id))

    def registration_held_elsewhere(self, client_id: bytes) -> bool:
        """Whether another node holds the registration, unlapsed (one round trip)."""
        found = self._execute(_HELD_ELSEWHERE, self._lease_values(REGISTRATION, client_id))
        return found is not None

    def release_registrations(self, client_ids: Collection[bytes]) -> None:
        """This node no longer holds these registrations (one round trip: a pipeline).

        Waited for: the client whose connection closed may register its name on
        another node at once (rare: a registration is let go at its 826 without a call).
        """
        self._ensure_named()
        self._collect()
        connection = self._connect()
        values = [
            {"kind": REGISTRATION, "key": client_id, "node": self.node} for client_id in client_ids
        ]
        self.round_trips += 1
        try:
            connection.cursor().executemany(_RELEASE, values)
        except psycopg.Error as exc:
            if connection.broken:
                self._drop_connection()
            raise StorageFault(f"coordination: {_reason(exc)}") from exc

    def take_upload(self, lease: UploadLease) -> bool:
        """Take (or renew) the upload's lease; False if another node holds it (one round trip)."""
        key = upload_key(lease.client_id, lease.file_name)
        return bool(self._call(_TAKE_PREPARED, self._lease_values(UPLOAD, key, lease.blob_key)))

    def begin_take_upload(self, lease: UploadLease) -> _PendingTake:
        """:meth:`take_upload` sent without waiting: its answer is read before the
        connection's next statement, or when asked for (:meth:`_PendingTake.taken`).

        Raises:
            StorageFault: it could not be sent.
        """
        key = upload_key(lease.client_id, lease.file_name)
        self._send_unanswered(_TAKE_PREPARED, self._lease_values(UPLOAD, key, lease.blob_key))
        take = _PendingTake(self)
        self._pending_take = take
        return take

    def release_upload(self, client_id: bytes, file_name: bytes) -> None:
        """The upload stopped receiving here (sent without waiting)."""
        values = {"kind": UPLOAD, "key": upload_key(client_id, file_name), "node": self.node}
        self._send_unanswered(_RELEASE_UNANSWERED, values)

    def uploading(self, client_ids: Collection[bytes]) -> set[bytes]:
        """Those of ``client_ids`` with an upload lease on any node (one round trip)."""
        if not client_ids:
            return set()
        size = len(next(iter(client_ids)))
        values = {"kind": UPLOAD, "size": size, "clients": list(client_ids)}
        return {bytes(row[0]) for row in self._rows(_UPLOADING, values)}

    def live_blobs(self) -> set[str]:
        """The blob keys of the uploads any node is receiving (one round trip)."""
        return {row[0] for row in self._rows(_LIVE_BLOBS, {"kind": UPLOAD})}

    def renew(
        self, registrations: Collection[bytes], uploads: Collection[UploadLease]
    ) -> None:
        """Renew what this node holds; its other holds and leases go (one round trip)."""
        leased = [upload_key(lease.client_id, lease.file_name) for lease in uploads]
        keys = [*registrations, *leased]
        kinds = [REGISTRATION] * len(registrations) + [UPLOAD] * len(uploads)
        blobs = [None] * len(registrations) + [lease.blob_key for lease in uploads]
        values = {
            "kinds": kinds, "keys": keys, "blobs": blobs, "node": self.node, "lease": self._lease
        }
        self._execute(_RENEW, values)

    # -- the failure budget ---------------------------------------------------

    def decrypt_failures(self, client_id: bytes, aes_key: bytes, window: float) -> FailureCounts:
        """The client's failures under ``aes_key``, and within ``window`` (one round trip)."""
        values = {"client": client_id, "tag": key_tag(aes_key), "window": window}
        row = self._execute(_FAILURES, values)
        if row is None:
            raise StorageFault("coordination: the failure counts came back empty")
        return FailureCounts(row[0] or 0, row[1])

    def note_decrypt_failure(
        self, client_id: bytes, aes_key: bytes, window: float
    ) -> FailureCounts:
        """Count one failed decryption under ``aes_key``; the counts with it (one round trip)."""
        values = {"client": client_id, "tag": key_tag(aes_key), "window": window}
        row = self._execute(_NOTE_FAILURE, values)
        if row is None:
            raise StorageFault("coordination: the failure counts came back empty")
        return FailureCounts(row[0], row[1])

    # -- purges ---------------------------------------------------------------

    def may_run_purges(self) -> bool:
        """Whether this node runs the purges: it holds the advisory lock while connected.

        One round trip until it is the leader; none after, while its
        connection lasts (a new connection asks again).
        """
        if not self._leader:
            row = self._execute(_TRY_LEAD, {"lock": PURGE_LOCK})
            self._leader = bool(row and row[0])
        return self._leader

    def purge(self, window: float) -> None:
        """Forget failures older than ``window`` and lapsed holds and leases (one round trip)."""
        self._execute(_PURGE, {"window": window})

    def close(self) -> None:
        """Let go of this node's holds, leases and leadership (closing its connection)."""
        self._reconnection.close()
        if self._connection is None or self._connection.closed:
            return
        try:
            self.renew((), ())
            if self._leader:
                self._execute(_STOP_LEADING, {})
        except StorageFault as exc:  # they lapse by themselves, the lock goes with the connection
            log.warning("cannot release this node's holds, leases or leadership: %s", exc)
        self._drop_connection()
        log.info(
            "coordination: %d round trip(s), %d statement(s) sent without waiting since start",
            self.round_trips, self.unanswered,
        )


def _discard(connection: Any) -> None:
    """Close a connection made again for a coordination that closed meanwhile."""
    connection.close()


def _reason(exc: BaseException) -> str:
    """An exception's first line (libpq's messages run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _answer_in(pgconn: Any, deadline: float) -> bool:
    """Wait until libpq holds a whole result (or knows the connection lost), in
    poll() (:func:`~.message.ready_by`), which lets the other threads run, where
    ``PQgetResult`` would wait holding them all; False: the deadline
    (``time.monotonic()``) passed first."""
    while True:
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return True  # get_result reports it, the status tells it is lost
        if not pgconn.is_busy():
            return True
        if ready_by(pgconn.socket, Wait.R, deadline) == Ready.NONE:
            return False
