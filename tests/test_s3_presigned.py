"""Presigned GETs through real proxies on real S3 servers: one URL per key, the same bytes as
botocore's, botocore answering what they cannot (a rejected signature), and turned off."""

from __future__ import annotations

import gzip
import os

import httpx
import pytest

from tests.conftest import (
    S3_CLIENTS,
    S3_SERVERS,
    RunningServer,
    StartServer,
    s3_server,
    s3_settings,
    sha256,
)
from tests.s3calls import Calls, watching
from tests.s3servers import put_object

MATRIX = [(server, client) for server in S3_SERVERS for client in S3_CLIENTS]
DATA = os.urandom(1024 * 1024 + 17)
SPECS = ["bytes=0-99", "bytes=1000-65535", "bytes=-17", "bytes=1048000-"]


def serving(
    request: pytest.FixtureRequest,
    serve: StartServer,
    server_name: str,
    client: str,
    key: str,
    **overrides: object,
) -> RunningServer:
    """A proxy on ``server_name`` in the ``client`` flavour, with DATA uploaded at ``key``."""
    s3 = s3_server(request, server_name)
    put_object(s3, key, DATA, "application/octet-stream")
    return serve(s3_settings(s3, client, **overrides))


def expected(spec: str) -> bytes:
    first, last = spec.removeprefix("bytes=").split("-")
    if not first:
        return DATA[-int(last) :]
    return DATA[int(first) : int(last) + 1 if last else None]


@pytest.mark.parametrize(("server_name", "client"), MATRIX)
def test_one_presigned_url_serves_every_get_of_a_key(
    request: pytest.FixtureRequest, serve: StartServer, server_name: str, client: str
) -> None:
    key = f"presigned/once-{client}.bin"
    proxy = serving(request, serve, server_name, client, key)
    with watching(proxy.app.state.storage, Calls()) as calls:
        whole = httpx.get(f"{proxy.url}/objects/{key}", timeout=20)
        assert (whole.status_code, sha256(whole.content)) == (200, sha256(DATA))
        for spec in SPECS:
            part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": spec}, timeout=20)
            assert (part.status_code, part.content) == (206, expected(spec))
    assert calls.names() == ["GetObject"] * 5  # no botocore GetObject behind any of them
    assert (calls.presigned, calls.presigns) == (5, 1)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_a_rejected_url_is_dropped_and_botocore_answers(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    key = f"presigned/rejected-{client}.bin"
    proxy = serving(request, serve, "seaweedfs", client, key)  # checks signatures; moto does not
    storage = proxy.app.state.storage
    assert httpx.get(f"{proxy.url}/objects/{key}", timeout=20).status_code == 200
    urls = storage.presigned._urls
    good = urls.get(key)
    signature = good.rsplit("X-Amz-Signature=", 1)[1]
    forged = "0" * len(signature) if signature != "0" * len(signature) else "1" * len(signature)
    urls.put(key, good.replace(signature, forged))  # as an expired one would be: rejected
    with watching(storage, Calls()) as calls:
        spec = SPECS[1]
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": spec}, timeout=20)
        assert (part.status_code, part.content) == (206, expected(spec))
    assert calls.made == [("GetObject", {"Key": key, "Range": spec})] * 2
    assert calls.presigned == 1  # the first; botocore made the second
    with watching(storage, Calls()) as calls:
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": spec}, timeout=20)
        assert (part.status_code, part.content) == (206, expected(spec))
    assert (calls.names(), calls.presigned, calls.presigns) == (["GetObject"], 1, 1)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_turned_off_botocore_makes_every_get(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    key = f"presigned/off-{client}.bin"
    proxy = serving(request, serve, "moto", client, key, s3_presigned_gets=False)
    assert proxy.app.state.storage.presigned is None
    with watching(proxy.app.state.storage, Calls()) as calls:
        whole = httpx.get(f"{proxy.url}/objects/{key}", timeout=20)
        assert sha256(whole.content) == sha256(DATA)
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": SPECS[1]}, timeout=20)
        assert (part.status_code, part.content) == (206, expected(SPECS[1]))
    assert (calls.names(), calls.presigned, calls.presigns) == (["GetObject"] * 2, 0, 0)


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_stored_bytes_pass_through_whatever_their_content_encoding(
    request: pytest.FixtureRequest, serve: StartServer, client: str
) -> None:
    """An object stored gzip-encoded is served as stored: the HTTP client must not inflate it."""
    s3 = s3_server(request, "moto")
    key = f"presigned/encoded-{client}.json.gz"
    stored = gzip.compress(os.urandom(200_000), mtime=0)
    put_object(s3, key, stored, "application/gzip", content_encoding="gzip")
    proxy = serve(s3_settings(s3, client))
    with watching(proxy.app.state.storage, Calls()) as calls:
        whole = httpx.get(f"{proxy.url}/objects/{key}", timeout=20)
        part = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": "bytes=0-9"}, timeout=20)
    assert sha256(whole.content) == sha256(stored)
    assert part.content == stored[:10]
    assert calls.presigned == 2
