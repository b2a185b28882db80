"""Fills: one S3 read that fetches a run of missing slices, shared by every request that needs
them (request coalescing).

A fill writes each slice to a file as it arrives and keeps the slice being received in memory,
so that every attached request streams its bytes as soon as they come (first byte without
waiting for the slice). A finished slice is handed to the store and read from disk once the
store has it; until then the fill still serves it from memory and goes on with the next one,
at most one slice ahead of the disk (a download faster than the disk would otherwise leave
most of its slices unkept). The fill runs at most one slice ahead of the furthest attached
request, and stops after the slice it is receiving when no request is attached any more: a
client that hangs up costs at most that slice's remaining bytes from S3.
A slice the store could not keep (a cache fault) is read from S3 by the requests behind the
fill that come for it.

The fill runs in a thread (blocking flavour) or a task (async flavour), apart from the requests
that started it, so a slow or vanished client does not hold the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future
from enum import Enum

from proxy.metrics import CACHE_SLICES
from proxy.storage.cachestore import SliceStore, SliceWriter, Version
from proxy.storage.errors import BodyTruncated

logger = logging.getLogger("proxy.cache")

AHEAD = 1  # slices a fill may receive beyond the furthest attached request's
_STORED_ENTRIES = 4096  # recently stored slices remembered (see ``Fills.stored``)


class Gone(Enum):
    """``Fill.take``'s answer when the fill will not give this request those bytes: read the
    slice from disk (or, not stored, from S3)."""

    GONE = "gone"


GONE = Gone.GONE


class Fill:
    """Slices ``first``..``last`` of ``version`` arriving from one S3 read."""

    def __init__(self, version: Version, first: int, last: int, store: SliceStore) -> None:
        self.version = version
        self.first = first
        self.last = last
        self.store = store
        self.current = first  # the slice being received; last + 1 once all are
        self.error: BaseException | None = None
        self.ended = False  # nothing more will arrive (all received, failed, or stopped)
        self._chunks: list[bytes] = []  # the current slice's bytes so far
        self._keeping: dict[int, list[bytes]] = {}  # slices received whole, being stored
        self._received = 0
        self._readers = 0
        self._wanted = first  # the furthest slice an attached request asked for
        self._cond = threading.Condition()
        self._event: asyncio.Event | None = None  # a waiter's wake-up on the event loop
        self._event_loop: asyncio.AbstractEventLoop | None = None  # the loop it belongs to

    # -- the requests' side -------------------------------------------------------------------

    def attach(self) -> None:
        with self._cond:
            self._readers += 1

    def detach(self) -> None:
        with self._cond:
            self._readers -= 1
            self._notify()

    def holds_whole(self, index: int) -> bool:
        """Whether slice ``index`` is all received and being stored: as good as cached, since
        a request reads it from here until the store has it."""
        with self._cond:
            return index in self._keeping

    def take(self, index: int, offset: int, limit: int) -> bytes | Gone | None:
        """Up to ``limit`` bytes of slice ``index`` from ``offset`` on; None: not yet (wait);
        ``GONE``: not from this fill. Raises the fill's error when it failed before them."""
        with self._cond:
            return self._take(index, offset, limit)

    def _take(self, index: int, offset: int, limit: int) -> bytes | Gone | None:
        if index > self._wanted:
            self._wanted = index
            self._notify()
        kept = self._keeping.get(index)
        if kept is not None and offset < self.store.slice_length(self.version, index):
            return _slice_of(kept, offset, limit)
        if index < self.current or index > self.last:
            return GONE
        if index == self.current and offset < self._received:
            return _slice_of(self._chunks, offset, limit)
        if self.error is not None:
            raise self.error
        return GONE if self.ended else None

    def wait_take(self, index: int, offset: int, limit: int) -> bytes | Gone:
        """``take``, waiting (blocking flavour) until there is an answer."""
        with self._cond:
            while (answer := self._take(index, offset, limit)) is None:
                self._cond.wait()
            return answer

    async def await_take(self, index: int, offset: int, limit: int) -> bytes | Gone:
        """``take``, awaiting (async flavour) until there is an answer."""
        while True:
            with self._cond:
                answer = self._take(index, offset, limit)
                if answer is not None:
                    return answer
                event = self._loop_event()
            await event.wait()

    def _loop_event(self) -> asyncio.Event:
        """The event a waiter on the event loop awaits (one for all of them); with the lock."""
        if self._event is None:
            self._event = asyncio.Event()
            self._event_loop = asyncio.get_running_loop()
        return self._event

    def _notify(self) -> None:
        """Wake every waiter: threads (the condition) and tasks (the event, set on its loop:
        requests of the blocking flavour, in threads, wake a fill that runs on the loop)."""
        self._cond.notify_all()
        event, self._event = self._event, None
        if event is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is self._event_loop
        except RuntimeError:  # a thread without a loop
            on_loop = False
        if on_loop:
            event.set()
        elif self._event_loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._event_loop.call_soon_threadsafe(event.set)

    # -- the fill's side ------------------------------------------------------------------------

    def _may_start(self, index: int) -> bool:
        """Whether to receive slice ``index`` (waiting on the requests is the caller's)."""
        return self._readers > 0 and self._wanted >= index - AHEAD

    def wait_turn(self, index: int) -> bool:
        """Block until slice ``index`` may be received; False when no request wants it."""
        with self._cond:
            while not self._may_start(index):
                if self._readers == 0:
                    return False
                self._cond.wait()
            return True

    async def await_turn(self, index: int) -> bool:
        while True:
            with self._cond:
                if self._may_start(index):
                    return True
                if self._readers == 0:
                    return False
                event = self._loop_event()
            await event.wait()

    def received(self, chunk: bytes) -> None:
        with self._cond:
            self._chunks.append(chunk)
            self._received += len(chunk)
            self._notify()

    def handed(self, index: int) -> None:
        """Slice ``index`` is all received and handed to the store: served from memory until
        ``stored`` says what became of it; the fill goes on with the next."""
        with self._cond:
            self._keeping[index] = self._chunks
            self.current = index + 1
            self._chunks, self._received = [], 0
            self._notify()

    def stored(self, index: int) -> None:
        """The store has slice ``index`` now, or will not: readers look on disk (and, not
        there, go to S3)."""
        with self._cond:
            self._keeping.pop(index, None)
            self._notify()

    def end(self, error: BaseException | None = None) -> None:
        with self._cond:
            if error is not None and self.error is None:
                self.error = error
            self.ended = True
            self._chunks, self._received = [], 0
            self._notify()


def _slice_of(chunks: list[bytes], offset: int, limit: int) -> bytes:
    """``limit`` bytes at most from ``offset`` of the concatenated chunks (one chunk's worth:
    no join across chunks)."""
    for chunk in chunks:
        if offset < len(chunk):
            piece = chunk[offset : offset + limit]
            return chunk if len(piece) == len(chunk) else piece
        offset -= len(chunk)
    raise AssertionError("offset beyond the received bytes")


class Fills:
    """The fills in progress, by slice: how a request finds the fill that brings its slice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_slice: dict[tuple[Version, int], Fill] = {}
        # Slices stored since a request last looked on disk for them: a request that found
        # neither a fill nor a file must not fetch again what a fill stored meanwhile.
        self._stored: OrderedDict[tuple[Version, int], None] = OrderedDict()

    def join(self, version: Version, index: int) -> Fill | None:
        """The fill bringing slice ``index``, attached to (the caller detaches), or None."""
        with self._lock:
            fill = self._by_slice.get((version, index))
            if fill is not None:
                fill.attach()
        return fill

    def holds(self, version: Version, index: int) -> bool:
        """Whether a fill has all of slice ``index`` and is storing it: the index may not
        have it yet, and a request reads it from the fill (once stored, the index has it)."""
        with self._lock:
            fill = self._by_slice.get((version, index))
        return fill is not None and fill.holds_whole(index)

    def start(
        self, version: Version, indices: range, store: SliceStore
    ) -> tuple[Fill | None, bool]:
        """The fill bringing ``indices.start``, attached to: a new one for the longest prefix
        of ``indices`` that no fill brings and none stored (True), or the one that started
        meanwhile (False); (None, False) when a fill stored that slice meanwhile."""
        with self._lock:
            first = (version, indices.start)
            if first in self._stored:
                return None, False
            fill = self._by_slice.get(first)
            if fill is not None:
                fill.attach()
                return fill, False
            last = indices.start
            for index in indices[1:]:
                if (version, index) in self._by_slice or (version, index) in self._stored:
                    break
                last = index
            fill = Fill(version, indices.start, last, store)
            for index in range(indices.start, last + 1):
                self._by_slice[(version, index)] = fill
            fill.attach()
        CACHE_SLICES.labels("miss").inc(last + 1 - indices.start)
        return fill, True

    def stored(self, fill: Fill, index: int) -> None:
        """Slice ``index`` of the fill is on disk: let go of it, remember it for a while."""
        with self._lock:
            key = (fill.version, index)
            if self._by_slice.get(key) is fill:
                del self._by_slice[key]
            self._stored[key] = None
            while len(self._stored) > _STORED_ENTRIES:
                self._stored.popitem(last=False)

    def release(self, fill: Fill, indices: Iterable[int]) -> None:
        with self._lock:
            for index in indices:
                if self._by_slice.get((fill.version, index)) is fill:
                    del self._by_slice[(fill.version, index)]


def _slices(fill: Fill, chunk: bytes, index: int, filled: int) -> tuple[bytes, bytes]:
    """``chunk`` split where slice ``index`` (``filled`` bytes of it received) ends."""
    room = fill.store.slice_length(fill.version, index) - filled
    return (chunk, b"") if len(chunk) <= room else (chunk[:room], chunk[room:])


class _Slot:
    """The slice being received: its writer (None once handed to the store or dropped) and
    length."""

    def __init__(self, fill: Fill, index: int) -> None:
        self.fill = fill
        self.index = index
        self.length = fill.store.slice_length(fill.version, index)
        self.filled = 0
        self.writer: SliceWriter | None = fill.store.writer()

    def write(self, chunk: bytes) -> None:
        """Publish ``chunk`` to the readers and collect it for the disk (written once the
        slice is whole: ``keep``)."""
        self.filled += len(chunk)
        self.fill.received(chunk)
        if self.writer is not None:
            self.writer.write(chunk)

    @property
    def full(self) -> bool:
        return self.filled >= self.length

    def keep(self) -> Future[bool]:
        """Hand the slice to the store: whether the store kept it, once it is on disk."""
        writer, self.writer = self.writer, None
        if writer is None:
            unkept: Future[bool] = Future()
            unkept.set_result(False)
            return unkept
        return writer.keep(self.fill.version, self.index)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class _Receiver:
    """What a fill's loop does with each chunk, for both flavours: split it at slice ends,
    publish and write it, and once a slice is full, hand it to the store and move on; the
    loops only wait and read. ``wake`` runs the store's answer where the fill's readers wait
    (at once for the blocking flavour, on the event loop for the async one)."""

    def __init__(
        self, fill: Fill, fills: Fills, wake: Callable[[Callable[[], None]], None]
    ) -> None:
        self.fill = fill
        self.fills = fills
        self.index = fill.first  # the slice being received
        self.slot: _Slot | None = None
        self.rest = b""  # what the last chunk held beyond its slice
        self._wake = wake
        self._lock = threading.Lock()
        self._storing: set[int] = set()  # slices handed to the store, not answered yet
        self._last: Future[bool] | None = None  # the store's answer for the last slice handed

    @property
    def pending(self) -> bool:
        return self.index <= self.fill.last

    def open_slot(self) -> None:
        self.slot = _Slot(self.fill, self.index)

    def feed(self, chunk: bytes) -> Future[bool] | None:
        """Take the part of ``chunk`` that belongs to the current slice; hand the slice to the
        store when that fills it. Returns the store's answer for the slice handed before,
        which the loop waits for: a fill runs at most one slice ahead of the disk (else a
        download faster than the disk would leave most of its slices unkept)."""
        assert self.slot is not None
        if not chunk:
            raise BodyTruncated()
        part, self.rest = _slices(self.fill, chunk, self.index, self.slot.filled)
        self.slot.write(part)
        return self._hand() if self.slot.full else None

    def _hand(self) -> Future[bool] | None:
        assert self.slot is not None
        slot, index = self.slot, self.index
        self.slot, self.index = None, index + 1
        keeping = slot.keep()
        with self._lock:
            self._storing.add(index)
        self.fill.handed(index)
        keeping.add_done_callback(lambda done: self._wake(lambda: self._stored(index, done)))
        previous, self._last = self._last, keeping
        return previous

    def _stored(self, index: int, done: Future[bool]) -> None:
        """The store's answer for slice ``index``: readers move to its file (or to S3)."""
        stored = not done.cancelled() and done.exception() is None and done.result()
        self.fill.stored(index)
        if stored:
            self.fills.stored(self.fill, index)
        else:
            self.fills.release(self.fill, (index,))
        with self._lock:
            self._storing.discard(index)

    def failed(self, exc: Exception) -> None:
        logger.debug("fill of %s failed", self.fill.version.location, exc_info=True)
        self.fill.end(exc)

    def close(self) -> None:
        """Whatever happened: drop an unfinished slice, free the fill's slices but those the
        store has yet to answer for, end it (requests still waiting read from disk or S3)."""
        if self.slot is not None:
            self.slot.abort()
        with self._lock:
            storing = set(self._storing)
        indices = range(self.fill.first, self.fill.last + 1)
        self.fills.release(self.fill, [index for index in indices if index not in storing])
        self.fill.end()


def _at_once(callback: Callable[[], None]) -> None:
    callback()


def run_fill(fill: Fill, fills: Fills, start: Callable[[], Iterator[bytes]]) -> None:
    """Receive the fill's slices from ``start()`` (an S3 read of exactly them): blocking, in
    the fill's own thread. Failures end the fill with their error (the requests raise it)."""
    receiver = _Receiver(fill, fills, _at_once)
    try:
        chunks = start()
        while receiver.pending:
            if receiver.slot is None:
                if not fill.wait_turn(receiver.index):
                    break
                receiver.open_slot()
            previous = receiver.feed(receiver.rest or next(chunks, b""))
            if previous is not None:
                previous.result()
    except Exception as exc:
        receiver.failed(exc)
    finally:
        receiver.close()


async def arun_fill(
    fill: Fill, fills: Fills, start: Callable[[], Awaitable[AsyncIterator[bytes]]]
) -> None:
    """The async twin of ``run_fill``, in the fill's own task."""
    loop = asyncio.get_running_loop()

    def wake(callback: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(callback)

    receiver = _Receiver(fill, fills, wake)
    try:
        chunks = await start()
        while receiver.pending:
            if receiver.slot is None:
                if not await fill.await_turn(receiver.index):
                    break
                receiver.open_slot()
            previous = receiver.feed(receiver.rest or await anext(chunks, b""))
            if previous is not None:
                # Shielded: cancelled (at shutdown), the slice is still kept or dropped in the
                # write thread, never left half-way.
                await asyncio.shield(asyncio.wrap_future(previous))
    except Exception as exc:
        receiver.failed(exc)
    finally:
        receiver.close()
