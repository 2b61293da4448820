"""``python -m server`` (also the ``cipherdrop-server`` console script).

Reads ``port.info`` in the data folder (missing or invalid: a warning and port
1256), opens ``defensive.db`` and ``received_files/`` there, repairs what a
crash left, and serves until Ctrl-C, SIGTERM or SIGHUP; then it stops
accepting, closes every connection and the database, and exits 0. The data
folder is locked for the server's life (server/storage/lock.py): a second
server on the same folder refuses to start.
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
from .storage.lock import DataDirLock, LockError
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
#: Signals that stop the server cleanly. SIGHUP (the terminal or session went
#: away) too, unless it was ignored when the server started (nohup).
_STOP_SIGNALS = ("SIGINT", "SIGTERM")
_HANGUP_SIGNAL = "SIGHUP"

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
    "max_decryption_failures_per_key": "failed decryptions under one AES key before "
    "the key is refused until the next 826/827",
    "max_decryption_failures_per_hour": "failed decryptions per client in any hour "
    "before its uploads are refused for the rest of that hour",
    "max_disk_share_per_address": "share (0 to 1] of the disk free for uploads "
    "that the uploads from one IP address may reserve",
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

    The caller holds the data folder's lock (:class:`DataDirLock`).

    Raises:
        DatabaseError, StorageError: with a message for the operator.
    """
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
        "data in %s: %d client(s), %d file(s); %d temp file(s) removed,"
        " %d row(s) without a file removed, %d file(s) without a row and %d stray(s) moved aside",
        data_dir.resolve(), db.count_clients(), len(db.file_rows()), report.temp_files_removed,
        report.rows_removed, report.files_quarantined, report.strays_moved,
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
        lock = DataDirLock.acquire(data_dir)  # before start-up repair touches a file
    except LockError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    try:
        return _serve(args, limits, data_dir, port)
    finally:
        lock.release()


def _stop_signals() -> list[signal.Signals]:
    """The signals to stop on here (SIGHUP only where it exists and is not ignored)."""
    found = [getattr(signal, name) for name in _STOP_SIGNALS]
    hangup = getattr(signal, _HANGUP_SIGNAL, None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        found.append(hangup)
    return found


def _serve(args: argparse.Namespace, limits: Limits, data_dir: Path, port: int) -> int:
    """Open the storage, listen and serve until a stop signal; the exit code."""
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
        for signum in _stop_signals()
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
