"""S3 backends: ``S3Storage`` (boto3, blocking) and ``AsyncS3Storage`` (aiobotocore), twins.

A GET with one range or none is ONE GetObject whose answer carries the metadata; HEAD,
revalidations and multipart use HeadObject, then ranged GETs pinned to its ETag (IfMatch).
GetObject goes out as a presigned GET (``proxy.storage.presigned``) unless that is turned off;
botocore answers what it cannot. Either way the GET comes back as one ``S3Answer``.
A listing is ListObjectsV2 through botocore, one call per page, each only when it is asked for.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from proxy.http.codec import ByteRange, Range
from proxy.storage import presigned
from proxy.storage.base import (
    LIST_PAGE_SIZE,
    METADATA_ONLY,
    ChunkSize,
    Folder,
    Listed,
    LoopRead,
    ObjectMeta,
    ReadHint,
    Reply,
    chunk_limit,
    listed_name,
)
from proxy.storage.connections import AsyncConnections, AsyncReply
from proxy.storage.errors import BodyTruncated, RangeNotSatisfiable
from proxy.storage.mediatypes import media_type_for
from proxy.storage.options import S3Options
from proxy.storage.s3answer import S3Answer, map_client_errors, meta_from
from proxy.storage.s3client import aiobotocore_client, boto3_client, config_options

__all__ = [
    "AsyncS3Storage",
    "RangeNotSatisfiable",
    "S3Storage",
    "aopen_s3",
    "config_options",
    "open_s3",
]


def _get_args(
    bucket: str, s3_key: str, range_value: str | None, etag: str | None
) -> dict[str, str]:
    args = {"Bucket": bucket, "Key": s3_key}
    if range_value:
        args["Range"] = range_value
    if etag:
        args["IfMatch"] = etag  # later calls of one response must read the same version
    return args


def _range_value(hint: ReadHint) -> str | None:
    """The range ``open`` asks S3 for: the client's, as it came (never more bytes)."""
    return None if hint.range is None else hint.range.to_header()


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

    __slots__ = ("byte_range", "stream")

    def __init__(self, byte_range: ByteRange | None = None, stream: Any = None) -> None:
        self.byte_range = byte_range
        self.stream = stream

    def take(self, byte_range: ByteRange) -> Any:
        """The prefetched stream if it holds exactly ``byte_range`` (once), else None."""
        if self.stream is None or self.byte_range != byte_range:
            return None
        stream, self.stream = self.stream, None
        return stream


class _S3Object:
    """What both body flavours hold: the storage, the object's key and the ETag that later
    reads are pinned to, what ``open`` fetched, the streams to release."""

    __slots__ = ("_etag", "_prefetch", "_s3_key", "_storage", "_streams")

    def __init__(self, storage: Any, s3_key: str, etag: str | None, prefetch: _Prefetch) -> None:
        self._storage = storage
        self._s3_key = s3_key
        self._etag = etag
        self._prefetch = prefetch
        self._streams: list[Any] = [] if prefetch.stream is None else [prefetch.stream]


class S3Body(_S3Object):
    """An object on S3 read with boto3 (blocking: called from FastAPI's threadpool)."""

    __slots__ = ()

    def iter_range(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        stream = self._prefetch.take(byte_range)
        if stream is None:
            range_value = Range.of(byte_range).to_header()
            stream = self._storage.get(self._s3_key, range_value, self._etag).stream
            self._streams.append(stream)
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
            range_value = Range.of(byte_range).to_header()
            stream = (await self._storage.aget(self._s3_key, range_value, self._etag)).stream
            self._streams.append(stream)
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
    socket holds already (``connections.Reply.read_ready``); a StreamingBody always takes a
    thread."""

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


async def _achunks_closing(stream: Any, length: int, chunk_size: ChunkSize) -> AsyncIterator[bytes]:
    """``_achunks``, closing the stream when they end or are left."""
    try:
        async for chunk in _achunks(stream, length, chunk_size):
            yield chunk
    finally:
        stream.close()


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

    def location(self, key: str) -> str:
        """Where ``key`` is stored: its ``s3://`` URL (a cache's name for the object)."""
        return f"s3://{self._bucket}/{self._s3_key(key)}"

    page_size: int  # keys per ListObjectsV2 after the first (each flavour's)

    def _list_args(
        self, prefix: str, recursive: bool, start_after: str, token: str | None
    ) -> dict[str, Any]:
        args: dict[str, Any] = {
            "Bucket": self._bucket,
            "Prefix": self._s3_key(prefix),
            "MaxKeys": self.page_size if token is not None else FIRST_PAGE_SIZE,
        }
        if not recursive:
            args["Delimiter"] = "/"
        if token is not None:
            args["ContinuationToken"] = token
        elif start_after:
            args["StartAfter"] = self._s3_key(start_after)
        return args

    def _head_args(self, key: str, meta: ObjectMeta) -> dict[str, str]:
        args = {"Bucket": self._bucket, "Key": self._s3_key(key)}
        if meta.etag:
            args["IfNoneMatch"] = meta.etag
        return args


# The first ListObjectsV2 of a listing asks for fewer keys: its answer comes back (and is parsed)
# sooner, so the first line leaves sooner; the later ones ask for S3's most per call (boto3) or
# a quarter of it (aiobotocore, which parses each answer on the event loop: a 1,000-key page held
# every other request for ~20 ms; see ``AsyncS3Storage.page_size``).
FIRST_PAGE_SIZE = 100
ASYNC_PAGE_SIZE = 250


def _listed_time(value: str | datetime) -> datetime:
    """A listing's LastModified: RFC 3339 text (the tuned sessions parse no timestamps)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).replace(microsecond=0)


def _name(entry: object) -> str:
    return listed_name(entry)  # type: ignore[arg-type]  # heapq.merge's key takes any object


def _listed_page(response: Mapping[str, Any], strip: int) -> tuple[list[Listed], str | None]:
    """A ListObjectsV2 answer as a page of entries (keys without the bucket's prefix, objects
    and folders merged in key order) and the token of the next page (None: the last)."""
    objects = [
        ObjectMeta(
            key=(key := item["Key"][strip:]),
            size=item["Size"],
            media_type=media_type_for(key),
            etag=item.get("ETag"),
            last_modified=_listed_time(item["LastModified"]),
        )
        for item in response.get("Contents", ())
    ]
    folders = [Folder(item["Prefix"][strip:]) for item in response.get("CommonPrefixes", ())]
    page: list[Listed] = list(heapq.merge(objects, folders, key=_name)) if folders else [*objects]
    token = response.get("NextContinuationToken") if response.get("IsTruncated") else None
    return page, token


def _not_modified(exc: ClientError) -> bool:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304 or str(
        exc.response.get("Error", {}).get("Code")
    ) in ("304", "NotModified")


def _prefetched(key: str, answer: S3Answer) -> tuple[ObjectMeta, _Prefetch]:
    return meta_from(key, answer), _Prefetch(answer.byte_range, answer.stream)


class S3Storage(_Bucket):
    """A bucket read with a boto3 client (thread-safe; one per worker process)."""

    __slots__ = ("_loop_gets",)
    page_size = LIST_PAGE_SIZE  # keys per ListObjectsV2 after the first: parsed in a thread

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        presigned: Any = None,
        loop_gets: presigned.AsyncPresignedGets | None = None,
    ) -> None:
        super().__init__(client, bucket, prefix, presigned)
        self._loop_gets = loop_gets

    def loop_read(self, key: str, meta: ObjectMeta) -> LoopRead | None:
        """A read of the version ``meta`` describes that runs on the event loop (the slice
        cache's fills: no thread per fill), presigned now, in the calling thread; None when
        GETs are not presigned. It answers None when the presigned GET cannot give the bytes:
        then ``pinned`` reads them, in a thread, where botocore decides."""
        gets = self._loop_gets
        if gets is None or self._presigned is None:
            return None
        s3_key = self._s3_key(key)
        url = self._presigned.url(s3_key)
        if url is None:
            return None

        async def read(byte_range: ByteRange, chunk_size: ChunkSize) -> AsyncIterator[bytes] | None:
            range_value = Range.of(byte_range).to_header()
            answer = await gets.fetch(s3_key, url, range_value, meta.etag)
            if answer is None:
                return None
            return _achunks_closing(answer.stream, byte_range.length, chunk_size)

        return read

    def get(self, s3_key: str, range_value: str | None, etag: str | None = None) -> S3Answer:
        """GetObject: presigned when it can, else (or when that cannot answer) botocore's."""
        if self._presigned is not None:
            answer: S3Answer | None = self._presigned.get(s3_key, range_value, etag)
            if answer is not None:
                return answer
        with map_client_errors():
            response = self._client.get_object(**_get_args(self._bucket, s3_key, range_value, etag))
        return S3Answer.from_botocore(response)

    def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[S3Body]:
        s3_key = self._s3_key(key)
        if hint.body:
            try:
                meta, prefetch = _prefetched(key, self.get(s3_key, _range_value(hint)))
            except RangeNotSatisfiable:
                pass  # the plan answers 416 (or an empty 200) from HeadObject's metadata
            else:
                body = S3Body(self, s3_key, meta.etag, prefetch)
                return Reply(meta, body, prefetch.byte_range)
        with map_client_errors():
            response = self._client.head_object(Bucket=self._bucket, Key=s3_key)
        meta = meta_from(key, S3Answer.from_botocore(response))
        return Reply(meta, S3Body(self, s3_key, meta.etag, _Prefetch()))

    def pinned(self, key: str, meta: ObjectMeta) -> S3Body:
        """A body of the version ``meta`` describes, without a call: its reads fail with
        ``ObjectChanged`` once S3 holds another one."""
        return S3Body(self, self._s3_key(key), meta.etag, _Prefetch())

    def revalidate(self, key: str, meta: ObjectMeta) -> ObjectMeta | None:
        """HeadObject with If-None-Match: None while ``meta`` still describes ``key``, else the
        metadata of the version S3 holds now."""
        with map_client_errors():
            try:
                response = self._client.head_object(**self._head_args(key, meta))
            except ClientError as exc:
                if _not_modified(exc):
                    return None
                raise
        return meta_from(key, S3Answer.from_botocore(response))

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> Iterator[list[Listed]]:
        """ListObjectsV2 pages, following the continuation tokens to the end."""
        token = None
        while True:
            args = self._list_args(prefix, recursive, start_after, token)
            with map_client_errors():
                response = self._client.list_objects_v2(**args)
            page, token = _listed_page(response, len(self._prefix))
            if page:
                yield page
            if token is None:
                return

    def check(self) -> None:
        with map_client_errors():
            self._client.head_bucket(Bucket=self._bucket)

    def close(self) -> None:
        if self._presigned is not None:
            self._presigned.close()
        if self._loop_gets is not None:
            self._loop_gets.close()
        self._client.close()


class AsyncS3Storage(_Bucket):
    """The async twin of ``S3Storage`` (an aiobotocore client entered in the app's lifespan)."""

    __slots__ = ()
    # aiobotocore parses each answer on the event loop. SeaweedFS, 20,000 keys, /healthz every
    # 10 ms while listing, 4 listings each, alternated: p50 21.8 ms, p99 56.9 ms with pages of
    # 1,000; 2.6 and 27.9 ms with 250, at 19,300 keys/s instead of 23,200.
    page_size = ASYNC_PAGE_SIZE

    async def aget(self, s3_key: str, range_value: str | None, etag: str | None = None) -> S3Answer:
        if self._presigned is not None:
            answer: S3Answer | None = await self._presigned.get(s3_key, range_value, etag)
            if answer is not None:
                return answer
        with map_client_errors():
            response = await self._client.get_object(
                **_get_args(self._bucket, s3_key, range_value, etag)
            )
        return S3Answer.from_botocore(response)

    async def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[AsyncS3Body]:
        s3_key = self._s3_key(key)
        if hint.body:
            try:
                meta, prefetch = _prefetched(key, await self.aget(s3_key, _range_value(hint)))
            except RangeNotSatisfiable:
                pass  # the plan answers 416 (or an empty 200) from HeadObject's metadata
            else:
                body = AsyncS3Body(self, s3_key, meta.etag, prefetch)
                return Reply(meta, body, prefetch.byte_range)
        with map_client_errors():
            response = await self._client.head_object(Bucket=self._bucket, Key=s3_key)
        meta = meta_from(key, S3Answer.from_botocore(response))
        return Reply(meta, AsyncS3Body(self, s3_key, meta.etag, _Prefetch()))

    def pinned(self, key: str, meta: ObjectMeta) -> AsyncS3Body:
        """See ``S3Storage.pinned``."""
        return AsyncS3Body(self, self._s3_key(key), meta.etag, _Prefetch())

    async def revalidate(self, key: str, meta: ObjectMeta) -> ObjectMeta | None:
        """See ``S3Storage.revalidate``."""
        with map_client_errors():
            try:
                response = await self._client.head_object(**self._head_args(key, meta))
            except ClientError as exc:
                if _not_modified(exc):
                    return None
                raise
        return meta_from(key, S3Answer.from_botocore(response))

    async def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> AsyncIterator[list[Listed]]:
        """See ``S3Storage.listing``."""
        token = None
        while True:
            args = self._list_args(prefix, recursive, start_after, token)
            with map_client_errors():
                response = await self._client.list_objects_v2(**args)
            page, token = _listed_page(response, len(self._prefix))
            if page:
                yield page
            if token is None:
                return

    async def acheck(self) -> None:
        with map_client_errors():
            await self._client.head_bucket(Bucket=self._bucket)

    async def aclose(self) -> None:
        pass  # the clients are closed by the lifespan's exit stack


def _presigning(options: S3Options, client: Any) -> bool:
    return options.presigned_gets and presigned.usable(client.meta.endpoint_url)


def open_s3(options: S3Options) -> S3Storage:
    """The boto3 flavour: one client per worker process, closed by ``S3Storage.close``."""
    client, session = boto3_client(options)
    if not _presigning(options, client):
        return S3Storage(client, options.bucket, options.prefix)
    cafile = presigned.ca_file(session)
    gets = presigned.PresignedGets(client, options.bucket, presigned.connections(options, cafile))
    loop_gets = gets.loop_twin(presigned.connections(options, cafile, AsyncConnections))
    return S3Storage(client, options.bucket, options.prefix, gets, loop_gets)


async def aopen_s3(options: S3Options, stack: AsyncExitStack) -> AsyncS3Storage:
    """The aiobotocore flavour: the client lives as long as ``stack`` (the app's lifespan)."""
    client, session = await aiobotocore_client(options, stack)
    gets = None
    if _presigning(options, client):
        connect = presigned.connections(options, presigned.ca_file(session), AsyncConnections)
        gets = presigned.AsyncPresignedGets(client, options.bucket, connect)
        stack.callback(gets.close)
    return AsyncS3Storage(client, options.bucket, options.prefix, gets)
