"""A spooled part goes out through aiohttp as ``SpoolPayload`` (proxy/storage/spoolpayload.py):
its bytes whole from its start, whatever the spool's position: by ``sendfile`` on plain TCP
(``SendfileTally`` counts them), else (TLS) read on the event loop or, when the page cache
cannot say, in a thread; the spool stays open for the upload to close. Origins are real aiohttp
servers on 127.0.0.1 (with TLS, a self-signed certificate), or a raw socket that reads slowly
or hangs up mid-body."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore._endpoint_helpers import _IOBaseWrapper
from aiohttp import web

from proxy.sendfile import SendfileTally
from proxy.storage import local, spoolpayload
from proxy.storage.s3write import _Spool
from tests.loopback import self_signed

DATA = os.urandom(3 * spoolpayload.READ_SIZE + 12_345)
BIG = os.urandom(16 * 1024 * 1024 + 7)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sealed(data: bytes) -> _Spool:
    spool = _Spool()
    spool.add(memoryview(data))
    return spool.seal()


async def _origin(pem: Path | None = None) -> AsyncIterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    async def put(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application(client_max_size=len(BIG) * 2)
    app.router.add_put("/part", put)
    runner = web.AppRunner(app)
    await runner.setup()
    context = None
    if pem is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pem)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "http" if pem is None else "https"
    try:
        yield f"{scheme}://127.0.0.1:{port}/part", received
    finally:
        await runner.cleanup()


async def _put(url: str, spool: _Spool, pem: Path | None = None) -> int:
    """PUT ``spool`` as aiobotocore does (wrapped so that aiohttp cannot close it)."""
    context = None if pem is None else ssl.create_default_context(cafile=pem)
    connector = aiohttp.TCPConnector(ssl=context if context is not None else True)
    async with aiohttp.ClientSession(connector=connector) as session:
        body = _IOBaseWrapper(spool)
        headers = {"content-length": str(spool.length)}
        async with session.put(url, data=body, headers=headers) as response:
            return response.status


async def _send(spool: _Spool, pem: Path | None = None) -> bytes:
    async for url, received in _origin(pem):
        assert await _put(url, spool, pem) == 200
        return received[0]
    raise AssertionError("no origin")


@pytest.fixture(autouse=True)
def registered() -> None:
    spoolpayload.register(_Spool)


def test_the_registry_gives_a_wrapped_spool_the_spool_payload() -> None:
    with sealed(b"abc") as spool:
        payload = aiohttp.payload.PAYLOAD_REGISTRY.get(_IOBaseWrapper(spool))
        assert isinstance(payload, spoolpayload.SpoolPayload)
        assert payload.size == 3


@pytest.mark.parametrize("position", ["start", "end", "middle"])
def test_the_whole_part_goes_out_whatever_its_position(position: str) -> None:
    with sealed(DATA) as spool:
        spool.seek({"start": 0, "end": len(DATA), "middle": 1000}[position])
        sent = asyncio.run(_send(spool))
        assert sha256(sent) == sha256(DATA)
        assert not spool.closed  # the upload closes it, after the call


def test_reads_the_page_cache_cannot_answer_go_to_a_thread(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Over TLS (no sendfile), an invalid flag fails every ``RWF_NOWAIT`` read, as a
    filesystem that cannot tell does: every read then takes the thread, and the bytes are the
    same."""
    threaded: list[int] = []
    read = local._read_step

    def counted(fd: int, offset: int, stop: int, chunk_size: int) -> bytes:
        chunk = read(fd, offset, stop, chunk_size)
        threaded.append(len(chunk))
        return chunk

    monkeypatch.setattr(local, "_RWF_NOWAIT", -1)
    monkeypatch.setattr(spoolpayload, "_read_step", counted)
    with sealed(DATA) as spool:
        assert sha256(asyncio.run(_send(spool, self_signed(tmp_path)))) == sha256(DATA)
    assert sum(threaded) == len(DATA)
    assert len(threaded) == 4


def test_plain_tcp_sends_the_part_by_sendfile() -> None:
    before = SendfileTally.bytes
    with sealed(DATA) as spool:
        assert sha256(asyncio.run(_send(spool))) == sha256(DATA)
    assert SendfileTally.bytes - before == len(DATA)


def test_tls_reads_the_part_on_the_loop(tmp_path: Path) -> None:
    before = SendfileTally.bytes
    with sealed(DATA) as spool:
        assert sha256(asyncio.run(_send(spool, self_signed(tmp_path)))) == sha256(DATA)
    assert SendfileTally.bytes == before


@contextmanager
def _raw_origin(serve: Any, connections: int = 1) -> Iterator[int]:
    """An origin on 127.0.0.1 whose thread runs ``serve(connection)`` for each of the first
    ``connections`` connections (within 10 s each; a connection silent for 10 s is dropped)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            for _ in range(connections):
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    return
                connection.settimeout(10)  # a stalled client ends the origin, never hangs it
                with connection, contextlib.suppress(TimeoutError):
                    serve(connection)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        thread.join(30)
        assert not thread.is_alive()


def _head_and_body(connection: socket.socket, pause: float, limit: int) -> bytes:
    """Reads a request with a small receive buffer, ``pause`` seconds between reads, until the
    body's ``limit`` bytes came (or the client closed)."""
    data = bytearray()
    body_start = -1
    while body_start < 0 or len(data) - body_start < limit:
        piece = connection.recv(65536)
        if not piece:
            break
        data += piece
        if body_start < 0 and (end := data.find(b"\r\n\r\n")) >= 0:
            body_start = end + 4
        time.sleep(pause)
    return bytes(data[body_start:]) if body_start >= 0 else b""


def test_a_slow_reader_gets_the_whole_part_and_the_loop_stays_free() -> None:
    """S3 reading slowly fills the socket (a 16 MiB part, more than loopback's socket buffers
    hold): the send waits on the event loop (a ticker keeps running) and the part arrives
    whole."""
    received: list[bytes] = []

    def serve(connection: socket.socket) -> None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        received.append(_head_and_body(connection, 0.001, len(BIG)))
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    async def main(port: int, spool: _Spool) -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.monotonic()
        status = await _put(f"http://127.0.0.1:{port}/part", spool)
        task.cancel()
        return status, ticks - int((time.monotonic() - started) / 0.01 / 4)

    before, calls = SendfileTally.bytes, SendfileTally.calls
    with sealed(BIG) as spool, _raw_origin(serve) as port:
        status, spare_ticks = asyncio.run(main(port, spool))
    assert status == 200
    assert sha256(received[0]) == sha256(BIG)
    assert SendfileTally.bytes - before == len(BIG)
    assert SendfileTally.calls - calls > 1  # the socket filled: the send waited for room
    assert spare_ticks > 0  # the ticker ran at least a quarter of its ticks meanwhile


def test_an_origin_that_hangs_up_mid_part_fails_the_send() -> None:
    """Each connection resets after 100 KiB of a 16 MiB part (the send is waiting for room):
    the PUT fails once aiohttp's own retry of an idempotent request failed too (botocore then
    retries or gives up); it does not hang or report success."""
    served: list[int] = []

    def serve(connection: socket.socket) -> None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        served.append(len(_head_and_body(connection, 0.0, 100 * 1024)))
        connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )

    async def main(port: int, spool: _Spool) -> BaseException | int:
        try:
            return await asyncio.wait_for(_put(f"http://127.0.0.1:{port}/part", spool), 20)
        except aiohttp.ClientError as error:
            return error

    before = SendfileTally.bytes
    with sealed(BIG) as spool, _raw_origin(serve, connections=2) as port:
        outcome = asyncio.run(main(port, spool))
    assert isinstance(outcome, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError), outcome
    assert len(served) == 2 and min(served) >= 100 * 1024
    assert 200 * 1024 <= SendfileTally.bytes - before < 2 * len(BIG)


def test_an_empty_part_sends_nothing() -> None:
    with sealed(b"") as spool:
        assert asyncio.run(_send(spool)) == b""


def test_a_part_the_page_cache_lost_is_loaded_in_a_thread_before_sendfile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spool's pages dropped (synced, then ``POSIX_FADV_DONTNEED``): each step is loaded
    by ``_FileBody.load`` in a worker thread, so sendfile never waits for the disk on the
    event loop; the part arrives whole, by sendfile."""
    loaded: list[tuple[int, int, bool]] = []
    load = local._FileBody.load

    def counted(self: local._FileBody, offset: int, count: int) -> None:
        on_loop = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop = False
        loaded.append((offset, count, on_loop))
        load(self, offset, count)

    missing: list[int] = []  # steps whose pages were found lost when their turn came
    cached = local._FileBody.cached

    def checked(self: local._FileBody, offset: int, count: int) -> bool:
        found = cached(self, offset, count)
        if not found:
            missing.append(offset)
        return found

    monkeypatch.setattr(local._FileBody, "load", counted)
    before = SendfileTally.bytes
    with sealed(BIG) as spool:
        os.fsync(spool.fileno())
        os.posix_fadvise(spool.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        if local._FileBody(spool.fileno()).cached(len(BIG) // 2, 4096):
            pytest.skip("this filesystem keeps the spool's pages")
        monkeypatch.setattr(local._FileBody, "cached", checked)
        assert sha256(asyncio.run(_send(spool))) == sha256(BIG)
    assert SendfileTally.bytes - before == len(BIG)
    # The kernel may keep some pages despite the advice (it did for the first steps once, in a
    # loaded CI run), and the readahead of loading one step may bring the next one back (seen
    # once too): each step found lost when its turn came is loaded, once, in a worker thread,
    # never on the loop, and no other.
    if not missing:
        pytest.skip("the kernel had every step's pages back before its turn")
    step = spoolpayload.SEND_STEP
    offsets = [offset for offset, _, _ in loaded]
    assert offsets == missing and all(offset % step == 0 for offset in offsets)
    assert len(set(offsets)) == len(offsets)
    assert not any(on_loop for _, _, on_loop in loaded)
