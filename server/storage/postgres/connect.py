"""Connecting to PostgreSQL: the URL the operator gave, checked, and libpq's errors in our words.

The password is never part of the URL (it would show in ``ps`` and in logs):
libpq reads it from ``PGPASSFILE`` (default ``~/.pgpass``) or ``PGPASSWORD``.
No psycopg type leaves this package: its errors become
:class:`~server.errors.StorageFault`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from ...errors import BadStoreUrl, StorageFault, StoreUnusable
from ..urltext import has_password, without_password

if TYPE_CHECKING:
    import psycopg

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


def connect(conninfo: str) -> psycopg.Connection:
    """A connection in autocommit mode (the store opens its transactions itself), speaking
    :data:`CLIENT_ENCODING`.

    Raises:
        StoreUnusable: the database refuses (unreachable, unknown, denied).
    """
    driver()
    import psycopg

    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        timeout = given.get("connect_timeout", CONNECT_TIMEOUT)
        return psycopg.connect(
            conninfo, autocommit=True, application_name=APPLICATION_NAME,
            connect_timeout=timeout, client_encoding=CLIENT_ENCODING,
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
