"""``python -m server admin``: list, show, delete and verify, on a data folder.

Exit codes (also in ``--help``): 0 done; 1 ``verify`` found a changed or
missing file, or the client asked for does not exist; 2 bad command line;
3 a server holds the data folder (``delete-client``); 4 the data folder or
its database cannot be used.
"""

from __future__ import annotations

import argparse
import enum
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from protocol import __version__

from .. import crashpoints
from ..errors import LockError, StorageFault
from ..limits import Limits
from ..storage.commit import finish_removals, remove_client
from ..storage.folder import FolderBlobs
from ..storage.inventory import ClientSummary, Inventory, StoredFile
from ..storage.lock import DataDirLock, is_locked
from ..storage.sqlite import DB_NAME, SqliteMetadata
from . import output, unused
from .verify import Check, Verdict, check_all


class Exit(enum.IntEnum):
    """The admin tool's exit codes."""

    OK = 0
    PROBLEM = 1
    USAGE = 2
    SERVER_RUNNING = 3
    UNUSABLE = 4
    #: As a program killed by SIGPIPE would end (what ``head`` leaves a writer).
    OUTPUT_CLOSED = 128 + signal.SIGPIPE


EXIT_TABLE = """exit codes:
  0  done
  1  verify found a changed or missing file, or no such client
  2  bad command line
  3  a server is running on the data folder (delete-client, purge-unused)
  4  the data folder or its database cannot be used
  141  the output was closed early (as by head)"""

CLIENT_COLUMNS = ("name", "id", "edition", "last_seen", "files", "bytes")
FILE_COLUMNS = ("client", "file", "stored_as", "size", "verified")
CHECK_COLUMNS = ("client", "file", "stored_as", "result", "detail")


class AdminError(Exception):
    """A command that cannot be done; the message is for the operator."""

    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.code = code


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The admin command line: one subcommand per task.

    ``--data-dir`` and ``--json`` go before the command or after it (``admin
    --data-dir D clients`` and ``admin clients --data-dir D`` alike).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="cipherdrop's operator tool. Read-only commands run beside a running"
        " server; delete-client needs the server stopped.",
        epilog=EXIT_TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common_options(parser, Path("."), False)
    # after the command: the same options, which leave the values above alone unless given
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, argparse.SUPPRESS, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "clients", parents=[common],
        help="list clients (name, id, edition, last seen, files, bytes)",
    )
    files = commands.add_parser(
        "files", parents=[common], help="list files (client, name, stored path, size, verified)"
    )
    files.add_argument("client", nargs="?", help="only this client's (name or hex id)")
    show = commands.add_parser("client", parents=[common], help="show one client and its files")
    show.add_argument("client", help="name or hex id")
    delete = commands.add_parser(
        "delete-client", parents=[common],
        help="delete a client: its rows and its folder, in one crash-safe step"
        " (the server must be stopped)",
    )
    delete.add_argument("client", help="name or hex id")
    delete.add_argument("--yes", action="store_true", help="really delete (without it: say what)")
    commands.add_parser(
        "verify", parents=[common],
        help="check every stored file against the size and cksum recorded at install;"
        " exit 1 if one changed or is missing",
    )
    unused.add_commands(commands, common)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, data_dir: object, json: object) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=data_dir,
        help=f"the server's data folder (with {DB_NAME} and received_files/; default: .)",
    )
    parser.add_argument("--json", action="store_true", default=json, help="JSON for scripts")


def main(
    argv: Sequence[str], prog: str = "python -m server admin", out: TextIO | None = None
) -> int:
    """Run one admin command; the exit code."""
    out = out or sys.stdout
    args = build_parser(prog).parse_args(argv)
    try:
        crashpoints.from_environment()  # test-only (tests/server/test_admin.py)
        code = int(COMMANDS[args.command](args, out))
        out.flush()  # a closed pipe is found here, not at the interpreter's exit
        return code
    except AdminError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return int(exc.code)
    except ValueError as exc:  # a bad crash point
        print(f"{prog}: {exc}", file=sys.stderr)
        return int(Exit.USAGE)
    except StorageFault as exc:  # StoreUnusable too
        print(f"{prog}: {exc}", file=sys.stderr)
        return int(Exit.UNUSABLE)
    except BrokenPipeError:  # ``admin files | head``: the reader had enough
        _silence_stdout()
        return int(Exit.OUTPUT_CLOSED)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush then finds no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- read-only commands -------------------------------------------------------------


def _inventory(args: argparse.Namespace) -> Inventory:
    if not args.data_dir.is_dir():
        raise AdminError(f"data folder {args.data_dir} does not exist", Exit.UNUSABLE)
    return Inventory.open(args.data_dir)


def _find(inventory: Inventory, key: str) -> ClientSummary:
    client = inventory.client(key)
    if client is None:
        raise AdminError(f"no client named or with id {key!r}", Exit.PROBLEM)
    return client


def client_record(client: ClientSummary) -> dict[str, Any]:
    """A client as a flat record (the id as hex)."""
    return {
        "name": client.name, "id": client.id.hex(), "edition": client.edition,
        "last_seen": client.last_seen, "has_key": client.has_key,
        "files": client.files, "bytes": client.bytes,
    }


def file_record(stored: StoredFile) -> dict[str, Any]:
    """A file row as a flat record (names as text, undecodable bytes escaped)."""
    return {
        "client": stored.client_name, "client_id": stored.client_id.hex(),
        "file": output.text(stored.file_name), "stored_as": stored.path_name,
        "size": stored.size, "cksum": stored.cksum, "verified": stored.verified,
    }


def _print_records(args: argparse.Namespace, records: list[dict], columns, out: TextIO) -> None:
    """A list of records: JSON with ``--json``, else an aligned table of ``columns``."""
    if args.json:
        output.as_json(records, out)
    else:
        output.table(records, columns, out)


def list_clients(args: argparse.Namespace, out: TextIO) -> Exit:
    """``clients``."""
    inventory = _inventory(args)
    try:
        records = [client_record(client) for client in inventory.clients()]
    finally:
        inventory.close()
    _print_records(args, records, CLIENT_COLUMNS, out)
    return Exit.OK


def list_files(args: argparse.Namespace, out: TextIO) -> Exit:
    """``files [CLIENT]``."""
    inventory = _inventory(args)
    try:
        client_id = _find(inventory, args.client).id if args.client else None
        records = [file_record(stored) for stored in inventory.files(client_id)]
    finally:
        inventory.close()
    _print_records(args, records, FILE_COLUMNS, out)
    return Exit.OK


def show_client(args: argparse.Namespace, out: TextIO) -> Exit:
    """``client CLIENT``: its fields, then its files."""
    inventory = _inventory(args)
    try:
        client = _find(inventory, args.client)
        files = [file_record(stored) for stored in inventory.files(client.id)]
    finally:
        inventory.close()
    record = client_record(client)
    if args.json:
        output.as_json({**record, "file_list": files}, out)
        return Exit.OK
    output.fields(record, out)
    if files:
        out.write("\n")
        output.table(files, FILE_COLUMNS[1:], out)
    return Exit.OK


def verify(args: argparse.Namespace, out: TextIO) -> Exit:
    """``verify``: exit 1 if a file changed or is missing."""
    inventory = _inventory(args)
    try:
        checks = check_all(inventory, args.data_dir)
    finally:
        inventory.close()
    records = [_check_record(check) for check in checks]
    failed = sum(check.verdict.failed for check in checks)
    _print_records(args, records, CHECK_COLUMNS, out)
    if not args.json:
        counts = {verdict: 0 for verdict in Verdict}
        for check in checks:
            counts[check.verdict] += 1
        out.write(", ".join(f"{count} {verdict.value}" for verdict, count in counts.items()) + "\n")
    return Exit.PROBLEM if failed else Exit.OK


def _check_record(check: Check) -> dict[str, Any]:
    return {
        "client": check.stored.client_name, "client_id": check.stored.client_id.hex(),
        "file": output.text(check.stored.file_name), "stored_as": check.stored.path_name,
        "result": check.verdict.value, "detail": check.detail,
    }


# -- the changing command -------------------------------------------------------------


def delete_client(args: argparse.Namespace, out: TextIO) -> Exit:
    """``delete-client CLIENT --yes``: under the data folder's lock, or refused."""
    inventory = _inventory(args)
    try:
        client = _find(inventory, args.client)
    finally:
        inventory.close()
    what = f"client {client.name} ({client.id.hex()}): {client.files} file(s), {client.bytes} bytes"
    if not args.yes:
        out.write(f"would delete {what}; add --yes to delete it\n")
        return Exit.OK
    try:
        lock = DataDirLock.acquire(args.data_dir)
    except LockError as exc:
        if is_locked(args.data_dir):
            raise AdminError(
                f"the server is running on {args.data_dir}: stop it, then delete again"
                " (a deletion changes files the server serves)", Exit.SERVER_RUNNING,
            ) from exc
        raise AdminError(str(exc), Exit.UNUSABLE) from exc
    try:
        metadata = SqliteMetadata.open(args.data_dir / DB_NAME, Limits().busy_timeout)
        try:
            blobs = FolderBlobs(args.data_dir)
            finish_removals(metadata, blobs)
            if metadata.client_by_id(client.id) is None:
                raise AdminError(f"client {client.id.hex()} is gone already", Exit.PROBLEM)
            remove_client(metadata, blobs, client.id)
        finally:
            metadata.close()
    finally:
        lock.release()
    out.write(f"deleted {what}\n")
    return Exit.OK


COMMANDS = {
    "clients": list_clients,
    "files": list_files,
    "client": show_client,
    "delete-client": delete_client,
    "verify": verify,
    "unused": unused.list_unused,
    "purge-unused": unused.purge_unused,
}
