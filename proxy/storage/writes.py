"""The write side of the storage seam: ``Writer.begin(key, new)`` opens an ``Upload`` that takes
the body's bytes in order and makes the object visible only at ``commit``, whole, or never
(``abort``); ``Writer.delete`` removes one. ``AsyncWriter`` and ``AsyncUpload`` are the twins
for the async flavour.

A writer is a separate object from the storage that reads the same place (``open_writer``):
the read Protocols stay as they are, and only a mount with writes on has one. The HTTP layer
(``proxy.uploads``) reads the request, checks the credentials, the size limit and the digests,
and hands the body over in batches; a backend decides how it stores them (a temporary file
renamed into place on local disk; one PutObject or a multipart upload on S3).

Nothing half-written is ever visible: until ``commit`` returns, readers see the previous
version (or nothing), and after ``abort`` nothing remains of the upload (no temporary file, no
pending multipart upload). ``abort`` may be called at any time, more than once, and after a
failed ``commit``; it never raises for what it cleans up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.storage.base import ObjectMeta


@dataclass(frozen=True, slots=True)
class WriteConditions:
    """RFC 9110 §13 preconditions of a write, checked atomically with it where the backend
    can (S3's conditional PutObject/CompleteMultipartUpload, a hard link that fails when the
    name exists) and under a per-key lock of the process where it cannot."""

    # The entity tag (wire form, quoted) the stored object must have; "*": any stored version
    # (If-Match: *), checked with the commit like a tag, so a write never recreates an object
    # deleted while its body streamed.
    if_match: str | None = None
    if_none_match: bool = False  # If-None-Match: * -- only when no object is stored at the key


NO_CONDITIONS = WriteConditions()


@dataclass(frozen=True, slots=True)
class NewObject:
    """What the request says about the object it writes."""

    media_type: str  # the request's Content-Type, else the key's extension's type
    length: int | None = None  # the body's length when the request gave Content-Length
    conditions: WriteConditions = NO_CONDITIONS
    # Response header fields stored with the object (``content-disposition``,
    # ``cache-control``; lower-case names), when PROXY_WRITES_KEEP_HEADERS allows them.
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Written:
    """A committed write: the new object's metadata (``etag`` set) and whether an object was
    stored at the key before (``created`` False: it was replaced, 200; else 201)."""

    meta: ObjectMeta
    created: bool
    parts: int = 1  # multipart parts uploaded (1: a single PutObject or a local file)


class Upload(Protocol):
    """One object being written (blocking: called from worker threads, one call at a time)."""

    def write(self, data: bytes) -> None:
        """The next bytes of the body, in order; any size, never empty."""
        ...

    def commit(self) -> Written:
        """Make the object visible, whole and at once. Raises ``PreconditionFailed`` when the
        conditions no longer hold (nothing is stored then), another ``StorageError`` when the
        backend fails; the caller then calls ``abort``."""
        ...

    def abort(self) -> None:
        """Discard everything written so far; idempotent, and a no-op after ``commit``."""
        ...


class AsyncUpload(Protocol):
    """The async twin of ``Upload``."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> Written: ...

    async def abort(self) -> None: ...


class Writer(Protocol):
    """What writes a blocking storage's objects."""

    def begin(self, key: str, new: NewObject) -> Upload:
        """Start writing ``key`` (already checked by ``proxy.storage.keys.check_key``). May
        raise ``PreconditionFailed`` at once when a condition already fails (a cheap look:
        commit checks again), so a body that could never be stored is not read."""
        ...

    def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None:
        """Remove ``key``: ``ObjectNotFound`` when nothing is stored there, ``PreconditionFailed``
        when ``conditions.if_match`` names another version."""
        ...


class AsyncWriter(Protocol):
    """The async twin of ``Writer``."""

    async def begin(self, key: str, new: NewObject) -> AsyncUpload: ...

    async def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None: ...
