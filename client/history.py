"""The names this client had confirmed by the server, kept beside me.info.

An upload of a name the server already stores for the client replaces that
file: the protocol's rule, so the client only mentions it with ``-v``
(docs/CLIENT.md "Names"). To know, it keeps ``sent.info`` in the identity's
folder: line 1 the client id (hex), then one name a line (a JSON string,
undecodable bytes as ``\\udcXX``). A new client id starts a new list; the
list keeps the latest MAX_NAMES names.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

from .config import write_private

log = logging.getLogger(__name__)

SENT_INFO = "sent.info"
#: Names kept at most: the oldest go first.
MAX_NAMES = 10_000


def sent_names(folder: Path, client_id: bytes) -> set[bytes]:
    """The names confirmed earlier under this client id (empty when unknown)."""
    try:
        lines = (folder / SENT_INFO).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return set()
    if not lines or lines[0].strip() != client_id.hex():
        return set()
    return set(_decode(lines[1:]))


def record_sent(folder: Path, client_id: bytes, names: Iterable[bytes]) -> None:
    """Add names to the list of this client id (the latest last).

    Raises:
        ConfigError: the list cannot be written.
    """
    new = list(dict.fromkeys(names))
    if not new:
        return
    try:
        lines = (folder / SENT_INFO).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    earlier = _decode(lines[1:]) if lines and lines[0].strip() == client_id.hex() else []
    fresh = set(new)
    kept = [name for name in earlier if name not in fresh] + new
    kept = kept[-MAX_NAMES:]
    text = "".join(json.dumps(os.fsdecode(name)) + "\n" for name in kept)
    write_private(folder / SENT_INFO, f"{client_id.hex()}\n{text}")


def _decode(lines: Iterable[str]) -> list[bytes]:
    names = []
    for line in lines:
        try:
            text = json.loads(line)
        except ValueError:
            continue  # a damaged line only loses a hint
        if isinstance(text, str):
            names.append(os.fsencode(text))
    return names
