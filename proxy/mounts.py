"""The mounts served (``PROXY_MOUNTS``): each a storage of its own flavour under
``/objects/{mount}/``, with its settings, its access policy and, for a redirecting S3 mount, the
presigner of its GETs. Without ``PROXY_MOUNTS`` the one backend of the ``PROXY_`` variables is a
single mount at the root (``/objects/{key}``), served exactly as before.

``MountTable.find`` maps a request's key (the path after ``/objects/``) to its mount and the key
within it: a dictionary look-up per ``/`` of the key's first segments, none at the root. Mount
names never nest (``proxy.config.parse_mounts`` refuses it), so at most one mount matches.
"""

from __future__ import annotations

import logging
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
    SigV4 over the request; no call to S3), whatever the mount's flavour."""
    from botocore.exceptions import BotoCoreError

    from proxy.storage.s3client import boto3_client

    client, _ = boto3_client(options)
    stack.callback(client.close)
    bucket = options.bucket
    stripped = options.prefix.strip("/")  # as the S3 backend reads it
    prefix = f"{stripped}/" if stripped else ""

    def presign(key: str, disposition: str | None) -> str:
        params: dict[str, Any] = {"Bucket": bucket, "Key": prefix + key}
        if disposition is not None:
            params["ResponseContentDisposition"] = disposition
        try:
            url: str = client.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)
        except BotoCoreError as exc:  # no credentials, an expired or unreadable profile
            raise BackendUnavailable(f"cannot presign: {type(exc).__name__}") from None
        return url

    return presign
