"""The mounts served (``PROXY_MOUNTS``): each a storage of its own flavour under
``/objects/{mount}/``, with its settings, its access policy and, for a redirecting S3 mount, the
presigner of its GETs. Without ``PROXY_MOUNTS`` the one backend of the ``PROXY_`` variables is a
single mount at the root (``/objects/{key}``), served exactly as before.

``MountTable.find`` maps a request's key (the path after ``/objects/``) to its mount and the key
within it: a dictionary look-up per ``/`` of the key's first segments, none at the root. Mount
names never nest (``proxy.config.parse_mounts`` refuses it), so at most one mount matches.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from proxy.config import Mount, Settings
from proxy.storage.base import AsyncStorage, Storage
from proxy.storage.errors import BackendUnavailable
from proxy.storage.factory import Readiness, open_backend, open_writer
from proxy.storage.options import S3Options
from proxy.storage.writes import AsyncWriter, Writer

logger = logging.getLogger("proxy")

# A redirecting mount's presigner: (key within the mount, Content-Disposition or None) -> URL.
Presign = Callable[[str, str | None], str]
REUSE_FRACTION = 10  # a presigned URL is handed out for at most 1/10 of its TTL
URLS_KEPT = 1024  # presigned URLs kept per redirecting mount (~1 KB each)


@dataclass(slots=True)
class ServedMount:
    """A mount ready to serve: its storage (``sync``: served from ``def`` code in the
    threadpool), readiness probe and policy."""

    mount: Mount
    storage: Storage | AsyncStorage
    sync: bool
    ready: Readiness
    auth: bool  # requests need a bearer key or a signed URL
    listing: bool
    presign: Presign | None = None  # set for a redirecting mount
    writer: Writer | AsyncWriter | None = None  # set when the mount takes PUT and DELETE

    @property
    def name(self) -> str:
        return self.mount.name

    @property
    def path(self) -> str:
        return self.mount.path

    @property
    def settings(self) -> Settings:
        return self.mount.settings


class MountTable:
    """Every mount, by name; ``root``: the single mount of the ``PROXY_`` variables."""

    def __init__(self, mounts: list[ServedMount]) -> None:
        self.mounts = mounts
        self.root = mounts[0] if len(mounts) == 1 and not mounts[0].name else None
        self._by_name = {mount.name: mount for mount in mounts}

    def find(self, key: str) -> tuple[ServedMount, str] | None:
        """The mount ``key`` lies in and the key within it; None when it names no mount."""
        if self.root is not None:
            return self.root, key
        slash = key.find("/")
        while slash != -1:
            mount = self._by_name.get(key[:slash])
            if mount is not None:
                return mount, key[slash + 1 :]
            slash = key.find("/", slash + 1)
        return None


async def open_mounts(settings: Settings, stack: AsyncExitStack) -> MountTable:
    """Every mount's storage (and presigner), released when ``stack`` closes."""
    served = []
    for mount in settings.mount_list():
        options = mount.settings.storage_options()
        backend = await open_backend(options, stack, settings.readiness_cache_seconds)
        presign = None
        if mount.redirect:
            assert isinstance(options, S3Options)
            presign = presigner(options, settings.redirect_ttl, stack)
            # The credential chain is walked on the first presign: here, in a thread, not on
            # the event loop in a request. Without credentials a GET there answers 503.
            try:
                await anyio.to_thread.run_sync(presign, "warm-up", None)
            except BackendUnavailable as exc:
                logger.warning("mount %r: cannot presign yet: %s", mount.name, exc)
        served.append(
            ServedMount(
                mount,
                backend.storage,
                backend.sync,
                backend.ready,
                auth=settings.auth_enabled and not mount.public,
                listing=mount.settings.listing,
                presign=presign,
                writer=open_writer(options, backend.storage) if mount.settings.writes else None,
            )
        )
    return MountTable(served)


def presigner(options: S3Options, ttl: int, stack: AsyncExitStack) -> Presign:
    """A redirecting mount's presigner: a boto3 client of its own (presigning is local CPU,
    SigV4 over the request; no call to S3), whatever the mount's flavour, its URLs reused
    for a tenth of their validity (``PresignedUrls``)."""
    from proxy.storage.s3client import boto3_client

    client, _ = boto3_client(options)
    stack.callback(client.close)
    return PresignedUrls(client, options.bucket, options.prefix, ttl)


class PresignedUrls:
    """Presigned GetObject URLs for (key, Content-Disposition), each handed out again for at
    most a tenth of the TTL after it was signed: botocore's ``generate_presigned_url`` costs
    ~0.25 ms of CPU, most of a 307's, and a player asks for the same key range after range.

    The guarantee: a URL handed out for (key, disposition) was signed for exactly that key and
    disposition (one entry per pair), with the credentials botocore signs with at that moment
    (compared on every use: a rotated key or a refreshed STS session signs anew; botocore
    refreshes temporary credentials 10-15 minutes before they expire and raises rather than
    sign with expired ones, and so does this), less than ``reuse = ttl // 10`` seconds before
    by the wall clock, as its own ``X-Amz-Date`` says, which is what S3 checks its expiry
    against: so it stays valid for more than ``ttl - reuse`` seconds, at least 90% of
    ``PROXY_REDIRECT_TTL`` (a TTL under 10 s: never reused). A clock that went back: signed
    anew. At most ``limit`` URLs are kept, the oldest signed dropped first."""

    __slots__ = (
        "_bucket",
        "_client",
        "_clock",
        "_credentials",
        "_errors",
        "_limit",
        "_prefix",
        "_reuse",
        "_ttl",
        "_urls",
    )

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        ttl: int,
        limit: int = URLS_KEPT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from botocore.exceptions import BotoCoreError  # botocore: loaded for S3 mounts only

        # No credentials, expired ones that cannot be renewed (botocore raises RuntimeError
        # when a refresh brought expired ones), a profile that cannot be read.
        self._errors = (BotoCoreError, RuntimeError)
        self._client = client
        self._bucket = bucket
        stripped = prefix.strip("/")  # as the S3 backend reads it
        self._prefix = f"{stripped}/" if stripped else ""
        self._ttl = ttl
        self._reuse = ttl // REUSE_FRACTION
        self._limit = limit
        self._clock = clock
        # What the client's signer signs with (botocore keeps it there; a ``Credentials`` or
        # ``RefreshableCredentials``); None (no credentials found at start): nothing reused.
        signer = getattr(client, "_request_signer", None)
        self._credentials: Any = getattr(signer, "_credentials", None)
        self._urls: dict[tuple[str, str | None], tuple[str, int, Any]] = {}

    def __call__(self, key: str, disposition: str | None) -> str:
        """The URL of ``key`` (with ``disposition`` as S3's ``response-content-disposition``)."""
        if self._reuse <= 0 or self._credentials is None:
            return self.sign(key, disposition)
        now = self._clock()
        try:
            # A refresh when due, raising when the credentials expired and cannot be renewed.
            signing = self._credentials.get_frozen_credentials()
        except self._errors as exc:
            raise BackendUnavailable(f"cannot presign: {type(exc).__name__}") from None
        entry = self._urls.get((key, disposition))
        if entry is not None:
            url, signed_at, signed_with = entry
            if 0 <= now - signed_at < self._reuse and signed_with == signing:
                return url
        url = self.sign(key, disposition)
        urls = self._urls
        urls.pop((key, disposition), None)
        dated = signing_time(url)  # the URL's own X-Amz-Date: it expires ttl after it
        if dated is not None:
            while len(urls) >= self._limit:  # the oldest first (dicts keep insertion order)
                urls.pop(next(iter(urls)), None)
            urls[(key, disposition)] = (url, dated, signing)
        return url

    def sign(self, key: str, disposition: str | None) -> str:
        """A URL signed now (botocore's ``generate_presigned_url``), never reused."""
        params: dict[str, Any] = {"Bucket": self._bucket, "Key": self._prefix + key}
        if disposition is not None:
            params["ResponseContentDisposition"] = disposition
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=self._ttl
            )
        except self._errors as exc:
            raise BackendUnavailable(f"cannot presign: {type(exc).__name__}") from None
        return url


def signing_time(url: str) -> int | None:
    """The POSIX time of a SigV4 presigned URL's ``X-Amz-Date`` (``20261206T224500Z``)."""
    start = url.find("X-Amz-Date=")
    if start == -1:
        return None
    try:
        stamp = time.strptime(url[start + 11 : start + 27], "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None
    return calendar.timegm(stamp)
