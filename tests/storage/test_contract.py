"""One contract suite for every backend, under both flavours: meta, ranged reads, errors, close."""

from __future__ import annotations

import hashlib
import inspect
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path
from typing import Protocol, cast

import pytest

from proxy.http.codec import ByteRange
from proxy.storage.base import (
    METADATA_ONLY,
    AsyncBody,
    AsyncLister,
    AsyncStorage,
    Body,
    Folder,
    Listed,
    ObjectMeta,
    ReadHint,
    Reply,
    Storage,
    folded,
    listed_name,
)
from proxy.storage.base import Lister as SyncLister
from proxy.storage.cache import open_cache
from proxy.storage.errors import BodyTruncated, InvalidKey, ObjectNotFound
from proxy.storage.local import AsyncLocalStorage, LocalStorage
from proxy.storage.memory import AsyncMemoryStorage, MemoryStorage
from proxy.storage.options import CacheOptions

pytestmark = pytest.mark.anyio

CLIP = random.Random(20240601).randbytes(100_003)
NOTES = bytes(range(256)) * 16 + b"end"  # 4099 bytes
SOURCE = {"media/clip.mp4": CLIP, "notes.txt": NOTES, "empty.bin": b""}
CLIP_SHA256 = hashlib.sha256(CLIP).hexdigest()


def sha256(chunks: list[bytes]) -> str:
    return hashlib.sha256(b"".join(chunks)).hexdigest()


class ClosableBody(Body, Protocol):
    @property
    def closed(self) -> bool: ...


class AsyncClosableBody(AsyncBody, Protocol):
    @property
    def closed(self) -> bool: ...


class Handle:
    """An opened object of either flavour, driven from async tests."""

    def __init__(self, meta: ObjectMeta, body: ClosableBody | AsyncClosableBody) -> None:
        self._meta = meta
        self._body = body

    @property
    def meta(self) -> ObjectMeta:
        return self._meta

    @property
    def closed(self) -> bool:
        return self._body.closed

    async def read(self, byte_range: ByteRange, chunk_size: int) -> list[bytes]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SyncHandle(Handle):
    def __init__(self, reply: Reply[Body]) -> None:
        body: ClosableBody = reply.body  # type: ignore[assignment]  # every backend here has it
        super().__init__(reply.meta, body)
        self.body = body

    async def read(self, byte_range: ByteRange, chunk_size: int) -> list[bytes]:
        return list(self.body.iter_range(byte_range, chunk_size))

    async def close(self) -> None:
        self.body.close()


class AsyncHandle(Handle):
    def __init__(self, reply: Reply[AsyncBody]) -> None:
        body: AsyncClosableBody = reply.body  # type: ignore[assignment]
        super().__init__(reply.meta, body)
        self.body = body

    async def read(self, byte_range: ByteRange, chunk_size: int) -> list[bytes]:
        return [chunk async for chunk in await self.body.aiter_range(byte_range, chunk_size)]

    async def close(self) -> None:
        await self.body.aclose()


class Opener(Protocol):
    async def __call__(self, key: str) -> Handle: ...


class Counted:
    """A layer over a blocking storage (``open`` in, ``open`` out), as a cache or a router of
    mounts would be: the contract must hold through it unchanged."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.opens = 0

    def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[Body]:
        self.opens += 1
        return self.inner.open(key, hint)

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


class AsyncCounted:
    """The async twin of ``Counted``."""

    def __init__(self, inner: AsyncStorage) -> None:
        self.inner = inner
        self.opens = 0

    async def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[AsyncBody]:
        self.opens += 1
        return await self.inner.open(key, hint)

    async def acheck(self) -> None:
        await self.inner.acheck()

    async def aclose(self) -> None:
        await self.inner.aclose()


def cache_options(root: Path) -> CacheOptions:
    """A slice cache beside ``root``, with slices small enough that reads cross them."""
    return CacheOptions(root.parent / f"{root.name}-cache", 16 * 1024 * 1024, 4096, 60.0)


def make_sync(backend: str, root: Path) -> Storage:
    name, _, layer = backend.partition("+")
    if layer == "cache":  # the slice cache over storage that can be pinned and revalidated
        return open_cache(MemoryStorage(SOURCE), cache_options(root), sync=True)  # type: ignore[return-value]
    storage: Storage = MemoryStorage(SOURCE) if name == "memory" else LocalStorage(root)
    return Counted(storage) if layer else storage


def make_async(backend: str, root: Path) -> AsyncStorage:
    name, _, layer = backend.partition("+")
    if layer == "cache":
        return open_cache(AsyncMemoryStorage(SOURCE), cache_options(root), sync=False)  # type: ignore[return-value]
    storage: AsyncStorage = (
        AsyncMemoryStorage(SOURCE) if name == "memory" else AsyncLocalStorage(root)
    )
    return AsyncCounted(storage) if layer else storage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for key, data in SOURCE.items():
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path


@pytest.fixture(
    params=[
        (backend, flavour)
        for backend in ("memory", "local", "memory+counted", "local+counted", "memory+cache")
        for flavour in ("sync", "async")
    ],
    ids=lambda p: "-".join(p),
)
async def open_handle(request: pytest.FixtureRequest, root: Path) -> AsyncIterator[Opener]:
    """Opens keys of ``SOURCE``; every handle it gives out is closed at teardown."""
    backend, flavour = request.param
    handles: list[Handle] = []
    sync_storage = make_sync(backend, root)
    async_storage = make_async(backend, root)

    async def open_key(key: str) -> Handle:
        handle: Handle
        if flavour == "sync":
            handle = SyncHandle(sync_storage.open(key))
        else:
            handle = AsyncHandle(await async_storage.open(key))
        handles.append(handle)
        return handle

    yield open_key
    for handle in handles:
        await handle.close()
    sync_storage.close()
    await async_storage.aclose()


async def test_meta(open_handle: Opener) -> None:
    handle = await open_handle("media/clip.mp4")
    meta = handle.meta
    assert meta.key == "media/clip.mp4"
    assert meta.size == 100_003
    assert meta.media_type == "video/mp4"
    assert meta.etag is not None
    assert re.fullmatch(r'"[\x21\x23-\x7e]+"', meta.etag)  # strong, quoted (RFC 9110 §8.8.3)
    assert not re.fullmatch(r'"[0-9a-f]{32}"', meta.etag)  # never shaped like an MD5
    assert meta.last_modified is not None
    assert meta.last_modified.tzinfo is UTC
    assert meta.last_modified.microsecond == 0
    await handle.close()


async def test_meta_of_text_and_empty_objects(open_handle: Opener) -> None:
    notes = await open_handle("notes.txt")
    empty = await open_handle("empty.bin")
    assert (notes.meta.size, notes.meta.media_type) == (4099, "text/plain; charset=utf-8")
    assert (empty.meta.size, empty.meta.media_type) == (0, "application/octet-stream")
    assert notes.meta.etag != empty.meta.etag
    assert await empty.read(ByteRange(0, 0), 65536) == []
    await notes.close()
    await empty.close()


@pytest.mark.parametrize(
    ("key", "chunk_size"),
    [("notes.txt", 1), ("notes.txt", 7), ("notes.txt", 65536), ("media/clip.mp4", 4093)]
    + [("media/clip.mp4", 65536), ("media/clip.mp4", 100_003), ("media/clip.mp4", 1 << 20)],
)
async def test_full_read(open_handle: Opener, key: str, chunk_size: int) -> None:
    handle = await open_handle(key)
    chunks = await handle.read(ByteRange(0, handle.meta.size), chunk_size)
    assert sha256(chunks) == hashlib.sha256(SOURCE[key]).hexdigest()
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    await handle.close()


def test_source_digest_is_pinned() -> None:
    # Guards the fixture itself: a change to the generator would silently change every case.
    assert CLIP_SHA256 == hashlib.sha256(CLIP).hexdigest()
    assert len(CLIP) == 100_003
    assert CLIP[:4] == random.Random(20240601).randbytes(4)


SHORT_RANGES = [(0, 1), (1, 2), (100_002, 100_003), (65_535, 65_537), (4_095, 4_200)]
LONG_RANGES = [(0, 100_003), (12_345, 78_901), (1, 100_002)]


@pytest.mark.parametrize(
    ("start", "stop", "chunk_size"),
    [(*r, size) for r in SHORT_RANGES for size in (1, 7, 65536)]
    + [(*r, size) for r in LONG_RANGES for size in (4093, 65536, 1 << 20)],
)
async def test_ranged_read(open_handle: Opener, start: int, stop: int, chunk_size: int) -> None:
    handle = await open_handle("media/clip.mp4")
    chunks = await handle.read(ByteRange(start, stop), chunk_size)
    assert sha256(chunks) == hashlib.sha256(CLIP[start:stop]).hexdigest()
    assert sum(map(len, chunks)) == stop - start
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
    await handle.close()


async def test_small_range_bytes(open_handle: Opener) -> None:
    handle = await open_handle("notes.txt")
    assert await handle.read(ByteRange(4096, 4099), 2) == [b"en", b"d"]
    assert await handle.read(ByteRange(255, 258), 65536) == [b"\xff\x00\x01"]
    await handle.close()


async def test_ranges_reread_independently(open_handle: Opener) -> None:
    # pread-style reads: no hidden file position carried from one range to the next.
    handle = await open_handle("notes.txt")
    assert await handle.read(ByteRange(10, 13), 65536) == [b"\x0a\x0b\x0c"]
    assert await handle.read(ByteRange(0, 2), 65536) == [b"\x00\x01"]
    await handle.close()


async def test_range_past_the_end_is_truncated(open_handle: Opener) -> None:
    handle = await open_handle("notes.txt")
    with pytest.raises(BodyTruncated):
        await handle.read(ByteRange(4000, 4100), 65536)
    await handle.close()


async def test_missing_key(open_handle: Opener) -> None:
    with pytest.raises(ObjectNotFound, match="^no object at this key$"):
        await open_handle("media/missing.mp4")


@pytest.mark.parametrize("key", ["../notes.txt", "media/../notes.txt", "/notes.txt", ""])
async def test_invalid_key(open_handle: Opener, key: str) -> None:
    with pytest.raises(InvalidKey):
        await open_handle(key)


async def test_close_is_idempotent(open_handle: Opener) -> None:
    handle = await open_handle("notes.txt")
    assert handle.closed is False
    await handle.close()
    assert handle.closed is True
    await handle.close()
    assert handle.closed is True
    with pytest.raises(ValueError, match="closed body"):
        await handle.read(ByteRange(0, 1), 1)


async def test_storage_close(root: Path) -> None:
    for storage in (MemoryStorage(), LocalStorage(root)):
        storage.close()
        storage.close()
    for astorage in (AsyncMemoryStorage(), AsyncLocalStorage(root)):
        await astorage.aclose()
        await astorage.aclose()


async def test_protocol_conformance(root: Path) -> None:
    # The annotations make mypy check the classes against the Protocols structurally.
    counted, acounted = Counted(LocalStorage(root)), AsyncCounted(AsyncLocalStorage(root))
    storages: list[Storage] = [MemoryStorage(SOURCE), LocalStorage(root), counted]
    async_storages: list[AsyncStorage] = [
        AsyncMemoryStorage(SOURCE),
        AsyncLocalStorage(root),
        acounted,
    ]
    for storage in storages:
        assert callable(storage.open) and callable(storage.close)
        storage.check()
        reply: Reply[Body] = storage.open("notes.txt")
        assert isinstance(reply.meta, ObjectMeta)
        assert reply.range is None  # nothing fetched with the metadata: a file reads any range
        body: Body = reply.body
        chunks = body.iter_range(ByteRange(0, 3), 2)
        assert iter(chunks) is chunks  # an iterator: each read happens on next()
        assert list(chunks) == [b"\x00\x01", b"\x02"]
        body.close()
    for astorage in async_storages:
        assert inspect.iscoroutinefunction(astorage.open)
        assert inspect.iscoroutinefunction(astorage.aclose)
        await astorage.acheck()
        areply: Reply[AsyncBody] = await astorage.open("notes.txt")
        assert isinstance(areply.meta, ObjectMeta)
        assert areply.range is None
        abody: AsyncBody = areply.body
        # A coroutine that starts the read and returns the chunk iterator.
        assert inspect.iscoroutinefunction(type(abody).aiter_range)
        assert inspect.iscoroutinefunction(abody.aclose)
        iterator: AsyncIterator[bytes] = await abody.aiter_range(ByteRange(0, 3), 2)
        assert [chunk async for chunk in iterator] == [b"\x00\x01", b"\x02"]
        await abody.aclose()
    assert (counted.opens, acounted.opens) == (1, 1)  # the layers saw each open


# The memory double's own promises, relied on by the HTTP-logic tests.


def test_memory_explicit_media_type_and_put() -> None:
    storage = MemoryStorage({"a.bin": (b"abc", "video/mp4"), "b.txt": b"x"})
    old, text = storage.open("a.bin"), storage.open("b.txt")
    assert old.meta.media_type == "video/mp4"
    assert text.meta.media_type == "text/plain; charset=utf-8"
    meta = storage.put("a.bin", b"abcd")
    assert (meta.size, meta.media_type) == (4, "application/octet-stream")
    new = storage.open("a.bin")
    # A body opened before a put keeps the bytes it was opened with, like an S3 GET.
    assert list(old.body.iter_range(ByteRange(0, 3), 2)) == [b"ab", b"c"]
    assert list(new.body.iter_range(ByteRange(0, 4), 4)) == [b"abcd"]
    for reply in (old, text, new):
        reply.body.close()


def test_memory_etag_derives_from_content() -> None:
    storage = AsyncMemoryStorage()
    first = storage.put("a", b"same")
    second = storage.put("b", b"same")
    third = storage.put("a", b"other")
    assert first.etag == second.etag == '"m-0967115f2813a354"'
    assert third.etag != first.etag


def test_memory_rejects_invalid_keys_at_put() -> None:
    with pytest.raises(InvalidKey):
        MemoryStorage({"../x": b""})


# -- listings ----------------------------------------------------------------------------------


class Listings:
    """Lists ``SOURCE`` (every page of a listing) through one backend and flavour, and opens
    its objects through the same storage."""

    def __init__(self, backend: str, flavour: str, root: Path) -> None:
        self.flavour = flavour
        self.sync = make_sync(backend, root)
        self.async_ = make_async(backend, root)

    async def pages(self, prefix: str, recursive: bool, after: str) -> list[list[Listed]]:
        if self.flavour == "sync":
            return list(cast(SyncLister, self.sync).listing(prefix, recursive, after))
        lister = cast(AsyncLister, self.async_)
        return [page async for page in lister.listing(prefix, recursive, after)]

    async def meta(self, key: str) -> ObjectMeta:
        if self.flavour == "sync":
            reply = self.sync.open(key)
            reply.body.close()
            return reply.meta
        areply = await self.async_.open(key)
        await areply.body.aclose()
        return areply.meta


@pytest.fixture(
    params=[
        (backend, flavour)
        for backend in ("memory", "local", "memory+cache")
        for flavour in ("sync", "async")
    ],
    ids=lambda p: "-".join(p),
)
async def listings(request: pytest.FixtureRequest, root: Path) -> AsyncIterator[Listings]:
    backend, flavour = request.param
    made = Listings(backend, flavour, root)
    yield made
    made.sync.close()
    await made.async_.aclose()


def listed(pages: list[list[Listed]]) -> list[str]:
    assert all(pages), "pages are never empty"
    return [listed_name(entry) for page in pages for entry in page]


@pytest.mark.parametrize(
    ("prefix", "recursive", "after", "expected"),
    [
        ("", False, "", ["empty.bin", "media/", "notes.txt"]),
        ("", True, "", ["empty.bin", "media/clip.mp4", "notes.txt"]),
        ("media/", False, "", ["media/clip.mp4"]),
        ("me", False, "", ["media/"]),  # a prefix, not a folder: S3's
        ("no", True, "", ["notes.txt"]),
        ("", False, "empty.bin", ["media/", "notes.txt"]),
        ("", False, "media/", ["notes.txt"]),
        ("", True, "media/a", ["media/clip.mp4", "notes.txt"]),
        ("", True, "media/clip.mp4", ["notes.txt"]),
        ("missing/", False, "", []),
        ("notes.txt/", True, "", []),
    ],
)
async def test_listing(
    listings: Listings, prefix: str, recursive: bool, after: str, expected: list[str]
) -> None:
    assert listed(await listings.pages(prefix, recursive, after)) == expected


async def test_listed_objects_carry_the_metadata_open_gives(listings: Listings) -> None:
    (page,) = await listings.pages("", True, "")
    assert [entry.key for entry in page if isinstance(entry, ObjectMeta)] == [
        "empty.bin",
        "media/clip.mp4",
        "notes.txt",
    ]
    for entry in page:
        assert entry == await listings.meta(listed_name(entry))


def test_folded_lists_what_continues_past_the_next_slash_once() -> None:
    metas = [ObjectMeta(key, 1) for key in ["a/b", "a/c/d", "a/c/e", "a/cd", "a/d/"]]
    names = [listed_name(entry) for entry in folded(metas, "a/")]
    assert names == ["a/b", "a/c/", "a/cd", "a/d/"]
    assert [listed_name(entry) for entry in folded([Folder("x/y/"), *metas], "")] == ["x/", "a/"]
