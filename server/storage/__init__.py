"""Where the server keeps things, behind two small interfaces (:mod:`.base`).

* :mod:`.base`: the interfaces the handlers use, :class:`MetadataStore` and
  :class:`BlobStore`, and the records that cross them;
* :mod:`.sqlite`: the metadata store in SQLite (``defensive.db``);
* :mod:`.folder`: the blob store in a local folder (``received_files/``), with
  the safe stored names of :mod:`.names`;
* :mod:`.memory`: both stores in memory (the tests' pair);
* :mod:`.coordination`: what the servers sharing one metadata store agree
  on beside it (registration holds, upload leases, failure counts, the
  purge leader), in memory for a single server; :mod:`.postgres.coordination`
  keeps it in PostgreSQL;
* :mod:`.factory`: the one place that knows the backends: it opens the
  stores from ``--metadata`` and ``--blobs`` (URL-like; a new backend is
  one module here and one line in its table);
* :mod:`.store_options`: those two options, on the server's command line and
  ``admin``'s;
* :mod:`.commit`: the order of durable writes across the two, and start-up
  repair;
* :mod:`.lock`: one server per data folder;
* :mod:`.inventory`: a read-only view of the metadata for ``admin``
  (:class:`~.inventory.InventoryView`; SQLite's is :class:`~.inventory.Inventory`).

Nothing outside this package imports ``sqlite3``.
"""

from .base import (
    BlobEntry,
    BlobReader,
    BlobStore,
    BlobWriter,
    Binding,
    ClientRow,
    FileRow,
    MetadataStore,
    RoundCommit,
    StoreUrl,
    UnpublishedBlob,
    has_room,
    new_blob_key,
)

__all__ = [
    "BlobEntry",
    "BlobReader",
    "BlobStore",
    "BlobWriter",
    "Binding",
    "ClientRow",
    "FileRow",
    "MetadataStore",
    "RoundCommit",
    "StoreUrl",
    "UnpublishedBlob",
    "has_room",
    "new_blob_key",
]
