"""The slice store on its own: what it leaves behind when its SQLite index fails, and what it
does when its disk falls behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from diskcache.core import DBNAME

from proxy.http.codec import ByteRange
from proxy.metrics import CACHE_FAULTS
from proxy.storage.base import WHOLE, ObjectMeta
from proxy.storage.cache import SliceCache, open_cache
from proxy.storage.cachestore import SliceStore, Version
from proxy.storage.memory import MemoryStorage
from proxy.storage.options import CacheOptions

SLICE = 64 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


OPTIONS_MAX = 16 * 1024 * 1024


@contextlib.contextmanager
def stalled(submit: Callable[[Callable[[], None]], object]) -> Iterator[threading.Event]:
    """A one-thread executor (its ``submit``) held by a task until the event it yields is set,
    as a write blocked in the kernel's writeback throttling holds it; set on exit too."""
    running, resume = threading.Event(), threading.Event()

    def stall() -> None:
        running.set()
        resume.wait(60)

    submit(stall)
    assert running.wait(10)
    try:
        yield resume
    finally:
        resume.set()


def open_slice_files() -> list[str]:
    """The slice files (``*.val``) this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".val"):
            found.append(target)
    return found


def keep_one_slice(store: SliceStore, version: Version) -> None:
    writer = store.writer()
    writer.write(os.urandom(SLICE))
    assert writer.keep(version, 0).result()


def test_a_failing_recency_update_leaves_no_file_open_and_the_slice_served(
    tmp_path: Path,
) -> None:
    """What a full disk does to the index's UPDATEs (the CI saw "database or disk is full"
    there): the slice is still found and read, since lookups do not write; sending its
    recency fails, is counted, and leaves no file open."""
    options = CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0)
    version = Version("s3://media/clip.mp4", '"v1"', SLICE)
    store = SliceStore(options)
    store.start()
    try:
        keep_one_slice(store, version)
    finally:
        store.close()
    with sqlite3.connect(tmp_path / DBNAME) as db:
        db.execute(
            "CREATE TRIGGER injected BEFORE UPDATE ON Cache"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    faults = CACHE_FAULTS.labels("index")
    before = faults._value.get()
    store = SliceStore(options)  # nothing remembered: the slice is looked up in the index
    store.start()
    try:
        fd = store.open_slice(version, 0)
        assert fd is not None
        os.close(fd)
        store.touch()  # its recency: the UPDATE the trigger refuses
        assert faults._value.get() == before + 1
        assert open_slice_files() == []
    finally:
        store.close()


def test_lookups_do_not_wait_for_the_index_writer(tmp_path: Path) -> None:
    """The index's writer stalled in a commit (a write blocked in the kernel's writeback
    throttling does that for tens of milliseconds): a request's questions, whether a slice is
    there, where its file is, an object's metadata, are answered beside it, not behind it."""
    options = CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0)
    first = Version("s3://media/a.mp4", '"v1"', SLICE)
    second = Version("s3://media/b.mp4", '"v1"', SLICE)
    meta = ObjectMeta("a.mp4", SLICE, "video/mp4", '"v1"', None)
    store = SliceStore(options)
    store.start()
    try:
        keep_one_slice(store, first)
        store.put_meta(first.location, meta, 1000.0)
    finally:
        store.close()
    store = SliceStore(options)  # nothing remembered: every answer comes from the index
    store.start()
    try:
        with stalled(store._worker.submit) as resume:  # the index's one writing thread
            writer = store.writer()
            writer.write(os.urandom(SLICE))
            committing = writer.keep(second, 0)  # queued behind the stall
            assert store.meta(first.location) == (meta, 1000.0)
            assert store.cached(first, 0) and not store.cached(second, 0)
            fd = store.open_slice(first, 0)
            assert fd is not None
            os.close(fd)
            assert not committing.done()  # all of the above was answered while it waited
            resume.set()
            assert committing.result(timeout=10)
            assert store.cached(second, 0)
    finally:
        store.close()


def test_a_disk_that_falls_behind_leaves_slices_unkept_never_a_reader_waiting(
    tmp_path: Path,
) -> None:
    """The write thread stalled (a page-cache write blocked in writeback throttling does the
    same): a slice handed within the lag is queued; once the stall has lasted longer, the next
    is refused at once (a ``behind`` fault) and the first is written when the thread resumes."""
    lag = 0.5
    store = SliceStore(CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0), write_lag=lag)
    store.start()
    behind = CACHE_FAULTS.labels("behind")
    try:
        with stalled(store.writes.submit) as resume:
            stalled_at = time.monotonic()
            first = Version("s3://media/a.mp4", '"v1"', SLICE)
            second = Version("s3://media/b.mp4", '"v1"', SLICE)
            kept, dropped = store.writer(), store.writer()
            kept.write(os.urandom(SLICE))
            keeping = kept.keep(first, 0)  # queued: the stall is younger than the lag
            assert time.monotonic() - stalled_at < lag, "too slow a machine for this test"
            time.sleep(lag * 1.5)
            before = behind._value.get()
            dropped.write(os.urandom(SLICE))
            refused = dropped.keep(second, 0)
            assert refused.done() and refused.result() is False  # at once, not queued
            assert behind._value.get() == before + 1
            assert not keeping.done()  # behind the stall
            resume.set()
            assert keeping.result(timeout=10)
            assert store.cached(first, 0) and not store.cached(second, 0)
            assert sorted(p.name for p in (tmp_path / "fills").iterdir()) == []
    finally:
        store.close()


def test_queued_slices_never_hold_more_than_the_budget(tmp_path: Path) -> None:
    """The queued slices' bytes are memory until written: past the budget, a slice is not
    kept, however young the stall."""
    store = SliceStore(CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0), write_budget=SLICE)
    store.start()
    try:
        with stalled(store.writes.submit) as resume:
            kept, dropped = store.writer(), store.writer()
            kept.write(os.urandom(SLICE))
            keeping = kept.keep(Version("s3://media/a.mp4", '"v1"', SLICE), 0)
            dropped.write(os.urandom(1))
            refused = dropped.keep(Version("s3://media/b.mp4", '"v1"', 1), 0)
            assert refused.done() and refused.result() is False
            resume.set()
            assert keeping.result(timeout=10)
    finally:
        store.close()


def test_a_slice_handed_over_as_the_index_thread_ends_is_still_answered(
    tmp_path: Path,
) -> None:
    """A close racing a fill: the index's thread has ended when the slice's commit comes. The
    fill waiting for the answer gets one (it would otherwise wait for ever)."""
    store = SliceStore(CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0))
    store.start()
    version = Version("s3://media/a.mp4", '"v1"', SLICE)
    try:
        store._worker.shutdown(wait=True)  # as close does, before the index is let go
        writer = store.writer()
        writer.write(os.urandom(SLICE))
        assert writer.keep(version, 0).result(timeout=10) in (True, False)
        assert list((tmp_path / "fills").iterdir()) == []  # kept or removed, never left
    finally:
        store._worker = ThreadPoolExecutor(1)  # for close, which asks that thread to finish
        store.close()


@contextlib.contextmanager
def stalled_cache(tmp_path: Path, data: bytes) -> Iterator[tuple[SliceCache, threading.Event]]:
    """A cache over ``clip.mp4`` (``data``) whose write thread is stalled until the event: a
    disk slower than the download, not one stalled past the lag (tested on its own above)."""
    cache = open_cache(
        MemoryStorage({"clip.mp4": data}),
        CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0),
        sync=True,
    )
    assert isinstance(cache, SliceCache)
    cache.store.writes.lag = 60.0
    try:
        with stalled(cache.store.writes.submit) as resume:
            yield cache, resume
    finally:
        cache.close()


def clip_version(cache: SliceCache, data: bytes) -> Version:
    location = cache.inner.location("clip.mp4")
    known = cache.store.meta(location)
    assert known is not None and known[0].etag is not None
    return Version(location, known[0].etag, len(data))


def test_a_stalled_disk_holds_back_neither_a_fill_nor_the_next_request(tmp_path: Path) -> None:
    """The write thread stalled (writeback throttling does that): a read across two missing
    slices still gets all its bytes, the fill moving on from a slice it handed to the store;
    the next request reads both from the fill, and says so (a hit, not a miss); once the
    disk catches up, both are in the index."""
    data = os.urandom(2 * SLICE)
    with stalled_cache(tmp_path, data) as (cache, resume):
        bodies: list[bytes] = []
        statuses: list[str] = []

        def read() -> None:
            reply = cache.open("clip.mp4", WHOLE)
            statuses.append(dict(reply.fields)["cache-status"])
            with contextlib.closing(reply.body):
                bodies.append(b"".join(reply.body.iter_range(ByteRange(0, len(data)), SLICE)))

        def handed_over(version: Version) -> bool:
            # The reader may take a slice's last bytes before the fill hands it to the store.
            deadline = time.monotonic() + 10
            while not (cache.fills.holds(version, 0) and cache.fills.holds(version, 1)):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
            return True

        for attempt in range(2):
            reader = threading.Thread(target=read)
            reader.start()
            reader.join(timeout=10)
            assert not reader.is_alive(), f"read {attempt} waited for the stalled disk"
            version = clip_version(cache, data)
            assert handed_over(version), "the fill never handed its slices to the store"
        assert statuses == ["media-proxy; fwd=miss; stored", "media-proxy; hit"]
        assert [sha256(body) for body in bodies] == [sha256(data)] * 2
        assert not cache.store.cached(version, 0)  # not written yet
        resume.set()
        cache.store.flush()  # the queue drained, its commits done
        assert cache.store.cached(version, 0) and cache.store.cached(version, 1)


def test_a_fill_runs_at_most_one_slice_ahead_of_the_disk(tmp_path: Path) -> None:
    """A download faster than the disk: the fill hands a slice to the store and receives the
    next, then waits for the first to be stored, so every slice is kept, none dropped."""
    data = os.urandom(4 * SLICE)
    with stalled_cache(tmp_path, data) as (cache, resume):
        bodies: list[bytes] = []

        def read() -> None:
            reply = cache.open("clip.mp4", WHOLE)
            with contextlib.closing(reply.body):
                bodies.append(b"".join(reply.body.iter_range(ByteRange(0, len(data)), SLICE)))

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=1)
        assert reader.is_alive()  # slices 0 and 1 received; the fill waits for slice 0's file
        resume.set()
        reader.join(timeout=10)
        assert not reader.is_alive()
        assert [sha256(body) for body in bodies] == [sha256(data)]
        cache.store.flush()  # the queue drained, its commits done
        version = clip_version(cache, data)
        assert all(cache.store.cached(version, index) for index in range(4))
