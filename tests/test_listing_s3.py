"""Listings on real S3 servers (moto and SeaweedFS), both clients: 2,500 keys listed completely
and in S3's order across ListObjectsV2 pages, awkward keys, the bucket prefix, streaming (the
first line leaves while the second page is held at the S3 side), and failures before and after
the first line, made by a relay in front of the server."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import httpx
import pytest

from proxy.auth import hash_token
from proxy.testing.s3servers import BUCKET, S3Server, s3_client
from tests.conftest import (
    S3_CLIENTS,
    S3_SERVERS,
    RunningServer,
    StartServer,
    running,
    s3_server,
    s3_settings,
)
from tests.loopback import threaded_server

COUNT = 2500  # two and a half ListObjectsV2 pages
SUFFIXES = ["", "+plus", " space", "%25", "'apos", '"dq', "é", "日本", "😀", "<script>"]
NESTED = ["many/nested/a/b.txt", "many/nested/c.txt", "many/zz/deep/er.bin"]
KEYS = [f"many/{i:04d}{SUFFIXES[i % len(SUFFIXES)]}.bin" for i in range(COUNT)] + NESTED
TOKEN = "s3-listing-token-0123456789"
HOLD_S = 10.0  # the longest the relay holds a request
# What the relay answers a request it fails: S3 throttling, and the connection closed. (Closing
# alone is not a failure: aiohttp sends a request again when a kept-alive connection closes.)
_ERROR = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_ERROR), _ERROR)
)


def utf8_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode("utf-8"))


def upload_many(s3: S3Server) -> None:
    with contextlib.closing(s3_client(s3)) as client:
        if client.list_objects_v2(Bucket=BUCKET, Prefix="many/", MaxKeys=1).get("KeyCount"):
            return  # another module of this process uploaded them already

        def put(key: str) -> None:
            client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, KEYS))


@pytest.fixture(scope="module", params=S3_SERVERS)
def many(request: pytest.FixtureRequest) -> S3Server:
    s3 = s3_server(request, request.param)
    upload_many(s3)
    return s3


@pytest.fixture(scope="module", params=S3_CLIENTS)
def s3_lister(request: pytest.FixtureRequest, many: S3Server, serve: StartServer) -> RunningServer:
    return serve(s3_settings(many, request.param, listing=True, access_log=False))


def lines(response: httpx.Response) -> list[dict[str, object]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def names(entries: list[dict[str, object]]) -> list[object]:
    return [entry.get("key", entry.get("prefix")) for entry in entries[:-1]]


def test_every_key_is_listed_in_utf8_order(s3_lister: RunningServer) -> None:
    response = httpx.get(f"{s3_lister.url}/objects/many/?recursive", timeout=60)
    entries = lines(response)
    assert names(entries) == utf8_order(KEYS)
    assert entries[-1] == {"complete": True, "count": COUNT + len(NESTED)}
    sizes = {entry["key"]: entry["size"] for entry in entries[:-1]}
    assert sizes["many/0001+plus.bin"] == len("many/0001+plus.bin")
    assert all(str(entry["etag"]).startswith('"') for entry in entries[:-1])


def test_folders_and_nested_prefixes(s3_lister: RunningServer) -> None:
    url = f"{s3_lister.url}/objects/many/"
    top = names(lines(httpx.get(url, timeout=60)))
    assert top == utf8_order([*KEYS[:COUNT], "many/nested/", "many/zz/"])
    assert names(lines(httpx.get(url + "nested/"))) == ["many/nested/a/", "many/nested/c.txt"]
    assert names(lines(httpx.get(url + "zz/deep/"))) == ["many/zz/deep/er.bin"]
    assert lines(httpx.get(url + "none/")) == [{"complete": True, "count": 0}]
    assert lines(httpx.get(url + "0001+plus.bin/")) == [{"complete": True, "count": 0}]


def test_an_awkward_key_round_trips_from_the_listing(s3_lister: RunningServer) -> None:
    ordered = utf8_order(KEYS)
    params = {"limit": "10", "after": ordered[99]}
    entries = lines(httpx.get(f"{s3_lister.url}/objects/many/", params=params))
    keys = [str(key) for key in names(entries)]
    assert keys == ordered[100:110]
    assert {key[9:] for key in keys} == {f"{suffix}.bin" for suffix in SUFFIXES}
    assert entries[-1] == {"complete": True, "count": 10, "next_after": keys[-1]}
    with httpx.Client(base_url=s3_lister.url, timeout=10) as client:
        for key in keys:
            response = client.get("/objects/" + quote(key))
            assert (response.status_code, response.text) == (200, key)


def test_paging_with_limit_and_after_covers_every_key(s3_lister: RunningServer) -> None:
    collected: list[object] = []
    after = ""
    with httpx.Client(base_url=s3_lister.url, timeout=60) as client:
        for _ in range(10):  # bounded: 2,503 keys in pages of 700
            params = {"recursive": "", "limit": "700", "after": after}
            page = lines(client.get("/objects/many/", params=params))
            collected += names(page)
            if "next_after" not in page[-1]:
                break
            after = str(page[-1]["next_after"])
    assert collected == utf8_order(KEYS)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_the_bucket_prefix_is_the_root(many: S3Server, client: str) -> None:
    settings = s3_settings(many, client, listing=True, s3_prefix="many/nested")
    with running(settings) as proxy:
        assert names(lines(httpx.get(f"{proxy.url}/objects/"))) == ["a/", "c.txt"]
        assert names(lines(httpx.get(f"{proxy.url}/objects/?recursive"))) == ["a/b.txt", "c.txt"]


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_bearer_key_lists_within_its_prefix(many: S3Server, client: str) -> None:
    api_keys = [{"name": "nested", "sha256": hash_token(TOKEN), "prefix": "many/nested/a"}]
    headers = {"authorization": f"Bearer {TOKEN}"}
    settings = s3_settings(many, client, listing=True, api_keys=api_keys)
    with (
        running(settings) as proxy,
        httpx.Client(base_url=proxy.url, headers=headers, timeout=30) as http,
    ):
        assert names(lines(http.get("/objects/"))) == ["many/"]
        assert names(lines(http.get("/objects/many/"))) == ["many/nested/"]
        assert names(lines(http.get("/objects/many/nested/"))) == ["many/nested/a/"]
        assert names(lines(http.get("/objects/?recursive"))) == ["many/nested/a/b.txt"]
        assert http.get("/objects/many/zz/").status_code == 403


# -- streaming and failures, seen at the S3 side ---------------------------------------------------


@dataclass
class Gate:
    """What a ``list_gate`` relay does with the ListObjectsV2 requests it sees (counted from 1):
    ``hold`` (until ``released``), ``drop`` (answer 503 SlowDown, close both connections) or
    pass them on."""

    hold: int = 0
    drop: int = 0
    lists: int = 0  # ListObjectsV2 requests seen
    answered: int = 0  # ListObjectsV2 requests passed on to the server
    released: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextlib.contextmanager
def list_gate(port: int, gate: Gate) -> Iterator[str]:
    """A TCP relay to ``127.0.0.1:port`` that applies ``gate`` to ListObjectsV2 requests
    (request heads without bodies: botocore's GETs); its endpoint URL."""

    def relay(sock: socket.socket) -> None:
        pending = b""
        with (
            contextlib.suppress(OSError),
            sock,
            socket.create_connection(("127.0.0.1", port)) as up,
        ):
            while not gate.closed.is_set():
                ready = select.select([sock, up], [], [], 0.1)[0]
                for source in ready:
                    data = source.recv(262144)
                    if not data:
                        return
                    if source is up:
                        sock.sendall(data)
                        continue
                    pending += data
                    while b"\r\n\r\n" in pending:
                        head, pending = pending.split(b"\r\n\r\n", 1)
                        if b"list-type=2" in head.split(b"\r\n", 1)[0]:
                            with gate.lock:
                                gate.lists += 1
                                number = gate.lists
                            if number == gate.drop:
                                sock.sendall(SLOW_DOWN)
                                return
                            if number == gate.hold:
                                gate.released.wait(HOLD_S)
                            with gate.lock:
                                gate.answered += 1
                        up.sendall(head + b"\r\n\r\n")

    with threaded_server(relay) as listener:
        try:
            yield f"http://127.0.0.1:{listener.port}"
        finally:
            gate.released.set()
            gate.closed.set()


def relayed(many: S3Server, gate: Gate) -> contextlib.AbstractContextManager[str]:
    port = urlsplit(many.endpoint_url).port
    assert port is not None
    return list_gate(port, gate)


def proxy_behind(
    many: S3Server, endpoint: str, client: str
) -> contextlib.AbstractContextManager[RunningServer]:
    relay = S3Server(many.name, endpoint, many.supports_auth)
    return running(s3_settings(relay, client, listing=True, s3_max_attempts=1))


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_the_first_line_leaves_before_the_second_page_is_answered(
    many: S3Server, client: str
) -> None:
    gate = Gate(hold=2)
    with relayed(many, gate) as endpoint, proxy_behind(many, endpoint, client) as proxy:
        url = f"{proxy.url}/objects/many/?recursive"
        with httpx.stream("GET", url, timeout=HOLD_S * 2) as response:
            assert response.status_code == 200
            received = response.iter_lines()
            first = json.loads(next(received))
            # The second page is held at the S3 side: it has not been answered yet.
            with gate.lock:
                assert (gate.answered, gate.released.is_set()) == (1, False)
            assert first["key"] == utf8_order(KEYS)[0]
            gate.released.set()
            rest = [json.loads(line) for line in received]
    assert rest[-1] == {"complete": True, "count": len(KEYS)}
    assert len(rest) == len(KEYS)
    # The first page holds 100 keys; the others 1,000 (boto3) or 250 (aiobotocore).
    assert gate.lists == {"boto3": 4, "aiobotocore": 11}[client]


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_failure_after_the_first_line_cuts_the_stream(many: S3Server, client: str) -> None:
    with relayed(many, Gate(drop=2)) as endpoint, proxy_behind(many, endpoint, client) as proxy:
        received: list[str] = []
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):  # an incomplete chunked body
            with httpx.stream("GET", f"{proxy.url}/objects/many/?recursive", timeout=30) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    received.append(line)
        assert time.monotonic() - started < 30
    assert len(received) >= 1
    assert all("complete" not in json.loads(line) for line in received if line)
    assert len(received) < len(KEYS)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_failure_before_the_first_line_is_a_json_error(many: S3Server, client: str) -> None:
    with relayed(many, Gate(drop=1)) as endpoint, proxy_behind(many, endpoint, client) as proxy:
        response = httpx.get(f"{proxy.url}/objects/many/", timeout=30)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "backend_unavailable"
