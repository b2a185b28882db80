"""A read-through cache of object slices on local disk, in front of the S3 backend: ``SliceCache``
(blocking) and ``AsyncSliceCache``, each wrapping the S3 storage of its flavour (``open`` in,
``open`` out).

Metadata: an object's metadata is kept with the time S3 last confirmed it; within
``validity`` seconds it answers alone (HEAD, 304s, 412s and 416s cost no S3 call), after that
a HeadObject with If-None-Match revalidates it. Bytes: the object is cut into slices of
``slice_size`` aligned bytes, kept under (location, ETag, slice size, index): two versions never
mix. A response reads each slice it covers from disk, or from the fill bringing it
(``proxy.storage.cachefill``: one S3 read per run of missing slices, shared by every request
that needs them), or, when the cache cannot help (a fault), straight from S3. Where the
response sends files itself (zero-copy), a slice on disk is not read at all: it goes as a
``FileSpan`` of its file (``give_spans``).

Every reply says what the cache did in ``Cache-Status`` (RFC 9211), judged at open from the
metadata and the first and last slices the likely response covers.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator
from typing import Any, cast

import anyio.to_thread

from proxy.http.codec import ByteRange
from proxy.metrics import CACHE_BYTES, CACHE_SLICES
from proxy.storage.base import (
    METADATA_ONLY,
    AsyncBody,
    AsyncVersionedStorage,
    Body,
    ChunkSize,
    FileSpan,
    Listed,
    LoopRead,
    ObjectMeta,
    ReadHint,
    Reply,
    VersionedStorage,
    aiter_blocking,
    aiter_ready,
    chunk_limit,
)
from proxy.storage.cachefill import GONE, Fill, Fills, arun_fill, run_fill
from proxy.storage.cachestore import HEADER_SIZE, SliceStore, Version
from proxy.storage.errors import ObjectChanged, ObjectNotFound
from proxy.storage.local import _FileBody, _FileChunks, _read_cached, _read_step
from proxy.storage.options import CacheOptions

CACHE_NAME = "media-proxy"
# Label children looked up once: ``labels()`` per chunk cost a measurable share of a hit.
_BYTES = {source: CACHE_BYTES.labels(source) for source in ("cache", "s3")}
_HITS, _COALESCED = CACHE_SLICES.labels("hit"), CACHE_SLICES.labels("coalesced")
RUN_SLICES = 16  # the most slices one fill asks S3 for (a new fill continues a longer read)
FILL_CHUNK = 256 * 1024  # the fill's reads from S3


def _status(detail: str) -> tuple[tuple[str, str], ...]:
    return (("cache-status", f"{CACHE_NAME}; {detail}"),)


class _Cache:
    """What both flavours hold: the store, the fills in progress, the validity."""

    def __init__(self, store: SliceStore) -> None:
        self.store = store
        self.fills = Fills()
        self.slice_size = store.slice_size
        self.validity = store.options.validity

    def fresh(self, location: str) -> tuple[ObjectMeta | None, ObjectMeta | None]:
        """(meta to use as it is, meta to revalidate): one of them, or neither."""
        known = self.store.meta(location)
        if known is None:
            return None, None
        meta, checked = known
        if time.time() - checked < self.validity:
            return meta, None
        return None, meta

    def slices_status(self, version: Version, hint: ReadHint) -> tuple[str, frozenset[int]]:
        """``hit`` when the first and last slices of the hinted body are on disk, else the
        forward that fills them; and which of those two are not on disk (the read starts a
        fill for them without asking the index again)."""
        if not hint.body or version.size == 0:
            return "hit", frozenset()
        if hint.range is None:
            byte_range: ByteRange | None = ByteRange(0, version.size)
        else:
            byte_range = hint.range.specs[0].resolve(version.size)
        if byte_range is None:
            return "hit", frozenset()
        first, last = byte_range.start // self.slice_size, (byte_range.stop - 1) // self.slice_size
        ends = {first, last}
        fills, store = self.fills, self.store
        missing = frozenset(
            i for i in ends if not fills.holds(version, i) and not store.cached(version, i)
        )
        if not missing:
            return "hit", missing
        return ("fwd=miss; stored" if missing == ends else "fwd=partial; stored"), missing

    def missing_run(self, version: Version, first: int, last: int) -> range:
        """The slices from ``first`` on that are not on disk, up to ``last`` and RUN_SLICES."""
        stop = first + 1
        while stop <= min(last, first + RUN_SLICES - 1) and not self.store.cached(version, stop):
            stop += 1
        return range(first, stop)

    def version(self, location: str, meta: ObjectMeta) -> Version | None:
        return None if meta.etag is None else Version(location, meta.etag, meta.size)

    def confirmed(self, location: str, meta: ObjectMeta, forward: str) -> tuple[ObjectMeta, str]:
        """Keep ``meta`` as S3 confirmed it just now; returns it with what was forwarded."""
        self.store.put_meta(location, meta, time.time())
        return meta, forward

    def revalidated(
        self, location: str, stale: ObjectMeta, fresh: ObjectMeta | None
    ) -> tuple[ObjectMeta, str]:
        """A revalidation's outcome: ``fresh`` None means ``stale`` still holds (304)."""
        if fresh is None:
            return self.confirmed(location, stale, "fwd=stale; fwd-status=304")
        return self.confirmed(location, fresh, "fwd=stale; fwd-status=200")

    def status(
        self, version: Version, hint: ReadHint, forward: str
    ) -> tuple[tuple[tuple[str, str], ...], frozenset[int]]:
        """``Cache-Status`` (what was forwarded for the metadata, and what the slices need),
        and the slices found missing."""
        slices, missing = self.slices_status(version, hint)
        if not forward:
            return _status(slices), missing
        return _status(forward if slices == "hit" else forward + "; stored"), missing

    def fill_span(self, fill: Fill) -> ByteRange:
        """The bytes of the fill's slices: what its S3 read asks for."""
        stop = min((fill.last + 1) * self.slice_size, fill.version.size)
        return ByteRange(fill.first * self.slice_size, stop)


class SliceCache(_Cache):
    """The blocking flavour, in front of ``S3Storage``. With the server's event loop
    (``loop``), its fills run there when the storage can read on it (``loop_read``: presigned
    GETs over the proxy's async connections), else each in a thread of its own."""

    def __init__(
        self,
        inner: VersionedStorage,
        store: SliceStore,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(store)
        self.inner = inner
        self.loop = loop
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[Body]:
        if not self.store.usable():
            reply = self.inner.open(key, hint)
            return Reply(reply.meta, reply.body, reply.range, _status("fwd=miss"))
        location = self.inner.location(key)
        meta, stale = self.fresh(location)
        forward = ""
        if stale is not None:
            try:
                meta, forward = self.revalidated(location, stale, self.inner.revalidate(key, stale))
            except ObjectNotFound:
                self.store.forget_meta(location)
                raise
        elif meta is None:
            reply = self.inner.open(key, METADATA_ONLY)
            reply.body.close()
            meta, forward = self.confirmed(location, reply.meta, "fwd=miss")
        version = self.version(location, meta)
        if version is None:  # no ETag to key slices with: not cached
            return Reply(meta, self.inner.pinned(key, meta), None, _status("fwd=miss"))
        fields, missing = self.status(version, hint, forward)
        return Reply(meta, CachedBody(self, key, meta, version, missing), None, fields)

    def start_fill(self, key: str, meta: ObjectMeta, version: Version, run: range) -> Fill | None:
        """A fill of ``run`` in a thread of its own, attached to (or the fill that started
        meanwhile); None when a fill stored the first slice meanwhile."""
        fill, new = self.fills.start(version, run, self.store)
        if fill is None or not new:
            return fill
        span = self.fill_span(fill)
        loop_read = getattr(self.inner, "loop_read", None)
        read = None if self.loop is None or loop_read is None else loop_read(key, meta)
        if read is not None:
            self._fill_on_loop(fill, key, meta, read, span)
            return fill
        body = self.inner.pinned(key, meta)

        def fill_thread() -> None:
            try:
                run_fill(fill, self.fills, lambda: body.iter_range(span, FILL_CHUNK))
            finally:
                body.close()

        threading.Thread(target=fill_thread, name="cache-fill", daemon=True).start()
        return fill

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> Iterator[list[Listed]]:
        return self.inner.listing(prefix, recursive, start_after)  # listings are not cached

    def _fill_on_loop(
        self, fill: Fill, key: str, meta: ObjectMeta, read: LoopRead, span: ByteRange
    ) -> None:
        """Run ``fill`` as a task on the event loop: a fill thread per miss took turns on the
        interpreter lock with every other thread at each read from S3 (see docs/design.md).
        Bytes the presigned GET cannot give are read in a worker thread, botocore deciding."""
        assert self.loop is not None
        opened: list[AsyncIterator[bytes]] = []
        bodies: list[Body] = []

        async def start() -> AsyncIterator[bytes]:
            chunks = await read(span, FILL_CHUNK)
            if chunks is None:
                body = self.inner.pinned(key, meta)
                bodies.append(body)
                blocking = await anyio.to_thread.run_sync(body.iter_range, span, FILL_CHUNK)
                chunks = aiter_blocking(blocking)
            opened.append(chunks)
            return chunks

        async def fill_task() -> None:
            try:
                await arun_fill(fill, self.fills, start)
            finally:
                for chunks in opened:
                    await chunks.aclose()  # type: ignore[attr-defined]
                for body in bodies:
                    await anyio.to_thread.run_sync(body.close)

        def schedule() -> None:
            task = asyncio.get_running_loop().create_task(fill_task())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self.loop.call_soon_threadsafe(schedule)

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        for task in list(self._tasks):
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(task.cancel)
        self.store.close()
        self.inner.close()


class AsyncSliceCache(_Cache):
    """The async flavour, in front of ``AsyncS3Storage``."""

    def __init__(self, inner: AsyncVersionedStorage, store: SliceStore) -> None:
        super().__init__(store)
        self.inner = inner
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[AsyncBody]:
        if not self.store.usable():
            reply = await self.inner.open(key, hint)
            return Reply(reply.meta, reply.body, reply.range, _status("fwd=miss"))
        location = self.inner.location(key)
        meta, stale = self.fresh(location)
        forward = ""
        if stale is not None:
            try:
                fresh = await self.inner.revalidate(key, stale)
            except ObjectNotFound:
                self.store.forget_meta(location)
                raise
            meta, forward = self.revalidated(location, stale, fresh)
        elif meta is None:
            reply = await self.inner.open(key, METADATA_ONLY)
            await reply.body.aclose()
            meta, forward = self.confirmed(location, reply.meta, "fwd=miss")
        version = self.version(location, meta)
        if version is None:
            return Reply(meta, self.inner.pinned(key, meta), None, _status("fwd=miss"))
        fields, missing = self.status(version, hint, forward)
        return Reply(meta, AsyncCachedBody(self, key, meta, version, missing), None, fields)

    def start_fill(self, key: str, meta: ObjectMeta, version: Version, run: range) -> Fill | None:
        """A fill of ``run`` in a task of its own (see ``SliceCache.start_fill``)."""
        fill, new = self.fills.start(version, run, self.store)
        if fill is None or not new:
            return fill
        body, span = self.inner.pinned(key, meta), self.fill_span(fill)

        async def fill_task() -> None:
            try:
                await arun_fill(fill, self.fills, lambda: body.aiter_range(span, FILL_CHUNK))
            finally:
                await body.aclose()

        task = asyncio.get_running_loop().create_task(fill_task())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> AsyncIterator[list[Listed]]:
        return self.inner.listing(prefix, recursive, start_after)  # listings are not cached

    async def acheck(self) -> None:
        await self.inner.acheck()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.store.close()
        await self.inner.aclose()


class _Reading:
    """One range read through the cache, slice by slice: from the slice's file, from the fill
    bringing it, or straight from S3 (``direct``: when the cache cannot help); what both body
    flavours share. A read stays attached to a fill while its slices are the fill's, so the
    fill knows someone still wants them."""

    def __init__(
        self, cache: Any, version: Version, byte_range: ByteRange, missing: frozenset[int]
    ) -> None:
        self.cache = cache
        self.store: SliceStore = cache.store
        self.slice_size: int = cache.slice_size
        self.version = version
        self.pos = byte_range.start
        self.stop = byte_range.stop
        self.index = -1  # the slice ``source`` serves
        self.source = ""  # "file", "fill", "direct" or "" (none yet)
        self.fd = -1
        self.fill: Fill | None = None
        self.direct: Any = None
        self.started = -1  # the last slice this read started a fill for
        self.unasked = set(missing)  # slices the open found missing: no need to ask again
        self.spans = False  # a slice's file given as a FileSpan, not read (give_spans)
        self.lent = 0  # the bytes of the last FileSpan, taken when the next item is asked for

    @property
    def offset(self) -> int:
        return self.pos - self.index * self.slice_size

    def slice_stop(self) -> int:
        return min(self.stop, (self.index + 1) * self.slice_size)

    def file_range(self) -> tuple[int, int]:
        base = HEADER_SIZE - self.index * self.slice_size
        return self.pos + base, self.slice_stop() + base

    def took(self, chunk: bytes, source: str) -> bytes:
        self.pos += len(chunk)
        _BYTES[source].inc(len(chunk))
        if self.pos >= self.slice_stop():
            self.next_slice()
        return chunk

    def give_spans(self) -> None:
        """From now on a slice on disk comes as a ``FileSpan`` of its file, not read: for a
        response that sends files by zero-copy sends."""
        self.spans = True

    def lend(self) -> FileSpan:
        """The rest of this slice's share of the range as a span of its file, not read; the
        file stays open until ``settle`` (the next item asked for) takes the span."""
        start, stop = self.file_range()
        self.lent = stop - start
        _BYTES["cache"].inc(self.lent)
        return FileSpan(_FileBody(self.fd), start, self.lent)

    def settle(self) -> None:
        """Take the span lent last (sent by now): on to the next slice."""
        if self.lent:
            self.pos += self.lent
            self.lent = 0
            self.next_slice()  # a span runs to the end of its slice's share

    def next_slice(self) -> None:
        self.source, self.direct = "", None
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def locate(self, ask_index: bool = True) -> bool:
        """Find the source of the slice ``pos`` is in: the fill bringing it (attached to
        already, or joined now), else its file. False: neither (start a fill, or go to S3).
        ``ask_index`` False: no index call (on the event loop), only what the process knows."""
        self.index = self.pos // self.slice_size
        fill = self.fill
        if fill is not None and not fill.first <= self.index <= fill.last:
            self.fill = None
            fill.detach()
        if self.fill is None:
            # The fills first: a fill hands its slice to the index before it lets go of it,
            # so a slice no fill holds is on disk already, or not fetched at all.
            self.fill = self.cache.fills.join(self.version, self.index)
            if self.fill is not None:
                _COALESCED.inc()
        if self.fill is not None:
            self.source = "fill"
            return True
        return self.open_file(ask_index)

    def open_file(self, ask_index: bool = True) -> bool:
        if ask_index and self.index in self.unasked:
            self.unasked.discard(self.index)  # the open found it missing a moment ago
            ask_index = False
        fd = self.store.open_slice(self.version, self.index, ask_index)
        if fd is None:
            return False
        self.fd, self.source = fd, "file"
        _HITS.inc()
        return True

    def fill_gone(self) -> bool:
        """The fill has no more bytes of this slice for us: its file, if the store kept it.
        False: read the rest of the slice from S3."""
        self.unasked.discard(self.index)  # a fill had it: the open's answer is out of date
        return self.open_file()

    def run(self) -> range:
        last = (self.stop - 1) // self.slice_size
        return self.cache.missing_run(self.version, self.index, last)  # type: ignore[no-any-return]

    def attach(self, fill: Fill | None) -> None:
        """Read from the fill just started (or found); None: a fill stored the slice
        meanwhile, read its file (or, should it be gone again, S3)."""
        self.started = self.index
        if fill is not None:
            self.fill, self.source = fill, "fill"
        elif not self.open_file():
            self.source = "direct"

    def release(self) -> None:
        self.next_slice()
        if self.fill is not None:
            fill, self.fill = self.fill, None
            fill.detach()


class _CachedChunks(_Reading):
    """A ``ReadyChunks`` over the cache: what is on disk (in the page cache) or already
    received by a fill is ready on the event loop; the rest waits in a worker thread."""

    def __init__(
        self, body: CachedBody, version: Version, byte_range: ByteRange, chunk_size: ChunkSize
    ) -> None:
        super().__init__(body.cache, version, byte_range, body.missing)
        self.body = body
        self.chunk_size = chunk_size

    def __iter__(self) -> _CachedChunks:
        return self

    def __next__(self) -> bytes | FileSpan:
        self.settle()
        try:
            return self._next()
        except ObjectChanged:
            self.store.forget_meta(self.version.location)  # S3 holds another version now
            raise

    def _next(self) -> bytes | FileSpan:
        while self.pos < self.stop:
            limit = chunk_limit(self.chunk_size)
            if self.source == "file":
                if self.spans:
                    return self.lend()
                start, stop = self.file_range()
                return self.took(_read_step(self.fd, start, stop, limit), "cache")
            if self.source == "fill":
                assert self.fill is not None
                left = self.slice_stop() - self.pos
                answer = self.fill.wait_take(self.index, self.offset, min(limit, left))
                if answer is not GONE:
                    return self.took(answer, "s3")
                if not self.fill_gone():
                    self.source = "direct"
                continue
            if self.source == "direct":
                if self.direct is None:
                    span = ByteRange(self.pos, self.slice_stop())
                    self.direct = self.body.direct(span, self.chunk_size)
                return self.took(next(self.direct), "s3")
            if self.locate():
                continue
            if self.started == self.index:
                self.source = "direct"  # a fill of this slice came and went without it
            else:
                cache = self.body.cache
                self.attach(
                    cache.start_fill(self.body.key, self.body.meta, self.version, self.run())
                )
        raise StopIteration

    def ready(self) -> bytes | FileSpan | None:
        self.settle()
        while self.pos < self.stop:
            limit = chunk_limit(self.chunk_size)
            if self.source == "file":
                if self.spans:
                    return self.lend()  # the response checks the page cache before it sends
                start, stop = self.file_range()
                chunk = _read_cached(self.fd, start, stop, limit)
                return None if chunk is None else self.took(chunk, "cache")
            if self.source == "fill":
                assert self.fill is not None
                left = self.slice_stop() - self.pos
                answer = self.fill.take(self.index, self.offset, min(limit, left))
                if answer is None or answer is GONE:
                    return None  # waiting, or a file to open: in the thread
                return self.took(answer, "s3")
            if self.source == "direct" or not self.locate(ask_index=False):
                return None
        return b""


class CachedBody:
    """An object read through ``SliceCache``."""

    def __init__(
        self,
        cache: SliceCache,
        key: str,
        meta: ObjectMeta,
        version: Version,
        missing: frozenset[int] = frozenset(),
    ) -> None:
        self.cache = cache
        self.key = key
        self.meta = meta
        self.version = version
        self.missing = missing  # slices the open found missing
        self._readings: list[_CachedChunks] = []
        self._direct: Body | None = None
        self.closed = False

    def iter_range(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        if self.closed:
            raise ValueError("read from a closed body")
        chunks = _CachedChunks(self, self.version, byte_range, chunk_size)
        self._readings.append(chunks)
        # Bytes, and FileSpans too once a zero-copy response asked for them (give_spans).
        return cast(Iterator[bytes], chunks)

    def direct(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        """Bytes straight from S3 (pinned to this version), when the cache cannot give them."""
        if self._direct is None:
            self._direct = self.cache.inner.pinned(self.key, self.meta)
        return self._direct.iter_range(byte_range, chunk_size)

    def close(self) -> None:
        self.closed = True
        readings, self._readings = self._readings, []
        for reading in readings:
            reading.release()
        if self._direct is not None:
            direct, self._direct = self._direct, None
            direct.close()


class _AsyncCachedChunks:
    """The chunks of one range read through ``AsyncSliceCache``: an async iterator that also
    offers ``give_spans()`` (see ``_CachedChunks``)."""

    __slots__ = ("_chunks", "_reading")

    def __init__(self, chunks: AsyncGenerator[bytes | FileSpan, None], reading: _Reading) -> None:
        self._chunks = chunks
        self._reading = reading

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        # The generator's own awaitable: no coroutine frame of ours per chunk. Bytes, and
        # FileSpans too once a zero-copy response asked for them.
        return cast(Awaitable[bytes], self._chunks.__anext__())

    def aclose(self) -> Awaitable[None]:
        return self._chunks.aclose()

    def give_spans(self) -> None:
        self._reading.give_spans()


class AsyncCachedBody:
    """An object read through ``AsyncSliceCache``."""

    def __init__(
        self,
        cache: AsyncSliceCache,
        key: str,
        meta: ObjectMeta,
        version: Version,
        missing: frozenset[int] = frozenset(),
    ) -> None:
        self.cache = cache
        self.key = key
        self.meta = meta
        self.version = version
        self.missing = missing  # slices the open found missing
        self._readings: list[_Reading] = []
        self._direct: AsyncBody | None = None
        self.closed = False

    async def aiter_range(
        self, byte_range: ByteRange, chunk_size: ChunkSize
    ) -> AsyncIterator[bytes]:
        if self.closed:
            raise ValueError("read from a closed body")
        reading = _Reading(self.cache, self.version, byte_range, self.missing)
        self._readings.append(reading)
        return _AsyncCachedChunks(self._chunks(reading, chunk_size), reading)

    async def _chunks(
        self, reading: _Reading, chunk_size: ChunkSize
    ) -> AsyncGenerator[bytes | FileSpan, None]:
        try:
            while reading.pos < reading.stop:
                if reading.source == "file":
                    if reading.spans:
                        yield reading.lend()
                        reading.settle()
                        continue
                    start, stop = reading.file_range()
                    chunks = _FileChunks(_FileBody(reading.fd), ByteRange(start, stop), chunk_size)
                    async for chunk in aiter_ready(chunks):
                        yield reading.took(chunk, "cache")
                    continue
                if reading.source == "fill":
                    assert reading.fill is not None
                    left = reading.slice_stop() - reading.pos
                    limit = min(chunk_limit(chunk_size), left)
                    answer = await reading.fill.await_take(reading.index, reading.offset, limit)
                    if answer is not GONE:
                        yield reading.took(answer, "s3")
                    elif not reading.fill_gone():
                        reading.source = "direct"
                    continue
                if reading.source == "direct":
                    span = ByteRange(reading.pos, reading.slice_stop())
                    async for chunk in await self.direct(span, chunk_size):
                        yield reading.took(chunk, "s3")
                    continue
                if reading.locate():
                    continue
                if reading.started == reading.index:
                    reading.source = "direct"  # a fill of this slice came and went without it
                else:
                    run = reading.run()
                    reading.attach(self.cache.start_fill(self.key, self.meta, self.version, run))
        except ObjectChanged:
            self.cache.store.forget_meta(self.version.location)  # S3 holds another version now
            raise
        finally:
            reading.release()

    async def direct(self, byte_range: ByteRange, chunk_size: ChunkSize) -> AsyncIterator[bytes]:
        if self._direct is None:
            self._direct = self.cache.inner.pinned(self.key, self.meta)
        return await self._direct.aiter_range(byte_range, chunk_size)

    async def aclose(self) -> None:
        self.closed = True
        readings, self._readings = self._readings, []
        for reading in readings:
            reading.release()
        if self._direct is not None:
            direct, self._direct = self._direct, None
            await direct.aclose()


def open_cache(
    inner: VersionedStorage | AsyncVersionedStorage,
    options: CacheOptions,
    sync: bool,
    loop: asyncio.AbstractEventLoop | None = None,
) -> SliceCache | AsyncSliceCache:
    """The cache in front of ``inner`` (its store started: index opened, orphans removed);
    ``loop``: the server's event loop, where the blocking flavour's fills may run."""
    store = SliceStore(options)
    store.start()
    if sync:
        return SliceCache(inner, store, loop)  # type: ignore[arg-type]
    return AsyncSliceCache(inner, store)  # type: ignore[arg-type]
