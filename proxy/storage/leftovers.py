"""Leftover upload temporaries on local disk: what a crashed process leaves of a named
temporary (``local.TEMPORARY_PREFIX``: the body where there is no ``O_TMPFILE``, or the name an
``O_TMPFILE`` is linked under for the instant before its rename) is removed once it is older than
``SWEEP_AGE`` and no live upload holds its lock.

Every upload holds a shared ``flock`` on its body's file from its open to its end
(``hold``); the lock dies with the process, so a temporary that can be locked exclusively is no
live upload's (where the filesystem has no ``flock``, the age alone decides). A writing mount
sweeps its whole tree in a thread when it starts and every ``SWEEP_EVERY`` after
(``start_sweep``), and a commit sweeps its folder at most once per ``SWEEP_AGE`` (``Sweeps.due``).
They were never served or listed: the prefix's backslash is no key (``check_key``) and listings
skip it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from contextlib import suppress

from proxy.storage.local import TEMPORARY_PREFIX

logger = logging.getLogger("proxy.local")

# A temporary unchanged this long (seconds; every write moves its mtime) is a crash's when no
# upload holds its lock, and by the age alone where there are no locks (NFS without flock).
SWEEP_AGE = 3600.0
# What flock fails with where the filesystem has none (NFS emulates it with a POSIX write lock,
# which a file or folder opened for reading cannot take).
NO_FLOCK = frozenset({errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP})
_SWEPT_FOLDERS = 4096  # folders a process remembers sweeping; then it forgets them all
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def hold(fd: int) -> None:
    """Mark the open temporary ``fd`` as a live upload's (a shared lock, released with it; a
    sweep holds the exclusive one only for a moment, and only on a stale file)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise


def _remove_stale(folder: int, name: str, now: float) -> bool:
    """Unlink the temporary ``name`` of ``folder`` if it is a regular file (never a link) older
    than ``SWEEP_AGE`` that no upload holds: whether it was removed."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=folder)
    except OSError:
        return False  # gone meanwhile, a link (ELOOP), unreadable: left alone
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < SWEEP_AGE:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in NO_FLOCK:
                return False  # EWOULDBLOCK: a live upload's
        if os.stat(name, dir_fd=folder, follow_symlinks=False).st_ino != st.st_ino:
            return False  # replaced since the open
        os.unlink(name, dir_fd=folder)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _sweep_names(folder: int, names: Iterable[str], now: float) -> int:
    return sum(
        _remove_stale(folder, name, now) for name in names if name.startswith(TEMPORARY_PREFIX)
    )


def sweep_folder(folder: int, now: float | None = None) -> int:
    """Remove the stale temporaries of the folder open at ``folder``: how many were removed."""
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries if entry.name.startswith(TEMPORARY_PREFIX)]
    except OSError:
        return 0
    return _sweep_names(folder, names, time.time() if now is None else now)


def sweep_tree(root: str, now: float | None = None) -> int:
    """Remove the stale temporaries of every folder under ``root`` (links not followed: a folder
    reached through one is swept on its own path, and nothing outside the root is)."""
    now = time.time() if now is None else now
    removed = 0
    for _, _, files, folder in os.fwalk(root, follow_symlinks=False):
        removed += _sweep_names(folder, files, now)
    return removed


class Sweeper(threading.Thread):
    """Sweeps the tree under a root now and then every ``SWEEP_EVERY`` seconds, in a thread of
    its own (a large tree takes a while; nothing waits for it), until ``stop`` is set: a crash's
    temporary in a folder no upload writes to again goes too, without a restart."""

    def __init__(self, root: str, every: float) -> None:
        super().__init__(name="proxy-sweep", daemon=True)
        self.root = root
        self.every = every
        self.stop = threading.Event()

    def run(self) -> None:
        while True:  # until stopped: the writer's end (open_writer), or the process's
            removed = 0
            with suppress(OSError):  # the root gone or unreadable: the reads will say so
                removed = sweep_tree(self.root)
            if removed:
                logger.info("removed %d upload temporaries a stopped process left", removed)
            if self.stop.wait(self.every):
                return


# How often a writing mount sweeps its whole tree (seconds): a crash's temporary is removed
# within SWEEP_AGE + SWEEP_EVERY of its last write.
SWEEP_EVERY = SWEEP_AGE


def start_sweep(root: str) -> Sweeper:
    """A ``Sweeper`` of the tree under ``root``, started."""
    sweeper = Sweeper(root, SWEEP_EVERY)
    sweeper.start()
    return sweeper


class Sweeps:
    """When this process last swept each folder (device, inode): a commit sweeps its folder
    only when it is due, so a folder of many files is read once per ``SWEEP_AGE``, not per PUT."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[int, int], float] = {}

    def due(self, folder: int, now: float | None = None) -> bool:
        """Whether ``folder`` is to be swept now (then it counts as swept)."""
        st = os.fstat(folder)
        key, now = (st.st_dev, st.st_ino), time.time() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < SWEEP_AGE:
                return False
            if len(self._last) >= _SWEPT_FOLDERS:
                self._last.clear()
            self._last[key] = now
            return True
