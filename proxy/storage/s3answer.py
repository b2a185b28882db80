"""What S3 answered, in one typed form however it came, and what a failed answer means.

``S3Answer``: a GetObject's or HeadObject's header fields, from a presigned GET's reply
(``from_headers``) or botocore's response (``from_botocore``); the object's metadata and the bytes
its body holds are read from it alone. ``ERRORS``: one table from S3 error codes and HTTP statuses
to the ``StorageError`` tree, read for botocore's ClientError and a presigned GET's failed reply
alike; ``map_client_errors`` for the exceptions of botocore and aiohttp (like httpx's
``map_httpcore_exceptions``). Messages are the tree's defaults: S3's text names hosts and keys.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from proxy.http.codec import ByteRange, ContentRange, parse_http_date, quote_etag
from proxy.storage.base import ObjectMeta, stored_field
from proxy.storage.errors import (
    AccessDenied,
    BackendTimeout,
    BackendUnavailable,
    BodyTruncated,
    ObjectChanged,
    ObjectNotFound,
    RangeNotSatisfiable,
    StorageError,
)
from proxy.storage.mediatypes import media_type_for

logger = logging.getLogger("proxy.s3")

# What S3 stores when an upload names no type: no information, so the key's extension decides.
_GENERIC_TYPES = frozenset({"", "binary/octet-stream", "application/octet-stream"})
_DIGITS = re.compile(r"[0-9]+")


class HeaderFields(Protocol):
    """A reply's header fields, looked up case-insensitively (http.client's, ``Fields``)."""

    def get(self, name: str, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class S3Answer:
    """The header fields S3 answered (as sent: ETag quoted or not, Last-Modified the header's
    text) and, for a GetObject, ``stream``: the body's reader, which its ``close()`` releases."""

    length: int  # Content-Length: the bytes of this answer's body
    content_range: ContentRange | None = None  # a ranged GET's: which bytes, of how many
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    stream: Any = None
    content_disposition: str | None = None  # stored with the object, sent back as S3 does
    cache_control: str | None = None

    @classmethod
    def from_headers(cls, headers: HeaderFields, stream: Any) -> S3Answer | None:
        """A presigned GET's answer from its reply's header fields; None without a length or
        with a malformed Content-Range (botocore then answers)."""
        length = headers.get("Content-Length")
        if length is None or not _DIGITS.fullmatch(length):
            return None
        try:
            content_range = _content_range(headers.get("Content-Range"))
        except ValueError:
            return None
        return cls(
            int(length),
            content_range,
            headers.get("Content-Type"),
            headers.get("ETag"),
            headers.get("Last-Modified"),
            stream,
            headers.get("Content-Disposition"),
            headers.get("Cache-Control"),
        )

    @classmethod
    def from_botocore(cls, response: Mapping[str, Any]) -> S3Answer:
        """botocore's GetObject or HeadObject response (its timestamps left as text, see
        ``proxy.storage.s3client``). Raises ValueError for a malformed Content-Range."""
        return cls(
            response["ContentLength"],
            _content_range(response.get("ContentRange")),
            response.get("ContentType"),
            response.get("ETag"),
            response.get("LastModified"),
            response.get("Body"),
            response.get("ContentDisposition"),
            response.get("CacheControl"),
        )

    @property
    def size(self) -> int:
        """The whole object's size: a ranged answer's Content-Range says it."""
        content_range = self.content_range
        if content_range is None or content_range.size is None:
            return self.length
        return content_range.size

    @property
    def byte_range(self) -> ByteRange:
        """The bytes the body holds: its Content-Range's, or the whole object."""
        content_range = self.content_range
        if content_range is None or content_range.byte_range is None:
            return ByteRange(0, self.length)
        return content_range.byte_range


def _content_range(value: str | None) -> ContentRange | None:
    """A 2xx answer's Content-Range (never ``*`` in either place); ValueError when malformed."""
    if not value:
        return None
    content_range = ContentRange.from_header(value)
    if content_range is None or content_range.byte_range is None or content_range.size is None:
        raise ValueError("malformed Content-Range")
    return content_range


def meta_from(key: str, answer: S3Answer) -> ObjectMeta:
    """The object's metadata from a GetObject or HeadObject answer (a ranged one included)."""
    modified = answer.last_modified
    return ObjectMeta(
        key=key,
        size=answer.size,
        media_type=_media_type(answer.content_type, key),
        etag=quote_etag(answer.etag),
        last_modified=parse_http_date(modified) if modified else None,
        content_disposition=stored_field(answer.content_disposition),
        cache_control=stored_field(answer.cache_control),
    )


def _media_type(stored: str | None, key: str) -> str:
    """The stored ContentType wins; a missing or generic one falls back to the extension."""
    if stored and stored.split(";", 1)[0].strip().lower() not in _GENERIC_TYPES:
        return stored
    return media_type_for(key)


# --- failed answers ----------------------------------------------------------------------------

_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")  # an S3 error document's code


@dataclass(frozen=True, slots=True)
class Row:
    """What one S3 answer means. ``definite``: a presigned GET's reply that says so settles the
    GET by itself; botocore (its retries, a fresh signature) could not answer otherwise."""

    error: type[StorageError]
    definite: bool = False


_NOT_FOUND = Row(ObjectNotFound)
_DENIED = Row(AccessDenied)
_CHANGED = Row(ObjectChanged, definite=True)
_UNSATISFIABLE = Row(RangeNotSatisfiable, definite=True)
_TIMEOUT = Row(BackendTimeout)
_BUSY = Row(BackendUnavailable)  # throttled or failing for a moment: botocore retried already

ERRORS: Mapping[str, Row] = {
    # Statuses are keyed by their digits: botocore gives a HEAD's error (no body) its status as
    # its code. A code not in the table is BackendUnavailable, logged (NoSuchBucket,
    # InvalidAccessKeyId: the operator's to fix).
    "NoSuchKey": Row(ObjectNotFound, definite=True),
    "NotFound": _NOT_FOUND,
    "404": _NOT_FOUND,  # NoSuchBucket's status too: only the code settles a presigned GET's 404
    "AccessDenied": _DENIED,
    "Forbidden": _DENIED,
    "403": _DENIED,  # an expired presigned URL's too (SignatureDoesNotMatch)
    "AllAccessDisabled": _DENIED,
    "PreconditionFailed": _CHANGED,
    "412": _CHANGED,
    "InvalidRange": _UNSATISFIABLE,
    "416": _UNSATISFIABLE,
    "RequestTimeout": _TIMEOUT,
    "RequestTimeoutException": _TIMEOUT,
    "SlowDown": _BUSY,
    "ServiceUnavailable": _BUSY,
    "503": _BUSY,
    "Throttling": _BUSY,
    "ThrottlingException": _BUSY,
    "RequestLimitExceeded": _BUSY,
    "TooManyRequests": _BUSY,
    "InternalError": _BUSY,
    "500": _BUSY,
}


def error_for_code(code: str) -> StorageError:
    """The error an S3 error code (or status) means; an unknown one is logged."""
    row = ERRORS.get(code)
    if row is None:
        logger.warning("S3 error %s", code)
        return BackendUnavailable()
    return row.error()


def definite_error(status: int, document: bytes) -> StorageError | None:
    """The error a presigned GET's failed reply settles by itself: its status's row is
    definite, or its error code's row is and agrees with its status's. None: botocore must
    answer (its retries, a fresh signature, its error mapping)."""
    by_status = ERRORS.get(str(status))
    if by_status is None:
        return None
    if by_status.definite:
        return by_status.error()
    match = _CODE.search(document)
    by_code = ERRORS.get(match.group(1).decode("latin-1")) if match else None
    if by_code is not None and by_code.definite and by_code.error is by_status.error:
        return by_code.error()
    return None


@contextmanager
def map_client_errors() -> Iterator[None]:
    """Translate botocore and aiohttp errors into the ``StorageError`` tree (most specific
    first): a ClientError by ``ERRORS``, the rest by their type."""
    try:
        yield
    except ClientError as exc:
        raise error_for_code(str(exc.response.get("Error", {}).get("Code", ""))) from exc
    except (TimeoutError, ConnectTimeoutError, ReadTimeoutError) as exc:
        raise BackendTimeout() from exc
    except (IncompleteReadError, ResponseStreamingError) as exc:
        raise BodyTruncated() from exc
    except BotoCoreError as exc:  # unreachable endpoint, no credentials
        raise _unavailable(exc) from exc
    except Exception as exc:
        # aiohttp's, behind aiobotocore: imported by that flavour only (no other raises them)
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is None or not isinstance(exc, aiohttp.ClientError):
            raise
        if isinstance(exc, aiohttp.ClientPayloadError):
            raise BodyTruncated() from exc
        raise _unavailable(exc) from exc


def cut_cause(error: BaseException) -> str:
    """Why S3 ended a body early, in words for a log line: ``connection reset``, ``read
    timeout``, ``object changed``, else ``connection closed early`` (a close before the body's
    length). Read from ``error`` and what it was raised from (or held: urllib3's ProtocolError
    holds the OSError)."""
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending and len(seen) < 16:  # a chain is short; bounded anyway
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, ObjectChanged):
            return "object changed"
        if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return "connection reset"
        if isinstance(exc, TimeoutError | ConnectTimeoutError | ReadTimeoutError):
            return "read timeout"
        pending += [arg for arg in exc.args if isinstance(arg, BaseException)]
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
        kwargs = getattr(exc, "kwargs", None)  # botocore keeps what it wraps by keyword
        if isinstance(kwargs, dict):
            pending += [v for v in kwargs.values() if isinstance(v, BaseException)]
    return "connection closed early"


def _unavailable(exc: Exception) -> BackendUnavailable:
    logger.warning("S3 unavailable: %s", type(exc).__name__)
    return BackendUnavailable()
