"""Opening the stores: the one place that knows which backends exist.

The server (``--metadata``, ``--blobs``) and ``admin`` name their stores
with URL-like values, :class:`~server.storage.base.StoreUrl`::

    sqlite:///srv/cipherdrop/defensive.db?busy_timeout=0.25
    file:///srv/cipherdrop/received_files
    s3://cipherdrop-files/node-a?endpoint=http://127.0.0.1:7480&addressing=path

Without them, today's places in the data folder (``defensive.db`` and
``received_files/``). A scheme is looked up in :data:`METADATA_BACKENDS` or
:data:`BLOB_BACKENDS`: a new backend is one module (or package) under
``server/storage/`` with a backend object (:class:`MetadataBackend`,
:class:`BlobBackend`), and one line in a table here. Nothing above this
package names a backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import BadStoreUrl, StorageFault
from . import folder, postgres, s3, sqlite
from .base import BlobReader, BlobStore, MetadataStore, StoreUrl
from .coordination import Coordination
from .inventory import InventoryView
from .urltext import without_password

#: The options that name the stores, for messages.
METADATA_OPTION = "--metadata"
BLOBS_OPTION = "--blobs"


class MetadataBackend(Protocol):
    """A kind of metadata store, as the factory opens it."""

    scheme: str
    #: How ``--help`` shows its URL (with its options), and its default place.
    form: str
    default_form: str
    #: Whether several servers (nodes) may open the same store and act as one.
    shared: bool

    def default(self, data_dir: Path) -> StoreUrl:
        """Where the store is when no URL is given."""
        ...

    def check(self, url: StoreUrl) -> None:
        """Raises BadStoreUrl: a host or option the backend does not take."""
        ...

    def open(
        self, url: StoreUrl, group_of: Callable[[str], str], node: str | None = None
    ) -> MetadataStore:
        """The server's store (``group_of``: an address's group, for ``count_clients``), as
        ``node`` where nodes share it (``FileRow.node``)."""
        ...

    def open_inventory(self, url: StoreUrl) -> InventoryView:
        """A read-only view for ``admin``: it must neither write nor wait for the server."""
        ...

    def migrate(self, url: StoreUrl) -> str:
        """Bring the store's schema up to date (``admin migrate``); what was done, in one line."""
        ...

    def open_coordination(self, url: StoreUrl, node: str, lease: float) -> Coordination | None:
        """What the nodes sharing the store at ``url`` agree on, as ``node`` (holds and
        leases lasting ``lease`` seconds); None for a store one server alone opens.

        Raises:
            StoreUnusable: the shared store cannot coordinate (with the reason).
        """
        ...


class BlobBackend(Protocol):
    """A kind of blob store, as the factory opens it."""

    scheme: str
    form: str
    default_form: str

    def default(self, data_dir: Path) -> StoreUrl: ...
    def check(self, url: StoreUrl) -> None: ...

    def open(self, url: StoreUrl, shared: bool = False) -> BlobStore:
        """The server's store (made if missing); ``shared``: other nodes write in it too."""
        ...

    def open_reader(self, url: StoreUrl) -> BlobReader:
        """A read-only view for ``admin verify``: it makes and changes nothing."""
        ...


#: Metadata stores by URL scheme.
METADATA_BACKENDS: Mapping[str, MetadataBackend] = {
    sqlite.BACKEND.scheme: sqlite.BACKEND,
    postgres.BACKEND.scheme: postgres.BACKEND,
}
#: Blob stores by URL scheme.
BLOB_BACKENDS: Mapping[str, BlobBackend] = {
    folder.BACKEND.scheme: folder.BACKEND,
    s3.BACKEND.scheme: s3.BACKEND,
}
#: The backends used when no URL is given.
DEFAULT_METADATA = sqlite.BACKEND.scheme
DEFAULT_BLOBS = folder.BACKEND.scheme


def help_text(backends: Mapping[str, MetadataBackend | BlobBackend], default: str) -> str:
    """The URL forms of the known backends, and the default place, for ``--help``."""
    forms = " or ".join(backend.form for backend in backends.values())
    return f"{forms} (default: {backends[default].default_form})"


def metadata_help() -> str:
    """``--metadata``'s help: the forms the metadata backends take."""
    return help_text(METADATA_BACKENDS, DEFAULT_METADATA)


def blobs_help() -> str:
    """``--blobs``'s help: the forms the blob backends take."""
    return help_text(BLOB_BACKENDS, DEFAULT_BLOBS)


def parse_url(text: str, backends: Mapping[str, object], option: str) -> StoreUrl:
    """A store URL: ``scheme://[host]/path[?name=value&...]`` or ``scheme:relative/path``.

    Raises:
        BadStoreUrl: no scheme, a scheme no backend has (the message names
            the known ones), no path, or a repeated option.
    """
    shown = without_password(text)  # a message never shows a password
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unclosed [ in the host
        raise BadStoreUrl(f"{option} {shown!r}: {exc}") from exc
    known = ", ".join(f"{scheme}:" for scheme in backends)
    if not parts.scheme or parts.scheme not in backends:
        what = f"scheme {parts.scheme + ':'!r}" if parts.scheme else "no scheme"
        raise BadStoreUrl(f"{option} {shown!r}: {what}; known: {known}")
    if not parts.path or parts.fragment:
        raise BadStoreUrl(f"{option} {shown!r}: give a path, as {parts.scheme}:///PATH")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    options = dict(pairs)
    if len(options) != len(pairs):
        raise BadStoreUrl(f"{option} {shown!r}: an option is given twice")
    return StoreUrl(
        scheme=parts.scheme, path=Path(unquote(parts.path)), host=parts.hostname or "",
        options=options, text=text,
    )


def _store_url(text: str | None, data_dir: Path, backends, default: str, option: str) -> StoreUrl:
    """An option's URL checked by its backend, or the default backend's place in ``data_dir``."""
    if text is None:
        return backends[default].default(data_dir)
    url = parse_url(text, backends, option)
    backends[url.scheme].check(url)
    return url


def metadata_url(text: str | None, data_dir: Path) -> StoreUrl:
    """``--metadata``'s value, checked by its backend; ``defensive.db`` in ``data_dir`` without one.

    Raises:
        BadStoreUrl: see :func:`parse_url` and the backend's ``check``.
    """
    return _store_url(text, data_dir, METADATA_BACKENDS, DEFAULT_METADATA, METADATA_OPTION)


def blobs_url(text: str | None, data_dir: Path) -> StoreUrl:
    """``--blobs``'s value, checked by its backend; ``received_files/`` in ``data_dir`` without one.

    Raises:
        BadStoreUrl: see :func:`parse_url` and the backend's ``check``.
    """
    return _store_url(text, data_dir, BLOB_BACKENDS, DEFAULT_BLOBS, BLOBS_OPTION)


@dataclass(frozen=True)
class StoreUrls:
    """Where the metadata and the blobs are."""

    metadata: StoreUrl
    blobs: StoreUrl

    @classmethod
    def given(cls, metadata: str | None, blobs: str | None, data_dir: Path) -> StoreUrls:
        """From the two options (None: the default place in ``data_dir``).

        Raises:
            BadStoreUrl: one of them is not a store's URL.
        """
        return cls(metadata_url(metadata, data_dir), blobs_url(blobs, data_dir))


def open_stores(
    urls: StoreUrls, group_of: Callable[[str], str], node: str | None = None
) -> tuple[MetadataStore, BlobStore]:
    """Open both stores for the server (or ``admin``'s changing commands).

    ``group_of``: an address's group (server/peer.py with ``--ipv6-prefix``),
    which the metadata store counts clients by; ``node``: the server's name
    (``--node-name``), which a metadata store the nodes share records in the
    rows it points at blobs (``admin``: None).

    Raises:
        StorageFault: a store cannot be opened (StoreUnusable: left untouched).
    """
    metadata = METADATA_BACKENDS[urls.metadata.scheme].open(urls.metadata, group_of, node)
    try:  # the nodes sharing a metadata store share its blob store
        blobs = BLOB_BACKENDS[urls.blobs.scheme].open(urls.blobs, is_shared(urls.metadata))
    except StorageFault:
        metadata.close()
        raise
    return metadata, blobs


def open_metadata(url: StoreUrl, group_of: Callable[[str], str]) -> MetadataStore:
    """The metadata store alone (``admin purge-unused``), writable.

    Raises:
        StorageFault: it cannot be opened (StoreUnusable: left untouched).
    """
    return METADATA_BACKENDS[url.scheme].open(url, group_of)


def migrate_metadata(url: StoreUrl) -> str:
    """Bring the metadata store's schema up to date; what was done, in one line.

    Raises:
        StoreUnusable: the store cannot be used, or its schema is newer than this server's.
    """
    return METADATA_BACKENDS[url.scheme].migrate(url)


def open_inventory(url: StoreUrl) -> InventoryView:
    """The metadata, read only (``admin``'s listings).

    Raises:
        StoreUnusable: there is no store there, or it cannot be read.
    """
    return METADATA_BACKENDS[url.scheme].open_inventory(url)


def open_blob_reader(url: StoreUrl) -> BlobReader:
    """The blobs, read only (``admin verify``).

    Raises:
        StoreUnusable: the store cannot be read.
    """
    return BLOB_BACKENDS[url.scheme].open_reader(url)


def is_shared(url: StoreUrl) -> bool:
    """Whether nodes may share the metadata store at ``url`` (several servers open it)."""
    return METADATA_BACKENDS[url.scheme].shared


def open_coordination(url: StoreUrl, node: str, lease: float) -> Coordination | None:
    """The coordination of the nodes sharing the metadata store at ``url``, as ``node``;
    None for a store one server alone opens (the server keeps it in memory).

    Raises:
        StoreUnusable: the shared store cannot coordinate (with the reason).
    """
    return METADATA_BACKENDS[url.scheme].open_coordination(url, node, lease)
