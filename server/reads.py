"""A request's reads of its client, made once: the metadata store with a per-request cache.

Every request that names a client reads its row and its binding where it
needs them: the session's admission (Rule 7 and Rule 6 of
server/session.py), its handler (the key it uses, server/handlers.py), an
upload's first packet (the CRC the client confirmed, server/upload.py).
:class:`RequestReads` stands in front of the metadata store and, inside
:meth:`RequestReads.request`, answers each repeated read of a client's row or
binding from what the first one read, so a request costs one read of each
whatever asks for it.

The rule that keeps it true:

* The cache lives only inside one :meth:`~RequestReads.request`, which the
  session opens around one event it handles: it never outlives the step,
  and the loop runs no other connection's step meanwhile. Outside a
  request, every read goes to the store.
* Every write goes through here and drops what it may change: a write to a
  client drops its row and binding, a new binding the binding, a write whose
  clients are not named (lapsed registrations) and a transaction that failed
  (its writes are undone) everything. A noted key use raises the cached
  binding's ``last_used``, as the stores'
  :meth:`~server.storage.base.MetadataStore.binding` counts a pending one;
  a noted request time changes no row the stores return before it is
  written.
* A name is answered from the cache only by a row read in this request:
  names move only by a delete and an insert, which drop the rows they touch.

Where the store can read a client's failure counts with its row (PostgreSQL,
the coordination's tables in the same database: ``read_along``), the read
brings them too, and the budget's first question in the request
(:meth:`RequestReads.failure_counts`, under the key the row holds) is
answered from them, once: a request that checks the budget makes one
round trip fewer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Collection, Iterator

from .storage import Binding, ClientRow, FileRow, MetadataStore, RoundCommit
from .storage.coordination import ClientReadWithFailures, FailureCounts
from .storage.base import DurableStep


class RequestReads:
    """The metadata store, with the client rows and bindings one request reads kept for it.

    It is itself a :class:`~server.storage.base.MetadataStore`: everything is
    the wrapped store's, but the repeated reads of :meth:`request`.
    """

    def __init__(
        self, store: MetadataStore, read_with_failures: ClientReadWithFailures | None = None
    ) -> None:
        """``read_with_failures``: the store's read of a client that brings its failure
        counts too (the coordination's ``read_along``), if it has one."""
        self.store = store
        self._read_with_failures = read_with_failures
        self._active = False
        self._clients: dict[bytes, ClientRow | None] = {}
        self._bindings: dict[bytes, Binding | None] = {}
        #: The failure counts read with a client, under its row's key, until asked once.
        self._failures: dict[bytes, FailureCounts] = {}

    @contextmanager
    def request(self) -> Iterator[None]:
        """One request's step: a client's row and binding are read once inside."""
        outer = self._active
        self._active = True
        try:
            yield
        finally:
            self._active = outer
            if not outer:
                self._forget_all()

    def _forget_all(self) -> None:
        self._clients.clear()
        self._bindings.clear()
        self._failures.clear()

    def _forget(self, client_id: bytes) -> None:
        """A write to the client: its row and binding are read again."""
        self._clients.pop(client_id, None)
        self._bindings.pop(client_id, None)
        self._failures.pop(client_id, None)

    # -- transactions ----------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The store's transaction; a failed one drops every cached read (its writes are undone)."""
        try:
            with self.store.transaction():
                yield
        except BaseException:
            self._forget_all()
            raise

    def flush(self) -> None:
        self.store.flush()

    def begin_round_commit(self, *, durable: bool) -> RoundCommit | DurableStep | None:
        return self.store.begin_round_commit(durable=durable)

    def finish_round(self, *, durable: bool) -> None:
        self.store.finish_round(durable=durable)

    def sync(self) -> None:
        self.store.sync()

    def close(self) -> None:
        self._forget_all()
        self.store.close()

    # -- clients -----------------------------------------------------------------------

    def client_by_id(self, client_id: bytes) -> ClientRow | None:
        """The client with this id, if any (read once per request, with its binding)."""
        if not self._active:
            return self.store.client_by_id(client_id)
        self._read(client_id)
        return self._clients[client_id]

    def client_and_binding(self, client_id: bytes) -> tuple[ClientRow | None, Binding | None]:
        """The client and its binding (read once per request)."""
        if not self._active:
            return self.store.client_and_binding(client_id)
        self._read(client_id)
        return self._clients[client_id], self._bindings[client_id]

    def _read(self, client_id: bytes) -> None:
        """Inside a request: the client's row and binding are cached, read in one call."""
        if client_id in self._clients and client_id in self._bindings:
            return
        if self._read_with_failures is None:
            self._clients[client_id], self._bindings[client_id] = (
                self.store.client_and_binding(client_id)
            )
            return
        client, self._bindings[client_id], counts = self._read_with_failures(client_id)
        self._clients[client_id] = client
        if counts is not None:
            self._failures[client_id] = counts

    def failure_counts(self, client_id: bytes, aes_key: bytes) -> FailureCounts | None:
        """The client's failure counts under ``aes_key``, as read with its row in this
        request, if they were and the row holds that key; once (then: None, ask the
        coordination)."""
        counts = self._failures.pop(client_id, None)
        client = self._clients.get(client_id)
        if not self._active or counts is None or client is None or client.aes_key != aes_key:
            return None
        return counts

    def client_by_name(self, name: str) -> ClientRow | None:
        """The client with this name, if any (a row this request read, if it has the name)."""
        if not self._active:
            return self.store.client_by_name(name)
        for client in self._clients.values():
            if client is not None and client.name == name:
                return client
        client = self.store.client_by_name(name)
        if client is not None:
            self._clients[client.id] = client
        return client

    def client_by_name_and_counts(
        self, name: str, group: str
    ) -> tuple[ClientRow | None, tuple[int, int]]:
        """The client with this name (kept for the request, as :meth:`client_by_name`'s),
        and the counts, in one read of the store."""
        client, counts = self.store.client_by_name_and_counts(name, group)
        if self._active and client is not None:
            self._clients[client.id] = client
        return client, counts

    def count_clients(self, group: str | None = None) -> int:
        return self.store.count_clients(group)

    def client_counts(self, group: str) -> tuple[int, int]:
        return self.store.client_counts(group)

    def unused_clients(self, before: float) -> list[bytes]:
        return self.store.unused_clients(before)

    def delete_stale_keyless(self, before: float) -> int:
        self._forget_all()
        return self.store.delete_stale_keyless(before)

    def insert_client(
        self, client_id: bytes, name: str, now: float, edition: str, address: str | None = None
    ) -> None:
        self._forget(client_id)
        self.store.insert_client(client_id, name, now, edition, address)

    def register_if_free(
        self, client_id: bytes, name: str, now: float, edition: str, address: str, group: str,
        room: tuple[int, int],
    ) -> tuple[ClientRow | None, tuple[int, int], bool]:
        """The store's, the name's row kept for the request (as :meth:`client_by_name`'s)."""
        self._forget(client_id)
        found, counts, inserted = self.store.register_if_free(
            client_id, name, now, edition, address, group, room
        )
        if self._active and found is not None:
            self._clients[found.id] = found
        return found, counts, inserted

    def set_edition(self, client_id: bytes, edition: str) -> None:
        self._forget(client_id)
        self.store.set_edition(client_id, edition)

    def set_crc(self, client_id: bytes, flavour: str) -> None:
        self._forget(client_id)
        self.store.set_crc(client_id, flavour)

    def delete_client(self, client_id: bytes) -> None:
        self._forget(client_id)
        self.store.delete_client(client_id)

    def forget_client(self, client_id: bytes) -> None:
        self._forget(client_id)
        self.store.forget_client(client_id)

    def set_keys(self, client_id: bytes, public_key: bytes, aes_key: bytes, now: float) -> None:
        self._forget(client_id)
        self.store.set_keys(client_id, public_key, aes_key, now)

    def set_aes_key(self, client_id: bytes, aes_key: bytes, now: float) -> None:
        self._forget(client_id)
        self.store.set_aes_key(client_id, aes_key, now)

    def note_seen(self, client_id: bytes, now: float) -> None:
        """A stamp: the row the store returns is the same until it is written."""
        self.store.note_seen(client_id, now)

    # -- files ---------------------------------------------------------------------------

    def file_row(self, client_id: bytes, file_name: bytes) -> FileRow | None:
        return self.store.file_row(client_id, file_name)

    def file_rows(self) -> list[FileRow]:
        return self.store.file_rows()

    def stored_bytes(self, client_id: bytes) -> int:
        return self.store.stored_bytes(client_id)

    def file_row_and_path_names(
        self, client_id: bytes, file_name: bytes
    ) -> tuple[FileRow | None, list[str]]:
        return self.store.file_row_and_path_names(client_id, file_name)

    def upsert_file(
        self, client_id: bytes, file_name: bytes, path_name: str, blob_key: str | None = None
    ) -> None:
        self.store.upsert_file(client_id, file_name, path_name, blob_key)

    def set_pending(self, client_id: bytes, file_name: bytes, blob_key: str | None) -> None:
        self.store.set_pending(client_id, file_name, blob_key)

    def promote_pending(self, client_id: bytes, file_name: bytes, blob_key: str) -> None:
        self.store.promote_pending(client_id, file_name, blob_key)

    def set_verified(self, client_id: bytes, file_name: bytes, verified: bool) -> None:
        self.store.set_verified(client_id, file_name, verified)

    def delete_file(self, client_id: bytes, file_name: bytes) -> None:
        self.store.delete_file(client_id, file_name)

    def set_content(self, client_id: bytes, file_name: bytes, size: int, cksum: int) -> None:
        self.store.set_content(client_id, file_name, size, cksum)

    def referenced_keys(self, keys: Collection[str]) -> set[str]:
        return self.store.referenced_keys(keys)

    # -- key bindings ------------------------------------------------------------------

    def binding(self, client_id: bytes) -> Binding | None:
        """Who may use the client's key, and since when (read once per request)."""
        if not self._active:
            return self.store.binding(client_id)
        self._read(client_id)
        return self._bindings[client_id]

    def set_binding(self, client_id: bytes, address: str, now: float) -> None:
        self._bindings.pop(client_id, None)
        self.store.set_binding(client_id, address, now)

    def note_key_used(self, client_id: bytes, now: float) -> None:
        """A stamp the store's binding counts at once: so does the cached one."""
        self.store.note_key_used(client_id, now)
        cached = self._bindings.get(client_id)
        if cached is not None:
            self._bindings[client_id] = replace(cached, last_used=max(cached.last_used, now))
