"""Descriptors kept for the next request (``OpenFiles``): reused only while the path still names
the very file that was opened and checked; closed when idle, evicted, or the storage closes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from proxy.http.codec import ByteRange
from proxy.storage import local
from proxy.storage.errors import AccessDenied, ObjectNotFound
from proxy.storage.factory import expire_open_files
from proxy.storage.local import AsyncLocalStorage, LocalBody, LocalStorage
from proxy.storage.openfiles import OpenFiles

OLD = b"old content " * 1000
NEW = b"NEW CONTENT " * 1000


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def read(storage: LocalStorage, key: str) -> tuple[bytes, str | None]:
    body_reply = storage.open(key)
    body: LocalBody = body_reply.body  # type: ignore[assignment]
    try:
        data = b"".join(body.iter_range(ByteRange(0, body_reply.meta.size), 65536))
    finally:
        body.close()
    return data, body_reply.meta.etag


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.bin").write_bytes(OLD)
    (tmp_path / "outside.bin").write_bytes(b"outside the root")
    return root


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths opened afresh (not served from a kept descriptor)."""
    opened: list[str] = []
    fresh = local._open_fresh

    def counting(root: str, key: str, path: str) -> object:
        opened.append(key)
        return fresh(root, key, path)

    monkeypatch.setattr(local, "_open_fresh", counting)
    return opened


def test_a_kept_descriptor_serves_the_next_request(storage: LocalStorage, opens: list[str]) -> None:
    first_reply = storage.open("a.bin")
    first = first_reply.body
    second_reply = storage.open("a.bin")
    second = second_reply.body
    assert opens == ["a.bin"]
    assert second_reply.meta is first_reply.meta  # described once
    first.close()  # each request owns its own descriptor (a dup): closing one leaves the other
    data = b"".join(second.iter_range(ByteRange(0, second_reply.meta.size), 4096))
    second.close()
    assert hashlib.sha256(data).digest() == hashlib.sha256(OLD).digest()
    assert len(storage.open_files) == 1


def test_a_replaced_file_is_opened_afresh(
    storage: LocalStorage, root: Path, opens: list[str]
) -> None:
    old, old_etag = read(storage, "a.bin")
    (root / "a.new").write_bytes(NEW)
    os.replace(root / "a.new", root / "a.bin")
    new, new_etag = read(storage, "a.bin")
    assert (old, new) == (OLD, NEW)
    assert old_etag != new_etag
    assert opens == ["a.bin", "a.bin"]


def test_a_file_rewritten_in_place_is_opened_afresh(
    storage: LocalStorage, root: Path, opens: list[str]
) -> None:
    path = root / "a.bin"
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    _, old_etag = read(storage, "a.bin")
    path.write_bytes(NEW)  # the same inode and size
    os.utime(path, ns=(1_700_000_001_000_000_000, 1_700_000_001_000_000_000))
    new, new_etag = read(storage, "a.bin")
    assert new == NEW
    assert new_etag != old_etag
    assert opens == ["a.bin", "a.bin"]


def test_a_chmod_is_noticed(storage: LocalStorage, root: Path, opens: list[str]) -> None:
    read(storage, "a.bin")
    (root / "a.bin").chmod(0o600)  # ctime changes: the next open checks permissions again
    read(storage, "a.bin")
    assert opens == ["a.bin", "a.bin"]
    if os.geteuid() != 0:  # root reads files whatever their mode
        (root / "a.bin").chmod(0)
        with pytest.raises(AccessDenied):
            storage.open("a.bin")


def test_a_deleted_file_is_not_found_and_its_descriptor_closed(
    storage: LocalStorage, root: Path
) -> None:
    before = open_fds()
    read(storage, "a.bin")
    assert len(open_fds() - before) == 1
    (root / "a.bin").unlink()
    with pytest.raises(ObjectNotFound):
        storage.open("a.bin")
    assert open_fds() == before  # the deleted file's space is not held
    assert len(storage.open_files) == 0


def test_a_link_redirected_outside_the_root_is_refused(
    storage: LocalStorage, root: Path, tmp_path: Path
) -> None:
    link = root / "link.bin"
    link.symlink_to(root / "a.bin")
    assert read(storage, "link.bin")[0] == OLD
    link.unlink()
    link.symlink_to(tmp_path / "outside.bin")
    with pytest.raises(ObjectNotFound):
        storage.open("link.bin")


def test_the_least_recently_used_are_evicted(root: Path, opens: list[str]) -> None:
    for name in ("b.bin", "c.bin"):
        (root / name).write_bytes(OLD)
    storage = LocalStorage(root, open_files=2)
    before = open_fds()
    for key in ("a.bin", "b.bin", "a.bin", "c.bin", "a.bin", "b.bin"):
        read(storage, key)
    # a, b kept; a reused; c evicts b (least recently used); a reused; b opened again.
    assert opens == ["a.bin", "b.bin", "c.bin", "b.bin"]
    assert len(storage.open_files) == 2
    assert len(open_fds() - before) == 2
    storage.close()
    assert open_fds() == before
    assert read(storage, "a.bin")[0] == OLD  # usable after close, keeping again
    storage.close()


def test_idle_descriptors_are_closed(root: Path, opens: list[str]) -> None:
    (root / "b.bin").write_bytes(NEW)
    clock = Clock()
    files = OpenFiles(8, idle=10.0, clock=clock)
    storage = LocalStorage(root)
    storage._files = files
    before = open_fds()
    read(storage, "a.bin")
    clock.now += 6
    read(storage, "b.bin")
    clock.now += 6  # a idle for 12 s, b for 6 s
    files.expire()
    assert len(files) == 1
    assert len(open_fds() - before) == 1
    read(storage, "b.bin")
    assert opens == ["a.bin", "b.bin"]  # b was still kept
    clock.now += 11
    read(storage, "a.bin")  # expiring on open too: b goes, a is opened again
    assert opens == ["a.bin", "b.bin", "a.bin"]
    assert len(files) == 1
    storage.close()
    assert open_fds() == before


def test_none_kept_when_turned_off(root: Path, opens: list[str]) -> None:
    storage = LocalStorage(root, open_files=0)
    before = open_fds()
    for _ in range(3):
        assert read(storage, "a.bin")[0] == OLD
    assert opens == ["a.bin"] * 3
    assert open_fds() == before


def test_threads_share_kept_descriptors(storage: LocalStorage, root: Path) -> None:
    (root / "b.bin").write_bytes(NEW)
    before = open_fds()
    wrong: list[str] = []

    def work(key: str, expected: bytes) -> None:
        for _ in range(200):
            if read(storage, key)[0] != expected:
                wrong.append(key)

    threads = [
        threading.Thread(target=work, args=(key, data))
        for key, data in [("a.bin", OLD), ("b.bin", NEW)] * 4
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert wrong == []
    assert len(open_fds() - before) == 2  # one kept per file, none leaked
    storage.close()
    assert open_fds() == before


@pytest.mark.anyio
async def test_the_app_closes_idle_descriptors_on_an_idle_server(root: Path) -> None:
    storage = AsyncLocalStorage(root)
    storage._files = OpenFiles(8, idle=0.2)
    before = open_fds()
    async with AsyncExitStack() as stack:
        await expire_open_files(storage.open_files, stack)
        body_reply = await storage.open("a.bin")
        body = body_reply.body
        await body.aclose()
        assert len(open_fds() - before) == 1
        for _ in range(100):  # no request comes: the app's task closes it
            await asyncio.sleep(0.05)
            if open_fds() == before:
                break
        assert open_fds() == before
