"""``admin unused`` and ``admin purge-unused``: the clients that never stored a file.

Such a client lapses (docs/OPERATING.md, "Clients that lapse"): a keyless
registration after the key window, a client with a key after
``--unused-client-lapse`` from its last key. The server deletes lapsed
clients itself, every five minutes and whenever a registration meets the
client cap or its address's share of it. ``unused`` shows them, with the
address that registered each (the share of the cap it counts against);
``purge-unused`` deletes those unused for longer than ``--older-than``
seconds, sooner than the server would, under the data folder's lock (the
server stopped), as ``delete-client`` does.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, TextIO

from ..limits import Limits
from ..options import finite_number
from ..storage.inventory import UnusedClient
from ..peer import address_group
from ..storage.factory import open_metadata
from . import output
from .common import Exit, inventory_of, lock_or_refuse, print_records, store_urls

UNUSED_COLUMNS = ("name", "id", "has_key", "registered_from", "unused_for", "last_seen")
#: ``purge-unused``'s default age: the server's own lapse of a keyed client.
DEFAULT_OLDER_THAN = Limits().unused_client_lapse


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``unused`` and ``purge-unused`` to the admin command line."""
    unused = commands.add_parser(
        "unused", parents=[common],
        help="list clients that never stored a file (name, id, key, registering address,"
        " seconds unused, last seen), the longest unused first",
    )
    unused.add_argument(
        "--older-than", type=finite_number, default=0.0, metavar="SECONDS",
        help="only those unused for longer than this (default: all)",
    )
    purge = commands.add_parser(
        "purge-unused", parents=[common],
        help="delete clients that never stored a file, unused for longer than --older-than"
        " (the server must be stopped)",
    )
    purge.add_argument(
        "--older-than", type=finite_number, default=DEFAULT_OLDER_THAN, metavar="SECONDS",
        help="unused for longer than this (default: %(default)g, the server's"
        " --unused-client-lapse default)",
    )
    purge.add_argument("--yes", action="store_true", help="really delete (without it: say what)")


def unused_record(client: UnusedClient, now: float) -> dict[str, Any]:
    """A client that never stored a file, as a flat record (the id as hex)."""
    unused_for = None if client.unused_since is None else max(0, int(now - client.unused_since))
    return {
        "name": client.name, "id": client.id.hex(), "has_key": client.has_key,
        "registered_from": client.registered_from, "unused_for": unused_for,
        "last_seen": client.last_seen,
    }


def _older(clients: list[UnusedClient], older_than: float, now: float) -> list[UnusedClient]:
    """Those unused for longer than ``older_than`` (an unrecorded time counts as long)."""
    return [
        client for client in clients
        if client.unused_since is None or now - client.unused_since > older_than
    ]


def _unused_for_longer(args: argparse.Namespace, now: float) -> list[UnusedClient]:
    """The clients that never stored a file, unused for longer than ``--older-than``."""
    inventory = inventory_of(args)
    try:
        return _older(inventory.unused_clients(), args.older_than, now)
    finally:
        inventory.close()


def list_unused(args: argparse.Namespace, out: TextIO) -> int:
    """``unused [--older-than SECONDS]``."""
    now = time.time()
    found = _unused_for_longer(args, now)
    print_records(args, [unused_record(client, now) for client in found], UNUSED_COLUMNS, out)
    return Exit.OK


def purge_unused(args: argparse.Namespace, out: TextIO) -> int:
    """``purge-unused [--older-than SECONDS] --yes``: under the data folder's lock, or refused."""
    now = time.time()
    found = _unused_for_longer(args, now)
    what = f"{len(found)} client(s) that never stored a file, unused for over {args.older_than:g} s"
    if not args.yes:
        out.write(f"would delete {what}; add --yes to delete them\n")
        for client in found:
            out.write(f"  {output.text(client.name)} ({client.id.hex()})\n")
        return Exit.OK
    with lock_or_refuse(args.data_dir, "purge", "the server also deletes lapsed clients itself"):
        metadata = open_metadata(store_urls(args).metadata, address_group)
        try:
            with metadata.transaction():
                for client in found:
                    metadata.forget_client(client.id)
        finally:
            metadata.close()
    out.write(f"deleted {what}\n")
    return Exit.OK
