"""A fault-injecting TCP relay in front of an S3 server, for the tests of S3 faults.

``faulty_relay(port)`` relays each connection to ``127.0.0.1:port`` one HTTP/1.1 exchange at a
time, reading the framing (Content-Length or chunked), so that it knows where each reply's body
starts. It records every request (method, target, Range, If-Match) and applies the faults armed
with ``FaultyRelay.arm`` to the requests they match, on cue: a stall before the reply's head, a
stall after N body bytes, a reset (SO_LINGER 0) or a FIN after N body bytes. ``down()`` makes the
endpoint gone (every connection reset, existing ones at their next exchange) until ``up()``.

Threads per connection come from ``tests.loopback.threaded_server``; every wait is bounded (the
relay's stop, a stall's ``HOLD_S``, the sockets' timeouts).
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from tests.loopback import threaded_server

POLL_S = 0.05  # how often a waiting relay thread looks at its stop flag
HOLD_S = 60.0  # the longest a stall holds its connection
IO_TIMEOUT_S = 30.0  # one socket operation of the relay's (a relay never waits longer)
MAX_HEAD = 64 * 1024
MAX_EXCHANGES = 10_000  # per connection

Kind = Literal["stall_head", "stall_body", "reset", "fin"]


@dataclass(frozen=True)
class S3Request:
    """One request that went up through the relay (header names in lower case)."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def if_match(self) -> str | None:
        return self.headers.get("if-match")

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def gets_of(key: str) -> Callable[[S3Request], bool]:
    """A fault's ``match``: GETs of ``key`` (the path ends with it)."""
    return lambda request: request.method == "GET" and request.path.endswith(f"/{key}")


@dataclass
class Fault:
    """What to do to the next ``times`` requests that ``match``: ``stall_head`` (the request goes
    up, its reply never comes down), or after ``after`` bytes of the reply's body ``stall_body``
    (nothing more comes down), ``reset`` (an RST) or ``fin`` (a close). ``then`` runs once those
    bytes are sent, before the fault (an overwrite of the object between a cut and its resume).
    ``lasting``: a ``stall_body`` that ends after so many seconds (the body then goes on)."""

    kind: Kind
    match: Callable[[S3Request], bool]
    after: int = 0
    times: int = 1
    then: Callable[[], object] | None = None
    lasting: float | None = None


@dataclass
class FaultyRelay:
    port_up: int  # the S3 server's
    port: int = 0  # the relay's
    requests: list[S3Request] = field(default_factory=list)
    applied: list[Kind] = field(default_factory=list)  # faults applied so far, in order
    # One line per exchange (its connection's number, request, reply and fault), for the
    # messages of failed assertions.
    trace: list[str] = field(default_factory=list)
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _down: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)
    _connections: Iterator[int] = field(default_factory=itertools.count)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def disarm(self) -> None:
        """Forget the faults not applied yet and end the stalls in progress."""
        with self._lock:
            self._faults.clear()
        self._release.set()

    def down(self) -> None:
        """The endpoint is gone: every connection is reset (open ones at their next exchange)."""
        self._down = True

    def up(self) -> None:
        self._down = False

    @property
    def is_down(self) -> bool:
        return self._down

    def gets(self, key: str | None = None) -> list[S3Request]:
        with self._lock:
            found = [r for r in self.requests if r.method == "GET"]
        return found if key is None else [r for r in found if r.path.endswith(f"/{key}")]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.applied.clear()
            self.trace.clear()

    def _note(self, connection: int, request: S3Request, reply: str) -> None:
        line = f"#{connection} {request.method} {request.target} range={request.range}: {reply}"
        with self._lock:
            self.trace.append(line)

    def _record(self, request: S3Request) -> Fault | None:
        """Record ``request``; the first armed fault it matches, not taken yet."""
        with self._lock:
            self.requests.append(request)
            return next((fault for fault in self._faults if fault.match(request)), None)

    def _armed(self, fault: Fault) -> bool:
        with self._lock:
            return any(armed is fault for armed in self._faults)

    def _take(self, fault: Fault) -> bool:
        """Apply ``fault`` once (counted in ``applied``); False when it is no longer armed."""
        with self._lock:
            if not any(armed is fault for armed in self._faults):
                return False
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            self.applied.append(fault.kind)
            self._release.clear()
            return True

    # -- one connection ---------------------------------------------------------------------

    def serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError), client:
            client.settimeout(IO_TIMEOUT_S)
            if self._down:
                _reset(client)
                return
            with socket.create_connection(("127.0.0.1", self.port_up), timeout=5) as upstream:
                upstream.settimeout(IO_TIMEOUT_S)
                down, up = _Reader(client, self._stop), _Reader(upstream, self._stop)
                connection = next(self._connections)
                try:
                    for _ in range(MAX_EXCHANGES):
                        if not self._exchange(client, upstream, down, up, connection):
                            return
                except BaseException as exc:  # traced (an OSError is then dropped, as before)
                    with self._lock:
                        self.trace.append(f"#{connection} ended by {type(exc).__name__}: {exc}")
                    raise

    def _exchange(
        self,
        client: socket.socket,
        upstream: socket.socket,
        down: _Reader,
        up: _Reader,
        connection: int,
    ) -> bool:
        """Relay one request and its reply; False: the connection is done."""
        head = down.until(b"\r\n\r\n")
        if head is None:
            return False
        if self._down:
            _reset(client)
            return False
        request = _request(head)
        body = down.exact(int(request.headers.get("content-length", "0") or 0))
        fault = self._record(request)
        upstream.sendall(head + (body or b""))
        if fault is not None and fault.kind == "stall_head" and self._take(fault):
            self._hold(client)
            return False
        reply_head = up.until(b"\r\n\r\n")
        if reply_head is None:
            self._note(connection, request, "no reply")
            return False
        client.sendall(reply_head)
        status, fields = _reply(reply_head)
        bodyless = request.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        # A body fault applies to a 200 or 206 only: an error's short body, which the client
        # retries, leaves it armed for the retry. It is taken once its bytes went down
        # (``_apply``): a client that leaves before (a kept connection it dropped, then retried
        # on a new one) leaves it armed for its retry.
        if bodyless or fault is None or status not in (200, 206) or not self._armed(fault):
            fault = None
        framing = fields.get("transfer-encoding") or f"length {fields.get('content-length')}"
        self._note(connection, request, f"{status} {framing}, fault {fault and fault.kind}")
        if bodyless:
            return True
        keep = "close" not in fields.get("connection", "").lower()
        if fields.get("transfer-encoding", "").lower() == "chunked":
            return self._chunked(client, up, fault) and keep
        length = int(fields.get("content-length", "0") or 0)
        limit = length if fault is None else min(fault.after, length)
        if not _forward(client, up, limit):
            return False
        if fault is None:
            return keep
        return self._apply(fault, client, lambda: _forward(client, up, length - limit) and keep)

    def _apply(self, fault: Fault, client: socket.socket, rest: Callable[[], bool]) -> bool:
        """Apply a body ``fault`` once its ``after`` bytes went down; ``rest`` sends the rest of
        the reply (after a lasting stall, or when another exchange took the fault meanwhile)
        and says whether the connection goes on."""
        if not self._take(fault):
            return rest()
        if fault.then is not None:
            fault.then()
        if fault.kind == "reset":
            _reset(client)
        elif fault.kind == "fin":
            client.shutdown(socket.SHUT_WR)
            _drain(client, self._stop)
        elif fault.lasting is not None:  # a pause: then the rest of the body
            self._hold(client, fault.lasting)
            return rest()
        else:  # stall_body
            self._hold(client)
        return False

    def _chunked(self, client: socket.socket, up: _Reader, fault: Fault | None) -> bool:
        """Relay a chunked body; ``fault`` applies after its ``after`` bytes of chunk data (S3
        servers may send a GET's body chunked: SeaweedFS did once in a CI run)."""
        budget = None if fault is None else fault.after
        for _ in range(1_000_000):
            line = up.until(b"\r\n")
            if line is None:
                return False
            client.sendall(line)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                trailer = up.until(b"\r\n")  # no trailers from S3: the last CRLF
                if trailer is None:
                    return False
                client.sendall(trailer)
                return True
            if fault is not None and budget is not None and budget <= size:
                if not _forward(client, up, budget):
                    return False
                rest = partial(self._chunk_rest, client, up, size - budget)
                return self._apply(fault, client, rest)
            if budget is not None:
                budget -= size
            if not _forward(client, up, size + 2):
                return False
        return False

    def _hold(self, client: socket.socket, seconds: float = HOLD_S) -> None:
        """Send nothing for ``seconds``, or until the client goes, the fault is released or the
        relay stops."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._release.is_set():
                return
            if select.select([client], [], [], POLL_S)[0]:
                try:
                    if not client.recv(65536):
                        return  # the client closed its side
                except OSError:
                    return

    def _chunk_rest(self, client: socket.socket, up: _Reader, left: int) -> bool:
        """The rest of a chunked body from ``left`` bytes before the end of a chunk's data."""
        return _forward(client, up, left + 2) and self._chunked(client, up, None)


class _Reader:
    """Buffered reads from a socket that give up when the relay stops."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        self.sock = sock
        self.stop = stop
        self.buffer = b""

    def _more(self) -> bool:
        deadline = time.monotonic() + IO_TIMEOUT_S
        while not self.stop.is_set() and time.monotonic() < deadline:
            if select.select([self.sock], [], [], POLL_S)[0]:
                data = self.sock.recv(262144)
                self.buffer += data
                return bool(data)
        return False

    def until(self, end: bytes) -> bytes | None:
        """Everything up to and including ``end``; None when the peer closed first."""
        while (found := self.buffer.find(end)) < 0:
            if len(self.buffer) > MAX_HEAD or not self._more():
                return None
        cut = found + len(end)
        data, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return data

    def exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._more():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes (b"" when the peer closed)."""
        if not self.buffer and not self._more():
            return b""
        data, self.buffer = self.buffer[:limit], self.buffer[limit:]
        return data


def _forward(client: socket.socket, up: _Reader, size: int) -> bool:
    """``size`` bytes from upstream to the client; False when upstream ended first."""
    while size > 0:
        data = up.some(min(size, 262144))
        if not data:
            return False
        client.sendall(data)
        size -= len(data)
    return True


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _drain(sock: socket.socket, stop: threading.Event) -> None:
    """After a FIN: read what the client still sends until it closes too (bounded)."""
    deadline = time.monotonic() + HOLD_S
    while time.monotonic() < deadline and not stop.is_set():
        if select.select([sock], [], [], POLL_S)[0]:
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return


def _fields(lines: list[str]) -> dict[str, str]:
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


def _request(head: bytes) -> S3Request:
    line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, target, _ = line.split(" ", 2)
    return S3Request(method, target, _fields(lines))


def _reply(head: bytes) -> tuple[int, dict[str, str]]:
    line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    return int(line.split(" ", 2)[1]), _fields(lines)


@contextlib.contextmanager
def faulty_relay(port: int) -> Iterator[FaultyRelay]:
    """A ``FaultyRelay`` to ``127.0.0.1:port`` on a port of its own; stopped on exit."""
    relay = FaultyRelay(port_up=port)
    with threaded_server(relay.serve) as listener:
        relay.port = listener.port
        try:
            yield relay
        finally:
            relay._stop.set()
