"""The storage seam: what the handlers ask of a metadata store and a blob store.

Two small interfaces, so that the handlers never see how things are kept:

* :class:`MetadataStore`: clients, their keys and key bindings, and the files
  each client holds, with transactions. First implementation: SQLite
  (:mod:`server.storage.sqlite`).
* :class:`BlobStore`: the received files' content: each upload written once
  under a key of its own (:func:`new_blob_key`), sealed, then published as
  what a file's path name reads; read, deleted. First implementation: a
  local folder (:mod:`server.storage.folder`).

What crosses the seam is plain Python: bytes, str, numbers and the frozen
records below; what goes wrong is :class:`~server.errors.StorageFault` (or
:class:`~server.errors.NameTaken`), never a library's own exception type.
The order in which the two stores are written so that a crash leaves them
consistent is in :mod:`server.storage.commit`, in one place.

A stored file is read by its *path name*, the string the ``files`` table
keeps in ``PathName`` (for the folder store,
``received_files/<client-id-hex>/<name>``); its content is the blob the row
points at, by its *blob key* (``BlobKey``; a pending version is a second
pointer, ``PendingKey``). Publishing a key under a path name is the store's
own business (the folder renames the upload's file into place; a store that
reads by key has nothing to move): it is idempotent, so that start-up repair
can finish one a crash cut.

Which implementation serves is chosen by a URL-like name, :class:`StoreUrl`
(``sqlite:///srv/data/defensive.db``, ``file:///srv/data/received_files``),
in :mod:`server.storage.factory`, the one place that knows the backends.
"""

from __future__ import annotations

import functools
import math
import secrets
import selectors
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Collection, Iterable, Mapping, Protocol, runtime_checkable

from ..errors import NameTaken
from .urltext import without_password

#: Texts of recent seconds kept for LastSeen (a clock that steps back reuses one).
_SECONDS_KEPT = 4
_US = 1_000_000
#: Random bytes in a blob key (shown as hex: safe as a file or object name).
BLOB_KEY_BYTES = 16
#: The most keys one :meth:`MetadataStore.referenced_keys` is asked about
#: (a query's parameters: SQLite took at most 999 before 3.32).
KEYS_PER_QUERY = 500


def new_blob_key() -> str:
    """A fresh key for one upload's content: unique, lowercase hex."""
    return secrets.token_hex(BLOB_KEY_BYTES)


def is_blob_key(text: str) -> bool:
    """Whether ``text`` has the form :func:`new_blob_key` gives."""
    return len(text) == 2 * BLOB_KEY_BYTES and all(c in "0123456789abcdef" for c in text)


def timestamp(now: float) -> str:
    """LastSeen's format (:attr:`ClientRow.last_seen`): ISO 8601 in UTC, to the second."""
    # The second datetime.fromtimestamp gives: it rounds to the microsecond first.
    fraction, whole = math.modf(now)
    return _second_text(int(whole) + math.floor(round(fraction * _US) / _US))


@functools.lru_cache(maxsize=_SECONDS_KEPT)
def _second_text(second: int) -> str:
    """One second's text: made once, though every request of that second stamps it."""
    return datetime.fromtimestamp(second, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoreUrl:
    """Where a store is, as ``--metadata`` or ``--blobs`` names it: ``scheme://[host]/path?options``.

    ``path`` is the URL's path (percent-decoded; relative when written
    ``scheme:path``), ``host`` its host (empty for a local store), ``options``
    its query. Each backend checks the host and options it takes.
    """

    scheme: str
    path: Path
    host: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    #: As the operator wrote it (for messages); empty for a default place.
    text: str = ""

    def __str__(self) -> str:
        """As written (any password or secret hidden: server/storage/urltext.py), or a
        default place's path."""
        return without_password(self.text) if self.text else str(self.path)


@dataclass(frozen=True)
class ClientRow:
    """A client: its id, name, keys (None until 826), last request time, edition.

    ``edition`` is the name of the protocol edition it registered with
    (``protocol.editions``), or a family's name while its requests have not
    told the family's editions apart.
    """

    id: bytes
    name: str
    public_key: bytes | None
    last_seen: str | None
    aes_key: bytes | None
    edition: str = "v3"
    #: The CRC the client confirmed last: "cksum", or "crc32" (zlib's).
    crc: str = "cksum"
    #: The exact address that registered it (None for a row of before this was kept).
    registered_from: str | None = None


@dataclass(frozen=True)
class FileRow:
    """A file a client holds; ``file_name`` is the wire name's text as sent."""

    id: bytes
    file_name: bytes
    path_name: str
    verified: bool
    #: The blob the path name reads (None for a row written before keys were kept).
    blob_key: str | None = None
    #: A sealed later version waiting for its 900, if any.
    pending_key: str | None = None
    #: The node that last pointed the row at a blob (a first upload, a pending version, a
    #: 900's swap): that blob's publish, or its 900, is that node's to finish. None: a
    #: store one server opens (every row is its own).
    node: str | None = None


@dataclass(frozen=True)
class Binding:
    """Who may use a client's current key (or keyless registration), and since when."""

    id: bytes
    address: str
    issued_at: float
    last_used: float


@dataclass(frozen=True)
class UnpublishedBlob:
    """An upload's blob, written under its key and never published (start-up repair)."""

    client_id: bytes
    key: str


@dataclass(frozen=True)
class BlobEntry:
    """Something found in the blob store at start-up (a stored blob or a stray).

    ``owner`` names the client it is filed under, as the store writes it
    (empty for an entry where the store files a client).
    """

    owner: str
    name: str
    path_name: str


#: Seconds a wait for a round's commit sleeps at most between two advance() calls.
COMMIT_POLL_INTERVAL = 1.0


class RoundCommit(Protocol):
    """A round's commit under way; the loop waits for it through its selector, and calls
    advance() at least every :data:`COMMIT_POLL_INTERVAL` seconds, ready or not (a commit
    may give up on a database that stopped answering)."""

    def fileno(self) -> int:
        """The descriptor to wait on (a worker's socketpair end, or the database's socket)."""
        ...

    @property
    def wants_write(self) -> bool:
        """Wait for the descriptor to be writable (else readable); may change after advance()."""
        ...

    def advance(self) -> bool:
        """Do what can be done without waiting; True once the round is committed (and
        durable if asked).

        Raises:
            StorageFault: the round is lost (none of its answers may go out).
            DurabilityLost: durability failed for good (the server stops).
        """
        ...


@runtime_checkable
class DurableStep(Protocol):
    """A round committed whose durability is one blocking call (SQLite's fsync of its WAL):
    the caller runs it in a thread of its own (the loop's round worker, server/roundworker.py,
    beside the blob store's seals and publishes of the round: server/storage/commit.py), then
    reports it. The store calls no thread of its own, and knows nothing of blobs."""

    def run(self) -> bool:
        """Make the round durable, blocking (any thread; the store is called by no one
        meanwhile); whether it is. Never raises: a failure is kept for :meth:`finish`."""
        ...

    def finish(self) -> None:
        """After :meth:`run`, in the thread that calls the store: the round is durable.

        Raises:
            DurabilityLost: it is not, and never will be (the server stops).
        """
        ...


def wait_for(commit: RoundCommit | DurableStep | None) -> None:
    """Complete a round's commit, blocking (``finish_round``'s wait): a
    :class:`DurableStep` is run here, a :class:`RoundCommit` advanced until done.

    Raises:
        StorageFault: the round is lost.
        DurabilityLost: durability failed for good.
    """
    if commit is None:
        return
    if isinstance(commit, DurableStep):
        commit.run()
        commit.finish()
        return
    with selectors.DefaultSelector() as selector:
        interest = 0
        while not commit.advance():
            wanted = selectors.EVENT_WRITE if commit.wants_write else selectors.EVENT_READ
            if wanted != interest:
                if interest:
                    selector.unregister(commit.fileno())
                selector.register(commit.fileno(), wanted)
                interest = wanted
            selector.select(COMMIT_POLL_INTERVAL)


def has_room(counts: tuple[int, int], room: tuple[int, int]) -> bool:
    """Whether one more client fits: the total and an address group's count (``counts``)
    below the cap and the group's share of it (``room``)."""
    return counts[0] < room[0] and counts[1] < room[1]


def register_if_free_in_steps(
    store: MetadataStore, client_id: bytes, name: str, now: float, edition: str, address: str,
    group: str, room: tuple[int, int],
) -> tuple[ClientRow | None, tuple[int, int], bool]:
    """:meth:`MetadataStore.register_if_free` as a read and an insert (a store in this
    process, where a read costs no round trip)."""
    found, counts = store.client_by_name_and_counts(name, group)
    if found is not None or not has_room(counts, room):
        return found, counts, False
    try:
        store.insert_client(client_id, name, now, edition, address)
    except NameTaken:
        return None, counts, False
    return None, counts, True


def file_row_and_path_names(
    client_rows: Iterable[FileRow], file_name: bytes
) -> tuple[FileRow | None, list[str]]:
    """From every row of a client: the row of ``file_name`` (if any), and every path name."""
    rows = list(client_rows)
    found = next((row for row in rows if row.file_name == file_name), None)
    return found, [row.path_name for row in rows]


class MetadataStore(Protocol):
    """Clients, keys, key bindings and files.

    Writes happen inside :meth:`transaction`, each request's its own part of
    the round's transaction; the loop ends each round with
    :meth:`begin_round_commit` and waits for what it returns through its
    selector (a :class:`RoundCommit`, or a :class:`DurableStep` its round
    worker runs), serving sockets meanwhile (durable before the round's
    answers go out: group commit); :meth:`finish_round` is the
    same, waited for, and :meth:`sync` makes what is written so far durable
    at once. Stamps noted with
    :meth:`note_seen` and :meth:`note_key_used` ride along with the next
    commit or :meth:`flush`. Every method may raise
    :class:`~server.errors.StorageFault`.
    """

    def transaction(self) -> AbstractContextManager[None]:
        """Everything written inside commits together, or not at all."""
        ...

    def flush(self) -> None:
        """Commit pending stamps, if any."""
        ...

    def begin_round_commit(self, *, durable: bool) -> RoundCommit | DurableStep | None:
        """Start committing the round's writes (and making them durable when ``durable``).

        None: done already (nothing to commit, or the store finished at once).
        A :class:`RoundCommit`: completing on a descriptor of the store's (a
        database's socket). A :class:`DurableStep`: committed, its durability
        one blocking call for the caller to run off the loop thread. Until the
        commit is done (advance() returned True or raised; the step's
        finish() returned or raised), the loop calls no other method of the store.

        Raises:
            StorageFault: the round is lost (none of its answers may go out).
            DurabilityLost: durability failed for good (the server stops).
        """
        ...

    def finish_round(self, *, durable: bool) -> None:
        """The same, waited for (admin tools, tests, start-up): begin_round_commit and
        advance until done, blocking (:func:`wait_for`)."""
        ...

    def sync(self) -> None:
        """Commit the round's writes so far and make every commit durable."""
        ...

    def close(self) -> None:
        """Write pending stamps and let go of the store; then every other method raises
        StorageFault, and ``close`` does nothing."""
        ...

    # clients
    def client_by_id(self, client_id: bytes) -> ClientRow | None: ...
    def client_and_binding(self, client_id: bytes) -> tuple[ClientRow | None, Binding | None]:
        """The client with this id and its key binding, in one read (what a request checks).

        The binding is what :meth:`binding` returns (a noted use counted); a
        binding belongs to its client: None for both when there is no client.
        """
        ...

    def client_by_name(self, name: str) -> ClientRow | None: ...
    def client_by_name_and_counts(
        self, name: str, group: str
    ) -> tuple[ClientRow | None, tuple[int, int]]:
        """The client with this name, if any, with :meth:`client_counts` of ``group``, in one
        read: what an 825 checks."""
        ...

    def count_clients(self, group: str | None = None) -> int:
        """How many clients are registered, or registered from one address group.

        A number kept with the rows, read in O(1): the store groups the
        registering addresses as server/peer.py does.
        """
        ...

    def client_counts(self, group: str) -> tuple[int, int]:
        """How many clients are registered, and how many from one address group, read
        together (a registration checks both)."""
        ...

    def unused_clients(self, before: float) -> list[bytes]:
        """Clients with a key that never stored a file, their last key issued before ``before``.

        Costs what it returns, not what is kept (it runs at the client cap).
        """
        ...

    def delete_stale_keyless(self, before: float) -> int:
        """Forget keyless registrations last bound before ``before``; return how many.

        Costs what it deletes, not what is kept (it runs at the client cap).
        """
        ...


    def insert_client(
        self, client_id: bytes, name: str, now: float, edition: str, address: str | None = None
    ) -> None:
        """Register a name, keyless, in a protocol edition, from ``address`` (for its share).

        Raises:
            NameTaken: another client holds the name, or the id (nothing is overwritten).
        """
        ...

    def register_if_free(
        self, client_id: bytes, name: str, now: float, edition: str, address: str, group: str,
        room: tuple[int, int],
    ) -> tuple[ClientRow | None, tuple[int, int], bool]:
        """:meth:`insert_client` if no client holds the name and one more client fits
        (:func:`has_room`: the counts below ``room``), in one read with
        :meth:`client_by_name_and_counts` (an 825's usual case): the name's row (None: no
        one's), the counts before, and whether the client was inserted. Not inserted:
        nothing is written (the name held, no room, or the name or id taken meanwhile).
        """
        ...

    def set_edition(self, client_id: bytes, edition: str) -> None: ...
    def set_crc(self, client_id: bytes, flavour: str) -> None: ...

    def delete_client(self, client_id: bytes) -> None: ...

    def forget_client(self, client_id: bytes) -> None:
        """Remove every row of a client (files, binding, the client)."""
        ...

    def set_keys(self, client_id: bytes, public_key: bytes, aes_key: bytes, now: float) -> None: ...
    def set_aes_key(self, client_id: bytes, aes_key: bytes, now: float) -> None: ...
    def note_seen(self, client_id: bytes, now: float) -> None: ...

    # files
    def file_row(self, client_id: bytes, file_name: bytes) -> FileRow | None: ...
    def file_rows(self) -> list[FileRow]: ...
    def stored_bytes(self, client_id: bytes) -> int:
        """The plaintext bytes of the client's stored files, verified or not."""
        ...
    def file_row_and_path_names(
        self, client_id: bytes, file_name: bytes
    ) -> tuple[FileRow | None, list[str]]:
        """The row of one of the client's files, if any, and the path names every row of
        the client points at (what a new one must differ from): one round trip."""
        ...
    def upsert_file(
        self, client_id: bytes, file_name: bytes, path_name: str, blob_key: str | None = None
    ) -> None:
        """Insert or reset a file's row (Verified false, no pending version), pointing at
        ``blob_key``."""
        ...

    def set_pending(self, client_id: bytes, file_name: bytes, blob_key: str | None) -> None:
        """Point the file's pending version at ``blob_key`` (None: no pending version)."""
        ...

    def promote_pending(self, client_id: bytes, file_name: bytes, blob_key: str) -> None:
        """The 900's swap: the file now points at ``blob_key``, and has no pending version."""
        ...

    def set_verified(self, client_id: bytes, file_name: bytes, verified: bool) -> None: ...
    def delete_file(self, client_id: bytes, file_name: bytes) -> None: ...

    def set_content(self, client_id: bytes, file_name: bytes, size: int, cksum: int) -> None:
        """Record the stored content's size and cksum (checked by ``admin verify``)."""
        ...

    def referenced_keys(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that a file row points at (``BlobKey`` or ``PendingKey``).

        Costs what it is asked, not what is kept (the sweeper asks it about
        the blobs it finds, in batches of at most :data:`KEYS_PER_QUERY`).
        """
        ...

    # key bindings
    def binding(self, client_id: bytes) -> Binding | None: ...
    def set_binding(self, client_id: bytes, address: str, now: float) -> None: ...
    def note_key_used(self, client_id: bytes, now: float) -> None: ...


class BlobWriter(Protocol):
    """One upload's content, written once under its own key; nobody reads it until published.

    Every method but :meth:`abort` may raise :class:`~server.errors.StorageFault`.
    """

    #: The upload's blob key (:func:`new_blob_key`).
    key: str
    #: Bytes written so far.
    size: int

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data."""
        ...

    def seal(self) -> None:
        """Make the content durable under its key; no more writes."""
        ...

    def abort(self) -> None:
        """Give the blob up: no more writes, never published; it is garbage (never raises).

        Nothing waits for it to go: a store deletes it at once where that
        costs nothing worth waiting for (a local file), or leaves it to the
        sweeper (server/storage/sweep.py, after its grace period) and to
        start-up repair, as an object store whose delete is a round trip does.
        """
        ...


class BlobReader(Protocol):
    """Reading stored blobs only: what ``admin verify`` opens (it creates nothing)."""

    def open(self, path_name: str) -> BinaryIO:
        """Read a stored blob.

        Raises:
            BlobMissing: nothing is stored under ``path_name``.
            StorageFault: it cannot be read (or is not a blob the store made).
        """
        ...

    def exists(self, path_name: str) -> bool: ...


class BlobStore(BlobReader, Protocol):
    """The received files' content, one namespace per client."""

    #: Whether a write may wait long (a network round trip): the server then
    #: hands an upload's writes to a worker thread (server/blobport.py), with
    #: backpressure. A local folder's writes go to the page cache: False.
    slow_writes: bool
    #: Whether the server holds an upload's content and writes it off the loop thread
    #: in large chunks and at the seal (server/blobport.py ``BufferedWriter``): quick
    #: writes that may still block (a local folder's, under writeback throttling).
    buffered_writes: bool

    def begin(self, client_id: bytes, key: str) -> BlobWriter:
        """Start writing one of the client's uploads under ``key`` (:func:`new_blob_key`)."""
        ...

    def publish(self, key: str, path_name: str) -> None:
        """Make the sealed blob ``key`` what ``path_name`` reads, durably, replacing it.

        Idempotent: publishing a key already published under ``path_name``
        (its writer never aborted since) only makes sure it is durable.

        Raises:
            StorageFault: it could not (whatever ``path_name`` reads is then
                either its old content or the blob; publishing again finishes).
        """
        ...

    def new_path_name(
        self, client_id: bytes, file_name: bytes, key: str, recorded: Collection[str] = ()
    ) -> str:
        """The path name for the first upload of ``file_name``, whose blob is ``key``.

        Distinct from ``recorded`` (the path names the metadata's rows hold
        for the client: :meth:`MetadataStore.file_row_and_path_names`), from what the
        client's stored blobs this store knows of are read by, and from the
        names given to its other uploads not yet published: the store holds
        the name for ``key`` until that blob is published, aborted or
        deleted. A store whose names are behind a network round trip asks
        nothing: the metadata's rows are the truth of what is stored.

        Raises:
            StorageFault: no distinct name is left.
        """
        ...

    def delete(self, path_name: str) -> None:
        """Delete what ``path_name`` reads (absent is fine)."""
        ...

    def room(self) -> int | None:
        """Bytes the store can still take for new blobs; None: unbounded or unknown."""
        ...

    # start-up repair (server.storage.commit)
    def unpublished(self) -> list[UnpublishedBlob]:
        """Every blob written under its key and never published (a crash left it)."""
        ...

    def delete_unpublished(self, blob: UnpublishedBlob) -> None:
        """Delete an unpublished blob no row points at (absent is fine)."""
        ...

    def stored(self) -> list[BlobEntry]:
        """Every stored blob: each path name :meth:`exists` says reads one (repair's one
        listing, in place of a question per row)."""
        ...

    def foreign_entries(self) -> list[BlobEntry]:
        """Entries the server never makes that are in its way."""
        ...

    def quarantine(self, entry: BlobEntry) -> str:
        """Move an entry out of the way, as it is; return where it went."""
        ...

    # deleting a client (server.storage.commit.remove_client)
    def begin_removal(self, client_id: bytes) -> None:
        """Take every blob of the client out of the store in one atomic, durable step."""
        ...

    def pending_removals(self) -> list[bytes]:
        """The clients whose removal began and has not finished."""
        ...

    def finish_removal(self, client_id: bytes) -> None:
        """Delete what :meth:`begin_removal` took out."""
        ...
