"""The blob store in an S3 bucket (a :class:`~server.storage.base.BlobStore`).

Layout under the URL's prefix ``P``:

* ``P blobs/<client-id-hex>/<blob key>``: one upload's content, written once
  (:mod:`.upload`) and never changed;
* ``P files/<client-id-hex>/<stored name>``: a *name*, a small object whose
  content is the blob key its path name reads. Publishing writes it (one PUT:
  nothing is copied or moved) and deletes the blob it named before; the row's
  ``BlobKey`` is the metadata's own pointer (server/storage/commit.py);
* ``P orphaned/<client-id-hex>/<stored name>.<random>``: names start-up
  repair set aside (their blobs are kept);
* ``P removing/<client-id-hex>``: a client whose removal began.

A path name is ``received_files/<client-id-hex>/<stored name>``, as in a
folder. Reading one reads its name, then its blob. Garbage (blobs no name
reads, and multipart uploads never completed: those another process began
once older than the sweeper's grace period) is listed by
:meth:`S3Blobs.unpublished` for the sweeper and start-up repair; the names'
keys are cached by ETag, so a sweep costs listings, not one read per file.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import threading
import time
from datetime import datetime
from typing import Any, BinaryIO, Callable, Collection, Iterator

from protocol.printable import quoted

from ...errors import BlobMissing, StorageFault
from ..base import BlobEntry, UnpublishedBlob, is_blob_key
from ..folder import RECEIVED_DIR
from ..names import unique_stored_name
from ..sweep import GARBAGE_GRACE
from .client import AlreadyThere, Location, client_errors, connect, fault
from .upload import PartUploaders, S3Upload

log = logging.getLogger(__name__)

BLOBS = "blobs/"
FILES = "files/"
ORPHANED = "orphaned/"
REMOVING = "removing/"
_CLIENT_HEX_DIGITS = 32
_HEX = frozenset("0123456789abcdef")
_ASIDE_RANDOM_BYTES = 8
#: Objects per DeleteObjects request (S3's limit).
_DELETE_BATCH = 1000
#: Bytes a reader asks the store for at once.
READ_CHUNK = 1024 * 1024
#: Seconds a multipart upload another process began waits to be listed as unpublished (and
#: so be swept): it may be in progress. Another node's in progress is live to the sweeper
#: through its lease (server/storage/coordination.py); one a crashed node abandoned is
#: aborted once its lease lapsed and the sweeper's grace period passed.
MULTIPART_UPLOAD_AGE = GARBAGE_GRACE


def _is_client_hex(text: str) -> bool:
    return len(text) == _CLIENT_HEX_DIGITS and all(c in _HEX for c in text)


def _age(when: Any, now: float) -> float:
    """Seconds since a listing's timestamp (a datetime); none: as old as can be."""
    if not isinstance(when, datetime):
        return math.inf
    return now - when.timestamp()


class S3Blobs:
    """Blobs in a bucket under a prefix (see the module).

    ``client``: the S3 API to use (:class:`~.client.S3Api`) (by default one made for ``location``).

    Raises (constructor):
        StoreUnusable: minio is missing.
    """

    #: Every write is a network round trip: the server writes through its blob port.
    slow_writes = True
    buffered_writes = False

    def __init__(
        self,
        location: Location,
        client: Any | None = None,
        *,
        upload_age: float = MULTIPART_UPLOAD_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.location = location
        self._client = client if client is not None else connect(location)
        #: How old a multipart upload this store did not begin must be to be listed.
        self.upload_age = upload_age
        self._clock = clock
        self.uploaders = PartUploaders()
        self._lock = threading.Lock()
        #: Uploads begun here and not yet published or aborted, by key.
        self._writers: dict[str, S3Upload] = {}
        #: What each name object read last: its ETag and the blob key it holds.
        self._names: dict[str, tuple[str, str]] = {}
        #: Names given to uploads not yet published or aborted, by key: (client, name).
        self._held: dict[str, tuple[bytes, str]] = {}

    # -- requests ----------------------------------------------------------------

    def request(self, action: str, operation: str, **params: Any) -> Any:
        """One S3 request on the bucket; its answer.

        Raises:
            BlobMissing: the object or upload is not there.
            StorageFault: any other failure (``action`` and the store's error).
        """
        try:
            return getattr(self._client, operation)(Bucket=self.location.bucket, **params)
        except client_errors() as exc:
            raise fault(action, exc) from exc

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object whose name starts with the store's prefix and ``prefix``."""
        token: dict[str, str] = {}
        while True:
            page = self.request(
                "cannot list the store", "list_objects_v2",
                Prefix=self.location.prefix + prefix, **token,
            )
            yield from page.get("Contents", ())
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def _multipart_uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every multipart upload begun and neither completed nor aborted under ``prefix``."""
        marker: dict[str, str] = {}
        while True:
            page = self.request(
                "cannot list the store's uploads", "list_multipart_uploads",
                Prefix=self.location.prefix + prefix, **marker,
            )
            yield from page.get("Uploads", ())
            if not page.get("IsTruncated"):
                return
            marker = {"KeyMarker": page["NextKeyMarker"],
                      "UploadIdMarker": page["NextUploadIdMarker"]}

    def _delete_objects(self, names: list[str]) -> None:
        for start in range(0, len(names), _DELETE_BATCH):
            batch = names[start:start + _DELETE_BATCH]
            answer = self.request(
                "cannot delete objects", "delete_objects",
                Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageFault(f"cannot delete {quoted(first.get('Key', ''))}: "
                                   f"{first.get('Code', '')}")

    # -- names -------------------------------------------------------------------

    def blob_object(self, client_id: bytes, key: str) -> str:
        """The object an upload's content is written to."""
        return f"{self.location.prefix}{BLOBS}{client_id.hex()}/{key}"

    def _name_object(self, path_name: str) -> tuple[str, str] | None:
        """The name object of a well-formed path name, and its client's hex; None otherwise."""
        parts = path_name.split("/")
        if (len(parts) != 3 or parts[0] != RECEIVED_DIR or not _is_client_hex(parts[1])
                or parts[2] in ("", ".", "..") or "\\" in parts[2]):
            return None
        return f"{self.location.prefix}{FILES}{parts[1]}/{parts[2]}", parts[1]

    def _checked_name(self, path_name: str) -> tuple[str, str]:
        named = self._name_object(path_name)
        if named is None:
            raise StorageFault(f"{quoted(path_name)} is not a stored file's name")
        return named

    def _read_name(self, name_object: str) -> str | None:
        """The blob key a name object holds; None if there is none."""
        try:
            answer = self.request("cannot read a file's name", "get_object", Key=name_object)
        except BlobMissing:
            return None
        key = answer["Body"].read().decode("ascii", "replace")
        if not is_blob_key(key):
            raise StorageFault(f"{quoted(name_object)} holds no blob key")
        with self._lock:
            self._names[name_object] = (answer.get("ETag", ""), key)
        return key

    def new_path_name(
        self, client_id: bytes, file_name: bytes, key: str, recorded: Collection[str] = ()
    ) -> str:
        """A safe stored name for ``file_name``, held for ``key`` until it is published.

        Distinct, even ignoring case, from ``recorded`` (the metadata's rows),
        the client's names this store wrote or read, and those given to its
        uploads not yet published. No request: the loop calls it, and the
        metadata's rows are the truth of what is stored (a name object no row
        points at is garbage, replaced when published over).

        Raises:
            StorageFault: no distinct name is left.
        """
        client_hex = client_id.hex()
        prefix = f"{RECEIVED_DIR}/{client_hex}/"
        named = [path_name[len(prefix):] for path_name in recorded
                 if path_name.startswith(prefix)]
        objects = f"{self.location.prefix}{FILES}{client_hex}/"
        with self._lock:
            known = [name[len(objects):] for name in self._names if name.startswith(objects)]
            held = [name for owner, name in self._held.values() if owner == client_id]
            name = unique_stored_name(file_name, [*named, *known, *held])
            self._held[key] = (client_id, name)
        return f"{prefix}{name}"

    # -- writing -----------------------------------------------------------------

    def begin(self, client_id: bytes, key: str) -> S3Upload:
        """Start one of the client's uploads under ``key`` (nothing is sent before a part fills).

        Raises:
            StorageFault: ``key`` is not a fresh blob key.
        """
        with self._lock:
            if not is_blob_key(key) or key in self._writers:
                raise StorageFault(f"{quoted(key)} is not a fresh blob key")
            writer = S3Upload(self, client_id, key)
            self._writers[key] = writer
        return writer

    def forget(self, writer: S3Upload) -> None:
        """An upload of this store's ended (aborted or published)."""
        with self._lock:
            self._writers.pop(writer.key, None)
            self._held.pop(writer.key, None)

    def publish(self, key: str, path_name: str) -> None:
        """Point ``path_name``'s name at the sealed blob ``key``; delete the blob it named before.

        A first upload's name is one conditional PUT (``If-None-Match: *``);
        a name that is there is read first, and left as it is if it holds
        ``key`` already (idempotent).

        Raises:
            StorageFault: ``path_name`` is not a stored file's name, no sealed
                blob ``key`` is in its client's namespace, or a request failed.
        """
        name_object, client_hex = self._checked_name(path_name)
        self._check_sealed(key, bytes.fromhex(client_hex))
        body = key.encode("ascii")
        previous: str | None = None
        try:
            answer = self.request("cannot install a received file", "put_object",
                                  Key=name_object, Body=body, IfNoneMatch="*")
        except AlreadyThere:
            previous = self._read_name(name_object)
            if previous != key:
                answer = self.request("cannot install a received file", "put_object",
                                      Key=name_object, Body=body)
        if previous != key:
            with self._lock:
                self._names[name_object] = (answer.get("ETag", ""), key)
        with self._lock:
            writer = self._writers.pop(key, None)
            self._held.pop(key, None)  # the bucket holds the name from now on
        if writer is not None:
            writer.published = True
        if previous is not None and previous != key:
            self._delete_blob(client_hex, previous)

    def _check_sealed(self, key: str, client_id: bytes) -> None:
        """Raises StorageFault unless ``key`` is a sealed blob of the client's (an upload of this
        store's, sealed, needs no request)."""
        with self._lock:
            writer = self._writers.get(key)
        if writer is not None and writer.sealed and writer.client_id == client_id:
            return
        try:
            self.request("cannot install a received file", "head_object",
                         Key=self.blob_object(client_id, key))
        except BlobMissing as exc:
            raise StorageFault(f"cannot install a received file: no sealed blob {key} "
                               f"of {client_id.hex()}") from exc

    def _delete_blob(self, client_hex: str, key: str) -> None:
        """Delete a blob no name reads any more; left to the sweeper if it cannot (logged)."""
        try:
            self.request("cannot delete a replaced blob", "delete_object",
                         Key=self.blob_object(bytes.fromhex(client_hex), key))
        except StorageFault as exc:
            log.warning("blob %s is left to the sweeper: %s", key, exc)

    # -- reading -----------------------------------------------------------------

    def open(self, path_name: str) -> BinaryIO:
        """Read a stored blob, streamed from the store.

        Raises:
            BlobMissing: nothing is stored under ``path_name``.
            StorageFault: not a stored file's path name, or it cannot be read.
        """
        name_object, client_hex = self._checked_name(path_name)
        key = self._read_name(name_object)
        if key is None:
            raise BlobMissing("no such file")
        answer = self.request("cannot read a stored file", "get_object",
                              Key=self.blob_object(bytes.fromhex(client_hex), key))
        return io.BufferedReader(_ObjectStream(answer["Body"]), READ_CHUNK)

    def exists(self, path_name: str) -> bool:
        """Whether ``path_name``'s name is there and its blob too.

        Raises:
            StorageFault: the store cannot be read.
        """
        named = self._name_object(path_name)
        if named is None:
            return False
        key = self._read_name(named[0])
        if key is None:
            return False
        try:
            self.request("cannot read a stored file", "head_object",
                         Key=self.blob_object(bytes.fromhex(named[1]), key))
        except BlobMissing:
            return False
        return True

    def delete(self, path_name: str) -> None:
        """Delete a file's name, then its blob (absent is fine).

        Raises:
            StorageFault: a request failed.
        """
        named = self._name_object(path_name)
        if named is None:
            return
        key = self._read_name(named[0])
        if key is None:
            return
        self.request("cannot delete a stored file", "delete_object", Key=named[0])
        with self._lock:
            self._names.pop(named[0], None)
        self._delete_blob(named[1], key)

    def room(self) -> None:
        """Unknown: a bucket's limit is the store's own business."""
        return None

    # -- start-up repair and the sweeper -----------------------------------------

    def _named_keys(self) -> set[str]:
        """The blob keys every name (stored or set aside) holds, read once per ETag."""
        return set(self._name_keys().values())

    def _name_keys(self) -> dict[str, str]:
        """The blob key each name object (stored or set aside) holds, read once per ETag."""
        found: dict[str, tuple[str, str]] = {}
        for prefix in (FILES, ORPHANED):
            for entry in self._list(prefix):
                name, etag = entry["Key"], entry.get("ETag", "")
                with self._lock:
                    cached = self._names.get(name)
                if cached is not None and cached[0] == etag:
                    found[name] = cached
                    continue
                key = self._read_name(name)
                if key is not None:
                    found[name] = (etag, key)
        with self._lock:
            self._names = found
        return {name: key for name, (_, key) in found.items()}

    def _blob_of(self, object_name: str) -> UnpublishedBlob | None:
        """The client and key of a ``blobs/`` object name (None: not one of the server's)."""
        parts = object_name[len(self.location.prefix) + len(BLOBS):].split("/")
        if len(parts) != 2 or not _is_client_hex(parts[0]) or not is_blob_key(parts[1]):
            return None
        return UnpublishedBlob(bytes.fromhex(parts[0]), parts[1])

    def unpublished(self) -> list[UnpublishedBlob]:
        """Blobs no name reads: the uploads begun here and not published, the sealed blobs
        in the store, and the multipart uploads begun at least :attr:`upload_age` ago (one
        another process began may be in progress: a large file from a slow client).

        Raises:
            StorageFault: the store cannot be listed.
        """
        named = self._named_keys()
        found: dict[UnpublishedBlob, None] = {}
        now = self._clock()
        objects = [entry["Key"] for entry in self._list(BLOBS)]
        uploads = [
            upload["Key"] for upload in self._multipart_uploads(BLOBS)
            if _age(upload.get("Initiated"), now) >= self.upload_age
        ]
        for object_name in objects + uploads:
            blob = self._blob_of(object_name)
            if blob is not None and blob.key not in named:
                found[blob] = None
        with self._lock:
            writers = [writer for writer in self._writers.values() if not writer.aborted]
        for writer in writers:
            found[UnpublishedBlob(writer.client_id, writer.key)] = None
        return list(found)

    def delete_unpublished(self, blob: UnpublishedBlob) -> None:
        """Delete a blob no row points at, and abort its multipart uploads (absent is fine).

        Raises:
            StorageFault: a request failed.
        """
        if not is_blob_key(blob.key):
            raise StorageFault(f"{quoted(blob.key)} is not a blob key")
        object_name = self.blob_object(blob.client_id, blob.key)
        for upload in self._multipart_uploads(object_name[len(self.location.prefix):]):
            if upload["Key"] == object_name:
                try:
                    self.request("cannot abort an upload", "abort_multipart_upload",
                                 Key=object_name, UploadId=upload["UploadId"])
                except BlobMissing:
                    pass
        self.request("cannot delete a blob", "delete_object", Key=object_name)
        with self._lock:
            writer = self._writers.pop(blob.key, None)
            self._held.pop(blob.key, None)
        if writer is not None:
            writer.aborted = True

    def stored(self) -> list[BlobEntry]:
        """Every file's name in the store whose blob is there (as :meth:`exists` says).

        Listings, and a read of each name not read since it last changed
        (its ETag): a repair, whose listing of garbage has read them all
        just before, reads none.

        Raises:
            StorageFault: the store cannot be listed.
        """
        names = self._name_keys()
        blobs = {blob for blob in map(self._blob_of, (e["Key"] for e in self._list(BLOBS)))
                 if blob is not None}
        found = []
        start = len(self.location.prefix) + len(FILES)
        for name_object, key in names.items():
            parts = name_object[start:].split("/")
            if (name_object.startswith(self.location.prefix + FILES) and len(parts) == 2
                    and _is_client_hex(parts[0]) and parts[1]
                    and UnpublishedBlob(bytes.fromhex(parts[0]), key) in blobs):
                found.append(BlobEntry(parts[0], parts[1], f"{RECEIVED_DIR}/{parts[0]}/{parts[1]}"))
        return found

    def foreign_entries(self) -> list[BlobEntry]:
        """Nothing: an object of another name is in nobody's way in a bucket."""
        return []

    def quarantine(self, entry: BlobEntry) -> str:
        """Move a file's name to ``orphaned/`` (its blob stays); return where it went.

        Raises:
            StorageFault: there is no such name, or a request failed.
        """
        name_object, client_hex = self._checked_name(entry.path_name)
        key = self._read_name(name_object)
        if key is None:
            raise StorageFault(f"{quoted(entry.path_name)}: no such file")
        aside = (f"{self.location.prefix}{ORPHANED}{client_hex}/{entry.name}."
                 f"{secrets.token_hex(_ASIDE_RANDOM_BYTES)}")
        self.request("cannot set a file aside", "put_object", Key=aside, Body=key.encode("ascii"))
        self.request("cannot set a file aside", "delete_object", Key=name_object)
        with self._lock:
            self._names.pop(name_object, None)
        return f"s3://{self.location.bucket}/{aside}"

    # -- deleting a client (server.storage.commit.remove_client) ----------------------

    def _removal_marker(self, client_id: bytes) -> str:
        return f"{self.location.prefix}{REMOVING}{client_id.hex()}"

    def begin_removal(self, client_id: bytes) -> None:
        """Mark the client's removal (one durable PUT: the decision), then delete its names.

        Raises:
            StorageFault: a request failed (a marked removal is finished later).
        """
        self.request("cannot begin a removal", "put_object",
                     Key=self._removal_marker(client_id), Body=b"")
        self._delete_objects(
            [entry["Key"] for entry in self._list(f"{FILES}{client_id.hex()}/")])

    def pending_removals(self) -> list[bytes]:
        """The clients whose removal is marked.

        Raises:
            StorageFault: the store cannot be listed.
        """
        start = len(self.location.prefix) + len(REMOVING)
        names = (entry["Key"][start:] for entry in self._list(REMOVING))
        return [bytes.fromhex(name) for name in names if _is_client_hex(name)]

    def finish_removal(self, client_id: bytes) -> None:
        """Delete every name, blob and upload of the client, then its marker.

        Raises:
            StorageFault: a request failed.
        """
        client_hex = client_id.hex()
        for upload in self._multipart_uploads(f"{BLOBS}{client_hex}/"):
            try:
                self.request("cannot abort an upload", "abort_multipart_upload",
                             Key=upload["Key"], UploadId=upload["UploadId"])
            except BlobMissing:
                pass
        self._delete_objects([
            entry["Key"]
            for prefix in (f"{FILES}{client_hex}/", f"{BLOBS}{client_hex}/")
            for entry in self._list(prefix)
        ])
        self.request("cannot finish a removal", "delete_object",
                     Key=self._removal_marker(client_id))

    def close(self) -> None:
        """Let the part uploaders end."""
        self.uploaders.close()


class _ObjectStream(io.RawIOBase):
    """An object's body being read, as a raw binary stream (its errors as StorageFault)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the body; 0 at its end.

        Raises:
            StorageFault: the connection to the store failed.
        """
        try:
            data = self._body.read(len(buffer))
        except client_errors() as exc:
            raise fault("cannot read a stored file", exc) from exc
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
