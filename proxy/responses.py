"""``ObjectResponse`` sends a ``Plan`` and the object's chunks, and always closes the body.

Also ``iter_plan``/``aiter_plan``: the twins that turn a plan's parts into one chunk stream
(with the file, when the body is one: ``FileChunks``), and ``Pacer``: the chunk size,
following how fast the client takes them.

Zero-copy: when the body is an open file and the server offers the ASGI "Zero Copy Send"
extension (``http.response.zerocopysend``: ``proxy.connection`` does, on plain TCP), the plan's
parts go as zero-copy sends of the file (multipart framing as ordinary body messages around
them) and no byte of the file passes through Python; otherwise the chunks are streamed. A
stream that offers ``give_spans()`` (the slice cache's) is asked for them there: its slices on
disk then come as ``FileSpan``s, sent the same way, between its ordinary chunks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import Any, cast

import anyio
import anyio.to_thread
from starlette.concurrency import iterate_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.http.plan import Plan
from proxy.storage.base import AsyncBody, Body, ChunkSize, FileSpan, ReadyChunks, aiter_ready
from proxy.storage.errors import BackendUnavailable, BodyTruncated, StorageError
from proxy.turns import take_turn

Chunks = Iterable[bytes] | AsyncIterable[bytes]

ZERO_COPY = "http.response.zerocopysend"
# A zero-copy send is one message per this many bytes at most (then a turn, and a look for a
# departed client): the server sends it as fast as the socket takes it, waiting on the event
# loop when the socket is full, so its size costs no memory; it only sets the number of
# messages, turns and disconnect checks.
ZERO_COPY_STEP = 4 * 1024 * 1024

# Chunks aim at what the client takes in this time: 1 MiB at 200 MB/s and more, the minimum
# at a few MB/s. Long enough for few Python steps per byte, short enough to buffer little.
PACE_SECONDS = 0.005
# The average counts at least this long, so the first sends do not look like GB/s.
PACE_WARMUP_SECONDS = 0.05
# What socket buffers take at once from any client, however slow, is no sign of its speed: a slow
# reader's took ~4 MB in its first 20 ms on loopback (Linux's tcp_wmem and tcp_rmem maxima are 4
# and 6 MB), and counted, that raised its chunks to 384 KiB. So the average starts after this
# much; a client at 1 GB/s still reaches 1 MiB chunks within ~20 ms. (Averaging over 0.5 s
# instead also kept slow readers small, but cost fast 256 MiB downloads ~30% more CPU.)
PACE_BURST_BYTES = 8 * 1024 * 1024


class Pacer:
    """Chunk sizes that follow the client: large reads for fast clients, small buffers for slow.

    The size aims at what the client took in ``PACE_SECONDS`` on average, between ``minimum``
    and ``maximum``, and at most doubles per chunk. The average runs from the moment the first
    ``PACE_BURST_BYTES`` were sent to now (the minimum until then) because socket buffers
    absorb a few MB at once, so single sends look fast even for a slow reader. Measured: 1 MiB
    reads doubled a fast stream over 256 KiB, while a slow reader would keep a whole chunk
    waiting in the transport's buffer.
    Called by the body before each read (a ``ChunkSize``), told by ``ObjectResponse`` after
    each send.
    """

    __slots__ = ("_clock", "_sent", "_since", "_since_sent", "maximum", "minimum", "size")

    def __init__(
        self, minimum: int, maximum: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.minimum = min(minimum, maximum)
        self.maximum = maximum
        self.size = self.minimum
        self._clock = clock
        self._sent = 0
        self._since: float | None = None  # when the average began, and the bytes sent by then
        self._since_sent = 0

    def __call__(self) -> int:
        return self.size

    def sent(self, length: int) -> None:
        self._sent += length
        if self._sent <= PACE_BURST_BYTES:
            return
        now = self._clock()
        if self._since is None:
            self._since, self._since_sent = now, self._sent
            return
        elapsed = max(now - self._since, PACE_WARMUP_SECONDS)
        target = int((self._sent - self._since_sent) * PACE_SECONDS / elapsed)
        target -= target % self.minimum  # whole multiples: page-aligned reads
        self.size = max(self.minimum, min(self.maximum, 2 * self.size, target))


class FileChunks:
    """A plan's chunks from a body that is an open file (it has ``fileno()``, ``cached(offset,
    count)`` and ``load(offset, count)``: the local backend's), with the file.
    ``ObjectResponse`` sends the file's bytes itself where the server offers the zero-copy
    send (the chunks are then never read), and streams the chunks elsewhere. Iterable as its
    chunks are (sync or async)."""

    __slots__ = ("chunks", "file")

    def __init__(self, chunks: Iterator[bytes] | AsyncIterator[bytes], file: Any) -> None:
        self.chunks = chunks
        self.file = file  # has fileno()

    def __iter__(self) -> Iterator[bytes]:
        return iter(cast(Iterator[bytes], self.chunks))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(cast(AsyncIterator[bytes], self.chunks))


def iter_plan(body: Body, plan: Plan, chunk_size: ChunkSize) -> Iterable[bytes]:
    """The plan's bytes. The first part's read starts here, so its failures come before the
    response does; a single range is the body's own iterator, with no wrapper around it (but
    ``FileChunks``, for a file)."""
    if not plan.parts:
        return iter(())  # nothing of the object: ObjectResponse sends the plan's literal tail
    first = body.iter_range(plan.parts[0].byte_range, chunk_size)
    if len(plan.parts) == 1 and not plan.parts[0].head and not plan.tail:
        chunks = first
    else:
        chunks = _iter_parts(body, plan, first, chunk_size)
    return chunks if getattr(body, "fileno", None) is None else FileChunks(chunks, body)


def _iter_parts(
    body: Body, plan: Plan, first: Iterator[bytes], chunk_size: ChunkSize
) -> Iterator[bytes]:
    for index, part in enumerate(plan.parts):
        if part.head:
            yield part.head
        yield from first if index == 0 else body.iter_range(part.byte_range, chunk_size)
    if plan.tail:
        yield plan.tail


async def aiter_plan(body: AsyncBody, plan: Plan, chunk_size: ChunkSize) -> AsyncIterable[bytes]:
    """The async twin of ``iter_plan``."""
    if not plan.parts:
        return _aiter_nothing()
    first = await body.aiter_range(plan.parts[0].byte_range, chunk_size)
    if len(plan.parts) == 1 and not plan.parts[0].head and not plan.tail:
        chunks = first
    else:
        chunks = _aiter_parts(body, plan, first, chunk_size)
    return chunks if getattr(body, "fileno", None) is None else FileChunks(chunks, body)


async def _aiter_parts(
    body: AsyncBody, plan: Plan, first: AsyncIterator[bytes], chunk_size: ChunkSize
) -> AsyncIterator[bytes]:
    for index, part in enumerate(plan.parts):
        if part.head:
            yield part.head
        chunks = first if index == 0 else await body.aiter_range(part.byte_range, chunk_size)
        async for chunk in chunks:
            yield chunk
    if plan.tail:
        yield plan.tail


async def _aiter_nothing() -> AsyncIterator[bytes]:
    return
    yield  # an async generator that yields nothing


async def _nothing() -> None:
    return None


async def _zero_copy(send: Send, fd: int, offset: int, count: int, more: bool) -> None:
    """One zero-copy send of ``count`` bytes of ``fd`` from ``offset``, its failures in the
    storage's terms: a file that ended early (it shrank since it was opened) is
    ``BodyTruncated``, a failed read ``BackendUnavailable``; a client gone stays an OSError."""
    try:
        await send(
            {"type": ZERO_COPY, "file": fd, "offset": offset, "count": count, "more_body": more}
        )
    except EOFError as exc:
        raise BodyTruncated() from exc
    except OSError as exc:
        if isinstance(exc, ConnectionError):
            raise  # the client is gone
        raise BackendUnavailable(f"{BackendUnavailable.message} ({exc.strerror})") from exc


async def _send_span(
    send: Send, file: Any, offset: int, stop: int, gone: Callable[[], bool]
) -> bool:
    """``[offset, stop)`` of ``file`` by zero-copy sends of ``ZERO_COPY_STEP`` bytes at most, a
    turn after each (as ``_stream`` takes after each chunk). A step the page cache does not
    hold is first read into it in a worker thread, as a chunk read would be: sendfile on the
    event loop never waits for the disk. False: the client left (the response stays
    incomplete)."""
    fd = file.fileno()
    while offset < stop:
        count = min(ZERO_COPY_STEP, stop - offset)
        if not file.cached(offset, count):  # sendfile would wait for the disk
            await anyio.to_thread.run_sync(file.load, offset, count)
        await _zero_copy(send, fd, offset, count, True)
        offset += count
        await take_turn()
        if gone():
            return False
    return True


class ObjectResponse(Response):
    """Streams a planned response; stops reading when the client goes away.

    The body is released in ``__call__``'s ``finally`` (not a BackgroundTask, which Starlette
    skips on disconnect). A failure after the headers are sent propagates to the server, which
    then aborts the connection: the client sees a truncated transfer, never a short body
    presented as complete (Content-Length is always exact).
    """

    def __init__(
        self,
        plan: Plan,
        chunks: Chunks = (),
        close: Callable[[], Awaitable[None]] = _nothing,
        pacer: Pacer | None = None,
        content: bytes | None = None,
        at_once: bool = False,
    ) -> None:
        """``pacer``: the one the chunks are read with, told how each send went.
        ``content``: the whole body, already read (a small object or range); then no
        ``chunks`` or ``close`` are needed. ``at_once``: the chunks are ``FileChunks`` of a
        body small enough for one message (``_send_at_once``)."""
        self.status_code = plan.status
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in plan.headers]
        self.background = None
        self.plan = plan
        self._chunks = chunks
        self._close = close
        self._content = content
        self._pacer = pacer
        self._at_once = at_once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: AsyncIterator[bytes | FileSpan] | None = None
        source = self._chunks
        file = None
        zero_copy = ZERO_COPY in (scope.get("extensions") or ())
        if type(source) is FileChunks:
            if zero_copy:
                file = source.file
            source = source.chunks
        elif zero_copy and (give_spans := getattr(source, "give_spans", None)) is not None:
            give_spans()  # files among the chunks (the cache's slices) come as FileSpans
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        body = self._whole_body(scope["method"])
        if body is None and self._at_once:
            await self._send_at_once(send, start, source, file)
            return
        try:
            await send(start)
            if body is not None:
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            if file is not None:
                await self._until_disconnect(receive, partial(self._send_file, send, file))
                return
            if isinstance(source, AsyncIterable):
                chunks = aiter(source)
            elif isinstance(source, ReadyChunks):
                chunks = aiter_ready(source)
            else:
                # One worker-thread hop per chunk: the reads of a sync body block.
                chunks = iterate_in_threadpool(source)
            await self._until_disconnect(receive, partial(self._stream, send, chunks))
        except OSError as exc:
            # ASGI spec >= 2.4 servers raise OSError from send() once the client is gone; a
            # storage failure (some are OSErrors too) must still reach the server to abort.
            if isinstance(exc, StorageError):
                raise
        finally:
            if file is not None and isinstance(source, AsyncIterator):
                chunks = source  # never read, but an async generator: closed as one
            if chunks is not None or self._close is not _nothing:
                await self._release(chunks)

    async def _release(self, chunks: AsyncIterator[bytes | FileSpan] | None) -> None:
        """Close the chunk iterator and the body, shielded from a cancellation (a shutdown)
        that would otherwise leave them open. Skipped when there is neither: its cancel
        scope was a few percent of a small range's CPU."""
        with anyio.CancelScope(shield=True):
            aclose = getattr(chunks, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                await self._close()

    def _whole_body(self, method: str) -> bytes | None:
        """The body when there is nothing to stream: none (HEAD), a plan's literal (a 412/416
        JSON body) or content read beforehand; None when the chunks must be streamed."""
        if method == "HEAD":
            return b""
        if not self.plan.parts:
            return self.plan.tail
        return self._content

    async def _stream(
        self, send: Send, chunks: AsyncIterator[bytes | FileSpan], gone: Callable[[], bool]
    ) -> None:
        pacer = self._pacer
        async for chunk in chunks:
            if isinstance(chunk, FileSpan):  # a file's bytes: zero-copy sends, a turn after each
                stop = chunk.offset + chunk.count
                if not await _send_span(send, chunk.file, chunk.offset, stop, gone):
                    return  # the client left
                if pacer is not None:
                    pacer.sent(chunk.count)
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if pacer is not None:
                pacer.sent(len(chunk))
            # A cached local read and a send into a socket with room both return without
            # suspending: yield once per chunk, so other requests (and the disconnect watcher)
            # run while a fast client takes a whole object; in turns, when many streams could
            # step at once (proxy/turns.py).
            await take_turn()
            if gone():
                return  # the client left: stop reading (the response stays incomplete)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_at_once(
        self, send: Send, start: dict[str, Any], source: Chunks, file: Any
    ) -> None:
        """A small body from a local file (at most one chunk), with no disconnect watcher and
        no shielded release (neither has anything to stop or to wait for): by zero-copy sends
        where the server offers them (``file``), else read whole and sent as one message.
        (By sendfile a 64 KiB range costs about the CPU a read and a write did: a few µs
        less in the process, as many more in the kernel; but it holds no buffer while the
        client reads.) Either way, what can
        fail before the bytes go is tried before the response starts, so it still gets its
        error status: the read, or the page-cache check (a range past the end of a file that
        shrank: ``BodyTruncated``) and the load of what is not cached, in a worker thread. A
        client gone ends the sends quietly (the server drops them)."""
        plan = self.plan
        try:
            if file is None:
                if isinstance(source, AsyncIterable):
                    content = b"".join([chunk async for chunk in source])
                elif isinstance(source, ReadyChunks):
                    content = b"".join([chunk async for chunk in aiter_ready(source)])
                else:  # multipart parts of a sync body: one worker-thread hop for all of them
                    content = await anyio.to_thread.run_sync(b"".join, source)
                await send(start)
                await send({"type": "http.response.body", "body": content, "more_body": False})
                return
            for part in plan.parts:
                first, count = part.byte_range.start, part.byte_range.length
                if not file.cached(first, count):  # sendfile would wait for the disk
                    await anyio.to_thread.run_sync(file.load, first, count)
            await send(start)
            fd = file.fileno()
            last = len(plan.parts) - 1
            for index, part in enumerate(plan.parts):
                if part.head:
                    await send({"type": "http.response.body", "body": part.head, "more_body": True})
                more = index < last or bool(plan.tail)
                await _zero_copy(send, fd, part.byte_range.start, part.byte_range.length, more)
            if plan.tail:
                await send({"type": "http.response.body", "body": plan.tail, "more_body": False})
        except OSError as exc:
            if isinstance(exc, StorageError):  # as in __call__
                raise
        finally:
            await self._close()

    async def _send_file(self, send: Send, file: Any, gone: Callable[[], bool]) -> None:
        """The plan's parts as zero-copy sends of ``file`` (``_send_span``), multipart framing
        as body messages around them."""
        for part in self.plan.parts:
            if part.head:
                await send({"type": "http.response.body", "body": part.head, "more_body": True})
            if not await _send_span(send, file, part.byte_range.start, part.byte_range.stop, gone):
                return  # the client left: stop (the response stays incomplete)
        await send({"type": "http.response.body", "body": self.plan.tail, "more_body": False})

    async def _until_disconnect(
        self, receive: Receive, stream: Callable[[Callable[[], bool]], Awaitable[None]]
    ) -> None:
        """``stream(gone)``, cancelled when the client goes away."""
        # uvicorn's send() returns silently after a disconnect, and an async body with data
        # ready (a socket that holds the chunk, aiohttp's buffer) returns without suspending, so
        # a cancellation alone may land late: the watcher also raises a flag that the loop
        # checks after every send.
        error: Exception | None = None
        departed = False
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                nonlocal departed
                while (await receive())["type"] != "http.disconnect":
                    pass
                departed = True
                group.cancel_scope.cancel()  # also ends a send or a read that is blocked

            group.start_soon(watch_disconnect)
            try:
                await stream(lambda: departed)
            except Exception as exc:  # re-raised below, unwrapped from the task group
                error = exc
            group.cancel_scope.cancel()
        if error is not None:
            raise error
