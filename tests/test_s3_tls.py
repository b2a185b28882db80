"""S3 over TLS through real proxies: moto behind a TLS relay with a self-signed certificate that
AWS_CA_BUNDLE names. botocore (HEAD, presigning) and the presigned GETs (``AsyncConnections``
on the aiobotocore flavour, ``Connections`` on boto3) verify it; the bytes arrive whole."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from proxy.testing.s3servers import S3Server, put_object
from tests.conftest import S3_CLIENTS, StartServer, s3_server, s3_settings, sha256
from tests.loopback import self_signed, tls_relay
from tests.s3calls import Calls, watching

DATA = os.urandom(3 * 1024 * 1024 + 5)
SPECS = {"bytes=0-99": DATA[:100], "bytes=1000-65535": DATA[1000:65536], "bytes=-17": DATA[-17:]}


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_presigned_gets_over_tls(
    request: pytest.FixtureRequest,
    serve: StartServer,
    client: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moto = s3_server(request, "moto")
    key = f"tls/object-{client}.bin"
    put_object(moto, key, DATA, "application/octet-stream")
    pem = self_signed(tmp_path)
    port = urlsplit(moto.endpoint_url).port
    assert port is not None
    with tls_relay(port, pem) as relay:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(pem))
        endpoint = f"https://127.0.0.1:{relay.port}"
        proxy = serve(s3_settings(S3Server("moto", endpoint, False), client))
        storage = proxy.app.state.storage
        assert storage.presigned is not None
        with watching(storage, Calls()) as calls:
            for _ in range(2):
                whole = httpx.get(f"{proxy.url}/objects/{key}", timeout=20)
                assert (whole.status_code, sha256(whole.content)) == (200, sha256(DATA))
            for spec, part in SPECS.items():
                got = httpx.get(f"{proxy.url}/objects/{key}", headers={"Range": spec}, timeout=20)
                assert (got.status_code, got.content) == (206, part)
            head = httpx.head(f"{proxy.url}/objects/{key}", timeout=20)
            assert head.headers["content-length"] == str(len(DATA))
        assert calls.names() == ["GetObject"] * 5 + ["HeadObject"]  # botocore: only the HEAD
        assert calls.presigned == 5
    assert relay.connections >= 1  # the endpoint is the relay's: HTTPS only
