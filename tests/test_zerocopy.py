"""Zero-copy local sends (issue 26): the ASGI ``http.response.zerocopysend`` extension.

Real uvicorn servers on 127.0.0.1, both parsers, both event loops, both flavours. A body took
the zero-copy path when the bytes ``sendfile`` sent in this process (``SendfileTally``; the
tests' servers run in threads here) grew by its length: they never passed through an
``http.response.body`` message. The access log's and the metrics' byte counts stay the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY

from proxy.app import create_app
from proxy.config import Settings
from proxy.connection import ZERO_COPY, SendfileTally
from proxy.server import uvicorn_options
from proxy.storage.errors import BodyTruncated
from proxy.storage.local import LocalBody
from tests.conftest import MediaTree, StartServer, settings_for
from tests.loopback import self_signed

SIZE = 24 * 1024 * 1024 + 4321  # several zero-copy steps (4 MiB), not a multiple of a page
# Its ranges up to the chunk size (64 KiB in the tests) go at once: one zero-copy send each.
SMALL = 200_000 - 7
TINY = 1234
SPARSE = 1024 * 1024 * 1024
PARSERS = ["h11", "httptools"]
LOOPS = ["asyncio", "uvloop"]
FLAVORS = ["sync", "async"]
ROUTE = "/objects/{key:objectkey}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> MediaTree:
    base = tmp_path_factory.mktemp("zerocopy")
    root = base / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(SIZE))
    (root / "small.bin").write_bytes(os.urandom(SMALL))
    (root / "tiny.bin").write_bytes(os.urandom(TINY))
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(SPARSE)  # read fast: a transfer that did not stop would show at once
    return MediaTree(root=root, outside=base)


def bytes_metric() -> float:
    return REGISTRY.get_sample_value("proxy_response_bytes_total", {"route": ROUTE}) or 0.0


def wait_for(condition: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return bool(condition())  # type: ignore[operator]


@contextlib.contextmanager
def serving(app: Any, settings: Settings, **options: Any) -> Iterator[int]:
    """``app`` on the connection layer ``settings`` configure (uvicorn in a thread): its port."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        **{"log_level": "warning", **options},
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def sent_since(before: int, expected: int) -> int:
    """The bytes sendfile sent since ``before``, once at least ``expected`` (or 5 s): the server
    thread counts right after its sendfile, which may be after the client read the bytes."""
    wait_for(lambda: SendfileTally.bytes - before >= expected, 5)
    return SendfileTally.bytes - before


def multipart_bodies(response: httpx.Response) -> list[bytes]:
    boundary = response.headers["content-type"].split("boundary=")[1].encode()
    parts = response.content.split(b"--" + boundary)[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1][: -len(b"\r\n")] for part in parts]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_bodies_go_by_sendfile(
    files: MediaTree, serve: StartServer, flavor: str, http: str, loop: str
) -> None:
    server = serve(settings_for(files, flavor, http=http, loop=loop))
    data = files.data("big.bin")
    url = f"{server.url}/objects/big.bin"
    cases = [
        (None, 200, data),
        ("bytes=1000-5000999", 206, data[1000:5001000]),  # a single range
        ("bytes=7777777-", 206, data[7777777:]),  # open
        ("bytes=-3000000", 206, data[-3000000:]),  # suffix
    ]
    with httpx.Client(timeout=30) as client:  # one kept connection: responses in a row
        for spec, status, expected in cases:
            before = SendfileTally.bytes
            headers = {"range": spec} if spec else {}
            response = client.get(url, headers=headers)
            assert response.status_code == status, spec
            assert sha(response.content) == sha(expected), spec
            assert sent_since(before, len(expected)) == len(expected), spec  # all of it by sendfile
        ranges = [(0, 99), (2_000_000, 9_000_000), (SIZE - 10, SIZE - 1)]
        spec = "bytes=" + ",".join(f"{first}-{last}" for first, last in ranges)
        before = SendfileTally.bytes
        response = client.get(url, headers={"range": spec})
        assert response.status_code == 206
        assert response.headers["content-type"].startswith("multipart/byteranges")
        bodies = multipart_bodies(response)
        assert [sha(body) for body in bodies] == [sha(data[a : b + 1]) for a, b in ranges]
        assert int(response.headers["content-length"]) == len(response.content)
        # The parts' bodies by sendfile, their framing as body messages.
        total = sum(b + 1 - a for a, b in ranges)
        assert sent_since(before, total) == total
        head = client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(SIZE)


def test_the_access_log_and_metrics_count_zero_copy_bytes(
    files: MediaTree, serve: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    server = serve(settings_for(files, "async", access_log=True))
    before = bytes_metric()
    response = httpx.get(f"{server.url}/objects/big.bin", headers={"range": "bytes=10-"})
    assert response.status_code == 206
    assert len(response.content) == SIZE - 10
    assert wait_for(lambda: bytes_metric() - before >= SIZE - 10)
    assert bytes_metric() - before == SIZE - 10
    assert wait_for(lambda: f'"bytes_sent": {SIZE - 10},' in caplog.text, 5)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize("flavor", FLAVORS)
def test_small_bodies_go_by_sendfile_at_once(
    files: MediaTree, serve: StartServer, flavor: str, http: str, loop: str
) -> None:
    """Bodies of at most one chunk (read whole and sent as one message without zero-copy)
    go as one zero-copy send each, multipart framing around them, in both flavours."""
    server = serve(settings_for(files, flavor, http=http, loop=loop))
    assert server.settings.chunk_size == 64 * 1024
    data = files.data("small.bin")
    url = f"{server.url}/objects/small.bin"
    cases = [
        ("bytes=1000-66535", 206, data[1000:66536]),  # a whole chunk
        (f"bytes={SMALL - 5000}-", 206, data[-5000:]),  # open
        ("bytes=-3000", 206, data[-3000:]),  # suffix
        ("bytes=0-0", 206, data[:1]),
    ]
    with httpx.Client(timeout=30) as client:  # one kept connection: responses in a row
        for spec, status, expected in cases:
            before = SendfileTally.bytes
            response = client.get(url, headers={"range": spec})
            assert response.status_code == status, spec
            assert response.headers["content-length"] == str(len(expected)), spec
            assert sha(response.content) == sha(expected), spec
            assert sent_since(before, len(expected)) == len(expected), spec  # all of it by sendfile
        ranges = [(0, 99), (70_000, 80_000), (SMALL - 10, SMALL - 1)]
        spec = "bytes=" + ",".join(f"{first}-{last}" for first, last in ranges)
        before = SendfileTally.bytes
        response = client.get(url, headers={"range": spec})
        assert response.status_code == 206
        assert response.headers["content-type"].startswith("multipart/byteranges")
        assert [sha(body) for body in multipart_bodies(response)] == [
            sha(data[a : b + 1]) for a, b in ranges
        ]
        assert int(response.headers["content-length"]) == len(response.content)
        total = sum(b + 1 - a for a, b in ranges)
        assert sent_since(before, total) == total
        before = SendfileTally.bytes
        response = client.get(f"{server.url}/objects/tiny.bin")  # a whole small object
        assert response.status_code == 200
        assert sha(response.content) == sha(files.data("tiny.bin"))
        assert sent_since(before, TINY) == TINY


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_answers_without_a_file_body_keep_the_connection_in_step(
    files: MediaTree, serve: StartServer, http: str, loop: str
) -> None:
    """HEAD, 304, 412 and 416 send no file bytes (at most their JSON bodies): on one kept
    connection, every answer is whole and the next one follows."""
    server = serve(settings_for(files, "async", http=http, loop=loop))
    data = files.data("small.bin")
    url = f"{server.url}/objects/small.bin"
    before = SendfileTally.bytes
    with httpx.Client(timeout=30) as client:
        head = client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(SMALL)
        etag = head.headers["etag"]
        assert client.get(url, headers={"if-none-match": etag}).status_code == 304
        failed = client.get(url, headers={"if-match": '"another"'})
        assert failed.status_code == 412
        assert failed.json()["error"]
        unsatisfiable = client.get(url, headers={"range": f"bytes={SMALL}-"})
        assert unsatisfiable.status_code == 416
        assert unsatisfiable.headers["content-range"] == f"bytes */{SMALL}"
        assert unsatisfiable.json()["error"]
        assert SendfileTally.bytes == before  # none of them sent file bytes
        response = client.get(url, headers={"range": "bytes=5-9"})
        assert response.status_code == 206 and response.content == data[5:10]
        assert sent_since(before, 5) == 5


def test_the_access_log_and_metrics_count_small_zero_copy_bodies(
    files: MediaTree, serve: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "proxy.access")
    server = serve(settings_for(files, "sync", access_log=True))
    url = f"{server.url}/objects/small.bin"
    before = bytes_metric()
    single = httpx.get(url, headers={"range": "bytes=10-20009"})
    assert single.status_code == 206 and len(single.content) == 20_000
    multipart = httpx.get(url, headers={"range": "bytes=0-9,100-199"})
    assert multipart.status_code == 206
    length = int(multipart.headers["content-length"])
    assert length == len(multipart.content) > 110  # the parts' bytes and their framing
    assert wait_for(lambda: bytes_metric() - before >= 20_000 + length)
    assert bytes_metric() - before == 20_000 + length
    assert wait_for(lambda: f'"bytes_sent": {length},' in caplog.text, 5)
    assert '"bytes_sent": 20000,' in caplog.text


@pytest.mark.parametrize("flavor", FLAVORS)
def test_without_zero_copy_the_chunks_are_streamed(
    files: MediaTree, serve: StartServer, flavor: str
) -> None:
    server = serve(settings_for(files, flavor, zero_copy=False))
    before = SendfileTally.bytes
    response = httpx.get(f"{server.url}/objects/big.bin", timeout=30)
    assert response.status_code == 200
    assert sha(response.content) == sha(files.data("big.bin"))
    assert SendfileTally.bytes == before


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_server_without_the_extension_gets_the_chunks(
    files: MediaTree, flavor: str
) -> None:
    """httpx's ASGI transport offers no extension: the ordinary body messages serve."""
    app = create_app(settings_for(files, flavor))
    before = SendfileTally.bytes
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            response = await client.get("/objects/big.bin", headers={"range": "bytes=5-"})
    assert response.status_code == 206
    assert sha(response.content) == sha(files.data("big.bin")[5:])
    assert SendfileTally.bytes == before


@pytest.mark.anyio
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_without_the_extension_small_bodies_are_read_whole(
    files: MediaTree, flavor: str
) -> None:
    """Without the extension, a body of at most one chunk is read before the response starts
    and sent as one message: single ranges, suffixes and multipart (a sync body's parts in one
    worker-thread hop)."""
    app = create_app(settings_for(files, flavor))
    data = files.data("small.bin")
    before = SendfileTally.bytes
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            single = await client.get("/objects/small.bin", headers={"range": "bytes=7-65542"})
            suffix = await client.get("/objects/small.bin", headers={"range": "bytes=-999"})
            multipart = await client.get(
                "/objects/small.bin", headers={"range": "bytes=0-9,150000-150099"}
            )
    assert single.status_code == 206 and sha(single.content) == sha(data[7:65543])
    assert suffix.status_code == 206 and sha(suffix.content) == sha(data[-999:])
    assert multipart.status_code == 206
    assert [sha(body) for body in multipart_bodies(multipart)] == [
        sha(data[:10]),
        sha(data[150000:150100]),
    ]
    assert SendfileTally.bytes == before


def test_a_small_body_checks_its_file_before_it_starts(tmp_path: Path) -> None:
    """What a small body sent at once checks before its response starts: a file that no longer
    reaches the range (it shrank) is ``BodyTruncated`` there, an error status yet to be sent."""
    path = tmp_path / "shrinks.bin"
    path.write_bytes(os.urandom(SMALL))
    body = LocalBody(os.open(path, os.O_RDONLY))
    try:
        body.cached(0, SMALL)  # reaches the end: no error, cached or not
        os.truncate(path, 1000)
        with pytest.raises(BodyTruncated):
            body.cached(500, 1000)  # the last byte is past the end now
    finally:
        body.close()


def get_head(sock: socket.socket, key: str, extra: str = "") -> tuple[int, int, bytes]:
    """Send a GET, read the head: status, Content-Length, the body bytes read with it."""
    sock.sendall(f"GET /objects/{key} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    head = b""
    for _ in range(1000):
        chunk = sock.recv(65536)
        assert chunk, f"closed before the end of the head: {head!r}"
        head += chunk
        if b"\r\n\r\n" in head:
            break
    head, _, body = head.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, length, body


def read_to_end(sock: socket.socket, limit: int) -> bytes:
    received = bytearray()
    for _ in range(100_000):
        chunk = sock.recv(1024 * 1024)
        if not chunk:
            break
        received += chunk
        if len(received) > limit:
            break
    return bytes(received)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_a_file_that_shrinks_while_sent_aborts_the_transfer(
    tmp_path: Path, serve: StartServer, http: str, loop: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    path = root / "shrinks.bin"
    path.write_bytes(os.urandom(SIZE))
    server = serve(settings_for(MediaTree(root, tmp_path), "async", http=http, loop=loop))
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        status, length, body = get_head(sock, "shrinks.bin")
        assert (status, length) == (200, SIZE)
        os.truncate(path, 1024 * 1024)  # while the first step is under way, or before it
        rest = read_to_end(sock, SIZE)
    received = len(body) + len(rest)
    assert received < SIZE  # cut, and the connection closed: not a short 200 taken as whole


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_a_small_range_of_a_file_that_shrinks_after_it_started_is_cut(
    tmp_path: Path, http: str, loop: str
) -> None:
    """The file shrinks between the checks and the send (the app's start message truncates
    it): the head is out, the body cannot follow, the connection ends short."""
    root = tmp_path / "root"
    root.mkdir()
    path = root / "shrinks.bin"
    path.write_bytes(os.urandom(SMALL))
    settings = settings_for(MediaTree(root, tmp_path), "async", http=http, loop=loop)
    app = create_app(settings)

    async def truncating(scope: dict[str, object], receive: object, send: object) -> None:
        async def send_start(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                os.truncate(path, 1000)
            await send(message)  # type: ignore[operator]

        await app(scope, receive, send_start if scope["type"] == "http" else send)  # type: ignore[arg-type]

    with serving(truncating, settings, log_level="critical") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            status, length, body = get_head(sock, "shrinks.bin", "Range: bytes=2000-60000\r\n")
            assert (status, length) == (206, 58_001)
            rest = read_to_end(sock, length)
        assert len(body) + len(rest) < length  # cut, and closed: not a short 206 taken as whole


@pytest.mark.parametrize("flavor", FLAVORS)
def test_small_ranges_close_their_files_when_clients_hang_up(
    files: MediaTree, serve: StartServer, flavor: str
) -> None:
    server = serve(settings_for(files, flavor, local_open_files=0))
    path = files.root / "small.bin"
    baseline = open_fds_to(path)
    for index in range(20):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            first = index * 5000
            request = f"GET /objects/small.bin HTTP/1.1\r\nHost: x\r\nRange: bytes={first}-"
            sock.sendall(f"{request}{first + 65535}\r\n\r\n".encode())
            if index % 2:
                assert sock.recv(100)  # some of it, then gone; or gone at once
    assert wait_for(lambda: open_fds_to(path) == baseline, 5)  # every file closed
    response = httpx.get(f"{server.url}/objects/small.bin", headers={"range": "bytes=3-5"})
    assert response.content == files.data("small.bin")[3:6]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_slow_readers_wait_on_the_loop(
    files: MediaTree, serve: StartServer, http: str, loop: str
) -> None:
    """Readers that read nothing hold their sockets full; /healthz still answers at once, and
    each reader then gets the whole object."""
    server = serve(settings_for(files, "async", http=http, loop=loop))
    readers: list[tuple[socket.socket, bytes]] = []
    results: list[str] = []
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            status, length, body = get_head(sock, "big.bin")
            readers.append((sock, body))
            assert (status, length) == (200, SIZE)
        # Every socket full: sendfile stops moving bytes (the sends wait for room).
        last = -1
        for _ in range(100):
            time.sleep(0.1)
            if SendfileTally.bytes == last:
                break
            last = SendfileTally.bytes
        assert SendfileTally.bytes == last
        with httpx.Client(timeout=10) as client:
            for _ in range(10):
                started = time.monotonic()
                assert client.get(f"{server.url}/healthz").status_code == 200
                assert time.monotonic() - started < 2.0  # generous: shared cores, other tests

        def drain(sock: socket.socket, body: bytes) -> None:
            results.append(sha(body + read_until(sock, SIZE - len(body))))

        threads = [threading.Thread(target=drain, args=reader) for reader in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for sock, _ in readers:
            sock.close()
    assert results == [sha(files.data("big.bin"))] * len(readers)


def read_until(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(1024 * 1024)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def open_fds_to(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_a_client_that_leaves_mid_sendfile_stops_it(
    files: MediaTree, serve: StartServer, http: str, loop: str
) -> None:
    server = serve(settings_for(files, "async", http=http, loop=loop, local_open_files=0))
    path = files.root / "sparse.bin"
    baseline = open_fds_to(path)
    sockets_before = len(os.listdir("/proc/self/fd"))
    before = SendfileTally.bytes
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        status, length, body = get_head(sock, "sparse.bin")
        assert (status, length) == (200, SPARSE)
        received = len(body)
        while received < 1024 * 1024:
            chunk = sock.recv(65536)
            assert chunk
            received += len(chunk)
        assert open_fds_to(path) == baseline + 1  # the request's file, open while it sends
    # closed with unread data: a reset
    assert wait_for(lambda: open_fds_to(path) == baseline, 5)  # the file is closed
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= sockets_before, 5)
    sent = SendfileTally.bytes
    time.sleep(0.3)
    assert SendfileTally.bytes == sent  # nothing keeps sending
    assert sent - before < SPARSE // 4  # nowhere near the whole object


@pytest.mark.parametrize("loop", LOOPS)
def test_over_tls_the_chunks_are_streamed(files: MediaTree, tmp_path: Path, loop: str) -> None:
    """TLS encrypts in Python's ssl module: no zero-copy send is offered, the chunks serve."""
    settings = settings_for(files, "async", loop=loop)
    pem = self_signed(tmp_path)
    with serving(create_app(settings), settings, ssl_certfile=str(pem)) as port:
        before = SendfileTally.bytes
        response = httpx.get(
            f"https://127.0.0.1:{port}/objects/big.bin",
            headers={"range": "bytes=3-"},
            verify=ssl.create_default_context(cafile=str(pem)),
            timeout=30,
        )
        assert response.status_code == 206
        assert sha(response.content) == sha(files.data("big.bin")[3:])
        small = httpx.get(
            f"https://127.0.0.1:{port}/objects/small.bin",
            headers={"range": "bytes=-4000"},
            verify=ssl.create_default_context(cafile=str(pem)),
            timeout=30,
        )
        assert small.status_code == 206
        assert sha(small.content) == sha(files.data("small.bin")[-4000:])
        assert SendfileTally.bytes == before


def evict(path: Path) -> bool:
    """Drop the file's pages from the page cache (clean pages: synced first); whether it
    worked (a filesystem may keep them, tmpfs always does)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return not LocalBody(os.dup(fd)).cached(SIZE // 2, 4096)
    finally:
        os.close(fd)


def test_a_range_not_in_the_page_cache_is_loaded_before_it_is_sent(files: MediaTree) -> None:
    path = files.root / "big.bin"
    if not evict(path):
        pytest.skip("this filesystem keeps the file's pages")
    body = LocalBody(os.open(path, os.O_RDONLY))
    try:
        assert not body.cached(0, SIZE)
        body.load(0, SIZE)
        assert body.cached(0, SIZE)
    finally:
        body.close()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_cold_file_goes_out_whole(files: MediaTree, serve: StartServer, flavor: str) -> None:
    path = files.root / "big.bin"
    if not evict(path):
        pytest.skip("this filesystem keeps the file's pages")
    server = serve(settings_for(files, flavor))
    before = SendfileTally.bytes
    response = httpx.get(f"{server.url}/objects/big.bin", timeout=30)
    assert response.status_code == 200
    assert sha(response.content) == sha(files.data("big.bin"))
    assert sent_since(before, SIZE) == SIZE


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
def test_the_extension_frames_chunked_bodies_and_follows_the_file_position(
    files: MediaTree, http: str, loop: str
) -> None:
    """Any ASGI app on the connection layer: no Content-Length (chunked framing), no offset
    (from the file's position, which then moves on) and no count (to the end of the file)."""
    path = files.root / "big.bin"
    seen: list[dict[str, object]] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        seen.append(dict(scope.get("extensions") or {}))  # type: ignore[call-overload]
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start)  # type: ignore[operator]
        with open(path, "rb") as file:
            file.seek(SIZE - 100_000)
            await send({"type": ZERO_COPY, "file": file, "count": 60_000, "more_body": True})  # type: ignore[operator]
            assert file.tell() == SIZE - 40_000
            await send({"type": ZERO_COPY, "file": file.fileno(), "more_body": True})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": b"end", "more_body": False})  # type: ignore[operator]

    settings = settings_for(files, "async", http=http, loop=loop)
    with serving(app, settings, lifespan="off") as port:
        before = SendfileTally.bytes
        with httpx.Client(timeout=30) as client:
            for _ in range(2):  # and the connection is kept for the next request
                response = client.get(f"http://127.0.0.1:{port}/")
                assert response.headers["transfer-encoding"] == "chunked"
                assert sha(response.content) == sha(files.data("big.bin")[-100_000:] + b"end")
        assert sent_since(before, 2 * 100_000) == 2 * 100_000
        assert seen == [{ZERO_COPY: {}}] * 2


@pytest.mark.parametrize(
    ("name", "value", "sound"),
    [
        (b"x-fine", b"a\tb \x80\xff", True),  # a tab and obs-text are allowed in values
        (b"x-bad", b"a\nb", False),
        (b"x-bad", b"a\x7f", False),
        (b"x bad", b"a", False),
        (b"x-bad:", b"a", False),
        (b"x-bad\x00", b"a", False),
    ],
)
def test_the_connection_layer_checks_each_header_field(
    files: MediaTree, name: bytes, value: bytes, sound: bool
) -> None:
    """The head of a response is checked as uvicorn checks it (one field is enough to refuse
    it: the app's send raises, no byte of the head goes out and the connection closes), and
    written as uvicorn writes it."""
    errors: list[BaseException] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"text/plain"), (name, value), (b"content-length", b"2")]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
        except RuntimeError as exc:
            errors.append(exc)
            raise
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    settings = settings_for(files, "async", http="httptools")
    with serving(app, settings, log_level="critical", lifespan="off") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if sound:  # the head and the body, which may come in two reads
                answer = b""
                while not answer.endswith(b"\r\n\r\nok") and (chunk := sock.recv(1 << 16)):
                    answer += chunk
            else:
                answer = read_to_end(sock, 1 << 16)
        if sound:
            assert errors == []
            head, body = answer.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            assert lines[0] == b"HTTP/1.1 200 OK"
            assert lines[2:] == [
                b"content-type: text/plain",
                name + b": " + value,
                b"content-length: 2",
            ]
            assert body == b"ok"
        else:
            assert answer == b""
            assert len(errors) == 1 and "Invalid HTTP header" in str(errors[0])
