"""Keep-alive connections to one origin for the presigned GETs of ``proxy.storage.presigned``.

``Connections``: ``http.client`` connections shared by threads, for the blocking GETs: the
standard library's HTTP/1.1 client costs ~250 µs per 64 KiB ranged GET here, urllib3's pool on
top of it ~420 µs. ``AsyncConnections``: its twin for the event loop, non-blocking sockets read
straight into each chunk: no buffer between the kernel and the chunk, so a slow stream holds
one chunk (the rest waits in the socket), where aiohttp held up to two 256 KB socket reads.

An S3 exchange's deadline (``deadline``, set by the blocking storage around each call) bounds the
blocking pool's waits until a reply's head: a connect or a read never waits past it; the body's
reads wait ``read_timeout`` each. The event loop's twin is bounded from outside (its caller's
``asyncio.timeout``): a coroutine can be cancelled, a blocking call cannot.
"""

from __future__ import annotations

import asyncio
import fcntl
import http.client
import socket
import ssl
import struct
import termios
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from email.message import Message
from functools import partial
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from proxy.storage.errors import BodyTruncated

_INT = struct.Struct("i")  # FIONREAD's count: a C int
_ZERO = bytes(_INT.size)
_HEAD_LIMIT = 64 * 1024  # a reply's status line and header fields: more is not HTTP from S3


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)
T = TypeVar("T")

# When the current S3 exchange must have its reply's head (time.monotonic()), None: no deadline.
# A context variable: each worker thread (and task) has its own exchange.
_DEADLINE: ContextVar[float | None] = ContextVar("s3_exchange_deadline", default=None)


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Give the exchange that runs in the block ``seconds`` to get its reply's head, retries
    included (``time_left``); an exchange already under way in the caller keeps its own."""
    if _DEADLINE.get() is not None:
        yield
        return
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left() -> float | None:
    """Seconds left to the current exchange's deadline (<= 0 once passed); None without one."""
    until = _DEADLINE.get()
    return None if until is None else until - time.monotonic()


def _bounded(timeout: float) -> float:
    """``timeout``, or the time left to the exchange's deadline if that is shorter; TimeoutError
    once the deadline has passed."""
    left = time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise TimeoutError("the S3 exchange's deadline has passed")
    return min(timeout, left)


class _Pool(Generic[C]):
    """What both pools hold: the origin (``scheme://host[:port]``), the timeouts and up to
    ``keep`` idle connections. A deque's append and pop are atomic: threads may share it."""

    __slots__ = (
        "_connect_timeout",
        "_host",
        "_idle",
        "_keep",
        "_netloc",
        "_port",
        "_read_timeout",
        "_ssl",
    )

    def __init__(
        self,
        origin: str,
        keep: int,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an origin is http(s)://host[:port]")
        https = parts.scheme == "https"
        self._ssl = (ssl_context or ssl.create_default_context()) if https else None
        self._host = parts.hostname
        self._port = parts.port or (443 if https else 80)
        self._netloc = parts.netloc  # the Host field's value, as the URL was signed with
        self._keep = keep
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: deque[C] = deque()

    def _done(self, connection: C, reusable: bool) -> None:
        if reusable and len(self._idle) < self._keep:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close the idle connections (at shutdown)."""
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break


class Connections(_Pool[http.client.HTTPConnection]):
    """Connections to ``origin``, shared by threads. How many are busy at once is bounded by
    the threads calling ``get`` (the threadpool)."""

    __slots__ = ()

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        timeout = _bounded(self._connect_timeout)
        if self._ssl is None:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        else:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl
            )
        connection.connect()
        return connection

    def get(self, target: str, headers: dict[str, str]) -> Reply:
        """Send ``GET target`` and read the reply's status line and headers; the caller must
        ``close()`` the reply. A kept-alive connection the server closed meanwhile is replaced
        once, transparently. Raises OSError or ``http.client.HTTPException``; TimeoutError
        too when the exchange's deadline passes before the reply's head has come."""
        try:
            connection = self._idle.pop()
        except IndexError:
            pass
        else:
            try:
                return self._exchange(connection, target, headers)
            except (ConnectionError, http.client.BadStatusLine):
                pass  # closed by the server while idle (RemoteDisconnected is both): a new one
        return self._exchange(self._connect(), target, headers)

    def _exchange(
        self, connection: http.client.HTTPConnection, target: str, headers: dict[str, str]
    ) -> Reply:
        try:
            sock = connection.sock  # the connection lets go of it when the reply will close
            if sock is not None:  # until the head: the read timeout, or less at the deadline
                sock.settimeout(_bounded(self._read_timeout))
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            if sock is not None:
                sock.settimeout(self._read_timeout)  # each read of the body
            return Reply(self, connection, response, sock)
        except BaseException:
            connection.close()
            raise


class Reply:
    """A reply's status and headers (a case-insensitive mapping); its body is read with
    ``read``, which ``BodyTruncated`` ends when the body stops short of its length."""

    __slots__ = ("_connection", "_connections", "_response", "_sock", "headers", "status")

    def __init__(
        self,
        connections: Connections,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        sock: socket.socket | None,
    ) -> None:
        self._connections: Connections | None = connections
        self._connection = connection
        self._response = response
        self._sock = sock  # what the body arrives on; over TLS an SSLSocket
        self.status = response.status
        self.headers: Message = response.headers

    @property
    def framed(self) -> bool:
        """Whether a Content-Length frames the body (what the caller can stream)."""
        return self._response.length is not None and not self._response.chunked

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body, b"" at its end."""
        try:
            chunk = self._response.read(size)
        except (http.client.IncompleteRead, ConnectionError) as exc:
            raise BodyTruncated() from exc
        if not chunk and size and self._response.length:  # http.client returns b"" early
            raise BodyTruncated()
        return chunk

    def read_ready(self, size: int) -> bytes | None:
        """Up to ``size`` bytes that the socket holds already, so the read cannot wait: when it
        holds at least half of them (a new connection's receive buffer stalls just under 64 KiB
        until the reader takes more), else None; None over TLS too, where the kernel counts
        encrypted bytes. A slow client's S3 socket is full, and a fast client's often is (the
        proxy, not S3, is the slower side): their chunks need no worker thread."""
        sock = self._sock
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return None
        length = self._response.length
        if length is not None:
            size = min(size, length)
        try:
            (queued,) = _INT.unpack(fcntl.ioctl(sock.fileno(), termios.FIONREAD, _ZERO))
        except OSError:  # closed (fileno -1) or not a socket
            return None
        # Bytes the reply's buffered reader holds already are not counted: enough either way.
        if size < 1 or queued < (size + 1) // 2:
            return None
        return self.read(min(size, queued))

    def close(self) -> None:
        """Give the connection back (body read to its end) or close it; once."""
        connections, self._connections = self._connections, None
        if connections is None:
            return
        response = self._response
        reusable = response.isclosed() and response.length == 0 and not response.will_close
        if not reusable:
            response.close()
        connections._done(self._connection, reusable)


class Fields(dict[str, str]):
    """A reply's header fields by lower-case name, looked up in any case (repeated fields
    joined with ", ", as RFC 9110 §5.3 allows)."""

    __slots__ = ()

    def get(self, name: str, default: str | None = None, /) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


class AsyncConnections(_Pool[socket.socket]):
    """The event loop's twin of ``Connections``: non-blocking sockets. ``read_timeout`` bounds
    each wait for the socket, as a blocking socket's timeout does. Raises OSError (TimeoutError
    included) or ``HTTPException``."""

    __slots__ = ()

    async def get(self, target: str, headers: dict[str, str]) -> AsyncReply:
        """Send ``GET target`` and read the reply's head; the caller must ``close()`` the reply.
        A kept-alive connection the server closed meanwhile is replaced once, transparently."""
        lines = [f"GET {target} HTTP/1.1", f"Host: {self._netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self._idle:
            reply = await self._exchange(self._idle.pop(), request, reused=True)
            if reply is not None:
                return reply
        reply = await self._exchange(await self._connect(), request, reused=False)
        assert reply is not None  # a new connection's silence raises
        return reply

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            error: OSError = OSError(f"no address for {self._host}")
            for family, kind, proto, _, address in found:
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    await loop.sock_connect(sock, address)
                    if self._ssl is not None:  # the SSLSocket takes the descriptor over
                        sock = self._ssl.wrap_socket(
                            sock, server_hostname=self._host, do_handshake_on_connect=False
                        )
                        await _handshake(sock)
                    return sock
                except OSError as exc:
                    sock.close()
                    error = exc
                except BaseException:
                    sock.close()
                    raise
            raise error

    async def _exchange(
        self, sock: socket.socket, request: bytes, reused: bool
    ) -> AsyncReply | None:
        timeout = self._read_timeout
        try:
            try:
                await _send(sock, request, timeout)
                received = await _recv(sock, _HEAD_LIMIT, timeout)
            except ConnectionError:
                if not reused:
                    raise
                received = b""
            if not received:
                if reused:  # closed by the server while idle: the caller takes a new one
                    sock.close()
                    return None
                raise http.client.RemoteDisconnected("closed without a reply")
            head = bytearray(received)
            while (end := head.find(b"\r\n\r\n")) < 0:
                if len(head) >= _HEAD_LIMIT:
                    raise http.client.LineTooLong("reply head")
                more = await _recv(sock, _HEAD_LIMIT, timeout)
                if not more:
                    raise http.client.IncompleteRead(bytes(head))
                head += more
            return AsyncReply(self, sock, head[:end].decode("latin-1"), bytes(head[end + 4 :]))
        except BaseException:
            sock.close()
            raise


class AsyncReply:
    """A reply's status and header fields (``Fields``); ``read`` takes its body straight from
    the socket, ``BodyTruncated`` when it stops short of its Content-Length. Only a body with
    a Content-Length is read (``framed``): S3 frames every GetObject reply."""

    __slots__ = (
        "_buffered",
        "_connections",
        "_read_timeout",
        "_remaining",
        "_reusable",
        "_sock",
        "framed",
        "headers",
        "status",
    )

    def __init__(
        self, connections: AsyncConnections, sock: socket.socket, head: str, buffered: bytes
    ) -> None:
        self._connections: AsyncConnections | None = connections
        self._sock = sock
        self._read_timeout = connections._read_timeout
        status_line, *lines = head.split("\r\n")
        version, _, status = status_line.partition(" ")
        status = status[:3]
        if not version.startswith("HTTP/1.") or len(status) != 3 or not status.isdigit():
            raise http.client.BadStatusLine(status_line)
        self.status = int(status)
        fields = self.headers = Fields()
        name = ""
        for line in lines:
            if line[:1] in (" ", "\t") and name:  # obs-fold: one SP (RFC 9112 §5.2)
                fields[name] += " " + line.strip(" \t")
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise http.client.HTTPException("malformed header field")
            name = name.lower()
            value = value.strip(" \t")
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        length = fields.get("content-length")
        if self.status < 200 or self.status in (204, 304):
            length = "0"
        self.framed = length is not None and length.isdigit() and "transfer-encoding" not in fields
        self._remaining = int(length) if self.framed and length else 0
        self._reusable = (
            self.framed
            and self.status >= 200
            and version == "HTTP/1.1"
            and "close" not in (fields.get("connection") or "").lower()
            and len(buffered) <= self._remaining
        )
        self._buffered = buffered[: self._remaining]

    async def read(self, size: int) -> bytes:
        """``size`` bytes of the body, fewer only at its end (b"" there, and for a body
        without a length). Bytes the socket holds already are taken without waiting."""
        size = min(size, self._remaining)
        if size <= 0:
            return b""
        parts = []
        if buffered := self._buffered:
            parts.append(buffered[:size])
            self._buffered = buffered[size:]
        needed = size - len(parts[0]) if parts else size
        sock = self._sock
        while needed > 0:
            try:
                part = await _recv(sock, needed, self._read_timeout)
            except (ConnectionError, ssl.SSLError) as exc:
                raise BodyTruncated() from exc
            if not part:
                raise BodyTruncated()
            parts.append(part)
            needed -= len(part)
        self._remaining -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Give the connection back (body read to its end) or close it; once."""
        connections, self._connections = self._connections, None
        if connections is not None:
            connections._done(self._sock, self._reusable and self._remaining == 0)


async def _recv(sock: socket.socket, size: int, timeout: float) -> bytes:
    """Up to ``size`` bytes: what the socket holds, else the first that arrive."""
    return await _retry(sock, partial(sock.recv, size), False, timeout)


async def _send(sock: socket.socket, data: bytes, timeout: float) -> None:
    view = memoryview(data)
    while view:
        view = view[await _retry(sock, partial(sock.send, view), True, timeout) :]


async def _handshake(sock: ssl.SSLSocket) -> None:
    await _retry(sock, sock.do_handshake, False, None)  # bounded by the connect timeout


async def _retry(
    sock: socket.socket, operation: Callable[[], T], writing: bool, timeout: float | None
) -> T:
    """``operation`` on a non-blocking socket, repeated once the socket is ready for what it
    waited on: reading or writing (``writing``), or whichever TLS asks for."""
    while True:
        try:
            return operation()
        except BlockingIOError:
            await _wait(sock, writing, timeout)
        except ssl.SSLWantReadError:
            await _wait(sock, False, timeout)
        except ssl.SSLWantWriteError:
            await _wait(sock, True, timeout)


async def _wait(sock: socket.socket, writable: bool, timeout: float | None) -> None:
    """Until the socket can be read (or written); TimeoutError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()
    if writable:
        loop.add_writer(fd, _settle, ready, None)
    else:
        loop.add_reader(fd, _settle, ready, None)
    timer = None if timeout is None else loop.call_later(timeout, _settle, ready, TimeoutError())
    try:
        await ready
    finally:
        if timer is not None:
            timer.cancel()
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
