"""Presigned GETs: the S3 hot path's lean GetObject, a cached presigned URL and one plain GET.

botocore's get_object spends ~1.4 ms of CPU per call (validation, endpoint rules, events,
signing, parsing) against ~0.3 ms for the HTTP exchange itself (benchmarks/s3_request_cost.py).
botocore still presigns the URL (its signer, endpoint and addressing rules, the standard
credential chain) once per key every few minutes; Range and If-Match travel as unsigned headers.
A reply with a body becomes an ``S3Answer``; a definite error (``proxy.storage.s3answer``) is
raised; anything else returns None: the caller asks botocore, whose retries and mapping decide.
"""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Callable
from functools import partial
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

import botocore.httpsession
from botocore.exceptions import BotoCoreError

from proxy.metrics import BACKEND_CALLS
from proxy.storage.connections import AsyncConnections, Connections
from proxy.storage.errors import StorageError
from proxy.storage.options import S3Options
from proxy.storage.s3answer import S3Answer, definite_error
from proxy.version import __version__

USER_AGENT = f"media-object-proxy/{__version__}"  # fixed: botocore builds its own per call
URL_EXPIRES = 900  # seconds a presigned URL is valid for
URL_REUSE = 300  # seconds one is used for: botocore renews temporary credentials 10-15 min
# before they expire, so a URL signed with them stays valid for longer than it is used.
URL_LIMIT = 1024  # keys whose URL is kept
_ERROR_BYTES = 64 * 1024  # an S3 error document is small; more is not read


class UrlCache:
    """Presigned URLs by key, each reused for ``reuse`` seconds; at most ``limit`` kept."""

    __slots__ = ("_clock", "_limit", "_reuse", "_urls")

    def __init__(
        self,
        limit: int = URL_LIMIT,
        reuse: float = URL_REUSE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._urls: dict[str, tuple[str, float]] = {}
        self._limit = limit
        self._reuse = reuse
        self._clock = clock

    def get(self, key: str) -> str | None:
        entry = self._urls.get(key)
        if entry is None or self._clock() - entry[1] >= self._reuse:
            return None
        return entry[0]

    def put(self, key: str, url: str) -> None:
        self._urls.pop(key, None)
        while len(self._urls) >= self._limit:  # the oldest first (dicts keep insertion order)
            self._urls.pop(next(iter(self._urls)), None)
        self._urls[key] = (url, self._clock())

    def drop(self, key: str) -> None:
        self._urls.pop(key, None)


def usable(endpoint_url: str) -> bool:
    """Whether plain GETs reach ``endpoint_url`` as botocore's would: not through an HTTP proxy
    from the environment (botocore's proxy support is left to botocore)."""
    parts = urlsplit(endpoint_url)
    proxies = urllib.request.getproxies()
    return parts.scheme not in proxies or bool(urllib.request.proxy_bypass(parts.hostname or ""))


def ca_file(botocore_session: Any) -> str:
    """The CA bundle botocore verifies TLS with: AWS_CA_BUNDLE / the profile's, else certifi's."""
    configured = botocore_session.get_config_variable("ca_bundle")
    return str(botocore.httpsession.get_cert_path(configured or True))


def request_headers(range_value: str | None, etag: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT}
    if range_value:
        headers["Range"] = range_value
    if etag:
        headers["If-Match"] = etag  # later calls of one response must read the same version
    return headers


def split_url(url: str) -> tuple[str, str]:
    """``scheme://host[:port]`` and the request target (path and query) of an absolute URL."""
    scheme, _, netloc, path = url.split("/", 3)
    return f"{scheme}//{netloc}", f"/{path}"


def _count() -> None:
    BACKEND_CALLS.labels("s3", "GetObject").inc()


def _without_body(urls: UrlCache, s3_key: str, error: StorageError | None) -> None:
    """After a reply that brought no body: raise its definite error; otherwise forget the
    key's URL (a rejected or expired one must not be tried again) and let botocore answer."""
    if error is not None:
        raise error
    urls.drop(s3_key)


class _Gets:
    """What both flavours hold: the client that presigns, the bucket, the URLs, a pool of
    connections per origin (``connect`` makes one)."""

    __slots__ = ("_bucket", "_client", "_connect", "_origins", "_urls")

    def __init__(self, client: Any, bucket: str, connect: Callable[[str], Any]) -> None:
        self._client = client
        self._bucket = bucket
        self._connect = connect
        self._origins: dict[str, Any] = {}
        self._urls = UrlCache()

    def _presign_args(self, s3_key: str) -> dict[str, Any]:
        return {"Params": {"Bucket": self._bucket, "Key": s3_key}, "ExpiresIn": URL_EXPIRES}

    def _origin(self, origin: str) -> Any:
        found = self._origins.get(origin)
        if found is None:  # two threads may both make one: the one kept serves from then on
            found = self._origins.setdefault(origin, self._connect(origin))
        return found

    def _answer(self, reply: Any) -> S3Answer | None:
        """The reply as GetObject's answer when it brings a body; None when its error
        document (still to be read) must decide."""
        _count()
        if reply.status not in (200, 206) or not reply.framed:
            return None
        return S3Answer.from_headers(reply.headers, reply)

    def close(self) -> None:
        """Close the idle connections (at shutdown)."""
        for connections in self._origins.values():
            connections.close()


class PresignedGets(_Gets):
    """Presigned GetObject over ``Connections`` (blocking: called from FastAPI's threadpool)."""

    __slots__ = ()

    def _url(self, s3_key: str) -> str:
        url = self._urls.get(s3_key)
        if url is None:
            url = self._client.generate_presigned_url("get_object", **self._presign_args(s3_key))
            self._urls.put(s3_key, url)
        return url

    def url(self, s3_key: str) -> str | None:
        """The presigned URL of ``s3_key`` (made now, or one of the last minutes'); None when
        botocore cannot presign it."""
        try:
            return self._url(s3_key)
        except (BotoCoreError, OSError, HTTPException, ValueError):
            self._urls.drop(s3_key)
            return None

    def loop_twin(self, connect: Callable[[str], Any]) -> AsyncPresignedGets:
        """Presigned GETs on the event loop (``AsyncConnections``) of the URLs this one makes
        in its callers' threads (``url``): what the slice cache's fills use on this flavour.
        One URL cache for both: a URL dropped by either is presigned again."""
        twin = AsyncPresignedGets(self._client, self._bucket, connect)
        twin._urls = self._urls
        return twin

    def get(self, s3_key: str, range_value: str | None, etag: str | None) -> S3Answer | None:
        try:
            origin, target = split_url(self._url(s3_key))
            reply = self._origin(origin).get(target, request_headers(range_value, etag))
        except (BotoCoreError, OSError, HTTPException, ValueError):  # timeouts are OSErrors
            self._urls.drop(s3_key)
            return None
        if (answer := self._answer(reply)) is not None:
            return answer
        try:
            error = definite_error(reply.status, reply.read(_ERROR_BYTES) if reply.framed else b"")
        except (StorageError, OSError, HTTPException):
            error = None
        finally:
            reply.close()
        _without_body(self._urls, s3_key, error)
        return None


class AsyncPresignedGets(_Gets):
    """The async twin of ``PresignedGets``, over ``AsyncConnections``."""

    __slots__ = ()

    async def _url(self, s3_key: str) -> str:
        url = self._urls.get(s3_key)
        if url is None:
            url = await self._client.generate_presigned_url(
                "get_object", **self._presign_args(s3_key)
            )
            self._urls.put(s3_key, url)
        return url

    async def get(self, s3_key: str, range_value: str | None, etag: str | None) -> S3Answer | None:
        try:
            url = await self._url(s3_key)
        except (BotoCoreError, OSError, HTTPException, ValueError):
            self._urls.drop(s3_key)
            return None
        return await self.fetch(s3_key, url, range_value, etag)

    async def fetch(
        self, s3_key: str, url: str, range_value: str | None, etag: str | None
    ) -> S3Answer | None:
        """GET ``url``, presigned for ``s3_key``: S3's answer with its body, None when botocore
        must answer; raises a definite error (``definite_error``)."""
        try:
            origin, target = split_url(url)
            reply = await self._origin(origin).get(target, request_headers(range_value, etag))
        except (BotoCoreError, OSError, HTTPException, ValueError):  # timeouts are OSErrors
            self._urls.drop(s3_key)
            return None
        if (answer := self._answer(reply)) is not None:
            return answer
        try:
            error = definite_error(reply.status, await reply.read(_ERROR_BYTES))
        except (StorageError, OSError, HTTPException):
            error = None
        finally:
            reply.close()
        _without_body(self._urls, s3_key, error)
        return None


def connections(
    options: S3Options, cafile: str, kind: type[Connections | AsyncConnections] = Connections
) -> Callable[[str], Connections | AsyncConnections]:
    """How the presigned GETs connect to an origin (``kind``: the blocking or the event
    loop's pool), sized and timed like botocore."""
    return partial(
        kind,
        keep=options.pool_size,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        ssl_context=ssl.create_default_context(cafile=cafile),
    )
