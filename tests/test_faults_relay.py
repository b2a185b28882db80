"""The fault relay's own framing: a fault cuts a chunked reply after its bytes of chunk data,
and an error reply leaves a body fault armed for the retry (tests/faults.py)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.faults import Fault, FaultyRelay, faulty_relay, gets_of
from tests.loopback import threaded_server

BODY = bytes(range(256)) * 1000  # 256,000 bytes
PIECE = 10_000  # bytes per chunk of the chunked replies


def _origin() -> Callable[[socket.socket], None]:
    """An origin: GET /chunked answers BODY chunked, GET /error a 503 the first time, then
    BODY, as anything else does."""
    errors = [0]

    def serve(client: socket.socket) -> None:
        with contextlib.suppress(OSError), client:
            _answer(client, errors)

    return serve


def _answer(client: socket.socket, errors: list[int]) -> None:
    """Answer up to 100 requests of one connection (its socket times out after 10 s)."""
    data = b""
    for _ in range(100):
        while b"\r\n\r\n" not in data and len(data) <= 65536:
            more = client.recv(65536)
            if not more:
                return
            data += more
        if b"\r\n\r\n" not in data:
            return  # a head longer than any the relay sends
        head, data = data.split(b"\r\n\r\n", 1)
        target = head.split(b" ", 2)[1]
        if target == b"/error" and errors[0] == 0:
            errors[0] += 1
            error = b"<Error>SlowDown</Error>"
            client.sendall(
                b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error)
            )
        elif target == b"/chunked":
            client.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for start in range(0, len(BODY), PIECE):
                piece = BODY[start : start + PIECE]
                client.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            client.sendall(b"0\r\n\r\n")
        else:
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)


@pytest.fixture
def relay() -> Iterator[FaultyRelay]:
    with threaded_server(_origin()) as origin, faulty_relay(origin.port) as relay:
        yield relay


def _get(relay: FaultyRelay, path: str) -> tuple[int, bytes]:
    """Status and the body bytes received until the end or a cut."""
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        received = b""
        try:
            while piece := response.read1(65536):
                received += piece
        except http.client.IncompleteRead as exc:
            received += exc.partial
        return response.status, received
    finally:
        connection.close()


@pytest.mark.parametrize("after", [0, 25_000, PIECE * 3])
def test_a_fin_cuts_a_chunked_body_after_its_bytes(relay: FaultyRelay, after: int) -> None:
    relay.arm(Fault("fin", match=gets_of("chunked"), after=after))
    status, received = _get(relay, "/chunked")
    assert (status, relay.applied) == (200, ["fin"])
    assert received == BODY[:after]


def test_a_lasting_stall_then_the_whole_chunked_body(relay: FaultyRelay) -> None:
    relay.arm(Fault("stall_body", match=gets_of("chunked"), after=25_000, lasting=0.2))
    status, received = _get(relay, "/chunked")
    assert (status, relay.applied) == (200, ["stall_body"])
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(BODY).hexdigest()


def test_an_error_reply_keeps_the_fault_for_the_retry(relay: FaultyRelay) -> None:
    relay.arm(Fault("fin", match=gets_of("error"), after=1000))
    status, received = _get(relay, "/error")
    assert (status, received, relay.applied) == (503, b"<Error>SlowDown</Error>", [])
    status, received = _get(relay, "/error")
    assert (status, relay.applied) == (200, ["fin"])
    assert received == BODY[:1000]
