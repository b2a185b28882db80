"""The slice cache between real proxies and real S3 servers, with a counting relay in front of
the S3 server: what reached S3 is observed there, not taken from the proxy's own counts."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from proxy.config import Settings
from proxy.testing.s3servers import S3Server, put_object
from tests.conftest import running, s3_server, s3_settings
from tests.loopback import Traffic, counting_relay

MIB = 1024 * 1024
SLICE = 256 * 1024  # small slices: several per object, small objects
CASES = [
    ("moto", "boto3"),
    ("moto", "aiobotocore"),
    ("seaweedfs", "boto3"),
    ("seaweedfs", "aiobotocore"),
]
_names = itertools.count()


@dataclass
class CachedProxy:
    """A proxy with the cache on, its S3 server behind a counting relay."""

    s3: S3Server
    traffic: Traffic
    settings: Settings
    url: str
    http: httpx.Client

    @property
    def directory(self) -> Path:
        assert self.settings.cache_dir is not None
        return self.settings.cache_dir

    def put(self, size: int, media_type: str = "application/octet-stream") -> tuple[str, bytes]:
        """A new object of ``size`` random bytes under a key no other test uses."""
        key = f"cache-test/{os.getpid()}-{next(_names)}.bin"
        data = os.urandom(size)
        put_object(self.s3, key, data, media_type)
        return key, data

    def overwrite(self, key: str, data: bytes) -> None:
        put_object(self.s3, key, data, "application/octet-stream")

    def get(self, key: str, **headers: str) -> httpx.Response:
        """GET with header fields given as keywords (``if_none_match=...``)."""
        return self.http.get(f"/objects/{key}", headers=_fields(headers))

    def head(self, key: str, **headers: str) -> httpx.Response:
        return self.http.head(f"/objects/{key}", headers=_fields(headers))


def _fields(keywords: dict[str, str]) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in keywords.items()}


MakeProxy = Callable[..., CachedProxy]


@pytest.fixture(params=CASES, ids=["-".join(case) for case in CASES])
def case(request: pytest.FixtureRequest) -> tuple[S3Server, str]:
    name, client_kind = request.param
    return s3_server(request, name), client_kind


@pytest.fixture
def make_proxy(case: tuple[S3Server, str], tmp_path: Path) -> Iterator[MakeProxy]:
    """Proxies on ``case``'s S3 server and client, each behind a relay of its own, stopped at
    the end of the test; settings may be overridden (``cache_dir``: tmp_path/cache)."""
    s3, client_kind = case
    port = int(s3.endpoint_url.rsplit(":", 1)[1])
    with contextlib.ExitStack() as stack:

        def make(**overrides: object) -> CachedProxy:
            listener, traffic = stack.enter_context(counting_relay(port))
            values: dict[str, object] = {
                "cache_dir": tmp_path / "cache",
                "cache_slice_size": SLICE,
                "s3_endpoint_url": f"http://127.0.0.1:{listener.port}",
            }
            values.update(overrides)
            settings = s3_settings(s3, client_kind, **values)
            url = stack.enter_context(running(settings)).url
            http = stack.enter_context(httpx.Client(base_url=url, timeout=30))
            return CachedProxy(s3, traffic, settings, url, http)

        yield make


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> CachedProxy:
    return make_proxy()
