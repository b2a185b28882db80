"""The slice store on its own: what it leaves behind when its SQLite index fails."""

from __future__ import annotations

import os
import sqlite3
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
        writer.write(os.urandom(SLICE))
        assert store.commit(version, 0, writer.finish())
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
