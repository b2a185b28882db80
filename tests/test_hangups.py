"""A client hanging up mid-transfer, and a body cut by S3, as an operator sees them in the logs
of a real ``python -m proxy`` (issue 29, item 8): one access-log line each, with the bytes that
went out and the outcome (``client_closed``, ``backend_error``); one warning line with the cause
for the cut; no traceback. On the local disk and on S3 (moto), both flavours."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.testing.s3servers import REGION, S3Server, put_object
from tests.conftest import free_port, s3_server, sha256, wait_healthy
from tests.loopback import Listener, threaded_server

SIZE = 32 * 1024 * 1024
KEY = "hangups/big.bin"
BUCKET = "hangups"  # its own bucket: the session's listings of the shared one stay as they are
LINGER_0 = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}: close() sends a RST


@pytest.fixture(scope="module")
def big() -> bytes:
    return os.urandom(SIZE)


@dataclass
class Proxy:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> tuple[list[dict[str, Any]], str]:
        """Stop it (SIGTERM); its access-log lines and its stderr."""
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=60)
        lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
        return lines, err.decode()


@contextlib.contextmanager
def proxy(cwd: Path, **env: str) -> Iterator[Proxy]:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    environment.update(env, PROXY_PORT=str(port), PROXY_LOG_LEVEL="info")
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        yield Proxy(url, port, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def hang_up(port: int, reset: bool, after: int = 256 * 1024) -> int:
    """GET the big object, read ``after`` bytes, then close (a FIN, or a RST with ``reset``);
    how many bytes were read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /objects/{KEY} HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
        received = 0
        for _ in range(10_000):
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed first"
            received += len(chunk)
            if received >= after:
                break
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    return received


def read_all(port: int) -> tuple[bytes, bytes]:
    """GET the big object to the end of the connection: the head and the body received."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"GET /objects/{KEY} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n".encode()
        )
        received = bytearray()
        for _ in range(100_000):
            chunk = sock.recv(262144)
            if not chunk:
                break
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return head, body


def local_env(root: Path, flavor: str) -> dict[str, str]:
    return {"PROXY_LOCAL_ROOT": str(root), "PROXY_FLAVOR": flavor}


def s3_env(endpoint_url: str, client: str) -> dict[str, str]:
    return {
        "PROXY_BACKEND": "s3",
        "PROXY_S3_CLIENT": client,
        "PROXY_S3_BUCKET": BUCKET,
        "PROXY_S3_ENDPOINT_URL": endpoint_url,
        "PROXY_S3_REGION": REGION,
        "PROXY_S3_ADDRESSING_STYLE": "path",
        "PROXY_S3_MAX_ATTEMPTS": "1",
    }


@pytest.fixture(scope="module")
def moto_big(request: pytest.FixtureRequest, big: bytes) -> S3Server:
    server = s3_server(request, "moto")
    put_object(server, KEY, big, "application/octet-stream", bucket=BUCKET)
    return server


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory, big: bytes) -> Path:
    root = tmp_path_factory.mktemp("hangups")
    (root / "hangups").mkdir()
    (root / KEY).write_bytes(big)
    return root


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err[-4000:]
    assert "ERROR" not in err, err[-4000:]


@pytest.mark.parametrize("backend", ["local-sync", "local-async", "moto-boto3", "moto-aiobotocore"])
def test_a_client_hanging_up_is_one_access_line_and_no_traceback(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    kind, flavor = backend.split("-")
    if kind == "local":
        env = local_env(request.getfixturevalue("local_root"), flavor)
    else:
        env = s3_env(request.getfixturevalue("moto_big").endpoint_url, flavor)
    with proxy(tmp_path, **env) as running:
        ranged = httpx.get(
            f"{running.url}/objects/{KEY}", headers={"range": "bytes=0-99"}, timeout=10
        )
        assert ranged.status_code == 206
        read = [hang_up(running.port, reset) for reset in (False, True)]
        # Another request afterwards is served as usual.
        again = httpx.get(
            f"{running.url}/objects/{KEY}", headers={"range": "bytes=-10"}, timeout=10
        )
        assert again.status_code == 206
        lines, err = running.stop()
    no_traceback(err)
    mine = [line for line in lines if line["key"] == KEY]
    assert [line["outcome"] for line in mine] == [
        "complete",
        "client_closed",
        "client_closed",
        "complete",
    ]
    for line, got in zip(mine[1:3], read, strict=True):
        assert line["status"] == 200
        assert got <= line["bytes_sent"] < SIZE
        assert line["client_aborted"] and line["aborted"]
        assert line["s3_resumes"] == 0 if kind == "local" else line["s3_resumes"] >= 0
    assert mine[0]["bytes_sent"] == 100


# -- S3 cutting a body -------------------------------------------------------------------------


@dataclass
class Cutter:
    """Arms a ``cutting_relay``: the response bytes to let through from now on; then it cuts
    that connection, and either refuses every connection from then on (``for_good``: S3 gone)
    or lets them all through (a transient reset)."""

    limit: int | None = None
    passed: int = 0
    for_good: bool = True
    dead: bool = False
    cuts: int = 0
    ends: list[str] = field(default_factory=list)  # why each relayed connection ended
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arm(self, limit: int, for_good: bool = True) -> None:
        with self.lock:
            self.limit, self.passed, self.for_good = limit, 0, for_good

    def let_through(self, data: bytes) -> tuple[bytes, bool]:
        """What of ``data`` may go to the client, and whether to cut after it."""
        with self.lock:
            if self.dead:
                return b"", True
            if self.limit is None:
                return data, False
            room = self.limit - self.passed
            if len(data) < room:
                self.passed += len(data)
                return data, False
            self.dead, self.limit = self.for_good, None
            self.cuts += 1
            return data[:room], True


def reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
    sock.close()


@contextlib.contextmanager
def cutting_relay(port: int) -> Iterator[tuple[Listener, Cutter]]:
    """A TCP relay to ``127.0.0.1:port`` that, once armed, resets the connection carrying the
    response byte past its limit, then (``for_good``) every connection: a body cut by S3, which
    stays unreachable, so no resume can succeed."""
    cutter = Cutter()
    stop = threading.Event()

    def relay(sock: socket.socket) -> None:
        try:
            ended = pump(sock)
        except OSError as exc:
            ended = f"error: {exc!r}"
        with cutter.lock:
            cutter.ends.append(ended)
        reset(sock)

    def pump(sock: socket.socket) -> str:
        """Relay one connection; why it ended."""
        if cutter.dead:
            return "refused"
        with socket.create_connection(("127.0.0.1", port)) as up:
            for _ in range(100_000):
                if stop.is_set():
                    return "stopped"
                for ready in select.select([sock, up], [], [], 0.05)[0]:
                    data = ready.recv(65536)
                    if not data:
                        return "closed by the proxy" if ready is sock else "closed by S3"
                    if ready is sock:
                        if cutter.dead:
                            return "refused"
                        up.sendall(data)
                        continue
                    allowed, cut = cutter.let_through(data)
                    if allowed:
                        sock.sendall(allowed)
                    if cut:
                        return "cut"
                if cutter.dead:
                    return "refused"
        return "too long"

    with threaded_server(relay) as listener:
        try:
            yield listener, cutter
        finally:
            stop.set()


@pytest.mark.parametrize("client", ["boto3", "aiobotocore"])
def test_a_body_cut_by_s3_is_one_warning_and_one_access_line(
    moto_big: S3Server, big: bytes, client: str, tmp_path: Path
) -> None:
    port = int(moto_big.endpoint_url.rsplit(":", 1)[1])
    with cutting_relay(port) as (relay, cutter):
        env = s3_env(f"http://127.0.0.1:{relay.port}", client)
        with proxy(tmp_path, **env) as running:
            cutter.arm(4 * 1024 * 1024)
            head, body = read_all(running.port)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert f"content-length: {SIZE}".encode() in head.lower()
            assert 0 < len(body) < SIZE  # visibly cut
            assert sha256(body) == sha256(big[: len(body)])  # never a wrong byte
            lines, err = running.stop()
    assert cutter.cuts == 1
    no_traceback(err)
    (line,) = [line for line in lines if line["key"] == KEY]
    assert (line["status"], line["outcome"]) == (200, "backend_error")
    assert len(body) <= line["bytes_sent"] < SIZE
    assert not line["client_aborted"]
    warnings = [text for text in err.splitlines() if "cut" in text and KEY in text]
    assert len(warnings) == 1, err[-4000:]
    assert line["request_id"] in warnings[0]
    assert "BodyTruncated" in warnings[0] or "Backend" in warnings[0]  # the cause, named


@pytest.mark.parametrize("client", ["boto3", "aiobotocore"])
def test_a_resumed_body_is_complete_and_its_line_counts_the_resume(
    moto_big: S3Server, big: bytes, client: str, tmp_path: Path
) -> None:
    """S3 resets the body once, then answers again: the proxy asks for the rest (item 2) and
    the access line says so (``s3_resumes``), with the transfer complete and nothing logged."""
    port = int(moto_big.endpoint_url.rsplit(":", 1)[1])
    with cutting_relay(port) as (relay, cutter):
        env = s3_env(f"http://127.0.0.1:{relay.port}", client)
        with proxy(tmp_path, **env) as running:
            cutter.arm(4 * 1024 * 1024, for_good=False)
            head, body = read_all(running.port)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert sha256(body) == sha256(big)
            exposition = httpx.get(f"{running.url}/metrics", timeout=10).text
            resumes = resume_counts(exposition)
            lines, err = running.stop()
    assert cutter.cuts == 1
    no_traceback(err)
    assert "cut by storage" not in err, err[-4000:]
    (line,) = [line for line in lines if line["key"] == KEY]
    assert (line["status"], line["outcome"], line["bytes_sent"]) == (200, "complete", SIZE)
    # Each re-request counts, as in the metric: the one that resumed after the relay's cut, and
    # any other (a pooled connection the cut left dead; moto itself closing a busy connection
    # on a loaded machine, as the relay's log of why each connection ended shows).
    assert resumes.get("resumed", 0) >= 1, (cutter.ends, err[-3000:])
    assert line["s3_resumes"] == sum(resumes.values()), cutter.ends


def resume_counts(exposition: str) -> dict[str, float]:
    """proxy_s3_resumes_total by outcome, from a /metrics page."""
    counts: dict[str, float] = {}
    for text in exposition.splitlines():
        if text.startswith("proxy_s3_resumes_total{"):
            labels, value = text.rsplit(" ", 1)
            counts[labels.split('outcome="')[1].split('"')[0]] = float(value)
    return counts
