"""``s3://BUCKET/PREFIX?endpoint=URL&region=NAME&addressing=auto|path|virtual`` (``--blobs``).

The factory (server/storage/factory.py) parses the URL; this module checks
its bucket and options (without minio: a bad URL is refused even where the
extra is not installed) and opens the store.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from ...errors import BadStoreUrl, StorageFault, StoreUnusable
from ..base import StoreUrl
from .client import ADDRESSING_STYLES, Location
from .store import S3Blobs

#: The options an ``s3:`` URL takes.
ENDPOINT = "endpoint"
REGION = "region"
ADDRESSING = "addressing"
OPTIONS = (ENDPOINT, REGION, ADDRESSING)
#: S3's rule for a bucket's name: 3 to 63 lowercase letters, digits, dots and hyphens.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z0-9-]{1,64}")
_ENDPOINT_SCHEMES = ("http", "https")


def location(url: StoreUrl) -> Location:
    """Where an ``s3:`` URL says the blobs are.

    Raises:
        BadStoreUrl: a bucket, option or option value S3 would not take.
    """
    written = urlsplit(url.text).netloc if url.text else url.host
    if written != url.host or not _BUCKET.fullmatch(url.host):  # no user, password or port
        raise BadStoreUrl(f"{url}: give a bucket's name: s3://BUCKET/PREFIX")
    unknown = sorted(set(url.options) - set(OPTIONS))
    if unknown:
        raise BadStoreUrl(f"{url}: s3: takes no option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
    endpoint = url.options.get(ENDPOINT) or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in _ENDPOINT_SCHEMES or not parts.hostname or parts.query:
            raise BadStoreUrl(f"{url}: {ENDPOINT} is the store's http:// or https:// URL")
    region = url.options.get(REGION) or None
    if region is not None and not _REGION.fullmatch(region):
        raise BadStoreUrl(f"{url}: {REGION} is a region's name, as us-east-1")
    addressing = url.options.get(ADDRESSING, "auto")
    if addressing not in ADDRESSING_STYLES:
        raise BadStoreUrl(f"{url}: {ADDRESSING} is one of {', '.join(ADDRESSING_STYLES)}")
    prefix = str(url.path).strip("/")
    return Location(
        bucket=url.host, prefix=f"{prefix}/" if prefix else "", endpoint=endpoint,
        region=region, addressing=addressing,
    )


class S3Backend:
    """``s3://BUCKET/PREFIX``: the blob store in a bucket of an S3-compatible object store."""

    scheme = "s3"
    #: How ``--help`` shows its URL.
    form = (f"s3://BUCKET/PREFIX[?{ENDPOINT}=URL&{REGION}=NAME&{ADDRESSING}=auto|path|virtual]"
            " (credentials from the AWS environment variables or shared files)")
    default_form = "s3://BUCKET/PREFIX"

    def default(self, data_dir: Path) -> StoreUrl:
        """None: a bucket is always named (this is never the default store)."""
        raise BadStoreUrl("s3: has no default place: give s3://BUCKET/PREFIX")

    def check(self, url: StoreUrl) -> None:
        """Raises BadStoreUrl: no bucket, or an option S3 would not take."""
        location(url)

    def open(self, url: StoreUrl, shared: bool = False) -> S3Blobs:
        """The store, once the bucket answers (the server's; a bucket is listed for each
        answer, so ``shared`` changes nothing).

        Raises:
            StoreUnusable: minio is missing, or the bucket cannot be reached.
        """
        return _opened(url)

    def open_reader(self, url: StoreUrl) -> S3Blobs:
        """The store for ``admin verify`` (it only reads).

        Raises:
            StoreUnusable: minio is missing, or the bucket cannot be reached.
        """
        return _opened(url)


def _opened(url: StoreUrl) -> S3Blobs:
    where = location(url)
    store = S3Blobs(where)
    try:
        store.request(f"cannot use {where}", "head_bucket")
    except StorageFault as exc:
        store.close()
        raise StoreUnusable(str(exc)) from exc
    return store


BACKEND = S3Backend()
