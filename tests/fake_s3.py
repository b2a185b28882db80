"""Tiny misbehaving S3 endpoints for error-path tests.

Each is a real TCP server on 127.0.0.1 served by daemon threads, used as a context manager that
yields a FakeS3 (``endpoint_url``, ``requests``) and stops it at exit: listener closed,
connections shut down, threads joined with a timeout. Any path is accepted (path-style
``/<bucket>/<key>``, and ``/<bucket>`` for HeadBucket).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "ETAG",
    "LAST_MODIFIED",
    "FakeS3",
    "Request",
    "black_hole",
    "closed_port",
    "pattern",
    "slow_down",
    "truncating",
]

LOOPBACK = "127.0.0.1"
ETAG = '"0123456789abcdef0123456789abcdef"'
LAST_MODIFIED = "Sat, 21 Nov 2026 00:00:00 GMT"
SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAKE0000000000000000</RequestId></Error>"
)

_POLL_S = 0.1  # how often blocked threads look at the stop flag
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 16 * 1024 * 1024
_MAX_CONNECTION_S = 120.0  # a connection is dropped after this long, whatever happens
_MAX_REQUESTS_PER_CONNECTION = 10_000
_JOIN_TIMEOUT_S = 5.0

_PATTERN = bytes(range(251))  # 251 is prime: the pattern does not line up with block sizes


def pattern(start: int, end: int) -> bytes:
    """Bytes [start, end) of the deterministic object body served by truncating()."""
    if end <= start:
        return b""
    first = start % len(_PATTERN)
    repeats = (end - start + first) // len(_PATTERN) + 1
    return (_PATTERN * repeats)[first : first + end - start]


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names


class _Stopped(Exception):
    """The server is stopping, the peer went away, or a limit was hit."""


class _Connection:
    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self.sock = sock
        self._stop = stop
        self._buffer = b""
        self._deadline = time.monotonic() + _MAX_CONNECTION_S
        sock.settimeout(_POLL_S)

    def _recv(self) -> bytes:
        """Next bytes from the peer; b"" when it closed. Raises _Stopped on stop/limit."""
        while True:  # bounded by the connection deadline
            if self._stop.is_set() or time.monotonic() > self._deadline:
                raise _Stopped
            try:
                return self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as error:
                raise _Stopped from error

    def read_request(self) -> Request | None:
        """The next request (its body read and discarded), or None when the peer closed."""
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > _MAX_HEADER_BYTES:
                raise _Stopped
            chunk = self._recv()
            if not chunk:
                return None
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _Stopped
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length_text = headers.get("content-length", "0") or "0"
        if not length_text.isdigit() or "transfer-encoding" in headers:
            raise _Stopped  # bodies with a Content-Length only
        length = int(length_text)
        if length > _MAX_BODY_BYTES:
            raise _Stopped
        if length and headers.get("expect", "").lower() == "100-continue":
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(self._buffer) < length:
            chunk = self._recv()
            if not chunk:
                return None
            self._buffer += chunk
        self._buffer = self._buffer[length:]
        return Request(method=parts[0].upper(), target=parts[1], headers=headers)

    def wait_for_close(self) -> None:
        """Discard whatever comes until the peer closes (returns) or the server stops."""
        while self._recv():
            pass

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise _Stopped from error


Handler = Callable[["FakeS3", _Connection], None]


@dataclass(eq=False)
class FakeS3:
    """A running fake endpoint. ``requests`` counts the requests received (thread-safe)."""

    endpoint_url: str
    _requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def _count(self) -> None:
        with self._lock:
            self._requests += 1


@contextlib.contextmanager
def _serve(handler: Handler) -> Iterator[FakeS3]:
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(_POLL_S)
    port = listener.getsockname()[1]
    fake = FakeS3(endpoint_url=f"http://{LOOPBACK}:{port}")
    stop = threading.Event()
    lock = threading.Lock()
    connections: set[socket.socket] = set()
    threads: list[threading.Thread] = []

    def handle(sock: socket.socket) -> None:
        try:
            handler(fake, _Connection(sock, stop))
        except _Stopped:
            pass
        finally:
            with lock:
                connections.discard(sock)
            sock.close()

    def accept_loop() -> None:
        while not stop.is_set():  # ends when the context exits
            try:
                sock, _address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with lock:
                if stop.is_set():
                    sock.close()
                    return
                connections.add(sock)
                thread = threading.Thread(target=handle, args=(sock,), daemon=True)
                threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept_loop, name=f"fake-s3-{port}", daemon=True)
    acceptor.start()
    try:
        yield fake
    finally:
        stop.set()
        acceptor.join(_JOIN_TIMEOUT_S)
        listener.close()
        with lock:
            for sock in connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            pending = list(threads)
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))
        with lock:
            leftovers = list(connections)
        for sock in leftovers:  # only if a handler thread did not finish in time
            sock.close()


def _response(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _date() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


def _keeps_alive(request: Request) -> bool:
    return "close" not in request.headers.get("connection", "").lower()


@contextlib.contextmanager
def slow_down() -> Iterator[FakeS3]:
    """Every request gets 503 SlowDown with an S3 XML error body; connections are kept alive."""

    def handler(fake: FakeS3, connection: _Connection) -> None:
        for _ in range(_MAX_REQUESTS_PER_CONNECTION):
            request = connection.read_request()
            if request is None:
                return
            fake._count()
            keep_alive = _keeps_alive(request)
            headers = [
                ("Content-Type", "application/xml"),
                ("Content-Length", str(len(SLOW_DOWN_BODY))),
                ("Date", _date()),
                ("Server", "FakeS3"),
                ("x-amz-request-id", "FAKE0000000000000000"),
                ("Connection", "keep-alive" if keep_alive else "close"),
            ]
            body = b"" if request.method == "HEAD" else SLOW_DOWN_BODY
            connection.send(_response("503 Slow Down", headers, body))
            if not keep_alive:
                return

    with _serve(handler) as fake:
        yield fake


@contextlib.contextmanager
def black_hole() -> Iterator[FakeS3]:
    """Accepts connections and reads the request, never answers; holds the socket until the
    client closes it or the server stops (at most 120 s)."""

    def handler(fake: FakeS3, connection: _Connection) -> None:
        request = connection.read_request()
        if request is None:
            return
        fake._count()
        connection.wait_for_close()

    with _serve(handler) as fake:
        yield fake


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def _parse_range(value: str | None, size: int) -> tuple[int, int] | None | str:
    """(first, last) inclusive; None: no usable Range (serve 200); "unsatisfiable": 416.

    Like S3: one range only (a multi-range header is ignored), invalid syntax is ignored.
    """
    if value is None:
        return None
    match = _RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size - 1)
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # invalid spec: ignored
    if first >= size:
        return "unsatisfiable"
    return (first, min(last, size - 1))


@contextlib.contextmanager
def truncating(
    size: int, send: int, content_type: str = "video/mp4", reset: bool = False
) -> Iterator[FakeS3]:
    """Serves one object of `size` bytes (body: pattern(0, size)) at every path, like S3:
    200, or 206 + Content-Range for `Range: bytes=a-b | a- | -n` (416 when unsatisfiable).

    HEAD gets the headers only, and keeps the connection. GET gets the full headers
    (Content-Length of the whole answer) but only the first `send` bytes of the body, then the
    connection is closed: a FIN, or with reset=True an RST. A HeadBucket (`HEAD /<bucket>`) is
    answered 200.
    """

    def handler(fake: FakeS3, connection: _Connection) -> None:
        for _ in range(_MAX_REQUESTS_PER_CONNECTION):
            request = connection.read_request()
            if request is None:
                return
            fake._count()
            common = [
                ("Date", _date()),
                ("Server", "FakeS3"),
                ("x-amz-request-id", "FAKE0000000000000000"),
            ]
            path = request.target.split("?", 1)[0].strip("/")
            if request.method == "HEAD" and "/" not in path:  # HeadBucket
                headers = [*common, ("x-amz-bucket-region", "us-east-1"), ("Content-Length", "0")]
                connection.send(_response("200 OK", headers))
                continue
            wanted = _parse_range(request.headers.get("range"), size)
            if wanted == "unsatisfiable":
                body = (
                    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRange</Code>'
                    b"<Message>The requested range is not satisfiable</Message></Error>"
                )
                headers = [
                    *common,
                    ("Content-Type", "application/xml"),
                    ("Content-Range", f"bytes */{size}"),
                    ("Content-Length", str(len(body))),
                ]
                no_body = request.method == "HEAD"
                connection.send(
                    _response(
                        "416 Requested Range Not Satisfiable", headers, b"" if no_body else body
                    )
                )
                continue
            headers = [
                *common,
                ("Last-Modified", LAST_MODIFIED),
                ("ETag", ETAG),
                ("Accept-Ranges", "bytes"),
                ("Content-Type", content_type),
            ]
            if isinstance(wanted, tuple):
                first, last = wanted
                status = "206 Partial Content"
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
            else:
                first, last = 0, size - 1
                status = "200 OK"
            headers.append(("Content-Length", str(last - first + 1)))
            if request.method == "HEAD":
                connection.send(_response(status, headers))
                continue
            headers.append(("Connection", "close"))
            sent_end = min(last + 1, first + max(0, send))
            connection.send(_response(status, headers, pattern(first, sent_end)))
            if reset:  # SO_LINGER 0: close() sends RST instead of FIN
                connection.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            return

    with _serve(handler) as fake:
        yield fake


def closed_port() -> str:
    """An endpoint URL on 127.0.0.1 where nothing listens (a port that was just free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    return f"http://{LOOPBACK}:{port}"
