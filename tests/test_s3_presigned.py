"""Presigned GETs through real proxies on real S3 servers: one URL per key, the same bytes and
the same typed reply as botocore's, botocore answering what they cannot (a rejected signature),
and turned off."""

from __future__ import annotations

import gzip
import os
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import httpx
import pytest

from proxy.http.codec import ByteRange, Range
from proxy.storage.base import METADATA_ONLY, WHOLE, ObjectMeta, ReadHint
from proxy.storage.options import S3Options
from proxy.storage.s3 import aopen_s3, open_s3
from proxy.testing.s3servers import BUCKET, REGION, put_object
from tests.conftest import (
    S3_CLIENTS,
    S3_SERVERS,
    RunningServer,
    StartServer,
    s3_server,
    s3_settings,
    sha256,
)
from tests.s3calls import Calls, watching

MATRIX = [(server, client) for server in S3_SERVERS for client in S3_CLIENTS]
DATA = os.urandom(1024 * 1024 + 17)
SPECS = ["bytes=0-99", "bytes=1000-65535", "bytes=-17", "bytes=1048000-"]


def serving(
    request: pytest.FixtureRequest,
    serve: StartServer,
    server_name: str,
    client: str,
    key: str,
    **overrides: object,
) -> RunningServer:
    """A proxy on ``server_name`` in the ``client`` flavour, with DATA uploaded at ``key``."""
    s3 = s3_server(request, server_name)
    put_object(s3, key, DATA, "application/octet-stream")
    return serve(s3_settings(s3, client, **overrides))


def expected(spec: str) -> bytes:
    first, last = spec.removeprefix("bytes=").split("-")
    if not first:
        return DATA[-int(last) :]
    return DATA[int(first) : int(last) + 1 if last else None]


@pytest.mark.parametrize(("server_name", "client"), MATRIX)
def test_one_presigned_url_serves_every_get_of_a_key(
    request: pytest.FixtureRequest, serve: StartServer, server_name: str, client: str
) -> None:
    key = f"presigned/once-{client}.bin"
    proxy = serving(request, serve, server_name, client, key)
    with watching(proxy.app.state.storage, Calls()) as calls:
        whole = httpx.get(f"{proxy.url}/objects/{key}", timeout=20)
        assert (whole.status_code, sha256(whole.content)) == (200, sha256(DATA))
        for spec in SPECS:
            part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": spec}, timeout=20)
            assert (part.status_code, part.content) == (206, expected(spec))
    assert calls.names() == ["GetObject"] * 5  # no botocore GetObject behind any of them
    assert (calls.presigned, calls.presigns) == (5, 1)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_rejected_url_is_dropped_and_botocore_answers(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    key = f"presigned/rejected-{client}.bin"
    proxy = serving(request, serve, "seaweedfs", client, key)  # checks signatures; moto does not
    storage = proxy.app.state.storage
    assert httpx.get(f"{proxy.url}/objects/{key}", timeout=20).status_code == 200
    urls = storage.presigned._urls
    good = urls.get(key)
    signature = good.rsplit("X-Amz-Signature=", 1)[1]
    forged = "0" * len(signature) if signature != "0" * len(signature) else "1" * len(signature)
    urls.put(key, good.replace(signature, forged))  # as an expired one would be: rejected
    with watching(storage, Calls()) as calls:
        spec = SPECS[1]
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": spec}, timeout=20)
        assert (part.status_code, part.content) == (206, expected(spec))
    assert calls.made == [("GetObject", {"Key": key, "Range": spec})] * 2
    assert calls.presigned == 1  # the first; botocore made the second
    with watching(storage, Calls()) as calls:
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": spec}, timeout=20)
        assert (part.status_code, part.content) == (206, expected(spec))
    assert (calls.names(), calls.presigned, calls.presigns) == (["GetObject"], 1, 1)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_turned_off_botocore_makes_every_get(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    key = f"presigned/off-{client}.bin"
    proxy = serving(request, serve, "moto", client, key, s3_presigned_gets=False)
    assert proxy.app.state.storage.presigned is None
    with watching(proxy.app.state.storage, Calls()) as calls:
        whole = httpx.get(f"{proxy.url}/objects/{key}", timeout=20)
        assert sha256(whole.content) == sha256(DATA)
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": SPECS[1]}, timeout=20)
        assert (part.status_code, part.content) == (206, expected(SPECS[1]))
    assert (calls.names(), calls.presigned, calls.presigns) == (["GetObject"] * 2, 0, 0)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_stored_bytes_pass_through_whatever_their_content_encoding(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    """An object stored gzip-encoded is served as stored: the HTTP client must not inflate it."""
    s3 = s3_server(request, "moto")
    key = f"presigned/encoded-{client}.json.gz"
    stored = gzip.compress(os.urandom(200_000), mtime=0)
    put_object(s3, key, stored, "application/gzip", content_encoding="gzip")
    proxy = serve(s3_settings(s3, client))
    with watching(proxy.app.state.storage, Calls()) as calls:
        whole = httpx.get(f"{proxy.url}/objects/{key}", timeout=20)
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": "bytes=0-9"}, timeout=20)
    assert sha256(whole.content) == sha256(stored)
    assert part.content == stored[:10]
    assert calls.presigned == 2


class _ReadThreads:
    """Presigned GETs whose replies note, for every chunk read, how and on which thread."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads: list[tuple[str, str]] = []  # ("ready" or "read", thread name)

    def get(self, s3_key: str, range_value: str | None, etag: str | None) -> Any:
        answer = self._inner.get(s3_key, range_value, etag)
        if answer is None:
            return None
        return replace(answer, stream=_NotedReply(answer.stream, self.reads))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _NotedReply:
    def __init__(self, reply: Any, reads: list[tuple[str, str]]) -> None:
        self._reply = reply
        self._reads = reads

    def read(self, size: int) -> bytes:
        self._reads.append(("read", threading.current_thread().name))
        return bytes(self._reply.read(size))

    def read_ready(self, size: int) -> bytes | None:
        chunk: bytes | None = self._reply.read_ready(size)
        if chunk is not None:
            self._reads.append(("ready", threading.current_thread().name))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reply, name)


@pytest.mark.parametrize("server_name", S3_SERVERS)
def test_a_slow_clients_chunks_are_read_on_the_event_loop(
    request: pytest.FixtureRequest, serve: StartServer, server_name: str
) -> None:
    """boto3 flavour: while the client is slower than S3, the S3 socket holds the next chunk
    already, and it is read on the event loop (no worker-thread hop); the bytes are the same."""
    s3 = s3_server(request, server_name)
    key = "presigned/slow-reader.bin"
    data = os.urandom(32 * 1024 * 1024)  # more than socket buffers take from a slow client
    put_object(s3, key, data, "application/octet-stream")
    proxy = serve(s3_settings(s3, "boto3"))
    storage = proxy.app.state.storage
    inner = storage._presigned
    storage._presigned = watched = _ReadThreads(inner)
    try:
        received = bytearray()
        with httpx.stream("GET", f"{proxy.url}/objects/{key}", timeout=20) as response:
            assert response.status_code == 200
            for piece in response.iter_raw(64 * 1024):
                received += piece
                time.sleep(0.002)  # ~30 MB/s at most: S3 keeps ahead
    finally:
        storage._presigned = inner
    assert sha256(bytes(received)) == sha256(data)
    ready = [thread for how, thread in watched.reads if how == "ready"]
    blocking = [thread for how, thread in watched.reads if how == "read"]
    assert len(ready) > len(blocking)  # most chunks came without a hop
    assert not any(thread.startswith("AnyIO worker") for thread in ready)
    assert all(thread.startswith("AnyIO worker") for thread in blocking)


def _range_hint(spec: str) -> ReadHint:
    return ReadHint(body=True, range=Range.from_header(spec, 1))


HINTS = {
    "whole": (WHOLE, ByteRange(0, len(DATA))),
    "range": (_range_hint("bytes=1000-65535"), ByteRange(1000, 65536)),
    "suffix": (_range_hint("bytes=-17"), ByteRange(len(DATA) - 17, len(DATA))),
    "open-ended": (_range_hint("bytes=1048000-"), ByteRange(1048000, len(DATA))),
    "metadata": (METADATA_ONLY, None),
}
PINNED = ByteRange(10, 20)  # read after the open: a GET pinned to the reply's ETag

Opened = tuple[ObjectMeta, ByteRange | None, bytes, bytes]
"""A reply's meta and range, the bytes its body held, and PINNED read afterwards."""


def open_with_boto3(options: S3Options, key: str, hint: ReadHint) -> Opened:
    storage = open_s3(options)
    try:
        assert (storage.presigned is not None) == options.presigned_gets
        reply = storage.open(key, hint)
        try:
            held = b"".join(reply.body.iter_range(reply.range, 4096)) if reply.range else b""
            later = b"".join(reply.body.iter_range(PINNED, 4096))
        finally:
            reply.body.close()
    finally:
        storage.close()
    return reply.meta, reply.range, held, later


async def open_with_aiobotocore(options: S3Options, key: str, hint: ReadHint) -> Opened:
    async with AsyncExitStack() as stack:
        storage = await aopen_s3(options, stack)
        assert (storage.presigned is not None) == options.presigned_gets
        reply = await storage.open(key, hint)
        try:
            held = b""
            if reply.range:
                held = b"".join([c async for c in await reply.body.aiter_range(reply.range, 4096)])
            later = b"".join([c async for c in await reply.body.aiter_range(PINNED, 4096)])
        finally:
            await reply.body.aclose()
    return reply.meta, reply.range, held, later


@pytest.mark.anyio
@pytest.mark.parametrize("server_name", S3_SERVERS)
@pytest.mark.parametrize("hint_name", list(HINTS))
async def test_presigned_and_botocore_open_the_same_reply(
    request: pytest.FixtureRequest, server_name: str, hint_name: str
) -> None:
    """Every way a GET can go (either flavour, presigned or botocore) opens one typed reply:
    the same metadata, the range its body holds, and those bytes."""
    s3 = s3_server(request, server_name)
    key = f"presigned/same-reply-{hint_name}.bin"
    put_object(s3, key, DATA, "application/octet-stream")
    hint, expected_range = HINTS[hint_name]
    opened = []
    for presigned_gets in (True, False):
        options = S3Options(
            bucket=BUCKET,
            endpoint_url=s3.endpoint_url,
            region=REGION,
            addressing_style="path",
            presigned_gets=presigned_gets,
        )
        opened.append(open_with_boto3(replace(options, client="boto3"), key, hint))
        opened.append(await open_with_aiobotocore(options, key, hint))
    meta = opened[0][0]
    assert (meta.key, meta.size, meta.media_type) == (key, len(DATA), "application/octet-stream")
    assert meta.etag is not None and meta.last_modified is not None
    held = DATA[expected_range.start : expected_range.stop] if expected_range else b""
    assert opened == [(meta, expected_range, held, DATA[10:20])] * 4
