"""The slice cache's disk: slices as plain files, indexed by diskcache; object metadata beside.

diskcache (SQLite, process-safe) holds the index and evicts least recently used entries to keep
the directory under its size limit; ``_SliceDisk`` lets it adopt a finished slice file by
renaming it into place (no copy). A slice file is a 24-byte header (magic, length, CRC-32 of the
data) and the data: a torn, truncated or corrupted file is found before any of its bytes is
served. Each file is checked once per process and identity (ctime changes on every write).

Asking diskcache on every hit costs 80-400 µs (its LRU bookkeeping is a write transaction), more
than a whole 64 KiB range: hits are answered from an in-process memo of slice paths, and their
recency goes to the index in the background, every few seconds. Misses ask it on a read-only
connection of their own, which SQLite's write-ahead log lets run beside the commits of new
slices (see docs/design.md).

Every failure of the cache directory (full, read-only, removed, a corrupt file) is a ``fault``:
counted, logged once per cause, and the caller serves from S3 instead. After a failure to
reach the index, it is opened again after a pause, so a directory that comes back is used again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import struct
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from proxy.metrics import CACHE_DISK_BYTES, CACHE_EVICTIONS, CACHE_FAULTS
from proxy.storage.base import ObjectMeta, stored_field
from proxy.storage.options import CacheOptions

logger = logging.getLogger("proxy.cache")
T = TypeVar("T")

MAGIC = b"mpslice1"
_HEADER = struct.Struct("<8sQI4x")  # magic, data length, CRC-32 of the data
HEADER_SIZE = _HEADER.size
FILLS = "fills"  # the subdirectory of slices being written (``*.part``)
_INDEX_TIMEOUT_S = 1.0  # SQLite lock wait: a busy index is a fault, not a stalled request
_REOPEN_AFTER_S = 10.0  # pause before the index is opened again after it failed
_TOUCH_EVERY_S = 5.0  # how often hits' recency reaches the index
_TOUCH_AGAIN_S = 60.0  # a slice whose recency the index got this recently is not sent again
_MEMO_ENTRIES = 65536  # slice paths, metadata and verified files remembered per process
_INDEX_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
# Pages of the index each connection keeps in memory (4 KiB each): RSS, where the kernel's page
# cache holds the file anyway. A 1 GiB cache of 1 MiB slices has a ~0.3 MiB index.
_INDEX_CACHE_PAGES = 256
_CHECK_PIECE = 256 * 1024  # the reads a slice's checksum is computed over
# A slice handed to the disk while its oldest queued write has waited this long is not kept;
# nor while the queued slices hold WRITE_BUDGET bytes (held in memory until written).
WRITE_LAG_S = 0.25
WRITE_BUDGET = 64 * 1024 * 1024
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one writev takes


class _Unkept(Exception):
    """The index is closed (or failed): the queued slices are not kept."""


@dataclass(frozen=True, slots=True)
class Version:
    """One version of one stored object: where it lives, its ETag and size."""

    location: str  # s3://bucket/key
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class SliceFile:
    """A finished slice file outside the index (in ``fills/``), ready to be adopted."""

    path: str
    size: int  # header included


class _SliceDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's Disk, adopting a ``SliceFile`` by renaming it into place, in one level of
    256 directories (diskcache's own two levels of 256 make a new directory for nearly every
    slice of a young cache: a ``mkdir`` measured ~0.7 ms, most of a slice's commit)."""

    def filename(self, key: Any = UNKNOWN, value: Any = UNKNOWN) -> tuple[str, str]:
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, Any, Any]:
        if isinstance(value, SliceFile):
            filename, full_path = self.filename(key, value)
            try:
                os.rename(value.path, full_path)
            except FileNotFoundError:  # its directory is new (or was just emptied and removed)
                os.makedirs(os.path.dirname(full_path), exist_ok=True)
                os.rename(value.path, full_path)
            return value.size, MODE_BINARY, filename, None
        return super().store(value, read, key)  # type: ignore[no-any-return]


class _Index(diskcache.Cache):  # type: ignore[misc]
    """diskcache's Cache, whose volume (what culling keeps under the limit) also counts
    SQLite's write-ahead log and shared-memory files: every byte the directory holds."""

    def volume(self) -> int:
        total: int = super().volume()
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(
                    os.path.join(self.directory, diskcache.core.DBNAME + suffix)
                ).st_size
        return total


class _Lookups:
    """The index's read-only questions (is a slice there, where is its file, an object's
    metadata), on a SQLite connection of their own, asked in the caller's thread. SQLite's
    write-ahead log lets them run beside the index's writer: behind it, every miss waited for the
    commits before it, and with the kernel throttling page-cache writes a commit can take tens of
    milliseconds. They read the table diskcache writes (``Cache``: key, raw, mode, filename,
    value) without its least-recently-used bookkeeping, which is a write; hits' recency is sent
    by ``touch``. One connection, one question at a time (the lock): asked in a thread of their
    own, each question cost the boto3 flavour two more turns on the interpreter lock."""

    def __init__(self, directory: str) -> None:
        self._path = os.path.join(directory, diskcache.core.DBNAME)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def row(self, key: str) -> tuple[int, str | None, Any] | None:
        """(mode, filename, value) of ``key``'s entry, or None."""
        with self._lock:
            if self._connection is None:
                self._connection = sqlite3.connect(
                    f"file:{urllib.parse.quote(self._path)}?mode=ro",
                    uri=True,
                    timeout=_INDEX_TIMEOUT_S,
                    isolation_level=None,  # autocommit: no read transaction held between calls
                    check_same_thread=False,  # any caller's thread, one at a time (the lock)
                )
                self._connection.execute(f"PRAGMA cache_size = {_INDEX_CACHE_PAGES}")
            row = self._connection.execute(_SELECT_ROW, (key,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def reset(self) -> None:
        """Close the connection (the index was found failing): the next question opens one."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        with contextlib.suppress(*_INDEX_ERRORS):
            self.reset()


_SELECT_ROW = (
    "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
    " AND expire_time IS NULL"  # the proxy sets no expiry: anything else is not its entry
)
_TOUCH_ROW = "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1"


class _Memo(OrderedDict[Hashable, Any]):
    """A bounded mapping that forgets its least recently used entries."""

    def remember(self, key: Hashable, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _MEMO_ENTRIES:
            self.popitem(last=False)

    def recall(self, key: Hashable) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


class _Writes:
    """The one thread that writes slice files, and when the disk is too far behind to take one
    more. Fills hand it each slice whole once their readers have its bytes, so neither a reader
    nor the event loop ever waits for the disk. A slice is not kept (the fill streams on at S3's
    pace, as without the cache) when the oldest write still queued has waited more than ``lag``
    seconds (writeback throttling: a page-cache write can block for hundreds of ms), or when the
    queued slices hold ``budget`` bytes (memory)."""

    def __init__(self, budget: int, lag: float) -> None:
        self.budget = budget
        self.lag = lag
        self._pending = 0
        self._queued: deque[float] = deque()  # when each task queued or running was submitted
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cache-write")
        self._closed = False

    def admit(self, size: int) -> bool:
        """Reserve room for ``size`` bytes; False when the disk is too far behind."""
        with self._lock:
            if self._queued and time.monotonic() - self._queued[0] > self.lag:
                return False
            if self._pending and self._pending + size > self.budget:
                return False
            self._pending += size
            return True

    def submit(self, function: Callable[..., T], *args: Any, size: int = 0) -> Future[T]:
        """``function(*args)`` in the write thread, in order (``size``: the bytes ``admit``
        reserved for it, released when it is done); at once once closed."""
        with self._lock:
            if not self._closed:
                self._queued.append(time.monotonic())
                return self._executor.submit(self._run, function, args, size)
        return _called(self._run, function, args, size)

    def _run(self, function: Callable[..., T], args: tuple[Any, ...], size: int) -> T:
        try:
            return function(*args)
        finally:
            with self._lock:
                self._pending -= size
                if self._queued:
                    self._queued.popleft()

    def close(self) -> None:
        """Let the queued writes and commits finish."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True)


def _called(function: Callable[..., T], *args: Any) -> Future[T]:
    """A future already done with ``function(*args)``'s result or exception."""
    done: Future[T] = Future()
    try:
        done.set_result(function(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, as the thread would
        done.set_exception(exc)
    return done


def _write_all(fd: int, buffers: list[bytes]) -> None:
    """Write ``buffers`` one after another: one ``writev`` for a slice, as a rule."""
    views = [memoryview(buffer) for buffer in buffers if buffer]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written:
            if written >= len(views[0]):
                written -= len(views.pop(0))
            else:
                views[0], written = views[0][written:], 0


class SliceWriter:
    """A slice on its way to the disk: ``write`` collects its chunks (the fill holds them for
    its readers anyway: no copy), ``keep`` hands the whole slice to the write thread, which
    makes its file in ``fills/`` (a file's creation waits on a journal that writeback holds up;
    on the async flavour it would wait on the event loop), writes header and data in one
    ``writev`` and hands the file to the index; ``abort`` drops it. One write-thread task per
    slice, not one per chunk: on the boto3 flavour each task is a turn on the interpreter lock
    among the threadpool's threads, and the disk fell behind for want of them (see
    docs/design.md). A failure is counted once."""

    def __init__(self, store: SliceStore) -> None:
        self._store = store
        self._chunks: list[bytes] = []
        self.length = 0

    def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self.length += len(chunk)

    def keep(self, version: Version, index: int) -> Future[bool]:
        """Whether the store kept the slice, once the index has it: at once False (a
        ``behind`` fault) when the disk is too far behind."""
        chunks, self._chunks = self._chunks, []
        kept: Future[bool] = Future()
        if not self._store.admit(self.length):
            self._store.fault("behind")
            kept.set_result(False)
            return kept
        self._store.writes.submit(self._keep, chunks, version, index, kept, size=self.length)
        return kept

    def abort(self) -> None:
        self._chunks = []

    def _keep(self, chunks: list[bytes], version: Version, index: int, kept: Future[bool]) -> None:
        """In the write thread: the file, written whole, then queued for the index (the write
        thread goes on with the next slice meanwhile)."""
        try:
            path = self._write_file(chunks)
        except BaseException as exc:
            kept.set_exception(exc)
            raise
        if path is None:
            kept.set_result(False)
        else:
            self._store.commit(version, index, SliceFile(path, HEADER_SIZE + self.length), kept)

    def _write_file(self, chunks: list[bytes]) -> str | None:
        """The slice's file in ``fills/``: its path, or None (a ``write`` fault)."""
        crc = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        header = _HEADER.pack(MAGIC, self.length, crc)
        path = ""
        try:
            fd, path = tempfile.mkstemp(
                dir=self._store.fills_directory, prefix=f"{os.getpid()}-", suffix=".part"
            )
            try:
                _write_all(fd, [header, *chunks])
            finally:
                os.close(fd)
        except OSError as exc:
            if path:
                _unlink(path)
            self._store.fault("write", exc)
            if isinstance(exc, FileNotFoundError):  # fills/ removed: made again for the next
                with contextlib.suppress(OSError):
                    os.makedirs(self._store.fills_directory, exist_ok=True)
            return None
        return path


def _meta_key(location: str) -> str:
    return f"meta:{location}"


def _meta_record(meta: ObjectMeta, checked: float) -> str:
    """The metadata as the index keeps it: JSON text (a string is stored as it is; a pickle
    read back from a shared directory would run whatever it says)."""
    modified = None if meta.last_modified is None else meta.last_modified.timestamp()
    return json.dumps(
        [
            meta.key,
            meta.size,
            meta.media_type,
            meta.etag,
            modified,
            checked,
            meta.content_disposition,
            meta.cache_control,
        ]
    )


def _meta_of(record: Any) -> tuple[ObjectMeta, float] | None:
    try:
        key, size, media_type, etag, modified, checked, disposition, cache = json.loads(record)
        last_modified = None if modified is None else datetime.fromtimestamp(modified, UTC)
        # The stored fields are checked again: the directory may be shared with other processes.
        meta = ObjectMeta(
            key,
            int(size),
            media_type,
            etag,
            last_modified,
            stored_field(disposition),
            stored_field(cache),
        )
        return meta, float(checked)
    except (TypeError, ValueError, OverflowError):
        return None  # not this proxy's record (or an older proxy's): S3 is asked again


class SliceStore:
    """The cache directory: object metadata and slices, shared by every worker process."""

    def __init__(
        self,
        options: CacheOptions,
        write_budget: int = WRITE_BUDGET,
        write_lag: float = WRITE_LAG_S,
    ) -> None:
        self.options = options
        self.slice_size = options.slice_size
        self._directory = os.fspath(options.directory)
        self.fills_directory = os.path.join(self._directory, FILLS)  # slices being written
        self.writes = _Writes(write_budget, write_lag)
        self._lock = threading.Lock()
        self._index: diskcache.Cache | None = None
        self._reopen_at = 0.0
        self._paths = _Memo()  # slice key -> path of its file
        self._metas = _Memo()  # location -> (meta, checked)
        self._verified = _Memo()  # file identity -> True
        self._touched: dict[Hashable, None] = {}  # hits to tell the index of
        self._told = _Memo()  # slice key -> when the index last heard of a hit
        self._logged: set[str] = set()
        self._closed = False
        self._stop = threading.Event()
        self._toucher: threading.Thread | None = None
        # Every index call runs in this one thread: diskcache keeps one SQLite connection per
        # thread that uses it, and would otherwise hold one in each of the threadpool's threads
        # (three descriptors each) until those threads end; one thread also closes it for sure.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="cache-index")
        self._lookups = _Lookups(self._directory)  # reads, beside that thread's writes
        self._commits: list[tuple[Hashable, SliceFile, Future[bool]]] = []  # for the index
        self._commits_since = 0.0  # when the oldest of them was queued

    def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in the index's thread."""
        return self._worker.submit(function, *args, **kwargs).result()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the index, remove slices left half-written by dead processes, and start the
        thread that hands hits' recency to the index."""
        self._open_index()
        self._remove_orphans()
        self._toucher = threading.Thread(target=self._touch_loop, name="cache-touch", daemon=True)
        self._toucher.start()

    def close(self) -> None:
        self.writes.close()  # the slices being written are kept (or dropped) first,
        self._call(_nothing)  # and their commits, queued in the index's thread, done
        with self._lock:
            self._closed = True
        self._stop.set()
        if self._toucher is not None:
            self._toucher.join(timeout=5)
        with self._lock:
            index, self._index = self._index, None
        if index is not None:
            with contextlib.suppress(*_INDEX_ERRORS):
                self._call(index.close)
        self._worker.shutdown(wait=True)
        self._lookups.close()

    def flush(self) -> None:
        """Wait until the slices handed so far are written and their commits done."""
        self.writes.submit(_nothing).result()
        self._call(_nothing)

    def _open_index(self) -> diskcache.Cache | None:
        with self._lock:
            if self._index is not None:
                return self._index
            if self._closed or time.monotonic() < self._reopen_at:
                return None
            try:
                os.makedirs(self.fills_directory, exist_ok=True)
                self._index = self._call(
                    _Index,
                    self._directory,
                    size_limit=self.options.max_size,
                    eviction_policy="least-recently-used",
                    cull_limit=0,  # culled by ``commit``, which counts the evictions
                    statistics=False,
                    timeout=_INDEX_TIMEOUT_S,
                    sqlite_mmap_size=0,  # read the index, do not map it (mapped pages count as RSS)
                    sqlite_cache_size=_INDEX_CACHE_PAGES,  # diskcache's 8,192 pages: up to 32 MiB
                    disk=_SliceDisk,
                )
            except _INDEX_ERRORS as exc:
                self._reopen_at = time.monotonic() + _REOPEN_AFTER_S
                self._fault_locked("index", exc)
                return None
            return self._index

    def _index_failed(self, cause: str, exc: BaseException, in_worker: bool = False) -> None:
        """A call to the index failed: count it, and open the index again after a pause (the
        directory may have been removed and made again). ``in_worker``: called in the index's
        thread."""
        with self._lock:
            index, self._index = self._index, None
            self._reopen_at = time.monotonic() + _REOPEN_AFTER_S
            self._fault_locked(cause, exc)
        with contextlib.suppress(*_INDEX_ERRORS):
            self._lookups.reset()
        if index is not None:
            with contextlib.suppress(*_INDEX_ERRORS):
                if in_worker:
                    index.close()
                else:
                    self._call(index.close)

    def fault(self, cause: str, exc: BaseException | None = None) -> None:
        """Count a cache fault; log its cause the first time."""
        with self._lock:
            self._fault_locked(cause, exc)

    def _fault_locked(self, cause: str, exc: BaseException | None) -> None:
        CACHE_FAULTS.labels(cause).inc()
        if cause not in self._logged:
            self._logged.add(cause)
            detail = "" if exc is None else f": {type(exc).__name__}: {exc}"
            logger.warning("slice cache fault (%s); serving from S3%s", cause, detail)

    def _remove_orphans(self) -> None:
        with contextlib.suppress(OSError), os.scandir(self.fills_directory) as entries:
            for entry in entries:
                pid = entry.name.split("-", 1)[0]
                if entry.name.endswith(".part") and pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    # -- metadata ---------------------------------------------------------------------------

    def meta(self, location: str) -> tuple[ObjectMeta, float] | None:
        """The cached metadata of ``location`` and when (wall clock) S3 last confirmed it."""
        with self._lock:
            known = self._metas.recall(location)
        if known is not None:
            return known  # type: ignore[no-any-return]
        row = self._lookup(_meta_key(location))
        known = None if row is None or row[0] != MODE_RAW else _meta_of(row[2])
        if known is not None:
            with self._lock:
                self._metas.remember(location, known)
        return known

    def put_meta(self, location: str, meta: ObjectMeta, checked: float) -> None:
        with self._lock:
            self._metas.remember(location, (meta, checked))
        index = self._open_index()
        if index is None:
            return
        try:
            self._call(index.set, _meta_key(location), _meta_record(meta, checked))
        except _INDEX_ERRORS as exc:
            self._index_failed("index", exc)

    def forget_meta(self, location: str) -> None:
        """Drop ``location``'s metadata (the object is gone): the next request asks S3."""
        with self._lock:
            self._metas.pop(location, None)
        index = self._open_index()
        if index is not None:
            try:
                self._call(index.delete, _meta_key(location))
            except _INDEX_ERRORS as exc:
                self._index_failed("index", exc)

    # -- slices -----------------------------------------------------------------------------

    def slice_length(self, version: Version, index: int) -> int:
        start = index * self.slice_size
        return max(0, min(self.slice_size, version.size - start))

    def _key(self, version: Version, index: int) -> str:
        """The slice's key in the index: a string, which diskcache stores as it is (a tuple
        would be pickled and optimized on every call, ~0.1 ms each); the ETag's length
        makes it unambiguous."""
        etag = version.etag
        return f"slice:{self.slice_size}:{index}:{len(etag)}:{etag}:{version.location}"

    def usable(self) -> bool:
        """Whether the index can be reached (else requests go to S3 uncached)."""
        return self._open_index() is not None

    def cached(self, version: Version, index: int) -> bool:
        """Whether the slice is in the cache (as far as the memo or the index know)."""
        key = self._key(version, index)
        with self._lock:
            if self._paths.recall(key) is not None:
                return True
        return self._lookup(key) is not None

    def _lookup(self, key: str) -> tuple[int, str | None, Any] | None:
        """The index's row of ``key`` (mode, filename, value), asked beside its writes."""
        if self._open_index() is None:
            return None
        try:
            return self._lookups.row(key)
        except _INDEX_ERRORS as exc:
            self._index_failed("index", exc)
            return None

    def open_slice(self, version: Version, index: int, ask_index: bool = True) -> int | None:
        """A descriptor of the slice's file (data from ``HEADER_SIZE`` on; the caller closes
        it), or None: not cached, or found broken (then removed). ``ask_index`` False: only
        a slice this process knows (no index call: what the event loop may do)."""
        key = self._key(version, index)
        fd = self._open_known(key)
        if fd is None:
            if not ask_index:
                return None
            fd = self._open_indexed(key)
            if fd is None:
                return None
        try:
            if self._intact(fd, self.slice_length(version, index)):
                return fd
        except OSError as exc:
            self.fault("read", exc)
        os.close(fd)
        self._drop(key)
        return None

    def _open_known(self, key: Hashable) -> int | None:
        with self._lock:
            path = self._paths.recall(key)
            if path is not None:
                told = self._told.get(key)
                if told is None or time.monotonic() - told > _TOUCH_AGAIN_S:
                    self._touched[key] = None
        if path is None:
            return None
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # evicted (by any process): ask the index
            with self._lock:
                self._paths.pop(key, None)
            return None

    def _open_indexed(self, key: str) -> int | None:
        row = self._lookup(key)
        if row is None or row[0] != MODE_BINARY or row[1] is None:
            return None
        path = os.path.join(self._directory, row[1])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # evicted since (by any process)
            return None
        with self._lock:
            self._paths.remember(key, path)
            self._touched[key] = None  # its recency goes to the index with the hits'
        return fd

    def _intact(self, fd: int, length: int) -> bool:
        """Whether the file holds exactly ``length`` bytes under a header that says so, with
        a matching checksum (read once per file identity and process)."""
        st = os.fstat(fd)
        if st.st_size != HEADER_SIZE + length:
            self.fault("truncated")
            return False
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if self._verified.recall(identity):
                return True
        magic, stated, crc = _HEADER.unpack(os.pread(fd, HEADER_SIZE, 0))
        if magic != MAGIC or stated != length or _checksum(fd, length) != crc:
            self.fault("corrupted")
            return False
        with self._lock:
            self._verified.remember(identity, True)
        return True

    def _drop(self, key: Hashable) -> None:
        """Remove a broken slice from the index (which deletes its file)."""
        with self._lock:
            self._paths.pop(key, None)
        index = self._open_index()
        if index is not None:
            try:
                self._call(index.delete, key)
            except _INDEX_ERRORS as exc:
                self._index_failed("index", exc)

    def writer(self) -> SliceWriter:
        """A new slice on its way to the disk (see ``SliceWriter``)."""
        return SliceWriter(self)

    def admit(self, size: int) -> bool:
        """Whether a slice of ``size`` bytes may go to the disk now: neither the write thread
        nor the index is more than the lag behind (see ``_Writes``)."""
        with self._lock:
            late = bool(self._commits) and time.monotonic() - self._commits_since > self.writes.lag
        return not late and self.writes.admit(size)

    def commit(self, version: Version, index: int, finished: SliceFile, kept: Future[bool]) -> None:
        """Hand a finished slice file to the index (which evicts to stay under the limit);
        ``kept`` says whether it has it. The commits queued while the index's thread is busy
        go in one transaction: one commit each took ~17 ms of the write thread's turns on the
        interpreter lock on the boto3 flavour, and the disk fell behind (see docs/design.md)."""
        entry = (self._key(version, index), finished, kept)
        if self._open_index() is None:
            _unlink(finished.path)
            kept.set_result(False)
            return
        with self._lock:
            self._commits.append(entry)
            if len(self._commits) > 1:
                return  # a drain is queued already, and will take this one too
            self._commits_since = time.monotonic()
        try:
            self._worker.submit(self._commit_queued)
        except RuntimeError:  # the index's thread has ended (a close racing a fill): here, then
            self._commit_queued()

    def _commit_queued(self) -> None:
        """In the index's thread: every commit queued, in one transaction."""
        with self._lock:
            batch, self._commits = self._commits, []
            index = self._index
        if not batch:
            return
        try:
            if index is None:
                raise _Unkept()
            evicted, volume = _store(index, [(key, finished) for key, finished, _ in batch])
        except (_Unkept, *_INDEX_ERRORS) as exc:
            for _, finished, kept in batch:
                _unlink(finished.path)
                kept.set_result(False)
            if not isinstance(exc, _Unkept):
                self._index_failed("index", exc, in_worker=True)
            return
        if evicted:
            CACHE_EVICTIONS.inc(evicted)
        CACHE_DISK_BYTES.set(volume)
        for *_, kept in batch:
            kept.set_result(True)

    # -- recency ----------------------------------------------------------------------------

    def _touch_loop(self) -> None:
        while not self._stop.wait(_TOUCH_EVERY_S):
            self.touch()

    def touch(self) -> None:
        """Tell the index which slices were read from the memo since the last time."""
        now = time.monotonic()
        with self._lock:
            keys, self._touched = list(self._touched), {}
            for key in keys:
                self._told.remember(key, now)
        index = self._open_index() if keys else None
        if index is None:
            return
        try:
            self._call(_touch, index, keys)
        except _INDEX_ERRORS as exc:
            self._index_failed("index", exc)


def _checksum(fd: int, length: int) -> int:
    """CRC-32 of the slice's data, read in pieces (no slice-sized buffer on the heap)."""
    crc, offset, stop = 0, HEADER_SIZE, HEADER_SIZE + length
    buffer = bytearray(_CHECK_PIECE)
    while offset < stop:
        count = os.preadv(fd, [memoryview(buffer)[: min(_CHECK_PIECE, stop - offset)]], offset)
        if count <= 0:
            break
        crc = zlib.crc32(memoryview(buffer)[:count], crc)
        offset += count
    return crc


def _store(index: _Index, finished: list[tuple[Hashable, SliceFile]]) -> tuple[int, int]:
    """Adopt finished slices in one transaction, evict what the limit requires: (evicted,
    volume)."""
    with index.transact():
        for key, slice_file in finished:
            index.set(key, slice_file, read=True)
    volume = index.volume()
    if volume <= index.size_limit:  # culling would only measure the volume again
        return 0, volume
    return index.cull(), index.volume()


def _touch(index: _Index, keys: list[Hashable]) -> None:
    """Move ``keys`` up the least-recently-used order, as ``Cache.get`` would (it sets
    ``access_time``), without opening their files: one write transaction for them all."""
    now = time.time()
    with index.transact():
        for key in keys:
            index._sql(_TOUCH_ROW, (now, key))  # noqa: SLF001 (diskcache's own statement runner)


def _nothing() -> None:
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
