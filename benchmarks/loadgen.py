"""HTTP clients for the memory, fairness, disconnect and coalesce scenarios; prints one JSON line.

Run as a subprocess of run.py, so that its event loop competes with the server under test for
the CPU but not for run.py's GIL (which samples /proc and times /healthz):

  loadgen.py slow PORT PATH --clients 50 --seconds 10    # 64 KiB every 10 ms per client
  loadgen.py hangup PORT PATH --clients 50 --min-bytes N # read N bytes each, then all close
  loadgen.py fetch PORT PATH --clients 32 --size N --sha256 HEX  # all download it at once

Every client uses raw sockets with a 64 KiB receive buffer, set before connecting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import time
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
RECV_BUFFER = 64 * 1024


@dataclass
class Reader:
    """What one client has received: the status code and the body bytes after the headers."""

    head: bytes = b""
    status: int = 0
    body_bytes: int = 0

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes received; returns the part of them that is body."""
        if self.status:
            self.body_bytes += len(data)
            return data
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        self.status = int(self.head.split(b" ", 2)[1])
        self.head, body = self.head[: end + 4], self.head[end + 4 :]
        self.body_bytes = len(body)
        return body

    @property
    def served(self) -> bool:
        return self.status in (200, 206) and self.body_bytes > 0


async def _connect(port: int, path: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    try:
        await loop.sock_connect(sock, (LOOPBACK, port))
        request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n\r\n"
        await loop.sock_sendall(sock, request.encode("ascii"))
    except BaseException:
        sock.close()
        raise
    return sock


async def slow_reader(port: int, path: str, deadline: float, interval_s: float) -> Reader:
    """Read up to 64 KiB, sleep interval_s, repeat until the deadline (loop time)."""
    loop = asyncio.get_running_loop()
    reader = Reader()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout_at(deadline):
            sock = await _connect(port, path)
            with sock:
                while data := await loop.sock_recv(sock, RECV_BUFFER):
                    reader.feed(data)
                    await asyncio.sleep(interval_s)
    return reader


async def run_slow(
    port: int, path: str, clients: int, seconds: float, interval_s: float
) -> dict[str, float]:
    deadline = asyncio.get_running_loop().time() + seconds
    readers = await asyncio.gather(
        *(slow_reader(port, path, deadline, interval_s) for _ in range(clients))
    )
    return {
        "clients": clients,
        "served": sum(reader.served for reader in readers),
        "body_bytes": sum(reader.body_bytes for reader in readers),
    }


async def read_then_hold(port: int, path: str, min_bytes: int) -> socket.socket:
    """Read at full speed until min_bytes of body arrived; return the still-open socket."""
    loop = asyncio.get_running_loop()
    reader = Reader()
    sock = await _connect(port, path)
    try:
        while reader.body_bytes < min_bytes:
            data = await loop.sock_recv(sock, 256 * 1024)
            if not data:
                raise ConnectionError("the server closed before min_bytes")
            reader.feed(data)
    except BaseException:
        sock.close()
        raise
    return sock


async def run_hangup(
    port: int, path: str, clients: int, min_bytes: int, timeout_s: float
) -> dict[str, float]:
    """All clients download until each has min_bytes, then all close at once (mid-download)."""
    tasks = [asyncio.create_task(read_then_hold(port, path, min_bytes)) for _ in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    sockets = [task.result() for task in done if task.exception() is None]
    hangup_at = time.monotonic()  # CLOCK_MONOTONIC: comparable with run.py's clock
    for sock in sockets:
        sock.close()  # unread data in the receive buffer: the kernel sends RST
    return {"clients": clients, "reached": len(sockets), "hangup_at": hangup_at}


async def fetch_whole(port: int, path: str) -> tuple[Reader, str]:
    """Read the response at full speed until the server closes: it, and its body's sha256."""
    loop = asyncio.get_running_loop()
    reader, digest = Reader(), hashlib.sha256()
    sock = await _connect(port, path)
    with sock:
        while data := await loop.sock_recv(sock, 256 * 1024):
            digest.update(reader.feed(data))
    return reader, digest.hexdigest()


async def run_fetch(
    port: int, path: str, clients: int, size: int, sha256: str, timeout_s: float
) -> dict[str, float]:
    """All clients start the same whole download at once: how many got a 200 with exactly size
    bytes of that sha256, and the seconds until the last one finished."""
    started = time.monotonic()
    tasks = [asyncio.create_task(fetch_whole(port, path)) for _ in range(clients)]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    seconds = time.monotonic() - started
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    fetched = [task.result() for task in done if task.exception() is None]
    complete = [
        reader
        for reader, digest in fetched
        if reader.status == 200 and reader.body_bytes == size and digest == sha256
    ]
    return {"clients": clients, "complete": len(complete), "seconds": seconds}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    modes = parser.add_subparsers(dest="mode", required=True)
    slow = modes.add_parser("slow")
    hangup = modes.add_parser("hangup")
    fetch = modes.add_parser("fetch")
    for mode in (slow, hangup, fetch):
        mode.add_argument("port", type=int)
        mode.add_argument("path")
        mode.add_argument("--clients", type=int, default=50)
    slow.add_argument("--seconds", type=float, default=10.0)
    slow.add_argument("--interval", type=float, default=0.01)
    hangup.add_argument("--min-bytes", type=int, default=1024 * 1024)
    hangup.add_argument("--timeout", type=float, default=10.0)
    fetch.add_argument("--size", type=int, required=True)
    fetch.add_argument("--sha256", required=True)
    fetch.add_argument("--timeout", type=float, default=120.0)
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.mode == "slow":
        work = run_slow(args.port, args.path, args.clients, args.seconds, args.interval)
    elif args.mode == "hangup":
        work = run_hangup(args.port, args.path, args.clients, args.min_bytes, args.timeout)
    else:
        work = run_fetch(args.port, args.path, args.clients, args.size, args.sha256, args.timeout)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        print(json.dumps(runner.run(work)), flush=True)


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.Loop


if __name__ == "__main__":
    main()
