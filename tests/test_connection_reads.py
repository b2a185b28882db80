"""The connection layer reads at most ``READ_SIZE`` bytes at a time (``asyncio.BufferedProtocol``
into one buffer per loop), under both parsers, both event loops and TLS: a request body that
an app consumes slowly reaches it in messages of at most 64 KiB past uvicorn's 64 KiB pause
(without it, one read took up to 256 KiB), every byte in order (sha256), and connections
served side by side on one loop never see each other's bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.connection import READ_SIZE
from tests.conftest import MediaTree, settings_for
from tests.loopback import self_signed
from tests.test_zerocopy import LOOPS, PARSERS, files, serving  # noqa: F401

HIGH_WATER = 64 * 1024  # uvicorn pauses reading once a body's buffer passes this
BODY = os.urandom(8 * 1024 * 1024 + 3)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slow_reader(sizes: list[int]) -> Any:
    """An app that takes each body message 5 ms after the one before (its buffer fills), and
    answers the body's sha256."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
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


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_a_slowly_read_body_comes_in_bounded_messages(
    files: MediaTree,  # noqa: F811
    http: str,
    loop: str,
) -> None:
    sizes: list[int] = []
    settings = settings_for(files, "async", http=http, loop=loop)
    with serving(slow_reader(sizes), settings, lifespan="off") as port:
        response = httpx.put(f"http://127.0.0.1:{port}/", content=BODY, timeout=60)
    assert (response.status_code, response.text) == (200, sha(BODY))
    assert sum(sizes) == len(BODY)
    assert max(sizes) <= HIGH_WATER + READ_SIZE
    assert max(sizes) > HIGH_WATER  # the app was slow: its buffer did fill past the pause


def test_tls_bodies_are_read_the_same_way(files: MediaTree, tmp_path: Path) -> None:  # noqa: F811
    sizes: list[int] = []
    pem = self_signed(tmp_path)
    settings = settings_for(files, "async")
    options = {"lifespan": "off", "ssl_certfile": str(pem)}
    with serving(slow_reader(sizes), settings, **options) as port:
        response = httpx.put(
            f"https://127.0.0.1:{port}/",
            content=BODY,
            timeout=60,
            verify=ssl.create_default_context(cafile=str(pem)),
        )
    assert (response.status_code, response.text) == (200, sha(BODY))
    assert sum(sizes) == len(BODY)
    assert max(sizes) <= HIGH_WATER + READ_SIZE


@pytest.mark.parametrize("loop", LOOPS)
def test_connections_on_one_loop_keep_their_own_bytes(files: MediaTree, loop: str) -> None:  # noqa: F811
    """Eight uploads at once share the loop's read buffer: each body arrives whole."""
    bodies = [os.urandom(2 * 1024 * 1024 + n) for n in range(8)]
    settings = settings_for(files, "async", loop=loop)

    async def upload_all(port: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            puts = [client.put(f"http://127.0.0.1:{port}/", content=body) for body in bodies]
            return list(await asyncio.gather(*puts))

    with serving(slow_reader([]), settings, lifespan="off") as port:
        responses = asyncio.run(upload_all(port))
    assert [(r.status_code, r.text) for r in responses] == [(200, sha(body)) for body in bodies]
