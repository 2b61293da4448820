"""Where the server keeps things, behind two small interfaces (:mod:`.base`).

* :mod:`.base`: the interfaces the handlers use, :class:`MetadataStore` and
  :class:`BlobStore`, and the records that cross them;
* :mod:`.sqlite`: the metadata store in SQLite (``defensive.db``);
* :mod:`.folder`: the blob store in a local folder (``received_files/``), with
  the safe stored names of :mod:`.names`;
* :mod:`.commit`: the order of durable writes across the two, and start-up
  repair;
* :mod:`.lock`: one server per data folder;
* :mod:`.inventory`: a read-only view of the database for ``admin``.

Nothing outside this package imports ``sqlite3``.
"""

from .base import BlobEntry, BlobStore, Binding, ClientRow, FileRow, MetadataStore, TempBlob

__all__ = [
    "BlobEntry",
    "BlobStore",
    "Binding",
    "ClientRow",
    "FileRow",
    "MetadataStore",
    "TempBlob",
]
