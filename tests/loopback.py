"""Loopback servers for tests: a threaded TCP server, a self-signed certificate for 127.0.0.1,
and a TLS relay in front of a plain server (moto's S3 speaks plain HTTP only)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


def self_signed(directory: Path) -> Path:
    """A certificate for 127.0.0.1 and its key, in one PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "localhost.pem"
    path.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@dataclass
class Listener:
    port: int
    connections: int = 0  # accepted so far


@contextlib.contextmanager
def threaded_server(serve: Callable[[socket.socket], None]) -> Iterator[Listener]:
    """A TCP server on 127.0.0.1: each connection it accepts runs ``serve`` in a thread of its
    own (with a 10 s socket timeout); on exit it stops accepting and joins the threads."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.1)
    listener = Listener(sock.getsockname()[1])
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted, _ = sock.accept()
            except TimeoutError:
                continue
            accepted.settimeout(10)
            listener.connections += 1
            thread = threading.Thread(target=serve, args=(accepted,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener
    finally:
        stop.set()
        acceptor.join(timeout=5)
        sock.close()
        for thread in threads:
            thread.join(timeout=5)


def _pump(secure: ssl.SSLSocket, upstream: socket.socket, stop: threading.Event) -> None:
    """Bytes both ways, in one thread (an SSLSocket must not be read and written at once)."""
    with secure, upstream:
        while not stop.is_set():
            both = [secure, upstream]
            ready = [secure] if secure.pending() else select.select(both, [], [], 0.1)[0]
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is secure else secure).sendall(data)


@contextlib.contextmanager
def tls_relay(port: int, pem: Path) -> Iterator[Listener]:
    """A TLS server on 127.0.0.1 (``pem``'s certificate) that relays each connection to
    ``127.0.0.1:port``; its URL is ``https://127.0.0.1:{listener.port}``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    stop = threading.Event()

    def relay(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # ssl.SSLError included
            secure = context.wrap_socket(sock, server_side=True)
            _pump(secure, socket.create_connection(("127.0.0.1", port)), stop)

    with threaded_server(relay) as listener:
        try:
            yield listener
        finally:
            stop.set()


@dataclass
class Traffic:
    """What passed through a ``counting_relay``: the request heads the client sent (in order,
    request line first) and the bytes the server sent back."""

    requests: list[str] = field(default_factory=list)
    received: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.received = 0

    def gets(self) -> list[str]:
        with self.lock:
            return [head for head in self.requests if head.startswith("GET ")]

    def heads(self) -> list[str]:
        with self.lock:
            return [head for head in self.requests if head.startswith("HEAD ")]

    def ranges(self) -> list[str | None]:
        """The Range header of each GET (None: the whole object)."""
        found = []
        for head in self.gets():
            fields = dict(line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)
            value = {k.strip().lower(): v.strip() for k, v in fields.items()}.get("range")
            found.append(value)
        return found


@contextlib.contextmanager
def counting_relay(port: int) -> Iterator[tuple[Listener, Traffic]]:
    """A plain TCP relay to ``127.0.0.1:port`` that records each request line going up and
    counts the bytes coming down: what a client really asked of a server (requests without
    bodies: GET and HEAD)."""
    traffic = Traffic()
    stop = threading.Event()

    def relay(sock: socket.socket) -> None:
        pending = b""
        with (
            contextlib.suppress(OSError),
            sock,
            socket.create_connection(("127.0.0.1", port)) as up,
        ):
            while not stop.is_set():
                for ready in select.select([sock, up], [], [], 0.1)[0]:
                    data = ready.recv(262144)
                    if not data:
                        return
                    if ready is sock:
                        pending += data
                        while b"\r\n\r\n" in pending:
                            head, pending = pending.split(b"\r\n\r\n", 1)
                            with traffic.lock:
                                traffic.requests.append(head.decode("latin-1"))
                        up.sendall(data)
                    else:
                        with traffic.lock:
                            traffic.received += len(data)
                        sock.sendall(data)

    with threaded_server(relay) as listener:
        try:
            yield listener, traffic
        finally:
            stop.set()
