"""Cache faults injected for real — a truncated or corrupted slice file, a read-only or full
directory (tmpfs mounts), a directory removed mid-download, two processes filling the same
slices — never cost a 5xx or a wrong byte: the request is served from S3."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import diskcache
import httpx
import pytest

from proxy.storage.cachestore import FILLS, HEADER_SIZE
from proxy.testing.s3servers import put_object
from tests.cache.conftest import MIB, SLICE, CachedProxy, MakeProxy
from tests.conftest import StartServer, free_port, s3_server, s3_settings, wait_healthy


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slice_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.val"))


def stored_slices(proxy: CachedProxy, count: int) -> list[Path]:
    """The slice files once the fill of the last request has stored ``count`` of them and let
    go of them (until then it serves them from memory, and a change to a file goes unseen)."""
    deadline = time.monotonic() + 10.0
    while len(slice_files(proxy.directory)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the fill lets go once the index has the file: a callback, a moment later
    return slice_files(proxy.directory)


def no_parts_left(directory: Path, timeout: float = 10.0) -> bool:
    """Whether ``fills/`` is empty once the fills have ended (they may outlive the response
    that started them by a slice)."""
    deadline = time.monotonic() + timeout
    while list((directory / FILLS).glob("*.part")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def metric(proxy: CachedProxy, name: str, label: str = "") -> float:
    """A counter's value from the proxy's /metrics (0 when absent)."""
    text = proxy.http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_truncated_slice_is_refetched_and_counted(proxy: CachedProxy) -> None:
    key, data = proxy.put(2 * SLICE)
    proxy.get(key)
    faults = metric(proxy, "proxy_cache_faults_total", 'cause="truncated"')
    for path in stored_slices(proxy, 2):
        os.truncate(path, HEADER_SIZE + 1000)
    proxy.traffic.reset()

    response = proxy.get(key)

    assert response.status_code == 200
    assert sha256(response.content) == sha256(data)
    assert proxy.traffic.gets(), "the broken slices came from S3 again"
    assert metric(proxy, "proxy_cache_faults_total", 'cause="truncated"') > faults
    assert sha256(proxy.get(key).content) == sha256(data)


def test_a_corrupted_slice_is_never_served(proxy: CachedProxy) -> None:
    key, data = proxy.put(2 * SLICE)
    proxy.get(key)  # stored, and each file checked once by this process
    assert sha256(proxy.get(key).content) == sha256(data)
    for path in stored_slices(proxy, 2):
        with path.open("r+b") as file:  # same size, one byte changed
            file.seek(HEADER_SIZE + 500)
            byte = file.read(1)
            file.seek(HEADER_SIZE + 500)
            file.write(bytes([byte[0] ^ 0xFF]))

    response = proxy.get(key)

    assert response.status_code == 200
    assert sha256(response.content) == sha256(data)
    assert metric(proxy, "proxy_cache_faults_total", 'cause="corrupted"') >= 1


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_directory_serves_from_s3(make_proxy: MakeProxy, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "rw", "64m") as directory:
        writer = make_proxy(cache_dir=directory)
        cached_key, cached = writer.put(2 * SLICE)
        writer.get(cached_key)
        view = tmp_path / "ro"
        view.mkdir()
        bind = ["mount", "--bind", str(directory), str(view)]
        subprocess.run(bind, check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
            proxy = make_proxy(cache_dir=view)  # the same cache, read-only
            key, data = proxy.put(3 * SLICE)
            for _ in range(2):
                response = proxy.get(key)
                assert response.status_code == 200
                assert sha256(response.content) == sha256(data)
                ranged = proxy.get(key, range=f"bytes={SLICE - 5}-{SLICE + 5}")
                assert ranged.status_code == 206
                assert ranged.content == data[SLICE - 5 : SLICE + 6]
                again = proxy.get(cached_key)
                assert again.status_code == 200
                assert sha256(again.content) == sha256(cached)
            assert metric(proxy, "proxy_cache_faults_total") >= 1
        finally:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)


def test_a_full_directory_serves_from_s3(make_proxy: MakeProxy, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "1m") as directory:
        proxy = make_proxy(cache_dir=directory)
        key, data = proxy.put(4 * MIB)  # 16 slices into 1 MiB

        for _ in range(2):
            response = proxy.get(key)
            assert response.status_code == 200
            assert sha256(response.content) == sha256(data)
        assert no_parts_left(directory)


def test_a_directory_removed_mid_download_costs_no_byte(proxy: CachedProxy) -> None:
    key, data = proxy.put(24 * SLICE)
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        with client.stream("GET", f"/objects/{key}") as response:
            received = bytearray()
            chunks = response.iter_bytes()
            received += next(chunks)
            gone = proxy.directory.with_name("removed")
            proxy.directory.rename(gone)  # gone from its path at once, then deleted
            shutil.rmtree(gone, ignore_errors=True)
            for chunk in chunks:
                received += chunk
    assert response.status_code == 200
    assert sha256(bytes(received)) == sha256(data)
    for _ in range(2):
        again = proxy.get(key, range=f"bytes={SLICE}-{3 * SLICE}")
        assert again.status_code == 206
        assert again.content == data[SLICE : 3 * SLICE + 1]


def test_the_directory_stays_under_its_limit(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(cache_max_size=16 * MIB)
    key, data = proxy.put(24 * MIB)
    evictions = metric(proxy, "proxy_cache_evictions_total")

    response = proxy.get(key)

    assert sha256(response.content) == sha256(data)
    on_disk = sum(path.stat().st_size for path in proxy.directory.rglob("*") if path.is_file())
    assert on_disk <= 16 * MIB + SLICE + HEADER_SIZE
    assert metric(proxy, "proxy_cache_evictions_total") > evictions
    assert metric(proxy, "proxy_cache_disk_bytes") <= 16 * MIB


def test_two_processes_fill_the_same_slices_once(proxy: CachedProxy) -> None:
    key, data = proxy.put(12 * SLICE)
    env = {
        **os.environ,
        "PROXY_BACKEND": "s3",
        "PROXY_S3_CLIENT": proxy.settings.s3_client,
        "PROXY_S3_BUCKET": proxy.settings.s3_bucket,
        "PROXY_S3_ENDPOINT_URL": str(proxy.settings.s3_endpoint_url),
        "PROXY_S3_REGION": str(proxy.settings.s3_region),
        "PROXY_S3_ADDRESSING_STYLE": "path",
        "PROXY_CACHE_DIR": str(proxy.directory),
        "PROXY_CACHE_SLICE_SIZE": str(SLICE),
        "PROXY_ACCESS_LOG": "false",
    }
    urls, processes = [], []
    try:
        for _ in range(2):
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy"],
                env={**env, "PROXY_PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
            wait_healthy(urls[-1], process)
        bodies: list[bytes] = []

        def download(url: str) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                bodies.append(client.get(f"/objects/{key}").content)

        threads = [threading.Thread(target=download, args=(url,)) for url in urls * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert [sha256(body) for body in bodies] == [sha256(data)] * 4
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)

    index = diskcache.Cache(str(proxy.directory))
    try:
        slices = [k for k in index.iterkeys() if k.startswith("slice:") and k.endswith(key)]
        assert sorted(int(k.split(":")[2]) for k in slices) == list(range(12))
        assert len(slice_files(proxy.directory)) == len(list(index.iterkeys())) - 1 == 12
    finally:
        index.close()
    assert list((proxy.directory / FILLS).glob("*.part")) == []
    proxy.traffic.reset()
    assert proxy.get(key).headers["cache-status"] == "media-proxy; hit"
    assert proxy.traffic.requests == []


def test_a_url_s3_rejects_sends_the_fill_to_botocore(
    request: pytest.FixtureRequest, serve: StartServer, tmp_path: Path
) -> None:
    """The boto3 flavour's fills run on the event loop with a presigned GET; one S3 rejects (as
    an expired URL would be) is dropped, botocore reads the slice in a worker thread, and the
    slice is kept all the same."""
    s3 = s3_server(request, "seaweedfs")  # checks signatures; moto does not
    key = f"cache-test/rejected-{os.getpid()}.bin"
    data = os.urandom(2 * SLICE)
    put_object(s3, key, data, "application/octet-stream")
    settings = s3_settings(s3, "boto3", cache_dir=tmp_path / "cache", cache_slice_size=SLICE)
    proxy = serve(settings)
    cache = proxy.app.state.storage
    with httpx.Client(base_url=proxy.url, timeout=20) as client:
        first = client.get(f"/objects/{key}", headers={"Range": "bytes=0-99"})
        assert (first.status_code, first.content) == (206, data[:100])
        urls = cache.inner.presigned._urls
        good = urls.get(key)
        signature = good.rsplit("X-Amz-Signature=", 1)[1]
        forged = good.replace(signature, "0" * len(signature))
        assert forged != good
        urls.put(key, forged)
        spec = f"bytes={SLICE + 10}-{SLICE + 5000}"
        second = client.get(f"/objects/{key}", headers={"Range": spec})
        assert second.status_code == 206
        assert sha256(second.content) == sha256(data[SLICE + 10 : SLICE + 5001])
        assert urls.get(key) != forged  # dropped: the next GET is presigned again
        deadline = time.monotonic() + 10
        while True:  # kept: a hit once the fill has handed the slice over
            third = client.get(f"/objects/{key}", headers={"Range": spec})
            assert sha256(third.content) == sha256(second.content)
            if third.headers["cache-status"] == "media-proxy; hit":
                break
            assert time.monotonic() < deadline, third.headers["cache-status"]
            time.sleep(0.05)
