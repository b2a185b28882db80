"""Pick the default chunk size: single-stream MB/s and slow-reader memory per chunk size, on
the paths that still copy the bytes through Python.

PROXY_CHUNK_SIZE is the largest chunk: the Pacer grows toward it for clients that keep up and
stays at PROXY_MIN_CHUNK_SIZE (64 KiB) for slow ones; at 64 KiB every chunk is 64 KiB. Local
files go out by sendfile (zero-copy), where the chunk size plays no part; the copying paths
are measured: ``local-copy`` (the local backend with PROXY_ZERO_COPY=false: the path a TLS
connection takes, read and sent in chunks), ``s3-aio`` and ``s3-boto3`` (the two S3 flavours
on SeaweedFS, as benchmarks/run.py starts it).

Usage: python benchmarks/chunk_size.py [--size-mib 512] [--runs 3] [--slow 20] [--slow-seconds 5]
                                       [--paths local-copy,s3-aio,s3-boto3] [--proxy-python PY]
Starts one proxy process per (path, chunk size) on 127.0.0.1, measures, stops it by PID. The
proxy runs as benchmarks/run.py runs it: installed by `pip install .` into a new virtual
environment of the fastest build of this Python version found here (servers.deploy_python),
unless --proxy-python names an interpreter that has it.
Figures are only comparable within one run (shared, noisy machines); the first line names the
CPU, since the best size moves with it (its L2 cache, its copy speed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from report import cpu_model
from seaweed import S3Site, seaweedfs_bucket
from servers import deploy_python

CHUNKS = [64 * 1024, 256 * 1024, 1024 * 1024, 2048 * 1024, 4096 * 1024]
PATHS = ["local-copy", "s3-aio", "s3-boto3"]
KEY = "big.bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def path_env(path: str, root: Path, s3: S3Site | None) -> dict[str, str]:
    """The proxy's settings for one measured path."""
    if path == "local-copy":
        return {"PROXY_LOCAL_ROOT": str(root), "PROXY_FLAVOR": "async", "PROXY_ZERO_COPY": "false"}
    assert s3 is not None
    client = "aiobotocore" if path == "s3-aio" else "boto3"
    return {
        "PROXY_BACKEND": "s3",
        "PROXY_S3_CLIENT": client,
        "PROXY_FLAVOR": "async" if client == "aiobotocore" else "sync",
        "PROXY_S3_BUCKET": s3.bucket,
        "PROXY_S3_ENDPOINT_URL": s3.endpoint_url,
        "PROXY_S3_ADDRESSING_STYLE": "path",
        "PROXY_S3_REGION": "us-east-1",
    }


def start(python: str, settings: dict[str, str], chunk: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(
        os.environ,
        **settings,
        PROXY_CHUNK_SIZE=str(chunk),
        PROXY_PORT=str(port),
        PROXY_LOG_LEVEL="warning",
    )
    # The access log (stdout) stays on, as in production, but out of this table.
    process = subprocess.Popen([python, "-m", "proxy"], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("proxy did not start")


def download_mbps(port: int, size: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-sSf", "-o", "/dev/null", f"http://127.0.0.1:{port}/objects/{KEY}"],
        check=True,
        timeout=120,
    )
    return size / (time.perf_counter() - started) / 1e6


def slow_readers(port: int, count: int, seconds: float, pid: int) -> tuple[int, int]:
    """`count` clients reading 64 KiB every 10 ms for `seconds`; returns (peak RSS KiB, served)."""
    served = [0] * count
    stop = time.monotonic() + seconds

    def reader(i: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(f"GET /objects/{KEY} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while time.monotonic() < stop:
                served[i] += len(sock.recv(65536))
                time.sleep(0.01)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kib(pid))
        time.sleep(0.05)
    return peak, sum(1 for s in served if s > 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--paths", default=",".join(PATHS), help="of " + ",".join(PATHS))
    parser.add_argument("--proxy-python", help="an interpreter with the proxy installed")
    args = parser.parse_args()
    paths = [path for path in args.paths.split(",") if path]
    if unknown := set(paths) - set(PATHS):
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp) / "data"
        root.mkdir()
        with open(root / KEY, "wb") as f:
            for _ in range(size // (16 * 1024 * 1024)):
                f.write(os.urandom(16 * 1024 * 1024))
        s3 = None
        if any(path.startswith("s3-") for path in paths):
            s3 = stack.enter_context(seaweedfs_bucket(Path(tmp), [root / KEY]))
        if args.proxy_python is not None:
            python, how = args.proxy_python, f"--proxy-python {args.proxy_python}"
        else:
            python, how = deploy_python(Path(tmp) / "venv")
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.size_mib} MiB, {args.runs} runs")
        print(f"Proxy: {how}")
        print(
            f"{'path':10} {'chunk':>6} {'MB/s (median)':>14} {'idle RSS MiB':>13} "
            f"{'RSS@' + str(args.slow) + ' slow MiB':>16} {'served':>7}"
        )
        for path in paths:
            for chunk in CHUNKS:
                process, port = start(python, path_env(path, root, s3), chunk)
                try:
                    idle = rss_kib(process.pid)
                    speeds = [download_mbps(port, size) for _ in range(args.runs)]
                    peak, served = slow_readers(port, args.slow, args.slow_seconds, process.pid)
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=30)
                print(
                    f"{path:10} {chunk // 1024:>5}K {statistics.median(speeds):>14.0f} "
                    f"{idle / 1024:>13.1f} {peak / 1024:>16.1f} {served:>4}/{args.slow}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
