"""How much of an S3 body aiohttp holds ahead of a slow consumer, on a real S3 server (moto).

aiohttp stops reading the socket once its buffer passes twice its limit, and its read(n) raises
that limit to n for the rest of the response. The async flavour keeps the limit at
``READ_BUFSIZE`` for slow streams and at most ``_AIOHTTP_READ_LIMIT`` for any stream, so a
slow reader holds at most twice the limit plus one socket read (asyncio's: 256 KiB), whatever
it asked for before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import AsyncExitStack

import anyio
import pytest

from proxy.storage import presigned
from proxy.storage.s3 import _AIOHTTP_READ_LIMIT, _achunks, aopen_s3
from tests.conftest import s3_settings
from tests.s3servers import S3Server, put_object

KIB = 1024
SOCKET_READ = 256 * KIB  # the most one read of asyncio's socket transport returns
DATA = os.urandom(6 * 1024 * KIB)
KEY = "buffering/slow.bin"


def slow_after(first: list[int]) -> Callable[[], int]:
    """Chunk sizes: ``first`` in turn (a fast start), then 64 KiB chunks."""
    sizes = iter(first)
    return lambda: next(sizes, 64 * KIB)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("first", "bound"),
    [
        ([], 2 * presigned.READ_BUFSIZE + SOCKET_READ),  # slow throughout
        ([1024 * KIB, 1024 * KIB], 2 * _AIOHTTP_READ_LIMIT + SOCKET_READ),  # fast, then slow
    ],
    ids=["slow", "fast-then-slow"],
)
async def test_a_slow_reader_has_little_buffered_ahead(
    moto: S3Server, first: list[int], bound: int
) -> None:
    put_object(moto, KEY, DATA, "application/octet-stream")
    async with AsyncExitStack() as stack:
        storage = await aopen_s3(s3_settings(moto, "aiobotocore"), stack)
        fields, reader, closer = await storage.aget(KEY, None)
        assert fields["ContentLength"] == len(DATA)
        assert type(reader).__name__ == "StreamReader"  # the presigned GET's aiohttp body
        try:
            received = hashlib.sha256()
            consumed = 0
            ahead = []
            async for chunk in _achunks(reader, len(DATA), slow_after(first)):
                received.update(chunk)
                consumed += len(chunk)
                await anyio.sleep(0.004)  # a slow client: the server fills what aiohttp takes
                ahead.append(reader.total_bytes - consumed)
        finally:
            closer.close()
    assert (consumed, received.hexdigest()) == (len(DATA), hashlib.sha256(DATA).hexdigest())
    assert max(ahead) <= bound
    assert max(ahead) > presigned.READ_BUFSIZE  # the server did fill the buffer: a real test
