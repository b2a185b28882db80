"""S3 backends: ``S3Storage`` (boto3, blocking) and ``AsyncS3Storage`` (aiobotocore), twins.

A GET with one range or none is ONE GetObject whose response carries the metadata; HEAD,
revalidations and multipart use HeadObject, then ranged GETs pinned to its ETag (IfMatch).
GetObject goes out as a presigned GET (``proxy.storage.presigned``) unless that is turned off;
botocore answers what it cannot.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from functools import partial
from typing import Any

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from proxy.config import Settings
from proxy.http.conditional import parse_http_date
from proxy.http.hint import ReadHint
from proxy.http.ranges import ByteRange
from proxy.metrics import BACKEND_CALLS
from proxy.storage import presigned
from proxy.storage.base import ChunkSize, ObjectMeta, chunk_limit
from proxy.storage.connections import AsyncConnections, AsyncReply
from proxy.storage.errors import (
    AccessDenied,
    BackendTimeout,
    BackendUnavailable,
    BodyTruncated,
    ObjectChanged,
    ObjectNotFound,
    RangeNotSatisfiable,
)
from proxy.storage.mediatypes import media_type_for

__all__ = ["AsyncS3Storage", "RangeNotSatisfiable", "S3Storage", "aopen_s3", "open_s3"]

logger = logging.getLogger("proxy.s3")

# What S3 stores when an upload names no type: no information, so the key's extension decides.
_GENERIC_TYPES = frozenset({"", "binary/octet-stream", "application/octet-stream"})

_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_DENIED = frozenset({"AccessDenied", "Forbidden", "403", "AllAccessDisabled"})
_CHANGED = frozenset({"PreconditionFailed", "412"})
_UNSATISFIABLE = frozenset({"InvalidRange", "416"})
_TIMEOUT = frozenset({"RequestTimeout", "RequestTimeoutException"})
_THROTTLED = frozenset(
    {"SlowDown", "ServiceUnavailable", "503", "Throttling", "ThrottlingException"}
    | {"RequestLimitExceeded", "TooManyRequests", "InternalError", "500"}
)


@contextmanager
def map_client_errors() -> Iterator[None]:
    """Translate botocore and aiohttp errors into the ``StorageError`` tree (most specific
    first).

    Messages are the tree's defaults: botocore's text names endpoints, buckets and keys.
    """
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            raise ObjectNotFound() from exc
        if code in _DENIED:
            raise AccessDenied() from exc
        if code in _CHANGED:
            raise ObjectChanged() from exc
        if code in _UNSATISFIABLE:
            raise RangeNotSatisfiable() from exc
        if code in _TIMEOUT:
            raise BackendTimeout() from exc
        if code not in _THROTTLED:  # NoSuchBucket, InvalidAccessKeyId: the operator's to fix
            logger.warning("S3 error %s", code)
        raise BackendUnavailable() from exc
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


def _unavailable(exc: Exception) -> BackendUnavailable:
    logger.warning("S3 unavailable: %s", type(exc).__name__)
    return BackendUnavailable()


def _media_type(stored: str | None, key: str) -> str:
    """The stored ContentType wins; a missing or generic one falls back to the extension."""
    if stored and stored.split(";", 1)[0].strip().lower() not in _GENERIC_TYPES:
        return stored
    return media_type_for(key)


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    return value if value.startswith(('"', 'W/"')) else f'"{value}"'


def _meta_from(key: str, response: Mapping[str, Any]) -> ObjectMeta:
    """ObjectMeta from a GetObject or HeadObject response (a ranged one included)."""
    content_range = response.get("ContentRange")
    size = int(content_range.rsplit("/", 1)[1]) if content_range else response["ContentLength"]
    modified = response.get("LastModified")  # the header's text: see _tune
    return ObjectMeta(
        key=key,
        size=size,
        media_type=_media_type(response.get("ContentType"), key),
        etag=_etag(response.get("ETag")),
        last_modified=parse_http_date(modified) if modified else None,
    )


def _range_of(response: Mapping[str, Any], size: int) -> ByteRange:
    """The bytes a GetObject response carries: its Content-Range, or the whole object."""
    content_range = response.get("ContentRange")
    if not content_range:
        return ByteRange(0, size)
    first, last = content_range.split(" ", 1)[1].split("/", 1)[0].split("-")
    return ByteRange(int(first), int(last) + 1)


def _get_args(
    bucket: str, s3_key: str, range_value: str | None, etag: str | None
) -> dict[str, str]:
    args = {"Bucket": bucket, "Key": s3_key}
    if range_value:
        args["Range"] = range_value
    if etag:
        args["IfMatch"] = etag  # later calls of one response must read the same version
    return args


def _wire_range(byte_range: ByteRange) -> str:
    return f"bytes={byte_range.start}-{byte_range.stop - 1}"


def _release(stream: Any) -> None:
    """Close a boto3 StreamingBody (handing its connection back to urllib3's pool) or a
    presigned GET's reply.

    Closing drops a connection that still has unread bytes; ``release_conn`` returns the
    (now closed) slot, so the pool keeps its size. A fully read body released itself already.
    """
    stream.close()
    raw = getattr(stream, "_raw_stream", stream)
    if hasattr(raw, "release_conn"):
        raw.release_conn()


class _Prefetch:
    """What ``open`` fetched along with the metadata: a stream of ``byte_range``, or nothing."""

    __slots__ = ("byte_range", "closer", "stream")

    def __init__(
        self, byte_range: ByteRange | None = None, stream: Any = None, closer: Any = None
    ) -> None:
        self.byte_range = byte_range
        self.stream = stream
        self.closer = closer

    def take(self, byte_range: ByteRange) -> Any:
        """The prefetched stream if it holds exactly ``byte_range`` (once), else None."""
        if self.stream is None or self.byte_range != byte_range:
            return None
        stream, self.stream = self.stream, None
        return stream


class _S3Object:
    """What both body flavours hold: the storage, the object's key and meta, its streams."""

    __slots__ = ("_meta", "_prefetch", "_s3_key", "_storage", "_streams")

    def __init__(self, storage: Any, s3_key: str, meta: ObjectMeta, prefetch: _Prefetch) -> None:
        self._storage = storage
        self._s3_key = s3_key
        self._meta = meta
        self._prefetch = prefetch
        self._streams: list[Any] = [] if prefetch.closer is None else [prefetch.closer]

    @property
    def meta(self) -> ObjectMeta:
        return self._meta


class S3Body(_S3Object):
    """An object on S3 read with boto3 (blocking: called from FastAPI's threadpool)."""

    __slots__ = ()

    def iter_range(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        stream = self._prefetch.take(byte_range)
        if stream is None:
            _, stream, closer = self._storage.get(
                self._s3_key, _wire_range(byte_range), self._meta.etag
            )
            self._streams.append(closer)
        return _Chunks(stream, byte_range.length, chunk_size)

    def close(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            _release(stream)


class AsyncS3Body(_S3Object):
    """The async twin of ``S3Body`` (aiobotocore; a presigned GET's body streams straight from
    its socket, ``AsyncReply``; botocore's from aiohttp)."""

    __slots__ = ()

    async def aiter_range(
        self, byte_range: ByteRange, chunk_size: ChunkSize
    ) -> AsyncIterator[bytes]:
        stream = self._prefetch.take(byte_range)
        if stream is None:
            _, stream, closer = await self._storage.aget(
                self._s3_key, _wire_range(byte_range), self._meta.etag
            )
            self._streams.append(closer)
        return _achunks(stream, byte_range.length, chunk_size)

    async def aclose(self) -> None:
        # Both closes are synchronous (AsyncReply's; aiohttp's, behind aiobotocore's
        # StreamingBody, releases the connector's slot at once).
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()


class _Chunks:
    """Exactly ``length`` bytes of ``stream`` in chunks of at most ``chunk_size``; never reads
    past them. A ``ReadyChunks``: a presigned GET's reply reads on the event loop what its
    socket holds already (``Reply.read_ready``); a StreamingBody always takes a thread."""

    __slots__ = ("_chunk_size", "_read_ready", "_remaining", "_stream")

    def __init__(self, stream: Any, length: int, chunk_size: ChunkSize) -> None:
        self._stream = stream
        self._remaining = length
        self._chunk_size = chunk_size
        self._read_ready = getattr(stream, "read_ready", None)

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        if self._remaining <= 0:
            raise StopIteration
        with map_client_errors():
            return self._took(self._stream.read(self._size()))

    def ready(self) -> bytes | None:
        if self._remaining <= 0:
            return b""
        if self._read_ready is None:
            return None
        with map_client_errors():
            chunk = self._read_ready(self._size())
        return None if chunk is None else self._took(chunk)

    def _size(self) -> int:
        return min(chunk_limit(self._chunk_size), self._remaining)

    def _took(self, chunk: bytes) -> bytes:
        if not chunk:
            raise BodyTruncated()
        self._remaining -= len(chunk)
        return chunk


# aiohttp's read(n) raises the response's buffer limits to n (it stops reading the socket only
# above 2n) until the response ends: a stream that read 1 MiB chunks and then slowed down (a
# player that buffered ahead) would keep up to ~2.3 MiB buffered. Reads of at most this keep it
# under ~0.75 MiB and cost fast streams nothing measurable (proxy CPU per download alike): a read
# returns what is buffered, rarely more than one socket read (256 KB) anyway.
_AIOHTTP_READ_LIMIT = 256 * 1024


async def _aread(stream: Any, size: int) -> bytes:
    """``size`` bytes, or fewer at the end of the stream. aiohttp's read() returns what it has
    buffered, often 64 KiB: gathering them costs a join, sending each costs a loop step."""
    parts = []
    while size > 0 and (chunk := await stream.read(min(size, _AIOHTTP_READ_LIMIT))):
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)  # one part: the part itself, not a copy


async def _achunks(stream: Any, length: int, chunk_size: ChunkSize) -> AsyncIterator[bytes]:
    # A presigned GET's reply reads whole chunks from its socket; aiohttp's (behind
    # aiobotocore's StreamingBody) are gathered.
    read = stream.read if isinstance(stream, AsyncReply) else partial(_aread, stream)
    remaining = length
    while remaining > 0:
        with map_client_errors():
            chunk = await read(min(chunk_limit(chunk_size), remaining))
        if not chunk:
            raise BodyTruncated()
        remaining -= len(chunk)
        yield chunk


class _Bucket:
    """What both storage flavours hold: one long-lived client, the bucket, the key prefix and
    the presigned GETs (None when turned off)."""

    __slots__ = ("_bucket", "_client", "_prefix", "_presigned")

    def __init__(self, client: Any, bucket: str, prefix: str = "", presigned: Any = None) -> None:
        self._client = client
        self._bucket = bucket
        prefix = prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        self._presigned = presigned

    @property
    def client(self) -> Any:
        """The botocore client, for instrumentation (its event hooks)."""
        return self._client

    @property
    def presigned(self) -> Any:
        """The presigned GETs, for instrumentation; None when GetObject goes through botocore."""
        return self._presigned

    def _s3_key(self, key: str) -> str:
        return self._prefix + key


def _prefetched(key: str, got: presigned.Got) -> tuple[ObjectMeta, _Prefetch]:
    response, stream, closer = got
    meta = _meta_from(key, response)
    return meta, _Prefetch(_range_of(response, meta.size), stream, closer)


class S3Storage(_Bucket):
    """A bucket read with a boto3 client (thread-safe; one per worker process)."""

    __slots__ = ()

    def get(self, s3_key: str, range_value: str | None, etag: str | None = None) -> presigned.Got:
        """GetObject: presigned when it can, else (or when that cannot answer) botocore's."""
        if self._presigned is not None:
            got = self._presigned.get(s3_key, range_value, etag)
            if got is not None:
                return got  # type: ignore[no-any-return]
        with map_client_errors():
            response = self._client.get_object(**_get_args(self._bucket, s3_key, range_value, etag))
        return response, response["Body"], response["Body"]

    def open(self, key: str, hint: ReadHint | None = None) -> S3Body:
        s3_key = self._s3_key(key)
        if hint is not None and hint.body:
            try:
                meta, prefetch = _prefetched(key, self.get(s3_key, hint.s3_range()))
            except RangeNotSatisfiable:
                pass  # the plan answers 416 (or an empty 200) from HeadObject's metadata
            else:
                return S3Body(self, s3_key, meta, prefetch)
        with map_client_errors():
            response = self._client.head_object(Bucket=self._bucket, Key=s3_key)
        return S3Body(self, s3_key, _meta_from(key, response), _Prefetch())

    def check(self) -> None:
        with map_client_errors():
            self._client.head_bucket(Bucket=self._bucket)

    def close(self) -> None:
        if self._presigned is not None:
            self._presigned.close()
        self._client.close()


class AsyncS3Storage(_Bucket):
    """The async twin of ``S3Storage`` (an aiobotocore client entered in the app's lifespan)."""

    __slots__ = ()

    async def aget(
        self, s3_key: str, range_value: str | None, etag: str | None = None
    ) -> presigned.Got:
        if self._presigned is not None:
            got = await self._presigned.get(s3_key, range_value, etag)
            if got is not None:
                return got  # type: ignore[no-any-return]
        with map_client_errors():
            response = await self._client.get_object(
                **_get_args(self._bucket, s3_key, range_value, etag)
            )
        return response, response["Body"], response["Body"]

    async def open(self, key: str, hint: ReadHint | None = None) -> AsyncS3Body:
        s3_key = self._s3_key(key)
        if hint is not None and hint.body:
            try:
                meta, prefetch = _prefetched(key, await self.aget(s3_key, hint.s3_range()))
            except RangeNotSatisfiable:
                pass  # the plan answers 416 (or an empty 200) from HeadObject's metadata
            else:
                return AsyncS3Body(self, s3_key, meta, prefetch)
        with map_client_errors():
            response = await self._client.head_object(Bucket=self._bucket, Key=s3_key)
        return AsyncS3Body(self, s3_key, _meta_from(key, response), _Prefetch())

    async def acheck(self) -> None:
        with map_client_errors():
            await self._client.head_bucket(Bucket=self._bucket)

    async def aclose(self) -> None:
        pass  # the clients are closed by the lifespan's exit stack


def config_options(settings: Settings) -> dict[str, Any]:
    """botocore Config options, shared by both clients."""
    return {
        "max_pool_connections": settings.s3_pool_size,
        "connect_timeout": settings.s3_connect_timeout,
        "read_timeout": settings.s3_read_timeout,
        "retries": {"total_max_attempts": settings.s3_max_attempts, "mode": "standard"},
        "s3": {"addressing_style": settings.s3_addressing_style},
        # boto3 >= 1.36 checksums by default, which several S3-compatible stores reject, and a
        # streaming proxy cannot validate a whole-object checksum before sending anyway.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        # A fixed User-Agent: botocore otherwise assembles its own twice per request (a tenth
        # of a ranged GET's client time).
        "user_agent": presigned.USER_AGENT,
        # SigV4 everywhere: botocore would presign with the deprecated SigV2 for custom endpoints.
        "signature_version": "s3v4",
    }


def _presigning(settings: Settings, client: Any) -> bool:
    return settings.s3_presigned_gets and presigned.usable(client.meta.endpoint_url)


def _count_call(model: Any, **_: Any) -> None:
    BACKEND_CALLS.labels("s3", model.name).inc()


# The services whose clients a session of the proxy creates: S3, and those of the credential
# chain (assumed roles and web identity: STS; SSO profiles: SSO and SSO-OIDC; `aws login`: signin).
ENDPOINT_SERVICES = frozenset({"s3", "sts", "sso", "sso-oidc", "signin"})


class _FileLoader(botocore.loaders.JSONFileLoader):  # type: ignore[misc]  # untyped
    """botocore's JSON files, but only ``ENDPOINT_SERVICES`` of its legacy endpoint table.

    A session keeps endpoints.json (every service of every partition: ~7 MB of dicts) for as
    long as it lives, to compute each client's default endpoint when the client is created;
    requests are routed by each service's endpoint rule set. Measured on SeaweedFS (fresh
    processes, two downloads and 5 s of ranges, then 50 slow readers): a fresh process 4 MB
    smaller, and 5 MB less at the peak (the heap it freed is reused).
    """

    def load_file(self, file_path: str) -> Any:
        data = super().load_file(file_path)
        if data is None or os.path.basename(file_path) != "endpoints":
            return data
        partitions = [
            {**partition, "services": _served(partition.get("services", {}))}
            for partition in data.get("partitions", [])
        ]
        return {**data, "partitions": partitions}


def _served(services: Mapping[str, Any]) -> dict[str, Any]:
    return {name: entry for name, entry in services.items() if name in ENDPOINT_SERVICES}


def _tune(session: botocore.session.Session) -> botocore.session.Session:
    """Leave timestamps as the header's text: botocore parses each with dateutil, which took a
    tenth of a ranged GET's client time; ``_meta_from`` reads the HTTP-date itself. Load
    botocore's data (from botocore's own search path, AWS_DATA_PATH) with ``_FileLoader``."""
    factory = session.get_component("response_parser_factory")
    factory.set_parser_defaults(timestamp_parser=str)
    loader = botocore.loaders.create_loader(session.get_config_variable("data_path"))
    loader.file_loader = _FileLoader()
    session.register_component("data_loader", loader)
    return session


def open_s3(settings: Settings) -> S3Storage:
    """The boto3 flavour: one client per worker process, closed by ``S3Storage.close``."""
    import boto3.session  # each flavour imports its own library: ~16 MB less for the other

    botocore_session = _tune(botocore.session.Session())
    session = boto3.session.Session(
        profile_name=settings.s3_profile, botocore_session=botocore_session
    )
    client = session.client(
        "s3",
        region_name=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        config=Config(**config_options(settings)),
    )
    client.meta.events.register("after-call.s3", _count_call)
    gets = None
    if _presigning(settings, client):
        connect = presigned.connections(settings, presigned.ca_file(botocore_session))
        gets = presigned.PresignedGets(client, settings.s3_bucket, connect)
    return S3Storage(client, settings.s3_bucket, settings.s3_prefix, gets)


async def aopen_s3(settings: Settings, stack: AsyncExitStack) -> AsyncS3Storage:
    """The aiobotocore flavour: the client lives as long as ``stack`` (the app's lifespan)."""
    import aiobotocore.session
    from aiobotocore.config import AioConfig

    session = _tune(aiobotocore.session.AioSession(profile=settings.s3_profile))
    client = await stack.enter_async_context(
        session.create_client(
            "s3",
            region_name=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            config=AioConfig(**config_options(settings)),
        )
    )
    client.meta.events.register("after-call.s3", _count_call)
    gets = None
    if _presigning(settings, client):
        connect = presigned.connections(settings, presigned.ca_file(session), AsyncConnections)
        gets = presigned.AsyncPresignedGets(client, settings.s3_bucket, connect)
        stack.callback(gets.close)
    return AsyncS3Storage(client, settings.s3_bucket, settings.s3_prefix, gets)
