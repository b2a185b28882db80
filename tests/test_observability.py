"""Request ids, nosniff, the JSON access log, Prometheus metrics (multiprocess too), active
content, graceful shutdown — on real servers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    MediaTree,
    RunningServer,
    StartServer,
    free_port,
    settings_for,
    sha256,
    wait_healthy,
)

CLIP = "video/clip.mp4"
OBJECT_ROUTE = "/objects/{key:objectkey}"


@pytest.fixture(scope="module", params=["sync", "async"])
def proxy(request: pytest.FixtureRequest, media: MediaTree, serve: StartServer) -> RunningServer:
    return serve(settings_for(media, request.param))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_request_ids_and_nosniff(proxy: RunningServer) -> None:
    kept = httpx.get(f"{proxy.url}/objects/hello.txt", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    assert kept.headers["x-content-type-options"] == "nosniff"
    made = httpx.get(f"{proxy.url}/objects/missing", headers={"X-Request-ID": "bad id!"})
    assert made.status_code == 404
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", made.headers["x-request-id"])
    assert made.headers["x-content-type-options"] == "nosniff"
    other = httpx.get(f"{proxy.url}/healthz")
    assert other.headers["x-request-id"] != made.headers["x-request-id"]


def test_one_json_access_line_per_request(
    proxy: RunningServer, access_lines: list[dict[str, object]]
) -> None:
    response = httpx.get(f"{proxy.url}/objects/{CLIP}?sig=secret", headers={"Range": "bytes=0-99"})
    assert response.status_code == 206
    # The line is written when the server's task ends, just after the client has everything.
    line = wait_for_line(access_lines, lambda entry: entry["key"] == CLIP)
    assert len([entry for entry in access_lines if entry["key"] == CLIP]) == 1
    assert line["request_id"] == response.headers["x-request-id"]
    assert (line["method"], line["range"], line["status"]) == ("GET", "bytes=0-99", 206)
    assert line["bytes_sent"] == 100
    assert line["client_aborted"] is False
    assert isinstance(line["duration_ms"], float) and isinstance(line["ttfb_ms"], float)
    assert 0 <= line["ttfb_ms"] <= line["duration_ms"]
    assert "secret" not in json.dumps(access_lines)  # query strings (signatures) are not logged


def wait_for_line(
    lines: list[dict[str, object]], wanted: Callable[[dict[str, object]], bool]
) -> dict[str, object]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in list(lines):
            if wanted(line):
                return line
        time.sleep(0.01)
    raise AssertionError("the access log has no such line")


def abort_download(port: int, key: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /objects/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 128 * 1024:
            received += len(sock.recv(65536))


def test_metrics(
    proxy: RunningServer, access_lines: list[dict[str, object]], big_file: str
) -> None:
    def scrape() -> str:
        response = httpx.get(f"{proxy.url}/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    before = scrape()
    labels = {"route": OBJECT_ROUTE, "method": "GET", "status": "206"}
    ranged = httpx.get(f"{proxy.url}/objects/{CLIP}", headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206
    assert httpx.get(f"{proxy.url}/objects/nope.mp4").status_code == 404
    abort_download(proxy.port, big_file)
    wait_for_line(access_lines, lambda entry: entry["client_aborted"] is True)
    wait_for_line(access_lines, lambda entry: entry["status"] == 404)
    after = scrape()

    def grew(name: str, **match: str) -> float:
        return metric(after, name, **match) - metric(before, name, **match)

    assert grew("proxy_requests_total", **labels) == 1
    assert grew("proxy_response_bytes_total", route=OBJECT_ROUTE) >= 10
    assert grew("proxy_time_to_first_byte_seconds_count", route=OBJECT_ROUTE) >= 1
    assert grew("proxy_request_duration_seconds_count", route=OBJECT_ROUTE) >= 3
    assert grew("proxy_backend_calls_total", backend="local", operation="open") >= 3
    assert grew("proxy_backend_errors_total", kind="ObjectNotFound") == 1
    assert grew("proxy_client_aborts_total", route=OBJECT_ROUTE) == 1
    assert metric(after, "proxy_active_streams") == 0


@pytest.fixture(scope="module")
def big_file(media: MediaTree) -> Iterator[str]:
    path = media.root / "big-observed.bin"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    yield path.name
    path.unlink()


def test_active_content_is_never_rendered_inline(
    media: MediaTree, serve: StartServer, proxy: RunningServer
) -> None:
    response = httpx.get(f"{proxy.url}/objects/page.svg")
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.headers["content-disposition"] == 'attachment; filename="page.svg"'
    assert response.headers["content-security-policy"] == "sandbox; default-src 'none'"
    media_file = httpx.get(f"{proxy.url}/objects/{CLIP}", headers={"Range": "bytes=0-0"})
    assert "content-disposition" not in media_file.headers
    assert "content-security-policy" not in media_file.headers
    inline = serve(settings_for(media, "async", inline_active_content=True))
    allowed = httpx.get(f"{inline.url}/objects/page.svg")
    assert "content-disposition" not in allowed.headers
    assert "content-security-policy" not in allowed.headers


def start_proxy(root: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    variables = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    variables.update(
        PROXY_LOCAL_ROOT=str(root), PROXY_PORT=str(port), PROXY_LOG_LEVEL="warning", **env
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"], env=variables, cwd=root, stdout=subprocess.DEVNULL
    )
    wait_healthy(f"http://127.0.0.1:{port}", process)
    return process, port


def test_metrics_add_up_across_workers(media: MediaTree) -> None:
    process, port = start_proxy(media.root, PROXY_WORKERS="2")
    try:
        for _ in range(20):
            assert httpx.get(f"http://127.0.0.1:{port}/objects/hello.txt").status_code == 200
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        labels = {"route": OBJECT_ROUTE, "method": "GET", "status": "200"}
        assert metric(text, "proxy_requests_total", **labels) == 20
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def slow_download(port: int, key: str, pause: float) -> bytes:
    """Read the whole answer 256 KiB at a time with a pause between reads (bounded)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /objects/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        for _ in range(10_000):
            chunk = sock.recv(256 * 1024)
            if not chunk:
                break
            received += chunk
            time.sleep(pause)
    return bytes(received.split(b"\r\n\r\n", 1)[1])


@pytest.fixture
def shutdown_root(tmp_path: Path) -> Path:
    (tmp_path / "eight.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    return tmp_path


def test_graceful_shutdown_lets_streams_finish(shutdown_root: Path) -> None:
    process, port = start_proxy(shutdown_root, PROXY_SHUTDOWN_TIMEOUT="30")
    try:
        with socket.create_connection(("127.0.0.1", port)):
            pass
        started = time.monotonic()

        def terminate_soon() -> None:
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)

        killer = threading.Thread(target=terminate_soon)
        killer.start()
        body = slow_download(port, "eight.bin", pause=0.02)  # about 1 s in all
        killer.join()
        assert sha256(body) == sha256((shutdown_root / "eight.bin").read_bytes())
        assert time.monotonic() - started > 0.3
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_shutdown_deadline_cuts_streams_that_take_too_long(shutdown_root: Path) -> None:
    process, port = start_proxy(shutdown_root, PROXY_SHUTDOWN_TIMEOUT="1")
    exited_after: list[float] = []

    def terminate_soon() -> None:
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        process.wait(timeout=30)
        exited_after.append(time.monotonic() - signalled)

    killer = threading.Thread(target=terminate_soon)
    try:
        killer.start()
        body = slow_download(port, "eight.bin", pause=0.2)  # would take about 7 s
        killer.join(timeout=60)
        assert len(body) < 8 * 1024 * 1024  # cut, not completed
        assert exited_after and exited_after[0] < 4  # the 1 s deadline, plus start-up slack
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_observe_all_counts_as_one_observe_per_value() -> None:
    """A batch's durations go into a histogram with one update per bucket: the exposition is
    the one that an ``observe`` per value makes (bounds included, exactly on a bound too)."""
    from prometheus_client import CollectorRegistry, Histogram

    from proxy.observability import observe_all

    bounds = (0.001, 0.0025, 0.005, 0.01, 1)
    values = [0.0004, 0.001, 0.0011, 0.0025, 0.003, 0.05, 0.2, 7.0, 0.0004, 0.001]
    registries = [CollectorRegistry(), CollectorRegistry()]
    one, batched = (
        Histogram("h", "h", ["route"], buckets=bounds, registry=registry).labels("r")
        for registry in registries
    )
    for value in values:
        one.observe(value)
    observe_all(batched, values)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (sample.name, sample.labels.get("le", "")): sample.value
            for family in registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    expected, got = samples(registries[0]), samples(registries[1])
    assert got.pop(("h_sum", "")) == pytest.approx(expected.pop(("h_sum", "")))
    assert got == expected
    assert got[("h_bucket", "0.001")] == 4


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_made_up_methods_are_counted_as_other(
    media: MediaTree, serve: StartServer, http: str
) -> None:
    """Each label value is kept for the process's life: methods a client makes up (h11 takes
    any token) must not grow the metrics."""
    server = serve(settings_for(media, "async", http=http))
    methods = [f"MADEUP{index}" for index in range(40)]

    def others() -> float:  # every sample of the counter with method="other" (any route, status)
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert "MADEUP" not in text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("proxy_requests_total{") and 'method="other"' in line
        )

    before = others()
    with httpx.Client(timeout=10) as client:
        statuses = {
            client.request(method, f"{server.url}/objects/hello.txt").status_code
            for method in methods
        }
    assert statuses <= {400, 405}
    deadline = time.monotonic() + 5
    while others() < before + len(methods) and time.monotonic() < deadline:
        time.sleep(0.05)  # counted in batches, within 5 ms
    assert others() >= before + len(methods)
