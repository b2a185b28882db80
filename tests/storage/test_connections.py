"""``Connections`` and ``AsyncConnections`` against real loopback servers: keep-alive, framing,
truncation, timeouts, stale connections, TLS verification. Each server is a thread per
connection running a scripted handler."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

import pytest

from proxy.storage.connections import (
    AsyncConnections,
    AsyncReply,
    Connections,
    Reply,
    deadline,
)
from proxy.storage.errors import BodyTruncated
from tests.loopback import Listener, self_signed, threaded_server


@dataclass
class Site:
    url: str = ""
    listener: Listener | None = None
    requests: list[bytes] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return 0 if self.listener is None else self.listener.connections


Handler = Callable[[socket.socket, Site], None]


def read_request(sock: socket.socket, site: Site) -> bool:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        received += chunk
    site.requests.append(received)
    return True


def reply(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@contextlib.contextmanager
def site(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[Site]:
    state = Site()

    def serve(sock: socket.socket) -> None:
        with sock, contextlib.suppress(OSError):  # ssl.SSLError included: a refused handshake
            if tls is not None:
                with tls.wrap_socket(sock, server_side=True) as secure:
                    handler(secure, state)
            else:
                handler(sock, state)

    with threaded_server(serve) as listener:
        state.listener = listener
        state.url = f"{'http' if tls is None else 'https'}://127.0.0.1:{listener.port}"
        yield state


def connections(url: str, read_timeout: float = 5.0) -> Connections:
    return Connections(url, keep=4, connect_timeout=2.0, read_timeout=read_timeout)


BODY = os.urandom(300_000)
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


def keep_alive(sock: socket.socket, s: Site) -> None:
    for _ in range(100):
        if not read_request(sock, s):
            return
        sock.sendall(reply(BODY, extra='ETag: "e"\r\n'))


def read_all(answer: object, size: int) -> bytes:
    parts = []
    while chunk := answer.read(size):  # type: ignore[attr-defined]
        parts.append(chunk)
    return b"".join(parts)


def test_threads_share_one_pool() -> None:
    results: list[bool] = []

    def fetch(pool: Connections) -> None:
        for _ in range(5):
            answer = pool.get("/a", {})
            results.append(read_all(answer, 65536) == BODY)
            answer.close()

    with site(keep_alive) as s:
        pool = connections(s.url)
        threads = [threading.Thread(target=fetch, args=(pool,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        pool.close()
    assert results == [True] * 20
    assert s.connections <= 4 + 4  # kept ones reused; never one per request


def test_a_deadline_bounds_the_wait_for_the_head_not_the_body() -> None:
    """Within an exchange's deadline, the head is awaited at most until it; the body's reads
    then wait the read timeout each, however little of the deadline is left."""
    pause = threading.Event()

    def slow_head_then_slow_body(sock: socket.socket, s: Site) -> None:
        if not read_request(sock, s):
            return
        if len(s.requests) == 1:
            pause.wait(10)  # no head: the first request's deadline passes
            return
        head, body = reply(BODY)[: -len(BODY)], BODY
        sock.sendall(head)
        time.sleep(1.0)  # longer than the deadline, shorter than the read timeout
        sock.sendall(body)

    with site(slow_head_then_slow_body) as s:
        pool = connections(s.url, read_timeout=5.0)
        started = time.monotonic()
        with deadline(0.5), pytest.raises(TimeoutError):
            pool.get("/stalled", {})
        assert 0.4 < time.monotonic() - started < 3
        pause.set()
        with deadline(0.5):
            answer = pool.get("/slow-body", {})
        assert read_all(answer, 65536) == BODY
        answer.close()
        pool.close()


def test_an_origin_is_http_or_https() -> None:
    for bad in ["ftp://host", "http://", "host:80"]:
        with pytest.raises(ValueError):
            Connections(bad, keep=1, connect_timeout=1, read_timeout=1)


def test_read_ready_reads_only_what_the_socket_holds() -> None:
    """The event loop's read: bytes only when the socket holds at least half of those asked for
    (then up to all of them), None at once when a read would wait; plain reads go on after."""
    release = threading.Event()
    sent_first = 90_000

    def in_two_parts(sock: socket.socket, s: Site) -> None:
        if read_request(sock, s):
            sock.sendall(reply(BODY)[: -len(BODY) + sent_first])
            release.wait(10)
            sock.sendall(BODY[sent_first:])
            read_request(sock, s)  # until the client hangs up

    with site(in_two_parts) as s:
        pool = connections(s.url)
        answer = pool.get("/a", {})
        time.sleep(0.1)  # the first part arrives
        first = answer.read_ready(65536)
        assert first == BODY[:65536]
        started = time.monotonic()
        assert answer.read_ready(65536) is None  # under 24,464 bytes held: it would wait
        # A read that waits would take the 5 s read timeout: 2 s leaves the shared machine room.
        assert time.monotonic() - started < 2.0
        second = answer.read_ready(30_000) or b""  # over half of these: what is there
        assert 0 < len(second) <= sent_first - 65536
        assert second == BODY[65536 : 65536 + len(second)]
        release.set()
        rest = read_all(answer, 65536)
        assert first + second + rest == BODY
        assert answer.read_ready(65536) is None  # the body's end
        answer.close()
        pool.close()


def test_ready_and_blocking_reads_take_turns_and_keep_the_connection() -> None:
    """What the proxy does: a ready read when the socket holds a chunk, a blocking one (in a
    worker thread) when not. A new connection's receive buffer (~128 KiB) can stall below a
    64 KiB chunk until the reader takes more: then the blocking read goes on."""
    with site(keep_alive) as s:
        pool = connections(s.url)
        for _ in range(2):
            answer = pool.get("/a", {})
            parts: list[bytes] = []
            ready = 0
            time.sleep(0.05)  # the server fills the socket
            while True:
                part = answer.read_ready(65536)
                if part is None:
                    part = answer.read(65536)
                    if not part:
                        break
                else:
                    ready += 1
                parts.append(part)
            assert b"".join(parts) == BODY
            assert ready >= 1 and all(len(part) <= 65536 for part in parts)
            answer.close()
        pool.close()
    assert s.connections == 1  # the connection went back whole after each body


# AsyncConnections, the event loop's twin: the same servers, on asyncio's loop and on uvloop
# (the proxy's).


KINDS = {"blocking": {}, "asyncio": {}, "uvloop": {"use_uvloop": True}}


@pytest.fixture(params=list(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    """Which pool: ``Connections`` (each call in a worker thread) or ``AsyncConnections`` on
    asyncio's loop or on uvloop (the proxy's)."""
    return str(request.param)


@pytest.fixture
def anyio_backend(kind: str) -> object:
    return ("asyncio", KINDS[kind])


class BlockingReply:
    """A ``Reply`` behind ``AsyncReply``'s interface."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.status, self.headers, self.framed = reply.status, reply.headers, reply.framed

    async def read(self, size: int) -> bytes:
        return await asyncio.to_thread(self.reply.read, size)

    def close(self) -> None:
        self.reply.close()


class Blocking:
    """``Connections`` behind ``AsyncConnections``' interface."""

    def __init__(self, pool: Connections) -> None:
        self.pool = pool

    async def get(self, target: str, headers: dict[str, str]) -> BlockingReply:
        return BlockingReply(await asyncio.to_thread(self.pool.get, target, headers))

    def close(self) -> None:
        self.pool.close()


Pool = AsyncConnections | Blocking
MakePool = Callable[..., Pool]


@pytest.fixture
def make_pool(kind: str) -> MakePool:
    def make(
        url: str, read_timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None
    ) -> Pool:
        kind_of_pool = Connections if kind == "blocking" else AsyncConnections
        pool = kind_of_pool(url, 4, 2.0, read_timeout, ssl_context)
        return Blocking(pool) if isinstance(pool, Connections) else pool

    return make


async def aread_all(answer: AsyncReply | BlockingReply, size: int) -> bytes:
    parts: list[bytes] = []
    while chunk := await answer.read(size):
        assert len(chunk) == size or len(b"".join(parts) + chunk) == int(
            answer.headers.get("content-length") or 0
        )  # whole chunks but the last
        parts.append(chunk)
    return b"".join(parts)


def no_watchers() -> None:
    """Nothing of the replies' is still registered with the event loop."""
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    if selector is not None:  # asyncio's loop: uvloop keeps its handles to itself
        assert not selector.get_map() or all(
            key.fileobj == loop._ssock.fileno()  # type: ignore[attr-defined]
            for key in selector.get_map().values()
        )


@pytest.mark.anyio
async def test_connections_are_kept_alive_and_bodies_arrive_whole(make_pool: MakePool) -> None:
    with site(keep_alive) as s:
        pool = make_pool(s.url)
        for size in (65536, 1 << 20, 7):
            answer = await pool.get("/bucket/key?X-Amz-Signature=abc", {"Range": "bytes=0-"})
            assert (answer.status, answer.framed) == (200, True)
            assert answer.headers.get("ETag") == answer.headers.get("etag") == '"e"'
            assert await aread_all(answer, size) == BODY
            answer.close()
            answer.close()  # once only
        no_watchers()
        pool.close()
    assert s.connections == 1
    assert s.requests[0].startswith(b"GET /bucket/key?X-Amz-Signature=abc HTTP/1.1\r\n")
    assert f"Host: {s.url.removeprefix('http://')}\r\n".encode() in s.requests[0]
    assert b"Range: bytes=0-\r\n" in s.requests[0]


@pytest.mark.anyio
async def test_a_body_left_unread_closes_its_connection(make_pool: MakePool) -> None:
    with site(keep_alive) as s:
        pool = make_pool(s.url)
        answer = await pool.get("/a", {})
        assert await answer.read(1000) == BODY[:1000]
        answer.close()
        answer = await pool.get("/a", {})
        assert await aread_all(answer, 65536) == BODY
        answer.close()
        pool.close()
    assert s.connections == 2


@pytest.mark.anyio
async def test_a_connection_the_server_closed_while_idle_is_replaced(make_pool: MakePool) -> None:
    def once(sock: socket.socket, s: Site) -> None:
        if read_request(sock, s):
            sock.sendall(reply(b"hello"))  # then closes without saying so

    with site(once) as s:
        pool = make_pool(s.url)
        for _ in range(3):
            answer = await pool.get("/a", {})
            assert await aread_all(answer, 5) == b"hello"
            answer.close()
            await asyncio.sleep(0.05)
        pool.close()
    assert s.connections == 3


@pytest.mark.anyio
async def test_connection_close_and_unframed_bodies_are_not_reused(make_pool: MakePool) -> None:
    def unframed(sock: socket.socket, s: Site) -> None:
        while read_request(sock, s):
            if len(s.requests) == 1:
                sock.sendall(reply(b"bye", extra="Connection: close\r\n"))
                return
            sock.sendall(CHUNKED)

    with site(unframed) as s:
        pool = make_pool(s.url)
        answer = await pool.get("/a", {})
        assert await aread_all(answer, 3) == b"bye"
        answer.close()
        answer = await pool.get("/a", {})
        assert (answer.status, answer.framed) == (200, False)  # the caller refuses it
        answer.close()
        pool.close()
    assert s.connections == 2


@pytest.mark.anyio
async def test_a_body_cut_short_raises_body_truncated(make_pool: MakePool) -> None:
    def cut(sock: socket.socket, s: Site) -> None:
        if read_request(sock, s):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)

    with site(cut) as s:
        pool = make_pool(s.url)
        answer = await pool.get("/a", {})
        with pytest.raises(BodyTruncated):
            while await answer.read(100):  # the blocking reply returns the 50 bytes first
                pass
        answer.close()
        pool.close()
    assert s.connections == 1


@pytest.mark.anyio
async def test_silence_times_out(make_pool: MakePool) -> None:
    release = threading.Event()

    def stall(sock: socket.socket, s: Site) -> None:
        if read_request(sock, s):
            if len(s.requests) == 2:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")
            release.wait(10)

    with site(stall) as s:
        pool = make_pool(s.url, read_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # no reply at all
            await pool.get("/a", {})
        answer = await pool.get("/a", {})  # a head, then silence
        assert await answer.read(2) == b"xx"
        with pytest.raises(TimeoutError):
            await answer.read(98)
        answer.close()
        assert time.monotonic() - started < 3
        no_watchers()
        release.set()
        pool.close()


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"], indirect=True)
async def test_a_cancelled_read_leaves_nothing_behind(make_pool: MakePool) -> None:
    """A client that hangs up cancels the stream's read: no watcher left, the socket closed."""
    release = threading.Event()
    closed = threading.Event()

    def stall(sock: socket.socket, s: Site) -> None:
        if read_request(sock, s):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")
            release.wait(10)
            if sock.recv(1) == b"":
                closed.set()

    with site(stall) as s:
        pool = make_pool(s.url)
        answer = await pool.get("/a", {})
        reading = asyncio.ensure_future(answer.read(100))
        await asyncio.sleep(0.1)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        no_watchers()
        answer.close()
        release.set()
        assert await asyncio.to_thread(closed.wait, 5)
        pool.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
    ],
    ids=["not-http", "bad-status", "endless-head"],
)
async def test_what_is_not_http_raises(make_pool: MakePool, garbage: bytes) -> None:
    def babble(sock: socket.socket, s: Site) -> None:
        if read_request(sock, s):
            sock.sendall(garbage)
            time.sleep(0.5)

    with site(babble) as s, pytest.raises((HTTPException, OSError)):
        await make_pool(s.url).get("/a", {})


@pytest.mark.anyio
async def test_an_unreachable_origin_is_an_os_error(make_pool: MakePool) -> None:
    with site(keep_alive) as s:
        url = s.url
    with pytest.raises(OSError):
        await make_pool(url).get("/a", {})


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"], indirect=True)
async def test_tasks_share_one_pool(make_pool: MakePool) -> None:
    async def fetch(pool: Pool) -> list[bool]:
        results = []
        for _ in range(5):
            answer = await pool.get("/a", {})
            results.append(await aread_all(answer, 65536) == BODY)
            answer.close()
        return results

    with site(keep_alive) as s:
        pool = make_pool(s.url)
        results = await asyncio.gather(*(fetch(pool) for _ in range(4)))
        pool.close()
    assert results == [[True] * 5] * 4
    assert s.connections <= 4 + 4  # kept ones reused; never one per request


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"], indirect=True)
async def test_a_body_that_came_with_the_head_is_read_first(make_pool: MakePool) -> None:
    """Bytes that arrived with the head, a reply whose body is empty, and one that sent more
    than its length (never reused)."""

    def replies(sock: socket.socket, s: Site) -> None:
        while read_request(sock, s):
            if len(s.requests) == 1:
                sock.sendall(reply(b"abc") + b"")
            elif len(s.requests) == 2:
                sock.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n')
            elif len(s.requests) == 3:
                sock.sendall(reply(b"abc") + b"surplus")  # in one segment with the head
            else:
                sock.sendall(reply(b"new"))

    with site(replies) as s:
        pool = make_pool(s.url)
        answer = await pool.get("/a", {})
        assert (await answer.read(2), await answer.read(2), await answer.read(2)) == (
            b"ab",
            b"c",
            b"",
        )
        answer.close()
        answer = await pool.get("/a", {})
        assert (answer.status, await answer.read(10)) == (304, b"")
        answer.close()
        answer = await pool.get("/a", {})
        assert await aread_all(answer, 3) == b"abc"
        answer.close()  # the surplus makes the connection unusable
        answer = await pool.get("/a", {})
        assert await aread_all(answer, 3) == b"new"
        answer.close()
        pool.close()
    assert (s.connections, len(s.requests)) == (2, 4)


@pytest.mark.anyio
async def test_https_origins_are_verified_with_the_given_authorities(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pem = self_signed(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(pem)
    with site(keep_alive, tls=server_side) as s:
        pool = make_pool(s.url, ssl_context=ssl.create_default_context(cafile=str(pem)))
        for size in (65536, 1 << 20):
            answer = await pool.get("/a", {})
            if isinstance(answer, BlockingReply):
                await asyncio.sleep(0.05)  # the body arrives, but the kernel counts encrypted bytes
                assert answer.reply.read_ready(1024) is None
            assert await aread_all(answer, size) == BODY
            answer.close()
        pool.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await make_pool(s.url).get("/a", {})  # the system's authorities
        no_watchers()
    assert s.connections == 2  # one kept alive for both GETs, one refused


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"], indirect=True)
async def test_reply_heads_are_read_as_rfc_9112_says(make_pool: MakePool) -> None:
    """Folded lines join their field with a space, repeated fields join with a comma, names
    match in any case; a fold with no field before it, or a line without a colon, is not HTTP
    (the caller then asks botocore)."""
    heads = [
        b"HTTP/1.1 200 OK\r\nX-A: one\r\n  two\r\nx-b: 1\r\nX-B: 2\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: field\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\nContent-Length: 0\r\n\r\n",
    ]

    def replies(sock: socket.socket, s: Site) -> None:
        while read_request(sock, s):
            sock.sendall(heads[len(s.requests) - 1])

    with site(replies) as s:
        pool = make_pool(s.url)
        answer = await pool.get("/a", {})
        assert (answer.headers.get("x-a"), answer.headers.get("X-b")) == ("one two", "1, 2")
        answer.close()
        for _ in heads[1:]:
            with pytest.raises(HTTPException):
                await pool.get("/a", {})
        pool.close()
