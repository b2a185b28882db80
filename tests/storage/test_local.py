"""The local-disk backend's own promises: paths stay under the root, metadata from the open file."""

from __future__ import annotations

import errno
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import anyio.to_thread
import pytest

from proxy.http.codec import ByteRange
from proxy.storage import local
from proxy.storage.base import Body, ReadyChunks, Reply
from proxy.storage.errors import (
    AccessDenied,
    BackendUnavailable,
    BodyTruncated,
    ObjectNotFound,
    StorageError,
)
from proxy.storage.local import AsyncLocalBody, AsyncLocalStorage, LocalStorage, map_os_errors

DATA = bytes(range(256)) * 40  # 10240 bytes


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "data.bin").write_bytes(DATA)
    (tmp_path / "secret.txt").write_bytes(b"outside the root")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(b"outside the root")
    return root


def read_all(reply: Reply[Body], chunk_size: int = 65536) -> bytes:
    return b"".join(reply.body.iter_range(ByteRange(0, reply.meta.size), chunk_size))


def test_reads_file_in_exact_chunks(storage: LocalStorage) -> None:
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    chunks = list(body.iter_range(ByteRange(10, 10240), 4096))
    body.close()
    assert [len(chunk) for chunk in chunks] == [4096, 4096, 2038]
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(DATA[10:]).hexdigest()


def test_symlink_inside_root_is_served(storage: LocalStorage, root: Path) -> None:
    (root / "link.bin").symlink_to(root / "dir" / "data.bin")
    (root / "alias").symlink_to("dir")
    for key in ("link.bin", "alias/data.bin"):
        body_reply = storage.open(key)
        body = body_reply.body
        assert read_all(body_reply) == DATA
        assert body_reply.meta.media_type == "application/octet-stream"
        body.close()


def test_symlink_outside_root_is_not_found(storage: LocalStorage, root: Path) -> None:
    (root / "escape.txt").symlink_to(root.parent / "secret.txt")
    with pytest.raises(ObjectNotFound):
        storage.open("escape.txt")


def test_symlinked_directory_escaping_root_is_not_found(storage: LocalStorage, root: Path) -> None:
    (root / "escape").symlink_to(root.parent / "outside")
    with pytest.raises(ObjectNotFound):
        storage.open("escape/secret.txt")


def test_link_to_the_root_itself_is_a_directory(storage: LocalStorage, root: Path) -> None:
    (root / "self").symlink_to(root)
    with pytest.raises(ObjectNotFound):
        storage.open("self")


def test_symlink_loop_is_not_found(storage: LocalStorage, root: Path) -> None:
    (root / "loop").symlink_to("loop")
    with pytest.raises(ObjectNotFound):
        storage.open("loop")


def test_directory_is_not_found_and_fd_is_closed(storage: LocalStorage) -> None:
    before = open_fds()
    with pytest.raises(ObjectNotFound):
        storage.open("dir")
    assert open_fds() == before


def test_file_below_a_file_is_not_found(storage: LocalStorage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.open("dir/data.bin/x")  # NotADirectoryError


def test_name_too_long_is_not_found(storage: LocalStorage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.open("x" * 300)  # ENAMETOOLONG: longer than NAME_MAX, shorter than the key limit


@pytest.mark.timeout(10)
def test_fifo_is_not_found_without_hanging(storage: LocalStorage, root: Path) -> None:
    os.mkfifo(root / "pipe.mp4")
    before = open_fds()
    with pytest.raises(ObjectNotFound):
        storage.open("pipe.mp4")
    assert open_fds() == before


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_async_fifo_and_escape_are_not_found(root: Path) -> None:
    os.mkfifo(root / "pipe.mp4")
    (root / "escape.txt").symlink_to(root.parent / "secret.txt")
    storage = AsyncLocalStorage(root)
    for key in ("pipe.mp4", "escape.txt", "dir"):
        with pytest.raises(ObjectNotFound):
            await storage.open(key)
    await storage.aclose()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_access_denied(storage: LocalStorage, root: Path) -> None:
    (root / "dir" / "data.bin").chmod(0)
    with pytest.raises(AccessDenied):
        storage.open("dir/data.bin")


@pytest.mark.parametrize(
    ("error", "mapped"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/srv/x"), ObjectNotFound),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/srv/x"), ObjectNotFound),
        (OSError(errno.ENAMETOOLONG, "File name too long", "/srv/x"), ObjectNotFound),
        (OSError(errno.ELOOP, "Too many levels of symbolic links", "/srv/x"), ObjectNotFound),
        (PermissionError(errno.EACCES, "Permission denied", "/srv/x"), AccessDenied),
        (PermissionError(errno.EPERM, "Operation not permitted", "/srv/x"), AccessDenied),
        (OSError(errno.EIO, "Input/output error", "/srv/x"), BackendUnavailable),
        (OSError(errno.ESTALE, "Stale file handle", "/srv/x"), BackendUnavailable),
    ],
)
def test_map_os_errors(error: OSError, mapped: type[StorageError]) -> None:
    with pytest.raises(mapped) as info, map_os_errors():
        raise error
    assert info.value.__cause__ is error
    assert "/srv" not in str(info.value)


def test_map_os_errors_message_for_unavailable() -> None:
    with pytest.raises(BackendUnavailable) as info, map_os_errors():
        raise OSError(errno.EIO, "Input/output error", "/srv/x")
    assert str(info.value) == "the storage backend is unavailable (Input/output error)"


def test_map_os_errors_leaves_other_errors_alone() -> None:
    with pytest.raises(KeyError), map_os_errors():
        raise KeyError("x")


def test_error_messages_hold_no_path(storage: LocalStorage, root: Path) -> None:
    (root / "escape.txt").symlink_to(root.parent / "secret.txt")
    for key in ("missing.mp4", "escape.txt", "dir", "x" * 300, "dir/data.bin/x"):
        with pytest.raises(ObjectNotFound) as info:
            storage.open(key)
        assert str(info.value) == "no object at this key"
        assert str(root.parent) not in str(info.value)


def test_truncated_while_reading(storage: LocalStorage, root: Path) -> None:
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    chunks = body.iter_range(ByteRange(0, 10240), 4096)
    assert next(chunks) == DATA[:4096]
    os.truncate(root / "dir" / "data.bin", 5000)
    assert next(chunks) == DATA[4096:5000]  # what is left is sent, then the stream aborts
    with pytest.raises(BodyTruncated):
        next(chunks)
    body.close()


@pytest.mark.anyio
async def test_async_truncated_while_reading(root: Path) -> None:
    storage = AsyncLocalStorage(root)
    body_reply = await storage.open("dir/data.bin")
    body = body_reply.body
    assert isinstance(body, AsyncLocalBody)
    os.truncate(root / "dir" / "data.bin", 100)
    assert body_reply.meta.size == 10240  # metadata stays what was true at open
    received = []
    with pytest.raises(BodyTruncated):
        async for chunk in await body.aiter_range(ByteRange(0, 10240), 64):
            received.append(chunk)
    assert b"".join(received) == DATA[:100]
    await body.aclose()
    assert body.closed


def etag_of(storage: LocalStorage, key: str) -> str | None:
    body_reply = storage.open(key)
    body = body_reply.body
    body.close()
    return body_reply.meta.etag


def test_etag_changes_on_same_size_rewrite(storage: LocalStorage, root: Path) -> None:
    path = root / "dir" / "data.bin"
    st = path.stat()
    first = etag_of(storage, "dir/data.bin")
    assert first == f'"{10240:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"'
    path.write_bytes(DATA[::-1])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a clock may not tick in between
    assert path.stat().st_ino == st.st_ino
    second = etag_of(storage, "dir/data.bin")
    assert second is not None and second != first
    assert second.startswith(f'"{10240:x}-')


def test_etag_changes_when_file_is_replaced(storage: LocalStorage, root: Path) -> None:
    path = root / "dir" / "data.bin"
    st = path.stat()
    first = etag_of(storage, "dir/data.bin")
    replacement = root / "dir" / "new.tmp"
    replacement.write_bytes(DATA)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the inode differs
    os.replace(replacement, path)
    assert path.stat().st_ino != st.st_ino
    assert etag_of(storage, "dir/data.bin") != first


def test_last_modified_is_whole_utc_seconds(storage: LocalStorage, root: Path) -> None:
    path = root / "dir" / "data.bin"
    os.utime(path, ns=(0, 1_700_000_000_987_654_321))
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    body.close()
    assert body_reply.meta.last_modified == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_close_releases_the_descriptor(storage: LocalStorage) -> None:
    before = open_fds()
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    assert len(open_fds() - before) == 2  # the body's, and the one kept for the next request
    assert read_all(body_reply) == DATA
    body.close()
    body.close()
    assert len(open_fds() - before) == 1
    storage.close()
    assert open_fds() == before


def test_without_open_files_only_the_body_holds_a_descriptor(root: Path) -> None:
    storage = LocalStorage(root, open_files=0)
    before = open_fds()
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    assert len(open_fds() - before) == 1
    assert read_all(body_reply) == DATA
    body.close()
    assert open_fds() == before


@pytest.mark.anyio
async def test_async_close_releases_the_descriptor(root: Path) -> None:
    storage = AsyncLocalStorage(root)
    before = open_fds()
    body_reply = await storage.open("dir/data.bin")
    body = body_reply.body
    assert len(open_fds() - before) == 2
    await body.aclose()
    await body.aclose()
    assert len(open_fds() - before) == 1
    await storage.aclose()
    assert open_fds() == before


def test_root_is_resolved_once(tmp_path: Path, root: Path) -> None:
    (tmp_path / "root-link").symlink_to(root)
    storage = LocalStorage(tmp_path / "root-link")
    assert storage.root == str(root)
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    assert read_all(body_reply, 1000) == DATA
    body.close()


@pytest.mark.parametrize("name", ["missing", "root/dir/data.bin"])
def test_root_must_be_an_existing_directory(tmp_path: Path, root: Path, name: str) -> None:
    with pytest.raises(ValueError, match="storage root is not an existing directory") as info:
        LocalStorage(tmp_path / name)
    assert not isinstance(info.value, StorageError)
    with pytest.raises(ValueError, match="storage root is not an existing directory"):
        AsyncLocalStorage(str(tmp_path / name))


def test_percent_names_are_plain_file_names(storage: LocalStorage, root: Path) -> None:
    (root / "%2e%2e").write_bytes(b"weird")
    body_reply = storage.open("%2e%2e")
    body = body_reply.body
    assert read_all(body_reply) == b"weird"
    body.close()


@pytest.mark.anyio
async def test_readiness_fails_when_the_root_disappears(tmp_path: Path) -> None:
    root = tmp_path / "gone"
    root.mkdir()
    storage, astorage = LocalStorage(root), AsyncLocalStorage(root)
    storage.check()
    await astorage.acheck()
    root.rmdir()
    with pytest.raises(StorageError):
        storage.check()
    with pytest.raises(StorageError):
        await astorage.acheck()


@pytest.fixture(params=["proc", "realpath"])
def link_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of keeping links under the root: /proc/self/fd after the open, or (without
    /proc) realpath before it."""
    if request.param == "realpath":
        monkeypatch.setattr(local, "_HAVE_FD_PATHS", False)
    value: str = request.param
    return value


def test_links_are_checked_either_way(link_check: str, storage: LocalStorage, root: Path) -> None:
    (root / "link.bin").symlink_to(root / "dir" / "data.bin")
    (root / "escape.txt").symlink_to(root.parent / "secret.txt")
    (root / "escape").symlink_to(root.parent / "outside")
    body_reply = storage.open("link.bin")
    body = body_reply.body
    assert read_all(body_reply) == DATA
    body.close()
    fds = open_fds()
    for key in ("escape.txt", "escape/x.txt", "dir"):
        with pytest.raises(ObjectNotFound):
            storage.open(key)
    assert open_fds() == fds  # refused after the open: the descriptor is closed again


async def read_async(storage: AsyncLocalStorage, key: str, chunk_size: int) -> bytes:
    body_reply = await storage.open(key)
    body = body_reply.body
    try:
        chunks = await body.aiter_range(ByteRange(0, body_reply.meta.size), chunk_size)
        return b"".join([chunk async for chunk in chunks])
    finally:
        await body.aclose()


@pytest.mark.anyio
async def test_async_reads_from_the_page_cache_take_no_thread(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = AsyncLocalStorage(root)
    assert await read_async(storage, "dir/data.bin", 4096) == DATA  # now in the page cache

    async def no_thread(*args: object, **kwargs: object) -> object:
        raise AssertionError("a worker thread was used")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)
    assert await read_async(storage, "dir/data.bin", 4096) == DATA


@pytest.mark.anyio
async def test_async_reads_fall_back_to_a_thread(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a read that would wait for the disk (EAGAIN), or a filesystem without RWF_NOWAIT
    # (EOPNOTSUPP), does: the same bytes, read in a worker thread.
    calls: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(*args: object, **kwargs: object) -> object:
        calls.append(args[0])
        return await run_sync(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(local, "_RWF_NOWAIT", -1)  # an invalid flag: preadv fails every time
    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    assert await read_async(AsyncLocalStorage(root), "dir/data.bin", 4096) == DATA
    assert len(calls) == -(-len(DATA) // 4096)  # one thread read per chunk


def test_sync_chunks_the_page_cache_holds_are_ready(storage: LocalStorage) -> None:
    """What the response reads on the event loop for the sync flavour (no worker thread)."""
    assert read_all(storage.open("dir/data.bin")) == DATA  # now in the page cache
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    chunks = body.iter_range(ByteRange(10, 10240), 4096)
    assert isinstance(chunks, ReadyChunks)
    ready = [chunks.ready(), chunks.ready(), chunks.ready()]
    assert [len(chunk or b"") for chunk in ready] == [4096, 4096, 2038]
    assert (chunks.ready(), list(chunks)) == (b"", [])  # the end
    assert b"".join(chunk or b"" for chunk in ready) == DATA[10:]
    closed = body.iter_range(ByteRange(0, 10), 4096)
    body.close()
    assert isinstance(closed, ReadyChunks)
    with pytest.raises(ValueError):  # closed: the same error as a blocking read's
        closed.ready()


def test_sync_chunks_not_ready_are_read_blocking(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "_RWF_NOWAIT", -1)  # preadv2 fails: as if nothing were cached
    body_reply = storage.open("dir/data.bin")
    body = body_reply.body
    chunks = body.iter_range(ByteRange(0, 10240), 4096)
    assert isinstance(chunks, ReadyChunks)
    assert chunks.ready() is None
    first = next(chunks)
    monkeypatch.setattr(local, "_RWF_NOWAIT", os.RWF_NOWAIT)
    assert first + (chunks.ready() or b"") + b"".join(chunks) == DATA
    body.close()
