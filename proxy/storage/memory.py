"""In-memory backend: the in-process test double for HTTP-logic tests (like httpx MockTransport).

``MemoryStorage`` and ``AsyncMemoryStorage`` are twins over the same dict logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

import anyio.lowlevel

from proxy.http.codec import ByteRange
from proxy.storage.base import (
    LIST_PAGE_SIZE,
    METADATA_ONLY,
    AsyncBody,
    Body,
    ChunkSize,
    Listed,
    ObjectMeta,
    ReadHint,
    Reply,
    chunk_limit,
    folded,
    listed_name,
)
from proxy.storage.errors import BodyTruncated, ObjectChanged, ObjectNotFound
from proxy.storage.keys import check_key
from proxy.storage.mediatypes import media_type_for


@dataclass(frozen=True, slots=True)
class _Stored:
    data: bytes
    meta: ObjectMeta
    changed: bool = False  # a version that is gone: reads raise ObjectChanged


def _stored(key: str, data: bytes, media_type: str | None) -> _Stored:
    data = bytes(data)
    meta = ObjectMeta(
        key=check_key(key),
        size=len(data),
        media_type=media_type or media_type_for(key),
        # "m-" plus 16 hex digits: strong and content-derived, but not shaped like an MD5.
        etag=f'"m-{hashlib.sha256(data).hexdigest()[:16]}"',
        last_modified=datetime.now(UTC).replace(microsecond=0),
    )
    return _Stored(data, meta)


class _Objects:
    """What both storage flavours hold: key -> (data, meta), set at ``put`` time."""

    __slots__ = ("_objects",)

    def __init__(self, objects: Mapping[str, bytes | tuple[bytes, str]] | None = None) -> None:
        self._objects: dict[str, _Stored] = {}
        for key, value in (objects or {}).items():
            data, media_type = value if isinstance(value, tuple) else (value, None)
            self.put(key, data, media_type)

    def put(self, key: str, data: bytes, media_type: str | None = None) -> ObjectMeta:
        """Store ``data`` at ``key``; bodies opened before keep the old bytes, like S3 GETs."""
        stored = self._objects[key] = _stored(key, data, media_type)
        return stored.meta

    def _lookup(self, key: str) -> _Stored:
        stored = self._objects.get(check_key(key))
        if stored is None:
            raise ObjectNotFound()
        return stored

    def location(self, key: str) -> str:
        """Where ``key`` is (a cache's name for it): ``memory:`` and the key."""
        return f"memory:{key}"

    def _pinned(self, key: str, meta: ObjectMeta) -> _Stored:
        """The stored object if it is still the version ``meta`` describes; else one whose
        reads raise ``ObjectChanged``, as S3's ETag-pinned GETs do."""
        stored = self._objects.get(key)
        if stored is not None and stored.meta.etag == meta.etag:
            return stored
        return _Stored(b"", meta, changed=True)

    def _revalidate(self, key: str, meta: ObjectMeta) -> ObjectMeta | None:
        stored = self._lookup(key)
        return None if stored.meta.etag == meta.etag else stored.meta

    def _listing(self, prefix: str, recursive: bool, after: str) -> Iterator[list[Listed]]:
        keys = sorted(key for key in self._objects if key.startswith(prefix))
        entries: Iterator[Listed] = (self._objects[key].meta for key in keys)
        if not recursive:
            entries = folded(entries, prefix)
        entries = (entry for entry in entries if listed_name(entry) > after)
        while page := list(islice(entries, LIST_PAGE_SIZE)):
            yield page


class _Buffer:
    """What both body flavours hold: the stored bytes and whether ``close`` was called."""

    __slots__ = ("_stored", "closed")

    def __init__(self, stored: _Stored) -> None:
        self._stored = stored
        self.closed = False

    def _chunks(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        if chunk_limit(chunk_size) < 1:
            raise ValueError("chunk_size must be at least 1")
        if self._stored.changed:
            raise ObjectChanged()
        view = memoryview(self._stored.data)  # slices of a view copy only once, in bytes()
        offset = byte_range.start
        while offset < byte_range.stop:
            if self.closed:
                raise ValueError("read from a closed body")
            limit = min(chunk_limit(chunk_size), byte_range.stop - offset)
            chunk = bytes(view[offset : offset + limit])
            if not chunk:
                raise BodyTruncated()  # a range past the end, as the disk backend reports it
            offset += len(chunk)
            yield chunk


class MemoryBody(_Buffer):
    __slots__ = ()

    def iter_range(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        yield from self._chunks(byte_range, chunk_size)

    def close(self) -> None:
        self.closed = True


class AsyncMemoryBody(_Buffer):
    __slots__ = ()

    async def aiter_range(
        self, byte_range: ByteRange, chunk_size: ChunkSize
    ) -> AsyncIterator[bytes]:
        return self._achunks(byte_range, chunk_size)

    async def _achunks(self, byte_range: ByteRange, chunk_size: ChunkSize) -> AsyncIterator[bytes]:
        for chunk in self._chunks(byte_range, chunk_size):
            # A generator that never awaits blocks the loop and never sees cancellation.
            await anyio.lowlevel.checkpoint()
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class MemoryStorage(_Objects):
    """Objects in a dict: ``MemoryStorage({"a.mp4": b"...", "b": (b"...", "text/plain")})``."""

    __slots__ = ()

    def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[Body]:
        stored = self._lookup(key)
        return Reply(stored.meta, MemoryBody(stored))

    def pinned(self, key: str, meta: ObjectMeta) -> MemoryBody:
        return MemoryBody(self._pinned(key, meta))

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> Iterator[list[Listed]]:
        return self._listing(prefix, recursive, start_after)

    def revalidate(self, key: str, meta: ObjectMeta) -> ObjectMeta | None:
        return self._revalidate(key, meta)

    def check(self) -> None:
        pass  # always reachable

    def close(self) -> None:
        pass


class AsyncMemoryStorage(_Objects):
    """The async twin of ``MemoryStorage``."""

    __slots__ = ()

    async def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[AsyncBody]:
        stored = self._lookup(key)
        return Reply(stored.meta, AsyncMemoryBody(stored))

    def pinned(self, key: str, meta: ObjectMeta) -> AsyncMemoryBody:
        return AsyncMemoryBody(self._pinned(key, meta))

    async def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> AsyncIterator[list[Listed]]:
        for page in self._listing(prefix, recursive, start_after):
            await anyio.lowlevel.checkpoint()
            yield page

    async def revalidate(self, key: str, meta: ObjectMeta) -> ObjectMeta | None:
        return self._revalidate(key, meta)

    async def acheck(self) -> None:
        pass  # always reachable

    async def aclose(self) -> None:
        pass
