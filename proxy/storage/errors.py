"""Storage errors: every backend raises these, and only ``app.py`` turns them into statuses.

    StorageError
    ├── ObjectNotFound(FileNotFoundError)   -> 404
    ├── AccessDenied(PermissionError)        -> 403
    ├── InvalidKey(ValueError)               -> 400
    ├── BackendUnavailable(ConnectionError)  -> 503
    ├── BackendTimeout(TimeoutError)         -> 504
    ├── ObjectChanged                        -> 503: replaced between two calls of one response
    ├── PreconditionFailed                   -> 412: a write's If-Match / If-None-Match failed
    ├── InsufficientStorage                  -> 507: no room for a write (disk full, quota)
    ├── BodyTruncated                        -> raised mid-stream: the connection is aborted
    └── RangeNotSatisfiable                  -> S3's own signal, never leaves the backend

Messages are safe to show to clients: they never hold paths, hostnames or credentials.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of all storage failures."""

    message = "storage error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)


class ObjectNotFound(StorageError, FileNotFoundError):
    message = "no object at this key"


class AccessDenied(StorageError, PermissionError):
    message = "access to this object is denied"


class InvalidKey(StorageError, ValueError):
    message = "invalid object key"


class BackendUnavailable(StorageError, ConnectionError):
    message = "the storage backend is unavailable"


class BackendTimeout(StorageError, TimeoutError):
    message = "the storage backend timed out"


class ObjectChanged(StorageError):
    """A later call of one response found another version (its ETag pin failed)."""

    message = "the object changed while it was being read; retry"


class PreconditionFailed(StorageError):
    """A write's or delete's precondition does not hold: nothing was stored or removed."""

    message = "the object's current state does not meet the request's precondition"


class InsufficientStorage(StorageError):
    """A write found no room (a full filesystem or quota): nothing of it was stored."""

    message = "the storage has no room for this object"


class BodyTruncated(StorageError):
    """The body ended before the bytes its metadata promised (the object changed or shrank)."""

    message = "the object body ended early"


class RangeNotSatisfiable(StorageError):
    """S3's InvalidRange: the metadata must come from HeadObject so the plan can answer 416."""

    message = "the range is not satisfiable"
