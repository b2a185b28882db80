"""The connection layer's reads (``proxy.connection._Reads``: ``asyncio.BufferedProtocol`` into
one buffer per loop), under both parsers, both event loops and TLS: while more than
``STREAMING_CONNECTIONS`` connections stream request bodies, a body that an app consumes
slowly reaches it in messages of at most 64 KiB past uvicorn's 64 KiB pause (with the loops'
own 256 KiB reads, up to 320 KiB); a lone upload still reads 256 KiB at a time. Every byte
arrives in order (sha256), and connections side by side on one loop never see each other's."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.connection import (
    READ_SIZE,
    SMALL_READ_SIZE,
    STREAMING_CONNECTIONS,
    _ReadBuffer,
    _Reads,
)
from tests.conftest import MediaTree, settings_for
from tests.loopback import self_signed
from tests.test_zerocopy import LOOPS, PARSERS, files, serving  # noqa: F401

HIGH_WATER = 64 * 1024  # uvicorn pauses reading once a body's buffer passes this
BODY = os.urandom(8 * 1024 * 1024 + 3)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slow_reader(requests: list[list[int]]) -> Any:
    """An app that takes each body message 5 ms after the one before (its buffer fills),
    noting the messages' sizes (a list per request), and answers the body's sha256."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        sizes: list[int] = []
        requests.append(sizes)
        digest = hashlib.sha256()
        while True:
            message = await receive()
            body = message.get("body", b"")
            if body:
                sizes.append(len(body))
                digest.update(body)
            if not message.get("more_body", False):
                break
            await asyncio.sleep(0.005)
        answer = digest.hexdigest().encode()
        headers = [(b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


def upload_all(
    port: int, bodies: list[bytes], scheme: str = "http", verify: Any = True
) -> list[str]:
    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=60, verify=verify) as client:
            url = f"{scheme}://127.0.0.1:{port}/"
            puts = [client.put(url, content=body) for body in bodies]
            return [response.text for response in await asyncio.gather(*puts)]

    return asyncio.run(run())


def bounded_share(requests: list[list[int]]) -> float:
    """Of the messages in the second half of each body (every connection streams by then),
    the share within uvicorn's pause plus one small read."""
    later = []
    for sizes in requests:
        total, half = 0, sum(sizes) // 2
        for size in sizes:
            if total >= half:
                later.append(size)
            total += size
    return sum(size <= HIGH_WATER + SMALL_READ_SIZE for size in later) / len(later)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_many_uploads_read_small(files: MediaTree, http: str, loop: str) -> None:  # noqa: F811
    bodies = [os.urandom(4 * 1024 * 1024 + n) for n in range(2 * STREAMING_CONNECTIONS)]
    requests: list[list[int]] = []
    settings = settings_for(files, "async", http=http, loop=loop)
    with serving(slow_reader(requests), settings, lifespan="off") as port:
        answers = upload_all(port, bodies)
    assert answers == [sha(body) for body in bodies]
    assert sorted(sum(sizes) for sizes in requests) == sorted(len(body) for body in bodies)
    assert max(max(sizes) for sizes in requests) <= HIGH_WATER + READ_SIZE
    assert bounded_share(requests) >= 0.9


@pytest.mark.parametrize("loop", LOOPS)
def test_a_lone_upload_reads_large(files: MediaTree, loop: str) -> None:  # noqa: F811
    requests: list[list[int]] = []
    settings = settings_for(files, "async", loop=loop)
    with serving(slow_reader(requests), settings, lifespan="off") as port:
        response = httpx.put(f"http://127.0.0.1:{port}/", content=BODY, timeout=60)
    assert (response.status_code, response.text) == (200, sha(BODY))
    [sizes] = requests
    assert sum(sizes) == len(BODY)
    assert HIGH_WATER + SMALL_READ_SIZE < max(sizes) <= HIGH_WATER + READ_SIZE


def test_tls_uploads_read_the_same_way(files: MediaTree, tmp_path: Path) -> None:  # noqa: F811
    bodies = [os.urandom(4 * 1024 * 1024 + n) for n in range(2 * STREAMING_CONNECTIONS)]
    requests: list[list[int]] = []
    pem = self_signed(tmp_path)
    settings = settings_for(files, "async")
    options = {"lifespan": "off", "ssl_certfile": str(pem)}
    with serving(slow_reader(requests), settings, **options) as port:
        verify = ssl.create_default_context(cafile=str(pem))
        answers = upload_all(port, bodies, "https", verify)
    assert answers == [sha(body) for body in bodies]
    # TLS hands over what whole records decrypt to: reads fall short of the buffer more often,
    # so connections leave the streaming count now and then, and the bound holds less often.
    assert bounded_share(requests) >= 0.5


class Received(asyncio.Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.data.append(data)


def read(reads: _Reads, data: bytes) -> int:
    """One read as the loop makes it: into what ``get_buffer`` gave, then ``buffer_updated``;
    the size it was given."""
    buffer = reads.get_buffer(-1)
    taken = data[: len(buffer)]
    buffer[: len(taken)] = taken
    reads.buffer_updated(len(taken))
    return len(buffer)


def test_the_read_size_follows_how_many_connections_stream() -> None:
    """Connections whose reads fill their buffer stream; past STREAMING_CONNECTIONS of them
    every read is small, and one that ends (a short read, or lost) counts no more."""
    shared = _ReadBuffer()
    connections = [Received() for _ in range(STREAMING_CONNECTIONS + 2)]
    reads = [_Reads(connection, shared) for connection in connections]
    full = os.urandom(READ_SIZE)
    for one in reads[:STREAMING_CONNECTIONS]:
        assert read(one, full) == READ_SIZE
    assert shared.streaming == STREAMING_CONNECTIONS
    assert read(reads[STREAMING_CONNECTIONS], full) == READ_SIZE  # still few: a large read
    assert shared.streaming == STREAMING_CONNECTIONS + 1
    assert read(reads[-1], full) == SMALL_READ_SIZE  # one too many stream now
    assert shared.streaming == STREAMING_CONNECTIONS + 2  # a small read filled is streaming
    assert read(reads[0], b"tail") == SMALL_READ_SIZE  # ends its body: streams no more
    reads[1].connection_lost(None)
    assert shared.streaming == STREAMING_CONNECTIONS
    assert read(reads[2], full) == READ_SIZE
    assert connections[0].data == [full, b"tail"]
    assert connections[-1].data == [full[:SMALL_READ_SIZE]]
