"""The client's files: ``transfer.info``, ``me.info`` and ``priv.key``.

docs/PROTOCOL.md, "Client files". Every problem raises :class:`ConfigError` naming
the file and the line. ``me.info`` and ``priv.key`` hold the private key, so
they are written atomically and readable by their owner only.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from Crypto.PublicKey import RSA

from protocol import CryptoError
from protocol.codes import CLIENT_ID_SIZE
from protocol.crypto import export_private_key, import_private_key
from protocol.printable import quoted

from .errors import ConfigError
from .packets import MAX_FILE_SIZE, check_wire_name, wire_file_name

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSFER_INFO = "transfer.info"
ME_INFO = "me.info"
PRIV_KEY = "priv.key"

#: Lines of transfer.info and me.info (1-based, as people count them).
SERVER_LINE, NAME_LINE, FILE_LINE = 1, 2, 3
ME_NAME_LINE, ME_ID_LINE, ME_KEY_LINE = 1, 2, 3
#: Owner read and write only: the files hold the private key.
PRIVATE_FILE_MODE = 0o600
MAX_PORT = 65535
#: Longest client name ``transfer.info`` allows (the wire allows 254).
MAX_CONFIG_NAME_LENGTH = 100
_PRINTABLE_ASCII = range(0x20, 0x7F)
#: A UTF-8 byte-order mark, as Windows editors write it.
_BOM = "\ufeff"
#: What marks a URL (``http://host:port``), which is not an address.
_SCHEME_SEPARATOR = "://"
#: Characters no host name or address holds (a path, a user, a query).
_NOT_IN_HOST = set("/\\@?#")
#: Permission bits for anyone but the owner: ssh refuses keys with any of them.
_OTHERS_BITS = 0o077


@dataclass(frozen=True)
class ServerAddress:
    """Where the server listens."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """What one run does: the server, the client name and the files to send."""

    server: ServerAddress
    name: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Identity:
    """A registered client: ``me.info`` and ``priv.key``."""

    name: str
    client_id: bytes
    private_key: RSA.RsaKey


# -- parsing helpers -----------------------------------------------------------


def parse_server(text: str) -> ServerAddress:
    """``host:port`` (``[v6]:port`` for IPv6) as a ServerAddress.

    Raises:
        ValueError: with a reason fit for a person (a URL, a missing port).
    """
    text = text.strip()
    scheme, sep, rest = text.partition(_SCHEME_SEPARATOR)
    if sep:
        example = rest.split("/", 1)[0]
        if ":" not in example:
            example = f"{example or 'host'}:port"
        raise ValueError(
            f"{quoted(text)} is a URL; the client speaks its own protocol over TCP,"
            f" not {scheme or 'a scheme'}: write host:port, as in {quoted(example)}"
        )
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or (host.startswith("[") != host.endswith("]")):
        raise ValueError(
            f"expected host:port, got {quoted(text)}: add the server's port (its"
            " port.info holds it), as in 127.0.0.1:1256"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(char.isspace() or char in _NOT_IN_HOST for char in host):
        raise ValueError(f"bad host in {quoted(text)}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= MAX_PORT:
        raise ValueError(
            f"bad port {quoted(port_text)} in {quoted(text)} (expected 1 to {MAX_PORT})"
        )
    return ServerAddress(host, int(port_text))


def check_name(name: str) -> str | None:
    """Why a client name is not allowed, or None if it is."""
    if not name:
        return "the client name is empty"
    if len(name) > MAX_CONFIG_NAME_LENGTH:
        return f"the client name is {len(name)} characters; at most {MAX_CONFIG_NAME_LENGTH}"
    if not all(ord(char) in _PRINTABLE_ASCII for char in name):
        return f"the client name {quoted(name)} has characters other than printable ASCII"
    if name.strip() != name:
        return f"the client name {quoted(name)} starts or ends with a space"
    return None


def check_file(path: Path) -> int:
    """The size of a file that can be sent.

    Raises:
        ValueError: missing, not a regular file, unreadable, too large, or a
            name the protocol cannot carry.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ValueError(f"file {quoted(str(path))} not found") from None
    except OSError as exc:
        raise ValueError(f"cannot access {quoted(str(path))}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{quoted(str(path))} is not a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {quoted(str(path))}: {exc.strerror}") from None
    if info.st_size > MAX_FILE_SIZE:
        raise ValueError(
            f"{quoted(str(path))} is {info.st_size} bytes; the protocol's 4-byte size"
            f" fields carry files of at most {MAX_FILE_SIZE} bytes (4 GiB - 17)"
        )
    reason = check_wire_name(wire_file_name(path))
    if reason:
        raise ValueError(f"{quoted(str(path))}: {reason}")
    return info.st_size


def _read_lines(path: Path) -> list[str]:
    """A text file's lines without line ends (CRLF and a BOM tolerated).

    Raises:
        ConfigError: the file cannot be read or is not UTF-8.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from None
    return text.removeprefix(_BOM).splitlines()


def _line(path: Path, lines: list[str], number: int, what: str) -> str:
    if len(lines) < number or not lines[number - 1].strip():
        raise ConfigError(path, f"missing {what}", number)
    return lines[number - 1]


# -- transfer.info -------------------------------------------------------------


#: The name registered with a server, and the folder of its me.info.
RegisteredName = tuple[str, Path]


def load_settings(
    config_dir: Path,
    *,
    server: str | None = None,
    name: str | None = None,
    files: tuple[Path, ...] = (),
    stored_name: Callable[[ServerAddress], RegisteredName | None] = lambda _: None,
) -> Settings:
    """Read transfer.info in config_dir; the arguments override its lines.

    transfer.info is only needed for what the arguments leave out; a relative
    path on its line 3 is relative to config_dir. ``stored_name`` gives the
    name of the identity already registered with a server, and the folder of
    its me.info, if any: that identity needs no name, and a different
    ``--name`` is refused.

    Raises:
        ConfigError: naming the file (or the argument) and the line.
    """
    path = config_dir / TRANSFER_INFO
    # transfer.info's lines; none when the arguments give everything (no line is read then).
    lines: list[str] = []
    # The flag is checked first: its mistake is the one to report.
    flag_address = None
    registered = None
    if server is not None:
        flag_address = _parse_with(lambda: parse_server(server), "--server", None)
        registered = stored_name(flag_address)
    if server is None or (name is None and registered is None) or not files:
        if not path.is_file():
            raise ConfigError(
                path, "not found (needed unless --server, --name and files are given)"
            )
        lines = _read_lines(path)

    if flag_address is not None:
        address = flag_address
    else:
        address = _parse_with(
            lambda: parse_server(_line(path, lines, SERVER_LINE, "host:port")), path, SERVER_LINE
        )
        registered = stored_name(address)
    name = _client_name(path, lines, name, registered)

    if files:
        _check_files(files)
        chosen = tuple(files)
    else:
        text = _line(path, lines, FILE_LINE, "file path").strip()
        file = config_dir / os.path.expanduser(text)
        _parse_with(lambda: check_file(file), path, FILE_LINE)
        chosen = (file,)
    return Settings(server=address, name=name, files=chosen)


def _client_name(
    path: Path, lines: list[str], flag: str | None, stored: RegisteredName | None
) -> str:
    """The name of this run: the registered one, else --name, else transfer.info line 2.

    Raises:
        ConfigError: --name differs from the registered name, or the name is not allowed.
    """
    registered = None if stored is None else stored[0]
    if flag is not None and stored is not None and flag != registered:
        me_info = quoted(str(stored[1] / ME_INFO))
        raise ConfigError(
            "--name",
            f"{me_info} is the client {quoted(stored[0])}, not {quoted(flag)}: leave"
            f" --name out to send as {quoted(stored[0])}, or pass --config-dir with"
            f" another folder to use (or register) {quoted(flag)} there",
        )
    source: Path | str
    line: int | None
    if flag is not None:
        name, source, line = flag, "--name", None
    elif registered is not None:
        name, source, line = registered, ME_INFO, ME_NAME_LINE
        if lines and len(lines) >= NAME_LINE and lines[NAME_LINE - 1].strip() != registered:
            log.warning(
                "%s line %d names %r but %s holds the client %r; sending as %r"
                " (remove %s and %s to register a new name)",
                path, NAME_LINE, lines[NAME_LINE - 1].strip(), ME_INFO, registered,
                registered, ME_INFO, PRIV_KEY,
            )
    else:
        name, source, line = _line(path, lines, NAME_LINE, "client name").strip(), path, NAME_LINE
    reason = check_name(name)
    if reason:
        raise ConfigError(source, reason, line)
    return name


def _check_files(files: tuple[Path, ...]) -> None:
    """Check every file of the run before any is sent.

    Raises:
        ConfigError: naming the first file that cannot be sent (and how many
            others cannot), saying that nothing was sent when the run has several.
    """
    problems = []
    for file in files:
        try:
            check_file(file)
        except ValueError as exc:
            problems.append((file, str(exc)))
    if not problems:
        return
    first, reason = problems[0]
    if len(files) > 1:
        others = len(problems) - 1
        more = f" (and {others} other file(s) of the run cannot either)" if others else ""
        reason += f"{more}; nothing was sent: each of the {len(files)} files is checked first"
    raise ConfigError(first, reason)


def _parse_with(parse: Callable[[], T], source: Path | str, line: int | None) -> T:
    try:
        return parse()
    except ValueError as exc:
        raise ConfigError(source, str(exc), line) from None


# -- me.info and priv.key --------------------------------------------------------


def _decode_key(path: Path, text: str, line: int) -> RSA.RsaKey:
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(path, "the private key is not valid Base64", line) from None
    try:
        return import_private_key(der)
    except CryptoError as exc:
        raise ConfigError(path, f"the private key is damaged ({exc})", line) from None


def load_identity(config_dir: Path) -> Identity | None:
    """The identity in me.info (checked against priv.key), None before registering.

    The key may span several lines from line 3 on (Crypto++'s Base64 encoder
    breaks lines). A missing priv.key is written again from me.info.

    Raises:
        ConfigError: a damaged me.info or priv.key, naming file and line.
    """
    path = config_dir / ME_INFO
    if not path.exists():
        return None
    warn_if_exposed(path)
    lines = _read_lines(path)
    name = _line(path, lines, ME_NAME_LINE, "client name").strip()
    reason = check_name(name)
    if reason:
        raise ConfigError(path, reason, ME_NAME_LINE)
    id_text = _line(path, lines, ME_ID_LINE, "client id").strip()
    try:
        client_id = bytes.fromhex(id_text)
    except ValueError:
        client_id = b""
    if len(client_id) != CLIENT_ID_SIZE or len(id_text) != 2 * CLIENT_ID_SIZE:
        raise ConfigError(
            path,
            f"the client id must be {2 * CLIENT_ID_SIZE} hex digits, got {quoted(id_text)}",
            ME_ID_LINE,
        )
    _line(path, lines, ME_KEY_LINE, "private key")
    key = _decode_key(path, "".join(lines[ME_KEY_LINE - 1 :]), ME_KEY_LINE)
    identity = Identity(name=name, client_id=client_id, private_key=key)
    _check_priv_key(config_dir, identity)
    return identity


def _check_priv_key(config_dir: Path, identity: Identity) -> None:
    path = config_dir / PRIV_KEY
    if not path.exists():
        log.warning("%s is missing; writing it again from %s", PRIV_KEY, ME_INFO)
        write_private(path, _key_text(identity.private_key))
        return
    warn_if_exposed(path)
    lines = _read_lines(path)
    _line(path, lines, 1, "private key")
    key = _decode_key(path, "".join(lines), 1)
    if key != identity.private_key:
        raise ConfigError(
            path, f"the private key differs from the one in {ME_INFO} line {ME_KEY_LINE}", 1
        )


def warn_if_exposed(path: Path) -> None:
    """Warn, as ssh does, when a file holding the private key is open to others."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # reading it reports the problem
    if mode & _OTHERS_BITS:
        log.warning(
            "%s is readable or writable by others (mode %04o): it holds the private key;"
            " run: chmod %o %s",
            path,
            mode,
            PRIVATE_FILE_MODE,
            path,
        )


def _key_text(key: RSA.RsaKey) -> str:
    return base64.b64encode(export_private_key(key)).decode("ascii") + "\n"


def save_identity(config_dir: Path, identity: Identity) -> None:
    """Write me.info and priv.key, each atomically with owner-only permissions.

    Raises:
        ConfigError: a file could not be written.
    """
    key_text = _key_text(identity.private_key)
    write_private(config_dir / PRIV_KEY, key_text)
    write_private(
        config_dir / ME_INFO, f"{identity.name}\n{identity.client_id.hex()}\n{key_text}"
    )


def write_private(path: Path, text: str) -> None:
    """Replace path with text: temp file (mode 0600), fsync, rename, fsync dir."""
    temp_name = None
    try:
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(temp_name, PRIVATE_FILE_MODE)  # mkstemp's default, made explicit
        with os.fdopen(fd, "w", encoding="ascii") as temp:
            temp.write(text)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
        temp_name = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise ConfigError(path, f"cannot write: {exc.strerror or exc}") from None
    finally:
        if temp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory: nothing to do
    finally:
        os.close(fd)

