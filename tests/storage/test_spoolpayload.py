"""A spooled part goes out through aiohttp as ``SpoolPayload`` (proxy/storage/spoolpayload.py):
its bytes whole from its start, whatever the spool's position, read on the event loop or, when
the page cache cannot say, in a thread; the spool stays open for the upload to close."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiobotocore._endpoint_helpers import _IOBaseWrapper
from aiohttp import web

from proxy.storage import local, spoolpayload
from proxy.storage.s3write import _Spool

DATA = os.urandom(3 * spoolpayload.READ_SIZE + 12_345)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sealed(data: bytes) -> _Spool:
    spool = _Spool()
    spool.add(memoryview(data))
    return spool.seal()


async def _origin() -> AsyncIterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    async def put(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application(client_max_size=len(DATA) * 2)
    app.router.add_put("/part", put)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/part", received
    finally:
        await runner.cleanup()


async def _send(spool: _Spool) -> bytes:
    """PUT ``spool`` as aiobotocore does (wrapped so that aiohttp cannot close it)."""
    async for url, received in _origin():
        async with aiohttp.ClientSession() as session:
            body = _IOBaseWrapper(spool)
            headers = {"content-length": str(spool.length)}
            async with session.put(url, data=body, headers=headers) as response:
                assert response.status == 200
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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An invalid flag fails every ``RWF_NOWAIT`` read, as a filesystem that cannot tell does:
    every read then takes the thread, and the bytes are the same."""
    threaded: list[int] = []
    read = local._read_step

    def counted(fd: int, offset: int, stop: int, chunk_size: int) -> bytes:
        chunk = read(fd, offset, stop, chunk_size)
        threaded.append(len(chunk))
        return chunk

    monkeypatch.setattr(local, "_RWF_NOWAIT", -1)
    monkeypatch.setattr(spoolpayload, "_read_step", counted)
    with sealed(DATA) as spool:
        assert sha256(asyncio.run(_send(spool))) == sha256(DATA)
    assert sum(threaded) == len(DATA)
    assert len(threaded) == 4


def test_an_empty_part_sends_nothing() -> None:
    with sealed(b"") as spool:
        assert asyncio.run(_send(spool)) == b""
