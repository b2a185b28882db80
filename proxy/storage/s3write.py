"""Writes to S3 (``proxy.storage.writes``): ``S3Writer`` (boto3, blocking) and ``AsyncS3Writer``
(aiobotocore), twins, through the read storage's own client, bucket and key prefix.

A body that ends at or below ``S3Options.multipart_threshold`` is one PutObject; a longer one a
multipart upload (CreateMultipartUpload, an UploadPart per part, CompleteMultipartUpload). The
first part holds up to ``max(threshold, part_size)`` bytes, the others ``part_size``: a body is
known to be longer than the threshold only once its first part is full (chunked uploads say no
length). Each part is spooled to an anonymous temporary file (unlinked: gone with the process)
whose sha256 is computed as it fills, so that SigV4's payload hash never reads the part again
(``_SpooledSigV4Auth``). At most two parts exist per upload: the one being uploaded (in the
background: the next part fills meanwhile) and the one filling; a full part waits for the
previous one's UploadPart before its own starts.

Conditions (``WriteConditions``): ``begin`` refuses at once (HeadObject) a write whose
condition already fails. The commit sends them to S3 (IfNoneMatch / IfMatch on PutObject and
CompleteMultipartUpload), which checks them atomically on AWS. The test servers do not always:
moto 5.2.6 ignores IfMatch on CompleteMultipartUpload and, like SeaweedFS 4.48, checks
IfNoneMatch on it before it acts (racing completes: 2 winners of 2 on moto, up to 4 of 4 on
SeaweedFS; their conditional PutObject held). So a conditional commit also runs under a lock per
key of the process, with a HeadObject re-check inside it: writers racing through one process
always give one winner; across processes only the server's own check holds. ``created``: that
same HeadObject, made just before every commit (an unconditional one too: S3 does not say
whether a write replaced something); a write racing in between may make it wrong.

Deadlines: the read path's ``deadline`` bounds an exchange until its response starts; an upload
sends its body first. The body-carrying calls (PutObject, UploadPart) and CompleteMultipartUpload
run without it: boto3's in a thread of the upload executor (a fresh context: no exchange's
deadline), each socket operation bounded by botocore's connect and read timeouts, a stall
failing there; aiobotocore's (aiohttp bounds no write) within ``deadline + bytes /
UPLOAD_RATE_FLOOR`` seconds per call, its CompleteMultipartUpload by aiohttp's read timeout per
wait (S3 keeps a long one alive with whitespace). The short calls (HeadObject,
CreateMultipartUpload, AbortMultipartUpload, DeleteObject) keep the read path's deadline.

The slice cache in front of a mount forgets a key's metadata after each commit and delete
(``SliceStore.forget_meta``): its next request asks S3. Slices are kept per ETag: two versions
never mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
import botocore.auth

from proxy.http.codec import quote_etag
from proxy.storage.base import AsyncStorage, ObjectMeta, Storage
from proxy.storage.connections import deadline
from proxy.storage.errors import (
    BackendTimeout,
    ObjectChanged,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)
from proxy.storage.options import S3Options, StorageOptions
from proxy.storage.s3answer import map_client_errors
from proxy.storage.writes import (
    NO_CONDITIONS,
    AsyncWriter,
    NewObject,
    WriteConditions,
    Writer,
    Written,
)

logger = logging.getLogger("proxy.s3")

T = TypeVar("T")

# The slowest upload a call of the aiobotocore flavour allows for (bytes per second) on top of
# the deadline: a 16 MiB part may take deadline + 64 s.
UPLOAD_RATE_FLOOR = 256 * 1024
MAX_PARTS = 10_000  # S3's limit per multipart upload
_KEPT_FIELDS = {"content-disposition": "ContentDisposition", "cache-control": "CacheControl"}


# --- spooled parts -------------------------------------------------------------------------------


class _Spool(io.BufferedRandom):
    """One part's bytes in an anonymous temporary file, and their sha256 as they came: the
    UploadPart's or PutObject's Body (botocore seeks it, to sign and on retries)."""

    def __init__(self, directory: Path | None = None) -> None:
        super().__init__(tempfile.TemporaryFile(buffering=0, dir=directory))
        self.length = 0
        self._sha256 = hashlib.sha256()
        self.payload_sha256: str | None = None  # set when sealed: what SigV4 signs

    def add(self, data: memoryview) -> None:
        self.write(data)
        self._sha256.update(data)
        self.length += len(data)

    def seal(self) -> _Spool:
        self.flush()
        self.seek(0)
        self.payload_sha256 = self._sha256.hexdigest()
        return self


class _SpooledSigV4Auth(botocore.auth.S3SigV4Auth):  # type: ignore[misc]  # untyped
    """S3's SigV4 signer, which takes a spooled part's payload hash as it was computed while
    the part filled: botocore would read the whole part again to hash it (16 MiB: ~10-25 ms
    measured here, on the event loop in the aiobotocore flavour)."""

    def payload(self, request: Any) -> str:
        known = getattr(request.body, "payload_sha256", None)
        if (
            known is not None
            and not self._is_streaming_checksum_payload(request)
            and self._should_sha256_sign_payload(request)
        ):
            return str(known)
        return str(super().payload(request))


_SIGNER = "s3v4-proxy-spooled"
botocore.auth.AUTH_TYPE_MAPS.setdefault(_SIGNER, _SpooledSigV4Auth)


def _choose_signer(signature_version: Any = None, **_: Any) -> str | None:
    return _SIGNER if signature_version == "s3v4" else None


def _sign_spooled(client: Any) -> None:
    """Sign the client's body-carrying calls with ``_SpooledSigV4Auth`` (once per client)."""
    for operation in ("PutObject", "UploadPart"):
        client.meta.events.register_first(
            f"choose-signer.s3.{operation}", _choose_signer, unique_id=f"proxy-spooled-{operation}"
        )


class _Parts:
    """The body cut into parts as it comes: the part filling, and whether the body is longer
    than the threshold (a multipart upload)."""

    def __init__(self, options: S3Options, length: int | None) -> None:
        self.threshold = options.multipart_threshold
        self.part_size = options.multipart_part_size
        self.first_size = max(self.threshold, self.part_size)
        self.spool_dir = options.spool_dir
        self.received = 0
        self.multipart = length is not None and length > self.threshold
        self.filled = 0  # parts filled so far (sealed)
        self.filling: _Spool | None = None

    def take(self, data: memoryview) -> tuple[int, _Spool | None]:
        """Spool what of ``data`` fits in the part filling (blocking: a file write): the bytes
        taken and the part they filled (sealed), if they did."""
        if self.filling is None:
            self.filling = _Spool(self.spool_dir)
        capacity = self.first_size if self.filled == 0 else self.part_size
        taken = min(len(data), capacity - self.filling.length)
        self.filling.add(data[:taken])
        self.received += taken
        if self.received > self.threshold:
            self.multipart = True
        if self.filling.length < capacity:
            return taken, None
        return taken, self._sealed()

    def last(self) -> _Spool | None:
        """The part filling, sealed (the body ended); None when it holds nothing and is not the
        only part."""
        if self.filling is None and self.filled == 0:
            self.filling = _Spool(self.spool_dir)
        if self.filling is None or (self.filling.length == 0 and self.filled > 0):
            self.close()
            return None
        return self._sealed()

    def _sealed(self) -> _Spool:
        spool, self.filling = self.filling, None
        assert spool is not None
        self.filled += 1
        return spool.seal()

    def close(self) -> None:
        if self.filling is not None:
            self.filling.close()
            self.filling = None


# --- what both flavours share ----------------------------------------------------------------


@contextmanager
def _write_errors(if_match: bool = False) -> Iterator[None]:
    """``map_client_errors`` for writes: S3's 412 is the write's ``PreconditionFailed`` (the
    read path's ``ObjectChanged``), and so is NoSuchKey for an If-Match write (moto's answer
    when nothing is stored)."""
    try:
        with map_client_errors():
            yield
    except ObjectChanged as exc:
        raise PreconditionFailed() from exc
    except ObjectNotFound as exc:
        if if_match:
            raise PreconditionFailed() from exc
        raise


def _check(conditions: WriteConditions, etag: str | None) -> None:
    """Raise ``PreconditionFailed`` unless ``conditions`` hold for the stored version's ``etag``
    (None: nothing stored). If-Match compares strongly (RFC 9110 §13.1.1); ``*`` takes any."""
    if conditions.if_none_match and etag is not None:
        raise PreconditionFailed()
    wanted = conditions.if_match
    if wanted is not None and (
        etag is None or (wanted != "*" and (etag.startswith("W/") or etag != wanted))
    ):
        raise PreconditionFailed()


def _conditional(conditions: WriteConditions) -> bool:
    return conditions.if_none_match or conditions.if_match is not None


def _if_match(conditions: WriteConditions, etag: str | None) -> dict[str, str]:
    """S3's IfMatch for ``conditions`` once ``_check`` passed against ``etag``, the version
    stored now: ``*`` becomes that version's tag, so S3 refuses the write (412) if it was
    deleted or replaced since the look, from any process."""
    wanted = conditions.if_match
    if wanted is None:
        return {}
    return {"IfMatch": etag if wanted == "*" and etag is not None else wanted}


def _condition_args(conditions: WriteConditions, etag: str | None) -> dict[str, str]:
    args = _if_match(conditions, etag)
    if conditions.if_none_match:
        args["IfNoneMatch"] = "*"
    return args


def _put_args(new: NewObject) -> dict[str, str]:
    args = {"ContentType": new.media_type}
    for name, value in new.metadata:
        field = _KEPT_FIELDS.get(name.lower())
        if field is not None:
            args[field] = value
    return args


def _head_etag(response: Any) -> str:
    return quote_etag(response.get("ETag")) or '""'


class _KeyLocks:
    """Locks per key, made for as long as someone holds or waits for them."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str, str], list[Any]] = {}  # key -> [lock, users]

    def take(self, key: tuple[str, str, str]) -> Any:
        with self._guard:
            entry = self._locks.setdefault(key, [self._make(), 0])
            entry[1] += 1
            return entry[0]

    def give_back(self, key: tuple[str, str, str]) -> None:
        with self._guard:
            entry = self._locks[key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


_THREAD_LOCKS = _KeyLocks(threading.Lock)
_TASK_LOCKS = _KeyLocks(asyncio.Lock)


class _Target:
    """What both writer flavours hold: the read storage's client, bucket and prefix, the
    slice cache in front of it (or None), and the options."""

    def __init__(self, options: S3Options, storage: Any) -> None:
        self.cache = None
        inner = storage
        if hasattr(storage, "store") and hasattr(storage, "inner"):  # a slice cache
            self.cache, inner = storage, storage.inner
        self.inner = inner
        self.client = inner.client
        self.bucket: str = inner.bucket
        self.prefix: str = inner.prefix
        self.options = options
        self.deadline = options.deadline
        _sign_spooled(self.client)

    def s3_key(self, key: str) -> str:
        return self.prefix + key

    def lock_key(self, key: str) -> tuple[str, str, str]:
        return (str(self.client.meta.endpoint_url), self.bucket, self.s3_key(key))

    def forget(self, key: str) -> None:
        """The slice cache forgets ``key``'s metadata: its next request asks S3."""
        if self.cache is not None:
            self.cache.store.forget_meta(self.inner.location(key))

    def write_bound(self, size: int) -> float:
        return self.deadline + size / UPLOAD_RATE_FLOOR


def _meta(key: str, new: NewObject, size: int, etag: str | None) -> ObjectMeta:
    return ObjectMeta(key=key, size=size, media_type=new.media_type, etag=quote_etag(etag))


class _Upload:
    """What both upload flavours hold and the calls they make, built the same: the body cut
    into parts, a full part held until the body goes on past it (or ends there: one
    PutObject), the multipart upload's id and its parts' ETags."""

    def __init__(self, target: _Target, key: str, new: NewObject) -> None:
        self._target = target
        self._key = key
        self._new = new
        self._parts = _Parts(target.options, new.length)
        self._full: _Spool | None = None  # a full part not uploaded yet (the body may end there)
        self._upload_id: str | None = None
        self._etags: list[str] = []
        self._done = False

    def _check_open(self) -> None:
        if self._done:
            raise StorageError("the upload is over")

    def _object(self) -> dict[str, str]:
        return {"Bucket": self._target.bucket, "Key": self._target.s3_key(self._key)}

    def _create_args(self) -> dict[str, str]:
        return self._object() | _put_args(self._new)

    def _part_args(self, spool: _Spool) -> dict[str, Any]:
        """The next UploadPart's arguments (the upload is started)."""
        number = len(self._etags) + 1
        if number > MAX_PARTS:
            raise StorageError("the body has more parts than S3 takes")
        return {**self._object(), "UploadId": self._upload_id, "PartNumber": number, "Body": spool}

    def _put_object_args(self, spool: _Spool, before: str | None) -> dict[str, Any]:
        """PutObject's arguments, once the conditions held for ``before``."""
        conditions = _condition_args(self._new.conditions, before)
        return {**self._object(), "Body": spool, **_put_args(self._new), **conditions}

    def _complete_args(self, before: str | None) -> dict[str, Any]:
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(self._etags, 1)]
        return {
            **self._object(),
            "UploadId": self._upload_id,
            "MultipartUpload": {"Parts": parts},
            **_condition_args(self._new.conditions, before),
        }

    def _if_match(self) -> bool:
        return self._new.conditions.if_match is not None

    def _put_written(self, spool: _Spool, response: Any, before: str | None) -> Written:
        self._done = True
        meta = _meta(self._key, self._new, spool.length, response.get("ETag"))
        return Written(meta, created=before is None)

    def _complete_written(self, response: Any, before: str | None) -> Written:
        self._done = True
        meta = _meta(self._key, self._new, self._parts.received, response.get("ETag"))
        return Written(meta, created=before is None, parts=len(self._etags))


# --- boto3 ---------------------------------------------------------------------------------------

_EXECUTOR_LOCK = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _uploads() -> ThreadPoolExecutor:
    """The threads the boto3 flavour's body-carrying calls run in (one per upload at most at a
    time; a fresh context each: no exchange's deadline applies)."""
    global _executor
    with _EXECUTOR_LOCK:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="s3-upload")
        return _executor


class S3Writer:
    """Writes a bucket's objects with the read storage's boto3 client."""

    def __init__(self, options: S3Options, storage: Any) -> None:
        self._target = _Target(options, storage)

    def head(self, key: str) -> str | None:
        """The stored version's ETag (quoted), None when nothing is stored."""
        target = self._target
        try:
            with deadline(target.deadline), map_client_errors():
                response = target.client.head_object(Bucket=target.bucket, Key=target.s3_key(key))
        except ObjectNotFound:
            return None
        return _head_etag(response)

    def begin(self, key: str, new: NewObject) -> S3Upload:
        if _conditional(new.conditions):
            _check(new.conditions, self.head(key))
        return S3Upload(self, key, new)

    @contextmanager
    def serialised(self, key: str, conditions: WriteConditions) -> Iterator[None]:
        """Hold ``key``'s lock of the process when ``conditions`` are given."""
        if not _conditional(conditions):
            yield
            return
        lock_key = self._target.lock_key(key)
        lock = _THREAD_LOCKS.take(lock_key)
        try:
            if not lock.acquire(timeout=self._target.write_bound(0) * 4):
                raise BackendTimeout()
            try:
                yield
            finally:
                lock.release()
        finally:
            _THREAD_LOCKS.give_back(lock_key)

    def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None:
        target = self._target
        try:
            with self.serialised(key, conditions):
                etag = self.head(key)
                if etag is None:
                    raise ObjectNotFound()
                _check(conditions, etag)
                args = {"Bucket": target.bucket, "Key": target.s3_key(key)}
                args |= _if_match(conditions, etag)
                with deadline(target.deadline), _write_errors(if_match=True):
                    target.client.delete_object(**args)
        finally:
            target.forget(key)

    def call(self, name: str, **args: Any) -> Any:
        """A body-carrying call, in an upload thread (no exchange's deadline), waited for."""
        return self.submit(name, **args).result()

    def submit(self, name: str, **args: Any) -> Future[Any]:
        return _uploads().submit(getattr(self._target.client, name), **args)


class S3Upload(_Upload):
    """One object being written with boto3 (see the module's docstring)."""

    def __init__(self, writer: S3Writer, key: str, new: NewObject) -> None:
        super().__init__(writer._target, key, new)
        self._writer = writer
        self._uploading: tuple[Future[Any], _Spool] | None = None

    def write(self, data: bytes) -> None:
        self._check_open()
        view = memoryview(data)
        while view:  # bounded: each turn takes at least one byte
            if self._full is not None:  # the body goes on past a full part: multipart
                held, self._full = self._full, None
                self._send(held)
            taken, full = self._parts.take(view)
            view = view[taken:]
            if full is not None:
                if self._parts.multipart:
                    self._send(full)
                else:
                    self._full = full

    def _send(self, spool: _Spool) -> None:
        """Start ``spool``'s UploadPart once the previous one has ended."""
        target = self._target
        try:
            if self._upload_id is None:
                with deadline(target.deadline), _write_errors():
                    response = target.client.create_multipart_upload(**self._create_args())
                self._upload_id = response["UploadId"]
            self._wait()
            args = self._part_args(spool)
        except BaseException:
            spool.close()
            raise
        self._uploading = (self._writer.submit("upload_part", **args), spool)

    def _wait(self) -> None:
        """Wait for the UploadPart under way, if any; its spool is closed."""
        if self._uploading is None:
            return
        future, spool = self._uploading
        self._uploading = None
        try:
            with _write_errors():
                response = future.result()
        finally:
            spool.close()
        self._etags.append(response["ETag"])

    def commit(self) -> Written:
        self._check_open()
        try:
            if self._upload_id is None and not self._parts.multipart:
                return self._put()
            if self._full is not None:
                full, self._full = self._full, None
                self._send(full)
            last = self._parts.last()
            if last is not None:
                self._send(last)
            self._wait()
            return self._complete()
        finally:
            self._target.forget(self._key)

    def _put(self) -> Written:
        conditions = self._new.conditions
        spool = self._full if self._full is not None else self._parts.last()
        self._full = None
        assert spool is not None
        try:
            with self._writer.serialised(self._key, conditions):
                before = self._writer.head(self._key)
                _check(conditions, before)
                with _write_errors(self._if_match()):
                    response = self._writer.call(
                        "put_object", **self._put_object_args(spool, before)
                    )
        finally:
            spool.close()
        return self._put_written(spool, response, before)

    def _complete(self) -> Written:
        conditions = self._new.conditions
        with self._writer.serialised(self._key, conditions):
            before = self._writer.head(self._key)
            _check(conditions, before)
            with _write_errors(self._if_match()):
                response = self._writer.call(
                    "complete_multipart_upload", **self._complete_args(before)
                )
        return self._complete_written(response, before)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._wait()
        except Exception as exc:  # noqa: BLE001  # the upload is dropped: only logged
            logger.info("S3 upload part failed before the abort: %s", type(exc).__name__)
        if self._full is not None:
            self._full.close()
            self._full = None
        self._parts.close()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        target = self._target
        try:
            with deadline(target.deadline), map_client_errors():
                target.client.abort_multipart_upload(**self._object(), UploadId=upload_id)
        except StorageError as exc:
            logger.warning("S3 multipart upload not aborted: %s", type(exc).__name__)


# --- aiobotocore ---------------------------------------------------------------------------------

_CLEANUPS: set[asyncio.Task[None]] = set()  # aborts under way (shielded: kept referenced)


class AsyncS3Writer:
    """The async twin of ``S3Writer`` (the read storage's aiobotocore client). Spooling and
    closing parts run in worker threads: a 1 MiB write to a temporary file took 0.4-1.1 ms
    here, more under writeback pressure."""

    def __init__(self, options: S3Options, storage: Any) -> None:
        from proxy.storage import spoolpayload  # aiohttp: the aiobotocore flavour's only

        spoolpayload.register(_Spool)
        self._target = _Target(options, storage)

    async def head(self, key: str) -> str | None:
        target = self._target
        try:
            with map_client_errors():
                async with asyncio.timeout(target.deadline):
                    response = await target.client.head_object(
                        Bucket=target.bucket, Key=target.s3_key(key)
                    )
        except ObjectNotFound:
            return None
        return _head_etag(response)

    async def begin(self, key: str, new: NewObject) -> AsyncS3Upload:
        if _conditional(new.conditions):
            _check(new.conditions, await self.head(key))
        return AsyncS3Upload(self, key, new)

    @asynccontextmanager
    async def serialised(self, key: str, conditions: WriteConditions) -> AsyncIterator[None]:
        """See ``S3Writer.serialised``."""
        if not _conditional(conditions):
            yield
            return
        lock_key = self._target.lock_key(key)
        lock = _TASK_LOCKS.take(lock_key)
        try:
            try:
                async with asyncio.timeout(self._target.write_bound(0) * 4):
                    await lock.acquire()
            except TimeoutError as exc:
                raise BackendTimeout() from exc
            try:
                yield
            finally:
                lock.release()
        finally:
            _TASK_LOCKS.give_back(lock_key)

    async def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None:
        target = self._target
        try:
            async with self.serialised(key, conditions):
                etag = await self.head(key)
                if etag is None:
                    raise ObjectNotFound()
                _check(conditions, etag)
                args = {"Bucket": target.bucket, "Key": target.s3_key(key)}
                args |= _if_match(conditions, etag)
                with _write_errors(if_match=True):
                    async with asyncio.timeout(target.deadline):
                        await target.client.delete_object(**args)
        finally:
            target.forget(key)

    async def call(self, name: str, size: int | None, if_match: bool = False, **args: Any) -> Any:
        """A call that sends ``size`` bytes, within ``deadline + size / UPLOAD_RATE_FLOOR``
        seconds (aiohttp bounds no write); ``size`` None: no bound but aiohttp's read timeout
        per wait (a CompleteMultipartUpload: S3 keeps a long one alive with whitespace)."""
        call = getattr(self._target.client, name)
        with _write_errors(if_match):
            if size is None:
                return await call(**args)
            async with asyncio.timeout(self._target.write_bound(size)):
                return await call(**args)


class AsyncS3Upload(_Upload):
    """The async twin of ``S3Upload``."""

    def __init__(self, writer: AsyncS3Writer, key: str, new: NewObject) -> None:
        super().__init__(writer._target, key, new)
        self._writer = writer
        self._uploading: tuple[asyncio.Task[Any], _Spool] | None = None

    async def write(self, data: bytes) -> None:
        self._check_open()
        view = memoryview(data)
        while view:  # bounded: each turn takes at least one byte
            if self._full is not None:  # the body goes on past a full part: multipart
                held, self._full = self._full, None
                await self._send(held)
            taken, full = await anyio.to_thread.run_sync(self._parts.take, view)
            view = view[taken:]
            if full is not None:
                if self._parts.multipart:
                    await self._send(full)
                else:
                    self._full = full

    async def _send(self, spool: _Spool) -> None:
        target = self._target
        try:
            if self._upload_id is None:
                with _write_errors():
                    async with asyncio.timeout(target.deadline):
                        response = await target.client.create_multipart_upload(
                            **self._create_args()
                        )
                self._upload_id = response["UploadId"]
            await self._wait()
            args = self._part_args(spool)
        except BaseException:
            await _close(spool)
            raise
        upload = self._writer.call("upload_part", spool.length, **args)
        self._uploading = (asyncio.ensure_future(upload), spool)

    async def _wait(self) -> None:
        if self._uploading is None:
            return
        task, spool = self._uploading
        response = await task  # when it raises, the abort's cleanup ends it
        self._uploading = None
        await _close(spool)
        self._etags.append(response["ETag"])

    async def commit(self) -> Written:
        self._check_open()
        try:
            if self._upload_id is None and not self._parts.multipart:
                return await self._put()
            if self._full is not None:
                full, self._full = self._full, None
                await self._send(full)
            last = await anyio.to_thread.run_sync(self._parts.last)
            if last is not None:
                await self._send(last)
            await self._wait()
            return await self._complete()
        finally:
            self._target.forget(self._key)

    async def _put(self) -> Written:
        conditions, writer = self._new.conditions, self._writer
        spool = self._full
        self._full = None
        if spool is None:
            spool = await anyio.to_thread.run_sync(self._parts.last)
        assert spool is not None
        try:
            async with writer.serialised(self._key, conditions):
                before = await writer.head(self._key)
                _check(conditions, before)
                args = self._put_object_args(spool, before)
                response = await writer.call("put_object", spool.length, self._if_match(), **args)
        finally:
            await _close(spool)
        return self._put_written(spool, response, before)

    async def _complete(self) -> Written:
        conditions, writer = self._new.conditions, self._writer
        async with writer.serialised(self._key, conditions):
            before = await writer.head(self._key)
            _check(conditions, before)
            args = self._complete_args(before)
            response = await writer.call(
                "complete_multipart_upload", None, self._if_match(), **args
            )
        return self._complete_written(response, before)

    async def abort(self) -> None:
        """Shielded: the cleanup runs to its end even when the caller is cancelled."""
        if self._done:
            return
        self._done = True
        cleanup = asyncio.ensure_future(self._cleanup())
        _CLEANUPS.add(cleanup)
        cleanup.add_done_callback(_CLEANUPS.discard)
        await asyncio.shield(cleanup)

    async def _cleanup(self) -> None:
        if self._uploading is not None:
            task, spool = self._uploading
            self._uploading = None
            task.cancel()
            await asyncio.wait([task])  # never raises what the task did
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.info("S3 upload part failed before the abort: %s", type(error).__name__)
            await _close(spool)
        if self._full is not None:
            full, self._full = self._full, None
            await _close(full)
        await anyio.to_thread.run_sync(self._parts.close)
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        target = self._target
        try:
            with map_client_errors():
                async with asyncio.timeout(target.deadline):
                    await target.client.abort_multipart_upload(**self._object(), UploadId=upload_id)
        except StorageError as exc:
            logger.warning("S3 multipart upload not aborted: %s", type(exc).__name__)


async def _close(spool: _Spool) -> None:
    """Close a spool in a worker thread (freeing a 16 MiB part's pages took ~1 ms here); on
    the event loop when the caller is cancelled before the thread runs it."""
    try:
        await anyio.to_thread.run_sync(spool.close)
    except BaseException:
        spool.close()
        raise


def open_writer(options: StorageOptions, storage: Storage | AsyncStorage) -> Writer | AsyncWriter:
    """The writer of ``storage``'s bucket (an ``S3Storage``/``AsyncS3Storage`` or the slice
    cache in front of one), in its flavour, through its client."""
    assert isinstance(options, S3Options)
    if options.sync:
        return S3Writer(options, storage)
    return AsyncS3Writer(options, storage)
