"""Where the client keeps its identity (``me.info``, ``priv.key``) for a server.

The rule, written once (docs/CLIENT.md "Where the identity lives"):

1. ``--config-dir DIR``: DIR, for transfer.info, me.info and priv.key alike;
2. else the per-user folder of the server, when it holds me.info and the
   working folder does not: ``$XDG_CONFIG_HOME/cipherdrop/<host>_<port>/``
   (``~/.config`` when the variable is unset or empty);
3. else the working folder (where a first registration writes them).

The per-user folder is never written on its own: a person puts an identity
there (or registers with ``--config-dir`` pointing there) to use it from any
folder. What the client does write is ``$XDG_CONFIG_HOME/cipherdrop/
folders.info``: where this user registered which name with which server, so
that a 1601 for such a name can say where its identity is. Entries whose
me.info is gone are dropped at each write.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping

from .config import ME_INFO, ServerAddress, write_private
from .errors import ConfigError

log = logging.getLogger(__name__)

XDG_CONFIG_HOME = "XDG_CONFIG_HOME"
#: Where XDG_CONFIG_HOME points when unset, below the home folder.
DEFAULT_CONFIG_HOME = Path(".config")
APP_FOLDER = "cipherdrop"
#: The per-user list of registrations, one JSON [server, name, folder] a line.
FOLDERS_INFO = "folders.info"
#: Owner only: the folder holds private keys.
PRIVATE_FOLDER_MODE = 0o700
#: Characters kept as they are in a server's folder name; others become "_".
_SAFE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def server_folder_name(server: ServerAddress) -> str:
    """``<host>_<port>``, the host lower-cased and reduced to safe characters."""
    host = "".join(char if char in _SAFE_CHARS else "_" for char in server.host.lower())
    return f"{host}_{server.port}"


def user_folder(server: ServerAddress, environ: Mapping[str, str] | None = None) -> Path:
    """The per-user folder of a server's identity (it may not exist)."""
    return _app_folder(environ) / server_folder_name(server)


def identity_folder(
    work: Path,
    server: ServerAddress,
    *,
    explicit: bool,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """The folder of me.info and priv.key for this run (see the module's rule)."""
    if explicit or (work / ME_INFO).exists():
        return work
    per_user = user_folder(server, environ)
    if (per_user / ME_INFO).exists():
        log.info("using the identity in %s", per_user)
        return per_user
    return work


def make_private_folder(folder: Path) -> None:
    """Create folder (and its parents) readable by its owner only, if missing.

    Raises:
        ConfigError: it cannot be created.
    """
    try:
        folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(folder, f"cannot create the folder: {exc.strerror}") from None


def remember_registration(
    server: ServerAddress,
    name: str,
    folder: Path,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Note that ``folder`` holds this user's registration of name with server.

    Raises:
        ConfigError: the list cannot be written.
    """
    path = _app_folder(environ) / FOLDERS_INFO
    entry = (str(server), name, str(folder.resolve()))
    entries = [
        item for item in _read_entries(path) if item != entry and _holds_name(item[1], item[2])
    ]
    make_private_folder(path.parent)
    text = "".join(json.dumps(list(item)) + "\n" for item in [*entries, entry])
    write_private(path, text)


def folders_of(
    server: ServerAddress,
    name: str,
    environ: Mapping[str, str] | None = None,
) -> list[Path]:
    """The folders of this user whose me.info holds ``name`` for the server."""
    candidates = [
        Path(folder)
        for known_server, known_name, folder in _read_entries(_app_folder(environ) / FOLDERS_INFO)
        if known_server == str(server) and known_name == name
    ]
    candidates.append(user_folder(server, environ))
    return [folder for folder in dict.fromkeys(candidates) if _holds_name(name, str(folder))]


def _app_folder(environ: Mapping[str, str] | None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get(XDG_CONFIG_HOME) or str(Path.home() / DEFAULT_CONFIG_HOME)
    return Path(base) / APP_FOLDER


def _holds_name(name: str, folder: str) -> bool:
    """Whether folder's me.info still holds name (me.info does not name its server)."""
    try:
        with (Path(folder) / ME_INFO).open(encoding="utf-8", errors="replace") as me_info:
            return me_info.readline().strip() == name
    except OSError:
        return False


def _read_entries(path: Path) -> list[tuple[str, str, str]]:
    """The list's (server, name, folder) entries; a damaged line is skipped (a hint only)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    entries = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        if isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item):
            entries.append((item[0], item[1], item[2]))
        else:
            log.debug("%s: skipped a damaged line", path)
    return entries
