"""The upload fence: an upload's completion is recorded only while its node holds its lease.

An upload's lease (server/storage/postgres/coordination.py) lives on the
coordination's connection; the row that makes the upload's content the
file's (or its pending version) is written on the metadata store's. When
the coordination's connection alone breaks, the node's leases are void at
once, and another node may take one over and complete the same client and
file name while this node still receives it. So the request that completes
an upload queues :data:`STATEMENT` first in its transaction (the round's, on
the store's connection, with the read that follows it: no round trip of its
own): it deletes the lease's row if it still names this node and this
upload's blob, and fails if it does not. The delete locks that row until
the round commits or rolls back, so that no node takes the lease over
meanwhile (a take is an ``UPDATE`` of the row, which waits for the lock),
and the lease is let go with the round's commit, in its transaction: no
message of the coordination's to release it. A round rolled back keeps the
row (this node's): the coordination releases it then, as before
(server/upload.py ``round_over``). Plain SQL has no ``RAISE``: the failure
is a cast of :data:`LEASE_LOST` to a number, whose error :func:`refused`
recognises.
"""

from __future__ import annotations

from typing import Any

from ...errors import LeaseLost

#: The text the fence fails on (in the database's error message).
LEASE_LOST = "upload lease lost"
#: SQLSTATE invalid_text_representation: the cast of :data:`LEASE_LOST` failed.
_CAST_FAILED = "22P02"
#: The fence, its placeholders the lease's kind, key, node and blob key.
STATEMENT = (
    "WITH released AS (DELETE FROM coordination_leases"
    " WHERE kind = %s AND key = %s AND node = %s AND blob = %s RETURNING 1)"
    f" SELECT (CASE WHEN EXISTS (SELECT 1 FROM released) THEN '0' ELSE '{LEASE_LOST}' END)::int"
)
#: Its parameters' types (it is prepared once per connection: server/storage/postgres/store.py).
PARAMETER_TYPES = ("text", "bytea", "text", "text")


def refused(exc: Any) -> bool:
    """Whether a statement's failure (a ``psycopg.Error``) is the fence's refusal."""
    message = getattr(getattr(exc, "diag", None), "message_primary", None) or ""
    return getattr(exc, "sqlstate", None) == _CAST_FAILED and LEASE_LOST in message


def lease_lost() -> LeaseLost:
    """The refusal's error, for the request that completed the upload."""
    return LeaseLost(
        "this node no longer holds the upload's lease (another node may have taken it over):"
        " the upload is not recorded"
    )
