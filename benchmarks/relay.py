"""A counting TCP relay: 127.0.0.1:LISTEN -> 127.0.0.1:UPSTREAM.

Put in front of SeaweedFS for the disconnect scenario, it counts the bytes the upstream sent
towards the proxy. Every 10 ms in which that count changed, it appends
"<CLOCK_MONOTONIC seconds> <cumulative bytes>" to LOG, so run.py can tell how many bytes S3
still sent after the clients hung up. Reads wait for the previous write to drain: the relay
buffers at most one 64 KiB read per connection, so it does not hide what the proxy pulls.

  relay.py LISTEN_PORT UPSTREAM_PORT LOG
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
READ_SIZE = 64 * 1024
FLUSH_INTERVAL_S = 0.01


class Counter:
    def __init__(self) -> None:
        self.upstream_bytes = 0


async def pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, counter: Counter | None
) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(READ_SIZE):
            if counter is not None:
                counter.upstream_bytes += len(data)
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(OSError):
        sink.close()


async def relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_port: int,
    counter: Counter,
) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, upstream_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        pump(client_reader, upstream_writer, None),
        pump(upstream_reader, client_writer, counter),
    )


async def flush_forever(counter: Counter, log: Path) -> None:
    written = -1
    with log.open("a", encoding="ascii") as sink:
        while True:
            if counter.upstream_bytes != written:
                written = counter.upstream_bytes
                sink.write(f"{time.monotonic():.4f} {written}\n")
                sink.flush()
            await asyncio.sleep(FLUSH_INTERVAL_S)


async def serve(listen_port: int, upstream_port: int, log: Path) -> None:
    counter = Counter()
    server = await asyncio.start_server(
        lambda r, w: relay(r, w, upstream_port, counter), LOOPBACK, listen_port
    )
    async with server:
        await flush_forever(counter, log)


def bytes_between(log: Path, start: float, end: float) -> int:
    """Upstream bytes counted after start and up to end (monotonic seconds), from the log."""
    before = after = 0
    for line in log.read_text(encoding="ascii").splitlines():
        stamp, total = line.split()
        if float(stamp) <= start:
            before = int(total)
        if float(stamp) <= end:
            after = int(total)
    return after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("listen_port", type=int)
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("log", type=Path)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen_port, args.upstream_port, args.log))


if __name__ == "__main__":
    main()
