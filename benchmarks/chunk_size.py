"""Pick the default chunk size: single-stream MB/s and slow-reader memory per chunk size.

PROXY_CHUNK_SIZE is the largest chunk: the Pacer grows toward it for clients that keep up and
stays at PROXY_MIN_CHUNK_SIZE (64 KiB) for slow ones; at 64 KiB every chunk is 64 KiB.

Usage: python benchmarks/chunk_size.py [--size-mib 512] [--runs 3] [--slow 20]
Starts one proxy process per (flavor, chunk size) on 127.0.0.1, measures, stops it by PID.
Figures are only comparable within one run (shared, noisy machines).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHUNKS = [64 * 1024, 256 * 1024, 1024 * 1024, 2048 * 1024, 4096 * 1024]


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


def start(root: Path, flavor: str, chunk: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(
        os.environ,
        PROXY_LOCAL_ROOT=str(root),
        PROXY_FLAVOR=flavor,
        PROXY_CHUNK_SIZE=str(chunk),
        PROXY_PORT=str(port),
        PROXY_LOG_LEVEL="warning",
    )
    # The access log (stdout) stays on, as in production, but out of this table.
    process = subprocess.Popen([sys.executable, "-m", "proxy"], env=env, stdout=subprocess.DEVNULL)
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
        ["curl", "-sSf", "-o", "/dev/null", f"http://127.0.0.1:{port}/objects/big.bin"],
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
            sock.sendall(b"GET /objects/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
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
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with open(root / "big.bin", "wb") as f:
            for _ in range(size // (16 * 1024 * 1024)):
                f.write(os.urandom(16 * 1024 * 1024))
        print(
            f"{'flavor':6} {'chunk':>6} {'MB/s (median)':>14} {'idle RSS MiB':>13} "
            f"{'RSS@' + str(args.slow) + ' slow MiB':>16} {'served':>7}"
        )
        for flavor in ["async", "sync"]:
            for chunk in CHUNKS:
                process, port = start(root, flavor, chunk)
                try:
                    idle = rss_kib(process.pid)
                    speeds = [download_mbps(port, size) for _ in range(args.runs)]
                    peak, served = slow_readers(port, args.slow, 5, process.pid)
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=30)
                print(
                    f"{flavor:6} {chunk // 1024:>5}K {statistics.median(speeds):>14.0f} "
                    f"{idle / 1024:>13.1f} {peak / 1024:>16.1f} {served:>4}/{args.slow}"
                )


if __name__ == "__main__":
    main()
