"""``Connections``: keep-alive ``http.client`` connections to one origin, shared by threads, for
the blocking presigned GETs of ``proxy.storage.presigned``: the standard library's HTTP/1.1
client costs ~250 µs per 64 KiB ranged GET here, urllib3's pool on top of it ~420 µs.
"""

from __future__ import annotations

import fcntl
import http.client
import socket
import ssl
import struct
import termios
from collections import deque
from email.message import Message
from urllib.parse import urlsplit

from proxy.storage.errors import BodyTruncated

_INT = struct.Struct("i")  # FIONREAD's count: a C int
_ZERO = bytes(_INT.size)


class Connections:
    """Connections to ``origin`` (``scheme://host[:port]``); up to ``keep`` idle ones are kept.

    Thread-safe: a deque's append and pop are atomic. How many connections are busy at once is
    bounded by the threads calling ``get`` (the threadpool).
    """

    __slots__ = ("_connect_timeout", "_host", "_idle", "_keep", "_port", "_read_timeout", "_ssl")

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
        self._host = parts.hostname
        self._port = parts.port
        https = parts.scheme == "https"
        self._ssl = (ssl_context or ssl.create_default_context()) if https else None
        self._keep = keep
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: deque[http.client.HTTPConnection] = deque()

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self._ssl is None:
            connection = http.client.HTTPConnection(
                self._host, self._port, timeout=self._connect_timeout
            )
        else:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._connect_timeout, context=self._ssl
            )
        connection.connect()
        if connection.sock is not None:
            connection.sock.settimeout(self._read_timeout)  # each later send and receive
        return connection

    def get(self, target: str, headers: dict[str, str]) -> Reply:
        """Send ``GET target`` and read the reply's status line and headers; the caller must
        ``close()`` the reply. A kept-alive connection the server closed meanwhile is replaced
        once, transparently. Raises OSError or ``http.client.HTTPException``."""
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
            connection.request("GET", target, headers=headers)
            sock = connection.sock  # the connection lets go of it when the reply will close
            return Reply(self, connection, connection.getresponse(), sock)
        except BaseException:
            connection.close()
            raise

    def _done(self, connection: http.client.HTTPConnection, reusable: bool) -> None:
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
