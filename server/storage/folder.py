"""The blob store (:class:`~server.storage.base.BlobStore`) as a local folder.

Layout: ``<data dir>/received_files/<client-id-hex>/<stored name>``, where the
stored name comes from :mod:`server.storage.names` (never the wire name
itself), and the path name the metadata store keeps is that path relative to
the data folder, with ``/``.

An upload is written under its blob key, as ``.tmp-<key>`` inside the
client's folder, opened with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a planted
symlink is never followed), and fsynced (sealed). Publishing it is this
store's own business: a rename onto its final name with ``os.replace``, then
a fsync of the folder (both in the round worker, server/roundjob.py); a key
whose file is gone while the final name is there was published already
(publishing again only syncs the folder). Stored names never start with a
dot, so nothing a client sends can collide with an upload's file.

The server never writes, seals, publishes or removes an upload's file in its
loop thread: what an upload receives is held in memory and written by the
blob port's worker in chunks of about 1 MiB (with its backpressure), the
rest by the round's job just before the seal, so an upload that arrives
within one round is written, sealed and published in its round's one job;
an abort's removal goes to the port's worker (server/blobport.py
``BufferedWriter``).
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Collection

from protocol.printable import quoted

from .. import crashpoints
from ..errors import BadStoreUrl, BlobMissing, StorageFault, StoreUnusable
from .base import BlobEntry, StoreUrl, UnpublishedBlob
from .names import unique_stored_name

log = logging.getLogger(__name__)

RECEIVED_DIR = "received_files"
TEMP_PREFIX = ".tmp-"
#: Files found on disk at start with no database row are moved here.
QUARANTINE_DIR = ".orphaned"
#: A client being deleted: its folder is moved here first (the decision,
#: atomic), its rows go next, then the folder (server.storage.commit).
TRASH_DIR = ".deleting"
_TEMP_RANDOM_BYTES = 8
_CLIENT_DIR_HEX_DIGITS = 32
#: A client folder's name is its id in these (:func:`client_dir_name`).
_HEX_DIGITS = frozenset("0123456789abcdef")
#: What a blob key may hold in a file name (:func:`_is_key_name`).
_KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz")
_MAX_KEY_CHARS = 64
_DIR_MODE = 0o700
_FILE_MODE = 0o600

_FSYNC_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
#: O_NONBLOCK: opening a fifo planted in a client folder must not wait for a writer.
_READ_FLAGS = (
    os.O_RDONLY
    | os.O_NONBLOCK
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_TEMP_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def client_dir_name(client_id: bytes) -> str:
    """The folder of one client: its id as 32 lowercase hex digits."""
    return client_id.hex()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, _FSYNC_DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_fault(action: str, exc: OSError) -> StorageFault:
    return StorageFault(f"{action}: {exc.strerror or exc}")


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
    """An upload being written: ``.tmp-<key>`` in the client's folder (a :class:`BlobWriter`)."""

    def __init__(
        self, directory: Path, key: str, on_abort: Callable[[], None] = lambda: None
    ) -> None:
        if not _is_key_name(key):
            raise StorageFault(f"{quoted(key)} is not a blob key")
        #: What the store lets go of when the upload is aborted (its name).
        self._on_abort = on_abort
        self.directory = directory
        self.key = key
        self.name = f"{TEMP_PREFIX}{key}"
        self.size = 0
        #: Where the last write-back step started, and where it ended.
        self._step_start = 0
        self._step_end = 0
        try:
            self._fd = os.open(directory / self.name, _TEMP_FLAGS, _FILE_MODE)
        except OSError as exc:
            raise _storage_fault("cannot create a temp file", exc) from exc
        self._open = True
        crashpoints.reached("write.begun")

    @property
    def path(self) -> Path:
        """Where the upload's file is until it is published."""
        return self.directory / self.name

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append data (a regular file: the write may be short, never EAGAIN).

        Raises:
            StorageFault: the write failed (ENOSPC, EIO...).
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
            raise _storage_fault("cannot write a received file", exc) from exc

    def let_go(self) -> None:
        """The store lets go of what it holds for the upload (its name): the loop thread's
        part of an abort, done before the file's removal is handed to a worker."""
        on_abort, self._on_abort = self._on_abort, lambda: None
        on_abort()

    def _write_back(self) -> None:
        """Start writing the new dirty range out; drop what is already written."""
        if _FADVISE is None:  # no fadvise: a short synchronous step instead
            os.fdatasync(self._fd)
        else:
            _FADVISE(self._fd, self._step_start, self.size - self._step_start,
                     os.POSIX_FADV_DONTNEED)
        self._step_start, self._step_end = self._step_end, self.size

    def seal(self) -> None:
        """Flush the content to disk and close the descriptor.

        Raises:
            StorageFault: fsync failed.
        """
        self._open = False
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _storage_fault("cannot sync a received file", exc) from exc
        finally:
            os.close(self._fd)
        crashpoints.reached("write.sealed")

    def abort(self) -> None:
        """Close and remove the upload's file (gone already once published); never raises.

        At once (in the blob port's worker, server/blobport.py), not left to
        the sweeper: a partial file must not hold the disk (an address's
        garbage is not charged to its share of it, and a full disk is served
        again as soon as the failed upload is gone).
        """
        self.let_go()
        if self._open:
            self._open = False
            try:
                os.close(self._fd)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove temp file %s: %s", self.path, exc)


def _in_client_dir(directory: Path, name: str) -> BlobEntry:
    """An entry of a client folder, as start-up repair sees it."""
    return BlobEntry(
        owner=directory.name, name=name, path_name=f"{RECEIVED_DIR}/{directory.name}/{name}"
    )


class FolderBlobs:
    """The ``received_files/`` tree under a data folder (a :class:`BlobStore`).

    Its writes go to the page cache (:data:`WRITEBACK_STEP`), usually quick:
    no handoff per packet (``slow_writes`` is False), but never in the loop
    thread either (``buffered_writes``): what an upload receives is held in
    memory and handed to the blob port's worker in chunks of about 1 MiB
    (or when the upload pauses), the rest written by the round's job before the seal
    (server/blobport.py :class:`BufferedWriter`).

    Raises (constructor):
        StorageFault: the folder cannot be created or written.
    """

    slow_writes = False
    buffered_writes = True

    def __init__(self, data_dir: Path) -> None:
        self._set_up(Path(data_dir) / RECEIVED_DIR, create=True)

    @classmethod
    def at(cls, root: Path, *, create: bool = True, shared: bool = False) -> FolderBlobs:
        """The store in the folder ``root`` (a data folder's ``received_files/`` by default).

        With ``create`` (the server) the folder is made if missing and must be
        writable; without it (a reader: ``admin verify``) nothing is made or
        changed, and a missing folder holds no blob. ``shared``: the nodes of
        one host write in it too, so nothing in it is known without a listing.

        Raises:
            StorageFault: the folder cannot be created, written or searched.
        """
        store = cls.__new__(cls)
        store._set_up(Path(root), create=create, shared=shared)
        return store

    def _set_up(self, root: Path, create: bool, shared: bool = False) -> None:
        self.root = root
        #: Other processes (nodes) write in the folder too: every listing reads it.
        self.shared = shared
        #: The stored names given to uploads not yet published: key -> (client, name).
        self._named: dict[str, tuple[bytes, str]] = {}
        #: The stored names in the client folders this store made, by folder:
        #: known without listing the folder (:meth:`new_path_name`).
        self._made: dict[str, set[str]] = {}
        #: Whether :meth:`unpublished` has listed every client folder since the
        #: store was opened, and the folders it must list again: those where a
        #: blob was begun since, or where it found one.
        self._listed_all = False
        self._may_hold_unpublished: set[str] = set()
        if not create:
            try:
                if root.exists():
                    with os.scandir(root):
                        pass
            except OSError as exc:
                raise StoreUnusable(f"cannot use {root}: {exc.strerror or exc}") from exc
            return
        try:
            self.root.mkdir(mode=_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _storage_fault(f"cannot create {self.root}", exc) from exc
        if self.root.is_symlink() or not self.root.is_dir():
            raise StorageFault(f"{self.root} is not a folder")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageFault(f"{self.root} is not writable")

    def path_name(self, client_id: bytes, name: str) -> str:
        """The path name of a stored name: relative to the data folder, with ``/``."""
        return f"{RECEIVED_DIR}/{client_dir_name(client_id)}/{name}"

    def new_path_name(
        self, client_id: bytes, file_name: bytes, key: str, recorded: Collection[str] = ()
    ) -> str:
        """A safe stored name for ``file_name``, held for ``key`` until it is published.

        Distinct, even ignoring case, from ``recorded``, the names in the
        client's folder and those given to its other uploads not yet published.

        Raises:
            StorageFault: no distinct name is left, or the folder cannot be read.
        """
        # a copy in one step: a sweep's deletion (the blob port's worker) may pop meanwhile
        held = [name for owner, name in list(self._named.values()) if owner == client_id]
        folder = self.path_name(client_id, "")
        named = [path_name[len(folder):] for path_name in recorded if path_name.startswith(folder)]
        name = unique_stored_name(file_name, [*self._names_in(client_id), *held, *named])
        self._named[key] = (client_id, name)
        return self.path_name(client_id, name)

    def _names_in(self, client_id: bytes) -> list[str]:
        """The stored files' names in the client's folder (none if it has no folder yet).

        Known without a listing in a folder this store made (unless the folder
        is shared); else listed.
        Regular files only: anything else there is not the server's (a
        planted symlink is replaced at publish, never followed, as before).

        Raises:
            StorageFault: the folder cannot be read.
        """
        known = None if self.shared else self._made.get(client_dir_name(client_id))
        if known is not None:
            return list(known)
        try:
            with os.scandir(self.root / client_dir_name(client_id)) as entries:
                return [
                    entry.name for entry in entries
                    if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False)
                ]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _storage_fault("cannot list a client folder", exc) from exc

    def client_dir(self, client_id: bytes) -> Path:
        """The client's folder, created on demand; never a symlink.

        Raises:
            StorageFault: it cannot be created, or is not a real folder.
        """
        directory = self.root / client_dir_name(client_id)
        try:
            directory.mkdir(mode=_DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _storage_fault("cannot create a client folder", exc) from exc
        else:  # made now: the store knows every name in it from here on
            self._made[directory.name] = set()
        if directory.is_symlink() or not directory.is_dir():
            raise StorageFault(f"{directory} is not a folder")
        return directory

    def begin(self, client_id: bytes, key: str) -> TempFile:
        """A fresh ``.tmp-<key>`` file in the client's folder.

        Raises:
            StorageFault: it cannot be created (or ``key`` is not a blob key).
        """
        directory = self.client_dir(client_id)
        self._may_hold_unpublished.add(directory.name)
        return TempFile(directory, key, functools.partial(self._let_go, key))

    def _let_go(self, key: str) -> None:
        """The name held for ``key`` is free again (its upload was aborted)."""
        self._named.pop(key, None)

    def publish(self, key: str, path_name: str) -> None:
        """Rename ``.tmp-<key>`` onto ``path_name`` (atomic), then sync the folder.

        Both are in the same client folder. If the key's file is gone and
        ``path_name`` is there, the rename was done: only the sync is left.

        Raises:
            StorageFault: ``path_name`` is not a stored file's, neither is
                there, or the rename or folder sync failed.
        """
        target = self.resolve(path_name)
        if target is None or not _is_key_name(key):
            raise StorageFault(f"{quoted(path_name)} is not a stored file's name")
        source = target.parent / f"{TEMP_PREFIX}{key}"
        try:
            try:
                os.replace(source, target)
            except FileNotFoundError:
                if not self.exists(path_name):
                    raise
            else:
                crashpoints.reached("publish.placed")
            _fsync_dir(target.parent)
        except OSError as exc:
            raise _storage_fault("cannot install a received file", exc) from exc
        self._named.pop(key, None)  # the folder holds the name from now on
        self._made.get(target.parent.name, set()).add(target.name)
        crashpoints.reached("publish.durable")

    def open(self, path_name: str) -> BinaryIO:
        """A stored file, opened for reading (never through a symlink, never blocking on a fifo).

        Raises:
            BlobMissing: no such file.
            StorageFault: not a stored file's path name, not a regular file,
                or it cannot be opened.
        """
        path = self.resolve(path_name)
        if path is None:
            raise StorageFault(f"{quoted(path_name)} is not a stored file's name")
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError as exc:
            raise BlobMissing("no such file") from exc
        except OSError as exc:
            raise _storage_fault("cannot open it", exc) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageFault("not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def exists(self, path_name: str) -> bool:
        """Whether a path name from the metadata store names a regular file here."""
        path = self.resolve(path_name)
        return path is not None and path.is_file() and not path.is_symlink()

    def delete(self, path_name: str) -> None:
        """Delete a stored file (absent is fine).

        Raises:
            StorageFault: it exists and cannot be deleted.
        """
        path = self.resolve(path_name)
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _storage_fault(f"cannot delete {path_name}", exc) from exc
            self._made.get(path.parent.name, set()).discard(path.name)

    def room(self) -> int:
        """Free bytes on the file system of ``received_files/``."""
        return shutil.disk_usage(self.root).free

    def resolve(self, path_name: str) -> Path | None:
        """The file a path name names, if it is a well-formed one of this store."""
        return stored_path(self.root, path_name)

    # -- start-up -------------------------------------------------------------

    def unpublished(self) -> list[UnpublishedBlob]:
        """Every ``.tmp-<key>`` regular file a crash left in a client folder.

        Only regular files: a ``.tmp-*`` folder, symlink or fifo is not the
        server's (its files are made with ``O_EXCL | O_NOFOLLOW``), and
        :meth:`foreign_entries` lists it to be moved aside, never deleted or followed.
        A ``.tmp-`` file whose name is no blob key (an older server's) is
        listed too, under that name: no row points at it.

        The first call lists every client folder (start-up repair); a later
        one (the sweeper's) only those where a blob was begun or found since:
        only this store writes in its folder (the data folder's lock), so a
        sweep costs the folders with uploads, not every client's. A shared
        folder (other nodes write in it) is listed whole each time.
        """
        if self._listed_all and not self.shared:
            directories = [
                self.root / name for name in sorted(self._may_hold_unpublished)
                if (self.root / name).is_dir() and not (self.root / name).is_symlink()
            ]
        else:
            directories = self._client_dirs()
        found = []
        for directory in directories:
            for entry in os.scandir(directory):
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    key = entry.name[len(TEMP_PREFIX):]
                    found.append(UnpublishedBlob(bytes.fromhex(directory.name), key))
        self._listed_all = True
        self._may_hold_unpublished = {blob.client_id.hex() for blob in found}
        return found

    def delete_unpublished(self, blob: UnpublishedBlob) -> None:
        """Delete one ``.tmp-<key>`` file (absent is fine); the sweeper's, in the blob
        port's worker (server/storage/sweep.py).

        Raises:
            StorageFault: it cannot be deleted.
        """
        name = f"{TEMP_PREFIX}{blob.key}"
        if "/" in name or "\\" in name or blob.key in ("", ".", ".."):
            raise StorageFault(f"{quoted(blob.key)} is not a blob key")
        self._named.pop(blob.key, None)
        path = self.root / client_dir_name(blob.client_id) / name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _storage_fault(f"cannot delete {path}", exc) from exc

    def stored(self) -> list[BlobEntry]:
        """Every final file under ``received_files/<client-id-hex>/``."""
        found = []
        for directory in self._client_dirs():
            for entry in os.scandir(directory):
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                found.append(_in_client_dir(directory, entry.name))
        return found

    def foreign_entries(self) -> list[BlobEntry]:
        """Entries the server never makes that would be in its way.

        In a client folder: anything but a regular file, whatever its name (a
        folder, symlink, fifo, socket). In ``received_files/``: a client
        folder's name on anything but a real folder (``owner`` is then
        empty). Other names there are not the server's: logged, left alone.
        Nothing is followed or opened (a fifo would block).
        """
        found = []
        for entry in os.scandir(self.root):
            if not _is_client_dir_name(entry.name):
                if entry.name not in (QUARANTINE_DIR, TRASH_DIR):
                    log.warning("%s is not a client folder; left alone", entry.path)
            elif not entry.is_dir(follow_symlinks=False):
                found.append(BlobEntry("", entry.name, f"{RECEIVED_DIR}/{entry.name}"))
        for directory in self._client_dirs():
            for entry in os.scandir(directory):
                if not entry.is_file(follow_symlinks=False):
                    found.append(_in_client_dir(directory, entry.name))
        return found

    def quarantine(self, entry: BlobEntry) -> str:
        """Move an entry aside to ``.orphaned/``; return where it went.

        The entry itself moves (a symlink is not followed, a folder keeps its
        content).

        Raises:
            StorageFault: ``.orphaned`` (or its client folder) is not a real
                folder, or the move failed.
        """
        target_dir = self._quarantine_dir(entry.owner)
        target = target_dir / f"{entry.name}.{secrets.token_hex(_TEMP_RANDOM_BYTES)}"
        try:
            os.replace(self.root / entry.owner / entry.name, target)
        except OSError as exc:
            raise StorageFault(exc.strerror or str(exc)) from exc
        self._made.get(entry.owner, set()).discard(entry.name)
        return str(target)

    def _quarantine_dir(self, client_hex: str) -> Path:
        """``.orphaned/<client_hex>``, made on demand; never through a symlink."""
        target = self.root
        for part in filter(None, (QUARANTINE_DIR, client_hex)):
            target = target / part
            try:
                target.mkdir(mode=_DIR_MODE)
            except FileExistsError:
                pass
            except OSError as exc:
                raise _storage_fault(f"cannot create {target}", exc) from exc
            if target.is_symlink() or not target.is_dir():
                raise StorageFault(f"{target} is not a folder")
        return target

    # -- deleting a client (server.storage.commit.remove_client) -----------------

    def begin_removal(self, client_id: bytes) -> None:
        """Move the client's folder into the trash, durably (an empty one if it had none).

        Raises:
            StorageFault: the trash or the move failed.
        """
        trash = self._trash_dir()
        name = client_dir_name(client_id)
        source = self.root / name
        self._made.pop(name, None)
        try:
            if source.is_dir() and not source.is_symlink():
                os.replace(source, trash / name)
            else:
                (trash / name).mkdir(mode=_DIR_MODE, exist_ok=True)
            _fsync_dir(trash)
            _fsync_dir(self.root)
        except OSError as exc:
            raise _storage_fault(f"cannot move {source} to {trash}", exc) from exc

    def pending_removals(self) -> list[bytes]:
        """The ids of the clients whose deletion began (their folder is in the trash)."""
        trash = self.root / TRASH_DIR
        if not trash.is_dir() or trash.is_symlink():
            return []
        return [
            bytes.fromhex(entry.name) for entry in os.scandir(trash)
            if _is_client_dir_name(entry.name)
        ]

    def finish_removal(self, client_id: bytes) -> None:
        """Delete a client's folder from the trash (links in it are removed, never followed).

        Raises:
            StorageFault: it cannot be deleted.
        """
        target = self.root / TRASH_DIR / client_dir_name(client_id)
        try:
            if target.is_symlink() or not target.is_dir():
                target.unlink(missing_ok=True)
            else:
                shutil.rmtree(target)
        except OSError as exc:
            raise _storage_fault(f"cannot delete {target}", exc) from exc

    def _trash_dir(self) -> Path:
        trash = self.root / TRASH_DIR
        try:
            trash.mkdir(mode=_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _storage_fault(f"cannot create {trash}", exc) from exc
        if trash.is_symlink() or not trash.is_dir():
            raise StorageFault(f"{trash} is not a folder")
        return trash

    def _client_dirs(self) -> list[Path]:
        return [
            Path(entry.path)
            for entry in os.scandir(self.root)
            if _is_client_dir_name(entry.name) and entry.is_dir(follow_symlinks=False)
        ]


def stored_path(root: Path, path_name: str) -> Path | None:
    """The file a ``PathName`` names in the store folder ``root``, if it is a well-formed one.

    A path name is ``received_files/<client-id-hex>/<name>`` wherever the
    folder is (``--blobs``): the rows keep the layout's name, not the place.
    """
    parts = path_name.split("/")
    if (
        len(parts) != 3
        or parts[0] != RECEIVED_DIR
        or not _is_client_dir_name(parts[1])
        or parts[2] in ("", ".", "..")
        or "\\" in parts[2]
    ):
        return None
    return Path(root) / parts[1] / parts[2]


def _is_key_name(key: str) -> bool:
    """Whether a blob key is safe in a file name: lowercase letters and digits, at most 64.

    :func:`~server.storage.base.new_blob_key` gives 32 hex digits; the check
    is what the file name needs, no more.
    """
    return 0 < len(key) <= _MAX_KEY_CHARS and all(c in _KEY_CHARS for c in key)


def _is_client_dir_name(name: str) -> bool:
    return len(name) == _CLIENT_DIR_HEX_DIGITS and all(c in _HEX_DIGITS for c in name)


class FolderBackend:
    """``file:///PATH``: the blob store in a local folder (a data folder's ``received_files/``)."""

    scheme = "file"
    #: How ``--help`` shows its URL, and its default place.
    form = "file:///PATH (a folder; made if missing)"
    default_form = f"file:///DATA-DIR/{RECEIVED_DIR}"

    def default(self, data_dir: Path) -> StoreUrl:
        """``received_files/`` in the data folder."""
        return StoreUrl(self.scheme, Path(data_dir) / RECEIVED_DIR)

    def check(self, url: StoreUrl) -> None:
        """A local path, no options.

        Raises:
            BadStoreUrl: a host or an option.
        """
        if url.host not in ("", "localhost"):
            raise BadStoreUrl(f"{url}: a folder is on this machine: file:///PATH")
        if url.options:
            raise BadStoreUrl(f"{url}: file: takes no options")

    def open(self, url: StoreUrl, shared: bool = False) -> FolderBlobs:
        """The folder, made if missing (the server's; ``shared``: with other nodes).

        Raises:
            StorageFault: it cannot be made or written.
        """
        return FolderBlobs.at(url.path, shared=shared)

    def open_reader(self, url: StoreUrl) -> FolderBlobs:
        """The folder, read only: nothing is made.

        Raises:
            StoreUnusable: it cannot be searched.
        """
        return FolderBlobs.at(url.path, create=False)


BACKEND = FolderBackend()
