"""Raw HTTP/1.1 on a socket, with a hard deadline, and strict parsers for what comes back.

Nothing here normalises a request: the request line and fields go out byte for byte, and the
response is parsed without the leniency of an HTTP client library.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

TIMEOUT = 5.0  # seconds for one whole exchange: connect, send, and read to the end
# The connection layer's refusal of a request it cannot parse (proxy/connection.py): the
# proxy's JSON error, then the connection closes; to a HEAD request, the same without a body.
PARSER_REFUSAL = b'{"error":"bad_request"'
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9]{2})(?: [\t \x21-\x7e\x80-\xff]*)?")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t \x21-\x7e\x80-\xff]*?)[ \t]*")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)")
_BOUNDARY = re.compile(r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,\-./:=?]{1,70})")


@dataclass(frozen=True)
class Response:
    status: int
    fields: tuple[tuple[str, str], ...]  # names lowercased, values as latin-1 text
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        """The one value of field ``name`` (lowercase), None if absent; repeated is a failure."""
        values = [value for key, value in self.fields if key == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {self.raw[:500]!r}"
        return values[0] if values else None


def build_request(
    target: bytes, method: bytes = b"GET", fields: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in fields or []]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def exchange(port: int, request: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``request`` and read until the server closes; fail if that takes over ``timeout``."""
    deadline = time.monotonic() + timeout
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer early (e.g. 400) and close: read what it sent
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no complete response within {timeout} s: {request[:300]!r}")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                raise AssertionError(
                    f"no complete response within {timeout} s: {request[:300]!r}, "
                    f"got {bytes(received[:300])!r}"
                ) from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return bytes(received)


def _dechunk(data: bytes) -> bytes:
    body = bytearray()
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size_text = data[pos:eol].split(b";", 1)[0]
        assert re.fullmatch(rb"[0-9A-Fa-f]+", size_text), data[pos : pos + 50]
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            assert data[pos:] == b"\r\n", f"trailers or junk after the last chunk: {data[pos:]!r}"
            return bytes(body)
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2


def parse_response(raw: bytes, method: str = "GET") -> Response:
    """Parse exactly one complete HTTP/1.1 response; anything malformed or extra fails."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"incomplete response head: {raw[:500]!r}"
    status_line, *lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(status_line)
    assert match is not None, f"malformed status line: {status_line!r}"
    status = int(match[1])
    fields: list[tuple[str, str]] = []
    for line in lines:
        field = _FIELD.fullmatch(line)
        assert field is not None, f"malformed field line: {line!r}"
        fields.append((field[1].decode("ascii").lower(), field[2].decode("latin-1")))
    response = Response(status, tuple(fields), b"", raw)
    length = response.header("content-length")
    chunked = response.header("transfer-encoding")
    if length is not None:
        assert chunked is None, "both Content-Length and Transfer-Encoding"
        assert re.fullmatch(r"[0-9]+", length), f"Content-Length {length!r}"
    if method == "HEAD" or status in (204, 304):
        assert rest == b"", f"a {status} to {method} has content: {rest[:200]!r}"
        body = b""
    elif chunked is not None:
        assert chunked.lower() == "chunked", f"Transfer-Encoding {chunked!r}"
        body = _dechunk(rest)
    elif length is not None:
        assert len(rest) == int(length), f"Content-Length {length}, got {len(rest)} bytes"
        body = rest
    else:
        body = rest  # delimited by the close (RFC 9112 §6.3 rule 8); we asked for close
    return Response(status, tuple(fields), body, raw)


def content_range(value: str | None, size: int) -> tuple[int, int]:
    """``(first, last)`` of a ``bytes first-last/size`` value; anything else fails."""
    assert value is not None, "a 206 without Content-Range"
    match = _CONTENT_RANGE.fullmatch(value)
    assert match is not None, f"malformed Content-Range {value!r}"
    first, last, total = (int(group) for group in match.groups())
    assert total == size and first <= last < size, f"Content-Range {value!r} for size {size}"
    return first, last


def multipart_boundary(content_type: str | None) -> str | None:
    """The boundary when ``content_type`` is multipart/byteranges, else None."""
    if content_type is None or not content_type.startswith("multipart/"):
        return None
    match = _BOUNDARY.fullmatch(content_type)
    assert match is not None, f"malformed multipart Content-Type {content_type!r}"
    return match[1]


def parse_multipart(
    body: bytes, boundary: str, size: int, media_type: str
) -> list[tuple[int, int, bytes]]:
    """A strict multipart/byteranges parser (RFC 9110 §14.6, RFC 2046), CRLF only.

    Returns ``(first, last, data)`` per part; each part must carry exactly a Content-Type equal
    to ``media_type`` and a Content-Range for ``size``.
    """
    delimiter = b"--" + boundary.encode("ascii")
    assert body.startswith(delimiter + b"\r\n"), f"multipart body starts {body[:100]!r}"
    parts: list[tuple[int, int, bytes]] = []
    pos = len(delimiter) + 2
    while True:
        end = body.index(b"\r\n\r\n", pos)
        part_fields: dict[str, str] = {}
        for line in body[pos:end].split(b"\r\n"):
            field = _FIELD.fullmatch(line)
            assert field is not None, f"malformed part field {line!r}"
            name = field[1].decode("ascii").lower()
            assert name not in part_fields, f"part field {name} repeated"
            part_fields[name] = field[2].decode("latin-1")
        assert set(part_fields) == {"content-type", "content-range"}, part_fields
        assert part_fields["content-type"] == media_type, part_fields
        first, last = content_range(part_fields["content-range"], size)
        start = end + 4
        stop = start + last - first + 1
        parts.append((first, last, body[start:stop]))
        assert body.startswith(b"\r\n" + delimiter, stop), "part data not followed by a delimiter"
        pos = stop + 2 + len(delimiter)
        if body[pos:] == b"--\r\n":
            return parts
        assert body.startswith(b"\r\n", pos), f"junk after a delimiter: {body[pos : pos + 50]!r}"
        pos += 2


def refused_by_parser(response: Response, method: str = "GET") -> bool:
    """Whether ``response`` is the connection layer's refusal of an unparsable request."""
    if response.status != 400 or response.header("connection") != "close":
        return False
    return response.body == b"" if method == "HEAD" else response.body.startswith(PARSER_REFUSAL)
