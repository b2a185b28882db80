"""Strict HTTP/1.1 parsing (RFC 9112) at the socket, under both uvicorn parsers (issue 29, item 4).

Requests that HTTP/1.1 forbids (an HTTP/0.9 line, another version, no Host or several, both
framings, conflicting lengths, folded lines, whitespace before a colon) get the proxy's JSON
error with ``Connection: close``, then the connection closes, so that nothing smuggled behind
them is read as a request. A raw UTF-8 request target (curl sends one as typed) names the same
object as its percent-encoded form.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MediaTree, RunningServer, StartServer, settings_for
from tests.rawhttp import exchange, parse

PARSERS = ["h11", "httptools"]
VIDEO = "vid\u00e9o.mp4"  # é: two bytes in UTF-8
NESTED = "\u00e9t\u00e9/\u65e5\u672c.bin"  # été/日本.bin


@pytest.fixture(scope="module")
def utf8_media(tmp_path_factory: pytest.TempPathFactory) -> MediaTree:
    base = tmp_path_factory.mktemp("utf8")
    root = base / "root"
    (root / NESTED).parent.mkdir(parents=True)
    (root / VIDEO).write_bytes(os.urandom(200_000))
    (root / NESTED).write_bytes(os.urandom(5000))
    (root / "hello.txt").write_bytes(b"hello world\n")
    return MediaTree(root=root, outside=base)


@pytest.fixture(scope="module", params=PARSERS)
def strict(
    request: pytest.FixtureRequest, utf8_media: MediaTree, serve: StartServer
) -> RunningServer:
    return serve(settings_for(utf8_media, "async", http=request.param))


REFUSED = {
    # HTTP/0.9 (no version) and versions other than 1.0 and 1.1
    "http/0.9 line": (b"GET /healthz\r\n\r\n", 400),
    "http/0.9 line, nothing after": (b"GET /healthz\r\n", 400),
    "HTTP/0.9": (b"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    "HTTP/1.2": (b"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", 505),
    "HTTP/2.0": (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "HTTP/3.0": (b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    "lower-case http": (b"GET /healthz http/1.1\r\nHost: x\r\n\r\n", 400),
    "bare LF after the request line": (b"GET /healthz HTTP/1.1\nHost: x\r\n\r\n", 400),
    # Host: required in 1.1, one at most, a valid host
    "no Host": (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
    "two Hosts": (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "two Hosts, HTTP/1.0": (b"GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "Host with a space": (b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    # the body's framing: what a front proxy and this one could read differently
    "Content-Length then Transfer-Encoding": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "Transfer-Encoding then Content-Length": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    "conflicting Content-Lengths": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"abcdef",
        400,
    ),
    "a Content-Length list": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nabcdef",
        400,
    ),
    "Transfer-Encoding in HTTP/1.0": (
        b"POST /healthz HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "obsolete line folding": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", 400),
    "folding with a tab": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\tc\r\n\r\n", 400),
    "whitespace before the colon": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400),
    "whitespace before Host's colon": (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
}


@pytest.mark.parametrize(("raw", "status"), REFUSED.values(), ids=REFUSED.keys())
def test_a_malformed_request_gets_a_json_error_and_the_connection_closes(
    strict: RunningServer, raw: bytes, status: int
) -> None:
    answer = exchange(strict.port, raw)  # returns once the server closed the connection
    code, headers, body = parse(answer)
    assert code == status, answer
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)
    assert set(error) == {"error", "detail"}
    assert error["error"] in {"bad_request", "http_version_not_supported"}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"HEAD /objects/hello.txt HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"HEAD /objects/hello.txt HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ],
    ids=["no Host", "too long"],
)
def test_a_refused_head_request_gets_the_header_fields_and_no_body(
    strict: RunningServer, raw: bytes, status: int
) -> None:
    """RFC 9110 §9.3.2: the answer to HEAD has no content, a refusal's included."""
    code, headers, body = parse(exchange(strict.port, raw))
    assert (code, body) == (status, b"")
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) > 0  # what the GET's refusal would carry
    assert headers["connection"] == "close"


SMUGGLED = b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
SMUGGLING = {
    "CL.TE": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 49\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "TE.CL": b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n2c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n",
    "folded Transfer-Encoding": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"X-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "Transfer-Encoding: x chunked": b"POST /healthz HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: gzip, chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_nothing_behind_a_refused_request_is_served(strict: RunningServer, raw: bytes) -> None:
    answer = exchange(strict.port, raw)
    assert len(re.findall(rb"HTTP/1\.1 [0-9]{3} ", answer)) == 1, answer  # the refusal alone
    assert parse(answer)[0] == 400
    assert b"hello world" not in answer


def test_sound_requests_are_still_served(strict: RunningServer) -> None:
    # HTTP/1.0 needs no Host; an empty Host is valid (a target with no authority); the empty
    # lines a client may send before a request line are ignored (RFC 9112 §2.2).
    for raw in [
        b"GET /objects/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /objects/hello.txt HTTP/1.0\r\n\r\n",
        b"GET /objects/hello.txt HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
        b"GET /objects/hello.txt HTTP/1.1\r\nHost: [::1]:8000\r\nConnection: close\r\n\r\n",
        b"\r\nGET /objects/hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]:
        code, _, body = parse(exchange(strict.port, raw))
        assert (code, body) == (200, b"hello world\n"), raw


def get_raw(port: int, target: bytes) -> tuple[int, bytes]:
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    code, _, body = parse(exchange(port, raw))
    return code, body


@pytest.mark.parametrize("key", [VIDEO, NESTED])
def test_a_raw_utf8_target_names_the_same_object_as_its_encoded_form(
    strict: RunningServer, utf8_media: MediaTree, key: str
) -> None:
    data = utf8_media.data(key)
    raw_code, raw_body = get_raw(strict.port, f"/objects/{key}".encode())
    encoded = "/objects/" + "".join(
        c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in key
    )
    encoded_code, encoded_body = get_raw(strict.port, encoded.encode("ascii"))
    assert raw_code == encoded_code == 200
    assert hashlib.sha256(raw_body).digest() == hashlib.sha256(data).digest()
    assert hashlib.sha256(encoded_body).digest() == hashlib.sha256(data).digest()


def test_a_raw_utf8_query_reads_as_its_encoded_form(strict: RunningServer) -> None:
    raw = b"GET /objects/hello.txt?download=" + "r\u00e9sum\u00e9.txt".encode()
    raw += b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    encoded = b"GET /objects/hello.txt?download=r%C3%A9sum%C3%A9.txt"
    encoded += b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw_code, raw_headers, raw_body = parse(exchange(strict.port, raw))
    encoded_code, encoded_headers, encoded_body = parse(exchange(strict.port, encoded))
    assert raw_code == encoded_code == 200
    assert raw_body == encoded_body == b"hello world\n"
    assert raw_headers["content-disposition"] == encoded_headers["content-disposition"]
    assert "sum" in raw_headers["content-disposition"]


def test_a_raw_utf8_target_split_across_reads(strict: RunningServer, utf8_media: MediaTree) -> None:
    """The request line arrives in pieces, one of them in the middle of the é's two bytes."""
    head = f"GET /objects/{VIDEO} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    cut = head.index(b"\xc3") + 1
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in [head[:5], head[5:cut], head[cut : cut + 3], head[cut + 3 :]]:
            sock.sendall(piece)
            time.sleep(0.05)  # separate reads on the server
        received = bytearray()
        for _ in range(10_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    code, _, body = parse(bytes(received))
    assert code == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(utf8_media.data(VIDEO)).digest()


def require_curl() -> str:
    path = shutil.which("curl")
    if path is None:
        message = "curl is not installed (tests/run.sh installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_curl_fetches_a_key_typed_in_utf8(
    strict: RunningServer, utf8_media: MediaTree, tmp_path: Path
) -> None:
    curl = require_curl()
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{strict.port}/objects/{VIDEO}"  # curl sends the é as two bytes
    result = subprocess.run(
        [curl, "-sS", "-o", str(out), "-w", "%{http_code}", url],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == b"200", result.stderr
    assert hashlib.sha256(out.read_bytes()).digest() == (
        hashlib.sha256(utf8_media.data(VIDEO)).digest()
    )


def test_curl_without_a_host_gets_the_json_400(strict: RunningServer) -> None:
    curl = require_curl()
    url = f"http://127.0.0.1:{strict.port}/objects/hello.txt"
    result = subprocess.run(
        [curl, "-sS", "-i", "-H", "Host:", url], capture_output=True, timeout=30, check=False
    )
    code, headers, body = parse(result.stdout)
    assert code == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "bad_request"


@pytest.mark.parametrize(
    "pieces",
    [
        [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n", b" c\r\n\r\n"],
        [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r", b"\n\tc\r\n\r\n"],
        [b"GET /healthz HT", b"TP/2.0\r\nHost: x\r\n\r\n"],
        [b"GET /healthz\r", b"\n\r\n"],
    ],
    ids=["fold after a read", "fold in the line feed's read", "version split", "0.9 split"],
)
def test_a_malformed_head_split_across_reads_is_refused(
    strict: RunningServer, pieces: list[bytes]
) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.05)  # separate reads on the server
        received = bytearray()
        for _ in range(10_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    code, headers, _ = parse(bytes(received))
    assert code in (400, 505)
    assert headers["connection"] == "close"
