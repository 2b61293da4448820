"""The PostgreSQL store's tables, and the steps that bring a database's schema up to date.

The schema carries a version, the one row of ``schema_version``. Each entry of
:data:`MIGRATIONS` takes a database from the version before it to its own;
:func:`migrate` applies the missing ones in one transaction, under an
advisory lock, so that two servers (or ``admin migrate``) starting at once
migrate it once. A database of a later version than this server knows is
refused, untouched.

The tables carry the names of SQLite's (server/storage/sqlite.py), folded to
lower case as PostgreSQL does. Two things differ: a file name is ``bytea``
(the wire name's bytes, whatever they are), and each client keeps the group of
the address that registered it (``AddressGroup``), since the database cannot
call the server's grouping (server/peer.py); the counts per group are kept
by triggers in ``client_counts``, the row of :data:`TOTAL_GROUP` holding all.
"""

from __future__ import annotations

#: The advisory lock that serialises migrations (any number: one per schema).
MIGRATION_LOCK = 0x63647270  # "cdrp"
#: The row of ``client_counts`` that counts every client (no address group is empty).
TOTAL_GROUP = ""

_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (Version integer NOT NULL)"
_READ_VERSION = "SELECT Version FROM schema_version"

_FIRST_SCHEMA = (
    """CREATE TABLE clients (
        ID bytea PRIMARY KEY,
        Name text NOT NULL UNIQUE,
        PublicKey bytea,
        LastSeen text,
        AESKey bytea,
        Edition text NOT NULL DEFAULT 'v3',
        Crc text NOT NULL DEFAULT 'cksum',
        UnusedSince double precision,
        RegisteredFrom text,
        AddressGroup text
    )""",
    """CREATE TABLE files (
        ID bytea NOT NULL,
        FileName bytea NOT NULL,
        PathName text NOT NULL,
        Verified boolean NOT NULL DEFAULT false,
        Cksum bigint,
        Size bigint,
        BlobKey text,
        PendingKey text,
        Node text,
        PRIMARY KEY (ID, FileName)
    )""",
    """CREATE TABLE key_bindings (
        ID bytea PRIMARY KEY,
        Address text NOT NULL,
        IssuedAt double precision NOT NULL,
        LastUsed double precision NOT NULL
    )""",
    # The lapsing registrations by age: finding them reads what is deleted.
    "CREATE INDEX files_blob_key ON files (BlobKey)",
    "CREATE INDEX files_pending_key ON files (PendingKey) WHERE PendingKey IS NOT NULL",
    "CREATE INDEX clients_keyless ON clients (UnusedSince) WHERE PublicKey IS NULL",
    "CREATE INDEX clients_unused ON clients (UnusedSince)"
    " WHERE PublicKey IS NOT NULL AND UnusedSince IS NOT NULL",
    "CREATE TABLE client_counts (AddressGroup text PRIMARY KEY, Clients bigint NOT NULL)",
    f"INSERT INTO client_counts VALUES ('{TOTAL_GROUP}', 0)",
    f"""CREATE FUNCTION count_client() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE client_counts SET Clients = Clients + 1 WHERE AddressGroup = '{TOTAL_GROUP}';
            IF NEW.AddressGroup IS NOT NULL THEN
                INSERT INTO client_counts VALUES (NEW.AddressGroup, 1)
                ON CONFLICT (AddressGroup) DO UPDATE SET Clients = client_counts.Clients + 1;
            END IF;
            RETURN NEW;
        END IF;
        UPDATE client_counts SET Clients = Clients - 1 WHERE AddressGroup = '{TOTAL_GROUP}';
        IF OLD.AddressGroup IS NOT NULL THEN
            DELETE FROM client_counts WHERE AddressGroup = OLD.AddressGroup AND Clients <= 1;
            UPDATE client_counts SET Clients = Clients - 1 WHERE AddressGroup = OLD.AddressGroup;
        END IF;
        RETURN OLD;
    END $$""",
    "CREATE TRIGGER client_counted AFTER INSERT OR DELETE ON clients"
    " FOR EACH ROW EXECUTE FUNCTION count_client()",
)

#: Version N is reached by running MIGRATIONS[N - 1] on version N - 1 (0: no tables).
MIGRATIONS: tuple[tuple[str, ...], ...] = (_FIRST_SCHEMA,)
#: The version this server writes.
SCHEMA_VERSION = len(MIGRATIONS)


def version_statements() -> tuple[str, str]:
    """The statements that make the version table and read it."""
    return _VERSION_TABLE, _READ_VERSION


def steps(found: int) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations from version ``found`` to :data:`SCHEMA_VERSION`, each with its version."""
    return [(version, MIGRATIONS[version - 1]) for version in range(found + 1, SCHEMA_VERSION + 1)]
