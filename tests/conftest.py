"""Shared fixtures: a generated media tree and real uvicorn servers on 127.0.0.1, per flavour."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from proxy.app import create_app
from proxy.config import Settings
from proxy.server import uvicorn_options
from proxy.storage.mediatypes import media_type_for
from proxy.testing.s3servers import (
    BUCKET,
    REGION,
    S3Server,
    aws_environment,
    put_object,
    start_moto,
    start_seaweedfs,
    upload_tree,
)

FLAVORS = ["sync", "async"]
S3_CLIENTS = ["boto3", "aiobotocore"]
S3_SERVERS = ["moto", "seaweedfs"]
# Every end-to-end HTTP test runs against each of these: one HTTP layer, every backend.
# The slice cache in front of S3 keeps every RFC 9110 answer: two of them run through it too.
BACKENDS = [
    "local-sync",
    "local-async",
    *(f"{server}-{client}" for server in S3_SERVERS for client in S3_CLIENTS),
    "moto-boto3-cache",
    "seaweedfs-aiobotocore-cache",
]
CHUNK_SIZE = 64 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class MediaTree:
    root: Path
    outside: Path  # a directory beside the root holding a secret

    def data(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


def make_media_tree(base: Path) -> MediaTree:
    root = base / "root"
    outside = base / "outside"
    (root / "video").mkdir(parents=True)
    (root / "dir").mkdir()
    outside.mkdir()
    rng = random.Random(1234)
    (root / "video" / "clip.mp4").write_bytes(rng.randbytes(3 * 1024 * 1024 + 123))
    (root / "dir" / "inner.mp3").write_bytes(rng.randbytes(10_000))
    (root / "empty.bin").write_bytes(b"")
    (root / "hello.txt").write_bytes(b"hello world\n")
    (root / "name with spaces & (parens) \u00fc.webm").write_bytes(rng.randbytes(5000))
    (root / "page.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    (outside / "secret.txt").write_bytes(b"TOP SECRET\n")
    os.symlink(outside / "secret.txt", root / "escape.txt")
    os.symlink(outside, root / "escape-dir")
    os.symlink(root / "hello.txt", root / "linked.txt")
    return MediaTree(root=root, outside=outside)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> MediaTree:
    return make_media_tree(tmp_path_factory.mktemp("media"))


@dataclass
class RunningServer:
    url: str
    port: int
    settings: Settings
    app: FastAPI


StartServer = Callable[[Settings], "RunningServer"]


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[RunningServer]:
    """A uvicorn server for ``settings`` in a thread, stopped (lifespan and all) on exit."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", port, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serve() -> Iterator[StartServer]:
    """Start uvicorn servers in threads; all of them stop at the end of the session."""
    with contextlib.ExitStack() as stack:
        yield lambda settings: stack.enter_context(running(settings))


def settings_for(media: MediaTree, flavor: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "local_root": media.root,
        "flavor": flavor,
        "chunk_size": CHUNK_SIZE,
        "cache_control": "public, max-age=60",
    }
    values.update(overrides)
    return Settings.model_validate(values)


def s3_settings(s3: S3Server, client: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "backend": "s3",
        "s3_client": client,
        "s3_bucket": BUCKET,
        "s3_endpoint_url": s3.endpoint_url,
        "s3_region": REGION,
        "s3_addressing_style": "path",
        "chunk_size": CHUNK_SIZE,
        "cache_control": "public, max-age=60",
    }
    values.update(overrides)
    return Settings.model_validate(values)


def s3_server(request: pytest.FixtureRequest, name: str) -> S3Server:
    """The session's S3 server fixture called ``name`` (moto or seaweedfs)."""
    server: S3Server = request.getfixturevalue(name)
    return server


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The standard AWS chain (env and a shared credentials file) holds the test identities."""
    with aws_environment(tmp_path_factory.mktemp("aws")):
        yield


def upload_media(s3: S3Server, media: MediaTree) -> None:
    """The media tree, each object with the ContentType the local backend would give it."""
    upload_tree(s3, media.root, content_type=media_type_for)
    put_object(s3, "linked.txt", media.data("hello.txt"), media_type_for("linked.txt"))


@pytest.fixture(scope="session")
def moto(aws_env: None, media: MediaTree) -> Iterator[S3Server]:
    with start_moto() as s3:
        upload_media(s3, media)
        yield s3


@pytest.fixture(scope="session")
def seaweedfs(
    aws_env: None, media: MediaTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as s3:
        upload_media(s3, media)
        yield s3


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def server(
    request: pytest.FixtureRequest,
    backend: str,
    media: MediaTree,
    serve: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningServer:
    """A proxy on 127.0.0.1 for ``backend``; S3 servers start only when a test needs them."""
    kind, flavor, *cache = backend.split("-")
    if kind == "local":
        return serve(settings_for(media, flavor))
    s3: S3Server = request.getfixturevalue(kind)
    if cache:
        # Small slices, so that ranges cross slice boundaries.
        directory = tmp_path_factory.mktemp("cache")
        return serve(s3_settings(s3, flavor, cache_dir=directory, cache_slice_size=65536))
    return serve(s3_settings(s3, flavor))


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def raw_request(port: int, target: str, method: str = "GET", headers: str = "") -> bytes:
    """Send a request line exactly as written (no client-side normalisation of the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
        )
        sock.sendall(head.encode("latin-1"))
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become healthy")


# --------------------------------------------------------------------------------------------
# Skips for a missing tool, in one line: tests/run.sh ends every run with it (with checks.sh's).

# How the tests word a skip for a missing tool: `require_tool` in tests/clients/conftest.py (a
# failure instead under CI=true) and the docker-compose test in tests/deploy/test_compose.py.
MISSING_TOOL = re.compile(r"\bis not installed\b|\babsent\b|\bnot on PATH\b")


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped test or module gave, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """Tests skipped for a missing tool, by reason: appended to the file $OPTIONAL_TOOLS_REPORT
    for run.sh's last line when it is set, else printed as one line."""
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller sums up
        return
    reasons = Counter(
        reason
        for report in terminalreporter.stats.get("skipped", [])
        if MISSING_TOOL.search(reason := skip_reason(report))
    )
    items = [f"{n} test{'s' * (n > 1)} skipped ({reason})" for reason, n in reasons.items()]
    if not items:
        return
    if path := os.environ.get("OPTIONAL_TOOLS_REPORT"):
        with open(path, "a", encoding="utf-8") as report_file:
            report_file.writelines(f"{item}\n" for item in items)
    else:
        terminalreporter.write_line(f"optional tools: {'; '.join(items)}")


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, object]]]:
    """The access log's lines, parsed, while the test runs."""
    lines: list[dict[str, object]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(record.getMessage()))

    handler = Collect()
    logger = logging.getLogger("proxy.access")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
