"""``sendfile`` from a file to an asyncio transport's socket, waiting on the event loop: the one
copy of the loop behind the proxy's zero-copy responses (``proxy.connection``) and its
aiobotocore uploads' parts (``proxy.storage.spoolpayload``).

The bytes go by ``os.sendfile`` from the file to the socket, after what the transport holds
has gone out (so nothing overtakes it), as far as the socket takes them: first on the
transport's own descriptor (a 64 KiB range usually goes whole, with no dup). A socket that is
full is waited for on the event loop (a writer callback on a ``dup`` of the socket's
descriptor: the transport owns the descriptor itself, and uvloop's libuv allows one watcher per
descriptor), so a slow peer holds no thread and no buffer. The dup also keeps a closed
transport's descriptor number from naming another connection meanwhile. Plain TCP only: a TLS
transport's bytes must pass through Python's ssl.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

RECHECK_SECONDS = 1.0  # a wait without a lost-connection signal looks again this often


class SendfileTally:
    """What this process sent by ``sendfile`` (the tests' proof that a body took the zero-copy
    path: its bytes never passed through Python)."""

    bytes = 0
    calls = 0


class FileEnded(EOFError):
    """A send met the end of the file before its ``count``: the file shrank since its size was
    read. What was sent is out, so the message can only be aborted."""


def socket_fd(transport: Any) -> int | None:
    """The descriptor ``send_file`` may write to: the transport's socket's, or None when there
    is none or the bytes must pass through TLS."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    return None if sock is None else int(sock.fileno())


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def wake_all(waiters: set[asyncio.Future[None]]) -> None:
    """Ends the waits of sends on a connection that was lost."""
    for waiter in waiters:
        _wake(waiter)


async def send_file(
    transport: asyncio.Transport,
    out_fd: int,
    fd: int,
    offset: int,
    count: int,
    *,
    stopped: Callable[[], bool] = lambda: False,
    waiters: set[asyncio.Future[None]] | None = None,
) -> bool:
    """``count`` bytes of ``fd`` from ``offset`` to the socket ``out_fd`` of ``transport``:
    True once all went out; False when they cannot (the transport is closing, ``stopped()``
    says so, or the peer left: ``EPIPE``/``ECONNRESET``, and the transport is then aborted).
    A wait for room is added to ``waiters`` while it lasts, for ``wake_all`` on a lost
    connection; without ``waiters`` (an owner that cannot tell of a lost connection) a wait
    looks again every ``RECHECK_SECONDS``, since the dup keeps the socket open after the
    transport closed it. ``FileEnded`` when the file holds fewer bytes; a cancellation stops at
    once."""
    if transport.is_closing():
        return False
    if transport.get_write_buffer_size() == 0:
        # First on the transport's own descriptor (open while the transport is not closing,
        # and nothing runs between here and the call): a socket with room takes a small
        # span whole, with no dup and no watcher.
        sent = _step(transport, out_fd, fd, offset, count)
        if sent is None:
            return False
        offset += sent
        count -= sent
        if count == 0:
            return True
    loop = asyncio.get_running_loop()
    out = os.dup(out_fd)
    waiter: asyncio.Future[None] | None = None

    def room() -> None:  # the writer callback: stays on while this send lasts
        if waiter is not None:
            _wake(waiter)

    watching = False
    try:
        while not stopped():
            if transport.is_closing():  # closed meanwhile: what is left will not go out
                return False
            if transport.get_write_buffer_size() == 0:
                sent = _step(transport, out, fd, offset, count)
                if sent is None:
                    return False
                if sent:
                    offset += sent
                    count -= sent
                    if count == 0:
                        return True
                    continue  # the socket took part: what is left may fit too
            # Until the socket has room (or fails), or the connection is lost. The writer
            # stays registered until the send ends: one epoll_ctl pair per send, not per wait.
            waiter = loop.create_future()
            if not watching:
                loop.add_writer(out, room)
                watching = True
            if waiters is not None:
                waiters.add(waiter)
                recheck = None
            else:
                recheck = loop.call_later(RECHECK_SECONDS, _wake, waiter)
            try:
                await waiter
            finally:
                if waiters is not None:
                    waiters.discard(waiter)
                if recheck is not None:
                    recheck.cancel()
                waiter = None
        return False
    finally:
        if watching:
            loop.remove_writer(out)
        os.close(out)


def _step(transport: asyncio.Transport, out: int, fd: int, offset: int, count: int) -> int | None:
    """One ``sendfile`` of what is left on descriptor ``out``: the bytes sent (0: the socket is
    full); None: the peer left (the transport is aborted); ``FileEnded`` when the file holds
    fewer bytes than ``count``."""
    try:
        sent = os.sendfile(out, fd, offset, count)
    except BlockingIOError:
        return 0
    except ConnectionError:  # the peer left (EPIPE, ECONNRESET)
        transport.abort()
        return None
    if sent == 0:
        raise FileEnded(f"the file ended {count} bytes early")
    SendfileTally.bytes += sent
    SendfileTally.calls += 1
    return sent
