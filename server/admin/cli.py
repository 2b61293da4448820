"""``python -m server admin``: list, show, delete, verify and migrate, on a data folder.

Exit codes (also in ``--help``): 0 done; 1 ``verify`` found a changed or
missing file, or the client asked for does not exist; 2 bad command line;
3 a server holds the data folder (``delete-client``); 4 the data folder or
its database cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from protocol import __version__
from protocol.printable import escape_controls, quoted

from .. import crashpoints
from ..errors import StorageFault
from ..peer import address_group
from ..storage.commit import finish_removals, remove_client
from ..storage.factory import open_blob_reader, open_stores
from ..storage.inventory import ClientSummary, InventoryView, StoredFile, parse_client_id
from ..storage.store_options import add_store_options
from . import migrate, output, unused
from .common import (
    PERMISSION_HINT,
    AdminError,
    Exit,
    inventory_of,
    lock_or_refuse,
    print_records,
    store_urls,
    unreadable,
)
from .verify import Check, Verdict, check_all


EXIT_TABLE = """exit codes:
  0  done
  1  verify found a changed or missing file, or no such client
  2  bad command line
  3  a server is running on the data folder (delete-client, purge-unused)
  4  the data folder or its database cannot be used (missing, unreadable, not one)
  141  the output was closed early (as by head)"""

CLIENT_COLUMNS = ("name", "id", "edition", "last_seen", "files", "bytes")
FILE_COLUMNS = ("client", "file", "stored_as", "size", "verified")
CHECK_COLUMNS = ("client", "file", "stored_as", "result", "detail")


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
    # a client by its name (the argument) or by its id (--id), never a guess between them
    selector = argparse.ArgumentParser(add_help=False)
    selector.add_argument(
        "--id", dest="client_id", type=_client_id, metavar="HEX",
        help="the client with this id (its 32 hex digits, as `clients` shows them)"
        " rather than a NAME",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "clients", parents=[common],
        help="list clients (name, id, edition, last seen, files, bytes)",
    )
    files = commands.add_parser(
        "files", parents=[common, selector],
        help="list files (client, name, stored path, size, verified)",
    )
    files.add_argument("client", nargs="?", metavar="NAME", help="only this client's (by name)")
    show = commands.add_parser(
        "client", parents=[common, selector], help="show one client and its files"
    )
    show.add_argument("client", nargs="?", metavar="NAME", help="the client's name")
    delete = commands.add_parser(
        "delete-client", parents=[common, selector],
        help="delete a client: its rows and its files, in one crash-safe step"
        " (the server must be stopped)",
    )
    delete.add_argument("client", nargs="?", metavar="NAME", help="the client's name")
    delete.add_argument("--yes", action="store_true", help="really delete (without it: say what)")
    commands.add_parser(
        "verify", parents=[common],
        help="check every stored file against the size and cksum recorded at install;"
        " exit 1 if one changed or is missing",
    )
    unused.add_commands(commands, common)
    migrate.add_command(commands, common)
    return parser


def _client_id(text: str) -> bytes:
    client_id = parse_client_id(text)
    if client_id is None:
        raise argparse.ArgumentTypeError(
            f"a client id is exactly 32 hex digits, got {quoted(text)}"
        )
    return client_id


def _add_common_options(parser: argparse.ArgumentParser, data_dir: object, json: object) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=data_dir,
        help="the server's data folder (its lock, and by default defensive.db and"
        " received_files/; default: .)",
    )
    store_default = None if data_dir is not argparse.SUPPRESS else argparse.SUPPRESS
    add_store_options(parser, store_default, the_servers=True)
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
        _say_why(prog, exc)
        return int(exc.code)
    except ValueError as exc:  # a bad crash point
        _say_why(prog, exc)
        return int(Exit.USAGE)
    except StorageFault as exc:  # StoreUnusable too
        hint = PERMISSION_HINT if isinstance(exc.__cause__, PermissionError) else ""
        _say_why(prog, AdminError(f"{exc}{hint}", Exit.UNUSABLE))
        return int(Exit.UNUSABLE)
    except BrokenPipeError:  # ``admin files | head``: the reader had enough
        _silence_stdout()
        return int(Exit.OUTPUT_CLOSED)
    except OSError as exc:  # a file of the data folder that cannot be read or changed
        _say_why(prog, AdminError(unreadable(args.data_dir, exc), Exit.UNUSABLE))
        return int(Exit.UNUSABLE)


def _say_why(prog: str, exc: Exception) -> None:
    """The one line of a refusal on stderr (nothing in it can act on the terminal)."""
    print(f"{prog}: {escape_controls(str(exc))}", file=sys.stderr)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush then finds no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- read-only commands -------------------------------------------------------------


def _find(inventory: InventoryView, args: argparse.Namespace) -> ClientSummary:
    """The client the command names: by its name, or by ``--id``; never one for the other."""
    if args.client_id is not None:
        client = inventory.client_by_id(args.client_id)
        if client is None:
            raise AdminError(f"no client with id {args.client_id.hex()}", Exit.PROBLEM)
        return client
    client = inventory.client_by_name(args.client)
    if client is None:
        hint = ""
        if parse_client_id(args.client) is not None:
            hint = f" (to name a client by its id: --id {args.client})"
        raise AdminError(f"no client named {quoted(args.client)}{hint}", Exit.PROBLEM)
    return client


def _selects_one(args: argparse.Namespace, optional: bool = False) -> bool:
    """Whether the command names a client; a NAME and an --id together are refused.

    Raises:
        AdminError: both, or (unless ``optional``) neither.
    """
    if args.client is not None and args.client_id is not None:
        raise AdminError("name the client by NAME or by --id, not both", Exit.USAGE)
    if args.client is None and args.client_id is None:
        if optional:
            return False
        raise AdminError("name the client: NAME or --id HEX", Exit.USAGE)
    return True


def client_record(client: ClientSummary) -> dict[str, Any]:
    """A client as a flat record (the id as hex)."""
    return {
        "name": client.name, "id": client.id.hex(), "edition": client.edition,
        "last_seen": client.last_seen, "has_key": client.has_key,
        "files": client.files, "bytes": client.bytes,
    }


def file_record(stored: StoredFile) -> dict[str, Any]:
    """A file row as a flat record (a name that is not UTF-8 stays bytes: see :mod:`.output`)."""
    return {
        "client": stored.client_name, "client_id": stored.client_id.hex(),
        "file": stored.file_name, "stored_as": stored.path_name,
        "size": stored.size, "cksum": stored.cksum, "verified": stored.verified,
    }


def list_clients(args: argparse.Namespace, out: TextIO) -> Exit:
    """``clients``."""
    inventory = inventory_of(args)
    try:
        records = [client_record(client) for client in inventory.clients()]
    finally:
        inventory.close()
    print_records(args, records, CLIENT_COLUMNS, out)
    return Exit.OK


def list_files(args: argparse.Namespace, out: TextIO) -> Exit:
    """``files [CLIENT]``."""
    selects = _selects_one(args, optional=True)
    inventory = inventory_of(args)
    try:
        client_id = _find(inventory, args).id if selects else None
        records = [file_record(stored) for stored in inventory.files(client_id)]
    finally:
        inventory.close()
    print_records(args, records, FILE_COLUMNS, out)
    return Exit.OK


def show_client(args: argparse.Namespace, out: TextIO) -> Exit:
    """``client NAME`` or ``client --id HEX``: its fields, then its files."""
    _selects_one(args)
    inventory = inventory_of(args)
    try:
        client = _find(inventory, args)
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
    """``verify``: exit 1 if a file changed or is missing (exit 4 if their folder is unreadable)."""
    inventory = inventory_of(args)
    try:
        checks = check_all(inventory, open_blob_reader(store_urls(args).blobs))
    finally:
        inventory.close()
    records = [_check_record(check) for check in checks]
    failed = sum(check.verdict.failed for check in checks)
    print_records(args, records, CHECK_COLUMNS, out)
    if not args.json:
        counts = {verdict: 0 for verdict in Verdict}
        for check in checks:
            counts[check.verdict] += 1
        out.write(", ".join(f"{count} {verdict.value}" for verdict, count in counts.items()) + "\n")
    return Exit.PROBLEM if failed else Exit.OK


def _check_record(check: Check) -> dict[str, Any]:
    return {
        "client": check.stored.client_name, "client_id": check.stored.client_id.hex(),
        "file": check.stored.file_name, "stored_as": check.stored.path_name,
        "result": check.verdict.value, "detail": check.detail,
    }


# -- the changing command -------------------------------------------------------------


def delete_client(args: argparse.Namespace, out: TextIO) -> Exit:
    """``delete-client NAME|--id HEX --yes``: under the data folder's lock, or refused.

    It says what it deletes (name and id) before it does, and again after.
    """
    _selects_one(args)
    inventory = inventory_of(args)
    try:
        client = _find(inventory, args)
    finally:
        inventory.close()
    what = (
        f"client {quoted(client.name)} (id {client.id.hex()}):"
        f" {client.files} file(s), {client.bytes} bytes"
    )
    if not args.yes:
        out.write(f"would delete {what}; add --yes to delete it\n")
        return Exit.OK
    with lock_or_refuse(args.data_dir, "delete", "a deletion changes files the server serves"):
        out.write(f"deleting {what}\n")
        out.flush()
        metadata, blobs = open_stores(store_urls(args), address_group)
        try:
            finish_removals(metadata, blobs)
            if metadata.client_by_id(client.id) is None:
                raise AdminError(f"client {client.id.hex()} is gone already", Exit.PROBLEM)
            remove_client(metadata, blobs, client.id)
        finally:
            metadata.close()
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
    "migrate": migrate.migrate,
}
