"""S3 backends: ``S3Storage`` (boto3, blocking) and ``AsyncS3Storage`` (aiobotocore), twins.

A GET with one range or none is ONE GetObject whose answer carries the metadata; HEAD,
revalidations and multipart use HeadObject, then ranged GETs pinned to its ETag (IfMatch).
GetObject goes out as a presigned GET (``proxy.storage.presigned``) unless that is turned off;
botocore answers what it cannot. Either way the GET comes back as one ``S3Answer``.
A listing is ListObjectsV2 through botocore, one call per page, each only when it is asked for.

Deadlines: each exchange with S3 before a body streams (a GET with its presigned try and
botocore's retries, a HEAD, a page of a listing) has ``S3Options.deadline`` seconds in all:
``connections.deadline`` bounds the boto3 flavour's waits (see ``proxy.storage.s3client``),
``asyncio.timeout`` cancels the aiobotocore flavour's. Past it, ``BackendTimeout`` (504).

Resumes: a body that S3 ends early (a reset, a close before its length, a read timeout) is asked
again from the next byte, with If-Match its pinned ETag, at most ``S3Options.resume_attempts``
times per response, and streams on: the reader sees one body. An answer of another version (412,
or another ETag or range) or no answer ends it with ``BodyTruncated``, whose message names the
cause; never with bytes of two versions.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from proxy.http.codec import ByteRange, Range, quote_etag
from proxy.metrics import S3_RESUMES
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
from proxy.storage.connections import AsyncConnections, AsyncReply, deadline
from proxy.storage.errors import (
    BackendTimeout,
    BackendUnavailable,
    BodyTruncated,
    ObjectChanged,
    ObjectNotFound,
    RangeNotSatisfiable,
    StorageError,
)
from proxy.storage.mediatypes import media_type_for
from proxy.storage.notes import note_resume
from proxy.storage.options import S3Options
from proxy.storage.s3answer import S3Answer, cut_cause, map_client_errors, meta_from
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


# What a body's read raises when S3 ended it early: a reset or a close before its length
# (BodyTruncated), a read timeout (BackendTimeout), a connection error of aiohttp's (Unavailable).
_CUTS = (BodyTruncated, BackendTimeout, BackendUnavailable)
# What a resume's GET raises when the version read is gone: the body cannot go on.
_GONE = (ObjectChanged, ObjectNotFound, RangeNotSatisfiable)


def _cut(cause: str, resumes: int) -> BodyTruncated:
    """The error that ends a body S3 cut: one message naming the cause."""
    after = f" after {resumes} resume{'s' * (resumes != 1)}" if resumes else ""
    return BodyTruncated(f"the S3 body was cut: {cause}{after}")


class _S3Object:
    """What both body flavours hold: the storage, the object's key and the ETag that later
    reads are pinned to, what ``open`` fetched, the streams to release, and how many resumes
    the response has left (``S3Options.resume_attempts``, for all its ranges)."""

    __slots__ = ("_etag", "_prefetch", "_resumed", "_resumes", "_s3_key", "_storage", "_streams")

    def __init__(self, storage: Any, s3_key: str, etag: str | None, prefetch: _Prefetch) -> None:
        self._storage = storage
        self._s3_key = s3_key
        self._etag = etag
        self._prefetch = prefetch
        self._streams: list[Any] = [] if prefetch.stream is None else [prefetch.stream]
        self._resumes: int = storage.resume_attempts
        self._resumed = 0

    def _attempt(self, cause: str, error: Exception) -> None:
        """Take one resume for the rest of a body cut by ``error``: counted, noted in the
        access log; raise the cut when none is left or the version cannot be pinned."""
        if self._resumes <= 0 or self._etag is None:
            raise _cut(cause, self._resumed) from error
        self._resumes -= 1
        self._resumed += 1
        note_resume()

    def _failed(self, error: StorageError) -> str:
        """A resume's GET failed: raise the cut when the version is gone, else the cause."""
        if isinstance(error, _GONE):
            S3_RESUMES.labels("changed").inc()
            raise _cut("object changed", self._resumed) from error
        S3_RESUMES.labels("failed").inc()
        return cut_cause(error)

    def _continues(self, answer: S3Answer, rest: ByteRange) -> Any:
        """The stream of a resume's answer if it holds exactly ``rest`` of the pinned version
        (If-Match is not honoured everywhere), else raise the cut (closing the answer)."""
        if answer.byte_range != rest or quote_etag(answer.etag) != self._etag:
            _release(answer.stream)
            S3_RESUMES.labels("changed").inc()
            raise _cut("object changed", self._resumed)
        S3_RESUMES.labels("resumed").inc()
        self._streams.append(answer.stream)
        return answer.stream

    def _drop(self, stream: Any) -> None:
        """Forget a cut stream (its connection is closed by the caller)."""
        if stream in self._streams:
            self._streams.remove(stream)


class S3Body(_S3Object):
    """An object on S3 read with boto3 (blocking: called from FastAPI's threadpool)."""

    __slots__ = ()

    def iter_range(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        stream = self._prefetch.take(byte_range)
        if stream is None:
            range_value = Range.of(byte_range).to_header()
            stream = self._storage.get(self._s3_key, range_value, self._etag).stream
            self._streams.append(stream)
        return _Chunks(stream, byte_range.length, chunk_size, partial(self._resume, byte_range))

    def _resume(self, byte_range: ByteRange, remaining: int, stream: Any, error: Exception) -> Any:
        """A stream of the last ``remaining`` bytes of ``byte_range``, whose ``stream`` was cut
        by ``error``; raises ``BodyTruncated`` when the body cannot go on."""
        self._drop(stream)
        _release(stream)
        rest = ByteRange(byte_range.stop - remaining, byte_range.stop)
        cause = cut_cause(error)
        while True:  # bounded: each turn takes one of the response's resumes
            self._attempt(cause, error)
            try:
                answer = self._storage.get(self._s3_key, Range.of(rest).to_header(), self._etag)
            except StorageError as exc:
                cause, error = self._failed(exc), exc
                continue
            return self._continues(answer, rest)

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
        return _achunks(stream, byte_range.length, chunk_size, partial(self._aresume, byte_range))

    async def _aresume(
        self, byte_range: ByteRange, remaining: int, stream: Any, error: Exception
    ) -> Any:
        """See ``S3Body._resume``."""
        self._drop(stream)
        stream.close()
        rest = ByteRange(byte_range.stop - remaining, byte_range.stop)
        cause = cut_cause(error)
        while True:  # bounded: each turn takes one of the response's resumes
            self._attempt(cause, error)
            try:
                answer = await self._storage.aget(
                    self._s3_key, Range.of(rest).to_header(), self._etag
                )
            except StorageError as exc:
                cause, error = self._failed(exc), exc
                continue
            return self._continues(answer, rest)

    async def aclose(self) -> None:
        # Both closes are synchronous (AsyncReply's; aiohttp's, behind aiobotocore's
        # StreamingBody, releases the connector's slot at once).
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()


# How a cut body goes on: (bytes still to come, the cut stream, what cut it) -> a stream of
# them; raises BodyTruncated when it cannot.
Resume = Callable[[int, Any, Exception], Any]
AsyncResume = Callable[[int, Any, Exception], Awaitable[Any]]


class _Chunks:
    """Exactly ``length`` bytes of ``stream`` in chunks of at most ``chunk_size``; never reads
    past them. A ``ReadyChunks``: a presigned GET's reply reads on the event loop what its
    socket holds already (``connections.Reply.read_ready``); a StreamingBody always takes a
    thread. A stream S3 cuts goes on from ``resume`` (in a thread, never on the event loop:
    ``ready`` leaves it to ``next``); without one, the cut is raised."""

    __slots__ = ("_chunk_size", "_cut", "_read_ready", "_remaining", "_resume", "_stream")

    def __init__(
        self, stream: Any, length: int, chunk_size: ChunkSize, resume: Resume | None = None
    ) -> None:
        self._stream = stream
        self._remaining = length
        self._chunk_size = chunk_size
        self._read_ready = getattr(stream, "read_ready", None)
        self._resume = resume
        self._cut: Exception | None = None  # what ended the stream, not resumed yet

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        while self._remaining > 0:  # bounded: a resume raises once the response has none left
            if self._cut is None:
                try:
                    with map_client_errors():
                        return self._took(self._stream.read(self._size()))
                except _CUTS as exc:
                    self._cut = exc
            self._go_on()
        raise StopIteration

    def ready(self) -> bytes | None:
        if self._remaining <= 0:
            return b""
        if self._read_ready is None or self._cut is not None:
            return None
        try:
            with map_client_errors():
                chunk = self._read_ready(self._size())
            return None if chunk is None else self._took(chunk)
        except _CUTS as exc:
            self._cut = exc  # resumed by next(), in a thread
            return None

    def _go_on(self) -> None:
        cut, self._cut = self._cut, None
        assert cut is not None
        if self._resume is None:
            raise cut
        self._stream = self._resume(self._remaining, self._stream, cut)
        self._read_ready = getattr(self._stream, "read_ready", None)

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


def _reader(stream: Any) -> Callable[[int], Awaitable[bytes]]:
    # A presigned GET's reply reads whole chunks from its socket; aiohttp's (behind
    # aiobotocore's StreamingBody) are gathered.
    return stream.read if isinstance(stream, AsyncReply) else partial(_aread, stream)


async def _achunks(
    stream: Any, length: int, chunk_size: ChunkSize, resume: AsyncResume | None = None
) -> AsyncIterator[bytes]:
    """The async twin of ``_Chunks``."""
    read = _reader(stream)
    remaining = length
    while remaining > 0:  # bounded: a resume raises once the response has none left
        try:
            with map_client_errors():
                chunk = await read(min(chunk_limit(chunk_size), remaining))
            if not chunk:
                raise BodyTruncated()
        except _CUTS as exc:
            if resume is None:
                raise
            stream = await resume(remaining, stream, exc)
            read = _reader(stream)
            continue
        remaining -= len(chunk)
        yield chunk


async def _achunks_closing(
    body: AsyncS3Body, byte_range: ByteRange, chunk_size: ChunkSize
) -> AsyncIterator[bytes]:
    """``body``'s chunks of ``byte_range``, closing the body when they end or are left."""
    try:
        async for chunk in await body.aiter_range(byte_range, chunk_size):
            yield chunk
    finally:
        await body.aclose()


class _Bucket:
    """What both storage flavours hold: one long-lived client, the bucket, the key prefix, the
    presigned GETs (None when turned off), each exchange's deadline in seconds and the resumes
    a response may make (``S3Options``)."""

    __slots__ = ("_bucket", "_client", "_deadline", "_prefix", "_presigned", "resume_attempts")

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        presigned: Any = None,
        deadline: float = 60.0,
        resume_attempts: int = 2,
    ) -> None:
        self._client = client
        self._bucket = bucket
        prefix = prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        self._presigned = presigned
        self._deadline = deadline
        self.resume_attempts = resume_attempts

    @property
    def client(self) -> Any:
        """The botocore client, for instrumentation (its event hooks)."""
        return self._client

    @property
    def bucket(self) -> str:
        """The bucket, for the writer (``proxy.storage.s3write``)."""
        return self._bucket

    @property
    def prefix(self) -> str:
        """The key prefix (``""`` or ending in ``/``), for the writer."""
        return self._prefix

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

    __slots__ = ("_loop_gets", "_read_timeout")
    page_size = LIST_PAGE_SIZE  # keys per ListObjectsV2 after the first: parsed in a thread

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        presigned: Any = None,
        loop_gets: presigned.AsyncPresignedGets | None = None,
        deadline: float = 60.0,
        resume_attempts: int = 2,
        read_timeout: float = 30.0,
    ) -> None:
        super().__init__(client, bucket, prefix, presigned, deadline, resume_attempts)
        self._loop_gets = loop_gets
        self._read_timeout = read_timeout

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

        loop = _LoopGets(gets, url, self._deadline, self.resume_attempts)

        async def read(byte_range: ByteRange, chunk_size: ChunkSize) -> AsyncIterator[bytes] | None:
            range_value = Range.of(byte_range).to_header()
            try:
                answer = await loop.fetch(s3_key, range_value, meta.etag)
            except BackendUnavailable:
                return None
            body = AsyncS3Body(loop, s3_key, meta.etag, _Prefetch(answer.byte_range, answer.stream))
            return _achunks_closing(body, byte_range, chunk_size)

        return read

    def get(self, s3_key: str, range_value: str | None, etag: str | None = None) -> S3Answer:
        """GetObject: presigned when it can, else (or when that cannot answer) botocore's;
        within one deadline."""
        with deadline(self._deadline), map_client_errors():
            if self._presigned is not None:
                answer: S3Answer | None = self._presigned.get(s3_key, range_value, etag)
                if answer is not None:
                    return answer
            response = self._client.get_object(**_get_args(self._bucket, s3_key, range_value, etag))
        _reset_read_timeout(response.get("Body"), self._read_timeout)
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
        with deadline(self._deadline), map_client_errors():
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
        with deadline(self._deadline), map_client_errors():
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
            with deadline(self._deadline), map_client_errors():
                response = self._client.list_objects_v2(**args)
            page, token = _listed_page(response, len(self._prefix))
            if page:
                yield page
            if token is None:
                return

    def check(self) -> None:
        with deadline(self._deadline), map_client_errors():
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
        with map_client_errors():
            async with asyncio.timeout(self._deadline):
                if self._presigned is not None:
                    answer: S3Answer | None = await self._presigned.get(s3_key, range_value, etag)
                    if answer is not None:
                        return answer
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
            async with asyncio.timeout(self._deadline):
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
                async with asyncio.timeout(self._deadline):
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
                async with asyncio.timeout(self._deadline):
                    response = await self._client.list_objects_v2(**args)
            page, token = _listed_page(response, len(self._prefix))
            if page:
                yield page
            if token is None:
                return

    async def acheck(self) -> None:
        with map_client_errors():
            async with asyncio.timeout(self._deadline):
                await self._client.head_bucket(Bucket=self._bucket)

    async def aclose(self) -> None:
        pass  # the clients are closed by the lifespan's exit stack


def _presigning(options: S3Options, client: Any) -> bool:
    return options.presigned_gets and presigned.usable(client.meta.endpoint_url)


def open_s3(options: S3Options) -> S3Storage:
    """The boto3 flavour: one client per worker process, closed by ``S3Storage.close``."""
    client, session = boto3_client(options)
    gets = loop_gets = None
    if _presigning(options, client):
        cafile = presigned.ca_file(session)
        connect = presigned.connections(options, cafile)
        gets = presigned.PresignedGets(client, options.bucket, connect)
        loop_gets = gets.loop_twin(presigned.connections(options, cafile, AsyncConnections))
    return S3Storage(
        client,
        options.bucket,
        options.prefix,
        gets,
        loop_gets,
        deadline=options.deadline,
        resume_attempts=options.resume_attempts,
        read_timeout=options.read_timeout,
    )


async def aopen_s3(options: S3Options, stack: AsyncExitStack) -> AsyncS3Storage:
    """The aiobotocore flavour: the client lives as long as ``stack`` (the app's lifespan)."""
    client, session = await aiobotocore_client(options, stack)
    gets = None
    if _presigning(options, client):
        connect = presigned.connections(options, presigned.ca_file(session), AsyncConnections)
        gets = presigned.AsyncPresignedGets(client, options.bucket, connect)
        stack.callback(gets.close)
    return AsyncS3Storage(
        client, options.bucket, options.prefix, gets, options.deadline, options.resume_attempts
    )


class _LoopGets:
    """What a body read on the event loop for the boto3 flavour's slice cache asks its GETs of
    (``loop_read``): one presigned URL fetched over the loop's connections, each GET within the
    deadline; ``BackendUnavailable`` when only botocore could answer (in a thread)."""

    __slots__ = ("_deadline", "_gets", "_url", "resume_attempts")

    def __init__(
        self, gets: presigned.AsyncPresignedGets, url: str, seconds: float, resume_attempts: int
    ) -> None:
        self._gets = gets
        self._url = url
        self._deadline = seconds
        self.resume_attempts = resume_attempts

    async def fetch(self, s3_key: str, range_value: str | None, etag: str | None) -> S3Answer:
        with map_client_errors():
            async with asyncio.timeout(self._deadline):
                answer = await self._gets.fetch(s3_key, self._url, range_value, etag)
        if answer is None:
            raise BackendUnavailable()
        return answer

    aget = fetch  # what an AsyncS3Body's resumes call


def _reset_read_timeout(body: Any, read_timeout: float) -> None:
    """Give a botocore GetObject's body back the read timeout its attempt had cut to the time
    left before the deadline (``proxy.storage.s3client``): its reads wait ``read_timeout`` each.
    The socket is urllib3's connection's, or (a reply that closes its connection) the one the
    http.client response reads from."""
    raw = getattr(body, "_raw_stream", None)
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is None:  # http.client response -> BufferedReader -> SocketIO -> socket
        reader = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(read_timeout)
