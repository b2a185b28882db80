"""The storage contract: ``open(key, hint)`` answers with a ``Reply``: the object's metadata, the
range already fetched with it, and a body that streams any range of that version; and
``listing(prefix, ...)``: what lies under a prefix, page by page, in S3's order.

Backends do not inherit from these Protocols; ``tests/storage/test_contract.py`` checks them. A
backend may wrap another one (``open`` in, ``open`` out): a cache or a router of several
backends implements the same Protocol as what it wraps.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import anyio.to_thread

from proxy.http.codec import ByteRange, Range

DEFAULT_MEDIA_TYPE = "application/octet-stream"

ChunkSize = int | Callable[[], int]
"""The most bytes one chunk may hold: fixed, or asked again before every read (a pacer that
follows the client, see ``proxy.responses.Pacer``)."""


def chunk_limit(chunk_size: ChunkSize) -> int:
    """The size limit for the next read."""
    return chunk_size() if callable(chunk_size) else chunk_size


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the HTTP layer needs to know about a stored object (RFC 9110 §8 names)."""

    key: str
    size: int
    media_type: str = DEFAULT_MEDIA_TYPE
    etag: str | None = None  # wire form, quoted: '"abc"' (strong) or 'W/"abc"' (weak)
    last_modified: datetime | None = None  # UTC, whole seconds
    # Response header fields stored with the object (a PUT's, PROXY_WRITES_KEEP_HEADERS; S3's
    # ContentDisposition and CacheControl), each a ``stored_field`` value, or None.
    content_disposition: str | None = None
    cache_control: str | None = None


MAX_STORED_FIELD = 1024  # characters of a stored header field's value
_FIELD_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: no CR, LF or other control


def stored_field(value: str | bytes | None) -> str | None:
    """A stored header field's value as a response may send it: printable ASCII, at most
    ``MAX_STORED_FIELD`` characters, surrounding spaces removed; None when it is missing, empty
    or no such value (then it is left out: a read never sends a broken header field). Checked
    where a write takes it and again where a read finds it (a file's xattr, S3's answer, the
    cache's index), since other tools write those too."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value or len(value) > MAX_STORED_FIELD or not _FIELD_VALUE.fullmatch(value):
        return None
    return value.strip() or None


@dataclass(frozen=True, slots=True)
class ReadHint:
    """What ``open`` should fetch along with the metadata, so that a remote backend serves the
    likely response in one round trip: nothing (``body`` False), the whole body (``range``
    None) or the one range the request names (a ``Range`` of one spec, as the client sent it)."""

    body: bool
    range: Range | None = None


METADATA_ONLY = ReadHint(body=False)
WHOLE = ReadHint(body=True)


class Body(Protocol):
    """An opened object's bytes. ``close()`` is always called exactly once by the response."""

    def iter_range(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        """The bytes of ``byte_range`` in chunks of at most ``chunk_size`` bytes.

        A backend that must call out to start the read (S3's ranged GET) does so in this call,
        so its failures come before the response starts; the iterator raises ``BodyTruncated``
        when the object ends before ``byte_range.stop``.
        """
        ...

    def close(self) -> None: ...


class AsyncBody(Protocol):
    """The async twin of ``Body``."""

    async def aiter_range(
        self, byte_range: ByteRange, chunk_size: ChunkSize
    ) -> AsyncIterator[bytes]:
        """Start the read (awaited: failures come before the response starts), then stream."""
        ...

    async def aclose(self) -> None: ...


B = TypeVar("B", covariant=True)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Reply(Generic[B]):
    """What every backend answers an open with, however the bytes came (a file, a presigned
    GET, botocore): the metadata, the body, and ``range``, the bytes the body already holds
    (fetched with the metadata: reading exactly them costs no further call), None if none.
    ``fields``: response header fields a layer adds (a cache's ``Cache-Status``)."""

    meta: ObjectMeta
    body: B
    range: ByteRange | None = None
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Folder:
    """A prefix that keys continue below, ending in ``/``: a folder in a listing (S3's
    ``CommonPrefixes``). It exists only while some object lies below it."""

    prefix: str


Listed = ObjectMeta | Folder
"""One entry of a listing: an object (its metadata, as ``open`` gives it, except that the media
type comes from the key: S3 lists no ContentType) or a folder."""

LIST_PAGE_SIZE = 1000  # entries per page: what one S3 ListObjectsV2 call returns at most


def listed_name(entry: Listed) -> str:
    """The key of an object, the prefix of a folder: what a listing is ordered by."""
    return entry.prefix if isinstance(entry, Folder) else entry.key


def folded(entries: Iterable[Listed], prefix: str) -> Iterator[Listed]:
    """``entries`` (in order, all below ``prefix``) as a listing of ``prefix`` without
    recursion: whatever continues past the next ``/`` becomes that one folder. Keys sharing a
    prefix are contiguous in order, so a folder's entries are adjacent and it is given once."""
    start = len(prefix)
    last = None
    for entry in entries:
        name = listed_name(entry)
        cut = name.find("/", start)
        if cut < 0:
            yield entry
            continue
        folder = name[: cut + 1]
        if folder != last:
            last = folder
            yield entry if folder == name else Folder(folder)


class Lister(Protocol):
    """What a blocking storage lists."""

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> Iterator[list[Listed]]:
        """Pages (at most ``LIST_PAGE_SIZE`` entries, never empty) of the objects whose keys
        start with ``prefix`` and, unless ``recursive``, a ``Folder`` for each group of them
        continuing past the next ``/`` instead; in the UTF-8 byte order of the names (S3's),
        only names after ``start_after``. A prefix with nothing below it gives no page.

        Each page is fetched when it is asked for (the first at the first ``next``), so a
        failure raises a ``StorageError`` from ``next``; entries are not checked against the
        key policy (the caller leaves out what ``proxy.storage.keys.listable`` refuses).
        """
        ...


class AsyncLister(Protocol):
    """The async twin of ``Lister``."""

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> AsyncIterator[list[Listed]]: ...


class Storage(Protocol):
    """A blocking backend, served from ``def`` path operations (FastAPI's threadpool)."""

    def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[Body]:
        """Open ``key`` (already checked by ``proxy.storage.keys.check_key``).

        ``hint`` says what the response will most likely read (see ``ReadHint``). Raises a
        ``StorageError`` subclass: ``ObjectNotFound`` for a missing key or a directory,
        ``InvalidKey``, ``AccessDenied``, ``BackendUnavailable``, ``BackendTimeout``.
        """
        ...

    def check(self) -> None:
        """Raise a ``StorageError`` unless the backend is reachable (readiness, cheap)."""
        ...

    def close(self) -> None:
        """Release the backend's resources at shutdown."""
        ...


class AsyncStorage(Protocol):
    """The async twin of ``Storage``, served from ``async def`` path operations."""

    async def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[AsyncBody]: ...

    async def acheck(self) -> None: ...

    async def aclose(self) -> None: ...


class VersionedStorage(Storage, Lister, Protocol):
    """A blocking storage that a cache can stack on: it names where a key lives, reads a known
    version without a call, and revalidates metadata (S3)."""

    def location(self, key: str) -> str: ...

    def pinned(self, key: str, meta: ObjectMeta) -> Body:
        """A body of the version ``meta`` describes; reads raise ``ObjectChanged`` once the
        storage holds another."""
        ...

    def revalidate(self, key: str, meta: ObjectMeta) -> ObjectMeta | None:
        """None while ``meta`` still describes ``key``; else the metadata of what is stored."""
        ...


# A read on the event loop from a blocking storage (``S3Storage.loop_read``): the chunks of a
# byte range, or None when the storage must read them itself (in a thread).
LoopRead = Callable[[ByteRange, ChunkSize], Awaitable[AsyncIterator[bytes] | None]]


class AsyncVersionedStorage(AsyncStorage, AsyncLister, Protocol):
    """The async twin of ``VersionedStorage``."""

    def location(self, key: str) -> str: ...

    def pinned(self, key: str, meta: ObjectMeta) -> AsyncBody: ...

    async def revalidate(self, key: str, meta: ObjectMeta) -> ObjectMeta | None: ...


@runtime_checkable
class ReadyChunks(Protocol):
    """What a blocking body's chunk iterator may also offer: ``ready()``, the next chunk when
    it can be had without waiting, None when it cannot, b"" at the end (chunks are never
    empty), so that it is read on the event loop instead of in a worker thread (``aiter_ready``).
    ``next()`` still gives every chunk."""

    def __iter__(self) -> Iterator[bytes]: ...

    def __next__(self) -> bytes: ...

    def ready(self) -> bytes | None: ...


class FileSpan:
    """``count`` bytes of an open file from ``offset``, not read: what a chunk stream that
    offers ``give_spans()`` yields in place of a chunk once asked, so that a zero-copy response
    sends them from the page cache to the socket (``proxy.responses``). ``file`` has
    ``fileno()``, ``cached(offset, count)`` and ``load(offset, count)`` (the local backend's
    file body); it stays open until the stream is asked for its next item."""

    __slots__ = ("count", "file", "offset")

    def __init__(self, file: Any, offset: int, count: int) -> None:
        self.file = file
        self.offset = offset
        self.count = count


async def aiter_ready(chunks: ReadyChunks) -> AsyncIterator[bytes]:
    """Blocking chunks read without blocking the event loop: what ``ready()`` has is read on the
    loop, the rest in a worker thread, one hop per chunk. The response streams a blocking body's
    chunks so (with 64 slow readers on the boto3 flavour, the hops' completions crowded the loop:
    ``/healthz`` p50 6-7 ms against ~1.5 ms), and ``AsyncLocalBody`` reads its file so."""
    while True:
        chunk = chunks.ready()
        if chunk is None:
            chunk = await anyio.to_thread.run_sync(_next_or_none, chunks)
        if not chunk:
            return  # the end: b"" from ready(), None from a thread's next()
        yield chunk


def _next_or_none(chunks: Iterator[T]) -> T | None:
    return next(chunks, None)  # StopIteration cannot cross into the awaiting coroutine


async def aiter_blocking(items: Iterator[T]) -> AsyncIterator[T]:
    """A blocking iterator's items, each ``next`` in a worker thread (one hop per item: give
    it pages, not lines); closed in a worker thread too when the iteration ends or is left."""
    try:
        while (item := await anyio.to_thread.run_sync(_next_or_none, items)) is not None:
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)
