"""PUT and DELETE ``/objects/{key}``: the write path, one HTTP layer for both flavours.

Off unless ``PROXY_WRITES`` (or a mount's ``writes``) is on: then ``ObjectEndpoint`` hands
these methods to ``WriteEndpoint``, after finding the mount. Every write needs credentials
(``proxy.auth.authorize_write``), a public mount's too. What can be refused is refused before a
byte of the body is read (uvicorn sends ``100 Continue`` only at the first ``receive``): the
credentials, the key, the declared length against ``PROXY_MAX_UPLOAD_SIZE``, malformed digests
or preconditions, and a precondition the storage already sees failing (``Writer.begin``).

The body is read on the event loop and each received message is handed to the mount's
``Upload`` as it came (no copy), the next received once it is written (in a worker thread for
the blocking flavour): one message held per upload, besides what uvicorn buffers.
``Content-MD5`` and ``x-amz-checksum-sha256`` are verified over the received bytes before the
commit; any failure (the client gone, a digest mismatch, the body past the limit, the storage
failing) aborts the upload, so nothing half-written is ever visible (``proxy.storage.writes``).
A refusal sent before the body was read whole closes the connection: the rest of the body is
not read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import metrics
from proxy.auth import WRITE_METHODS, authorize_write
from proxy.http.codec import parse_etag
from proxy.http.plan import error_body
from proxy.mounts import ServedMount
from proxy.storage.base import MAX_STORED_FIELD, stored_field
from proxy.storage.errors import InvalidKey, ObjectNotFound, PreconditionFailed
from proxy.storage.keys import check_key
from proxy.storage.mediatypes import media_type_for
from proxy.storage.notes import CURRENT
from proxy.storage.writes import (
    AsyncUpload,
    AsyncWriter,
    NewObject,
    Upload,
    WriteConditions,
    Writer,
    Written,
)

logger = logging.getLogger("proxy")

# type "/" subtype, then parameters: visible ASCII, no CR/LF (it is stored and sent back).
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:[ \t]*;[\x20-\x7e]*)?")
_LENGTH = re.compile(r"[0-9]{1,18}")
_DIGESTS = {b"content-md5": ("md5", 16), b"x-amz-checksum-sha256": ("sha256", 32)}


class Refused(Exception):
    """A write answered with an error before or instead of storing (never raised past here)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.counted = False  # in the uploads metric already


class ClientGone(Exception):
    """The client closed the connection before its body ended."""


def _fields(scope: Scope) -> dict[bytes, bytes]:
    """The request's header fields by lower-case name; one given twice where it must come once
    is a 400."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in found and name in _ONCE:
            raise Refused(400, "invalid_request", f"{name.decode()} is given more than once")
        found[name] = value
    return found


_ONCE = frozenset(
    {
        b"content-length",
        b"content-type",
        b"content-md5",
        b"x-amz-checksum-sha256",
        b"if-match",
        b"if-none-match",
        b"content-disposition",
        b"cache-control",
    }
)


def _digests(fields: dict[bytes, bytes]) -> list[tuple[Any, bytes, str]]:
    """(hash object, expected digest, header name) for each digest the request declares."""
    wanted = []
    for name, (algorithm, size) in _DIGESTS.items():
        value = fields.get(name)
        if value is None:
            continue
        try:
            expected = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            expected = b""
        if len(expected) != size:
            raise Refused(400, "invalid_digest", f"{name.decode()} is not a base64 {algorithm}")
        wanted.append((hashlib.new(algorithm), expected, name.decode()))
    return wanted


def _conditions(fields: dict[bytes, bytes], method: str) -> WriteConditions:
    """The write's preconditions (``If-Match: *`` too goes to the backend, which checks it with
    the commit as it checks a tag)."""
    if_match = fields.get(b"if-match")
    if_none_match = fields.get(b"if-none-match")
    tag = None
    if if_match is not None:
        value = if_match.decode("latin-1").strip()
        if value == "*":
            tag = value
        else:
            parsed = parse_etag(value)
            if parsed is None:
                raise Refused(400, "invalid_request", "If-Match: one entity tag, or *")
            if parsed.weak:  # RFC 9110 §13.1.1: If-Match compares strongly; a weak tag never
                raise Refused(412, "precondition_failed", "If-Match: a weak tag never matches")
            tag = value
    create_only = False
    if if_none_match is not None:
        if method != "PUT" or if_none_match.strip() != b"*":
            raise Refused(400, "invalid_request", "a write takes If-None-Match: * only (on PUT)")
        create_only = True
    if create_only and tag is not None:
        raise Refused(412, "precondition_failed", "If-Match and If-None-Match: * never both hold")
    return WriteConditions(if_match=tag, if_none_match=create_only)


def _new_object(
    key: str, fields: dict[bytes, bytes], conditions: WriteConditions, keep: list[str]
) -> NewObject:
    length = None
    if (raw := fields.get(b"content-length")) is not None:
        if not _LENGTH.fullmatch(raw.decode("latin-1").strip()):
            raise Refused(400, "invalid_request", "Content-Length is not a length")
        length = int(raw)
    media_type = media_type_for(key)
    if (given := fields.get(b"content-type")) is not None:
        text = given.decode("latin-1").strip()
        if not _MEDIA_TYPE.fullmatch(text):
            raise Refused(400, "invalid_request", "Content-Type is not a media type")
        media_type = text
    metadata = []
    for name in keep:
        value = fields.get(name.encode())
        if value is not None:
            text = value.decode("latin-1").strip()
            if text and stored_field(text) is None:  # what a read could not send back
                detail = f"{name} must be visible ASCII, {MAX_STORED_FIELD} characters at most"
                raise Refused(400, "invalid_request", detail)
            metadata.append((name, text))
    return NewObject(media_type, length, conditions, tuple(metadata))


class _Body:
    """Reads the request body on the event loop and hands each message to an upload as it
    came, the next received once it is written; counts and hashes what it passes on.

    One message at a time: while it is written, the connection layer reads no more
    (``proxy.connection._BodyFlow``: the rest waits in the kernel's socket buffer), and the next
    read follows the next ``receive``. Receiving it meanwhile held another message per upload
    (docs/design.md, "Uploads: memory"). No batches either: joined into 256 KiB batches, the
    messages and the joined copies were the largest Python objects of 20 concurrent uploads
    (12.6 MB of 84 in tracemalloc)."""

    def __init__(
        self,
        receive: Receive,
        write: Callable[[bytes], Awaitable[None]],
        limit: int,
        digests: list[tuple[Any, bytes, str]],
    ) -> None:
        self.receive = receive
        self.write = write
        self.limit = limit
        self.digests = digests
        self.received = 0
        self.ended = False  # the whole body was received

    async def run(self) -> None:
        while not self.ended:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            self.ended = not message.get("more_body", False)
            if chunk:
                self.received += len(chunk)
                if self.received > self.limit:
                    raise Refused(413, "too_large", "the body is larger than this proxy stores")
                if self.digests:
                    await anyio.to_thread.run_sync(_update, self.digests, chunk)
                await self.write(chunk)
            del message, chunk  # not held while the next message is awaited

    def check_digests(self) -> None:
        for digest, expected, name in self.digests:
            if digest.digest() != expected:
                raise Refused(400, "bad_digest", f"the body does not match its {name}")


def _update(digests: list[tuple[Any, bytes, str]], data: bytes) -> None:
    for digest, _, _ in digests:
        digest.update(data)  # hashlib releases the GIL for large buffers


class _Flavour:
    """A mount's writer seen through one awaitable interface (blocking calls in threads)."""

    def __init__(self, served: ServedMount) -> None:
        assert served.writer is not None
        self.sync = served.sync
        self.writer = served.writer

    async def begin(self, key: str, new: NewObject) -> Upload | AsyncUpload:
        if self.sync:
            return await anyio.to_thread.run_sync(cast(Writer, self.writer).begin, key, new)
        return await cast(AsyncWriter, self.writer).begin(key, new)

    async def write(self, upload: Upload | AsyncUpload, data: bytes) -> None:
        if self.sync:
            await anyio.to_thread.run_sync(cast(Upload, upload).write, data)
        else:
            await cast(AsyncUpload, upload).write(data)

    async def commit(self, upload: Upload | AsyncUpload) -> Written:
        if self.sync:
            return await anyio.to_thread.run_sync(cast(Upload, upload).commit)
        return await cast(AsyncUpload, upload).commit()

    async def abort(self, upload: Upload | AsyncUpload) -> None:
        with anyio.CancelScope(shield=True):
            try:
                if self.sync:
                    await anyio.to_thread.run_sync(cast(Upload, upload).abort)
                else:
                    await cast(AsyncUpload, upload).abort()
            except Exception:  # abort never raises by contract: a bug, but the answer stands
                logger.exception("aborting an upload failed")

    async def delete(self, key: str, conditions: WriteConditions) -> None:
        if self.sync:
            await anyio.to_thread.run_sync(cast(Writer, self.writer).delete, key, conditions)
        else:
            await cast(AsyncWriter, self.writer).delete(key, conditions)


def _location(scope: Scope) -> str:
    """The written object's URL path: the request's own, as the client sent it."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else quote(scope["path"])


def error_response(status: int, code: str, detail: str) -> Response:
    return Response(error_body(code, detail), status, media_type="application/json")


class WriteEndpoint:
    """PUT and DELETE of one mount's key (``ObjectEndpoint`` found the mount)."""

    async def get_response(self, request: Request, served: ServedMount, key: str) -> Response:
        scope = request.scope
        notes = CURRENT.get()
        if notes is not None and scope["method"] == "PUT":
            notes.received = 0
        try:
            await authorize_write(request, served.path + key, served.mount)
            if not key or key.endswith("/"):
                raise InvalidKey("a key ending in '/' names a folder, not an object")
            key = check_key(key)
            fields = _fields(scope)
            conditions = _conditions(fields, scope["method"])
            flavour = _Flavour(served)
            if scope["method"] == "DELETE":
                try:
                    await flavour.delete(key, conditions)
                except ObjectNotFound:
                    if conditions.if_match is None:
                        raise
                    # RFC 9110 §13.1.1: If-Match is false where nothing is stored; it is
                    # evaluated before the method, so 412 rather than 404.
                    raise PreconditionFailed() from None
                return Response(status_code=204)
            return await self._put(request, served, key, fields, conditions, flavour)
        except Refused as refused:
            if scope["method"] == "PUT" and not refused.counted:
                metrics.UPLOADS.labels(refused.code).inc()
            return error_response(refused.status, refused.code, refused.detail)

    async def _put(
        self,
        request: Request,
        served: ServedMount,
        key: str,
        fields: dict[bytes, bytes],
        conditions: WriteConditions,
        flavour: _Flavour,
    ) -> Response:
        settings = served.settings
        limit = int(settings.max_upload_size)
        new = _new_object(key, fields, conditions, list(settings.writes_keep_headers))
        digests = _digests(fields)
        if new.length is not None and new.length > limit:
            raise Refused(413, "too_large", "the body is larger than this proxy stores")
        upload = await flavour.begin(key, new)
        body = _Body(
            request.receive,
            lambda data: flavour.write(upload, data),
            limit,
            digests,
        )
        stored = False
        outcome = "backend_error"
        try:
            try:
                await body.run()
            except ClientGone:
                outcome = "client_closed"
                _note_gone()
                return error_response(400, "incomplete_body", "the request body ended early")
            except Refused as refused:
                outcome, refused.counted = refused.code, True
                raise
            finally:
                metrics.UPLOAD_BYTES.inc(body.received)
                notes = CURRENT.get()
                if notes is not None:
                    notes.received = body.received
            try:
                body.check_digests()
            except Refused as refused:
                outcome, refused.counted = refused.code, True
                raise
            try:
                written = await flavour.commit(upload)
            except PreconditionFailed:
                outcome = "precondition_failed"
                raise
            stored = True
            outcome = "stored"
        finally:
            if not stored:
                await flavour.abort(upload)
            metrics.UPLOADS.labels(outcome).inc()
        metrics.UPLOAD_PARTS.inc(written.parts)
        meta = written.meta
        answer = {
            "key": served.path + key,
            "size": meta.size,
            "etag": meta.etag,
            "media_type": meta.media_type,
        }
        headers = {"location": _location(request.scope), "cache-control": "no-store"}
        if meta.etag:
            headers["etag"] = meta.etag
        return Response(
            json.dumps(answer, separators=(",", ":")).encode(),
            status_code=201 if written.created else 200,
            headers=headers,
            media_type="application/json",
        )


def _note_gone() -> None:
    notes = CURRENT.get()
    if notes is not None:
        notes.client_gone = True


class CloseUnreadBodies:
    """ASGI middleware for writes: when the answer to a PUT or DELETE starts before its body
    was read to the end (a refusal: credentials, limits, preconditions), the connection closes
    after it (``Connection: close``), so an unread body of gigabytes is neither read nor thrown
    away byte by byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        done = False

        async def watched_receive() -> Message:
            nonlocal done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not done:
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, watched_receive, closing_send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False
