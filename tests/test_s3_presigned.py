"""Presigned GETs through real proxies on real S3 servers: one URL per key, the same bytes as
botocore's, botocore answering what they cannot (a rejected signature), and turned off."""

from __future__ import annotations

import gzip
import os
import threading
import time
from typing import Any

import httpx
import pytest

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
from tests.s3servers import put_object

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
        got = self._inner.get(s3_key, range_value, etag)
        if got is None:
            return None
        fields, reply, _ = got
        noted = _NotedReply(reply, self.reads)
        return fields, noted, noted

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
