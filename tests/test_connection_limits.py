"""Bounded request heads, the header deadline and the connection cap (issue 29, item 3).

At the socket, under both uvicorn parsers (and both event loops where reads differ): a head
past ``PROXY_MAX_REQUEST_HEAD`` gets 431 (414 for the request line) and the connection closes
without the server buffering it (a 64 MiB head leaves its memory as it was); a head must come
within ``PROXY_HEADER_TIMEOUT`` of the connection or of the previous response (300 slowloris
connections all closed within that + 2 s while /healthz keeps answering); beyond
``PROXY_MAX_CONNECTIONS`` new connections get 503 and close.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.server import uvicorn_options
from tests.conftest import (
    MediaTree,
    RunningServer,
    StartServer,
    free_port,
    settings_for,
    wait_healthy,
)
from tests.rawhttp import parse, read_until_closed

PARSERS = ["h11", "httptools"]
LOOPS = ["asyncio", "uvloop"]
MAX_HEAD = 64 * 1024  # the default
TIMEOUT = 2.0  # PROXY_HEADER_TIMEOUT in these tests
SLOWLORIS = 300


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response on a kept-alive connection: its status and body (Content-Length framed)."""
    raw = b""
    for _ in range(1000):
        if b"\r\n\r\n" in raw:
            break
        chunk = sock.recv(65536)
        assert chunk, "closed before the end of the head"
        raw += chunk
    status, headers, body = parse(raw)
    length = int(headers["content-length"])
    for _ in range(1000):
        if len(body) >= length:
            break
        chunk = sock.recv(65536)
        assert chunk, "closed before the end of the body"
        body += chunk
    return status, body


def assert_json_error(raw: bytes, status: int) -> dict[str, str]:
    code, headers, body = parse(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error: dict[str, str] = json.loads(body)
    assert set(error) == {"error", "detail"}
    return error


@pytest.fixture(
    scope="module",
    params=[(h, loop) for h in PARSERS for loop in LOOPS],
    ids=[f"{h}-{loop}" for h in PARSERS for loop in LOOPS],
)
def limited(request: pytest.FixtureRequest, media: MediaTree, serve: StartServer) -> RunningServer:
    http, loop = request.param
    return serve(settings_for(media, "async", http=http, loop=loop, header_timeout=TIMEOUT))


def send_head(port: int, head: bytes) -> bytes:
    """Send ``head`` (as much as the server takes) and read its answer until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and stopped reading: its answer is still to be read
        return read_until_closed(sock)


def test_header_fields_past_the_limit_get_431(limited: RunningServer) -> None:
    field = b"X-Big: " + b"a" * MAX_HEAD + b"\r\n"
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + field + b"\r\n"
    error = assert_json_error(send_head(limited.port, head), 431)
    assert error["error"] == "request_header_fields_too_large"


def test_many_small_fields_past_the_limit_get_431(limited: RunningServer) -> None:
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(2000))  # ~120 KB
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    assert_json_error(send_head(limited.port, head), 431)


def test_a_request_line_past_the_limit_gets_414(limited: RunningServer) -> None:
    head = b"GET /objects/" + b"a" * MAX_HEAD + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    error = assert_json_error(send_head(limited.port, head), 414)
    assert error["error"] == "uri_too_long"


def test_a_head_just_under_the_limit_is_served(limited: RunningServer) -> None:
    start = b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    filler = b"X-Fill: " + b"f" * (MAX_HEAD - len(start) - 12) + b"\r\n"
    head = start + filler + b"\r\n"
    assert len(head) <= MAX_HEAD
    code, _, body = parse(send_head(limited.port, head))
    assert (code, body) == (200, b"hello world\n")


@pytest.mark.parametrize(
    ("start", "status"),
    [(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", 431), (b"GET /objects/", 414)],
    ids=["fields", "request line"],
)
def test_a_head_over_the_limit_in_small_reads_is_refused(
    limited: RunningServer, start: bytes, status: int
) -> None:
    """The limit counts across reads: 1 KiB pieces, each read on its own."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(start)
        try:
            for _ in range(MAX_HEAD // 1024 + 8):
                sock.sendall(b"b" * 1024)
                time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert_json_error(read_until_closed(sock), status)


@pytest.fixture(params=PARSERS)
def subprocess_proxy(
    request: pytest.FixtureRequest, media: MediaTree, tmp_path: Path
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """``python -m proxy`` on its own (memory and scheduling of its own), header timeout 2 s."""
    port = free_port()
    env = dict(
        os.environ,
        PROXY_HTTP=request.param,
        PROXY_LOCAL_ROOT=str(media.root),
        PROXY_PORT=str(port),
        PROXY_LOG_LEVEL="warning",
        PROXY_ACCESS_LOG="false",
        PROXY_HEADER_TIMEOUT=str(TIMEOUT),
    )
    process = subprocess.Popen([sys.executable, "-m", "proxy"], env=env, cwd=tmp_path)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield request.param, port, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_64_mib_head_leaves_the_servers_memory_as_it_was(
    subprocess_proxy: tuple[str, int, subprocess.Popen[bytes]],
) -> None:
    """uvicorn with httptools buffered it all (RSS +92 to 126 MB); h11 answered 400 in plain
    text. Now the parser never sees more than the limit: peak RSS barely moves."""
    _, port, process = subprocess_proxy
    for _ in range(3):  # warm: the first requests import and allocate what later ones reuse
        assert httpx.get(f"http://127.0.0.1:{port}/objects/hello.txt").status_code == 200
    before = memory_kib(process.pid, "VmRSS")
    piece = b"a" * (1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            for _ in range(64):
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before it all went
        answer = read_until_closed(sock)
    assert_json_error(answer, 431)
    assert sent < 64 * len(piece)  # the server stopped reading: the client could not send it all
    peak = memory_kib(process.pid, "VmHWM")
    assert peak - before < 16 * 1024, (before, peak)  # KiB: nowhere near the 64 MiB


def test_slowloris_connections_are_closed_on_time_while_healthz_answers(
    subprocess_proxy: tuple[str, int, subprocess.Popen[bytes]],
) -> None:
    """300 connections each send part of a head and then a byte now and then: every one is
    closed within the header timeout + 2 s of its start (408), and /healthz answers meanwhile.

    The closing times are the issue's bounds. /healthz, as in test_s3's slow-reader test: a loop
    held up by the slow heads would delay every answer, so the median must be under 100 ms and
    none may take a second; the slowest few are the shared machine's scheduling (3 of 20 took
    0.15-0.28 s once while another test run shared the cores)."""
    _, port, _ = subprocess_proxy
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closed: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = {}
    try:
        for _ in range(SLOWLORIS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sock.setblocking(False)
            opened[sock] = time.monotonic()
            answers[sock] = b""
            selector.register(sock, selectors.EVENT_READ, data=sock)
        latencies: list[float] = []

        def measure() -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                for _ in range(20):
                    started = time.perf_counter()
                    assert client.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.05)

        measurer = threading.Thread(target=measure)
        measurer.start()
        deadline = max(opened.values()) + TIMEOUT + 4
        next_trickle = time.monotonic() + 0.5
        while len(closed) < SLOWLORIS and time.monotonic() < deadline:  # bounded in time
            for key, _ in selector.select(timeout=0.05):
                sock = key.data
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                answers[sock] += chunk
                if not chunk:
                    closed[sock] = time.monotonic()
                    selector.unregister(sock)
            if time.monotonic() >= next_trickle:  # one more byte on each open connection
                next_trickle += 0.5
                for sock in opened.keys() - closed.keys():
                    try:
                        sock.send(b"s")
                    except OSError:
                        pass  # closed: the reader above sees it
        measurer.join(timeout=30)
    finally:
        selector.close()
        for sock in opened:
            sock.close()
    assert len(closed) == SLOWLORIS
    late = [closed[s] - opened[s] for s in closed if closed[s] - opened[s] > TIMEOUT + 2]
    assert not late, late
    early = [closed[s] - opened[s] for s in closed if closed[s] - opened[s] < TIMEOUT - 0.5]
    assert not early, early  # the deadline, not something else, closed them
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers.values())
    assert len(latencies) == 20
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 1.0, latencies


def test_a_connection_that_sends_nothing_is_closed(limited: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # closed without a word: no request began
        assert TIMEOUT - 0.5 <= time.monotonic() - started < TIMEOUT + 2


def test_a_slow_head_within_the_deadline_is_served(limited: RunningServer) -> None:
    head = b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(0, len(head), 8):  # about 0.5 s in all: well within 2 s
            sock.sendall(head[index : index + 8])
            time.sleep(0.05)
        code, _, body = parse(read_until_closed(sock))
    assert (code, body) == (200, b"hello world\n")


def test_the_deadline_runs_from_the_previous_response(limited: RunningServer) -> None:
    """Keep-alive: a response, 1 s of quiet, then a head that trickles in. The deadline runs
    from the end of the response (not from the new head's first byte): 408 about 2 s after."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock) == (200, b"hello world\n")
        answered = time.monotonic()
        time.sleep(1.0)
        sock.sendall(b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(0.2)
        received = b""
        for _ in range(40):  # bounded: 40 × (0.2 s wait + a byte) is past any deadline here
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                try:
                    sock.sendall(b"X")
                except OSError:
                    break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        closed = time.monotonic() - answered
    assert_json_error(received, 408)
    assert TIMEOUT - 0.5 <= closed < TIMEOUT + 2, closed


def test_a_second_request_on_a_kept_connection_is_served(limited: RunningServer) -> None:
    """The deadline is per head: a connection that keeps sending whole requests stays open."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        for _ in range(4):  # 4 × 0.8 s: longer than the deadline in all
            sock.sendall(b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock) == (200, b"hello world\n")
            time.sleep(0.8)


@pytest.mark.parametrize("http", PARSERS)
def test_connections_past_the_cap_get_503(media: MediaTree, serve: StartServer, http: str) -> None:
    server = serve(settings_for(media, "async", http=http, max_connections=8))
    request = b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(8)]
    try:
        for sock in held:  # each answered: each accepted, open and counted
            sock.sendall(request)
            assert read_response(sock) == (200, b"hello world\n")
        for _ in range(3):
            error = assert_json_error(send_head(server.port, request), 503)
            assert error["error"] == "too_many_connections"
        extra = send_head(server.port, request)
        assert parse(extra)[1]["retry-after"] == "1"
        held[0].sendall(request)  # the counted ones still work
        assert read_response(held[0]) == (200, b"hello world\n")
        held.pop().close()
        deadline = time.monotonic() + 5
        answer = b""
        while time.monotonic() < deadline:  # the server hears of the close a moment later
            answer = send_head(
                server.port, request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            )
            if parse(answer)[0] == 200:
                break
            time.sleep(0.05)
        assert parse(answer)[0] == 200
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("http", PARSERS)
def test_a_pipelined_head_past_the_limit_never_cuts_into_the_answer_before_it(
    media: MediaTree, serve: StartServer, http: str
) -> None:
    """A request, then at once a second one with a head past the limit: the first answer goes
    out whole and unbroken, then the connection closes (with a 431 after it, or none)."""
    server = serve(settings_for(media, "async", http=http))
    data = media.data("video/clip.mp4")
    first = b"GET /objects/video/clip.mp4 HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(first + second)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = read_until_closed(sock)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    body, after = rest[: len(data)], rest[len(data) :]
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    if after:
        assert_json_error(after, 431)


def test_the_protocol_pickles_for_several_workers(media: MediaTree) -> None:
    """PROXY_WORKERS > 1: uvicorn sends its Config, the protocol with it, to each worker."""
    options = uvicorn_options(settings_for(media, "async", max_connections=7))
    factory = pickle.loads(pickle.dumps(options["http"]))
    assert factory.keywords["limits"].max_connections == 7
