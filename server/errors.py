"""The server's exceptions, in one tree.

::

    ServerError                 what the server raises on purpose
    ├── Refusal                 a request the server will not honour: the answer
    │   │                       is ``response_code`` (1607, or 1601 where the
    │   │                       protocol names it); ``close`` ends the connection
    │   └── NoRoom              an upload the disk has no room for: the
    │                           operator's concern too (logged at WARNING)
    ├── StorageFault            a store failed (disk full, I/O error, database
    │   │                       locked or read-only): 1607, the connection stays,
    │   │                       the client may retry
    │   └── StoreUnusable       at start-up: the metadata or the blob store
    │                           cannot be used at all; the server does not start
    ├── NameTaken               the metadata store holds the name already; the
    │                           handlers turn it into the protocol's refusal
    ├── LockError               at start-up: another server holds the data
    │                           folder, or it cannot be locked
    └── InternalFault           a rule of our own broken (a bug): 1607, the
        │                       connection closes, logged with its traceback
        └── IllegalTransition   an upload asked to make a move that the table
                                of its phases does not list (server/phases.py)

The protocol package's :class:`~protocol.RemoteProtocolError` (the peer broke
the contract while we decoded its bytes) carries the same two facts as a
:class:`Refusal`, a response code and a close flag, and is answered the same
way. Any other exception that reaches a connection is treated as an
:class:`InternalFault`.

One place turns each of these into an answer: :meth:`server.session.Session`
(``_refuse`` and ``fail``). Only the loop's per-connection boundary catches
``Exception`` (server/loop.py).
"""

from __future__ import annotations

from protocol import ResponseCode


class ServerError(Exception):
    """Base of every error the server raises on purpose."""


class Refusal(ServerError):
    """A request the server will not honour; it is answered, not logged as a fault."""

    def __init__(
        self,
        message: str,
        *,
        response_code: ResponseCode = ResponseCode.GENERAL_ERROR,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.response_code = response_code
        self.close = close


class NoRoom(Refusal):
    """An upload refused because the disk lacks room for it (``--min-free-disk``).

    The peer did nothing wrong: the operator must hear of it, so it is logged
    at WARNING (within the address's log budget), with the figures.
    """


class StorageFault(ServerError):
    """A store could not do what was asked (disk full, I/O, a lock, read-only)."""


class DurabilityLost(StorageFault):
    """An fsync of the database failed: what it held may never reach the disk.

    Linux may drop the pages of a failed fsync, so a later fsync that works
    proves nothing about them, nor about the commits after them (a
    write-ahead log's recovery stops at its first bad frame). Nothing may be
    answered on that database again: the server stops, and a restart
    recovers from what is on disk.
    """


class LeaseLost(StorageFault):
    """An upload's completion is refused: this node no longer holds the upload's lease
    (with several nodes: another may have taken it over), so it records nothing."""


class StoreUnusable(StorageFault):
    """At start-up: the metadata or the blob store cannot be used (left untouched)."""


class BlobMissing(StorageFault):
    """A blob store holds nothing under the path name asked for."""


class BadStoreUrl(ValueError):
    """A ``--metadata`` or ``--blobs`` value no store takes; the message says why."""


class NameTaken(ServerError):
    """The metadata store already holds this client name."""


class LockError(ServerError):
    """At start-up: the data folder is another server's, or cannot be locked."""


class InternalFault(ServerError):
    """A rule of the server's own was broken: a bug, never the peer's doing."""


class IllegalTransition(InternalFault):
    """An upload was asked to change phase in a way ``server.phases.TRANSITIONS`` forbids."""
