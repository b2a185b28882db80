"""Real uvicorn servers: disconnects release the file, a shrinking file aborts, errors map."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from proxy.app import create_app
from proxy.config import Settings
from proxy.routes import OBJECT_PATH
from proxy.storage import errors
from proxy.storage.base import METADATA_ONLY, Body, ReadHint, Reply
from tests.conftest import FLAVORS, MediaTree, StartServer, settings_for

BIG = 256 * 1024 * 1024


def open_fds_to(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def bytes_read_by_process() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.fixture
def big_tree(tmp_path: Path) -> MediaTree:
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        f.truncate(BIG)  # sparse: reading it is fast, so a runaway reader would show at once
    return MediaTree(root=root, outside=tmp_path)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_disconnect_stops_reading_and_closes_the_file(
    big_tree: MediaTree, serve: StartServer, flavor: str
) -> None:
    server = serve(settings_for(big_tree, flavor))
    path = big_tree.root / "big.bin"
    before = bytes_read_by_process()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /objects/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        received = 0
        while received < 1024 * 1024:
            received += len(sock.recv(65536))
        assert open_fds_to(path) == 2  # the stream's, and the one kept for the next request
    deadline = time.monotonic() + 5
    while open_fds_to(path) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_fds_to(path) == 1
    time.sleep(0.2)
    assert bytes_read_by_process() - before < BIG // 4  # nowhere near the whole object


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_file_that_shrinks_mid_stream_aborts_the_transfer(
    big_tree: MediaTree, serve: StartServer, flavor: str
) -> None:
    server = serve(settings_for(big_tree, flavor))
    path = big_tree.root / "big.bin"
    received = 0
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/objects/big.bin") as response:
            assert response.headers["content-length"] == str(BIG)
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in response.iter_raw(65536):
                    if not received:
                        os.truncate(path, 1024 * 1024)
                    received += len(chunk)
    assert 0 < received < BIG


class FailingStorage:
    """An in-process double for the error paths that a local disk cannot produce on demand."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[Body]:
        raise self.error

    def check(self) -> None:
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.ObjectNotFound(), 404, "not_found"),
        (errors.AccessDenied(), 403, "forbidden"),
        (errors.InvalidKey(), 400, "invalid_key"),
        (errors.BackendUnavailable(), 503, "backend_unavailable"),
        (errors.BackendTimeout(), 504, "backend_timeout"),
        (errors.StorageError(), 502, "bad_gateway"),
        (RuntimeError("/secret/path password=hunter2"), 500, "internal_error"),
    ],
)
def test_storage_errors_map_to_json_statuses(
    media: MediaTree, serve: StartServer, error: Exception, status: int, code: str
) -> None:
    server = serve(settings_for(media, "sync"))
    server.app.state.storage = FailingStorage(error)
    response = httpx.get(f"{server.url}/objects/a.mp4", timeout=10)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert "Traceback" not in response.text and "hunter2" not in response.text
    assert "/secret" not in response.text
    if status == 503:
        assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_object_route_is_the_apps_own_route(media: MediaTree, flavor: str) -> None:
    # Served by the app's router, request_response and exception handlers: one Starlette Route
    # for GET (and the HEAD Starlette adds), no middleware routing around them; the OpenAPI
    # document still describes both operations.
    app = create_app(settings_for(media, flavor))
    routes = [r for r in app.router.routes if isinstance(r, Route) and r.path == OBJECT_PATH]
    assert len(routes) == 1
    assert routes[0].methods == {"GET", "HEAD"}
    assert all(m.cls.__module__ != "proxy.routes" for m in app.user_middleware)
    operations = app.openapi()["paths"]["/objects/{key}"]
    assert {method: op["operationId"] for method, op in operations.items()} == {
        "get": "get_object",
        "head": "head_object",
    }
    assert [p["name"] for p in operations["get"]["parameters"]] == ["key", "download"]


@pytest.mark.anyio
async def test_a_missing_root_fails_at_startup(tmp_path: Path) -> None:
    app = create_app(Settings(local_root=tmp_path / "does-not-exist"))
    with pytest.raises(ValueError, match="not an existing directory"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.parametrize("flavor", FLAVORS)
def test_curl_downloads_whole_and_ranged(
    media: MediaTree, serve: StartServer, flavor: str, tmp_path: Path
) -> None:
    server = serve(settings_for(media, flavor))
    url = f"{server.url}/objects/video/clip.mp4"
    data = media.data("video/clip.mp4")
    whole = tmp_path / "whole.mp4"
    subprocess.run(["curl", "-sSf", "-o", str(whole), url], check=True, timeout=60)
    assert hashlib.sha256(whole.read_bytes()).digest() == hashlib.sha256(data).digest()
    part = tmp_path / "part.mp4"
    subprocess.run(
        ["curl", "-sSf", "-r", "1000-2999", "-o", str(part), url], check=True, timeout=60
    )
    assert part.read_bytes() == data[1000:3000]
    # Resume a partial download with curl -C -: the rest arrives as a 206 and completes the file.
    resumed = tmp_path / "resumed.mp4"
    resumed.write_bytes(data[: len(data) // 3])
    subprocess.run(["curl", "-sSf", "-C", "-", "-o", str(resumed), url], check=True, timeout=60)
    assert hashlib.sha256(resumed.read_bytes()).digest() == hashlib.sha256(data).digest()
