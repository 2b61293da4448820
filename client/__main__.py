"""``python -m client`` (``cipherdrop-client``): upload files to a cipherdrop server.

Run in a folder holding ``transfer.info`` (line 1 ``host:port``, line 2 the
client name, line 3 the file to send), it does the whole flow without
questions: the first run registers and writes ``me.info`` and ``priv.key``,
later runs reconnect with them; then the file is sent encrypted and its cksum
confirmed with the server (docs/PROTOCOL.md).

Exit codes (``ExitCode``):

    0    every file was uploaded and its cksum confirmed
    1    the server kept answering with errors (1607 or unexpected replies)
         after 3 retries of a step
    2    bad command line
    3    configuration error: transfer.info, me.info or priv.key, or a file
         to send (missing, unreadable, too large)
    4    registration refused (1601): the name belongs to another client
    5    network failure: server unreachable, connection closed, or no
         answer within the time-out
    6    cksum failure: a file's cksum still differed after 3 resends
    7    some files failed and the others were uploaded and verified (the
         summary names each); when every file fails, the code of the first
    8    the address is not a cipherdrop server: its first answer is another
         protocol's (SSH, HTTP, TLS) or no edition's; nothing is retried
    70   internal error (a bug: please report it with --verbose output)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from protocol import __version__
from protocol.editions import BY_NAME, V3
from protocol.printable import OneLineFormatter, quoted

from .config import (
    Identity, RegisteredName, ServerAddress, check_name, load_identity, load_settings,
    parse_server,
)
from .errors import (
    ClientError,
    ConfigError,
    NetworkError,
    NotAServer,
    RegistrationRefused,
    ServerError,
)
from .history import record_sent, sent_names
from .jobs import FileOutcome, ParallelUpload
from .locations import folders_of, identity_folder, remember_registration, user_folder
from .packets import DEFAULT_PACKET_SIZE, Layout
from .progress import BarProgress, CombinedProgress, Display, Progress, make_progress
from .selection import RENAME_FLAG, Upload, plan_uploads, sendable_path
from .send_rate import DEFAULT_MIN_RATE
from .session import DEFAULT_TIMEOUT, Session
from .summary import reason, summary_lines
from .turns import SharedKey, Turns
from .upload import MAX_RESENDS, MAX_RETRIES, Client

log = logging.getLogger("client")

#: The name in ``usage:`` when started as ``python -m client``.
MODULE_PROGRAM = "python -m client"


def program_name(argv0: str | None = None) -> str:
    """How the program was started: ``python -m client`` or the script's name."""
    name = Path(sys.argv[0] if argv0 is None else argv0).name
    return MODULE_PROGRAM if name in ("", "__main__.py") else name
#: Largest --packet-size: memory holds about two packets.
MAX_PACKET_SIZE = 64 * 1024 * 1024
PACKET_ALIGNMENT = 16
#: --jobs: connections at once (the server takes up to 8 uploads of a client at once).
DEFAULT_JOBS = 1
MAX_JOBS = 16


class ExitCode(enum.IntEnum):
    """The process exit status; documented in ``--help`` and the module docstring."""

    OK = 0
    SERVER_ERROR = 1
    USAGE = 2
    CONFIG = 3
    REGISTRATION_REFUSED = 4
    NETWORK = 5
    CHECKSUM = 6
    PARTIAL = 7
    NOT_A_SERVER = 8
    INTERNAL = 70
    INTERRUPTED = 130


EXIT_CODE_HELP = {
    ExitCode.OK: "every file uploaded and its cksum confirmed",
    ExitCode.SERVER_ERROR: f"the server kept answering with errors after {MAX_RETRIES} retries",
    ExitCode.USAGE: "bad command line",
    ExitCode.CONFIG: "bad transfer.info, me.info or priv.key, or a file that cannot be sent",
    ExitCode.REGISTRATION_REFUSED: "registration refused (1601): the name is taken",
    ExitCode.NETWORK: "server unreachable, connection closed, or no answer in time",
    ExitCode.CHECKSUM: f"a file's cksum still differed after {MAX_RESENDS} resends",
    ExitCode.PARTIAL: "some files failed, the others were verified (see the summary)",
    ExitCode.NOT_A_SERVER: "not a cipherdrop server: it answered in another protocol",
    ExitCode.INTERNAL: "internal error (a bug)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

#: The exit code of each expected failure; the first matching class wins.
ERROR_EXIT_CODES: dict[type[ClientError], ExitCode] = {
    ConfigError: ExitCode.CONFIG,
    RegistrationRefused: ExitCode.REGISTRATION_REFUSED,
    NetworkError: ExitCode.NETWORK,
    NotAServer: ExitCode.NOT_A_SERVER,
    ServerError: ExitCode.SERVER_ERROR,
}

DESCRIPTION = """\
Upload files to a cipherdrop server, encrypted (AES-256 under a key exchanged
with RSA-1024), and confirm each one's cksum with the server. The encryption
keeps the content from a listener on the network, not from one who controls
the path: the server is not authenticated and the content has no MAC
(docs/SECURITY.md).

Run in a folder (or with --config-dir) holding transfer.info:
  line 1  host:port of the server
  line 2  the client name (printable ASCII, at most 100 characters)
  line 3  the file to send (relative paths are relative to that folder)
--server, --name and FILE arguments override these lines; transfer.info is
not needed when all three are given.

The first run registers the name, makes an RSA key pair and writes me.info
(name, client id, private key) and priv.key (private key), both readable by
their owner only. Later runs reconnect with them, under the name in me.info:
--name is then not needed, and a different --name is refused (use --config-dir
with another folder for another name).
If the server no longer knows the client, it registers again; if the name
belongs to someone else, it stops (exit 4).

Where me.info and priv.key live, first match wins:
  1  --config-dir DIR
  2  $XDG_CONFIG_HOME/cipherdrop/<host>_<port>/ (default ~/.config/...), when it
     holds me.info and the working folder does not: put an identity there to
     use it from any folder
  3  the working folder (a first registration writes them there)
me.info and priv.key must be readable by their owner only (chmod 600).

Each file is stored under its name; two files of one run with the same name
are refused before anything is sent (or sent as "x (2).txt" with
--rename-duplicates). -r sends a folder's files under their paths
("photos/2024/a.jpg"). An upload replaces a file of the same name sent in an
earlier run (the protocol's rule; -v says so).

Several FILEs are sent one after another in one session (or over --jobs
connections at once); a file that fails does not stop the others, and a
summary names how each went. On an error reply the client prints "server
responded with an error" and retries: 3 in all for a file, whatever step of
it failed, across its resends and layouts (a step outside a file, such as
the registration, has 3 of its own); on a cksum mismatch it sends the file
again, up to 3 times. Sizes and rates are in decimal units (1 MB = 1,000,000
bytes)."""


def _exit_code_table() -> str:
    lines = ["exit codes:"]
    lines += [f"  {int(code):<4} {EXIT_CODE_HELP[code]}" for code in ExitCode]
    return "\n".join(lines)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or above, got {text}")
    return value


def _packet_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not PACKET_ALIGNMENT <= value <= MAX_PACKET_SIZE or value % PACKET_ALIGNMENT:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of {PACKET_ALIGNMENT} from {PACKET_ALIGNMENT}"
            f" to {MAX_PACKET_SIZE}, got {value}"
        )
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose refusal is one line, as the server's: the error, then
    where the help is (no usage block before it)."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE; see PROG --help`` and exit with ExitCode.USAGE."""
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the exit codes in its help."""
    parser = OneLineErrorParser(
        prog=program_name(),
        description=DESCRIPTION,
        epilog=_exit_code_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="file(s) to send, in this order (default: transfer.info line 3);"
        " folders with -r",
    )
    parser.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="send the files in FILE folders, each under its path from the folder"
        ' ("photos/2024/a.jpg"; the base name when the path is over 254 bytes)',
    )
    parser.add_argument(
        "--flat",
        action="store_true",
        help="with -r, send every file under its base name only (for servers that"
        ' refuse "/" in a name)',
    )
    parser.add_argument(
        RENAME_FLAG,
        action="store_true",
        help='send a file whose name an earlier file of the run has as "name (2).ext"'
        " (default: refuse the run before sending anything)",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        type=_server_flag,
        help="server address (overrides transfer.info line 1)",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        type=_name_flag,
        help="client name to register (overrides transfer.info line 2)",
    )
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="folder of transfer.info, me.info and priv.key (default: the current one,"
        " and for me.info and priv.key the per-user folder described above)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help="give up when a connect, a send that makes no progress, or a whole answer"
        f" takes longer than this (default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--min-rate",
        metavar="BYTES_PER_S",
        type=_rate,
        default=DEFAULT_MIN_RATE,
        help="give up on a send that averages fewer bytes per second than this over"
        " a --timeout of sending and retry it on a new connection (one of the file's"
        f" retries), 0 for no floor (default: {DEFAULT_MIN_RATE})",
    )
    parser.add_argument(
        "--packet-size",
        metavar="BYTES",
        type=_packet_size,
        default=DEFAULT_PACKET_SIZE,
        help=(
            f"ciphertext bytes per 828 packet, a multiple of {PACKET_ALIGNMENT}"
            f" (default: {DEFAULT_PACKET_SIZE}); grown when a file would need"
            " more than 65535 packets"
        ),
    )
    layout = parser.add_argument_group(
        "layout (to test a server: each reproduces a variant of docs/PROTOCOL.md)"
    )
    layout.add_argument(
        "--field-order",
        choices=("spec", "swapped"),
        default="spec",
        help="packet_number then total_packets (spec), or the other way round (variant 5)",
    )
    layout.add_argument(
        "--encrypt",
        choices=("whole", "per-packet"),
        default="whole",
        help="one CBC stream for the file (whole), or one per packet of --packet-size"
        " plaintext bytes (variant 6)",
    )
    layout.add_argument(
        "--connection",
        choices=("persistent", "per-request"),
        default="persistent",
        help="one connection for the session, or one per request (variant 7)",
    )
    layout.add_argument(
        "--strict",
        action="store_true",
        help="never switch layout on its own: by default, when a server refuses or drops"
        " the standard layout in a known way, the upload is retried once in the layout"
        " the symptom points to, for the rest of the run. Either way a file gets"
        f" {MAX_RETRIES} retries in all (after error replies, a dropped connection or a"
        " send under --min-rate, across its resends), plus one attempt in each layout"
        " switched to",
    )
    layout.add_argument(
        "--pad-last-packet",
        action="store_true",
        help="zero-fill the last packet to --packet-size (variant 4)",
    )
    parser.add_argument(
        "--edition",
        choices=sorted(BY_NAME),
        default=V3.name,
        help="the protocol edition to speak (default: v3): the client becomes a reference"
        " client of that semester's edition (docs/EDITIONS.md)",
    )
    _add_jobs_argument(parser)
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, only warnings and errors"
    )
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="log every request and reply"
    )
    return parser


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not DEFAULT_JOBS <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_JOBS}, got {value}")
    return value


def _add_jobs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-j",
        "--jobs",
        metavar="N",
        type=_jobs,
        default=DEFAULT_JOBS,
        help=f"upload the FILEs over N connections at once (1 to {MAX_JOBS}, default"
        f" {DEFAULT_JOBS}); they share one AES key and stream at once (in turns, if the"
        " server refuses that)",
    )


def _setup_logging(args: argparse.Namespace) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(message)s"))
    log.addHandler(handler)
    if args.verbose:
        log.setLevel(logging.DEBUG)
    elif args.quiet:
        log.setLevel(logging.WARNING)
    else:
        log.setLevel(logging.INFO)
    return handler


def _server_flag(text: str) -> str:
    """--server checked on the command line: a bad address is a usage error (exit 2)."""
    try:
        parse_server(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _name_flag(text: str) -> str:
    """--name checked on the command line: a bad name is a usage error (exit 2)."""
    reason = check_name(text)
    if reason is not None:
        raise argparse.ArgumentTypeError(reason)
    return text


def _log_above_the_bar() -> contextlib.AbstractContextManager[None]:
    """Log lines printed above the progress bar, not through it."""
    # imported here, as tqdm itself (client/progress.py): only a bar needs it
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[log])


def _run(args: argparse.Namespace) -> ExitCode:
    work: Path = args.config_dir or Path(".")
    if not work.is_dir():
        raise ConfigError(work, "the configuration folder does not exist")
    uploads = _plan_files(args)
    explicit = args.config_dir is not None

    # The identity registered with the server load_settings names (read once).
    found: dict[ServerAddress, tuple[Path, Identity | None]] = {}

    def stored_name(server: ServerAddress) -> RegisteredName | None:
        folder = identity_folder(work, server, explicit=explicit)
        found[server] = folder, load_identity(folder)
        identity = found[server][1]
        return None if identity is None else (identity.name, folder)

    settings = load_settings(
        work, server=args.server, name=args.name,
        files=tuple(upload.path for upload in uploads), stored_name=stored_name,
    )
    if not uploads:  # transfer.info line 3
        uploads = [Upload(path, os.fsencode(path.name)) for path in settings.files]
    config_dir, identity = found[settings.server]
    if identity is not None:
        _note_replacements(config_dir, identity, uploads)
    progress = make_progress(sys.stderr, quiet=args.quiet)
    redirect = (
        _log_above_the_bar() if isinstance(progress, BarProgress) else contextlib.nullcontext()
    )
    with redirect:
        return _upload_all(args, settings, config_dir, identity, uploads, progress)


def _new_session(args: argparse.Namespace, server) -> Session:
    return Session(
        server,
        args.timeout,
        BY_NAME[args.edition],
        per_request=args.connection == "per-request",
        min_rate=args.min_rate,
    )


def _new_client(
    args: argparse.Namespace,
    session: Session,
    config_dir: Path,
    name: str,
    identity,
    progress: Progress,
    **shared,
) -> Client:
    """A client on ``session`` with the layout and packet size of the command line."""
    return Client(
        session,
        config_dir=config_dir,
        name=name,
        identity=identity,
        progress=progress,
        packet_size=args.packet_size,
        layout=Layout(
            swapped=args.field_order == "swapped",
            per_packet=args.encrypt == "per-packet",
            pad_last=args.pad_last_packet and args.encrypt == "whole",
        ),
        fallback=not args.strict,
        **shared,
    )


def _upload_all(
    args: argparse.Namespace,
    settings,
    config_dir: Path,
    identity: Identity | None,
    uploads: Sequence[Upload],
    display: Display,
) -> ExitCode:
    """The files over ``--jobs`` connections; the summary and the run's exit code.

    One connection reports each file on the display; several share one
    display of all the files (bytes, rate, files done).
    """
    files = [sendable_path(upload) for upload in uploads]
    combined = None
    if args.jobs > DEFAULT_JOBS and len(files) > 1:
        combined = CombinedProgress(display, len(files), sum(_size(path) for path in files))
    shared = {"turns": Turns(), "shared_key": SharedKey()} if combined else {}

    def new_worker(worker_identity) -> Client:
        session = _new_session(args, settings.server)
        progress = combined.view() if combined else display
        return _new_client(
            args, session, config_dir, settings.name, worker_identity, progress, **shared
        )

    first = new_worker(identity)

    def done(outcome: FileOutcome) -> None:
        if combined:
            combined.file_done()

    try:
        outcomes = ParallelUpload(first, new_worker, args.jobs).run(files, done)
    except RegistrationRefused as exc:
        raise _with_folder_hint(exc, settings.server, settings.name, config_dir) from None
    finally:
        _remember_identity(settings.server, config_dir, identity, first.identity)
        first.reset()
        if combined:
            combined.finish()
    if first.identity is not None:
        confirmed = [o.result.plan.wire_name.text for o in outcomes if o.verified and o.result]
        record_sent(config_dir, first.identity.client_id, confirmed)
    return _report(outcomes)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reported when its upload fails


def _report(outcomes: Sequence[FileOutcome]) -> ExitCode:
    """Log why each failed file failed, the summary of several files; the exit code.

    All verified: 0. Some failed: PARTIAL. All failed: the code of the first
    failure, as a run of that one file would end.
    """
    failures = [outcome for outcome in outcomes if not outcome.verified]
    for outcome in failures:
        if outcome.error is not None:
            log.error("error: %s", reason(outcome.error))
        else:
            log.error("error: cksum never matched for %s", quoted(outcome.path.name))
    if len(outcomes) > 1:
        level = logging.WARNING if failures else logging.INFO
        for line in summary_lines(outcomes):
            log.log(level, "%s", line)
    if not failures:
        return ExitCode.OK
    if len(failures) < len(outcomes):
        return ExitCode.PARTIAL
    first = failures[0]
    return ExitCode.CHECKSUM if first.error is None else _exit_code(first.error)


def _exit_code(exc: ClientError) -> ExitCode:
    for kind, code in ERROR_EXIT_CODES.items():
        if isinstance(exc, kind):
            return code
    return ExitCode.INTERNAL


def _plan_files(args: argparse.Namespace) -> list[Upload]:
    """The FILE arguments as uploads, each under its own name (selection.py)."""
    if args.flat and not args.recursive:
        log.warning("--flat only applies with -r; ignored")
    return plan_uploads(
        args.files,
        recursive=args.recursive,
        flat=args.flat,
        rename_duplicates=args.rename_duplicates,
    )


def _note_replacements(folder: Path, identity: Identity, uploads: list[Upload]) -> None:
    """With -v: which uploads replace a file this client stored in an earlier run."""
    earlier = sent_names(folder, identity.client_id)
    for upload in uploads:
        if upload.name in earlier:
            log.debug(
                "%r was stored by this client in an earlier run; this upload replaces it"
                " (the protocol's rule)",
                upload.display_name,
            )


def _with_folder_hint(
    exc: RegistrationRefused, server: ServerAddress, name: str, folder: Path
) -> RegistrationRefused:
    """The 1601 error, saying where this machine's identity for the name is, if known."""
    here = folder.resolve()
    elsewhere = [known for known in folders_of(server, name) if known.resolve() != here]
    if not elsewhere:
        return RegistrationRefused(
            f"{exc}; if this machine registered it from another folder, run from that"
            " folder or pass --config-dir with the folder of its me.info and priv.key"
        )
    # The name is ours, from another folder: "choose another name" would mislead.
    return RegistrationRefused(
        f"the server at {server} refused to register {name!r} (1601): this machine"
        f" registered {name!r} with {server} from {elsewhere[0]}: run from that folder"
        f" or pass --config-dir {elsewhere[0]} (or move its me.info and priv.key to"
        f" {user_folder(server)} to use them from any folder)"
    )


def _remember_identity(
    server: ServerAddress, folder: Path, before: Identity | None, after: Identity | None
) -> None:
    """List the folder of a new registration, for the hint of a later 1601."""
    if after is None or (before is not None and before.client_id == after.client_id):
        return
    try:
        remember_registration(server, after.name, folder)
    except ConfigError as exc:
        log.warning("could not note where %r is registered: %s", after.name, exc)


def _error_message(exc: ClientError) -> str:
    step = getattr(exc, "step", None) if isinstance(exc, NetworkError) else None
    return f"error: {step}: {exc}" if step else f"error: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; return the exit code (see ExitCode)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return int(exc.code or 0)
    handler = _setup_logging(args)
    try:
        return int(_run(args))
    except ClientError as exc:
        log.error("error: %s", reason(exc))
        return int(_exit_code(exc))
    except KeyboardInterrupt:
        log.error("error: interrupted")
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # the one broad catch, at the edge
        log.error("error: internal error: %r", exc, exc_info=args.verbose)
        return int(ExitCode.INTERNAL)
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
