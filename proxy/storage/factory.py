"""The storage stack, built from explicit options: the backend × flavour choice and each
backend's lifecycle (the open-file expiry, the readiness probe, closing clients).

``open_backend`` enters everything into the caller's ``AsyncExitStack`` (the app's lifespan), so
it is released in reverse order at shutdown. A layer that wraps a storage (``open`` in, ``open``
out: a cache, a router of several backends) is applied with ``Backend.wrap`` and needs nothing
from the HTTP layer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from functools import partial
from typing import cast

import anyio.to_thread

from proxy.storage.base import AsyncStorage, AsyncVersionedStorage, Storage, VersionedStorage
from proxy.storage.errors import StorageError
from proxy.storage.local import AsyncLocalStorage, LocalStorage
from proxy.storage.openfiles import OpenFiles
from proxy.storage.options import LocalOptions, S3Options, StorageOptions
from proxy.storage.writes import AsyncWriter, Writer

DEFAULT_READINESS_TTL = 5.0  # seconds a readiness answer is reused (PROXY_READINESS_CACHE_SECONDS)


class Readiness:
    """The backend's reachability, checked at most once per ``ttl`` seconds (cheap probes)."""

    def __init__(self, check: Callable[[], Awaitable[None]], ttl: float) -> None:
        self._check = check
        self._ttl = ttl
        self._expires = 0.0
        self._error: StorageError | None = None

    async def __call__(self) -> StorageError | None:
        now = time.monotonic()
        if now >= self._expires:
            try:
                await self._check()
                self._error = None
            except StorageError as exc:
                self._error = exc
            self._expires = now + self._ttl
        return self._error


@dataclass(frozen=True, slots=True)
class Backend:
    """A storage ready to serve: blocking (``sync``: served from ``def`` path operations) or
    async, and its readiness probe."""

    storage: Storage | AsyncStorage
    sync: bool
    ready: Readiness

    def wrap(self, layer: Callable[[Storage | AsyncStorage], Storage | AsyncStorage]) -> Backend:
        """The same backend behind ``layer`` (which keeps the flavour of what it wraps)."""
        return replace(self, storage=layer(self.storage))


async def open_backend(
    options: StorageOptions, stack: AsyncExitStack, readiness_ttl: float = DEFAULT_READINESS_TTL
) -> Backend:
    """The storage ``options`` describe, released when ``stack`` closes."""
    storage = await _open_storage(options, stack)
    return Backend(storage, options.sync, _readiness(storage, options.sync, readiness_ttl))


async def _open_storage(options: StorageOptions, stack: AsyncExitStack) -> Storage | AsyncStorage:
    if isinstance(options, S3Options):
        from proxy.storage import s3  # boto3 and aiobotocore load only when they are used

        if options.sync:
            storage: Storage | AsyncStorage = s3.open_s3(options)
            stack.callback(cast(Storage, storage).close)
        else:
            storage = await s3.aopen_s3(options, stack)
        if options.cache is None:
            return storage
        from proxy.storage.cache import open_cache  # diskcache loads only when it is used

        inner = cast("VersionedStorage | AsyncVersionedStorage", storage)
        loop = asyncio.get_running_loop()
        cache = await anyio.to_thread.run_sync(open_cache, inner, options.cache, options.sync, loop)
        stack.callback(cache.store.close)
        return cache
    assert isinstance(options, LocalOptions)
    if options.sync:
        local = LocalStorage(options.root, options.open_files)
        stack.callback(local.close)
        await expire_open_files(local.open_files, stack)
        return local
    alocal = AsyncLocalStorage(options.root, options.open_files)
    stack.push_async_callback(alocal.aclose)
    await expire_open_files(alocal.open_files, stack)
    return alocal


async def expire_open_files(files: OpenFiles, stack: AsyncExitStack) -> None:
    """Close cached descriptors that went unused, on an idle server too (a deleted file's
    space comes back only when its last descriptor is closed)."""

    async def expire() -> None:
        while True:
            await asyncio.sleep(files.idle / 2)
            files.expire()

    task = asyncio.create_task(expire())
    stack.callback(task.cancel)


def _readiness(storage: Storage | AsyncStorage, sync: bool, ttl: float) -> Readiness:
    if sync:
        return Readiness(partial(anyio.to_thread.run_sync, cast(Storage, storage).check), ttl)
    return Readiness(cast(AsyncStorage, storage).acheck, ttl)


def open_writer(options: StorageOptions, storage: Storage | AsyncStorage) -> Writer | AsyncWriter:
    """What writes the objects ``storage`` (opened from ``options`` by ``open_backend``)
    reads, in the same flavour: ``proxy.storage.localwrite`` on local disk,
    ``proxy.storage.s3write`` on S3 (through the storage's own client; with a slice cache, the
    cache forgets a key when it is written or deleted)."""
    if isinstance(options, S3Options):
        from proxy.storage import s3write

        return s3write.open_writer(options, storage)
    from proxy.storage import localwrite

    return localwrite.open_writer(options, storage)
