"""Local-disk backend: keys map to files under one root; metadata comes from the open file.

``LocalStorage`` and ``AsyncLocalStorage`` are twins, built on the module-level helpers below.
The async one works like nginx: the open and fstat run on the event loop (the kernel's dentry
and inode caches answer them), and so does a read the page cache can serve at once
(``preadv`` with ``RWF_NOWAIT``); only a read that would wait for the disk goes to a worker
thread. A thread hop costs more than a cached 256 KiB read: doing every call in a thread held
a 64 KiB range at a third of the rate.

A file written through the proxy carries the media type its upload gave in an extended
attribute (``XATTR_MEDIA_TYPE``), and the Content-Disposition and Cache-Control it kept in two
more, read when the file is opened afresh; else the extension decides the type.

Listings walk the directories in S3's order (the UTF-8 bytes of the keys, a folder's name
followed by ``/``) and show what a read could serve: regular files, through links only when
they resolve under the root, never a directory twice on one path (a link loop).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from itertools import islice

import anyio.to_thread

from proxy.http.codec import ByteRange
from proxy.metrics import BACKEND_CALLS
from proxy.storage.base import (
    LIST_PAGE_SIZE,
    METADATA_ONLY,
    AsyncBody,
    Body,
    ChunkSize,
    Folder,
    Listed,
    ObjectMeta,
    ReadHint,
    Reply,
    aiter_blocking,
    aiter_ready,
    chunk_limit,
    stored_field,
)
from proxy.storage.errors import (
    AccessDenied,
    BackendUnavailable,
    BodyTruncated,
    ObjectNotFound,
    StorageError,
)
from proxy.storage.keys import check_key, listable
from proxy.storage.mediatypes import media_type_for
from proxy.storage.openfiles import OpenFiles, Signature, signature
from proxy.storage.options import DEFAULT_OPEN_FILES

# O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears; it is
# rejected after fstat, and regular files ignore the flag.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
# Where Linux shows the path an open descriptor really refers to, links resolved.
_FD_PATHS = "/proc/self/fd"
_HAVE_FD_PATHS = os.path.isdir(_FD_PATHS)

# Errors that say "there is no file at this key" rather than "the disk is broken".
# ENXIO: opening a socket or a device with no driver; EISDIR for completeness.
_NOT_FOUND_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.ENXIO, errno.EISDIR})

# Where a written file's media type is kept (``proxy.storage.localwrite``): the extended
# attribute freedesktop.org's common attributes name, and Apache's mod_mime_xattr reads.
XATTR_MEDIA_TYPE = "user.mime_type"
# A stored type is sent as Content-Type: printable ASCII of a sane length, else the extension.
_STORED_TYPE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(;[ -~]*)?")
_MAX_TYPE = 255
# Names of a write's temporary files (only where O_TMPFILE is missing, or for the instant
# between a link and its rename): hidden, and never a key (``check_key`` refuses a backslash),
# so no read or listing serves them.
TEMPORARY_PREFIX = ".proxy-upload\\"

# preadv2(RWF_NOWAIT): Linux >= 4.14. Elsewhere -1, an invalid flag: every read takes a thread.
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", -1)
# A zero-copy range not in the page cache is read into it in a worker thread, this much a read.
_LOAD_BUFFER = 1024 * 1024


@contextmanager
def map_os_errors() -> Iterator[None]:
    """Translate ``OSError`` into the ``StorageError`` tree, most specific match first.

    Messages never repeat ``str(exc)``: it holds the filesystem path, and messages reach clients.
    """
    try:
        yield
    except OSError as exc:
        raise storage_error(exc) from exc


def storage_error(exc: OSError) -> StorageError:
    """``map_os_errors``' translation, for hot paths where a ``with`` costs too much."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return ObjectNotFound()
    if isinstance(exc, PermissionError):
        return AccessDenied()
    if exc.errno in _NOT_FOUND_ERRNOS:
        return ObjectNotFound()
    return BackendUnavailable(f"{BackendUnavailable.message} ({exc.strerror})")


def _resolve_root(root: str | os.PathLike[str]) -> str:
    resolved = os.path.realpath(root)
    if not os.path.isdir(resolved):
        # A configuration mistake, raised at startup: not a StorageError, so never a 404.
        raise ValueError(f"storage root is not an existing directory: {os.fspath(root)!r}")
    return resolved


def _check_root(root: str) -> None:
    """Readiness: the root is still a directory we can list."""
    with map_os_errors():
        os.scandir(root).close()


def _under(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _open_under(root: str, path: str) -> int:
    """Open ``path`` (links followed) and check that the file opened lies under ``root``.

    The check reads the opened descriptor's own path, so no link swapped in between a check
    and the open can escape (one readlink instead of realpath's lstat per path component).
    Without /proc, realpath first and refuse any link in the last component (O_NOFOLLOW).
    """
    if not _HAVE_FD_PATHS:
        path = os.path.realpath(path)
        if not _under(root, path):
            raise ObjectNotFound()  # a link escaping the root: as if there were nothing there
        return os.open(path, _OPEN_FLAGS | os.O_NOFOLLOW)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        opened = os.readlink(f"{_FD_PATHS}/{fd}")
    except BaseException:
        os.close(fd)
        raise
    if not _under(root, opened):
        os.close(fd)
        raise ObjectNotFound()
    return fd


def _meta(
    key: str,
    st: os.stat_result,
    media_type: str | None = None,
    disposition: str | None = None,
    cache_control: str | None = None,
) -> ObjectMeta:
    return ObjectMeta(
        key=key,
        size=st.st_size,
        media_type=media_type or media_type_for(key),
        # Size, mtime and inode: changes on rewrite and on replace. Not 32 hex digits, so no
        # client takes it for an MD5 of the content.
        etag=f'"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"',
        last_modified=datetime.fromtimestamp(int(st.st_mtime), UTC),
        content_disposition=disposition,
        cache_control=cache_control,
    )


def _open_fresh(root: str, key: str, path: str) -> tuple[int, ObjectMeta, Signature]:
    """Open ``path`` under ``root`` and describe it from the open descriptor (no second
    lookup); the signature tells ``OpenFiles`` whether it is the file its ``stat`` saw."""
    fd = _open_under(root, path)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ObjectNotFound()  # a directory, FIFO or device is not an object
    return fd, _meta(key, st, *stored_metadata(fd)), signature(st)


def stored_metadata(fd: int) -> tuple[str | None, str | None, str | None]:
    """The media type, Content-Disposition and Cache-Control a write stored with the file
    (``XATTR_MEDIA_TYPE``, ``xattr_name``), each None when there is none (or the filesystem keeps
    no extended attributes, or it is no sane header value): then the key's extension decides the
    type, and the settings the caching. Only a fresh open pays this: a ``flistxattr`` (~0.5 µs,
    less than the ``fstat``; a ``getxattr`` that finds nothing costs 3x that in Python, for
    the exception), and an ``fgetxattr`` for each one stored."""
    try:
        present = os.listxattr(fd)
        if not present:
            return None, None, None
        media_type, disposition, cache_control = [
            os.getxattr(fd, name) if name in present else None for name in _STORED_XATTRS
        ]
    except OSError:
        return None, None, None  # ENOTSUP: no xattrs here; ENODATA: removed meanwhile
    return _stored_type(media_type), stored_field(disposition), stored_field(cache_control)


def _stored_type(value: bytes | None) -> str | None:
    if value is None or len(value) > _MAX_TYPE or not _STORED_TYPE.fullmatch(value):
        return None
    return value.decode("ascii")


def xattr_name(field_name: str) -> str:
    """The extended attribute a response header field stored with a file is kept in
    (``content-disposition``: ``user.content_disposition``)."""
    return "user." + field_name.replace("-", "_")


# What ``stored_metadata`` reads, in its order.
_STORED_XATTRS = (XATTR_MEDIA_TYPE, xattr_name("content-disposition"), xattr_name("cache-control"))


# The counter's child, looked up once: labels() per open cost a lock and a lookup.
_OPENS = BACKEND_CALLS.labels("local", "open")


def _open_object(root: str, key: str, files: OpenFiles) -> tuple[int, ObjectMeta]:
    """A descriptor of ``key`` under ``root`` (the caller's to close) and its metadata."""
    _OPENS.inc()
    path = os.path.join(root, check_key(key))
    try:
        return files.open(key, path, partial(_open_fresh, root, key, path))
    except OSError as exc:
        raise storage_error(exc) from exc


def _read_step(fd: int, offset: int, stop: int, chunk_size: int) -> bytes:
    """Read the next chunk of ``[offset, stop)``: at most ``chunk_size`` bytes, never past stop."""
    if fd < 0:
        raise ValueError("read from a closed body")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    with map_os_errors():
        chunk = os.pread(fd, min(chunk_size, stop - offset), offset)
    if not chunk:
        # The file shrank since open: abort the response rather than send it short.
        raise BodyTruncated()
    return chunk


def _read_cached(fd: int, offset: int, stop: int, chunk_size: int) -> bytes | None:
    """``_read_step`` from the page cache only: None when the read would wait for the disk (or
    the filesystem cannot tell), so the caller reads in a worker thread instead."""
    if fd < 0 or chunk_size < 1:
        return _read_step(fd, offset, stop, chunk_size)  # raises the same ValueError
    buffer = bytearray(min(chunk_size, stop - offset))
    try:
        count = os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
    except OSError:
        return None  # EAGAIN (not cached), EOPNOTSUPP: the blocking read says what is wrong
    if count == 0:
        raise BodyTruncated()
    del buffer[count:]  # a partial read: the rest was not cached yet
    return bytes(buffer)


def _close_fd(fd: int) -> int:
    if fd >= 0:
        os.close(fd)
    return -1


_Node = tuple[str, os.stat_result]  # a directory entry's key (a folder's ends in "/") and stat


def _entries(root: str, folder: str, stem: str = "") -> Iterator[_Node]:
    """The entries of directory ``folder`` ("" or "a/b/") whose names start with ``stem``, as
    the directory gives them: regular files and directories, links resolved, but only links
    that stay under ``root``; names the key policy refuses are left out."""
    try:
        with os.scandir(os.path.join(root, folder) if folder else root) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(stem) or name.startswith(TEMPORARY_PREFIX):
                    continue  # another name, or a write's temporary file
                try:
                    st = entry.stat()  # follows a link: what a read would open
                    if entry.is_symlink() and not _under(root, os.path.realpath(entry.path)):
                        continue  # a link out of the root: as if there were nothing there
                except OSError:
                    continue  # a dangling link, or gone since the scan
                if stat.S_ISDIR(st.st_mode):
                    key = f"{folder}{name}/"
                elif stat.S_ISREG(st.st_mode):
                    key = folder + name
                else:
                    continue  # a FIFO, socket or device is not an object
                if listable(key, key.endswith("/")):
                    yield key, st
    except (FileNotFoundError, NotADirectoryError):
        return  # S3 semantics: a prefix with nothing below it lists nothing
    except OSError as exc:
        raise storage_error(exc) from exc


def _scan(root: str, folder: str, stem: str = "") -> list[_Node]:
    """``_entries`` in the order of their keys (code point order is UTF-8 byte order)."""
    return sorted(_entries(root, folder, stem), key=lambda node: node[0])


def _holds_object(root: str, folder: str, seen: frozenset[tuple[int, int]]) -> bool:
    """Whether the walk would find a file below ``folder``: in the directory's own order, so
    it stops at the first one (no sort, no listing of every file of a large folder)."""
    folders = []
    for key, st in _entries(root, folder):
        if not key.endswith("/"):
            return True
        folders.append((key, (st.st_dev, st.st_ino)))
    return any(
        _holds_object(root, key, seen | {inode}) for key, inode in folders if inode not in seen
    )


def _walk(
    root: str, nodes: list[_Node], recursive: bool, after: str, seen: frozenset[tuple[int, int]]
) -> Iterator[Listed]:
    """The listing of ``nodes`` (from ``_scan``): files, and folders descended into
    (``recursive``) or shown when they hold a file; only names after ``after``; a directory
    already on the path (``seen``: device and inode) is a loop and left out."""
    for key, st in nodes:
        if not key.endswith("/"):
            if key > after:
                yield _meta(key, st)
            continue
        inode = (st.st_dev, st.st_ino)
        if inode in seen or (key <= after and not after.startswith(key)):
            continue  # a loop, or a folder wholly before ``after``
        if recursive:
            yield from _walk(root, _scan(root, key), recursive, after, seen | {inode})
        elif key > after and _holds_object(root, key, seen | {inode}):
            yield Folder(key)


def _path_inodes(root: str, folder: str) -> frozenset[tuple[int, int]] | None:
    """The directories from ``root`` down to ``folder`` (device and inode), or None when a
    walk from the root would not reach it: a name the key policy refuses, a link out of the
    root, a directory met twice on the way (a link loop), or no directory at all."""
    if folder and (
        not listable(folder, True) or not _under(root, os.path.realpath(os.path.join(root, folder)))
    ):
        return None
    seen: set[tuple[int, int]] = set()
    path = root
    for part in ["", *folder.split("/")[:-1]]:
        path = os.path.join(path, part) if part else path
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) in seen or not stat.S_ISDIR(st.st_mode):
            return None
        seen.add((st.st_dev, st.st_ino))
    return frozenset(seen)


def _listing(root: str, prefix: str, recursive: bool, after: str) -> Iterator[list[Listed]]:
    """Pages of the listing of ``prefix`` under ``root`` (see ``Lister.listing``)."""
    folder, _, stem = prefix.rpartition("/")
    folder = f"{folder}/" if folder else ""
    seen = _path_inodes(root, folder)
    if seen is None:
        return  # not a folder a listing of the root would lead to: nothing to list
    entries = _walk(root, _scan(root, folder, stem), recursive, after, seen)
    while page := list(islice(entries, LIST_PAGE_SIZE)):
        yield page


class _FileBody:
    """What both body flavours hold: a descriptor read with ``pread`` (no seek state)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        """The open file's descriptor, for a server that sends its bytes itself (zero-copy:
        ``proxy.responses``); read with offsets only, so its position means nothing."""
        if self._fd < 0:
            raise ValueError("a closed body has no descriptor")
        return self._fd

    def cached(self, offset: int, count: int) -> bool:
        """Whether a ``sendfile`` of ``[offset, offset + count)`` would find the bytes in the
        page cache (not wait for the disk on the event loop): its first and last byte are
        there. False where ``RWF_NOWAIT`` is missing: then every range is ``load``-ed. A file
        that no longer reaches the last byte (it shrank) raises ``BodyTruncated``."""
        probe = bytearray(1)
        for at in (offset, offset + count - 1):
            try:
                got = os.preadv(self._fd, [probe], at, _RWF_NOWAIT)
            except OSError:
                return False  # EAGAIN: not cached (EOPNOTSUPP, EBADF: load says what is wrong)
            if got == 0:
                raise BodyTruncated()
        return True

    def load(self, offset: int, count: int) -> None:
        """Bring ``[offset, offset + count)`` into the page cache (blocking: a worker thread's
        job, as a read that would wait for the disk is)."""
        with map_os_errors():
            os.posix_fadvise(self._fd, offset, count, os.POSIX_FADV_WILLNEED)
            buffer = memoryview(bytearray(min(count, _LOAD_BUFFER)))
            stop = offset + count
            while offset < stop:
                got = os.preadv(self._fd, [buffer[: stop - offset]], offset)
                if got == 0:
                    return  # the file ended: the send will tell (FileEnded)
                offset += got


class LocalBody(_FileBody):
    """An open file."""

    __slots__ = ()

    def iter_range(self, byte_range: ByteRange, chunk_size: ChunkSize) -> Iterator[bytes]:
        return _FileChunks(self, byte_range, chunk_size)

    def close(self) -> None:
        self._fd = _close_fd(self._fd)


class _FileChunks:
    """The chunks of a range of either body flavour, read with ``pread`` (blocking: in a worker
    thread); a ``ReadyChunks``: a chunk the page cache holds is ready (``_read_cached``) and is
    read on the event loop (``aiter_ready``: by the response for ``LocalBody``, by
    ``AsyncLocalBody`` itself)."""

    __slots__ = ("_body", "_chunk_size", "_offset", "_stop")

    def __init__(self, body: _FileBody, byte_range: ByteRange, chunk_size: ChunkSize) -> None:
        self._body = body  # its descriptor is read at each step: closed, the read raises
        self._offset = byte_range.start
        self._stop = byte_range.stop
        self._chunk_size = chunk_size

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        if self._offset >= self._stop:
            raise StopIteration
        limit = chunk_limit(self._chunk_size)
        return self._took(_read_step(self._body._fd, self._offset, self._stop, limit))

    def ready(self) -> bytes | None:
        if self._offset >= self._stop:
            return b""
        limit = chunk_limit(self._chunk_size)
        chunk = _read_cached(self._body._fd, self._offset, self._stop, limit)
        return None if chunk is None else self._took(chunk)

    def _took(self, chunk: bytes) -> bytes:
        self._offset += len(chunk)
        return chunk


class AsyncLocalBody(_FileBody):
    """The async twin of ``LocalBody``: a read the page cache cannot serve runs in a thread."""

    __slots__ = ()

    async def aiter_range(
        self, byte_range: ByteRange, chunk_size: ChunkSize
    ) -> AsyncIterator[bytes]:
        return aiter_ready(_FileChunks(self, byte_range, chunk_size))

    async def aclose(self) -> None:
        # Inline, not in a thread: aclose runs in `finally` blocks of cancelled tasks, where an
        # await would raise before the descriptor is released.
        self._fd = _close_fd(self._fd)


class _Root:
    """What both storage flavours hold: the root directory, resolved once, and the
    descriptors of recently served files (``open_files`` of them at most; 0: none kept)."""

    __slots__ = ("_files", "_root")

    def __init__(self, root: str | os.PathLike[str], open_files: int = DEFAULT_OPEN_FILES) -> None:
        self._root = _resolve_root(root)
        self._files = OpenFiles(open_files)

    @property
    def root(self) -> str:
        return self._root

    @property
    def open_files(self) -> OpenFiles:
        return self._files


class LocalStorage(_Root):
    """Files under ``root``."""

    __slots__ = ()

    def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[Body]:
        fd, meta = _open_object(self._root, key, self._files)
        return Reply(meta, LocalBody(fd))

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> Iterator[list[Listed]]:
        return _listing(self._root, prefix, recursive, start_after)

    def check(self) -> None:
        _check_root(self._root)

    def close(self) -> None:
        self._files.close()


class AsyncLocalStorage(_Root):
    """The async twin of ``LocalStorage``."""

    __slots__ = ()

    async def open(self, key: str, hint: ReadHint = METADATA_ONLY) -> Reply[AsyncBody]:
        # On the loop: see the module's docstring.
        fd, meta = _open_object(self._root, key, self._files)
        return Reply(meta, AsyncLocalBody(fd))

    def listing(
        self, prefix: str, recursive: bool = False, start_after: str = ""
    ) -> AsyncIterator[list[Listed]]:
        # Directory scans wait for the disk: each page is made in a worker thread.
        return aiter_blocking(_listing(self._root, prefix, recursive, start_after))

    async def acheck(self) -> None:
        await anyio.to_thread.run_sync(_check_root, self._root)

    async def aclose(self) -> None:
        self._files.close()
