"""Half-closed clients (issue 29, item 6), at the socket, both parsers and both event loops.

A client that sends its request and then shuts its side (``shutdown(SHUT_WR)``, as ``nc -N``
and some HTTP/1.0 tools do) gets the whole response, then the connection closes. uvicorn took
the FIN for a departure and cut the body (65 KB or 2.6 MB of a 3 MB object). A client that
really leaves (its close resets the connection) still stops the transfer at the next write,
its file or S3 connection released.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from proxy.testing.s3servers import S3Server, put_object
from tests.conftest import (
    S3_CLIENTS,
    MediaTree,
    StartServer,
    s3_server,
    s3_settings,
    settings_for,
)
from tests.test_server import bytes_read_by_process, open_fds_to

SIZE = 64 * 1024 * 1024
PARSERS = ["h11", "httptools"]
LOOPS = ["asyncio", "uvloop"]
SPARSE = 1024 * 1024 * 1024


@pytest.fixture(scope="module")
def big_media(tmp_path_factory: pytest.TempPathFactory) -> MediaTree:
    base = tmp_path_factory.mktemp("half-close")
    root = base / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(SIZE))
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(SPARSE)  # read fast: a transfer that did not stop would show at once
    return MediaTree(root=root, outside=base)


def half_closed_get(port: int, key: str) -> tuple[int, int, str, bool]:
    """GET ``key``, shut our side, read the answer: its status, Content-Length, the sha256 of
    the body received, and whether the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"GET /objects/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        head = b""
        for _ in range(1000):
            chunk = sock.recv(65536)
            assert chunk, f"closed before the end of the head: {head!r}"
            head += chunk
            if b"\r\n\r\n" in head:
                break
        head, _, body = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        length = int(fields["content-length"])
        digest = hashlib.sha256(body)
        received = len(body)
        for _ in range(SIZE // 1024 + 10):  # bounded: at least 1 KiB a read until the end
            if received >= length:
                break
            chunk = sock.recv(1024 * 1024)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        closed = sock.recv(1) == b""  # the server closes after the answer (timeout: 20 s)
        return status, received, digest.hexdigest(), closed


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_a_half_closed_client_gets_the_whole_object(
    big_media: MediaTree, serve: StartServer, flavor: str, http: str, loop: str
) -> None:
    server = serve(settings_for(big_media, flavor, http=http, loop=loop))
    status, received, digest, closed = half_closed_get(server.port, "big.bin")
    assert (status, received) == (200, SIZE)
    assert digest == hashlib.sha256(big_media.data("big.bin")).hexdigest()
    assert closed


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_half_closed_client_gets_the_whole_s3_object(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    s3 = s3_server(request, "moto")
    data = os.urandom(SIZE)
    put_object(s3, "half-close/big.bin", data, "application/octet-stream")
    server = serve(s3_settings(s3, client))
    status, received, digest, closed = half_closed_get(server.port, "half-close/big.bin")
    assert (status, received) == (200, SIZE)
    assert digest == hashlib.sha256(data).hexdigest()
    assert closed


def test_half_closed_requests_one_after_another(big_media: MediaTree, serve: StartServer) -> None:
    """Small and empty answers too, and a HEAD: each complete, each connection closed."""
    server = serve(settings_for(big_media, "async"))
    (big_media.root / "small.txt").write_bytes(b"small\n")
    (big_media.root / "empty.bin").write_bytes(b"")
    for key, size in [("small.txt", 6), ("empty.bin", 0), ("missing.bin", None)]:
        status, received, _, closed = half_closed_get(server.port, key)
        assert status == (200 if size is not None else 404)
        if size is not None:
            assert received == size
        assert closed


def leave_after(port: int, key: str, limit: int) -> None:
    """Half-close, read ``limit`` bytes, then close with the rest unread: a reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /objects/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.shutdown(socket.SHUT_WR)
        received = 0
        while received < limit:
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the connection early"
            received += len(chunk)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_a_half_closed_client_that_leaves_stops_the_transfer(
    big_media: MediaTree, serve: StartServer, flavor: str, http: str, loop: str
) -> None:
    server = serve(settings_for(big_media, flavor, http=http, loop=loop))
    path = big_media.root / "sparse.bin"
    kept = open_fds_to(path)  # an earlier test's server may keep one for its next request
    before = bytes_read_by_process()
    leave_after(server.port, "sparse.bin", 1024 * 1024)
    deadline = time.monotonic() + 5
    while open_fds_to(path) > kept + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_fds_to(path) <= kept + 1  # at most the one kept for the next request
    time.sleep(0.2)
    assert bytes_read_by_process() - before < SPARSE // 4  # nowhere near the whole object


def connections_to(port: int) -> int:
    """Established TCP connections whose remote end is 127.0.0.1:``port`` (/proc/net/tcp)."""
    remote = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[2] == remote and line.split()[3] == "01")


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_half_closed_clients_that_leave_release_their_s3_connections(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    s3: S3Server = s3_server(request, "moto")
    put_object(s3, "half-close/leave.bin", os.urandom(16 * 1024 * 1024), None)
    proxy = serve(s3_settings(s3, client, s3_pool_size=4, s3_connect_timeout=2))
    s3_port = int(s3.endpoint_url.rsplit(":", 1)[1])
    baseline = connections_to(s3_port)
    deadline = time.monotonic() + 60
    for _ in range(30):
        leave_after(proxy.port, "half-close/leave.bin", 1024 * 1024)
        assert time.monotonic() < deadline
    deadline = time.monotonic() + 5
    while connections_to(s3_port) > baseline + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert connections_to(s3_port) <= baseline + 4  # closed, or back in the pool of 4
    status, received, _, closed = half_closed_get(proxy.port, "half-close/leave.bin")
    assert (status, received, closed) == (200, 16 * 1024 * 1024, True)
