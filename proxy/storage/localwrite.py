"""Writes to local disk (``proxy.storage.writes``): the body goes to an unnamed file in the
key's own directory (``O_TMPFILE``; a hidden ``local.TEMPORARY_PREFIX`` name where the
filesystem has none), is fsynced, and becomes visible whole with one ``link`` (If-None-Match)
or ``rename``; deletes unlink and remove the folders left empty (S3: a folder exists only while
something lies below it).

Folders are walked from the root with one ``openat`` each (links followed, each checked to lie
under the root, as reads check files), so every later call is relative to a descriptor that
cannot be redirected. Commits, deletes and the removal of an empty folder hold an exclusive
``flock`` on the folder they change: If-Match is compared and the rename done under it (other
processes too), and a commit that finds its folder removed meanwhile (nlink 0) walks again.
Where folders cannot be flocked (NFS), a lock of the process stands in: If-Match then holds
against this process's writes only (If-None-Match stays atomic: it is the link itself).

``LocalWriter`` and ``AsyncLocalWriter`` are twins over the module-level helpers; the async one
runs every disk call in a worker thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from proxy.metrics import BACKEND_CALLS
from proxy.storage.base import AsyncStorage, Storage
from proxy.storage.errors import (
    AccessDenied,
    BackendUnavailable,
    InsufficientStorage,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)
from proxy.storage.keys import check_key
from proxy.storage.leftovers import NO_FLOCK, Sweeps, hold, start_sweep, sweep_folder
from proxy.storage.local import (
    TEMPORARY_PREFIX,
    XATTR_MEDIA_TYPE,
    AsyncLocalStorage,
    LocalStorage,
    _meta,
    _under,
    xattr_name,
)
from proxy.storage.openfiles import OpenFiles
from proxy.storage.options import LocalOptions, StorageOptions
from proxy.storage.writes import NO_CONDITIONS, NewObject, WriteConditions, Written

_FD_PATHS = "/proc/self/fd"
_HAVE_FD_PATHS = os.path.isdir(_FD_PATHS)
# O_TMPFILE needs /proc to be linked by a process without CAP_DAC_READ_SEARCH (linkat with
# AT_EMPTY_PATH does). Where either is missing, the body goes to a named temporary.
USE_TMPFILE = hasattr(os, "O_TMPFILE") and _HAVE_FD_PATHS
# What open(O_TMPFILE) fails with where the filesystem (or an old kernel) cannot make one.
_NO_TMPFILE_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_PROBE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block the probe
_FILE_MODE = 0o666  # less the umask, as any file the service creates
_FOLDER_MODE = 0o777
# What a read answers 404 for ("there is nothing at this key"), as ``local.storage_error``.
_UNREACHABLE = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO, errno.EISDIR}
)
_WALKS = 3  # a folder removed (by a delete's cleanup) between the walk and the lock: walk again

# Response header fields kept with the object (``local.xattr_name``): lower-case names.
_FIELD_NAME = re.compile(r"[a-z][a-z0-9-]{0,63}")
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def write_error(exc: OSError) -> StorageError:
    """A write's ``OSError`` in the ``StorageError`` tree (no path in the message). Permission
    and a read-only filesystem are the storage's standing refusal (403: a retry gets the same
    answer, as S3's AccessDenied); a full disk or quota is 507; a name the filesystem cannot
    hold is the key's fault (400); anything else is the backend's (503)."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied("writes to this key are denied")
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InsufficientStorage()
    if code == errno.ENAMETOOLONG:
        return InvalidKey("a segment of the key is too long for the filesystem")
    if code in (errno.ENOTDIR, errno.ELOOP):
        return InvalidKey("a folder of the key is not a folder")
    if code == errno.EISDIR:
        return InvalidKey("the key names a folder")
    return BackendUnavailable(f"{BackendUnavailable.message} ({exc.strerror})")


@contextmanager
def map_write_errors() -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise  # ObjectNotFound and AccessDenied are OSErrors too
    except OSError as exc:
        raise write_error(exc) from exc


def _close(fd: int) -> None:
    with suppress(OSError):
        os.close(fd)


def _fd_path(fd: int) -> str:
    return os.readlink(f"{_FD_PATHS}/{fd}")


@dataclass
class _Folder:
    """The key's folder, opened by a walk from the root: its descriptor, the key's last
    segment, and the folders on the way (descriptor, name in its parent's, whether this walk
    created it), root first; the caller closes them with ``close``."""

    fd: int
    name: str
    chain: list[tuple[int, str, bool]] = field(default_factory=list)

    @property
    def created(self) -> list[tuple[int, str]]:
        """(parent descriptor, name) of each folder this walk created, the deepest first."""
        made = []
        for index in range(1, len(self.chain)):
            fd, name, created = self.chain[index]
            if created:
                made.append((self.chain[index - 1][0], name))
        return made[::-1]

    def close(self) -> None:
        for fd, _, _ in self.chain:
            _close(fd)
        self.chain = []

    def unwind(self) -> None:
        """Remove the folders this walk created while they are empty, then ``close``."""
        for parent, name in self.created:
            if not _remove_empty(parent, name):
                break
        self.close()


def _open_dir(root: str, parent: int, name: str, path: str) -> int:
    """Open the folder ``name`` of ``parent`` (``path``; a link followed) if it lies under
    ``root``: the opened descriptor's own path is checked, as reads check files."""
    if not _HAVE_FD_PATHS:  # realpath first, then no link in the last component
        path = os.path.realpath(path)
        if not _under(root, path):
            raise InvalidKey("a folder of the key leads outside the storage")
        return os.open(path, _DIRECTORY_FLAGS | os.O_NOFOLLOW)
    fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent)
    try:
        inside = _under(root, _fd_path(fd))
    except BaseException:
        os.close(fd)
        raise
    if not inside:
        os.close(fd)
        raise InvalidKey("a folder of the key leads outside the storage")
    return fd


def _walk(root: str, key: str, create: bool) -> _Folder:
    """Open the folder of ``key`` (``check_key``-ed), creating what is missing if ``create``.
    ``InvalidKey`` when a folder on the way is a file or leads outside the root; OSErrors
    (``FileNotFoundError`` for a missing folder when not ``create``) propagate."""
    *folders, name = check_key(key).split("/")
    folder = _Folder(os.open(root, _DIRECTORY_FLAGS), name)
    folder.chain.append((folder.fd, "", False))
    path = root
    try:
        for part in folders:
            path = os.path.join(path, part)
            fd, created = _enter(root, folder.fd, part, path, create)
            folder.chain.append((fd, part, created))
            folder.fd = fd
    except BaseException as exc:
        folder.unwind()
        if isinstance(exc, NotADirectoryError):
            raise InvalidKey("a folder of the key is a file") from None
        raise
    return folder


def _rewalk(folder: _Folder, root: str, key: str) -> _Folder:
    """``folder`` walked again (it was removed meanwhile); what the first walk created stays
    this upload's to fsync, or to remove on abort."""
    made = [created for _, _, created in folder.chain]
    folder.close()
    folder = _walk(root, key, create=True)
    folder.chain = [
        (fd, name, created or (index < len(made) and made[index]))
        for index, (fd, name, created) in enumerate(folder.chain)
    ]
    return folder


def _enter(root: str, parent: int, part: str, path: str, create: bool) -> tuple[int, bool]:
    created = False
    for _ in range(_WALKS):
        try:
            return _open_dir(root, parent, part, path), created
        except FileNotFoundError:
            if not create:
                raise
        try:
            os.mkdir(part, _FOLDER_MODE, dir_fd=parent)
            created = True
        except FileExistsError:
            pass  # made meanwhile (opened next), or a dangling link (refused below)
    raise InvalidKey("a folder of the key is not a folder")


# Where a folder cannot be flocked (``NO_FLOCK``), one lock of this process serialises its
# commits and deletes (other processes not).
_PROCESS_LOCK = threading.Lock()


@contextmanager
def _locked(folder: int) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder``: held against every process that writes here."""
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in NO_FLOCK:
            raise
        with _PROCESS_LOCK:
            yield
        return
    try:
        yield
    finally:
        fcntl.flock(folder, fcntl.LOCK_UN)


def _current_etag(root: str, folder: int, name: str) -> str | None:
    """The ETag a read of the key would answer (links followed, checked under the root), or
    None when a read would find nothing."""
    try:
        fd = os.open(name, _PROBE_FLAGS, dir_fd=folder)
    except OSError as exc:
        if exc.errno in _UNREACHABLE:
            return None
        raise
    try:
        if _HAVE_FD_PATHS and not _under(root, _fd_path(fd)):
            return None
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return _meta("", st).etag if stat.S_ISREG(st.st_mode) else None


def _exists(folder: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _check_target(folder: int, name: str) -> bool:
    """Whether something is at the key: ``InvalidKey`` when it is a folder or no file."""
    try:
        st = os.stat(name, dir_fd=folder)  # what a read would open
    except FileNotFoundError:
        return _exists(folder, name)  # a dangling link still takes the name
    if stat.S_ISDIR(st.st_mode):
        raise InvalidKey("the key names a folder")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidKey("the key names something other than a file")
    return True


def _check_conditions(root: str, folder: int, name: str, conditions: WriteConditions) -> None:
    if conditions.if_none_match and _exists(folder, name):
        raise PreconditionFailed()
    if conditions.if_match is not None:
        etag = _current_etag(root, folder, name)
        if etag is None or (conditions.if_match != "*" and etag != conditions.if_match):
            raise PreconditionFailed()


def _check_room(folder: int, length: int | None) -> None:
    """``InsufficientStorage`` at once when the declared body cannot fit in the filesystem's
    free space (a cheap look: a quota or another write can still fill it; the writes tell)."""
    if not length:
        return
    st = os.fstatvfs(folder)
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserve
    if length > free * st.f_frsize:
        raise InsufficientStorage()


def _temporary_name() -> str:
    return TEMPORARY_PREFIX + secrets.token_hex(8)


def _store_metadata(fd: int, new: NewObject) -> bool:
    """The media type and header fields as extended attributes: False where the filesystem
    has none (the key's extension decides the type then)."""
    values = [(XATTR_MEDIA_TYPE, new.media_type)]
    values += [(xattr_name(n), v) for n, v in new.metadata if _FIELD_NAME.fullmatch(n)]
    for name, value in values:
        try:
            os.setxattr(fd, name, value.encode())
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                return False
            raise
    return True


def _remove_empty(parent: int, name: str) -> bool:
    """rmdir ``name`` of ``parent`` if it is an empty folder, under its lock (a commit into it
    waits, then finds it gone and makes it again); False when it is not removed."""
    try:
        fd = os.open(name, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except OSError:
        return False
    try:
        with _locked(fd):
            if os.stat(name, dir_fd=parent, follow_symlinks=False).st_ino != os.fstat(fd).st_ino:
                return False  # replaced since it was opened
            os.rmdir(name, dir_fd=parent)
            return True
    except OSError:
        return False  # not empty (ENOTEMPTY), busy, gone: best effort
    finally:
        os.close(fd)


class _Upload:
    """One upload's state and its blocking steps (both flavours' ``Upload`` call these)."""

    def __init__(
        self, root: str, files: OpenFiles, sweeps: Sweeps, key: str, new: NewObject
    ) -> None:
        self._root = root
        self._files = files
        self._sweeps = sweeps
        self._key = key
        self._new = new
        self._fd = -1
        self._folder: _Folder | None = None
        # Named files of this upload: (a folder's own descriptor, name); removed by abort.
        self._named: tuple[int, str] | None = None  # the body's, where there is no O_TMPFILE
        self._linked: tuple[int, str] | None = None  # an O_TMPFILE's name until its rename
        self._xattrs = False
        self._done = False

    def begin(self) -> None:
        BACKEND_CALLS.labels("local", "write").inc()
        try:
            with map_write_errors():
                folder = self._folder = _walk(self._root, self._key, create=True)
                for attempt in range(_WALKS):
                    _check_target(folder.fd, folder.name)
                    _check_conditions(self._root, folder.fd, folder.name, self._new.conditions)
                    _check_room(folder.fd, self._new.length)
                    try:
                        self._fd = self._open_temporary(folder.fd)
                        hold(self._fd)  # a live upload's: no sweep removes its name
                        break
                    except FileNotFoundError:  # a delete's cleanup removed the folder
                        if attempt == _WALKS - 1:
                            raise
                        folder = self._folder = _rewalk(folder, self._root, self._key)
                self._xattrs = _store_metadata(self._fd, self._new)
        except BaseException:
            self.abort()
            raise

    def _open_temporary(self, folder: int) -> int:
        if USE_TMPFILE:
            try:
                flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
                return os.open(".", flags, _FILE_MODE, dir_fd=folder)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE_ERRNOS:
                    raise
        name = _temporary_name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, _FILE_MODE, dir_fd=folder)
        self._named = (os.dup(folder), name)
        return fd

    def write(self, data: bytes) -> None:
        if self._fd < 0:
            raise ValueError("write to a committed or aborted upload")
        view = memoryview(data)
        with map_write_errors():
            while view:
                view = view[os.write(self._fd, view) :]

    def commit(self) -> Written:
        if self._fd < 0 or self._folder is None:
            raise ValueError("commit of a committed or aborted upload")
        with map_write_errors():
            os.fsync(self._fd)
            folder = self._folder
            for _ in range(_WALKS):
                with _locked(folder.fd):
                    # nlink 0: a delete's cleanup removed the empty folder before the lock.
                    if os.fstat(folder.fd).st_nlink > 0:
                        created = self._publish(folder)
                        self._done = True  # visible: abort has nothing left to undo
                        break
                folder = self._folder = _rewalk(folder, self._root, self._key)
            else:
                raise BackendUnavailable(f"{BackendUnavailable.message} (a folder keeps vanishing)")
            self._files.forget(self._key)  # the old file's descriptor: its space comes back
            st = os.fstat(self._fd)
        with suppress(OSError):  # visible already: the names' durability, best effort
            os.fsync(folder.fd)
            for parent, _ in folder.created:
                os.fsync(parent)
        with suppress(OSError):  # what a crashed upload left here (``leftovers``), when due
            if self._sweeps.due(folder.fd):
                sweep_folder(folder.fd)
        self._release()
        return Written(
            _meta(self._key, st, self._new.media_type if self._xattrs else None), created
        )

    def _publish(self, folder: _Folder) -> bool:
        """Make the file visible at the key (under the folder's lock): whether it is new."""
        conditions = self._new.conditions
        if conditions.if_match is not None:
            _check_conditions(self._root, folder.fd, folder.name, conditions)
        if self._named is None:  # an O_TMPFILE: linked through its /proc name
            source_dir, source = None, f"{_FD_PATHS}/{self._fd}"
        else:
            source_dir, source = self._named
        if conditions.if_none_match:  # link fails if the name exists: atomic, across processes
            try:
                os.link(source, folder.name, src_dir_fd=source_dir, dst_dir_fd=folder.fd)
            except FileExistsError:
                raise PreconditionFailed() from None
            self._unlink_named()
            return True
        created = not _exists(folder.fd, folder.name)
        if self._named is None:
            self._linked = (os.dup(folder.fd), _temporary_name())
            os.link(source, self._linked[1], dst_dir_fd=folder.fd)
            source_dir, source = self._linked
        os.rename(source, folder.name, src_dir_fd=source_dir, dst_dir_fd=folder.fd)
        self._forget_named()
        return created

    def _forget_named(self) -> None:
        for named in (self._named, self._linked):
            if named is not None:
                _close(named[0])
        self._named = self._linked = None

    def _unlink_named(self) -> None:
        for named in (self._named, self._linked):
            if named is not None:
                with suppress(OSError):
                    os.unlink(named[1], dir_fd=named[0])
        self._forget_named()

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._unlink_named()
        if self._fd >= 0:
            _close(self._fd)  # an O_TMPFILE's last reference: the kernel frees it
            self._fd = -1
        if self._folder is not None:
            self._folder.unwind()
        self._release()

    def _release(self) -> None:
        self._forget_named()
        if self._fd >= 0:
            _close(self._fd)
            self._fd = -1
        if self._folder is not None:
            self._folder.close()
            self._folder = None


def _delete(root: str, files: OpenFiles, key: str, conditions: WriteConditions) -> None:
    BACKEND_CALLS.labels("local", "delete").inc()
    check_key(key)
    try:
        folder = _walk(root, key, create=False)
    except InvalidKey:
        raise ObjectNotFound() from None  # a folder a read could not pass: nothing to delete
    except OSError as exc:
        if exc.errno in _UNREACHABLE:
            raise ObjectNotFound() from None
        raise write_error(exc) from exc
    try:
        with map_write_errors():
            with _locked(folder.fd):
                etag = _current_etag(root, folder.fd, folder.name)
                if etag is None:
                    raise ObjectNotFound()
                if conditions.if_match not in (None, "*", etag):
                    raise PreconditionFailed()
                os.unlink(folder.name, dir_fd=folder.fd)
            files.forget(key)
            with suppress(OSError):
                os.fsync(folder.fd)
        chain = folder.chain
        for index in range(len(chain) - 1, 0, -1):  # the deepest folder first, never the root
            if not _remove_empty(chain[index - 1][0], chain[index][1]):
                break
    finally:
        folder.close()


class LocalUpload:
    """An upload to local disk (blocking)."""

    __slots__ = ("_upload",)

    def __init__(self, upload: _Upload) -> None:
        self._upload = upload

    def write(self, data: bytes) -> None:
        self._upload.write(data)

    def commit(self) -> Written:
        return self._upload.commit()

    def abort(self) -> None:
        self._upload.abort()


class AsyncLocalUpload:
    """The async twin of ``LocalUpload``: every step runs in a worker thread."""

    __slots__ = ("_upload",)

    def __init__(self, upload: _Upload) -> None:
        self._upload = upload

    async def write(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._upload.write, data)

    async def commit(self) -> Written:
        return await anyio.to_thread.run_sync(self._upload.commit)

    async def abort(self) -> None:
        # Shielded: abort runs in the `finally` of cancelled tasks too, and must still clean up.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._upload.abort)


class LocalWriter:
    """Writes the files ``storage`` reads."""

    __slots__ = ("__weakref__", "_files", "_root", "_sweeps")  # weak: open_writer's sweeps

    def __init__(self, storage: LocalStorage) -> None:
        self._root = storage.root
        self._files = storage.open_files
        self._sweeps = Sweeps()

    def begin(self, key: str, new: NewObject) -> LocalUpload:
        upload = _Upload(self._root, self._files, self._sweeps, key, new)
        upload.begin()
        return LocalUpload(upload)

    def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None:
        _delete(self._root, self._files, key, conditions)


class AsyncLocalWriter:
    """The async twin of ``LocalWriter``."""

    __slots__ = ("__weakref__", "_files", "_root", "_sweeps")

    def __init__(self, storage: AsyncLocalStorage) -> None:
        self._root = storage.root
        self._files = storage.open_files
        self._sweeps = Sweeps()

    async def begin(self, key: str, new: NewObject) -> AsyncLocalUpload:
        upload = _Upload(self._root, self._files, self._sweeps, key, new)
        try:
            await anyio.to_thread.run_sync(upload.begin)
        except BaseException:  # cancelled after the thread began it: nothing may remain
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(upload.abort)
            raise
        return AsyncLocalUpload(upload)

    async def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None:
        await anyio.to_thread.run_sync(_delete, self._root, self._files, key, conditions)


def open_writer(
    options: StorageOptions, storage: Storage | AsyncStorage
) -> LocalWriter | AsyncLocalWriter:
    """The writer of the local ``storage`` opened from ``options``, in its flavour; what crashed
    uploads left under its root is swept in the background meanwhile, and again every
    ``leftovers.SWEEP_EVERY`` while the writer lives."""
    assert isinstance(options, LocalOptions)
    expected = LocalStorage if options.sync else AsyncLocalStorage
    if not isinstance(storage, expected):  # a wrapper would hide the root and the open files
        raise TypeError(f"local writes need the {expected.__name__} itself")
    sweeper = start_sweep(storage.root)
    writer: LocalWriter | AsyncLocalWriter
    if isinstance(storage, LocalStorage):
        writer = LocalWriter(storage)
    else:
        writer = AsyncLocalWriter(storage)
    weakref.finalize(writer, sweeper.stop.set)  # the sweeps end with the writer
    return writer
