"""The metadata store in PostgreSQL: ``--metadata postgresql://[USER@]HOST[:PORT]/DBNAME[?OPTIONS]``.

A libpq URL (its options are libpq's: ``sslmode``, ``connect_timeout``,
``host=/run/postgresql`` for a unix socket, ...). The password is never in
it: libpq reads ``~/.pgpass`` (or ``PGPASSFILE``) or ``PGPASSWORD``.
Installed with ``pip install 'cipherdrop[postgres]'`` (psycopg 3); this module
imports psycopg only when a store is opened, so the default install needs
nothing. The modules: :mod:`.store` (the store), :mod:`.roundcommit` (the
round's non-blocking COMMIT), :mod:`.schema` (tables and migrations),
:mod:`.inventory` (``admin``'s read-only view), :mod:`.coordination` (what the nodes
sharing the database agree on), :mod:`.connect`, :mod:`.literals` and :mod:`.message`
(a batch of statements as one message, sent and its rows read without a cursor).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ...errors import BadStoreUrl
from ..base import StoreUrl
from .connect import check_no_password

if TYPE_CHECKING:
    from ..inventory import InventoryView
    from .coordination import PgCoordination
    from .store import PostgresMetadata


class PostgresBackend:
    """``postgresql://…``: the metadata store in a PostgreSQL database."""

    scheme = "postgresql"
    form = (
        "postgresql://[USER@]HOST[:PORT]/DBNAME[?LIBPQ-OPTIONS] (the password in ~/.pgpass,"
        " PGPASSFILE or PGPASSWORD, never in the URL)"
    )
    default_form = "none: PostgreSQL is used only when named"
    #: Several servers may share one database and act as one (nodes).
    shared = True

    def default(self, data_dir: Path) -> StoreUrl:
        """Never the default.

        Raises:
            BadStoreUrl: always.
        """
        raise BadStoreUrl("PostgreSQL has no default place: name it with --metadata")

    def check(self, url: StoreUrl) -> None:
        """Any libpq URL without a password.

        Raises:
            BadStoreUrl: it carries a password (the message says where it goes).
        """
        check_no_password(url.text)

    def open(
        self, url: StoreUrl, group_of: Callable[[str], str], node: str | None = None
    ) -> PostgresMetadata:
        """The server's store, as ``node``: connected, its schema migrated.

        Raises:
            StoreUnusable: psycopg is missing, or the database refuses (the reason given).
        """
        from .connect import driver

        driver()
        from .store import PostgresMetadata

        return PostgresMetadata.open(url.text, group_of, node)

    def open_inventory(self, url: StoreUrl) -> InventoryView:
        """``admin``'s read-only view (a read-only session).

        Raises:
            StoreUnusable: psycopg is missing, or the database refuses or holds no schema.
        """
        from .connect import driver

        driver()
        from .inventory import PgInventory

        return PgInventory.open(url.text)

    def migrate(self, url: StoreUrl) -> str:
        """Bring the schema up to date (``admin migrate``); what was done, in one line.

        Raises:
            StoreUnusable: psycopg is missing, the database refuses, or its schema is newer.
        """
        from .connect import driver

        driver()
        from .store import migrate_at

        found, now = migrate_at(url.text)
        if found == now:
            return f"schema at version {now}: up to date"
        return f"schema migrated from version {found} to {now}"

    def open_coordination(self, url: StoreUrl, node: str, lease: float) -> PgCoordination:
        """What the nodes sharing this database agree on, in tables of its own beside the
        store's (:mod:`.coordination`), as ``node``.

        Raises:
            StoreUnusable: psycopg is missing, or the database refuses (the reason given).
        """
        from .coordination import PgCoordination

        return PgCoordination(url.text, node, lease)


BACKEND = PostgresBackend()
