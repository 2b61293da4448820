"""Which files one run sends, and the name each is sent under.

A server keeps one file per name and client: an upload of a name it already
stores replaces that file (docs/PROTOCOL.md, "Flows"). Across runs that is
the protocol's rule; within one run it would lose a file without a word. So
:func:`plan_uploads` refuses a run in which two files would be sent under one
name, before anything is sent, naming both paths; with ``rename_duplicates``
it sends the later ones as ``stem (2).ext``, ``stem (3).ext`` … and says so.

Folders (``-r``) are walked in name order; what a walk leaves out (a link to
a folder, a private key, a link to nothing, a fifo) is logged with why. Each
file is sent under its path relative to the folder's parent, parts joined by
``/`` (``photos/2024/a.jpg``): the name field carries any byte but NUL, and a
server must store such a name without following it as a path (PROTOCOL.md
"Rules", HOSTILE.md E1; ours keeps it whole, as ``photos%2F2024%2Fa.jpg`` on
disk). Where the protocol does not allow it, a path longer than the field's
254 bytes, the file is sent under its base name with a warning; ``flat``
sends every file under its base name (for servers that refuse ``/`` in a
name). Either way the duplicate rule above still holds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from protocol.codes import MAX_WIRE_NAME_LENGTH
from protocol.printable import printable, quoted

from .errors import ConfigError, DuplicateNames

log = logging.getLogger(__name__)

#: Separator of the parts of a relative path sent as a name.
NAME_SEPARATOR = b"/"
#: A folder walk never sends these: they hold a client's private key.
PRIVATE_FILE_NAMES = frozenset({"me.info", "priv.key"})
#: Why a walk does not enter a symbolic link to a folder.
LINKED_FOLDER = (
    "a symbolic link to a folder (-r does not follow links: one may lead out of the"
    " folder or back into it)"
)
#: The flag that sends duplicates under distinct names (named in messages).
RENAME_FLAG = "--rename-duplicates"
#: The first number given to a renamed duplicate: "x (2).txt".
FIRST_DUPLICATE_NUMBER = 2


@dataclass(frozen=True)
class Upload:
    """One file of the run and the name it is sent under (bytes, as on the wire)."""

    path: Path
    name: bytes

    @property
    def display_name(self) -> str:
        """The name sent, as a person reads it (the printable form: protocol/printable.py)."""
        return printable(self.name)


def plan_uploads(
    paths: Sequence[Path],
    *,
    recursive: bool = False,
    flat: bool = False,
    rename_duplicates: bool = False,
) -> list[Upload]:
    """The uploads of a run, in order, each under a name no other one has.

    The same file named twice is sent once. Files are not checked here
    (config.check_file does that).

    Raises:
        ConfigError: a folder without ``recursive``, or a folder that cannot be read.
        DuplicateNames: two files map to one name and ``rename_duplicates`` is off.
    """
    uploads = _unique_files(_expand(paths, recursive=recursive, flat=flat))
    return _settle_duplicates(uploads, rename=rename_duplicates)


def sendable_path(upload: Upload) -> Path:
    """A path to hand to the upload flow, whose ``name`` is the name to send.

    The flow names a file by ``path.name``; a file sent under another name
    gets a path object that answers with that name and reads the real file.
    """
    if os.fsencode(upload.path.name) == upload.name:
        return upload.path
    path = _SentAs(upload.path)
    path._sent_as = os.fsdecode(upload.name)
    return path


class _SentAs(type(Path())):  # type: ignore[misc]  # PosixPath or WindowsPath
    """A path of a file on disk whose ``name`` is the name it is sent under.

    Only ``name`` differs: stat, open and ``str`` are the file's. Paths made
    from it (``parent``, ``with_name``) are plain again. The name is set after
    construction because pathlib's constructor differs between 3.10 and 3.12.
    """

    _sent_as: str | None = None

    @property
    def name(self) -> str:
        return self._sent_as or super().name


# -- folders -------------------------------------------------------------------


def _expand(paths: Iterable[Path], *, recursive: bool, flat: bool) -> Iterator[Upload]:
    for path in paths:
        if not path.is_dir():
            yield Upload(path, os.fsencode(path.name))
            continue
        if not recursive:
            raise ConfigError(path, "is a folder; pass -r to send the files in it")
        yield from _walk(path, flat=flat)


def _walk(folder: Path, *, flat: bool) -> Iterator[Upload]:
    """Every regular file under folder, in name order, with its name to send.

    What is left out is logged, each with why, and counted in a closing line.
    """
    prefix = folder.resolve().name
    found = skipped = 0

    def fail(exc: OSError) -> None:
        raise ConfigError(exc.filename or folder, f"cannot read the folder: {exc.strerror}")

    for top, dirs, files in os.walk(folder, onerror=fail):
        dirs.sort()
        for dir_name in [name for name in dirs if Path(top, name).is_symlink()]:
            # os.walk would leave it out without a word.
            log.warning("not sending %s: %s", Path(top, dir_name), LINKED_FOLDER)
            dirs.remove(dir_name)
            skipped += 1
        for file_name in sorted(files):
            path = Path(top, file_name)
            why = _left_out(path)
            if why is not None:
                log.warning("not sending %s: %s", path, why)
                skipped += 1
                continue
            found += 1
            yield Upload(path, _folder_name(path, folder, prefix, flat=flat))
    if not found:
        log.warning("%s: no files to send in this folder", folder)
    if skipped:
        log.warning("%s: %d file(s) to send, %d left out (listed above)", folder, found, skipped)


def _left_out(path: Path) -> str | None:
    """Why a walk does not send the file at path, or None to send it."""
    if path.name in PRIVATE_FILE_NAMES:
        return "a client's private key (name it to send it)"
    if path.is_symlink() and not path.exists():
        return "a symbolic link to nothing"
    if not path.is_file():
        return "not a regular file"
    return None


def _folder_name(path: Path, folder: Path, prefix: str, *, flat: bool) -> bytes:
    base = os.fsencode(path.name)
    if flat:
        return base
    parts = ([prefix] if prefix else []) + list(path.relative_to(folder).parts)
    name = NAME_SEPARATOR.join(map(os.fsencode, parts))
    if len(name) > MAX_WIRE_NAME_LENGTH:
        log.warning(
            "%s: its path is %d bytes, over the %d a name carries; sent as %r",
            path,
            len(name),
            MAX_WIRE_NAME_LENGTH,
            os.fsdecode(base),
        )
        return base
    return name


# -- one name per file -----------------------------------------------------------


def _unique_files(uploads: Iterable[Upload]) -> list[Upload]:
    """The uploads without a file named a second time (same file on disk)."""
    seen: dict[tuple[int, int], Path] = {}
    kept = []
    for upload in uploads:
        try:
            info = upload.path.stat()
        except OSError:
            kept.append(upload)  # config.check_file reports it
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            log.warning("%s is %s, named before: sent once", upload.path, seen[key])
            continue
        seen[key] = upload.path
        kept.append(upload)
    return kept


def _settle_duplicates(uploads: list[Upload], *, rename: bool) -> list[Upload]:
    first: dict[bytes, Upload] = {}
    clashes: list[tuple[Upload, Upload]] = []
    for upload in uploads:
        if upload.name in first:
            clashes.append((first[upload.name], upload))
        else:
            first[upload.name] = upload
    if not clashes:
        return uploads
    if not rename:
        pairs = "; ".join(
            f"{quoted(str(earlier.path))} and {quoted(str(later.path))} as {quoted(later.name)}"
            for earlier, later in clashes
        )
        raise DuplicateNames(
            clashes[0][1].path,
            f"two files would be stored under one name, the second replacing the"
            f" first: {pairs}. Nothing was sent: rename one, send them in separate"
            f" runs, or pass {RENAME_FLAG} to send later ones as 'name (2).ext'",
        )
    taken = {upload.name for upload in uploads}
    renamed_uploads = []
    for upload in uploads:
        if first[upload.name] is upload:
            renamed_uploads.append(upload)
            continue
        new_name = _free_name(upload.name, taken)
        if len(new_name) > MAX_WIRE_NAME_LENGTH:
            raise DuplicateNames(
                upload.path,
                f"sent as {quoted(os.fsdecode(new_name))} to set it apart from"
                f" {quoted(str(first[upload.name].path))}, its name would be over"
                f" {MAX_WIRE_NAME_LENGTH} bytes; rename one of them",
            )
        taken.add(new_name)
        log.warning(
            "%s is sent as %r: %s is sent as %r",
            upload.path,
            os.fsdecode(new_name),
            first[upload.name].path,
            upload.display_name,
        )
        renamed_uploads.append(Upload(upload.path, new_name))
    return renamed_uploads


def _free_name(name: bytes, taken: set[bytes]) -> bytes:
    """``stem (n).ext`` with the smallest n ≥ 2 that no file of the run uses."""
    folder, sep, base = name.rpartition(NAME_SEPARATOR)
    stem, dot, suffix = base.rpartition(b".")
    if not stem:  # no extension, or a name that starts with its only dot
        stem, dot, suffix = base, b"", b""
    number = FIRST_DUPLICATE_NUMBER
    while True:
        candidate = folder + sep + stem + b" (%d)" % number + dot + suffix
        if candidate not in taken:
            return candidate
        number += 1
