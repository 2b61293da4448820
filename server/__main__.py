"""``python -m server`` (also the ``cipherdrop-server`` console script).

Reads ``port.info`` in the data folder (missing or invalid: a warning and port
1256), opens ``defensive.db`` and ``received_files/`` there, repairs what a
crash left, and serves until Ctrl-C or SIGTERM; then it stops accepting,
closes every connection and the database, and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sqlite3
import sys
from pathlib import Path

from . import crashpoints
from .app import App
from .limits import Limits
from .loop import Server, create_listener
from .storage.db import DB_NAME, Database, DatabaseError
from .storage.files import FileStore, StorageError
from .storage.recovery import recover

log = logging.getLogger("server")

DEFAULT_PORT = 1256
PORT_FILE = "port.info"
MAX_PORT = 65535
EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
#: Descriptors needed beside the connections (listener, wake-up pair, database,
#: files being received).
SPARE_DESCRIPTORS = 64

#: Help for each limit flag; the flag is the field name with dashes.
_LIMIT_HELP = {
    "max_connections": "open connections; one more is accepted and closed at once",
    "max_connections_per_address": "open connections per IP address, far above one client's "
    "needs; raise it for clients behind one NAT (0: no limit)",
    "message_deadline": "seconds to finish a message once its first byte came",
    "idle_timeout": "seconds a connection may stay silent between messages",
    "min_content_rate": "bytes/s below which a slow 828 packet runs out of time",
    "max_outgoing": "bytes of unsent responses before reading from a peer stops",
    "max_errors": "refused requests on one connection before it is closed",
    "max_content_size": "largest file accepted, in ciphertext bytes (content_size)",
    "max_skip_payload": "wrong-size payloads up to this many bytes are skipped "
    "(1607, connection kept); larger ones close the connection unread",
    "min_free_disk": "bytes of disk that must stay free after an upload",
    "key_window": "seconds an AES key stays usable after it was issued or last "
    "used (see docs/KEY_BINDING.md)",
    "max_clients": "registered clients; more registrations get 1601",
    "registrations_per_minute": "registrations per IP address per minute (0: no limit)",
    "retry_ack_delay": "seconds to wait after 901 for an 828 before answering 1604",
    "busy_timeout": "seconds a database write waits for a lock another process holds "
    "(every connection waits meanwhile; then 1607)",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line: where to listen, where the data is, and the limits."""
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="cipherdrop server: receives encrypted files (protocol v3).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--port", type=int, default=None,
        help=f"TCP port (default: from {PORT_FILE} in the data folder, else {DEFAULT_PORT};"
        " 0 picks a free port)",
    )
    parser.add_argument("--host", default="", help="address to listen on ('' = all interfaces)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("."),
        help=f"folder of {PORT_FILE}, {DB_NAME} and received_files/",
    )
    parser.add_argument(
        "--log-level", default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity",
    )
    limits = parser.add_argument_group("limits")
    for spec in dataclasses.fields(Limits):
        limits.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            type=float if spec.type in (float, "float") else int,
            default=spec.default,
            help=_LIMIT_HELP[spec.name],
        )
    return parser


def read_port(data_dir: Path) -> int:
    """The port from ``port.info``; a warning and 1256 if missing or invalid."""
    path = data_dir / PORT_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        log.warning("%s not found; using port %d", path, DEFAULT_PORT)
        return DEFAULT_PORT
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (%s); using port %d", path, exc, DEFAULT_PORT)
        return DEFAULT_PORT
    if text.isdigit() and 1 <= int(text) <= MAX_PORT:
        return int(text)
    log.warning("%s holds no valid port (%.20r); using port %d", path, text, DEFAULT_PORT)
    return DEFAULT_PORT


def raise_descriptor_limit(connections: int) -> None:
    """Raise the soft descriptor limit to fit ``connections`` (up to the hard limit).

    Each connection is a descriptor; the server needs a few more (listener,
    wake-up pair, database, files being received). Where the hard limit is too
    low, warn: connections past it are refused by accept (EMFILE) and logged.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_DESCRIPTORS
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "descriptor limit %d is below --max-connections %d plus %d spare",
            target, connections, SPARE_DESCRIPTORS,
        )


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(Limits)})


def _open_storage(data_dir: Path, busy_timeout: float) -> tuple[Database, FileStore]:
    """Open the database and files, and repair what a crash left.

    Raises:
        DatabaseError, StorageError: with a message for the operator.
    """
    if not data_dir.is_dir():
        raise StorageError(f"data folder {data_dir} does not exist")
    db = Database.open(data_dir / DB_NAME, busy_timeout)
    try:
        store = FileStore(data_dir)
        report = recover(db, store)
    except (OSError, sqlite3.Error) as exc:
        db.close()
        raise StorageError(f"cannot repair {data_dir}: {exc}") from exc
    except StorageError:
        db.close()
        raise
    log.info(
        "data in %s: %d client(s), %d file(s); %d temp file(s) removed",
        data_dir.resolve(), db.count_clients(), len(db.file_rows()), report.temp_files_removed,
    )
    return db, store


def main(argv: list[str] | None = None) -> int:
    """Run the server; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        limits = _limits(args)
        crash_point = crashpoints.from_environment()
    except ValueError as exc:
        parser.error(str(exc))
    if crash_point:
        log.warning("test-only crash point %s armed: this server will kill itself", crash_point)
    raise_descriptor_limit(limits.max_connections)
    data_dir = args.data_dir
    port = args.port if args.port is not None else read_port(data_dir)
    try:
        db, store = _open_storage(data_dir, limits.busy_timeout)
    except (DatabaseError, StorageError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    try:
        listener = create_listener(args.host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host or "*", port, exc.strerror or exc)
        db.close()
        return EXIT_STARTUP_FAILED
    server = Server(App.build(db, store, limits), listener)
    previous = {
        signum: signal.signal(signum, lambda *_: server.stop())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    bound_port = server.address[1]
    log.info("listening on %s port %d", args.host or "all interfaces", bound_port)
    try:
        server.serve_forever()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        db.close()
    log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
