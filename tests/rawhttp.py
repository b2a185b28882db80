"""Raw HTTP/1.1 over a socket, for tests that send what no HTTP client library would."""

from __future__ import annotations

import socket


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    received = bytearray()
    for _ in range(10_000):  # bounded: the answers here are small
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` as is; everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        return read_until_closed(sock)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """A response's status, header fields (lowercased names; the last of a repeated one) and
    the bytes after its head."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body
