"""The slice store on its own: what it leaves behind when its SQLite index fails, and what it
does when its disk falls behind."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from diskcache.core import DBNAME

from proxy.storage.cachestore import SliceStore, Version
from proxy.storage.options import CacheOptions

SLICE = 64 * 1024
OPTIONS_MAX = 16 * 1024 * 1024


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


def test_an_index_failing_after_opening_a_slice_leaves_no_file_open(tmp_path: Path) -> None:
    options = CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0)
    version = Version("s3://media/clip.mp4", '"v1"', SLICE)
    store = SliceStore(options)
    store.start()
    try:
        writer = store.writer()
        assert writer is not None
        assert writer.write(os.urandom(SLICE))
        assert writer.keep(version, 0).result()
    finally:
        store.close()
    # Every recency update now fails inside the index's transaction, after diskcache has
    # opened the slice's file: what a full disk does to the UPDATE (the CI saw it there).
    with sqlite3.connect(tmp_path / DBNAME) as db:
        db.execute(
            "CREATE TRIGGER injected BEFORE UPDATE ON Cache"
            " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        )
    store = SliceStore(options)  # nothing remembered: the slice is looked up in the index
    store.start()
    try:
        assert store.open_slice(version, 0) is None  # a fault: served from S3 instead
        assert open_slice_files() == []
    finally:
        store.close()


def test_a_disk_that_falls_behind_leaves_slices_unkept_never_a_reader_waiting(
    tmp_path: Path,
) -> None:
    """The write thread stalled (a page-cache write blocked in writeback throttling does the
    same): writes beyond the budget are refused at once, the slice is dropped, and what was
    queued before the stall is written when the thread resumes."""
    store = SliceStore(CacheOptions(tmp_path, OPTIONS_MAX, SLICE, 60.0), write_behind=SLICE)
    store.start()
    stalled, resume = threading.Event(), threading.Event()
    try:

        def stall() -> None:
            stalled.set()
            resume.wait(10)

        store.writes.submit(stall)
        assert stalled.wait(10)
        kept, dropped = store.writer(), store.writer()
        assert kept is not None and dropped is not None
        first = Version("s3://media/a.mp4", '"v1"', SLICE)
        second = Version("s3://media/b.mp4", '"v1"', SLICE)
        assert kept.write(os.urandom(SLICE))  # queued: within the budget
        assert not dropped.write(os.urandom(1))  # the budget is spent: refused, at once
        dropped.abort()
        keeping = kept.keep(first, 0)
        assert not keeping.done()  # behind the stall
        resume.set()
        assert keeping.result(timeout=10)
        assert store.cached(first, 0) and not store.cached(second, 0)
        assert sorted(p.name for p in (tmp_path / "fills").iterdir()) == []
    finally:
        resume.set()
        store.close()
