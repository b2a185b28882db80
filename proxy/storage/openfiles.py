"""Descriptors of recently served files, reused while their path still names the same file.

nginx's ``open_file_cache``, but checked on every use: one ``stat`` of the path, and while it
reports the file that was opened (device, inode, size, mtime, ctime), the request reads a
``dup`` of the cached descriptor, with the metadata found when it was opened. That replaces
the open, the ``readlink`` check of where it led, the ``fstat`` and the metadata — ~30 of the
~280 µs of CPU a 64 KiB range cost. A file replaced, rewritten, truncated, chmod-ed, moved or
deleted no longer matches and is opened afresh (a deleted one: not found). The path check stays
exact: a ``stat`` that follows links to the very file that was opened, checked and cached leads
nowhere else.

Descriptors not used for ``idle`` seconds are closed (a deleted file's space is only freed when
the last descriptor goes), as are the least recently used beyond ``capacity``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from proxy.storage.base import ObjectMeta

# What a rewrite, replace, truncate, chmod or rename changes (ctime: any inode change).
Signature = tuple[int, int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Entry:
    __slots__ = ("fd", "meta", "signature", "used")

    def __init__(self, fd: int, meta: ObjectMeta, sig: Signature, used: float) -> None:
        self.fd = fd
        self.meta = meta
        self.signature = sig
        self.used = used


# Opens the file a path names, checked: its descriptor, metadata and fstat signature.
Opener = Callable[[], tuple[int, ObjectMeta, Signature]]


class OpenFiles:
    """Cached descriptors by key, least recently used first. Thread-safe (the sync flavour
    opens in worker threads); the caller owns, and closes, every descriptor it is given."""

    def __init__(
        self, capacity: int, idle: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._idle = idle
        self._clock = clock
        self._entries: dict[str, _Entry] = {}  # insertion order: least recently used first
        self._lock = threading.Lock()

    @property
    def idle(self) -> float:
        return self._idle

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, key: str, path: str, opener: Opener) -> tuple[int, ObjectMeta]:
        """A descriptor of the file ``path`` names now, and its metadata. ``os.stat``'s and
        ``opener``'s errors propagate; a failed ``stat`` also drops the key's entry."""
        if self._capacity < 1:
            fd, meta, _ = opener()
            return fd, meta
        try:
            current = signature(os.stat(path))
        except OSError:
            self._drop(key)
            raise
        now = self._clock()
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None and entry.signature == current:
                entry.used = now
                self._entries[key] = entry  # now the most recently used
                self._expire(now)
                return os.dup(entry.fd), entry.meta
        if entry is not None:
            os.close(entry.fd)  # another file by now
        fd, meta, opened = opener()
        if opened == current:  # what stat saw is what was opened and checked: keep it
            self._keep(key, _Entry(os.dup(fd), meta, opened, now))
        return fd, meta

    def _keep(self, key: str, entry: _Entry) -> None:
        with self._lock:
            displaced = self._entries.pop(key, None)  # another thread opened it meanwhile
            self._entries[key] = entry
            if displaced is not None:
                os.close(displaced.fd)
            while len(self._entries) > self._capacity:
                os.close(self._entries.pop(next(iter(self._entries))).fd)
            self._expire(entry.used)

    def forget(self, key: str) -> None:
        """Close ``key``'s cached descriptor, if any: a write or delete replaced the file (the
        next open's ``stat`` would see that too; this frees the old file's space at once)."""
        self._drop(key)

    def _drop(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                os.close(entry.fd)

    def _expire(self, now: float) -> None:
        """Close the descriptors idle for too long (the oldest first; called under the lock)."""
        while self._entries:
            key = next(iter(self._entries))
            if now - self._entries[key].used < self._idle:
                break
            os.close(self._entries.pop(key).fd)

    def expire(self) -> None:
        """Close the descriptors idle for too long (also done on every open)."""
        with self._lock:
            self._expire(self._clock())

    def close(self) -> None:
        """Close every cached descriptor (the cache stays usable)."""
        with self._lock:
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            os.close(entry.fd)
