"""The connection layer: uvicorn's HTTP/1.1 protocols with the proxy's limits and strictness.

``HttpToolsConnection`` and ``H11Connection`` subclass uvicorn's two protocols and add, the
same under both parsers and both event loops:

- a bounded request head (``Limits.max_head``: the parser never sees a byte past it; then
  ``431``, or ``414`` while the request line is still open) and a deadline for it
  (``Limits.header_timeout``, from the connection's start or the end of the previous response;
  then ``408`` if part of a head came, and the connection closes);
- a cap on open connections per process (``Limits.max_connections``; beyond it ``503``);
- strict RFC 9112 framing: only ``HTTP/1.0`` and ``HTTP/1.1`` request lines (others ``505``,
  an HTTP/0.9 line ``400``), one valid ``Host`` (required in 1.1), no ``Transfer-Encoding``
  beside ``Content-Length`` or in 1.0, no obsolete line folding; what either parser rejects by
  itself (whitespace before a colon, conflicting lengths...) also gets the proxy's answer;
- a raw UTF-8 request target (curl sends one as typed) read as its percent-encoded form;
- a half-closed client (its FIN after its request) still gets the whole response;
- a request body read one read at a time, as the app takes it (``_BodyFlow``): what follows
  waits in the kernel's socket buffer, not in the process;
- the ASGI "Zero Copy Send" extension (``http.response.zerocopysend``) on plain TCP
  connections (not TLS): a file's bytes go from the page cache to the socket by ``sendfile``,
  never through Python (``ZeroCopyCycle``).

Every refusal is the proxy's JSON error (``proxy.http.plan.error_body``) with ``Connection:
close``, then a lingering close: our side is shut, what the client still sends is read and
dropped for a moment (``LINGER_SECONDS``, ``LINGER_BYTES``) so that it reads the answer instead
of a reset. All of it runs per connection, per request head or per read of a request body;
the response's body is uvicorn's own code, reached through one attribute test.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.h11_impl import RequestResponseCycle as H11Cycle
from uvicorn.server import ServerState

from proxy.http.plan import error_body
from proxy.sendfile import FileEnded, SendfileTally, send_file, socket_fd, wake_all

__all__ = ["ZERO_COPY", "FileEnded", "SendfileTally", "ZeroCopyCycle", "protocol_factory"]

try:
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        STATUS_LINE,
        HttpToolsProtocol,
    )
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as HttpToolsCycle
except ImportError:  # pragma: no cover - httptools is optional for uvicorn
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
    HttpToolsCycle = None  # type: ignore[assignment,misc]

logger = logging.getLogger("proxy.connection")

# After a refusal, what the client still sends is read and dropped for at most this long and
# this much, so that it can finish sending and read the answer (a close with unread data would
# send a reset, which can destroy the answer in the client's buffer), then the connection closes.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
RETRY_AFTER_SECONDS = b"1"  # as proxy.errorhandlers answers its own 503s
WARNING_INTERVAL_SECONDS = 10.0  # the connection cap's warning, at most this often

CODES = {
    400: "bad_request",
    408: "request_timeout",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    503: "too_many_connections",
    505: "http_version_not_supported",
}
MALFORMED = "the request is not valid HTTP/1.1 (RFC 9112)"
LINE_ENDINGS = (b" HTTP/1.1\r", b" HTTP/1.0\r")
LINE_ENDING_LENGTH = len(LINE_ENDINGS[0])
ANY_VERSION_AT_END = re.compile(rb" HTTP/[0-9]\.[0-9]\r\Z")
NOT_ASCII = re.compile(rb"[\x80-\xff]")
# RFC 9112 §3.2 and RFC 3986 §3.2.2: an IP literal, or a name of unreserved characters, percent
# escapes and sub-delimiters; then an optional port. Empty is valid (a target with no authority).
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.vV]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")


# What the connection layer tells of each refusal it answers: (status, the request's method
# when its line began, seconds since its head began, bytes of the answer). The app never sees
# these requests, so its access log and metrics hear of them from here.
Refused = Callable[[int, "str | None", float, int], None]


def _not_reported(status: int, method: str | None, seconds: float, sent: int) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Limits:
    """What the connection layer enforces (from ``PROXY_MAX_REQUEST_HEAD``,
    ``PROXY_HEADER_TIMEOUT`` and ``PROXY_MAX_CONNECTIONS``), and whom it tells of a refusal
    (``proxy.observability.report_refusal``; module-level, so that it pickles for workers)."""

    max_head: int
    header_timeout: float
    max_connections: int
    refused: Refused = _not_reported


# The longest method the log takes from a refused head's first bytes (RFC 9110's are at most 7).
METHOD_PEEK = 16
METHOD = re.compile(rb"([A-Z][A-Z-]{0,14}) ")


def _method(head_start: bytes) -> str | None:
    """The method a request line begins with, when it begins with one."""
    match = METHOD.match(head_start)
    return None if match is None else match[1].decode("ascii")


def head_problem(version: str, headers: Iterable[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    """The status and reason to refuse a parsed request head with, or None when it is sound:
    what RFC 9112 requires of the version, Host and the body's framing that the parsers let
    through (``headers``: lower-case names)."""
    if version != "1.1" and version != "1.0":
        return 505, f"HTTP/{version} is not supported: HTTP/1.1 or HTTP/1.0"
    hosts = 0
    host = b""
    chunked = length = False
    for name, value in headers:
        if name == b"host":
            hosts += 1
            host = value
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            length = True
    if hosts > 1:
        return 400, "several Host header fields"
    if hosts == 0 and version == "1.1":
        return 400, "an HTTP/1.1 request needs a Host header field"
    if hosts and not HOST.fullmatch(host):
        return 400, "the Host header field is not a valid host"
    if chunked and length:
        return 400, "Transfer-Encoding and Content-Length together"
    if chunked and version == "1.0":
        return 400, "Transfer-Encoding in an HTTP/1.0 request"
    return None


def error_response(
    status: int,
    detail: str,
    default_headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> bytes:
    """A whole HTTP/1.1 response: the proxy's JSON error body, ``Connection: close``; to a HEAD
    request (``head``) the same header fields and no body (RFC 9110 §9.3.2)."""
    body = error_body(CODES[status], detail)
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
    for name, value in default_headers:  # uvicorn's Date
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
    if status == 503:
        parts.append(b"retry-after: " + RETRY_AFTER_SECONDS + b"\r\n")
    parts += [b"connection: close\r\n\r\n", b"" if head else body]
    return b"".join(parts)


def _head_ends_within(data: bytes, limit: int) -> bool:
    """Whether the head at the start of ``data`` ends (its empty line) within ``limit`` bytes."""
    return data.find(b"\n\r\n", 0, limit) >= 0 or data.find(b"\n\n", 0, limit) >= 0


def _percent_encode(data: bytes) -> bytes:
    return NOT_ASCII.sub(lambda match: b"%%%02X" % match[0][0], data)


_last_warning = 0.0


def _warn_at_capacity(open_connections: int) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARNING_INTERVAL_SECONDS:
        _last_warning = now
        logger.warning(
            "%d connections open (PROXY_MAX_CONNECTIONS): new ones get 503", open_connections
        )


# -- zero-copy sends ----------------------------------------------------------------------------

ZERO_COPY = "http.response.zerocopysend"


class _FileSpan:
    """What h11 is given as a zero-copy send's data (``send_with_data_passthrough``): it frames
    ``len()`` bytes and hands the span back among the pieces to write."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class ZeroCopyCycle:
    """Mixed into uvicorn's ``RequestResponseCycle`` (of either parser): ``send`` also takes
    the ASGI "Zero Copy Send" message, ``{"type": "http.response.zerocopysend", "file": a
    descriptor or an object with fileno(), "offset", "count", "more_body"}`` (no offset: from
    the file's position, which then moves on; no count: to the end of the file).

    The bytes go by ``proxy.sendfile.send_file`` (waiting for room on the event loop, so a
    slow reader holds no thread and no buffer). A client gone (``EPIPE``, ``ECONNRESET``)
    ends the send quietly, as uvicorn's body sends do after a disconnect, and aborts the
    transport; a file that ends early raises ``FileEnded``; a cancellation (the app's
    disconnect watcher) stops at once."""

    # Set by uvicorn's cycles and by _Guard._adopt (declared here for the type checker).
    transport: asyncio.Transport
    flow: Any
    scope: Any
    disconnected: bool
    response_started: bool
    response_complete: bool
    message_event: asyncio.Event
    _waiters: set[asyncio.Future[None]]
    _socket_fd: int  # the transport's socket's descriptor

    async def send(self, message: Any) -> None:
        if message["type"] != ZERO_COPY or not self.response_started or self.response_complete:
            await super().send(message)  # type: ignore[misc]
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        count = message.get("count")
        moves = offset is None  # the file's position moves on, as read() would move it
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        if count > 0 and self.scope["method"] != "HEAD":
            await self._send_framed(fd, offset, count)
            if moves:
                os.lseek(fd, offset + count, os.SEEK_SET)
        if not message.get("more_body", False):
            await super().send({"type": "http.response.body", "body": b"", "more_body": False})  # type: ignore[misc]

    async def _send_framed(self, fd: int, offset: int, count: int) -> None:
        """``count`` bytes from ``offset`` of ``fd`` in the response's framing."""
        raise NotImplementedError

    async def _sendfile(self, fd: int, offset: int, count: int) -> None:
        if not await send_file(
            self.transport,
            self._socket_fd,
            fd,
            offset,
            count,
            stopped=lambda: self.disconnected,
            waiters=self._waiters,
        ):
            self._gone()

    def _gone(self) -> None:
        """The bytes cannot go out: the app hears a disconnect (as from ``connection_lost``),
        so the response ends incomplete, never as if it were sent."""
        self.disconnected = True
        self.message_event.set()


class _H11ZeroCopyCycle(ZeroCopyCycle, H11Cycle):
    conn: h11.Connection

    async def _send_framed(self, fd: int, offset: int, count: int) -> None:
        span = _FileSpan(count)
        data = h11.Data(data=span)  # type: ignore[arg-type]
        for piece in self.conn.send_with_data_passthrough(data) or ():
            if piece is span:  # type: ignore[comparison-overlap]
                await self._sendfile(fd, offset, count)
            else:
                self.transport.write(piece)


if HttpToolsCycle is not None:
    # The bytes uvicorn's header regexes (character classes) refuse, for bytes.translate.
    _NAME_BYTES_REFUSED = bytes(b for b in range(256) if HEADER_RE.search(bytes((b,))))
    _VALUE_BYTES_REFUSED = bytes(b for b in range(256) if HEADER_VALUE_RE.search(bytes((b,))))

    class _HttpToolsZeroCopyCycle(ZeroCopyCycle, HttpToolsCycle):
        chunked_encoding: bool | None
        expected_content_length: int
        keep_alive: bool
        access_log: bool
        default_headers: list[tuple[bytes, bytes]]
        waiting_for_100_continue: bool

        async def send(self, message: Any) -> None:
            if (
                message["type"] == "http.response.start"
                and not self.response_started
                and not self.access_log  # uvicorn's own line: its send writes it
                and not self.disconnected
                and not self.flow.write_paused
            ):
                self._start(message)
                return
            await super().send(message)

        def _start(self, message: Any) -> None:
            """uvicorn's head of a response, as its ``send`` writes it, with the bytes its two
            regexes refuse in header names and values looked for in all names and all values
            at once, by ``bytes.translate`` (uvicorn runs two regex searches per field: ~4% of
            a 64 KiB range's instructions). Joined names hold a refused byte exactly when one
            name does; values are joined by a tab, which they may hold."""
            self.response_started = True
            self.waiting_for_100_continue = False
            status_code = message["status"]
            headers = self.default_headers + list(message.get("headers", []))
            names = b"".join([name for name, _ in headers])
            if len(names.translate(None, _NAME_BYTES_REFUSED)) != len(names):
                raise RuntimeError("Invalid HTTP header name.")
            values = b"\t".join([value for _, value in headers])
            if len(values.translate(None, _VALUE_BYTES_REFUSED)) != len(values):
                raise RuntimeError("Invalid HTTP header value.")
            content = [STATUS_LINE[status_code]]
            has_connection_close = False
            for name, value in headers:
                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    connection = [token.lower().strip() for token in value.split(b",")]
                    if b"close" in connection:
                        self.keep_alive = False
                        has_connection_close = True
                content += (name, b": ", value, b"\r\n")
            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")
            if (
                self.chunked_encoding is None
                and self.scope["method"] != "HEAD"
                and status_code not in (204, 304)
            ):
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            self.transport.write(b"".join(content))

        async def _send_framed(self, fd: int, offset: int, count: int) -> None:
            if self.chunked_encoding:
                self.transport.write(b"%x\r\n" % count)
                await self._sendfile(fd, offset, count)
                self.transport.write(b"\r\n")
                return
            if count > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= count
            await self._sendfile(fd, offset, count)


class _BodyFlow(FlowControl):
    """uvicorn's flow control, reading a request body one read at a time: while the app has
    not taken what came (``cycle.body``), the connection reads no more, so what follows waits
    in the kernel's socket buffer instead of the process's memory. uvicorn reads on until 64 KiB
    are buffered, and a read takes up to 256 KiB: while an upload wrote one message, up to
    320 KiB more waited in the process (docs/design.md, "Uploads: memory")."""

    def __init__(self, transport: asyncio.Transport, connection: _Guard) -> None:
        super().__init__(transport)
        self._connection = connection

    def resume_reading(self) -> None:
        # Per request (uvicorn resumes after each response): the common case tested inline.
        cycle = self._connection.cycle
        if cycle is not None and cycle.body and self._connection._body_waits():
            return
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()


class _Guard(asyncio.Protocol):
    """What both protocols add to uvicorn's; the parser-specific hooks are in the subclasses.

    State of the head being read: ``_head_left`` is None while no head is read (a request body,
    or a request waiting for its answer): then ``data_received`` is uvicorn's. Otherwise it is
    what the head may still take; ``_line_open``: the request line began at the start of a read
    we saw and has not ended, so its bytes are checked here (a head that began in the middle of
    a read, after a pipelined request, is left to the parser and the checks on the parsed head).
    """

    # Set by uvicorn's protocols (declared here for the type checker).
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    server_state: ServerState
    cycle: Any
    flow: Any

    _scan_folds = False  # h11 joins folded lines silently: look for them in the bytes
    _zero_copy_cycle: type[ZeroCopyCycle] | None = None  # the parser's cycle with zero-copy

    def _guard_init(self, limits: Limits, zero_copy: bool) -> None:
        self._limits = limits
        self._zero_copy = zero_copy  # offered, when the connection allows it (connection_made)
        self._waiters: set[asyncio.Future[None]] = set()  # zero-copy sends waiting for room
        self._max_head = limits.max_head
        self._head_left: int | None = limits.max_head
        self._heads = 0  # heads parsed: tells whether one ended within a read
        self._line_open = True
        self._line_tail = b""  # the end of an open request line, from earlier reads
        self._folded_tail = False  # the head so far ends with a line feed (h11)
        self._header_timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # when the head now due must be in
        self._linger_timer: asyncio.TimerHandle | None = None
        self._rejected = False
        self._dropped = 0
        self._client_done = False  # the client half-closed after a complete request
        self._head_request = False  # the head being read asks HEAD: a refusal has no body
        self._head_start = b""  # its first bytes (the method, for the log of a refusal)
        self._head_began: float | None = None  # when its first byte came (loop time)

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self._limits.max_connections:
            # (uvloop's transports are not asyncio.Transport instances: no isinstance here)
            self.transport = cast(asyncio.Transport, transport)  # never one of the counted
            _warn_at_capacity(len(self.connections))
            self._reject(503, "too many open connections; retry shortly")
            return
        super().connection_made(transport)
        self.flow = _BodyFlow(self.transport, self)
        if self._zero_copy:
            out = socket_fd(transport)
            if out is None:
                self._zero_copy = False  # TLS: the bytes must pass through Python's ssl
            else:
                self._socket_fd = out
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        wake_all(self._waiters)  # a zero-copy send waiting for room: it ends
        self._stop_header_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def _half_close(self) -> bool | None:
        """The client's FIN (``eof_received``). uvicorn closes at once, and the app hears a
        disconnect: a response under way came out cut. A FIN after a complete request is a
        half-close (``nc -N``, ``shutdown(SHUT_WR)``): keep the connection for writing, send the
        whole response, then close. A client that really left makes a later write fail (a
        reset), and uvicorn then ends the transfer as before."""
        cycle = self.cycle
        if self._rejected or cycle is None or cycle.response_complete or cycle.more_body:
            return None  # nothing to answer, or a request never completed: close
        self._client_done = True
        return True

    def _adopt(self, cycle: Any) -> None:
        """A new request's cycle, made by uvicorn (whose protocols name their cycle class
        directly): with zero-copy on, it becomes the parser's ``ZeroCopyCycle`` (a subclass
        that only adds to ``send``; its task has not run yet) and its scope offers the
        extension."""
        if self._zero_copy and self._zero_copy_cycle is not None:
            cycle.__class__ = self._zero_copy_cycle
            cycle._waiters = self._waiters
            cycle._socket_fd = self._socket_fd
            scope = cycle.scope
            scope["extensions"] = {**scope.get("extensions", {}), ZERO_COPY: {}}

    # -- request heads ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        left = self._head_left
        if left is None:  # a request body, or a request waiting for its answer
            super().data_received(data)
            if self._body_waits():
                self.flow.pause_reading()
            return
        self._head_data(data, left)

    def _body_waits(self) -> bool:
        """Whether request body bytes wait for the app to take them (``_BodyFlow``)."""
        cycle = self.cycle
        return (
            cycle is not None
            and bool(cycle.body)
            and not cycle.response_complete
            and not cycle.disconnected
            and not self._rejected
        )

    def _head_data(self, data: bytes, left: int) -> None:
        if self._rejected:  # lingering after a refusal
            self._drop(len(data))
            return
        if left <= 0:
            self._reject(431, f"the request head is longer than {self._limits.max_head} bytes")
            return
        rest = b""
        if len(data) > left:  # no byte past the limit reaches the parser
            data, rest = data[:left], data[left:]
        self._head_left = left - len(data)
        self._feeding_fresh = left == self._max_head
        if self._feeding_fresh:
            self._head_request = data.startswith(b"HEAD ")
            self._head_start = data[:METHOD_PEEK]
            self._head_began = self.loop.time()
        if self._line_open:
            end = data.find(b"\n")
            if (
                end >= LINE_ENDING_LENGTH
                and data.endswith(LINE_ENDINGS, end - LINE_ENDING_LENGTH, end)
                and data.isascii()
            ):  # the usual: a sound request line, in ASCII, whole in this read
                self._line_open = False
                self._line_tail = b""
            else:
                checked = self._request_line(data)
                if checked is None:
                    return
                data = checked
        if self._scan_folds and self._folded(data):
            self._reject(400, "obsolete line folding in the header fields")
            return
        heads = self._heads
        super().data_received(data)
        if self._rejected or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.body and self._body_waits():  # body bytes came too
            self.flow.pause_reading()
        self._after_feed()
        if self._heads == heads and self._head_left == 0:  # the head did not end within the limit
            if self._line_open:
                self._reject(414, f"the request line is longer than {self._limits.max_head} bytes")
            else:
                self._reject(431, f"the request head is longer than {self._limits.max_head} bytes")
            return
        if rest:
            self.data_received(rest)  # what follows a head that ended within the limit

    def _request_line(self, data: bytes) -> bytes | None:
        """Check the end of the request line when it is in ``data`` (HTTP/1.1 or 1.0 with CRLF:
        no HTTP/0.9 line, which has no version, and no other version), and percent-encode raw
        non-ASCII bytes of the line: the target then names what its encoded form names. The
        bytes to feed, or None once refused."""
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:  # the line goes on in the next read
                tail = self._line_tail + data[max(start, len(data) - LINE_ENDING_LENGTH) :]
                self._line_tail = tail[-LINE_ENDING_LENGTH:]
                return data if data.isascii() else _percent_encode(data)
            if end - start <= 1 and self._line_tail + data[start:end] in (b"", b"\r"):
                start = end + 1  # an empty line before the request line: RFC 9112 §2.2
                self._line_tail = b""
                continue
            break
        if start:  # ignored here (h11 would refuse them)
            data = data[start:]
            end -= start
            start = 0
        if end - start >= LINE_ENDING_LENGTH:
            sound = data.endswith(LINE_ENDINGS, end - LINE_ENDING_LENGTH, end)
            ending = data[end - LINE_ENDING_LENGTH : end]
        else:
            ending = (self._line_tail + data[start:end])[-LINE_ENDING_LENGTH:]
            sound = ending.endswith(LINE_ENDINGS)
        self._line_open = False
        self._line_tail = b""
        if not sound:
            if ANY_VERSION_AT_END.search(ending):
                version = ending[-4:-1].decode("ascii")
                self._reject(505, f"HTTP/{version} is not supported: HTTP/1.1 or HTTP/1.0")
            else:
                self._reject(400, "not an HTTP/1.1 request line (HTTP/0.9, or no CRLF)")
            return None
        if data.isascii():
            return data
        return _percent_encode(data[:end]) + data[end:]

    def _folded(self, data: bytes) -> bool:
        """Obsolete line folding (a header line that starts with a space or a tab) in the part
        of ``data`` that is head: up to the first empty line."""
        end = len(data)
        if self._folded_tail and data[:1] in (b"\r", b"\n"):
            end = 0  # the empty line that ends the head begins this read
        for blank in (b"\r\n\r\n", b"\n\n"):
            found = data.find(blank)
            if 0 <= found < end:
                end = found
        folded = (
            (self._folded_tail and data[:1] in (b" ", b"\t"))
            or data.find(b"\n ", 0, end) >= 0
            or data.find(b"\n\t", 0, end) >= 0
        )
        self._folded_tail = data.endswith(b"\n")
        return folded

    def _after_feed(self) -> None:
        """After the parser took a read: note a head it completed (h11 tells no one)."""

    def _head_complete(self) -> None:
        self._head_left = None
        self._heads += 1
        self._folded_tail = False
        self._forget_deadline()

    def _next_head(self, buffered: int = 0) -> None:
        """A new head is due: the next read starts it, unless ``buffered`` bytes of it wait in
        the parser (pipelined)."""
        self._head_left = self._max_head - buffered
        self._line_open = not buffered
        self._line_tail = b""
        if buffered >= self._max_head:  # all of it may be in already: no read would tell
            self._reject(431, f"the request head is longer than {self._max_head} bytes")

    def _after_response(self) -> None:
        """A response ended: close a half-closed connection; otherwise, when no request is under
        way, the next head's deadline runs from now."""
        if self.transport.is_closing() or not self.cycle.response_complete:
            return
        if self._client_done:
            self.transport.close()
            return
        self._arm_header_timer()

    # -- deadlines ----------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        """The next head is due within the header timeout from now. The timer is lazy: one
        per connection, moved on when it fires early, never cancelled per request (a
        call_later and its cancel cost ~2 µs, a request on a kept connection ~200 µs)."""
        self._deadline = self.loop.time() + self._limits.header_timeout
        if self._header_timer is None:
            self._header_timer = self.loop.call_at(self._deadline, self._header_timeout)

    def _forget_deadline(self) -> None:
        self._deadline = None  # a head came: the timer, when it fires, finds nothing to do

    def _stop_header_timer(self) -> None:
        self._deadline = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        deadline = self._deadline
        if deadline is None or self.transport.is_closing():
            return  # no head is due; the next response arms the timer again
        if deadline > self.loop.time():  # the deadline moved on since the timer was set
            self._header_timer = self.loop.call_at(deadline, self._header_timeout)
            return
        self._rejected = True
        left = self._head_left
        if left is not None and left < self._limits.max_head:  # part of a head came
            detail = f"the request head took longer than {self._limits.header_timeout:g} s"
            answer = error_response(408, detail, self.server_state.default_headers)
            self.transport.write(answer)
            self._report(408, len(answer))
        self.transport.close()  # no lingering: the client had its time

    # -- refusals -----------------------------------------------------------------------------

    def _reject(self, status: int, detail: str) -> None:
        """Answer ``status`` with the proxy's JSON error, then close, lingering. While an
        earlier request's answer is due (pipelining), nothing may come between its bytes: it
        goes out whole, then the connection closes, with no answer to the refused one."""
        if self._rejected:
            return
        self._rejected = True
        self._head_left = 0  # what comes next is dropped
        self._stop_header_timer()
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:  # refused: a later request; this one's answer goes out
                cycle.keep_alive = False
                return
            cycle.disconnected = True  # refused: this request's body; the app hears it left
            cycle.message_event.set()
            if cycle.response_started:  # nothing can be said after its answer began
                transport.close()
                return
        answer = error_response(
            status, detail, self.server_state.default_headers, head=self._head_request
        )
        transport.write(answer)
        self._report(status, len(answer))
        if transport.can_write_eof():
            transport.write_eof()  # our FIN after the answer; the client may still send
        if self.flow is not None:
            self.flow.resume_reading()
        else:
            transport.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _report(self, status: int, sent: int) -> None:
        """Tell ``Limits.refused`` of a refusal answered (a request the app never saw)."""
        began = self._head_began
        seconds = 0.0 if began is None else self.loop.time() - began
        self._limits.refused(status, _method(self._head_start), seconds, sent)

    def _drop(self, size: int) -> None:
        self._dropped += size
        if self._dropped > LINGER_BYTES:
            self.transport.close()


class H11Connection(_Guard, H11Protocol):
    """uvicorn's h11 protocol with the proxy's limits (see the module's docstring)."""

    _scan_folds = True
    _zero_copy_cycle = _H11ZeroCopyCycle

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits,
        zero_copy: bool = False,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._strict = _StrictH11Connection(h11.SERVER, self.conn._max_incomplete_event_size)
        self.conn = self._strict
        self._guard_init(limits, zero_copy)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:
            self._adopt(self.cycle)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        return self._half_close()

    def _after_feed(self) -> None:
        if self._head_left is not None and self.conn.their_state is not h11.IDLE:
            self._head_complete()

    def on_response_complete(self) -> None:
        conn = self.conn
        if conn.their_state is h11.DONE and not self.transport.is_closing():
            # A pipelined head that h11 holds whole would be parsed at any length.
            buffered = conn.trailing_data[0]
            if len(buffered) >= self._max_head and not _head_ends_within(buffered, self._max_head):
                self.server_state.total_requests += 1  # as uvicorn's own counts an answer
                self._reject(431, f"the request head is longer than {self._max_head} bytes")
                return
        super().on_response_complete()  # starts a pipelined request's answer, if one came
        if not self.transport.is_closing() and conn.their_state is h11.IDLE:
            self._next_head(len(conn.trailing_data[0]))
        self._after_response()

    def send_400_response(self, msg: str) -> None:
        refusal = self._strict.refusal
        if refusal is not None:  # a check of head_problem's
            self._reject(*refusal)
        elif self._strict.too_long:
            self._reject(431, f"the request head is longer than {self._limits.max_head} bytes")
        else:  # h11's own words quote the client's bytes: ours are the same under httptools
            self._reject(400, MALFORMED)


class _StrictH11Connection(h11.Connection):
    """h11's connection, checking each request head as ``head_problem`` does, and keeping what
    uvicorn's protocol, which only hears of a RemoteProtocolError, turns into a bare 400."""

    refusal: tuple[int, str] | None = None
    too_long = False  # h11's own bound on a head it buffers

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.too_long = exc.error_status_hint == 431
            raise
        if type(event) is h11.Request:
            self.refusal = head_problem(event.http_version.decode("ascii"), event.headers)
            if self.refusal is not None:
                raise h11.RemoteProtocolError(self.refusal[1], self.refusal[0])
        return event


if HttpToolsProtocol is not None:

    class _Refused(Exception):
        """Raised in a parser callback to stop httptools after a refusal."""

    class HttpToolsConnection(_Guard, HttpToolsProtocol):
        """uvicorn's httptools protocol with the proxy's limits (see the module's docstring)."""

        _zero_copy_cycle = _HttpToolsZeroCopyCycle

        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
            *,
            limits: Limits,
            zero_copy: bool = False,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._guard_init(limits, zero_copy)
            self._feeding_fresh = True

        def on_message_begin(self) -> None:
            if self._feeding_fresh:  # the message whose request line _request_line saw
                self._feeding_fresh = False
            else:  # one that began in the middle of a read: its line was not seen here
                self._line_open = False
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_left = None  # _head_complete(), inline: once per request
            self._heads += 1
            self._deadline = None
            problem = head_problem(self.parser.get_http_version(), self.headers)
            if problem is not None:
                self._reject(*problem)
                raise _Refused
            cycle = self.cycle
            super().on_headers_complete()
            if self.cycle is not cycle:
                self._adopt(self.cycle)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            if not self._rejected:  # _next_head(), inline: once per request
                self._head_left = self._max_head
                self._line_open = True
                self._line_tail = b""
                self._feeding_fresh = False

        def eof_received(self) -> bool | None:  # type: ignore[override]
            return self._half_close()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # starts a pipelined request's answer, if one came
            self._after_response()

        def send_400_response(self, msg: str) -> None:
            self._reject(400, MALFORMED)


def protocol_factory(
    http_setting: str, limits: Limits, zero_copy: bool = False
) -> Callable[..., asyncio.Protocol]:
    """What uvicorn's ``http=`` takes for ``PROXY_HTTP`` (``auto``: httptools when installed):
    called with uvicorn's arguments for each connection. A partial of a module-level class, so
    that it pickles for ``PROXY_WORKERS`` > 1. ``zero_copy``: offer the ASGI zero-copy send
    (``PROXY_ZERO_COPY``) on connections without TLS."""
    if http_setting == "h11" or (http_setting == "auto" and HttpToolsProtocol is None):
        return functools.partial(H11Connection, limits=limits, zero_copy=zero_copy)
    if HttpToolsProtocol is None:
        raise RuntimeError("PROXY_HTTP=httptools, but httptools is not installed")
    return functools.partial(HttpToolsConnection, limits=limits, zero_copy=zero_copy)
