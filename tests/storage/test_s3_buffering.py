"""How much of an S3 body the async flavour holds ahead of a slow consumer, on a real S3 server
(moto).

A presigned GET's reply (``AsyncReply``) reads each chunk straight from its socket: whatever S3
sends ahead waits in the kernel's socket buffer, so the process holds nothing beyond the chunk
it hands over. The botocore fallback streams from aiohttp, which stops reading the socket once
its buffer passes twice its limit, and whose read(n) raises that limit to n for the rest of the
response: reads of at most ``_AIOHTTP_READ_LIMIT`` bound it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import termios
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from proxy.storage.connections import AsyncReply
from proxy.storage.options import S3Options
from proxy.storage.s3 import _AIOHTTP_READ_LIMIT, _achunks, aopen_s3
from proxy.testing.s3servers import BUCKET, REGION, S3Server, put_object

KIB = 1024
SOCKET_READ = 256 * KIB  # the most one read of asyncio's socket transport returns
DATA = os.urandom(6 * 1024 * KIB)
KEY = "buffering/slow.bin"
FIRST = {"slow": [], "fast-then-slow": [1024 * KIB, 1024 * KIB]}


def slow_after(first: list[int]) -> Callable[[], int]:
    """Chunk sizes: ``first`` in turn (a fast start), then 64 KiB chunks."""
    sizes = iter(first)
    return lambda: next(sizes, 64 * KIB)


def queued(reply: AsyncReply) -> int:
    """Bytes the kernel holds for the reply's socket (FIONREAD)."""
    count = fcntl.ioctl(reply._sock.fileno(), termios.FIONREAD, bytes(4))
    return int(struct.unpack("i", count)[0])


async def read_slowly(reader: object, first: list[int], ahead: Callable[[int], int]) -> list[int]:
    """Read DATA in chunks, slowly; what ``ahead`` says after each chunk."""
    received = hashlib.sha256()
    consumed = 0
    held = []
    async for chunk in _achunks(reader, len(DATA), slow_after(first)):
        received.update(chunk)
        consumed += len(chunk)
        await anyio.sleep(0.004)  # a slow client: the server fills what the socket takes
        held.append(ahead(consumed))
    assert (consumed, received.hexdigest()) == (len(DATA), hashlib.sha256(DATA).hexdigest())
    return held


@contextlib.asynccontextmanager
async def slow_object(moto: S3Server, presigned_gets: bool = True) -> AsyncIterator[Any]:
    """DATA on moto, opened through the aiobotocore flavour's GetObject: its reader."""
    put_object(moto, KEY, DATA, "application/octet-stream")
    options = S3Options(
        bucket=BUCKET,
        endpoint_url=moto.endpoint_url,
        region=REGION,
        addressing_style="path",
        presigned_gets=presigned_gets,
    )
    async with AsyncExitStack() as stack:
        storage = await aopen_s3(options, stack)
        answer = await storage.aget(KEY, None)
        assert answer.length == len(DATA)
        try:
            yield answer.stream
        finally:
            answer.stream.close()


@pytest.mark.anyio
@pytest.mark.parametrize("first", list(FIRST.values()), ids=list(FIRST))
async def test_a_presigned_reply_holds_nothing_ahead_of_a_slow_reader(
    moto: S3Server, first: list[int]
) -> None:
    in_kernel: list[int] = []
    async with slow_object(moto) as reader:
        assert isinstance(reader, AsyncReply)

        def ahead(consumed: int) -> int:
            in_kernel.append(queued(reader))
            return len(DATA) - consumed - reader._remaining + len(reader._buffered)

        held = await read_slowly(reader, first, ahead)
    assert max(held) == 0  # read from the socket, not yet handed over: nothing
    assert max(in_kernel) > 2 * 64 * KIB  # S3 sent chunks ahead (the kernel held them): a real test


@pytest.mark.anyio
@pytest.mark.parametrize("first", list(FIRST.values()), ids=list(FIRST))
async def test_the_botocore_fallback_keeps_aiohttps_buffer_small(
    moto: S3Server, first: list[int]
) -> None:
    async with slow_object(moto, presigned_gets=False) as reader:
        content = reader._raw_stream.content  # aiobotocore's StreamingBody over aiohttp's
        held = await read_slowly(reader, first, lambda done: content.total_bytes - done)
    assert max(held) <= 2 * max(_AIOHTTP_READ_LIMIT, 64 * KIB) + SOCKET_READ
    assert max(held) > 64 * KIB  # the server did fill the buffer: a real test
