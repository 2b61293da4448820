"""Connecting to PostgreSQL: the URL the operator gave, checked, and libpq's errors in our words.

The password is never part of the URL (it would show in ``ps`` and in logs):
libpq reads it from ``PGPASSFILE`` (default ``~/.pgpass``) or ``PGPASSWORD``.
No psycopg type leaves this package: its errors become
:class:`~server.errors.StorageFault`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from ...errors import BadStoreUrl, StorageFault, StoreUnusable
from ..urltext import has_password, without_password

if TYPE_CHECKING:
    from .message import PatientConnection

#: What installs the driver, for the refusal when it is missing.
INSTALL_HINT = "pip install 'cipherdrop[postgres]'"
#: Where libpq finds a password, for the refusal of a URL that carries one.
PASSWORD_PLACES = "~/.pgpass (or the file PGPASSFILE names) or PGPASSWORD"
#: Seconds a connection attempt may take (the loop waits for it), unless the URL's
#: ``connect_timeout`` says otherwise (libpq waits forever by default).
CONNECT_TIMEOUT = 5
#: What the store names itself as, in pg_stat_activity.
APPLICATION_NAME = "cipherdrop-server"
#: The client encoding of every connection, whatever the database's (SQL_ASCII under
#: initdb's C locale, LATIN1, ...) or PGCLIENTENCODING: any text a request holds can be
#: sent (the server converts it, or refuses it with an error), and the round's COMMIT,
#: sent as bytes (server/storage/postgres/roundcommit.py), is in the encoding the
#: connection reads.
CLIENT_ENCODING = "UTF8"
#: How both ends notice a peer that vanished without closing (a host gone, a link cut)
#: rather than wait on it forever: TCP keepalives after this many idle seconds, then
#: probes this far apart, this many unanswered ending the connection (25 s in all).
#: On the database's side, that releases a vanished node's advisory locks, so that
#: its name, holds and leases are free again (server/storage/postgres/coordination.py).
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
#: Milliseconds sent data may stay unacknowledged before the connection is given up.
TCP_USER_TIMEOUT_MS = 30_000
#: The database's own keepalive settings for our connections (libpq's ``options``).
SERVER_KEEPALIVES = (
    f"-c tcp_keepalives_idle={KEEPALIVE_IDLE} -c tcp_keepalives_interval={KEEPALIVE_INTERVAL}"
    f" -c tcp_keepalives_count={KEEPALIVE_COUNT}"
)


def liveness(conninfo: str, settings: str = "") -> dict[str, Any]:
    """libpq parameters for a connection of ours: keepalives at both ends unless the URL
    sets its own, and ``options`` = the URL's own, then ours (which win).

    Raises:
        psycopg.ProgrammingError: the URL does not parse.
    """
    import psycopg

    given = psycopg.conninfo.conninfo_to_dict(conninfo)
    ours: dict[str, Any] = {
        "keepalives": 1, "keepalives_idle": KEEPALIVE_IDLE,
        "keepalives_interval": KEEPALIVE_INTERVAL, "keepalives_count": KEEPALIVE_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
    parameters = {name: value for name, value in ours.items() if name not in given}
    parameters["options"] = " ".join(
        filter(None, (str(given.get("options") or ""), SERVER_KEEPALIVES, settings))
    )
    return parameters


def check_no_password(text: str) -> None:
    """Refuse a URL that carries a password (in its user part or as an option).

    Raises:
        BadStoreUrl: the message shows the URL without the password.
    """
    if has_password(text):
        raise BadStoreUrl(
            f"--metadata {without_password(text)}: a password does not belong in the URL"
            f" (it would show in the process list); put it in {PASSWORD_PLACES}"
        )


def driver() -> None:
    """Make sure psycopg is installed.

    Raises:
        StoreUnusable: it is not; the message says how to install it.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise StoreUnusable(f"PostgreSQL needs psycopg: {INSTALL_HINT}") from exc


def connect(conninfo: str) -> PatientConnection:
    """A connection in autocommit mode (the store opens its transactions itself), speaking
    :data:`CLIENT_ENCODING`; its waits for an answer have no deadline until its owner
    gives it a patience (server/storage/postgres/message.py).

    Raises:
        StoreUnusable: the database refuses (unreachable, unknown, denied).
    """
    driver()
    import psycopg

    from .message import PatientConnection

    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        timeout = given.get("connect_timeout", CONNECT_TIMEOUT)
        return PatientConnection.connect(
            conninfo, autocommit=True, application_name=APPLICATION_NAME,
            connect_timeout=timeout, client_encoding=CLIENT_ENCODING, **liveness(conninfo),
        )
    except psycopg.Error as exc:
        raise StoreUnusable(f"cannot use {without_password(conninfo)}: {reason(exc)}") from exc


def reason(exc: Exception) -> str:
    """One line on why a database call failed: the server's primary message, no detail
    (a detail may quote a peer's name); libpq's own message for a connection failure."""
    import psycopg

    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    text = primary or str(exc) or type(exc).__name__
    return " ".join(text.split())


def fault(exc: Exception) -> StorageFault:
    """A database error as the store raises it."""
    return StorageFault(f"database: {reason(exc)}")
