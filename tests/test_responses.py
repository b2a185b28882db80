"""ObjectResponse on raw ASGI messages: chunking, HEAD, disconnects and mid-stream failures."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from starlette.types import Message

from proxy.http.codec import ByteRange
from proxy.http.plan import Part, Plan
from proxy.responses import (
    PACE_SECONDS,
    ZERO_COPY,
    ZERO_COPY_STEP,
    FileChunks,
    ObjectResponse,
    Pacer,
)
from proxy.storage.errors import BodyTruncated


def plan_for(size: int) -> Plan:
    return Plan(
        status=200,
        headers=(("content-length", str(size)), ("content-type", "video/mp4")),
        parts=(Part(b"", ByteRange(0, size)),),
    )


class Tracker:
    def __init__(self) -> None:
        self.closed = 0
        self.produced = 0

    async def close(self) -> None:
        self.closed += 1

    def sync_chunks(self, count: int, size: int = 4) -> Iterator[bytes]:
        for _ in range(count):
            self.produced += 1
            yield b"x" * size

    async def async_chunks(self, count: int, size: int = 4) -> AsyncIterator[bytes]:
        for _ in range(count):
            self.produced += 1
            await anyio.sleep(0)
            yield b"x" * size

    def ready_chunks(self, count: int, size: int = 4) -> ReadyOnEvenSteps:
        return ReadyOnEvenSteps(self, count, size)

    async def eager_chunks(self, count: int, size: int = 4) -> AsyncIterator[bytes]:
        """Never suspends, like a local read the page cache serves."""
        for _ in range(count):
            self.produced += 1
            yield b"x" * size


class ReadyOnEvenSteps:
    """A blocking body's chunks (``ReadyChunks``) whose every other chunk is ready at once; it
    notes on which thread each chunk was taken."""

    def __init__(self, tracker: Tracker, count: int, size: int, fail_at: int = -1) -> None:
        self._tracker = tracker
        self._left = count
        self._size = size
        self._fail_at = fail_at
        self.threads: list[tuple[str, int]] = []  # ("ready" or "next", thread id)

    def __iter__(self) -> ReadyOnEvenSteps:
        return self

    def _take(self, how: str) -> bytes:
        if self._tracker.produced == self._fail_at:
            raise BodyTruncated()
        self._left -= 1
        self._tracker.produced += 1
        self.threads.append((how, threading.get_ident()))
        return b"x" * self._size

    def __next__(self) -> bytes:
        if self._left <= 0:
            raise StopIteration
        return self._take("next")

    def ready(self) -> bytes | None:
        if self._left <= 0:
            return b""
        if self._tracker.produced % 2:
            return None
        return self._take("ready")


async def run(
    response: ObjectResponse,
    method: str = "GET",
    disconnect_after: int | None = None,
    send_suspends: bool = True,
) -> list[Message]:
    sent: list[Message] = []
    gone = anyio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if disconnect_after is not None and len(sent) >= disconnect_after:
            gone.set()
        if send_suspends:  # otherwise like uvicorn's send into a socket with room
            await anyio.sleep(0)

    with anyio.fail_after(10):
        await response({"type": "http", "method": method}, receive, send)
    return sent


@pytest.fixture(params=["sync", "ready", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


def chunks_for(tracker: Tracker, flavor: str, count: int) -> Any:
    if flavor == "ready":
        return tracker.ready_chunks(count)
    return tracker.sync_chunks(count) if flavor == "sync" else tracker.async_chunks(count)


@pytest.mark.anyio
async def test_streams_every_chunk_then_closes(flavor: str) -> None:
    tracker = Tracker()
    response = ObjectResponse(plan_for(12), chunks_for(tracker, flavor, 3), close=tracker.close)
    sent = await run(response)
    assert sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-length", b"12"), (b"content-type", b"video/mp4")],
    }
    assert [m["body"] for m in sent[1:]] == [b"xxxx", b"xxxx", b"xxxx", b""]
    assert [m["more_body"] for m in sent[1:]] == [True, True, True, False]
    assert tracker.closed == 1


@pytest.mark.anyio
async def test_ready_chunks_are_taken_on_the_event_loop_the_rest_in_a_worker_thread() -> None:
    tracker = Tracker()
    chunks = ReadyOnEvenSteps(tracker, 7, 4)
    response = ObjectResponse(plan_for(28), chunks, close=tracker.close)
    sent = await run(response)
    assert b"".join(m["body"] for m in sent[1:]) == b"x" * 28
    loop_thread = threading.get_ident()
    assert [how for how, _ in chunks.threads] == ["ready", "next"] * 3 + ["ready"]
    assert all((thread == loop_thread) == (how == "ready") for how, thread in chunks.threads)
    assert tracker.closed == 1


@pytest.mark.anyio
async def test_head_sends_headers_only_and_never_reads(flavor: str) -> None:
    tracker = Tracker()
    response = ObjectResponse(plan_for(12), chunks_for(tracker, flavor, 3), close=tracker.close)
    sent = await run(response, method="HEAD")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert (tracker.produced, tracker.closed) == (0, 1)


@pytest.mark.anyio
async def test_disconnect_stops_reading_and_closes(flavor: str) -> None:
    tracker = Tracker()
    response = ObjectResponse(
        plan_for(4 * 100_000), chunks_for(tracker, flavor, 100_000), close=tracker.close
    )
    sent = await run(response, disconnect_after=3)
    assert tracker.closed == 1
    assert tracker.produced < 100  # stopped soon after the disconnect, not at the end
    assert sent[-1].get("more_body", True) is True  # the response was never completed


@pytest.mark.anyio
async def test_disconnect_stops_a_stream_that_never_suspends() -> None:
    # A cached local read and a send with room both return at once: the stream must still
    # give the disconnect watcher a turn (it once ran to the end of a 64 MiB object).
    tracker = Tracker()
    response = ObjectResponse(
        plan_for(4 * 100_000), tracker.eager_chunks(100_000), close=tracker.close
    )
    sent = await run(response, disconnect_after=3, send_suspends=False)
    assert tracker.closed == 1
    assert tracker.produced < 100
    assert sent[-1].get("more_body", True) is True


@pytest.mark.anyio
async def test_a_stream_that_never_suspends_lets_other_tasks_run() -> None:
    tracker = Tracker()
    response = ObjectResponse(plan_for(4 * 1000), tracker.eager_chunks(1000), close=tracker.close)
    produced_when_ticked: list[int] = []

    async def ticker() -> None:
        for _ in range(5):
            produced_when_ticked.append(tracker.produced)
            await anyio.sleep(0)

    async with anyio.create_task_group() as group:
        group.start_soon(run, response, "GET", None, False)
        group.start_soon(ticker)
    assert tracker.produced == 1000
    assert max(produced_when_ticked) < 1000  # it ran while the stream was going


@pytest.mark.anyio
async def test_failure_mid_stream_propagates_after_close(flavor: str) -> None:
    tracker = Tracker()

    def failing() -> Iterator[bytes]:
        yield b"abcd"
        raise BodyTruncated()

    async def afailing() -> AsyncIterator[bytes]:
        yield b"abcd"
        raise BodyTruncated()

    chunks: Any = failing() if flavor == "sync" else afailing()
    if flavor == "ready":
        chunks = ReadyOnEvenSteps(tracker, 2, 4, fail_at=1)
    response = ObjectResponse(plan_for(8), chunks, close=tracker.close)
    with pytest.raises(BodyTruncated):
        await run(response)
    assert tracker.closed == 1


@pytest.mark.anyio
async def test_no_body_plan_sends_an_empty_body() -> None:
    tracker = Tracker()
    plan = Plan(status=304, headers=(("etag", '"a"'),))
    sent = await run(ObjectResponse(plan, close=tracker.close))
    assert sent == [
        {"type": "http.response.start", "status": 304, "headers": [(b"etag", b'"a"')]},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    assert tracker.closed == 1


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_literal_body_goes_out_in_one_message(method: str) -> None:
    tracker = Tracker()
    tail = b'{"error":"range_not_satisfiable"}'
    plan = Plan(status=416, headers=(("content-length", str(len(tail))),), tail=tail)
    sent = await run(ObjectResponse(plan, close=tracker.close), method=method)
    assert sent[1:] == [
        {"type": "http.response.body", "body": tail if method == "GET" else b"", "more_body": False}
    ]
    assert tracker.closed == 1


@pytest.mark.anyio
async def test_closes_even_when_the_start_fails() -> None:
    tracker = Tracker()

    async def send(message: Message) -> None:
        raise RuntimeError("boom")

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    with pytest.raises(RuntimeError):
        await ObjectResponse(plan_for(4), [b"abcd"], close=tracker.close)(
            {"type": "http", "method": "GET"}, receive, send
        )
    assert tracker.closed == 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


KIB = 1024


def test_pacer_grows_by_doubling_to_the_maximum_for_a_fast_client() -> None:
    clock = Clock()
    pacer = Pacer(64 * KIB, 1024 * KIB, clock=clock)
    sizes = []
    for _ in range(10_000):  # bounded: a pacer that never grows fails below, not hangs
        if pacer() == 1024 * KIB:
            break
        clock.now += pacer() / 2e9  # the client takes 2 GB/s
        pacer.sent(pacer())
        sizes.append(pacer())
    assert pacer() == 1024 * KIB
    assert clock.now < 0.1  # at the maximum within the first 100 ms
    assert all(b <= 2 * a for a, b in zip(sizes, sizes[1:], strict=False))  # at most doubling
    for _ in range(100):
        clock.now += pacer() / 2e9
        pacer.sent(pacer())
    assert pacer() == 1024 * KIB


def test_pacer_keeps_small_chunks_for_a_slow_client_despite_a_fast_start() -> None:
    clock = Clock()
    pacer = Pacer(64 * KIB, 1024 * KIB, clock=clock)
    sizes = []
    sent = 0
    while sent < 8 * 1024 * KIB:  # socket buffers take the first MBs at once (~4 measured)
        clock.now += 0.0001
        sent += pacer()
        pacer.sent(pacer())
        sizes.append(pacer())
    for _ in range(100):  # then the client takes 64 KiB every 10 ms
        clock.now += 0.01 * pacer() / (64 * KIB)
        pacer.sent(pacer())
        sizes.append(pacer())
    assert max(sizes) == 64 * KIB  # the burst never raised the chunk size


@pytest.mark.parametrize("rate", [20e6, 50e6, 100e6])
def test_pacer_aims_at_what_the_client_takes_in_the_pace_interval(rate: float) -> None:
    clock = Clock()
    pacer = Pacer(64 * KIB, 16 * 1024 * KIB, clock=clock)
    for _ in range(400):
        size = pacer()
        clock.now += size / rate
        pacer.sent(size)
    assert abs(pacer() - rate * PACE_SECONDS) <= 64 * KIB


@pytest.mark.anyio
async def test_object_response_tells_the_pacer_every_chunk_sent() -> None:
    tracker = Tracker()
    pacer = Pacer(4, 4096)
    response = ObjectResponse(
        plan_for(4 * 10), tracker.async_chunks(10), close=tracker.close, pacer=pacer
    )
    await run(response)
    assert pacer._sent == 40


class FakeFile:
    """A body with ``fileno()``: what ``FileChunks`` carries for a zero-copy send."""

    def __init__(self, cached: bool = True) -> None:
        self._cached = cached
        self.loads: list[tuple[int, int, bool]] = []  # offset, count, on the loop's thread

    def fileno(self) -> int:
        return 42

    def cached(self, offset: int, count: int) -> bool:
        return self._cached

    def load(self, offset: int, count: int) -> None:
        self.loads.append((offset, count, threading.get_ident() == LOOP_THREAD[0]))


LOOP_THREAD = [0]
ZERO_COPY_SCOPE = {"type": "http", "method": "GET", "extensions": {ZERO_COPY: {}}}


async def run_zero_copy(
    response: ObjectResponse, scope: dict[str, Any], fail: BaseException | None = None
) -> list[Message]:
    sent: list[Message] = []
    gone = anyio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if fail is not None and message["type"] == ZERO_COPY:
            raise fail
        if len(sent) >= 3 and scope.get("leave"):
            gone.set()
        await anyio.sleep(0)

    with anyio.fail_after(10):
        await response(scope, receive, send)
    return sent


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_a_file_goes_as_zero_copy_sends_when_the_server_offers_them(flavor: str) -> None:
    tracker = Tracker()
    size = 2 * ZERO_COPY_STEP + 5
    inner = chunks_for(tracker, flavor, 3)
    response = ObjectResponse(plan_for(size), FileChunks(inner, FakeFile()), close=tracker.close)
    sent = await run_zero_copy(response, ZERO_COPY_SCOPE)
    steps = [(m["offset"], m["count"]) for m in sent if m["type"] == ZERO_COPY]
    assert steps == [(0, ZERO_COPY_STEP), (ZERO_COPY_STEP, ZERO_COPY_STEP), (2 * ZERO_COPY_STEP, 5)]
    assert all(m["file"] == 42 and m["more_body"] for m in sent if m["type"] == ZERO_COPY)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert (tracker.produced, tracker.closed) == (0, 1)  # the chunks were never read


@pytest.mark.anyio
async def test_multipart_parts_frame_zero_copy_bodies() -> None:
    tracker = Tracker()
    plan = Plan(
        status=206,
        headers=(("content-length", "99"),),
        parts=(Part(b"--a\r\n\r\n", ByteRange(0, 10)), Part(b"\r\n--a\r\n\r\n", ByteRange(50, 60))),
        tail=b"\r\n--a--\r\n",
    )
    chunks = FileChunks(tracker.async_chunks(3), FakeFile())
    sent = await run_zero_copy(ObjectResponse(plan, chunks, close=tracker.close), ZERO_COPY_SCOPE)
    shape = [
        (m["type"], m.get("body", (m.get("offset"), m.get("count"))), m["more_body"])
        for m in sent[1:]
    ]
    assert shape == [
        ("http.response.body", b"--a\r\n\r\n", True),
        (ZERO_COPY, (0, 10), True),
        ("http.response.body", b"\r\n--a\r\n\r\n", True),
        (ZERO_COPY, (50, 10), True),
        ("http.response.body", b"\r\n--a--\r\n", False),
    ]
    assert tracker.closed == 1


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", ["sync", "ready", "async"])
async def test_without_the_extension_a_file_is_streamed(flavor: str) -> None:
    tracker = Tracker()
    chunks = FileChunks(chunks_for(tracker, flavor, 3), FakeFile())
    response = ObjectResponse(plan_for(12), chunks, close=tracker.close)
    sent = await run(response)
    assert [m["body"] for m in sent[1:]] == [b"xxxx", b"xxxx", b"xxxx", b""]
    assert tracker.closed == 1


@pytest.mark.anyio
async def test_a_file_that_ends_early_in_a_zero_copy_send_is_a_truncated_body() -> None:
    tracker = Tracker()
    chunks = FileChunks(tracker.async_chunks(3), FakeFile())
    response = ObjectResponse(plan_for(12), chunks, close=tracker.close)
    with pytest.raises(BodyTruncated):
        await run_zero_copy(response, ZERO_COPY_SCOPE, fail=EOFError("short"))
    assert tracker.closed == 1


@pytest.mark.anyio
async def test_a_client_gone_during_zero_copy_sends_stops_them() -> None:
    tracker = Tracker()
    chunks = FileChunks(tracker.async_chunks(3), FakeFile())
    response = ObjectResponse(plan_for(100 * ZERO_COPY_STEP), chunks, close=tracker.close)
    sent = await run_zero_copy(response, {**ZERO_COPY_SCOPE, "leave": True})
    assert len(sent) < 10  # stopped soon after the disconnect
    assert sent[-1].get("more_body", True) is True
    assert tracker.closed == 1


@pytest.mark.anyio
async def test_a_step_the_page_cache_lacks_is_loaded_in_a_worker_thread_first() -> None:
    LOOP_THREAD[0] = threading.get_ident()
    tracker = Tracker()
    file = FakeFile(cached=False)
    size = ZERO_COPY_STEP + 7
    response = ObjectResponse(
        plan_for(size), FileChunks(tracker.async_chunks(3), file), close=tracker.close
    )
    sent = await run_zero_copy(response, ZERO_COPY_SCOPE)
    assert file.loads == [(0, ZERO_COPY_STEP, False), (ZERO_COPY_STEP, 7, False)]
    assert [m["count"] for m in sent if m["type"] == ZERO_COPY] == [ZERO_COPY_STEP, 7]
