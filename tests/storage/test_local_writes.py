"""Writes to local disk (``proxy.storage.localwrite``), both twins, on real filesystems: bodies
stored whole or not at all, nothing visible before commit, nothing left after abort or a
failure (a full tmpfs, a read-only remount, an unprivileged process), If-None-Match and
If-Match raced by threads and by processes, deletes that take empty folders with them."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from proxy.errorhandlers import STATUS_BY_ERROR
from proxy.http.codec import ByteRange
from proxy.storage import localwrite
from proxy.storage.base import Folder, ObjectMeta
from proxy.storage.errors import (
    AccessDenied,
    InsufficientStorage,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)
from proxy.storage.local import (
    TEMPORARY_PREFIX,
    XATTR_MEDIA_TYPE,
    AsyncLocalStorage,
    LocalStorage,
    stored_metadata,
)
from proxy.storage.localwrite import AsyncLocalWriter, LocalWriter, open_writer
from proxy.storage.options import LocalOptions
from proxy.storage.writes import NO_CONDITIONS, NewObject, WriteConditions, Written

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
OLD = b"the old version " * 4096  # 64 KiB
NEW = b"THE NEW VERSION! " * 5000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def batches(data: bytes, seed: int = 25) -> Iterator[bytes]:
    """``data`` in uneven batches of up to ~1.5 MiB (never empty), as the HTTP layer sends."""
    rng = random.Random(seed)
    offset = 0
    while offset < len(data):
        size = rng.randint(1, 3 * MIB // 2)
        yield data[offset : offset + size]
        offset += size


def tree(root: Path) -> dict[str, int]:
    """Everything below ``root`` (hidden names too): path -> size, folders as -1."""
    found: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = -1
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = os.lstat(path).st_size
    return found


class Upload:
    """One upload of either flavour, behind async methods."""

    def __init__(self, upload: localwrite.LocalUpload | localwrite.AsyncLocalUpload) -> None:
        self.inner = upload

    async def write(self, data: bytes) -> None:
        if isinstance(self.inner, localwrite.LocalUpload):
            self.inner.write(data)
        else:
            await self.inner.write(data)

    async def commit(self) -> Written:
        if isinstance(self.inner, localwrite.LocalUpload):
            return self.inner.commit()
        return await self.inner.commit()

    async def abort(self) -> None:
        if isinstance(self.inner, localwrite.LocalUpload):
            self.inner.abort()
        else:
            await self.inner.abort()


class Twin:
    """A writer and the storage it writes for, of one flavour, behind async methods: each test
    runs on both (the blocking one called straight from the test's event loop)."""

    def __init__(self, root: Path, sync: bool) -> None:
        self.root = root
        self.sync = sync
        if sync:
            self.storage: LocalStorage | AsyncLocalStorage = LocalStorage(root)
        else:
            self.storage = AsyncLocalStorage(root)
        self.writer = open_writer(LocalOptions(root, sync=sync), self.storage)

    async def begin(self, key: str, new: NewObject) -> Upload:
        if isinstance(self.writer, LocalWriter):
            return Upload(self.writer.begin(key, new))
        return Upload(await self.writer.begin(key, new))

    async def put(
        self,
        key: str,
        data: bytes,
        media_type: str = "application/octet-stream",
        conditions: WriteConditions = NO_CONDITIONS,
        declared: bool = True,
    ) -> Written:
        length = len(data) if declared else None  # Content-Length, or a chunked body
        upload = await self.begin(key, NewObject(media_type, length, conditions))
        try:
            for batch in batches(data):
                await upload.write(batch)
            return await upload.commit()
        finally:
            await upload.abort()  # a no-op after a commit

    async def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None:
        if isinstance(self.writer, LocalWriter):
            self.writer.delete(key, conditions)
        else:
            await self.writer.delete(key, conditions)

    async def read(self, key: str) -> tuple[ObjectMeta, bytes]:
        if isinstance(self.storage, LocalStorage):
            reply = self.storage.open(key)
            try:
                data = b"".join(reply.body.iter_range(ByteRange(0, reply.meta.size), MIB))
            finally:
                reply.body.close()
            return reply.meta, data
        areply = await self.storage.open(key)
        try:
            chunks = await areply.body.aiter_range(ByteRange(0, areply.meta.size), MIB)
            data = b"".join([chunk async for chunk in chunks])
        finally:
            await areply.body.aclose()
        return areply.meta, data

    async def listing(self, prefix: str = "", recursive: bool = True) -> list[str]:
        if isinstance(self.storage, LocalStorage):
            pages = list(self.storage.listing(prefix, recursive))
        else:
            pages = [page async for page in self.storage.listing(prefix, recursive)]
        return [e.prefix if isinstance(e, Folder) else e.key for page in pages for e in page]

    def close(self) -> None:
        self.storage.open_files.close()


@pytest.fixture(params=["tmpfile", "named"])
def temporaries(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Bodies in an O_TMPFILE, or in a named temporary (filesystems without O_TMPFILE)."""
    monkeypatch.setattr(localwrite, "USE_TMPFILE", request.param == "tmpfile")
    return str(request.param)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "old.bin").write_bytes(OLD)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(b"outside the root")
    return root


@pytest.fixture(params=["sync", "async"])
def twin(request: pytest.FixtureRequest, root: Path, temporaries: str) -> Iterator[Twin]:
    twin = Twin(root, request.param == "sync")
    yield twin
    twin.close()


@pytest.mark.parametrize("size", [0, 1, 5 * MIB + 13])
async def test_bodies_are_stored_whole(twin: Twin, size: int) -> None:
    data = random.Random(size).randbytes(size)

    written = await twin.put("a/b/c.mp4", data)

    meta, stored = await twin.read("a/b/c.mp4")
    assert sha256(stored) == sha256(data)
    assert written.created and written.parts == 1
    assert written.meta == meta  # a GET right after answers the same ETag, size and date
    assert meta.size == size

    again = await twin.put("a/b/c.mp4", data[::-1])

    meta, stored = await twin.read("a/b/c.mp4")
    assert sha256(stored) == sha256(data[::-1])
    assert not again.created
    assert again.meta.etag == meta.etag != written.meta.etag


async def test_nothing_is_visible_before_commit(twin: Twin, root: Path, temporaries: str) -> None:
    before = await twin.listing()
    upload = await twin.begin("new/folder/clip.mp4", NewObject("video/mp4"))
    await upload.write(NEW[:1000])

    with pytest.raises(ObjectNotFound):
        await twin.read("new/folder/clip.mp4")
    assert await twin.listing() == before == ["dir/old.bin"]
    assert await twin.listing("", recursive=False) == ["dir/"]  # no empty "new/" folder
    hidden = [name for name in tree(root) if TEMPORARY_PREFIX in name]
    assert len(hidden) == (1 if temporaries == "named" else 0)  # O_TMPFILE: no name at all
    for name in hidden:
        with pytest.raises(InvalidKey):  # no key names a temporary file
            await twin.read(name)

    await upload.write(NEW[1000:])
    await upload.commit()

    meta, stored = await twin.read("new/folder/clip.mp4")
    assert sha256(stored) == sha256(NEW)
    assert await twin.listing() == ["dir/old.bin", "new/folder/clip.mp4"]
    assert not [name for name in tree(root) if TEMPORARY_PREFIX in name]


async def test_a_replace_serves_the_old_version_whole_until_commit(twin: Twin) -> None:
    upload = await twin.begin("dir/old.bin", NewObject("application/octet-stream"))
    await upload.write(NEW[: len(NEW) // 2])
    old_meta, during = await twin.read("dir/old.bin")
    assert sha256(during) == sha256(OLD)

    if isinstance(twin.storage, LocalStorage):  # a response that started before the commit
        reply = twin.storage.open("dir/old.bin")
        await upload.write(NEW[len(NEW) // 2 :])
        written = await upload.commit()
        late = b"".join(reply.body.iter_range(ByteRange(0, reply.meta.size), 4096))
        reply.body.close()
        assert sha256(late) == sha256(OLD)
    else:
        await upload.write(NEW[len(NEW) // 2 :])
        written = await upload.commit()

    meta, after = await twin.read("dir/old.bin")
    assert sha256(after) == sha256(NEW)
    assert meta.etag == written.meta.etag != old_meta.etag
    assert not written.created


async def test_abort_leaves_the_directory_as_it_was(twin: Twin, root: Path) -> None:
    before = tree(root)
    for key in ("dir/old.bin", "dir/new.bin", "deep/new/folders/x.bin"):
        upload = await twin.begin(key, NewObject("application/octet-stream"))
        await upload.write(NEW)
        await upload.abort()
        await upload.abort()  # idempotent

        assert tree(root) == before
    _, stored = await twin.read("dir/old.bin")
    assert sha256(stored) == sha256(OLD)


async def test_abort_after_commit_changes_nothing(twin: Twin, root: Path) -> None:
    upload = await twin.begin("x/y.bin", NewObject("application/octet-stream"))
    await upload.write(b"1")
    await upload.commit()
    after = tree(root)

    await upload.abort()

    assert tree(root) == after
    assert (await twin.read("x/y.bin"))[1] == b"1"


async def test_a_read_after_a_write_never_gets_the_cached_old_file(twin: Twin) -> None:
    old, _ = await twin.read("dir/old.bin")  # now a kept descriptor of the old file
    assert len(twin.storage.open_files) == 1

    written = await twin.put("dir/old.bin", NEW)

    assert len(twin.storage.open_files) == 0  # forgotten: the old file's space is free
    meta, stored = await twin.read("dir/old.bin")
    assert sha256(stored) == sha256(NEW)
    assert meta.etag == written.meta.etag != old.etag

    await twin.delete("dir/old.bin")

    with pytest.raises(ObjectNotFound):
        await twin.read("dir/old.bin")


async def test_if_none_match_refuses_an_existing_key_at_once(twin: Twin, root: Path) -> None:
    before = tree(root)
    exists = WriteConditions(if_none_match=True)
    with pytest.raises(PreconditionFailed):
        await twin.begin("dir/old.bin", NewObject("text/plain", conditions=exists))
    assert tree(root) == before

    written = await twin.put("new/k.bin", b"first", conditions=exists)
    assert written.created
    with pytest.raises(PreconditionFailed):
        await twin.put("new/k.bin", b"second", conditions=exists)
    assert (await twin.read("new/k.bin"))[1] == b"first"


async def test_if_none_match_is_checked_again_at_commit(twin: Twin, root: Path) -> None:
    exists = WriteConditions(if_none_match=True)
    late = await twin.begin("dir/k.bin", NewObject("text/plain", conditions=exists))
    await late.write(b"late")
    await twin.put("dir/k.bin", b"early")

    with pytest.raises(PreconditionFailed):
        await late.commit()
    await late.abort()

    assert (await twin.read("dir/k.bin"))[1] == b"early"
    assert sorted(tree(root)) == ["dir/", "dir/k.bin", "dir/old.bin"]


async def test_if_match(twin: Twin, root: Path) -> None:
    current, _ = await twin.read("dir/old.bin")
    wrong = WriteConditions(if_match='"0-0-0"')
    right = WriteConditions(if_match=current.etag)
    before = tree(root)

    with pytest.raises(PreconditionFailed):  # at once: the body is never read
        await twin.begin("dir/old.bin", NewObject("text/plain", conditions=wrong))
    with pytest.raises(PreconditionFailed):  # nothing stored: nothing matches
        await twin.begin("dir/none.bin", NewObject("text/plain", conditions=right))
    assert tree(root) == before

    upload = await twin.begin("dir/old.bin", NewObject("text/plain", conditions=right))
    await upload.write(b"mine")
    await twin.put("dir/old.bin", b"theirs")  # replaced between the begin and the commit
    with pytest.raises(PreconditionFailed):
        await upload.commit()
    await upload.abort()
    assert (await twin.read("dir/old.bin"))[1] == b"theirs"

    theirs, _ = await twin.read("dir/old.bin")
    written = await twin.put("dir/old.bin", NEW, conditions=WriteConditions(theirs.etag))
    assert not written.created
    assert sha256((await twin.read("dir/old.bin"))[1]) == sha256(NEW)
    assert sorted(tree(root)) == ["dir/", "dir/old.bin"]


async def race(twin: Twin, key: str, conditions: WriteConditions, count: int) -> list[object]:
    """``count`` uploads of ``key`` that all begin, then all commit at once: each one's
    ``Written`` or error, in the order of their bodies (b"body 0", b"body 1", ...)."""
    uploads = [
        await twin.begin(key, NewObject("text/plain", conditions=conditions)) for _ in range(count)
    ]
    for number, upload in enumerate(uploads):
        await upload.write(f"body {number}".encode())
    results: list[object] = [None] * count
    if twin.sync:  # threads, released together by a barrier
        barrier = threading.Barrier(count, timeout=30)

        def commit(number: int) -> None:
            barrier.wait()
            try:
                blocking = uploads[number].inner
                assert isinstance(blocking, localwrite.LocalUpload)
                results[number] = blocking.commit()
            except StorageError as exc:
                results[number] = exc

        threads = [threading.Thread(target=commit, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    else:  # tasks: their commits run in worker threads at the same time

        async def acommit(number: int) -> None:
            try:
                results[number] = await uploads[number].commit()
            except StorageError as exc:
                results[number] = exc

        async with anyio.create_task_group() as tasks:
            for number in range(count):
                tasks.start_soon(acommit, number)
    for upload in uploads:
        await upload.abort()
    return results


async def test_if_none_match_racing_writers_one_wins(twin: Twin, root: Path) -> None:
    for round_ in range(3):
        key = f"race/{round_}.txt"
        results = await race(twin, key, WriteConditions(if_none_match=True), 4)

        won = [n for n, result in enumerate(results) if isinstance(result, Written)]
        assert len(won) == 1, results
        assert all(isinstance(r, PreconditionFailed) for r in results if not isinstance(r, Written))
        assert (await twin.read(key))[1] == f"body {won[0]}".encode()
    assert sorted(tree(root)) == [
        "dir/",
        "dir/old.bin",
        "race/",
        "race/0.txt",
        "race/1.txt",
        "race/2.txt",
    ]


async def test_if_match_racing_writers_one_wins(twin: Twin) -> None:
    for _ in range(3):
        current, _ = await twin.read("dir/old.bin")
        results = await race(twin, "dir/old.bin", WriteConditions(if_match=current.etag), 4)

        won = [n for n, result in enumerate(results) if isinstance(result, Written)]
        assert len(won) == 1, results
        assert (await twin.read("dir/old.bin"))[1] == f"body {won[0]}".encode()


async def test_where_folders_cannot_be_flocked_a_process_lock_stands_in(
    twin: Twin, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS refuses flock on a folder opened for reading (EBADF): commits and deletes go on,
    serialised within the process (an unit test of that error path: no NFS here)."""

    def refuse(fd: int, operation: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", refuse)
    for _ in range(3):
        current, _ = await twin.read("dir/old.bin")
        results = await race(twin, "dir/old.bin", WriteConditions(if_match=current.etag), 4)

        won = [n for n, result in enumerate(results) if isinstance(result, Written)]
        assert len(won) == 1, results
    await twin.put("a/b/c.bin", b"x")
    await twin.delete("a/b/c.bin")
    assert sorted(tree(root)) == ["dir/", "dir/old.bin"]


RACER = textwrap.dedent(
    """
    import os, sys, time
    from proxy.storage import localwrite
    from proxy.storage.errors import PreconditionFailed
    from proxy.storage.local import LocalStorage
    from proxy.storage.writes import NewObject, WriteConditions

    root, key, mode, temporaries, ready, go, body = sys.argv[1:]
    localwrite.USE_TMPFILE = temporaries == "tmpfile"
    writer = localwrite.LocalWriter(LocalStorage(root))
    if mode == "if-none-match":
        conditions = WriteConditions(if_none_match=True)
    else:
        conditions = WriteConditions(if_match=LocalStorage(root).open(key).meta.etag)
    upload = writer.begin(key, NewObject("text/plain", conditions=conditions))
    upload.write(body.encode())
    open(ready, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        pass  # a spin, not a sleep: both commits start within microseconds of each other
    try:
        upload.commit()
        print("won")
    except PreconditionFailed:
        print("lost")
    finally:
        upload.abort()
    """
)


@pytest.mark.parametrize("mode", ["if-none-match", "if-match"])
async def test_processes_racing_one_wins(tmp_path: Path, temporaries: str, mode: str) -> None:
    """Four processes commit the same key at once: the link (If-None-Match) or the folder's
    flock (If-Match) lets exactly one through. On a tmpfs where this can mount one: there an
    fsync costs nothing, so the commits' critical sections really overlap."""
    count = 4
    with contextlib.ExitStack() as stack:
        try:
            root = stack.enter_context(tmpfs(tmp_path / "race", "16m"))
        except pytest.skip.Exception:
            root = tmp_path / "race"  # the disk: the race is still checked, less sharply
        (root / "dir").mkdir()
        (root / "dir" / "old.bin").write_bytes(OLD)
        key = "dir/old.bin" if mode == "if-match" else "dir/new.txt"
        go = tmp_path / "go"
        processes = []
        for number in range(count):
            ready = tmp_path / f"ready{number}"
            argv = [str(root), key, mode, temporaries, str(ready), str(go), f"process {number}"]
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", RACER, *argv], stdout=subprocess.PIPE, text=True
                )
            )
        try:
            deadline = time.monotonic() + 60
            while not all((tmp_path / f"ready{n}").exists() for n in range(count)):
                assert time.monotonic() < deadline, "the racers never got ready"
                assert all(p.poll() is None for p in processes), "a racer died"
                await anyio.sleep(0.01)
            go.touch()
            outcomes = [p.communicate(timeout=60)[0].strip() for p in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()

        assert sorted(outcomes) == ["lost"] * (count - 1) + ["won"]
        winner = outcomes.index("won")
        assert (root / key).read_bytes() == f"process {winner}".encode()
        assert sorted(tree(root)) == sorted({"dir/", "dir/old.bin", f"{key}"})


async def test_delete(twin: Twin, root: Path) -> None:
    await twin.put("a/b/c/clip.mp4", NEW)
    await twin.put("a/keep.txt", b"keep")
    await twin.read("a/b/c/clip.mp4")  # a kept descriptor, forgotten by the delete

    with pytest.raises(ObjectNotFound):
        await twin.delete("a/b/c/none.mp4")
    with pytest.raises(ObjectNotFound):
        await twin.delete("a/b")  # a folder is no object
    with pytest.raises(ObjectNotFound):
        await twin.delete("a/keep.txt/x")  # below a file
    with pytest.raises(PreconditionFailed):
        await twin.delete("a/b/c/clip.mp4", WriteConditions(if_match='"1-1-1"'))
    assert sha256((await twin.read("a/b/c/clip.mp4"))[1]) == sha256(NEW)

    meta, _ = await twin.read("a/b/c/clip.mp4")
    await twin.delete("a/b/c/clip.mp4", WriteConditions(if_match=meta.etag))

    with pytest.raises(ObjectNotFound):
        await twin.read("a/b/c/clip.mp4")
    assert sorted(tree(root)) == ["a/", "a/keep.txt", "dir/", "dir/old.bin"]  # b/c/ went too

    await twin.delete("a/keep.txt")
    await twin.delete("dir/old.bin")
    assert tree(root) == {}  # every folder emptied went, never the root
    assert root.is_dir()


async def test_a_commit_into_a_folder_removed_meanwhile_makes_it_again(
    twin: Twin, root: Path, temporaries: str
) -> None:
    upload = await twin.begin("a/b/late.bin", NewObject("application/octet-stream"))
    await upload.write(NEW)
    await twin.put("a/b/other.bin", b"x")
    await twin.delete("a/b/other.bin")  # removes a/b/ unless the upload has a name in it
    assert (root / "a").exists() == (temporaries == "named")

    written = await upload.commit()

    meta, stored = await twin.read("a/b/late.bin")
    assert sha256(stored) == sha256(NEW)
    assert meta.etag == written.meta.etag


async def test_keys_that_cannot_be_folders_or_leave_the_root(twin: Twin, root: Path) -> None:
    outside = root.parent / "outside"
    (root / "escape").symlink_to(outside)
    (root / "alias").symlink_to("dir")
    (root / "loop").symlink_to("loop")
    before = tree(root)
    outside_before = tree(outside)
    new = NewObject("text/plain")

    for key, detail in [
        ("escape/x.txt", "leads outside"),
        ("escape/new/x.txt", "leads outside"),
        ("dir/old.bin/x.txt", "is a file"),
        ("dir", "names a folder"),
        ("../x.txt", "'..'"),
        ("a//b", "empty"),
    ]:
        with pytest.raises(InvalidKey, match=detail) as raised:
            await twin.begin(key, new)
        assert str(root) not in str(raised.value)
    long = "n" * 300  # a key may be 1024 bytes, a file name only 255
    for key in (f"fresh/{long}/x.txt", f"fresh/deeper/{long}", "loop/x.txt"):
        with pytest.raises(InvalidKey) as raised:
            await twin.begin(key, new)
        assert str(root) not in str(raised.value)
    for key in ("escape/secret.txt", f"dir/{long}", f"{long}/x", "loop/x.txt", "loop"):
        with pytest.raises(ObjectNotFound):
            await twin.delete(key)
    with pytest.raises(InvalidKey):
        await twin.delete("../outside/secret.txt")
    assert tree(root) == before
    assert tree(outside) == outside_before

    await twin.put("alias/via-link.txt", b"inside")  # a link that stays under the root
    assert (root / "dir" / "via-link.txt").read_bytes() == b"inside"


async def test_the_media_type_and_fields_are_stored_with_the_file(twin: Twin, root: Path) -> None:
    new = NewObject(
        "video/mp4",
        metadata=(
            ("content-disposition", 'attachment; filename="a.mp4"'),
            ("cache-control", "no-cache"),
        ),
    )
    upload = await twin.begin("clip.bin", new)
    await upload.write(b"\x00" * 100)
    written = await upload.commit()

    assert written.meta.media_type == "video/mp4"
    assert (await twin.read("clip.bin"))[0].media_type == "video/mp4"  # not the extension's
    path = root / "clip.bin"
    assert os.getxattr(path, XATTR_MEDIA_TYPE) == b"video/mp4"
    assert os.getxattr(path, "user.content_disposition") == b'attachment; filename="a.mp4"'
    assert os.getxattr(path, "user.cache_control") == b"no-cache"
    meta = (await twin.read("clip.bin"))[0]
    assert meta.content_disposition == 'attachment; filename="a.mp4"'
    assert meta.cache_control == "no-cache"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert stored_metadata(fd) == ("video/mp4", 'attachment; filename="a.mp4"', "no-cache")
        os.setxattr(fd, "user.cache_control", b"no-cache\r\nx-evil: 1")
        os.setxattr(fd, "user.content_disposition", b"inline" + b" " * 1024)
        assert stored_metadata(fd) == ("video/mp4", None, None)  # no header value: left out
        os.removexattr(fd, XATTR_MEDIA_TYPE)
        os.setxattr(fd, "user.cache_control", b" max-age=60 ")
        assert stored_metadata(fd) == (None, None, "max-age=60")
    finally:
        os.close(fd)
    assert await twin.listing("clip") == ["clip.bin"]


@pytest.mark.parametrize(
    "stored", [b"text/html\r\nx-evil: 1", b"nonsense", b"video/" + b"x" * 300, b"\xff/\xfe"]
)
async def test_a_stored_media_type_that_is_no_header_value_is_ignored(
    twin: Twin, root: Path, stored: bytes
) -> None:
    (root / "clip.mp4").write_bytes(b"x")
    os.setxattr(root / "clip.mp4", XATTR_MEDIA_TYPE, stored)

    assert (await twin.read("clip.mp4"))[0].media_type == "video/mp4"


@contextlib.contextmanager
def tmpfs(path: Path, size: str, kind: str = "tmpfs") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    options = ["-o", f"size={size}"] if kind == "tmpfs" else []
    mounted = subprocess.run(
        ["mount", "-t", kind, *options, kind, str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here ({mounted.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_without_user_xattrs_the_extension_decides(
    tmp_path: Path, temporaries: str, sync: bool
) -> None:
    """ramfs keeps no user xattrs (EOPNOTSUPP): the file is stored, and read by its key's type."""
    with tmpfs(tmp_path / "ramfs", "", kind="ramfs") as root:
        twin = Twin(root, sync)
        for key, media_type in [("clip.bin", "application/octet-stream"), ("a/b.mp4", "video/mp4")]:
            new = NewObject("text/html", metadata=(("cache-control", "no-store"),))
            upload = await twin.begin(key, new)
            await upload.write(NEW)
            written = await upload.commit()

            meta, stored = await twin.read(key)
            assert sha256(stored) == sha256(NEW)
            assert written.meta == meta
            assert meta.media_type == media_type  # not the text/html the request said
            assert os.listxattr(root / key) == []
        twin.close()


@pytest.mark.parametrize("declared", [True, False], ids=["length", "chunked"])
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_a_full_filesystem_is_507_and_leaves_nothing(
    tmp_path: Path, temporaries: str, sync: bool, declared: bool
) -> None:
    """A declared length that cannot fit is refused at begin; a chunked body fills the disk
    (ENOSPC from a write) first."""
    with tmpfs(tmp_path / "full", "1m") as root:
        (root / "dir").mkdir()
        (root / "dir" / "old.bin").write_bytes(OLD)
        twin = Twin(root, sync)
        before, free = tree(root), os.statvfs(root).f_bfree

        for key in ("dir/old.bin", "new/folder/big.bin"):
            new = NewObject("application/octet-stream", 2 * MIB if declared else None)
            written = 0
            with pytest.raises(InsufficientStorage) as raised:
                upload = await twin.begin(key, new)
                try:
                    for _ in range(8):  # 256 KiB batches: the first ones fit
                        await upload.write(b"\x01" * (MIB // 4))
                        written += MIB // 4
                    await upload.commit()
                finally:
                    await upload.abort()

            assert str(root) not in str(raised.value)
            assert (written == 0) == declared  # refused before a byte of the body was read
            assert tree(root) == before
            assert os.statvfs(root).f_bfree == free  # the unnamed file's blocks came back
        assert sha256((await twin.read("dir/old.bin"))[1]) == sha256(OLD)
        twin.close()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_a_read_only_filesystem_is_403_and_leaves_nothing(
    tmp_path: Path, temporaries: str, sync: bool
) -> None:
    with tmpfs(tmp_path / "ro", "4m") as root:
        (root / "dir").mkdir()
        (root / "dir" / "old.bin").write_bytes(OLD)
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        twin = Twin(root, sync)
        before = tree(root)

        for key in ("dir/old.bin", "dir/new.bin", "new/x.bin"):
            with pytest.raises(AccessDenied):
                await twin.put(key, NEW)
        with pytest.raises(AccessDenied):
            await twin.delete("dir/old.bin")

        assert tree(root) == before
        assert sha256((await twin.read("dir/old.bin"))[1]) == sha256(OLD)
        twin.close()


UNPRIVILEGED = textwrap.dedent(
    """
    import os, sys
    from proxy.storage import localwrite
    from proxy.storage.errors import StorageError
    from proxy.storage.local import LocalStorage
    from proxy.storage.writes import NewObject

    root, temporaries = sys.argv[1:3]
    localwrite.USE_TMPFILE = temporaries == "tmpfile"
    writer = localwrite.LocalWriter(LocalStorage(root))
    os.setgid(65534)
    os.setuid(65534)  # nobody: the folders' modes apply now
    for key in sys.argv[3:]:
        try:
            upload = writer.begin(key, NewObject("text/plain"))
            try:
                upload.write(b"data")
                upload.commit()
            finally:
                upload.abort()
            print(key, "stored")
        except StorageError as exc:
            print(key, type(exc).__name__)
    """
)


def test_a_folder_the_process_may_not_write_is_403_and_leaves_nothing(temporaries: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged uid")
    base = Path(tempfile.mkdtemp(prefix="proxy-writes-"))  # not under the 0700 pytest folder
    try:
        base.chmod(0o755)
        (base / "closed").mkdir(mode=0o755)
        (base / "closed" / "old.bin").write_bytes(OLD)
        (base / "open").mkdir()
        (base / "open").chmod(0o777)
        before = tree(base)
        keys = ["closed/new.bin", "closed/old.bin", "closed/deeper/x.bin", "new.bin", "open/x.bin"]

        done = subprocess.run(
            [sys.executable, "-c", UNPRIVILEGED, str(base), temporaries, *keys],
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert done.stdout.splitlines() == [
            "closed/new.bin AccessDenied",
            "closed/old.bin AccessDenied",
            "closed/deeper/x.bin AccessDenied",
            "new.bin AccessDenied",
            "open/x.bin stored",  # the process can write where the mode lets it
        ], done.stderr
        assert tree(base) == {**before, "open/x.bin": 4}
    finally:
        shutil.rmtree(base)


def test_open_writer_matches_the_flavour(root: Path) -> None:
    sync = LocalStorage(root)
    assert isinstance(open_writer(LocalOptions(root, sync=True), sync), LocalWriter)
    asynchronous = AsyncLocalStorage(root)
    assert isinstance(open_writer(LocalOptions(root), asynchronous), AsyncLocalWriter)
    with pytest.raises(TypeError):
        open_writer(LocalOptions(root), sync)


async def test_async_abort_cleans_up_in_a_cancelled_task(root: Path, temporaries: str) -> None:
    twin = Twin(root, sync=False)
    before = tree(root)
    upload = await twin.begin("new/folder/x.bin", NewObject("text/plain"))
    await upload.write(NEW)

    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await upload.write(NEW)  # cancelled before it runs
        finally:
            await upload.abort()  # shielded: still runs
    assert scope.cancelled_caught
    with anyio.CancelScope() as scope:
        scope.cancel()
        await twin.begin("other/x.bin", NewObject("text/plain"))
    assert scope.cancelled_caught

    assert tree(root) == before
    twin.close()


@pytest.mark.parametrize(
    ("error", "status"),
    [(InsufficientStorage(), 507), (PreconditionFailed(), 412), (AccessDenied(), 403)],
)
def test_write_errors_have_their_status(error: StorageError, status: int) -> None:
    assert next(s for kind, s, _ in STATUS_BY_ERROR if isinstance(error, kind)) == status
