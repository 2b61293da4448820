"""What the admin commands share: exit codes, refusals, the stores, the lock, the output.

:mod:`.cli` (the command line and most commands) and :mod:`.unused` (the
clients that never stored a file) both import this module; neither imports
the other's internals.
"""

from __future__ import annotations

import argparse
import enum
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from ..errors import BadStoreUrl, LockError
from ..storage.factory import StoreUrls, open_inventory
from ..storage.inventory import InventoryView
from ..storage.lock import DataDirLock, is_locked
from . import output


class Exit(enum.IntEnum):
    """The admin tool's exit codes."""

    OK = 0
    PROBLEM = 1
    USAGE = 2
    SERVER_RUNNING = 3
    UNUSABLE = 4
    #: As a program killed by SIGPIPE would end (what ``head`` leaves a writer).
    OUTPUT_CLOSED = 128 + signal.SIGPIPE


class AdminError(Exception):
    """A command that cannot be done; the message is for the operator."""

    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.code = code


#: The usual way out of a permission denied.
PERMISSION_HINT = " (run it as the server's user, e.g. sudo -u cipherdrop)"


def store_urls(args: argparse.Namespace) -> StoreUrls:
    """Where the stores are: ``--metadata`` and ``--blobs``, else in ``--data-dir``.

    Raises:
        AdminError: a value is not a store's URL (exit 2).
    """
    try:
        return StoreUrls.given(args.metadata, args.blobs, args.data_dir)
    except BadStoreUrl as exc:
        raise AdminError(str(exc), Exit.USAGE) from exc


def inventory_of(args: argparse.Namespace) -> InventoryView:
    """The read-only view of the stores the command line names (the caller closes it)."""
    urls = store_urls(args)
    if args.metadata is None:  # in the data folder: say so if it is not one
        check_folder(args.data_dir)
    return open_inventory(urls.metadata)


def check_folder(data_dir: Path) -> None:
    """Refuse, with the reason, a data folder that is missing, not a folder or unreadable.

    A folder without the database (a foreign one) is refused by the inventory's opening.

    Raises:
        AdminError: exit 4.
    """
    try:
        if not data_dir.exists():
            raise AdminError(f"data folder {data_dir} does not exist", Exit.UNUSABLE)
        if not data_dir.is_dir():
            raise AdminError(f"{data_dir} is not a folder (--data-dir)", Exit.UNUSABLE)
        with os.scandir(data_dir):
            pass
    except OSError as exc:
        raise AdminError(unreadable(data_dir, exc), Exit.UNUSABLE) from exc


def unreadable(path: Path | str, exc: OSError) -> str:
    """Why a path cannot be used, and the usual way out."""
    reason = exc.strerror or str(exc)
    hint = PERMISSION_HINT if isinstance(exc, PermissionError) else ""
    return f"cannot use {exc.filename or path}: {reason}{hint}"


@contextmanager
def lock_or_refuse(data_dir: Path, verb: str, why: str) -> Iterator[None]:
    """Hold the data folder's lock over a command's change to the folder, or refuse it.

    ``verb`` names the command in the refusal ("stop it, then VERB again"),
    ``why`` says why the server must be stopped for it.

    Raises:
        AdminError: a server holds the lock (exit 3), or the folder cannot be locked (exit 4).
    """
    try:
        lock = DataDirLock.acquire(data_dir)
    except LockError as exc:
        if is_locked(data_dir):
            raise AdminError(
                f"the server is running on {data_dir}: stop it, then {verb} again ({why})",
                Exit.SERVER_RUNNING,
            ) from exc
        raise AdminError(str(exc), Exit.UNUSABLE) from exc
    try:
        yield
    finally:
        lock.release()


def print_records(
    args: argparse.Namespace, records: list[dict], columns: Sequence[str], out: TextIO
) -> None:
    """A list of records: JSON with ``--json``, else an aligned table of ``columns``."""
    if args.json:
        output.as_json(records, out)
    else:
        output.table(records, columns, out)
