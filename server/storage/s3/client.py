"""Where the bucket is, the S3 client that reaches it, and its errors as the seam's.

:class:`Location` is what ``s3://BUCKET/PREFIX?endpoint=…&region=…&addressing=…``
says. :func:`connect` makes a boto3 client for it; credentials come only
from boto3's standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
/ ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared files
``~/.aws/credentials`` and ``~/.aws/config``, or a role), never from an
option, and they never reach a log line. boto3 is imported here only, when a
store is opened: the default install does without it (``pip install
'cipherdrop[s3]'``).

:func:`fault` turns a boto3 or botocore exception into a
:class:`~server.errors.StorageFault` (:class:`~server.errors.BlobMissing`
for a missing object): nothing above this package sees their types.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ...errors import BlobMissing, StorageFault, StoreUnusable

#: How the bucket is named in requests: ``auto`` lets boto3 choose.
ADDRESSING_STYLES = ("auto", "path", "virtual")
#: Simultaneous connections to the store: every part in flight, and a few reads.
MAX_CONNECTIONS = 16
#: Seconds to connect, and to wait for an answer, before a request is retried.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: Attempts per request (boto3's standard retry mode: backoff on throttling and 5xx).
MAX_ATTEMPTS = 3
#: The S3 error codes that say an object or an upload is not there.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
#: The S3 error codes of a conditional PUT (``If-None-Match: *``) that found the object there.
_THERE_CODES = frozenset({"PreconditionFailed", "412"})
INSTALL_HINT = "pip install 'cipherdrop[s3]'"
#: The libraries' loggers, kept at WARNING: at DEBUG they log every request's
#: headers (the access key's id in the signature) and body.
LIBRARY_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")


class AlreadyThere(StorageFault):
    """A conditional PUT (``If-None-Match: *``) found an object under its name."""


@dataclass(frozen=True)
class Location:
    """A bucket, the prefix every object name starts with, and how to reach it."""

    bucket: str
    #: Empty, or ends with ``/``.
    prefix: str = ""
    #: The store's URL (None: AWS's own endpoint for the region).
    endpoint: str | None = None
    region: str | None = None
    addressing: str = "auto"

    def __str__(self) -> str:
        """``s3://bucket/prefix`` (no option: the endpoint is no secret, but it is noise)."""
        return f"s3://{self.bucket}/{self.prefix}"


def connect(location: Location) -> Any:
    """A boto3 S3 client for ``location`` (thread-safe: the part uploaders share it).

    Raises:
        StoreUnusable: boto3 is not installed.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise StoreUnusable(f"{location}: the s3 store needs boto3: {INSTALL_HINT}") from exc
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    config = Config(
        s3={"addressing_style": location.addressing},
        max_pool_connections=MAX_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    session = boto3.session.Session(region_name=location.region)
    return session.client("s3", endpoint_url=location.endpoint, config=config)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError (empty for any other exception)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def is_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says the object (or multipart upload) asked for is not there."""
    return error_code(exc) in _MISSING_CODES


def fault(action: str, exc: BaseException) -> StorageFault:
    """The seam's error for a failed request: BlobMissing when the object is not there,
    AlreadyThere when a conditional PUT found it.

    The message is botocore's (the operation and the store's error code);
    it never holds a credential.
    """
    if is_missing(exc):
        return BlobMissing(f"{action}: no such object")
    if error_code(exc) in _THERE_CODES:
        return AlreadyThere(f"{action}: the object is there already")
    return StorageFault(f"{action}: {exc}")


def client_errors() -> tuple[type[BaseException], ...]:
    """The exception types a request may raise: botocore's own (imported lazily)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)
