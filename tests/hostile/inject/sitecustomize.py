"""Fault injection inside a real ``python -m server`` (docs/HOSTILE.md G1, G2, G5).

Python imports ``sitecustomize`` at start-up from ``sys.path``; the fault
tests put this folder on the server's PYTHONPATH and name a control file in
``CIPHERDROP_FAULTS``. The control file is JSON, read again at every guarded
call, so a test arms and disarms faults while the server runs:

* ``{"write": {"errno": 28, "after": N}}``: ``os.write`` to a temp file fails
  once that file holds N bytes (ENOSPC = 28, EIO = 5);
* ``{"fsync": {"errno": 5}}``: fsync of a temp file fails;
* ``{"fsync_dir": {"errno": 5}}``: fsync of a client folder fails;
* ``{"wal_fsync": {"errno": 5}}``: fsync of the database's WAL fails;
* ``{"replace": {"errno": 28}}``: ``os.replace`` of a temp file fails;
* ``{"raise": 900}``: the handler of that code raises ZeroDivisionError;
  ``{"raise": 828}``: recording a complete upload raises it, inside the
  database transaction;
* ``{"temp_name": "abc"}``: the next blob keys are ``abc``, so the next temp
  files are named ``.tmp-abc`` (a local attacker who guessed the random
  name, HOSTILE E4);
* ``{"db": "readonly"}``: the server's SQLite connection refuses every write
  (``PRAGMA query_only``: "attempt to write a readonly database"), its TEMP
  counts and functions kept, until the control says otherwise.

Only the server's own modules are patched, never the test process.
"""

from __future__ import annotations

import json
import os

_CONTROL = os.environ.get("CIPHERDROP_FAULTS")
_WAL_SUFFIX = "-wal"


def _faults() -> dict:
    try:
        with open(_CONTROL, encoding="utf-8") as file:
            return json.load(file)
    except (FileNotFoundError, ValueError):
        return {}


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _is_temp(path: str) -> bool:
    return os.path.basename(path).startswith(".tmp-")


def _fail(rule: dict, what: str):
    code = rule.get("errno", 5)
    return OSError(code, f"{os.strerror(code)} (injected into {what})")


class _FaultyOs:
    """The ``os`` module as ``server.storage.folder`` sees it, with faults."""

    def __init__(self, real) -> None:
        self._real = real
        self._written: dict[int, int] = {}

    def _fsync_rule(self, faults: dict, path: str):
        if os.path.isdir(path):
            return faults.get("fsync_dir")
        return faults.get("fsync") if _is_temp(path) else None

    def __getattr__(self, name):
        return getattr(self._real, name)

    def write(self, fd, data):
        rule = _faults().get("write")
        if rule and _is_temp(_fd_path(fd)):
            if self._written.get(fd, 0) + len(data) > rule.get("after", 0):
                raise _fail(rule, "write")
        written = self._real.write(fd, data)
        self._written[fd] = self._written.get(fd, 0) + written
        return written

    def close(self, fd):
        self._written.pop(fd, None)
        return self._real.close(fd)

    def fsync(self, fd):
        faults = _faults()
        path = _fd_path(fd)
        rule = self._fsync_rule(faults, path)
        if rule:
            raise _fail(rule, "fsync")
        return self._real.fsync(fd)

    def fdatasync(self, fd):
        rule = _faults().get("fsync")
        if rule and _is_temp(_fd_path(fd)):
            raise _fail(rule, "fdatasync")
        return self._real.fdatasync(fd)

    def replace(self, src, dst, **kwargs):
        rule = _faults().get("replace")
        if rule and _is_temp(str(src)):
            raise _fail(rule, "rename")
        return self._real.replace(src, dst, **kwargs)


class _FaultyDatabaseOs(_FaultyOs):
    """The ``os`` module as ``server.storage.sqlite`` sees it: its WAL's fsync may fail."""

    def _fsync_rule(self, faults: dict, path: str):
        return faults.get("wal_fsync") if path.endswith(_WAL_SUFFIX) else None


class _GuessedSecrets:
    """The ``secrets`` module as ``server.storage.folder`` sees it: temp names on demand."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def token_hex(self, nbytes=None):
        guessed = _faults().get("temp_name")
        return guessed if guessed else self._real.token_hex(nbytes)


def _install() -> None:
    from server import handlers
    from server.storage import base, folder, sqlite
    from server.storage.sqlite import SqliteMetadata

    folder.os = _FaultyOs(os)
    sqlite.os = _FaultyDatabaseOs(os)
    folder.secrets = _GuessedSecrets(folder.secrets)
    base.secrets = _GuessedSecrets(base.secrets)

    for request, handler in list(handlers.HANDLERS.items()):
        def guarded(app, peer, event, speaking, _handler=handler, _code=int(request.code)):
            if _faults().get("raise") == _code:
                raise ZeroDivisionError(f"injected into the {_code} handler")
            return _handler(app, peer, event, speaking)

        handlers.HANDLERS[request] = guarded

    real_upsert = SqliteMetadata.upsert_file

    def upsert_file(self, *args):
        if _faults().get("raise") == 828:
            raise ZeroDivisionError("injected into the 828 handler's transaction")
        return real_upsert(self, *args)

    SqliteMetadata.upsert_file = upsert_file

    real_transaction = SqliteMetadata.transaction

    def transaction(self):
        readonly = _faults().get("db") == "readonly"
        self._db.execute(f"PRAGMA query_only = {int(readonly)}")
        return real_transaction(self)

    SqliteMetadata.transaction = transaction


if _CONTROL:
    _install()
