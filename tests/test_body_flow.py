"""A request body is read one read at a time (``proxy.connection._BodyFlow``): while the app has
not taken what came, the connection reads no more, so the rest waits in the kernel's socket
buffer, not in the process. Under both parsers and both event loops, with a real uvicorn server
and a client on a socket; the body arrives whole (sha256)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from proxy.server import uvicorn_options
from tests.conftest import MediaTree, settings_for
from tests.rawhttp import parse, read_until_closed

BODY = os.urandom(8 * 1024 * 1024)
PAUSE = 0.3  # the app's pause after each of its first messages: the client keeps sending


class Recorder:
    """An ASGI app that pauses after each of its first messages, then looks at what uvicorn
    buffered meanwhile; it answers the body's sha256."""

    def __init__(self) -> None:
        self.state: uvicorn.server.ServerState | None = None
        self.buffered: list[int] = []  # bytes uvicorn held after each pause

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        more = True
        while more:
            message = await receive()
            digest.update(message.get("body", b""))
            more = message.get("more_body", False)
            if more and len(self.buffered) < 3:
                await asyncio.sleep(PAUSE)
                assert self.state is not None
                [connection] = self.state.connections
                cycle: Any = getattr(connection, "cycle")  # noqa: B009  # the HTTP protocols'
                self.buffered.append(len(cycle.body))
        body = digest.hexdigest().encode()
        headers = [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=[(h, loop) for h in ("h11", "httptools") for loop in ("asyncio", "uvloop")])
def served(request: pytest.FixtureRequest, media: MediaTree) -> Iterator[tuple[int, Recorder]]:
    http, loop = request.param
    recorder = Recorder()
    options = uvicorn_options(settings_for(media, "async", http=http, loop=loop))
    config = uvicorn.Config(recorder, host="127.0.0.1", port=0, log_level="warning", **options)
    server = uvicorn.Server(config)
    recorder.state = server.server_state
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1], recorder
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_body_is_read_only_as_the_app_takes_it(served: tuple[int, Recorder]) -> None:
    port, recorder = served
    head = b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + BODY)  # the kernel's buffers take part; the rest as the app reads
        status, _, answer = parse(read_until_closed(sock))
    assert status == 200
    assert answer == hashlib.sha256(BODY).hexdigest().encode()
    # The client sent all along: uvicorn alone would have read on past 64 KiB meanwhile.
    assert recorder.buffered == [0, 0, 0]
