"""Where the bucket is, the S3 client that reaches it, and its errors as the seam's.

:class:`Location` is what ``s3://BUCKET/PREFIX?endpoint=…&region=…&addressing=…``
says. :func:`connect` makes an :class:`S3Api` for it: the S3 API's operations
this package uses, named and answered as in the S3 API reference (parameters
``Bucket``, ``Key``, ``UploadId``…), sent by the MinIO client library (minio,
a light one: explicit multipart uploads, conditional PUT, multi-object
delete). Credentials come only from AWS's standard variables
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``;
the region from ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` when the URL names
none) and the shared credentials file (``~/.aws/credentials`` or
``AWS_SHARED_CREDENTIALS_FILE``, profile ``AWS_PROFILE``), never from an
option, and they never reach a log line. minio is imported here only, when a
store is opened: the default install does without it (``pip install
'cipherdrop[s3]'``).

Every failed request raises :class:`RequestFailed` (the store's error code,
or the HTTP status); :func:`fault` turns it into a
:class:`~server.errors.StorageFault` (:class:`~server.errors.BlobMissing`
for a missing object): nothing above this package sees the library's types.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from ...errors import BlobMissing, StorageFault, StoreUnusable

#: How the bucket is named in requests: ``auto`` lets the client choose (the bucket in the
#: host name for AWS's endpoints, in the path for others).
ADDRESSING_STYLES = ("auto", "path", "virtual")
#: Simultaneous connections to the store kept open: every part in flight, and a few reads.
MAX_CONNECTIONS = 16
#: Bytes of a part's file read and sent at once (urllib3's default is 16 KiB: a read and a
#: send per 16 KiB cost a node more CPU than the bytes they move); each part in flight holds
#: one such block in memory while it is sent.
SEND_BLOCK_BYTES = 64 * 1024
#: Seconds to connect, and to wait for an answer, before a request is retried.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: Attempts per request (retried with backoff on a lost connection, a timeout or a 5xx).
MAX_ATTEMPTS = 3
RETRY_BACKOFF = 0.2
RETRIED_STATUSES = (500, 502, 503, 504)
#: Where the region requests are signed for is read when the URL names none (AWS's
#: variables), and the region when none is set (the one every S3-compatible store takes).
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"
#: The AWS endpoint used when the URL names none.
AWS_ENDPOINT = "https://s3.amazonaws.com"
#: The S3 error codes that say an object or an upload is not there.
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
#: The S3 error codes of a conditional PUT (``If-None-Match: *``) that found the object there.
_THERE_CODES = frozenset({"PreconditionFailed", "412"})
INSTALL_HINT = "pip install 'cipherdrop[s3]'"
#: The libraries' loggers, kept at WARNING (at DEBUG they log every request).
LIBRARY_LOGGERS = ("minio", "urllib3")
#: What a part sent from a file says of its body in its signature: not hashed (the hash
#: would read the part once more; over https the connection protects it).
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
#: The S3 API's answer to a part taken.
_PART_TAKEN = 200


class RequestFailed(Exception):
    """A request the store refused or that did not reach it: ``code`` is the store's error
    code (``NoSuchKey``…), else the HTTP status, else empty."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


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


def connect(location: Location) -> S3Api:
    """The S3 API of ``location``'s store (thread-safe: the part uploaders share it).

    Raises:
        StoreUnusable: minio is not installed, or no credentials are set.
    """
    try:
        import minio
        import urllib3
        from minio.credentials import AWSConfigProvider, ChainedProvider, EnvAWSProvider
    except ImportError as exc:
        raise StoreUnusable(f"{location}: the s3 store needs minio: {INSTALL_HINT}") from exc
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    credentials = ChainedProvider([EnvAWSProvider(), AWSConfigProvider()])
    try:
        credentials.retrieve()
    except ValueError as exc:
        raise StoreUnusable(
            f"{location}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
            " or AWS_PROFILE's keys in ~/.aws/credentials"
        ) from exc
    endpoint = urlsplit(location.endpoint or AWS_ENDPOINT)
    pool = urllib3.PoolManager(
        maxsize=MAX_CONNECTIONS, blocksize=SEND_BLOCK_BYTES,
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
        retries=urllib3.Retry(
            total=MAX_ATTEMPTS - 1, backoff_factor=RETRY_BACKOFF,
            status_forcelist=RETRIED_STATUSES, allowed_methods=None, raise_on_status=False,
        ),
    )
    client = minio.Minio(
        endpoint.netloc, secure=endpoint.scheme == "https",
        region=location.region or region_from_environment(), http_client=pool,
        credentials=credentials,
    )
    if location.addressing == "path":
        client.disable_virtual_style_endpoint()
    elif location.addressing == "virtual":
        client.enable_virtual_style_endpoint()
    return S3Api(client)


def region_from_environment() -> str:
    """The region AWS's variables name, or :data:`DEFAULT_REGION`."""
    return next((os.environ[name] for name in REGION_VARIABLES if os.environ.get(name)),
                DEFAULT_REGION)


def _etag(text: str | None) -> str:
    """An ETag without its quotes (the store quotes it in headers, not always in listings)."""
    return (text or "").strip('"')


class _Body:
    """An object's content being read (``read``, ``close``), its connection back in the
    pool once read or closed."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); empty at the end.

        Raises:
            RequestFailed: the connection failed.
        """
        try:
            data: bytes = self._response.read(None if size < 0 else size)
        except _library_errors() as exc:
            raise _failed(exc) from exc
        if size < 0 or not data:
            self.close()
        return data

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


def _error_code(answer: bytes) -> str:
    """The ``Code`` of an S3 error answer (empty if it has none)."""
    try:
        return ElementTree.fromstring(answer).findtext("Code") or ""
    except ElementTree.ParseError:
        return ""


class S3Api:
    """The S3 API's operations this package uses, named and answered as in the S3 API
    reference, over a :class:`minio.Minio` client; every failure is :class:`RequestFailed`.

    The multipart calls and the listing of multipart uploads are minio's own
    single-request methods (``_create_multipart_upload``…, what its
    ``put_object`` runs on), pinned to its 7.x series in setup.cfg; a page of
    uploads is followed from its last entry (S3's ``NextKeyMarker`` and
    ``NextUploadIdMarker`` are that entry's key and id).
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._errors = _library_errors()

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except self._errors as exc:  # converted once, here
            raise _failed(exc) from exc

    def head_bucket(self, Bucket: str) -> dict[str, Any]:  # noqa: N803 (the S3 API's names)
        if not self._call(self._client.bucket_exists, Bucket):
            raise RequestFailed(f"no bucket {Bucket}", "NoSuchBucket")
        return {}

    def create_bucket(self, Bucket: str) -> dict[str, Any]:  # noqa: N803
        self._call(self._client.make_bucket, Bucket)
        return {}

    def list_objects_v2(self, Bucket: str, Prefix: str = "",  # noqa: N803
                        **_: Any) -> dict[str, Any]:
        """Every object under ``Prefix``, in one answer (minio follows the pages)."""
        objects = self._call(lambda: list(self._client.list_objects(
            Bucket, prefix=Prefix, recursive=True)))
        return {"Contents": [{"Key": entry.object_name, "ETag": _etag(entry.etag),
                              "Size": entry.size, "LastModified": entry.last_modified}
                             for entry in objects],
                "IsTruncated": False}

    def list_multipart_uploads(self, Bucket: str, Prefix: str = "", KeyMarker: str = "",  # noqa: N803
                               UploadIdMarker: str = "") -> dict[str, Any]:  # noqa: N803
        """One page of the multipart uploads under ``Prefix``; the next starts after its last."""
        page = self._call(self._client._list_multipart_uploads, Bucket, prefix=Prefix,
                          key_marker=KeyMarker or None,
                          upload_id_marker=UploadIdMarker or None)
        uploads = [{"Key": upload.object_name, "UploadId": upload.upload_id,
                    "Initiated": upload.initiated_time} for upload in page.uploads]
        answer: dict[str, Any] = {"Uploads": uploads,
                                  "IsTruncated": bool(page.is_truncated and uploads)}
        if answer["IsTruncated"]:
            answer["NextKeyMarker"] = uploads[-1]["Key"]
            answer["NextUploadIdMarker"] = uploads[-1]["UploadId"]
        return answer

    def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        from minio.deleteobjects import DeleteObject

        result = self._call(self._client._delete_objects, Bucket,
                            [DeleteObject(entry["Key"]) for entry in Delete["Objects"]],
                            quiet=bool(Delete.get("Quiet")))
        return {"Errors": [{"Key": error.name, "Code": error.code}
                           for error in result.error_list]}

    def get_object(self, Bucket: str, Key: str, Range: str = "") -> dict[str, Any]:  # noqa: N803
        """The object's content as a stream (``Range``: ``bytes=FIRST-LAST``)."""
        offset = length = 0
        if Range:
            first, _, last = Range.removeprefix("bytes=").partition("-")
            offset, length = int(first), int(last) - int(first) + 1
        response = self._call(self._client.get_object, Bucket, Key, offset=offset,
                              length=length)
        return {"Body": _Body(response), "ETag": _etag(response.headers.get("ETag")),
                "ContentLength": int(response.headers.get("Content-Length", 0))}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        found = self._call(self._client.stat_object, Bucket, Key)
        return {"ETag": _etag(found.etag), "ContentLength": found.size,
                "LastModified": found.last_modified}

    def put_object(self, Bucket: str, Key: str, Body: bytes | bytearray,  # noqa: N803
                   IfNoneMatch: str = "") -> dict[str, Any]:  # noqa: N803
        """One PUT; with ``IfNoneMatch="*"`` refused (``PreconditionFailed``) where an object is."""
        headers = {"If-None-Match": IfNoneMatch} if IfNoneMatch else {}
        written = self._call(self._client._put_object, Bucket, Key, Body, headers)
        return {"ETag": _etag(written.etag)}

    def delete_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self._call(self._client.remove_object, Bucket, Key)
        return {}

    def create_multipart_upload(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        return {"UploadId": self._call(self._client._create_multipart_upload, Bucket, Key, {})}

    def upload_part(self, Bucket: str, Key: str, UploadId: str, PartNumber: int,  # noqa: N803
                    Body: bytes | bytearray) -> dict[str, Any]:  # noqa: N803
        etag = self._call(self._client._upload_part, Bucket, Key, Body, None, UploadId,
                          PartNumber)
        return {"ETag": _etag(etag)}

    def upload_part_from(self, Bucket: str, Key: str, UploadId: str,  # noqa: N803
                         PartNumber: int, Body: BinaryIO, ContentLength: int,  # noqa: N803
                         ) -> dict[str, Any]:
        """One UploadPart whose body is read from a file as it is sent (from its position,
        ``ContentLength`` bytes): signed as minio signs its own requests, but for the
        body's hash; retried as they are (the file is read again)."""
        from minio.signer import sign_v4_s3
        from minio.time import to_amz_date, utcnow

        client = self._client
        region = self._call(client._get_region, Bucket)
        url = client._base_url.build(
            method="PUT", region=region, bucket_name=Bucket, object_name=Key,
            query_params={"partNumber": str(PartNumber), "uploadId": UploadId},
        )
        credentials = self._call(client._provider.retrieve)
        date = utcnow()
        headers: dict[str, Any] = {
            "Host": url.netloc, "Content-Length": str(ContentLength),
            "x-amz-content-sha256": UNSIGNED_PAYLOAD, "x-amz-date": to_amz_date(date),
        }
        if credentials.session_token:
            headers["X-Amz-Security-Token"] = credentials.session_token
        headers = sign_v4_s3(method="PUT", url=url, region=region, headers=headers,
                             credentials=credentials, content_sha256=UNSIGNED_PAYLOAD,
                             date=date)
        response = self._call(client._http.urlopen, "PUT", url.geturl(), body=Body,
                              headers=headers)
        if response.status != _PART_TAKEN:
            raise RequestFailed(f"UploadPart answered {response.status}",
                                _error_code(response.data) or str(response.status))
        return {"ETag": _etag(response.headers.get("ETag"))}

    def complete_multipart_upload(self, Bucket: str, Key: str, UploadId: str,  # noqa: N803
                                  MultipartUpload: dict[str, Any]) -> dict[str, Any]:  # noqa: N803
        from minio.datatypes import Part

        parts = [Part(part["PartNumber"], _etag(part["ETag"]))
                 for part in MultipartUpload["Parts"]]
        result = self._call(self._client._complete_multipart_upload, Bucket, Key, UploadId,
                            parts)
        return {"ETag": _etag(result.etag)}

    def abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:  # noqa: N803
        self._call(self._client._abort_multipart_upload, Bucket, Key, UploadId)
        return {}


def _library_errors() -> tuple[type[Exception], ...]:
    """What a request through minio may raise: its own errors, urllib3's (a lost
    connection, a timeout), the socket's, a garbled answer's XML, and ValueError
    (its credential providers' and parsers')."""
    import urllib3
    from minio.error import MinioException

    return (MinioException, urllib3.exceptions.HTTPError, OSError, ElementTree.ParseError,
            ValueError)


def _failed(exc: BaseException) -> RequestFailed:
    """A library's exception as :class:`RequestFailed`, its code the store's (or the status)."""
    if isinstance(exc, RequestFailed):
        return exc
    code = getattr(exc, "code", None) or getattr(exc, "_code", None) \
        or getattr(exc, "_status_code", None) or ""
    return RequestFailed(f"{type(exc).__name__}: {exc}", str(code))


def error_code(exc: BaseException) -> str:
    """The S3 error code of a failed request (empty for any other exception)."""
    return exc.code if isinstance(exc, RequestFailed) else ""


def is_missing(exc: BaseException) -> bool:
    """Whether ``exc`` says the object (or multipart upload) asked for is not there."""
    return error_code(exc) in _MISSING_CODES


def fault(action: str, exc: BaseException) -> StorageFault:
    """The seam's error for a failed request: BlobMissing when the object is not there,
    AlreadyThere when a conditional PUT found it.

    The message is the library's (the store's error code and message); it
    never holds a credential.
    """
    if is_missing(exc):
        return BlobMissing(f"{action}: no such object")
    if error_code(exc) in _THERE_CODES:
        return AlreadyThere(f"{action}: the object is there already")
    return StorageFault(f"{action}: {exc}")


def client_errors() -> tuple[type[BaseException], ...]:
    """The exception type a request raises."""
    return (RequestFailed,)
