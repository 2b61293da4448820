"""Checking the server's command line: each bad value ends in one line, never a traceback.

argparse calls the ``type`` functions below; an ``ArgumentTypeError`` becomes
one line, ``error: argument --port: …; see … --help``, and exit code 2
(:class:`OneLineErrorParser`: no usage block before it).
:func:`prepare_data_dir` makes the data folder usable before anything else
touches it.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import os
import socket
import sys
from pathlib import Path
from typing import NoReturn

MAX_PORT = 65535
#: The name ``python -m server`` gives itself in ``usage:`` when run that way.
MODULE_PROGRAM = "python -m server"
_MAIN_FILE = "__main__.py"
#: A data folder made by the server is its own: nobody else reads received files.
DATA_DIR_MODE = 0o700


#: A flag's help that already says what its default does (argparse would add
#: ``(default: None)`` after it).
DEFAULT_STATED = "(default:"
#: Exit code of a refused command line (argparse's own).
EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """A parser whose refusal is one line (the error, then where the help is)."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE; see PROG --help`` and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: …)`` to a flag's help unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and DEFAULT_STATED in action.help:
            return action.help
        return super()._get_help_string(action)


class DataDirError(Exception):
    """The data folder cannot be used; the message says which and why."""


def program_name(argv0: str | None = None) -> str:
    """How the program was started: ``python -m server`` or the script's name."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = Path(argv0).name
    if not name or name == _MAIN_FILE:
        return MODULE_PROGRAM
    return name


def _whole_number(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def port_number(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    value = _whole_number(text)
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(
            f"must be 0 (any free port) to {MAX_PORT}, got {value}"
        )
    return value


def listen_host(text: str) -> str:
    """An address to listen on: '' (every interface), an IPv6 literal (bracketed or not)
    or a name that resolves."""
    if not text:
        return text
    try:
        socket.getaddrinfo(
            text.removeprefix("[").removesuffix("]"), None,
            type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} did not resolve to an address ({exc.strerror or exc})"
        ) from None
    except UnicodeError:  # a label over 63 characters, or not IDNA
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name") from None
    return text


def metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) where the metrics are served; port 0 picks one."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, as in 127.0.0.1:9100, got {text!r}"
        )
    return listen_host(host), port_number(port_text)


#: Separates the networks of a list option (``--proxy-protocol-from``).
LIST_SEPARATOR = ","


def address_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Networks in CIDR form or single addresses, comma-separated (``127.0.0.1,127.0.1.0/24``).

    A network with host bits set (``127.0.1.3/24``) is refused rather than
    widened: these lists say whom the server trusts.
    """
    networks = []
    for item in text.split(LIST_SEPARATOR):
        try:
            networks.append(ipaddress.ip_network(item.strip()))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} is no address or CIDR network ({exc})"
            ) from None
    return tuple(networks)


def whole_number(text: str) -> int:
    """A limit counted in whole units (its bounds are checked by ``Limits``)."""
    return _whole_number(text)


def finite_number(text: str) -> float:
    """A limit in seconds or a share: a finite decimal number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def prepare_data_dir(path: Path) -> Path:
    """The data folder, created (with its parents) if it does not exist.

    Raises:
        DataDirError: it is something else than a folder, or cannot be created.
    """
    if path.exists() and not path.is_dir():
        raise DataDirError(f"data folder {path} is a file, not a folder")
    if path.is_symlink() and not path.exists():
        raise DataDirError(f"data folder {path} is a symbolic link to nothing")
    try:
        path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"cannot create data folder {path}: {exc.strerror or exc}{_where(exc, path)}"
        ) from exc
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataDirError(f"data folder {path} is not readable: permission denied")
    if not os.access(path, os.W_OK):
        read_only = os.statvfs(path).f_flag & os.ST_RDONLY
        why = os.strerror(errno.EROFS) if read_only else "permission denied"
        raise DataDirError(f"data folder {path} is not writable: {why}")
    return path


def _where(exc: OSError, path: Path) -> str:
    """The path an error names, when it is not the folder asked for (a parent)."""
    if exc.filename and Path(exc.filename) != path:
        return f" (at {exc.filename})"
    return ""
