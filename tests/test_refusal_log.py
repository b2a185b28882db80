"""Requests the connection layer refuses before the app sees them (``proxy.connection``: 400,
408, 414, 431, 503, 505) are in the access log and the metrics, as nginx logs the 400s and
408s it answers itself: one line each, outcome ``refused``, the bytes of the answer sent, and
``proxy_requests_total`` under the route ``unmatched``. Under both parsers, at the socket.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import MediaTree, RunningServer, StartServer, settings_for
from tests.rawhttp import parse, read_until_closed
from tests.test_observability import metric

PARSERS = ["h11", "httptools"]
TIMEOUT = 1.0  # PROXY_HEADER_TIMEOUT here
BIG_FIELD = b"X-Big: " + b"a" * (64 * 1024) + b"\r\n"


@pytest.fixture(scope="module", params=PARSERS)
def proxy(request: pytest.FixtureRequest, media: MediaTree, serve: StartServer) -> RunningServer:
    return serve(settings_for(media, "async", http=request.param, header_timeout=TIMEOUT))


def send(port: int, head: bytes) -> bytes:
    """Send ``head`` (as much as the server takes); its answer, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(sock)


def counted(proxy: RunningServer, method: str, status: int) -> float:
    text = httpx.get(f"{proxy.url}/metrics", timeout=10).text
    labels = {"route": "unmatched", "method": method, "status": str(status)}
    return metric(text, "proxy_requests_total", **labels)


def refused_lines(lines: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in lines if line["outcome"] == "refused"]


@pytest.mark.parametrize(
    ("head", "method", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + BIG_FIELD + b"\r\n", "GET", 431),
        (b"HEAD /objects/" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", "HEAD", 414),
        (b"PUT /objects/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "PUT", 400),
        (b"GET /objects/a HTTP/2.0\r\nHost: x\r\n\r\n", "GET", 505),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", None, 400),  # a TLS hello
    ],
    ids=["431", "414", "400", "505", "not http"],
)
def test_a_refused_head_is_logged_and_counted(
    proxy: RunningServer,
    access_lines: list[dict[str, object]],
    head: bytes,
    method: str | None,
    status: int,
) -> None:
    label = method or "other"
    before = counted(proxy, label, status)
    answer = send(proxy.port, head)
    assert parse(answer)[0] == status
    [line] = refused_lines(access_lines)
    assert line["status"] == status
    assert line["method"] == method
    assert line["bytes_sent"] == len(answer)
    assert (line["path"], line["key"], line["range"], line["ttfb_ms"]) == (None, None, None, None)
    assert line["aborted"] is False and line["client_aborted"] is False
    assert isinstance(line["request_id"], str) and line["request_id"]
    assert counted(proxy, label, status) == before + 1


def test_a_head_past_its_deadline_is_logged_as_408(
    proxy: RunningServer, access_lines: list[dict[str, object]]
) -> None:
    before = counted(proxy, "GET", 408)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\n")  # never ends
        answer = read_until_closed(sock)
    assert parse(answer)[0] == 408
    [line] = refused_lines(access_lines)
    assert (line["status"], line["method"], line["bytes_sent"]) == (408, "GET", len(answer))
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= TIMEOUT * 1000 / 2
    assert counted(proxy, "GET", 408) == before + 1


def test_an_idle_connection_closed_without_a_head_is_no_request(
    proxy: RunningServer, access_lines: list[dict[str, object]]
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        assert read_until_closed(sock) == b""
    assert refused_lines(access_lines) == []


def test_served_requests_are_logged_as_before(
    proxy: RunningServer, access_lines: list[dict[str, object]]
) -> None:
    response = httpx.get(f"{proxy.url}/objects/hello.txt", timeout=10)
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # logged in batches, within 5 ms
        served = [line for line in access_lines if line["key"] == "hello.txt"]
        if served:
            break
        time.sleep(0.01)
    [line] = served
    assert (line["outcome"], line["method"], line["status"]) == ("complete", "GET", 200)
    assert refused_lines(access_lines) == []


def test_connections_past_the_cap_are_logged_as_503(
    media: MediaTree, serve: StartServer, access_lines: list[dict[str, object]]
) -> None:
    server = serve(settings_for(media, "async", max_connections=2))
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        for sock in held:  # answered: accepted and counted
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        access_lines.clear()
        answer = send(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        for sock in held:
            sock.close()
    assert parse(answer)[0] == 503
    [line] = refused_lines(access_lines)
    assert (line["status"], line["method"], line["bytes_sent"]) == (503, None, len(answer))
    assert line["duration_ms"] == 0.0  # refused as it connected: no head was read


def test_with_the_access_log_off_refusals_are_counted_only(
    media: MediaTree, serve: StartServer, access_lines: list[dict[str, object]]
) -> None:
    server = serve(settings_for(media, "async", access_log=False))
    before = counted(server, "GET", 431)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + BIG_FIELD + b"\r\n"
    assert parse(send(server.port, head))[0] == 431
    assert counted(server, "GET", 431) == before + 1
    assert refused_lines(access_lines) == []
