"""``python -m server`` (also the ``cipherdrop-server`` console script).

Reads ``port.info`` in the data folder (missing or invalid: a warning and port
1256), creates the data folder if needed, opens the stores (``--metadata``
and ``--blobs``; by default ``defensive.db`` and ``received_files/`` in the
data folder: server/storage/factory.py), repairs what a crash left, and serves until Ctrl-C,
SIGTERM or SIGHUP. Then it drains: it stops accepting, closes the connections
that hold nothing, lets uploads in progress finish for ``--drain-timeout``
seconds (a second signal cuts them at once), logs what it cut off, closes the
database, and exits 0. The data folder is locked for the server's life
(server/storage/lock.py): a second server on the same folder refuses to start.

``python -m server admin …`` is the operator's tool (server/admin/).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from protocol import __version__

from . import crashpoints, logsetup
from .app import App
from .errors import BadStoreUrl, DurabilityLost, LockError, StorageFault
from .limits import HELP, LimitOutOfBounds, Limits, size_text
from .loop import Server, create_listener
from .metrics import NO_METRICS, Metrics, MetricsUnavailable, PrometheusMetrics
from .options import (
    MAX_PORT,
    DataDirError,
    DefaultsHelpFormatter,
    OneLineErrorParser,
    address_networks,
    finite_number,
    listen_host,
    metrics_address,
    port_number,
    prepare_data_dir,
    program_name,
    whole_number,
)
from .peer import address_group
from .proxied import ProxySources
from .storage import BlobStore, MetadataStore
from .storage.commit import RepairReport, repair_pointers
from .storage.factory import StoreUrls, is_shared, open_coordination, open_stores
from .storage.lock import DataDirLock
from .storage.store_options import add_store_options

log = logging.getLogger("server")

DEFAULT_PORT = 1256
PORT_FILE = "port.info"
EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
#: The server stopped because its database could not be made durable.
EXIT_DURABILITY_LOST = 3
#: The first argument that runs the operator's tool instead of the server.
ADMIN_COMMAND = "admin"
ALL_INTERFACES = ""
#: --host values that mean every interface: of both families (dual stack), of one.
EVERY_INTERFACE = {
    ALL_INTERFACES: "ALL interfaces",
    "0.0.0.0": "ALL IPv4 interfaces",
    "::": "ALL IPv6 interfaces",
}
#: Descriptors needed beside the connections (listener, wake-up pair, database,
#: files being received).
SPARE_DESCRIPTORS = 64
#: Signals that stop the server cleanly. SIGHUP (the terminal or session went
#: away) too, unless it was ignored when the server started (nohup).
_STOP_SIGNALS = ("SIGINT", "SIGTERM")
_HANGUP_SIGNAL = "SIGHUP"

def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line: where to listen, where the data is, and the limits."""
    prog = prog or program_name()
    parser = OneLineErrorParser(
        prog=prog,
        description="cipherdrop server: receives encrypted files (protocol v3 and older editions).",
        epilog=f"The operator's commands (list, show, delete, verify):"
        f" {prog} {ADMIN_COMMAND} --help",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--port", type=port_number, default=None,
        help=f"TCP port, 0 to {MAX_PORT} (default: from {PORT_FILE} in the data folder,"
        f" else {DEFAULT_PORT}; 0 picks a free port)",
    )
    parser.add_argument(
        "--host", type=listen_host, default=ALL_INTERFACES,
        help="address or name to listen on (default: all interfaces, IPv4 and IPv6, reachable"
        " from other machines; '::' = all IPv6 interfaces; 127.0.0.1 or ::1 = this machine"
        " only)",
    )
    parser.add_argument(
        "--node-name", default=None,
        help="this server's name among the servers sharing one database (default:"
        " hostname:port); each must have its own",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("."),
        help=f"folder of {PORT_FILE}, the lock, and by default the database and"
        " received_files/ (created if missing)",
    )
    add_store_options(parser)
    parser.add_argument(
        "--log-level", default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log verbosity",
    )
    parser.add_argument(
        "--log-format", default=logsetup.PLAIN, choices=logsetup.FORMATS,
        help="plain: with time and level; journal: for systemd's journal (no time of our"
        " own, the level as a <N> priority prefix)",
    )
    parser.add_argument(
        "--proxy-protocol-from", metavar="CIDR[,CIDR...]", type=address_networks, default=(),
        help="balancers whose connections begin with a PROXY protocol header (v1 or v2, as"
        " HAProxy's send-proxy-v2 sends): the header's client address then counts for key"
        " binding, per-address limits and logs. A connection from there without a valid"
        " header is closed; a header from anywhere else is not trusted (default: none)",
    )
    parser.add_argument(
        "--metrics", metavar="HOST:PORT", type=metrics_address, default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off;"
        " needs the cipherdrop[metrics] extra)",
    )
    limits = parser.add_argument_group("limits")
    for spec in dataclasses.fields(Limits):
        limits.add_argument(
            _flag(spec.name),
            dest=spec.name,
            type=finite_number if spec.type in (float, "float") else whole_number,
            default=spec.default,
            help=spec.metadata[HELP],
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
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OverflowError, OSError) as exc:
            # The kernel's own ceiling (fs.nr_open) may be below an unlimited hard limit.
            log.warning("cannot raise the descriptor limit to %d: %s", target, exc)
            target = soft
    if target < wanted:
        log.warning(
            "descriptor limit %d is below --max-connections %d plus %d spare",
            target, connections, SPARE_DESCRIPTORS,
        )


def _flag(name: str) -> str:
    """The command-line flag of a limit's field name."""
    return f"--{name.replace('_', '-')}"


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(Limits)})


def _open_storage(
    urls: StoreUrls, limits: Limits, node: str
) -> tuple[MetadataStore, BlobStore, RepairReport]:
    """Open the stores as ``node`` and repair what a crash left (with other nodes sharing
    them, what this node left: server/storage/commit.py), but for the deletions the
    repair's report leaves: they are done while the server serves (``Sweeper.finish_repair``).

    The caller holds the data folder's lock (:class:`DataDirLock`).

    Raises:
        StorageFault: with a message for the operator.
    """
    group_of = functools.partial(address_group, ipv6_prefix=limits.ipv6_prefix)
    metadata, blobs = open_stores(urls, group_of, node)
    try:
        report = repair_pointers(metadata, blobs, node if is_shared(urls.metadata) else None)
    except OSError as exc:
        metadata.close()
        raise StorageFault(f"cannot repair {urls.blobs}: {exc}") from exc
    except StorageFault:
        metadata.close()
        raise
    log.info(
        "data in %s and %s: %d client(s), %d file(s); %d client deletion(s) finished and"
        " %d unfinished upload(s) deleted while serving,"
        " %d upload(s) published at last, %d row(s) without a file removed,"
        " %d file(s) without a row and %d stray(s) moved aside",
        urls.metadata, urls.blobs, metadata.count_clients(), len(metadata.file_rows()),
        report.removals_finished, report.unpublished_deleted, report.published,
        report.rows_removed, report.blobs_set_aside, report.strays_set_aside,
    )
    return metadata, blobs, report


def main(argv: list[str] | None = None) -> int:
    """Run the server (or, after ``admin``, the operator's tool); the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    prog = program_name()
    if argv[:1] == [ADMIN_COMMAND]:
        from .admin.cli import main as admin_main  # only the operator's tool needs it

        return admin_main(argv[1:], prog=f"{prog} {ADMIN_COMMAND}")
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logsetup.setup(args.log_level, args.log_format)
    try:
        limits = _limits(args)
    except LimitOutOfBounds as exc:
        parser.error(f"argument {_flag(exc.name)}: {exc.problem}")
    try:
        crash_point = crashpoints.from_environment()
    except ValueError as exc:
        parser.error(str(exc))
    if crash_point:
        log.warning("test-only crash point %s armed: this server will kill itself", crash_point)
    try:
        urls = StoreUrls.given(args.metadata, args.blobs, args.data_dir.resolve())
    except BadStoreUrl as exc:
        parser.error(str(exc))
    raise_descriptor_limit(limits.max_connections)
    try:
        data_dir = prepare_data_dir(args.data_dir)
    except DataDirError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    port = args.port if args.port is not None else read_port(data_dir)
    try:
        lock = DataDirLock.acquire(data_dir)  # before start-up repair touches a file
    except LockError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    try:
        return _serve(args, limits, urls, port)
    finally:
        lock.release()


def warn_if_disk_short(blobs: BlobStore, min_free_disk: int, where: object) -> None:
    """Warn when the disk already has less free space than ``--min-free-disk`` needs.

    Every upload would be refused (each refusal is a warning too): say so
    once, at start-up, rather than let the server look healthy.
    """
    free = blobs.room()
    if free is not None and free < min_free_disk:
        log.warning(
            "only %s free on the disk of %s, below --min-free-disk %s: every upload will be"
            " refused until space is freed (or --min-free-disk lowered)",
            size_text(free), where, size_text(min_free_disk),
        )


def announce_listening(host: str, port: int) -> None:
    """Where the server listens: loudly (a warning) when it is every interface."""
    every = EVERY_INTERFACE.get(host.strip("[]"))
    if every is not None:
        log.warning(
            "listening on %s port %d: %s, reachable from other machines;"
            " --host 127.0.0.1 (or ::1) keeps it to this one", host or "*", port, every,
        )
    else:
        log.info("listening on %s port %d", host, port)


def listen_failure(exc: OSError, host: str, port: int) -> str:
    """Why the server cannot listen, with what to do about it."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve --host {host!r} ({exc.strerror or exc})"
    if exc.errno is not None and exc.errno < 0:  # a gaierror that create_server re-raised
        return f"--host {host!r} did not resolve to an address"
    # create_server's own text repeats the address: the bare reason instead.
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{reason}: another program uses port {port}; pick another with --port"
    if exc.errno == errno.EACCES:
        return f"{reason}: ports below 1024 need privileges; pick another with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{reason}: {host} is not an address of this machine; check --host"
    return reason


def _stop_signals() -> list[signal.Signals]:
    """The signals to stop on here (SIGHUP only where it exists and is not ignored)."""
    found = [getattr(signal, name) for name in _STOP_SIGNALS]
    hangup = getattr(signal, _HANGUP_SIGNAL, None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        found.append(hangup)
    return found


def node_name(given: str | None, port: int) -> str:
    """This server's name among those sharing its database: ``--node-name``, or host:port."""
    return given or f"{socket.gethostname()}:{port}"


def start_metrics(address: tuple[str, int] | None) -> Metrics:
    """The metrics to count into: served at ``address``, or none without one.

    Raises:
        MetricsUnavailable: prometheus_client is not installed.
        OSError: the address cannot be bound.
    """
    if address is None:
        return NO_METRICS
    metrics = PrometheusMetrics()
    host, port = metrics.serve(*address)
    log.info("metrics on http://%s/metrics", _host_port(host, port))
    return metrics


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve(args: argparse.Namespace, limits: Limits, urls: StoreUrls, port: int) -> int:
    """Open the storage, listen and serve until a stop signal; the exit code."""
    try:
        metrics = start_metrics(args.metrics)
    except MetricsUnavailable as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP_FAILED
    except OSError as exc:
        log.error("cannot serve the metrics on %s: %s", _host_port(*args.metrics),
                  listen_failure(exc, args.metrics[0], args.metrics[1]))
        return EXIT_STARTUP_FAILED
    try:
        return _serve_with(args, limits, urls, port, metrics)
    finally:
        metrics.close()


def _serve_with(
    args: argparse.Namespace, limits: Limits, urls: StoreUrls, port: int, metrics: Metrics
) -> int:
    try:
        listener = create_listener(args.host, port)
    except OSError as exc:
        log.error(
            "cannot listen on %s port %d: %s", args.host or "all interfaces", port,
            listen_failure(exc, args.host, port),
        )
        return EXIT_STARTUP_FAILED
    node = node_name(args.node_name, listener.getsockname()[1])  # repair needs it
    try:
        metadata, blobs, repaired = _open_storage(urls, limits, node)
    except StorageFault as exc:
        log.error("cannot start: %s", exc)
        listener.close()
        return EXIT_STARTUP_FAILED
    warn_if_disk_short(blobs, limits.min_free_disk, urls.blobs)
    try:
        coordination = open_coordination(urls.metadata, node, limits.message_deadline)
    except StorageFault as exc:
        log.error("cannot start: %s", exc)
        listener.close()
        metadata.close()
        return EXIT_STARTUP_FAILED
    if coordination is not None:
        log.info("node %s: holds, leases and failure counts shared in the metadata database", node)
    app = App.build(metadata, blobs, limits, metrics=metrics, coordination=coordination)
    app.sweeper.finish_repair(repaired)  # off the serving path (the blob port's worker)
    proxies = ProxySources(args.proxy_protocol_from)
    server = Server(app, listener, proxies)
    metrics.watch_connections(lambda: len(server.channels))  # read at each scrape
    previous = {
        signum: signal.signal(signum, lambda *_: server.drain())
        for signum in _stop_signals()
    }
    announce_listening(args.host, server.address[1])
    if proxies:
        log.info("connections from %s must begin with a PROXY protocol header", proxies)
    try:
        server.serve_forever()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        durability_lost = server.durability_lost
        app.coordination.close()
        try:
            metadata.close()
        except DurabilityLost as exc:  # lost in a round the loop did not get to report
            log.error("closing the database: %s", exc)
            durability_lost = exc
        except StorageFault as exc:
            log.error("closing the database: %s", exc)
    if durability_lost is not None:
        log.critical("stopped: the database could not be made durable; restart the server")
        return EXIT_DURABILITY_LOST
    log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
