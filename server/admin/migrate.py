"""``admin migrate``: bring the metadata store's schema up to date, explicitly.

The server migrates its store itself when it starts; an operator who wants
the change made (and seen) before the servers start runs this. On PostgreSQL
it runs beside running servers (an advisory lock makes one migration of
several wait for the other); a single-file database's columns are added when
it is opened.
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..storage.factory import migrate_metadata
from .common import Exit, store_urls


def add_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``migrate`` to the admin command line."""
    commands.add_parser(
        "migrate", parents=[common],
        help="bring the metadata store's schema up to date (the server does it at start)",
    )


def migrate(args: argparse.Namespace, out: TextIO) -> Exit:
    """``migrate``: one line saying what was done."""
    url = store_urls(args).metadata
    out.write(f"{url}: {migrate_metadata(url)}\n")
    return Exit.OK
