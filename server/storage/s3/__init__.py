"""The blob store in an S3-compatible object store: ``--blobs s3://BUCKET/PREFIX``.

* :mod:`.backend`: the URL and its options (``endpoint``, ``region``,
  ``addressing``), checked without minio, and the factory's backend object;
* :mod:`.client`: the S3 API over the minio client (credentials from AWS's
  variables and shared files only) and its errors as the seam's;
* :mod:`.store`: :class:`~.store.S3Blobs`, the layout in the bucket;
* :mod:`.upload`: one upload streamed in parts as it arrives.

Installed with ``pip install 'cipherdrop[s3]'`` (minio).
"""

from .backend import BACKEND, S3Backend
from .store import S3Blobs

__all__ = ["BACKEND", "S3Backend", "S3Blobs"]
