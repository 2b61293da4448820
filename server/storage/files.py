"""Received files on disk: safe stored names, streamed temp files, crash cleanup.

Layout: ``<data dir>/received_files/<client-id-hex>/<stored name>``. A wire file
name is never joined to a path (``Path(base) / "/etc/passwd"`` is
``/etc/passwd``): :func:`stored_name` turns it into one plain file name that is
safe on Linux and Windows, and the database keeps the name as sent (HOSTILE.md
decision 3).

A file is written to a temp file with a random ``.tmp-`` name inside the
client's folder, opened with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a planted
symlink is never followed, HOSTILE E4), fsynced, and only then renamed onto
its final name with ``os.replace``, and the folder fsynced. Stored names never
start with a dot, so nothing a client sends can collide with a temp file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .. import crashpoints

log = logging.getLogger(__name__)

RECEIVED_DIR = "received_files"
TEMP_PREFIX = ".tmp-"
#: Files found on disk at start with no database row are moved here.
QUARANTINE_DIR = ".orphaned"
_TEMP_RANDOM_BYTES = 8
_CLIENT_DIR_HEX_DIGITS = 32
#: A client folder's name is its id in these (:func:`client_dir_name`).
_HEX_DIGITS = frozenset("0123456789abcdef")
_DIR_MODE = 0o700
_FILE_MODE = 0o600

_ESCAPE = "%"
#: Characters Windows forbids in names, both separators, and the escape char.
_FORBIDDEN = set('<>:"/\\|?*') | {_ESCAPE, "~"}
#: Marks a name shortened with a digest; escaped everywhere else.
_DIGEST_MARK = "~"
#: Longest stored name in UTF-8 bytes (ext4 and NTFS allow 255).
MAX_STORED_NAME_BYTES = 200
_DIGEST_HEX_DIGITS = 32
#: Hex digits of the suffix that sets apart names equal but for case.
_CASE_SUFFIX_HEX_DIGITS = 8
#: The name for a name with no text (unreachable over the wire: 1607 first).
EMPTY_NAME = "%empty"
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in list("123456789") + ["¹", "²", "³"]]
)

_FSYNC_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_TEMP_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class StorageError(Exception):
    """A file could not be written, synced or installed (disk full, I/O error)."""


def _escape_char(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # an undecodable byte (surrogateescape)
        return f"{_ESCAPE}{ord(char) - 0xDC00:02X}"
    return "".join(f"{_ESCAPE}{byte:02X}" for byte in char.encode("utf-8"))


def _is_safe_char(char: str) -> bool:
    return char.isprintable() and char not in _FORBIDDEN and not (
        "\udc80" <= char <= "\udcff"
    )


def stored_name(name: bytes) -> str:
    """A file name safe on Linux and Windows, derived from a wire name.

    Injective: every unsafe character becomes ``%XX`` (its UTF-8 bytes, or the
    raw byte where the name is not UTF-8) and ``%`` itself is escaped, so two
    wire names never share a stored name. Also escaped: a leading dot (``.``,
    ``..``, hidden and temp names), trailing dots and spaces (Windows drops
    them), and the first letter of a reserved device name (``CON``,
    ``nul.txt``, ``COM1``). Names too long for a file system keep a prefix and
    a SHA-256 digest of the wire name.
    """
    if not name:
        return EMPTY_NAME
    text = name.decode("utf-8", errors="surrogateescape")
    chars = [char if _is_safe_char(char) else _escape_char(char) for char in text]
    if chars[0] == ".":
        chars[0] = _escape_char(".")
    for index in range(len(chars) - 1, -1, -1):
        if chars[index] not in (".", " "):
            break
        chars[index] = _escape_char(chars[index])
    stem = "".join(chars).split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_DEVICES:
        chars[0] = _escape_char(chars[0])
    result = "".join(chars)
    if len(result.encode("utf-8")) > MAX_STORED_NAME_BYTES:
        digest = hashlib.sha256(name).hexdigest()[:_DIGEST_HEX_DIGITS]
        room = MAX_STORED_NAME_BYTES - len(_DIGEST_MARK) - len(digest)
        result = f"{_cut(result, room)}{_DIGEST_MARK}{digest}"
    return result


def _cut(text: str, room: int) -> str:
    """At most ``room`` UTF-8 bytes of ``text``, never an escape cut in half.

    A cut "%4" would read as a different name.
    """
    prefix = text.encode("utf-8")[:room].decode("utf-8", errors="ignore")
    cut = prefix.rfind(_ESCAPE, max(0, len(prefix) - 2))
    return prefix[:cut] if cut != -1 else prefix


def case_key(stored: str) -> str:
    """What a case-insensitive file system (NTFS, APFS) sees of a stored name."""
    return unicodedata.normalize("NFD", stored).casefold()


def unique_stored_name(name: bytes, taken: Iterable[str]) -> str:
    """:func:`stored_name`, set apart from ``taken`` even where case is ignored.

    ``a.txt`` and ``A.txt`` are two files on Linux but one on NTFS or APFS: a
    name whose :func:`case_key` is taken gets ``~`` and a digest of the wire
    name before its extension (``A~1f2e3d4c.txt``). A wire name never yields
    a ``~`` of its own (it is escaped), so the suffix cannot meet a plain
    stored name.
    """
    candidate = stored_name(name)
    folded = {case_key(other) for other in taken}
    if case_key(candidate) not in folded:
        return candidate
    stem, dot, extension = candidate.rpartition(".")
    if not stem:
        stem, dot, extension = candidate, "", ""
    digest = hashlib.sha256(name).hexdigest()
    for attempt in range(len(digest) - _CASE_SUFFIX_HEX_DIGITS + 1):
        suffix = f"{_DIGEST_MARK}{digest[attempt:attempt + _CASE_SUFFIX_HEX_DIGITS]}{dot}{extension}"
        room = MAX_STORED_NAME_BYTES - len(suffix.encode("utf-8"))
        unique = f"{_cut(stem, room)}{suffix}"
        if case_key(unique) not in folded:
            return unique
    raise StorageError(f"no stored name left for {name!r}")


def client_dir_name(client_id: bytes) -> str:
    """The folder of one client: its id as 32 lowercase hex digits."""
    return client_id.hex()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, _FSYNC_DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(action: str, exc: OSError) -> StorageError:
    return StorageError(f"{action}: {exc.strerror or exc}")


#: Start the write-back of a file being received every this many bytes.
#: The loop is one thread: a blocking fdatasync of a large dirty range stalls
#: every connection (bench/fairness.py), and the final fsync before the rename
#: would have the whole file to write. Instead the kernel is asked to write
#: each step out in the background (``posix_fadvise(DONTNEED)`` starts the
#: write-back of dirty pages without waiting, and drops the pages an earlier
#: step already wrote), so the final fsync finds at most about two steps
#: unwritten, and the page cache is recycled rather than grown by every
#: upload (fresh pages are far slower to fill than reused ones).
WRITEBACK_STEP = 8 * 1024 * 1024
_FADVISE = getattr(os, "posix_fadvise", None)


class TempFile:
    """A file being received: a temp file in the client's folder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = f"{TEMP_PREFIX}{secrets.token_hex(_TEMP_RANDOM_BYTES)}"
        self.size = 0
        #: Whether :meth:`install` renamed it onto its final name (even if
        #: the folder sync after the rename failed).
        self.installed = False
        #: Where the last write-back step started, and where it ended.
        self._step_start = 0
        self._step_end = 0
        try:
            self._fd: int | None = os.open(directory / self.name, _TEMP_FLAGS, _FILE_MODE)
        except OSError as exc:
            raise _storage_error("cannot create a temp file", exc) from exc
        crashpoints.reached("temp.created")

    @property
    def path(self) -> Path:
        """Where the temp file is."""
        return self.directory / self.name

    def write(self, data: bytes) -> None:
        """Append data (a regular file: the write may be short, never EAGAIN).

        Raises:
            StorageError: the write failed (ENOSPC, EIO...).
        """
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.size += written
            if self.size - self._step_end >= WRITEBACK_STEP:
                self._write_back()
        except OSError as exc:
            raise _storage_error("cannot write a received file", exc) from exc
        crashpoints.reached("temp.written")

    def _write_back(self) -> None:
        """Start writing the new dirty range out; drop what is already written."""
        if _FADVISE is None:  # no fadvise: a short synchronous step instead
            os.fdatasync(self._fd)
        else:
            _FADVISE(self._fd, self._step_start, self.size - self._step_start,
                     os.POSIX_FADV_DONTNEED)
        self._step_start, self._step_end = self._step_end, self.size

    def sync(self) -> None:
        """Flush the content to disk and close the descriptor.

        Raises:
            StorageError: fsync failed.
        """
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _storage_error("cannot sync a received file", exc) from exc
        finally:
            os.close(fd)
        crashpoints.reached("temp.synced")

    def install(self, final_name: str) -> None:
        """Rename onto the final name (atomic) and sync the folder.

        Raises:
            StorageError: rename or folder sync failed (:attr:`installed`
                says whether the rename was done).
        """
        try:
            os.replace(self.path, self.directory / final_name)
            self.installed = True
            crashpoints.reached("temp.renamed")
            _fsync_dir(self.directory)
        except OSError as exc:
            raise _storage_error("cannot install a received file", exc) from exc
        crashpoints.reached("temp.dir_synced")

    def discard(self) -> None:
        """Close and remove the temp file; never raises."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove temp file %s: %s", self.path, exc)


@dataclass(frozen=True)
class StoredFile:
    """A file found under ``received_files/``."""

    client_hex: str
    name: str
    path_name: str


def _in_client_dir(directory: Path, name: str) -> StoredFile:
    """An entry of a client folder, as start-up repair sees it."""
    return StoredFile(
        client_hex=directory.name, name=name, path_name=f"{RECEIVED_DIR}/{directory.name}/{name}"
    )


class FileStore:
    """The ``received_files/`` tree under a data folder.

    Raises (constructor):
        StorageError: the folder cannot be created or written.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / RECEIVED_DIR
        try:
            self.root.mkdir(mode=_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _storage_error(f"cannot create {self.root}", exc) from exc
        if self.root.is_symlink() or not self.root.is_dir():
            raise StorageError(f"{self.root} is not a folder")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"{self.root} is not writable")

    def path_name(self, client_id: bytes, name: str) -> str:
        """The database's PathName: relative to the data folder, with ``/``."""
        return f"{RECEIVED_DIR}/{client_dir_name(client_id)}/{name}"

    def client_dir(self, client_id: bytes) -> Path:
        """The client's folder, created on demand; never a symlink.

        Raises:
            StorageError: it cannot be created, or is not a real folder.
        """
        directory = self.root / client_dir_name(client_id)
        try:
            directory.mkdir(mode=_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _storage_error("cannot create a client folder", exc) from exc
        if directory.is_symlink() or not directory.is_dir():
            raise StorageError(f"{directory} is not a folder")
        return directory

    def new_temp(self, client_id: bytes) -> TempFile:
        """A fresh temp file in the client's folder.

        Raises:
            StorageError: it cannot be created.
        """
        return TempFile(self.client_dir(client_id))

    def exists(self, path_name: str) -> bool:
        """Whether a PathName from the database names a regular file here."""
        path = self._resolve(path_name)
        return path is not None and path.is_file() and not path.is_symlink()

    def remove(self, path_name: str) -> None:
        """Delete a stored file (used to undo a half-done install)."""
        path = self._resolve(path_name)
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def free_space(self) -> int:
        """Free bytes on the file system of ``received_files/``."""
        return shutil.disk_usage(self.root).free

    def _resolve(self, path_name: str) -> Path | None:
        parts = path_name.split("/")
        if (
            len(parts) != 3
            or parts[0] != RECEIVED_DIR
            or len(parts[1]) != _CLIENT_DIR_HEX_DIGITS
            or parts[2] in ("", ".", "..")
            or "\\" in parts[2]
        ):
            return None
        return self.root / parts[1] / parts[2]

    # -- start-up -------------------------------------------------------------

    def remove_temp_files(self) -> int:
        """Delete every ``.tmp-*`` file a crash left; return how many.

        Only regular files: a ``.tmp-*`` folder, symlink or fifo is not the
        server's (its temp files are made with ``O_EXCL | O_NOFOLLOW``), and
        :meth:`strays` lists it to be moved aside, never deleted or followed.
        """
        removed = 0
        for directory in self._client_dirs():
            for entry in os.scandir(directory):
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def stored_files(self) -> list[StoredFile]:
        """Every final file under ``received_files/<client-id-hex>/``."""
        found = []
        for directory in self._client_dirs():
            for entry in os.scandir(directory):
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                found.append(_in_client_dir(directory, entry.name))
        return found

    def strays(self) -> list[StoredFile]:
        """Entries the server never makes that would be in its way.

        In a client folder: anything but a regular file, whatever its name (a
        folder, symlink, fifo, socket). In ``received_files/``: a client
        folder's name on anything but a real folder (``client_hex`` is then
        empty). Other names there are not the server's: logged, left alone.
        Nothing is followed or opened (a fifo would block).
        """
        found = []
        for entry in os.scandir(self.root):
            if not _is_client_dir_name(entry.name):
                if entry.name != QUARANTINE_DIR:
                    log.warning("%s is not a client folder; left alone", entry.path)
            elif not entry.is_dir(follow_symlinks=False):
                found.append(StoredFile("", entry.name, f"{RECEIVED_DIR}/{entry.name}"))
        for directory in self._client_dirs():
            for entry in os.scandir(directory):
                if not entry.is_file(follow_symlinks=False):
                    found.append(_in_client_dir(directory, entry.name))
        return found

    def quarantine(self, stored: StoredFile) -> Path:
        """Move an entry aside to ``.orphaned/``; return where it went.

        The entry itself moves (a symlink is not followed, a folder keeps its
        content).

        Raises:
            StorageError: ``.orphaned`` (or its client folder) is not a real folder.
            OSError: the move failed.
        """
        target_dir = self._quarantine_dir(stored.client_hex)
        target = target_dir / f"{stored.name}.{secrets.token_hex(_TEMP_RANDOM_BYTES)}"
        os.replace(self.root / stored.client_hex / stored.name, target)
        return target

    def _quarantine_dir(self, client_hex: str) -> Path:
        """``.orphaned/<client_hex>``, made on demand; never through a symlink."""
        target = self.root
        for part in filter(None, (QUARANTINE_DIR, client_hex)):
            target = target / part
            try:
                target.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                pass
            if target.is_symlink() or not target.is_dir():
                raise StorageError(f"{target} is not a folder")
        return target

    def _client_dirs(self) -> list[Path]:
        return [
            Path(entry.path)
            for entry in os.scandir(self.root)
            if _is_client_dir_name(entry.name) and entry.is_dir(follow_symlinks=False)
        ]


def _is_client_dir_name(name: str) -> bool:
    return len(name) == _CLIENT_DIR_HEX_DIGITS and all(c in _HEX_DIGITS for c in name)
