"""The two stores in memory: the reference for the contract, and the tests' stores.

:class:`MemoryMetadata` and :class:`MemoryBlobs` do what
:class:`~server.storage.base.MetadataStore` and
:class:`~server.storage.base.BlobStore` promise, with nothing kept past the
process: each request's writes undo together, a round ends with
:meth:`MemoryMetadata.begin_round_commit` (done at once), a taken name raises
:class:`~server.errors.NameTaken`, client counts are kept with the rows.
tests/storage/ runs the same contract cases on them and on SQLite and the
folder, and tests/server/test_session.py runs the session on them.

Not in the factory's tables: a server whose files vanish at its stop would
tell its clients they were stored. They live here rather than under tests/
so that mypy checks them against the interfaces with the rest of the server.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Collection, Iterator

from ..errors import BlobMissing, NameTaken, StorageFault
from ..peer import address_group
from .base import (
    BlobEntry, Binding, ClientRow, FileRow, UnpublishedBlob, file_row_and_path_names,
    is_blob_key, register_if_free_in_steps, timestamp,
)

if TYPE_CHECKING:
    from .base import BlobStore, BlobWriter, MetadataStore
from .names import unique_stored_name

#: Where the memory store says its blobs are (a path name's first part).
MEMORY_ROOT = "memory"
#: How much a MemoryBlobs holds unless told otherwise.
DEFAULT_CAPACITY = 1 << 40
_ASIDE = ".orphaned"


@dataclass(frozen=True)
class _Client:
    row: ClientRow
    #: When its unused time began; None once it stored a file (SQLite's UnusedSince).
    unused_since: float | None


@dataclass(frozen=True)
class _File:
    row: FileRow
    size: int | None = None
    cksum: int | None = None


#: One undo step: a table, a key, and what was there (None: nothing).
_Undo = tuple[dict, object, object]


class MemoryMetadata:
    """Clients, bindings and files in dicts (a :class:`MetadataStore`).

    A request's :meth:`transaction` keeps an undo log: an exception rolls
    back its writes only, nested ones with it; a write outside a
    transaction stays, as SQLite's autocommit does.
    """

    def __init__(self, group_of: Callable[[str], str] = address_group) -> None:
        self._group_of = group_of
        self._clients: dict[bytes, _Client] = {}
        self._names: dict[str, bytes] = {}
        self._files: dict[tuple[bytes, bytes], _File] = {}
        self._bindings: dict[bytes, Binding] = {}
        #: The client counts kept with the rows: in all, and per address group.
        self._total = 0
        self._groups: dict[str, int] = {}
        #: How many row pointers (BlobKey, PendingKey) name each blob key, kept with the rows.
        self._pointers: dict[str, int] = {}
        self._seen: dict[bytes, float] = {}
        self._used: dict[bytes, float] = {}
        #: The undo logs of the open transactions, innermost last.
        self._undo: list[list[_Undo]] = []
        #: Writes since the last finish_round or sync (what a commit would write).
        self.round_writes = 0
        self.closed = False

    # -- writing, with undo ------------------------------------------------------

    def _set(self, table: dict, key: object, value: object) -> None:
        """Put (or with None, delete) one row, logging how to undo it."""
        old = table.get(key)
        if self._undo:
            self._undo[-1].append((table, key, old))
        self._apply(table, key, value)
        self.round_writes += 1

    def _apply(self, table: dict, key: object, value: object) -> None:
        old = table.get(key)
        if table is self._clients:  # the counts and the name index follow the rows
            if isinstance(old, _Client):
                self._count(old.row, -1)
                del self._names[old.row.name]
            if isinstance(value, _Client):
                self._count(value.row, 1)
                self._names[value.row.name] = value.row.id
        if table is self._files:  # so does the pointer index
            if isinstance(old, _File):
                self._point(old.row, -1)
            if isinstance(value, _File):
                self._point(value.row, 1)
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value

    def _point(self, row: FileRow, step: int) -> None:
        for key in (row.blob_key, row.pending_key):
            if key is not None:
                count = self._pointers.get(key, 0) + step
                if count > 0:
                    self._pointers[key] = count
                else:
                    self._pointers.pop(key, None)

    def _count(self, row: ClientRow, step: int) -> None:
        self._total += step
        if row.registered_from is not None:
            group = self._group_of(row.registered_from)
            count = self._groups.get(group, 0) + step
            if count > 0:
                self._groups[group] = count
            else:
                self._groups.pop(group, None)

    def _update_client(self, client_id: bytes, **changes: Any) -> None:
        found = self._clients.get(client_id)
        if found is not None:
            self._set(self._clients, client_id, replace(found, row=replace(found.row, **changes)))

    def _update_file(self, client_id: bytes, file_name: bytes, **changes: Any) -> None:
        key = (client_id, file_name)
        found = self._files.get(key)
        if found is not None:
            self._set(self._files, key, replace(found, **changes))

    def _set_unused_since(self, client_id: bytes, when: float | None) -> None:
        found = self._clients.get(client_id)
        if found is not None and found.unused_since is not None:
            self._set(self._clients, client_id, replace(found, unused_since=when))

    # -- transactions and rounds -------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A request's writes: all kept, or all undone on any exception."""
        self._check_open()
        self._undo.append([])
        try:
            yield
            self._write_pending()
        except BaseException:
            for table, key, old in reversed(self._undo.pop()):
                self._apply(table, key, old)
            raise
        done = self._undo.pop()
        if self._undo:  # an outer transaction that fails undoes this one too
            self._undo[-1].extend(done)
        self._seen.clear()
        self._used.clear()

    def _write_pending(self) -> None:
        for client_id, when in self._seen.items():
            self._update_client(client_id, last_seen=timestamp(when))
        for client_id, when in self._used.items():
            found = self._bindings.get(client_id)
            if found is not None and found.last_used < when:
                self._set(self._bindings, client_id, replace(found, last_used=when))

    def flush(self) -> None:
        """Write pending stamps, if any."""
        if self._seen or self._used:
            with self.transaction():
                pass

    def begin_round_commit(self, *, durable: bool) -> None:
        """The round's writes are kept (memory has nothing to make durable): done at once."""
        self._check_open()
        self.round_writes = 0

    def finish_round(self, *, durable: bool) -> None:
        """As :meth:`begin_round_commit`."""
        self.begin_round_commit(durable=durable)

    def sync(self) -> None:
        """As :meth:`finish_round`: the writes so far are kept."""
        self._check_open()
        self.round_writes = 0

    def close(self) -> None:
        """Write pending stamps; then every call raises StorageFault."""
        if not self.closed:
            self.flush()
            self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise StorageFault("database: closed")

    # -- clients -------------------------------------------------------------------

    def client_by_id(self, client_id: bytes) -> ClientRow | None:
        """The client with this id, if any."""
        self._check_open()
        found = self._clients.get(client_id)
        return None if found is None else found.row

    def client_and_binding(self, client_id: bytes) -> tuple[ClientRow | None, Binding | None]:
        """The client with this id and its binding (None for both without a client)."""
        client = self.client_by_id(client_id)
        return client, None if client is None else self.binding(client_id)

    def client_by_name(self, name: str) -> ClientRow | None:
        """The client with this name, if any."""
        self._check_open()
        client_id = self._names.get(name)
        return None if client_id is None else self._clients[client_id].row

    def client_by_name_and_counts(
        self, name: str, group: str
    ) -> tuple[ClientRow | None, tuple[int, int]]:
        """The client with this name, and the counts."""
        return self.client_by_name(name), self.client_counts(group)

    def count_clients(self, group: str | None = None) -> int:
        """How many clients, in all or from one address group: kept with the rows."""
        self._check_open()
        return self._total if group is None else self._groups.get(group, 0)

    def client_counts(self, group: str) -> tuple[int, int]:
        """How many clients, in all and from one address group."""
        return self.count_clients(), self.count_clients(group)

    def unused_clients(self, before: float) -> list[bytes]:
        """Clients with a key that never stored a file, unused since before ``before``."""
        return [
            client_id for client_id, found in self._clients.items()
            if found.row.public_key is not None
            and found.unused_since is not None and found.unused_since < before
        ]

    def delete_stale_keyless(self, before: float) -> int:
        """Forget keyless registrations made (or made again) before ``before``; how many."""
        stale = [
            client_id for client_id, found in self._clients.items()
            if found.row.public_key is None
            and found.unused_since is not None and found.unused_since < before
        ]
        for client_id in stale:
            self.delete_client(client_id)
        return len(stale)

    def insert_client(
        self, client_id: bytes, name: str, now: float, edition: str, address: str | None = None
    ) -> None:
        """Register a name, keyless, in an edition, from ``address``.

        Raises:
            NameTaken: another client holds the name (or the id is taken).
        """
        self._check_open()
        if name in self._names or client_id in self._clients:
            raise NameTaken(name)
        row = ClientRow(
            id=client_id, name=name, public_key=None, last_seen=timestamp(now), aes_key=None,
            edition=edition, registered_from=address,
        )
        self._set(self._clients, client_id, _Client(row, unused_since=now))

    #: Register the name if it is free and there is room (a read, then the insert).
    register_if_free = register_if_free_in_steps

    def set_edition(self, client_id: bytes, edition: str) -> None:
        """The edition the client's requests turned out to be."""
        self._update_client(client_id, edition=edition)

    def set_crc(self, client_id: bytes, flavour: str) -> None:
        """The CRC flavour the client confirmed."""
        self._update_client(client_id, crc=flavour)

    def delete_client(self, client_id: bytes) -> None:
        """Forget a client row and its binding (not its files)."""
        self._check_open()
        if client_id in self._clients:
            self._set(self._clients, client_id, None)
        if client_id in self._bindings:
            self._set(self._bindings, client_id, None)

    def forget_client(self, client_id: bytes) -> None:
        """Remove every row of a client: its files, its binding, itself."""
        for key in [key for key in self._files if key[0] == client_id]:
            self._set(self._files, key, None)
        self.delete_client(client_id)

    def set_keys(self, client_id: bytes, public_key: bytes, aes_key: bytes, now: float) -> None:
        """Store the public key and the first AES key (826)."""
        self._update_client(
            client_id, public_key=public_key, aes_key=aes_key, last_seen=timestamp(now)
        )

    def set_aes_key(self, client_id: bytes, aes_key: bytes, now: float) -> None:
        """Store a fresh AES key (827)."""
        self._update_client(client_id, aes_key=aes_key, last_seen=timestamp(now))

    def note_seen(self, client_id: bytes, now: float) -> None:
        """Record a request's time; written with the next transaction or flush."""
        self._seen[client_id] = now

    # -- files ---------------------------------------------------------------------

    def file_row(self, client_id: bytes, file_name: bytes) -> FileRow | None:
        """The row of one of the client's files, if any."""
        self._check_open()
        found = self._files.get((client_id, bytes(file_name)))
        return None if found is None else found.row

    def file_rows(self) -> list[FileRow]:
        """Every file row."""
        self._check_open()
        return [found.row for found in self._files.values()]

    def stored_bytes(self, client_id: bytes) -> int:
        """The recorded size of every file the client has, verified or not."""
        return sum(
            found.size or 0 for key, found in self._files.items() if key[0] == client_id
        )

    def file_row_and_path_names(
        self, client_id: bytes, file_name: bytes
    ) -> tuple[FileRow | None, list[str]]:
        """The file's row, if any, and the path names the client's rows point at."""
        self._check_open()
        rows = [found.row for key, found in self._files.items() if key[0] == client_id]
        return file_row_and_path_names(rows, file_name)

    def upsert_file(
        self, client_id: bytes, file_name: bytes, path_name: str, blob_key: str | None = None
    ) -> None:
        """Insert or reset a file's row (unverified, no pending version; size and cksum
        kept); the client is used."""
        self._check_open()
        key = (client_id, bytes(file_name))
        row = FileRow(id=client_id, file_name=bytes(file_name), path_name=path_name,
                      verified=False, blob_key=blob_key)
        found = self._files.get(key)
        self._set(self._files, key, _File(row) if found is None else replace(found, row=row))
        self._set_unused_since(client_id, None)

    def set_verified(self, client_id: bytes, file_name: bytes, verified: bool) -> None:
        """Set a file's Verified flag."""
        found = self._files.get((client_id, bytes(file_name)))
        if found is not None:
            self._update_file(client_id, bytes(file_name),
                              row=replace(found.row, verified=verified))

    def set_pending(self, client_id: bytes, file_name: bytes, blob_key: str | None) -> None:
        """Point the file's pending version at ``blob_key`` (None: none)."""
        found = self._files.get((client_id, bytes(file_name)))
        if found is not None:
            self._update_file(client_id, bytes(file_name),
                              row=replace(found.row, pending_key=blob_key))

    def promote_pending(self, client_id: bytes, file_name: bytes, blob_key: str) -> None:
        """The file points at ``blob_key`` and has no pending version."""
        found = self._files.get((client_id, bytes(file_name)))
        if found is not None:
            self._update_file(client_id, bytes(file_name),
                              row=replace(found.row, blob_key=blob_key, pending_key=None))

    def set_content(self, client_id: bytes, file_name: bytes, size: int, cksum: int) -> None:
        """Record the size and cksum of a file's content."""
        self._update_file(client_id, bytes(file_name), size=size, cksum=cksum)

    def referenced_keys(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` a row points at (an index kept with the rows)."""
        self._check_open()
        return {key for key in keys if self._pointers.get(key)}

    def delete_file(self, client_id: bytes, file_name: bytes) -> None:
        """Remove a file's row."""
        if (client_id, bytes(file_name)) in self._files:
            self._set(self._files, (client_id, bytes(file_name)), None)

    def content(self, client_id: bytes, file_name: bytes) -> tuple[int | None, int | None]:
        """The recorded (size, cksum) of a file, for tests (``admin verify`` reads SQLite's)."""
        found = self._files[(client_id, bytes(file_name))]
        return found.size, found.cksum

    # -- key bindings --------------------------------------------------------------

    def binding(self, client_id: bytes) -> Binding | None:
        """Who may use the client's key, and since when (a pending use counts)."""
        self._check_open()
        found = self._bindings.get(client_id)
        if found is None:
            return None
        return replace(found, last_used=max(found.last_used, self._used.get(client_id, 0.0)))

    def set_binding(self, client_id: bytes, address: str, now: float) -> None:
        """Bind the client's key (or registration) to an address from now."""
        self._check_open()
        self._set(self._bindings, client_id, Binding(client_id, address, now, now))
        self._set_unused_since(client_id, now)
        self._used.pop(client_id, None)

    def note_key_used(self, client_id: bytes, now: float) -> None:
        """Record a use of the key; written with the next transaction or flush."""
        self._used[client_id] = now


class MemoryWriter:
    """An upload being written under its key, in memory (a :class:`BlobWriter`)."""

    def __init__(self, store: MemoryBlobs, client_id: bytes, key: str) -> None:
        self._store = store
        self.client_id = client_id
        self.key = key
        self._content = bytearray()
        self.size = 0
        self.sealed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data.

        Raises:
            StorageFault: after :meth:`seal` or :meth:`abort`, or past the store's capacity.
        """
        if self.sealed or self.aborted:
            raise StorageFault("cannot write a received file: it is closed")
        room = self._store.room()
        if room is not None and len(data) > room:
            raise StorageFault("cannot write a received file: No space left on device")
        self._content += data
        self.size += len(data)

    def seal(self) -> None:
        """No more writes.

        Raises:
            StorageFault: aborted already.
        """
        if self.aborted:
            raise StorageFault("cannot sync a received file: it is discarded")
        self.sealed = True

    def abort(self) -> None:
        """Give the blob up; it stays, garbage, until the sweeper deletes it (never raises).

        As an object store's would: deleting is left to the sweeper, so that
        the contract and the session are tested with garbage that outlives
        its upload.
        """
        self.aborted = True
        self._store.named.pop(self.key, None)

    @property
    def content(self) -> bytes:
        """What was written (for tests)."""
        return bytes(self._content)


class MemoryBlobs:
    """Blobs in a dict by path name ``memory/<client-id-hex>/<stored name>`` (a :class:`BlobStore`).

    ``capacity`` bounds what it holds (stored and being written), so that
    :meth:`room` and a full store can be tested; None: unbounded.
    """

    #: Set it to have the server write through its blob port (server/blobport.py).
    slow_writes = False
    buffered_writes = False

    def __init__(self, capacity: int | None = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.blobs: dict[str, bytes] = {}
        #: Uploads written under their keys and not published, by key.
        self.writers: dict[str, MemoryWriter] = {}
        #: The stored names given to uploads not yet published: key -> (client, name).
        self.named: dict[str, tuple[bytes, str]] = {}
        #: Blobs set aside by start-up repair, by where they went.
        self.aside: dict[str, bytes] = {}
        #: Clients whose removal began: their blobs, taken out.
        self._removing: dict[bytes, dict[str, bytes]] = {}

    @staticmethod
    def owner(path_name: str) -> bytes | None:
        """The client whose namespace ``path_name`` is in, if it is one of this store's."""
        parts = path_name.split("/")
        if len(parts) != 3 or parts[0] != MEMORY_ROOT or not parts[2]:
            return None
        try:
            return bytes.fromhex(parts[1])
        except ValueError:
            return None

    def begin(self, client_id: bytes, key: str) -> MemoryWriter:
        """Start writing one of the client's uploads under ``key``.

        Raises:
            StorageFault: the key is taken or malformed.
        """
        if not is_blob_key(key) or key in self.writers:
            raise StorageFault(f"{key} is not a fresh blob key")
        writer = MemoryWriter(self, client_id, key)
        self.writers[key] = writer
        return writer

    def publish(self, key: str, path_name: str) -> None:
        """The sealed blob ``key`` becomes what ``path_name`` reads (again: nothing to do).

        Raises:
            StorageFault: ``path_name`` is not the writer's client's, the blob
                is not sealed or was aborted, or neither it nor ``path_name`` is there.
        """
        writer = self.writers.get(key)
        if writer is None:
            if path_name in self.blobs:
                return
            raise StorageFault(f"cannot install a received file: no blob {key}")
        if writer.aborted:
            raise StorageFault(f"cannot install a received file: {key} was given up")
        if self.owner(path_name) != writer.client_id:
            raise StorageFault(f"{path_name} is not a stored file of {writer.client_id.hex()}")
        if not writer.sealed:
            raise StorageFault(f"cannot install a received file: {key} is not sealed")
        self.blobs[path_name] = writer.content
        del self.writers[key]
        self.named.pop(key, None)

    def new_path_name(
        self, client_id: bytes, file_name: bytes, key: str, recorded: Collection[str] = ()
    ) -> str:
        """A safe stored name for ``file_name``, held for ``key`` until it is published.

        Distinct, even ignoring case, from ``recorded``, the client's stored
        blobs and the names given to its other uploads not yet published.

        Raises:
            StorageFault: no distinct name is left.
        """
        stored = [_entry(path_name).name for path_name in [*self.blobs, *recorded]
                  if self.owner(path_name) == client_id]
        held = [name for owner, name in self.named.values() if owner == client_id]
        name = unique_stored_name(file_name, [*stored, *held])
        self.named[key] = (client_id, name)
        return f"{MEMORY_ROOT}/{client_id.hex()}/{name}"

    def open(self, path_name: str) -> BinaryIO:
        """Read a stored blob.

        Raises:
            BlobMissing: nothing is stored under it.
        """
        if path_name not in self.blobs:
            raise BlobMissing("no such file")
        return io.BytesIO(self.blobs[path_name])

    def exists(self, path_name: str) -> bool:
        """Whether a blob is stored under ``path_name``."""
        return path_name in self.blobs

    def delete(self, path_name: str) -> None:
        """Delete a stored blob (absent is fine)."""
        self.blobs.pop(path_name, None)

    def room(self) -> int | None:
        """The capacity less what is stored, being written, or aborted and not yet swept
        (a worker thread may ask)."""
        if self.capacity is None:
            return None
        held = sum(map(len, list(self.blobs.values()))) + sum(
            writer.size for writer in list(self.writers.values())
        )
        return max(0, self.capacity - held)

    def unpublished(self) -> list[UnpublishedBlob]:
        """Every blob written under its key and not published (aborted ones included)."""
        return [UnpublishedBlob(writer.client_id, key) for key, writer in self.writers.items()]

    def delete_unpublished(self, blob: UnpublishedBlob) -> None:
        """Forget an unpublished blob (absent is fine)."""
        self.writers.pop(blob.key, None)
        self.named.pop(blob.key, None)

    def stored(self) -> list[BlobEntry]:
        """Every stored blob."""
        return [_entry(path_name) for path_name in self.blobs]

    def foreign_entries(self) -> list[BlobEntry]:
        """Nothing: only the store writes here."""
        return []

    def quarantine(self, entry: BlobEntry) -> str:
        """Move a blob aside; where it went.

        Raises:
            StorageFault: there is no such blob.
        """
        if entry.path_name not in self.blobs:
            raise StorageFault(f"{entry.path_name}: no such blob")
        target = f"{_ASIDE}/{entry.path_name}"
        self.aside[target] = self.blobs.pop(entry.path_name)
        return target

    def begin_removal(self, client_id: bytes) -> None:
        """Take every blob of the client out, at once."""
        taken = {
            path_name: content for path_name, content in self.blobs.items()
            if self.owner(path_name) == client_id
        }
        for path_name in taken:
            del self.blobs[path_name]
        self._removing.setdefault(client_id, {}).update(taken)

    def pending_removals(self) -> list[bytes]:
        """The clients whose removal began and has not finished."""
        return list(self._removing)

    def finish_removal(self, client_id: bytes) -> None:
        """Delete what :meth:`begin_removal` took out."""
        self._removing.pop(client_id, None)


def _entry(path_name: str) -> BlobEntry:
    _, client_hex, name = path_name.split("/")
    return BlobEntry(owner=client_hex, name=name, path_name=path_name)


if TYPE_CHECKING:  # mypy checks them against the interfaces
    _METADATA: MetadataStore = MemoryMetadata()
    _BLOBS: BlobStore = MemoryBlobs()
    _WRITER: BlobWriter = MemoryWriter(MemoryBlobs(), b"", "")
