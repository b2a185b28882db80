"""Leftover upload temporaries (``proxy.storage.leftovers``) on a real disk: real files, mtimes
set with ``os.utime``, locks held by this process or by a writer process killed mid-upload."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from proxy.storage import leftovers, localwrite
from proxy.storage.leftovers import SWEEP_AGE, Sweeps, hold, sweep_folder, sweep_tree
from proxy.storage.local import TEMPORARY_PREFIX, AsyncLocalStorage, LocalStorage
from proxy.storage.localwrite import LocalWriter, open_writer
from proxy.storage.options import LocalOptions
from proxy.storage.writes import NewObject


def temporary(folder: Path, name: str, age: float) -> Path:
    """A named temporary as a write leaves it, last written ``age`` seconds ago."""
    path = folder / (TEMPORARY_PREFIX + name)
    path.write_bytes(b"half an upload")
    age_by(path, age)
    return path


def age_by(path: Path, age: float) -> None:
    then = time.time() - age
    os.utime(path, (then, then), follow_symlinks=False)


def names(root: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(folder, name), root)
        for folder, dirs, files in os.walk(root)
        for name in dirs + files
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    return root


def test_only_stale_temporaries_no_upload_holds_are_removed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    stale = [
        temporary(root, "0" * 16, 2 * SWEEP_AGE),
        temporary(root / "a/b", "1" * 16, SWEEP_AGE + 5),
    ]
    fresh = temporary(root / "a", "2" * 16, SWEEP_AGE - 60)
    held = temporary(root / "a", "3" * 16, 2 * SWEEP_AGE)
    beyond = temporary(outside, "4" * 16, 2 * SWEEP_AGE)
    (root / "out").symlink_to(outside)  # a folder link out of the root: never walked
    link = root / "a" / (TEMPORARY_PREFIX + "5" * 16)
    link.symlink_to(beyond)  # a link named like a temporary: never followed nor removed
    age_by(link, 2 * SWEEP_AGE)
    (root / (TEMPORARY_PREFIX + "6" * 16)).mkdir()  # a folder: not a temporary
    clip = root / "a" / "clip.mp4"
    clip.write_bytes(b"an object")
    age_by(clip, 10 * SWEEP_AGE)
    fd = os.open(held, os.O_WRONLY)
    try:
        hold(fd)  # a live upload's (this process's) shared lock
        before = names(root)

        assert sweep_tree(str(root)) == 2

        gone = {os.path.relpath(path, root) for path in stale}
        assert names(root) == before - gone
        assert fresh.exists() and held.exists() and beyond.exists() and clip.exists()
    finally:
        os.close(fd)
    assert sweep_tree(str(root)) == 1  # its upload ended: the lock went with it
    assert not held.exists() and beyond.exists() and os.path.lexists(link)


WRITER = textwrap.dedent(
    """
    import sys, time
    from proxy.storage import localwrite
    from proxy.storage.local import LocalStorage
    from proxy.storage.writes import NewObject

    localwrite.USE_TMPFILE = False  # a named temporary, as without O_TMPFILE
    upload = localwrite.LocalWriter(LocalStorage(sys.argv[1])).begin(
        "a/clip.mp4", NewObject("video/mp4")
    )
    upload.write(b"the first half")
    print("writing", flush=True)
    time.sleep(60)
    """
)


def test_a_killed_writers_temporary_is_removed_and_a_live_ones_is_not(root: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
            (left,) = [p for p in (root / "a").iterdir() if p.name.startswith(TEMPORARY_PREFIX)]
            age_by(left, 2 * SWEEP_AGE)  # a stalled upload: still the other process's

            assert sweep_tree(str(root)) == 0 and left.exists()
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
    assert left.exists()  # what a crash leaves behind
    assert sweep_tree(str(root)) == 1
    assert names(root) == {"a", "a/b"}


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_a_writing_mount_sweeps_its_tree_when_it_starts(root: Path, sync: bool) -> None:
    left = temporary(root / "a" / "b", "7" * 16, 2 * SWEEP_AGE)
    storage = LocalStorage(root) if sync else AsyncLocalStorage(root)

    before = set(threading.enumerate())
    open_writer(LocalOptions(root, sync=sync), storage)  # dropped at once: one sweep, then stop

    [sweeper] = [t for t in threading.enumerate() if t.name == "proxy-sweep" and t not in before]
    sweeper.join(timeout=30)
    assert not sweeper.is_alive()
    assert not left.exists()


def test_a_writing_mount_sweeps_again_while_it_lives(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash's temporary in a folder no upload writes to again goes without a restart."""
    monkeypatch.setattr(leftovers, "SWEEP_EVERY", 0.1)
    before = set(threading.enumerate())
    writer = open_writer(LocalOptions(root, sync=False), AsyncLocalStorage(root))
    [sweeper] = [t for t in threading.enumerate() if t.name == "proxy-sweep" and t not in before]
    time.sleep(0.3)  # the first sweep is done
    left = temporary(root / "a" / "b", "e" * 16, 2 * SWEEP_AGE)
    deadline = time.monotonic() + 10
    while left.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left.exists()
    assert sweeper.is_alive()
    del writer  # the sweeps end with the writer
    gc.collect()
    sweeper.join(timeout=10)
    assert not sweeper.is_alive()


def test_a_commit_sweeps_its_folder_when_due(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localwrite, "USE_TMPFILE", False)  # its own temporary is named too
    writer = LocalWriter(LocalStorage(root))
    first = temporary(root / "a", "8" * 16, 2 * SWEEP_AGE)
    elsewhere = temporary(root / "a" / "b", "9" * 16, 2 * SWEEP_AGE)

    def put(key: str) -> None:
        upload = writer.begin(key, NewObject("video/mp4"))
        upload.write(b"a whole body")
        upload.commit()

    put("a/one.mp4")
    assert not first.exists() and elsewhere.exists()  # only the folder written to
    second = temporary(root / "a", "a" * 16, 2 * SWEEP_AGE)
    put("a/two.mp4")
    assert second.exists()  # swept less than SWEEP_AGE ago: not read again
    assert names(root) == {
        "a",
        "a/b",
        "a/one.mp4",
        "a/two.mp4",
        os.path.relpath(second, root),
        os.path.relpath(elsewhere, root),
    }


def test_a_folder_is_due_once_per_sweep_age(root: Path) -> None:
    sweeps = Sweeps()
    fd = os.open(root / "a", os.O_RDONLY | os.O_DIRECTORY)
    other = os.open(root / "a" / "b", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert sweeps.due(fd, now=1000.0)
        assert not sweeps.due(fd, now=1000.0 + SWEEP_AGE - 1)
        assert sweeps.due(other, now=1000.0 + SWEEP_AGE - 1)
        assert sweeps.due(fd, now=1000.0 + SWEEP_AGE)
        temporary(root / "a", "b" * 16, 2 * SWEEP_AGE)
        assert sweep_folder(fd) == 1 and sweep_folder(fd) == 0
    finally:
        os.close(fd)
        os.close(other)
