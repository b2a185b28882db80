"""Cached slices by zero-copy sends: a slice on disk goes from the page cache to the socket by
``sendfile`` (``FileSpan``), never through Python, where the server offers the extension; the
rest of a response (slices a fill brings, S3 itself) stays ordinary chunks.

Real proxies (both flavours) on real S3 servers. A body took the zero-copy path when the bytes
``sendfile`` sent in this process (``SendfileTally``: the tests' servers run in threads) grew by
its length.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from proxy.connection import SendfileTally
from tests.cache.conftest import SLICE, CachedProxy, MakeProxy
from tests.test_zerocopy import sent_since, wait_for


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_bytes(source: str) -> float:
    return REGISTRY.get_sample_value("proxy_cache_bytes_total", {"source": source}) or 0.0


def warm(proxy: CachedProxy, key: str, expected: bytes, **headers: str) -> None:
    """GET until every byte of the answer comes from the slices' files: their fill has stored
    them and let go (until then it serves them from memory)."""
    deadline = time.monotonic() + 10
    while True:
        from_disk = cache_bytes("cache")
        response = proxy.get(key, **headers)
        assert sha256(response.content) == sha256(expected)
        if cache_bytes("cache") - from_disk == len(expected):
            return
        assert time.monotonic() < deadline, "the slices were not stored"
        time.sleep(0.05)


def open_slices(directory: Path) -> int:
    """This process's descriptors open on slice files (``*.val``) of the cache ``directory``
    (its index's are not counted)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        count += target.startswith(f"{directory}/") and target.endswith(".val")
    return count


def test_cached_slices_go_by_sendfile(proxy: CachedProxy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    size = 6 * SLICE + 4321
    key, data = proxy.put(size)
    warm(proxy, key, data)

    cases = [
        (None, 200, data),
        (f"bytes=1000-{3 * SLICE + 77}", 206, data[1000 : 3 * SLICE + 78]),  # across slices
        (f"bytes={4 * SLICE - 5}-", 206, data[4 * SLICE - 5 :]),  # open, the short last slice
        (f"bytes=-{2 * SLICE + 9}", 206, data[-(2 * SLICE + 9) :]),  # suffix
    ]
    for spec, status, expected in cases:
        before, from_disk = SendfileTally.bytes, cache_bytes("cache")
        response = proxy.get(key, **({"range": spec} if spec else {}))
        assert response.status_code == status, spec
        assert response.headers["cache-status"] == "media-proxy; hit", spec
        assert sha256(response.content) == sha256(expected), spec
        assert sent_since(before, len(expected)) == len(expected), spec  # all of it by sendfile
        assert cache_bytes("cache") - from_disk == len(expected), spec
        # The access log counts the body as it counts streamed chunks (and the metrics with it).
        line = f'"request_id": "{response.headers["x-request-id"]}"'
        logged = f'{line}, .*"bytes_sent": {len(expected)},'
        assert wait_for(lambda logged=logged: re.search(logged, caplog.text), 5), spec


def test_slices_on_disk_and_slices_being_fetched_mix_in_one_body(proxy: CachedProxy) -> None:
    key, data = proxy.put(5 * SLICE + 99)
    warm(proxy, key, data[SLICE : 3 * SLICE], range=f"bytes={SLICE}-{3 * SLICE - 1}")

    before = SendfileTally.bytes
    from_disk, from_s3 = cache_bytes("cache"), cache_bytes("s3")
    whole = proxy.get(key)
    assert whole.status_code == 200
    assert sha256(whole.content) == sha256(data)
    # Slices 1 and 2 from their files, by sendfile; 0, 3, 4 and 5 fetched now, as chunks
    # from the fill, or from their files too where the fill stored them before the response
    # came to them.
    by_file = cache_bytes("cache") - from_disk
    assert by_file >= 2 * SLICE
    assert by_file + cache_bytes("s3") - from_s3 == len(data)
    assert sent_since(before, int(by_file)) == by_file


def test_without_zero_copy_cached_slices_are_read(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(zero_copy=False)
    key, data = proxy.put(3 * SLICE + 5)
    warm(proxy, key, data)

    before, from_disk = SendfileTally.bytes, cache_bytes("cache")
    response = proxy.get(key, range=f"bytes=7-{3 * SLICE}")
    assert response.headers["cache-status"] == "media-proxy; hit"
    assert sha256(response.content) == sha256(data[7 : 3 * SLICE + 1])
    assert cache_bytes("cache") - from_disk == 3 * SLICE - 6  # read from the slices' files
    time.sleep(0.2)
    assert SendfileTally.bytes == before


def test_a_slow_reader_of_cached_slices_waits_on_the_loop_and_its_files_close(
    proxy: CachedProxy,
) -> None:
    """A client that reads nothing holds the socket full mid-sendfile: other requests are still
    answered at once, and when it hangs up no descriptor of a slice stays open."""
    size = 48 * SLICE  # 12 MiB: more than loopback's socket buffers hold
    key, data = proxy.put(size)
    warm(proxy, key, data)
    assert wait_for(lambda: open_slices(proxy.directory) == 0)

    port = int(proxy.url.rsplit(":", 1)[1])
    before = SendfileTally.bytes
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.sendall(f"GET /objects/{key} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
        assert slow.recv(65536).startswith(b"HTTP/1.1 200 ")
        # The socket fills, then the send waits for room on the event loop.
        assert wait_for(lambda: SendfileTally.bytes > before)
        time.sleep(0.3)
        stalled = SendfileTally.bytes
        assert stalled - before < size // 2
        assert open_slices(proxy.directory) >= 1  # the span's slice, open while it is sent
        started = time.monotonic()
        with httpx.Client(base_url=proxy.url, timeout=5) as other:
            assert other.get("/healthz").status_code == 200
            small = other.get(f"/objects/{key}", headers={"range": "bytes=0-99"})
            assert small.content == data[:100]
        assert time.monotonic() - started < 2.0
        assert SendfileTally.bytes - stalled < size // 2  # the slow one still waits
    assert wait_for(lambda: open_slices(proxy.directory) == 0)
