"""The S3 writer (``proxy.storage.s3write``) on moto and SeaweedFS, both flavours, through the
read storage's own client: bodies read back whole (sha256) through the read storage, one
PutObject or a multipart upload, conditions (and races on If-None-Match: *), aborts that leave
no multipart upload behind, S3 failing mid-upload, deletes, and a slice cache that serves the
new version at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import botocore.auth
import pytest
from prometheus_client import REGISTRY

from proxy.http.codec import ByteRange
from proxy.sendfile import SendfileTally
from proxy.storage.base import WHOLE
from proxy.storage.cache import open_cache
from proxy.storage.errors import (
    BackendTimeout,
    BackendUnavailable,
    ObjectNotFound,
    PreconditionFailed,
    StorageError,
)
from proxy.storage.options import CacheOptions, S3Options
from proxy.storage.s3 import aopen_s3, open_s3
from proxy.storage.s3write import open_writer
from proxy.storage.writes import NO_CONDITIONS, NewObject, WriteConditions, Written
from proxy.testing.s3servers import BUCKET, REGION, S3Server, put_object, s3_client
from tests.conftest import s3_server, sha256
from tests.faults import Fault, S3Request, faulty_relay

MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part (but the last)
SMALL: dict[str, Any] = {"multipart_threshold": PART, "multipart_part_size": PART}
CLIENTS = ["boto3", "aiobotocore"]
MOUNTS = [(server, client) for server in ["moto", "seaweedfs"] for client in CLIENTS]
RACES = 4  # rounds of each If-None-Match: * race


def ids(mount: tuple[str, str]) -> str:
    return "-".join(mount)


def batches(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` in uneven batches around 1 MiB (a few of one byte)."""
    out, at = [], 0
    while at < len(data):
        size = rng.choice([1, 7, MIB - 3, MIB, MIB + 4099, 300_001])
        out.append(data[at : at + size])
        at += size
    return out


@dataclass
class Mount:
    """A read storage and its writer, either flavour; blocking calls run in a worker thread."""

    s3: S3Server
    options: S3Options
    storage: Any
    writer: Any

    @property
    def sync(self) -> bool:
        return self.options.sync

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        if self.sync:
            return await anyio.to_thread.run_sync(partial(call, *args))
        return await call(*args)

    async def begin(self, key: str, new: NewObject) -> Any:
        return await self.run(self.writer.begin, key, new)

    async def upload(
        self, key: str, data: bytes, new: NewObject | None = None, seed: int = 0
    ) -> Written:
        """``data`` written to ``key`` in uneven batches; aborted when anything fails."""
        new = new or NewObject("application/octet-stream")
        upload = await self.begin(key, new)
        try:
            for batch in batches(data, random.Random(seed)):
                await self.run(upload.write, batch)
            written: Written = await self.run(upload.commit)
        except BaseException:
            await self.run(upload.abort)
            raise
        return written

    async def delete(self, key: str, conditions: WriteConditions = NO_CONDITIONS) -> None:
        await self.run(self.writer.delete, key, conditions)

    async def read(self, key: str) -> bytes:
        """The whole object through the read storage (the cache when there is one)."""
        if self.sync:

            def read() -> bytes:
                reply = self.storage.open(key, WHOLE)
                try:
                    span = ByteRange(0, reply.meta.size)
                    return b"".join(reply.body.iter_range(span, 65536))
                finally:
                    reply.body.close()

            return await anyio.to_thread.run_sync(read)
        reply = await self.storage.open(key, WHOLE)
        try:
            chunks = await reply.body.aiter_range(ByteRange(0, reply.meta.size), 65536)
            return b"".join([chunk async for chunk in chunks])
        finally:
            await reply.body.aclose()


def options_for(s3: S3Server, client: str, **more: Any) -> S3Options:
    return S3Options(
        bucket=BUCKET,
        client=client,  # type: ignore[arg-type]
        endpoint_url=s3.endpoint_url,
        region=REGION,
        addressing_style="path",
        **more,
    )


@contextlib.asynccontextmanager
async def mounted(
    s3: S3Server, client: str, cache: Path | None = None, **more: Any
) -> AsyncIterator[Mount]:
    """A storage of ``s3`` (behind a slice cache in ``cache``) and its writer."""
    options = options_for(s3, client, **more)
    async with AsyncExitStack() as stack:
        if options.sync:
            storage: Any = await anyio.to_thread.run_sync(open_s3, options)
            stack.callback(storage.close)
        else:
            storage = await aopen_s3(options, stack)
        if cache is not None:
            cache_options = CacheOptions(cache, slice_size=65536, validity=3600)
            storage = open_cache(storage, cache_options, options.sync, asyncio.get_running_loop())
            stack.callback(storage.store.close)
        yield Mount(s3, options, storage, open_writer(options, storage))


_RAW_CLIENTS: dict[str, Any] = {}


def raw_client(endpoint_url: str) -> Any:
    """A plain boto3 client of the server, made once per module (thread-safe; making one
    costs ~0.1 s, seconds under load)."""
    if endpoint_url not in _RAW_CLIENTS:
        _RAW_CLIENTS[endpoint_url] = s3_client(S3Server("raw", endpoint_url, True))
    return _RAW_CLIENTS[endpoint_url]


@pytest.fixture(scope="module", autouse=True)
def close_raw_clients() -> Iterator[None]:
    yield
    for client in _RAW_CLIENTS.values():
        client.close()
    _RAW_CLIENTS.clear()


def pending_uploads(s3: S3Server, key: str) -> list[str]:
    client = raw_client(s3.endpoint_url)
    uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
    return [upload["UploadId"] for upload in uploads if upload["Key"] == key]


def drop_uploads(s3: S3Server, key: str) -> None:
    for upload_id in pending_uploads(s3, key):
        raw_client(s3.endpoint_url).abort_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload_id
        )


def stored(s3: S3Server, key: str) -> dict[str, Any] | None:
    client = raw_client(s3.endpoint_url)
    try:
        return dict(client.head_object(Bucket=BUCKET, Key=key))
    except client.exceptions.ClientError:
        return None


def calls(operation: str) -> float:
    labels = {"backend": "s3", "operation": operation}
    return REGISTRY.get_sample_value("proxy_backend_calls_total", labels) or 0.0


@pytest.fixture(params=MOUNTS, ids=ids)
def where(request: pytest.FixtureRequest) -> tuple[S3Server, str]:
    server, client = request.param
    return s3_server(request, server), client


# --- bodies ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bodies_of_every_size_read_back_whole(where: tuple[S3Server, str]) -> None:
    """Threshold 1 MiB, parts of 5 MiB: up to 1 MiB one PutObject, beyond a multipart upload
    (whose ETag ends in -N), whose last part may be short or, when the body ends on a part's
    end, not needed."""
    s3, client = where
    rng = random.Random(7)
    bodies = {  # name: (body, parts; 0: a single PutObject)
        "empty": (b"", 0),
        "one": (b"x", 0),
        "mib": (rng.randbytes(MIB), 0),  # exactly the threshold
        "mib-and-one": (rng.randbytes(MIB + 1), 1),
        "part": (rng.randbytes(PART), 1),  # the body ends with its first part
        "multipart": (rng.randbytes(12 * MIB + 5), 3),  # 5 + 5 + 2 MiB
    }
    puts, uploaded = calls("PutObject"), calls("UploadPart")
    async with mounted(s3, client, multipart_threshold=MIB, multipart_part_size=PART) as mount:
        for name, (data, parts) in bodies.items():
            key = f"writes/{client}/{name}.bin"
            drop_uploads(s3, key)
            with contextlib.suppress(ObjectNotFound):
                await mount.delete(key)
            new = NewObject("video/mp4", length=len(data) if name != "multipart" else None)
            written = await mount.upload(key, data, new, seed=len(data))
            assert sha256(await mount.read(key)) == sha256(data), name
            head = stored(s3, key)
            assert head is not None
            assert written.created and written.meta.etag == head["ETag"], name
            assert written.meta.size == len(data) and head["ContentLength"] == len(data)
            assert head["ContentType"] == "video/mp4"
            assert written.parts == max(parts, 1), name
            assert head["ETag"].endswith(f'-{parts}"') == (parts > 0), name
            assert pending_uploads(s3, key) == []
        # Overwritten: not created; the new body, the kept header fields, the new type.
        key = f"writes/{client}/multipart.bin"
        again = rng.randbytes(6 * MIB)
        new = NewObject(
            "audio/mpeg",
            metadata=(
                ("content-disposition", 'attachment; filename="a.mp3"'),
                ("cache-control", "max-age=5"),
            ),
        )
        written = await mount.upload(key, again, new)
        assert not written.created and written.parts == 2
        assert sha256(await mount.read(key)) == sha256(again)
        head = stored(s3, key)
        assert head is not None and head["ContentType"] == "audio/mpeg"
        assert head["ContentDisposition"] == 'attachment; filename="a.mp3"'
        assert head["CacheControl"] == "max-age=5"
    # The calls are counted as the read path's are.
    assert calls("PutObject") - puts == 3
    assert calls("UploadPart") - uploaded == 1 + 1 + 3 + 2


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_spooled_parts_are_signed_with_the_hash_taken_as_they_filled(
    request: pytest.FixtureRequest, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore never reads a spooled part to hash it (16 MiB: 10-25 ms, on the event loop
    for aiobotocore); SeaweedFS checks the signature with the hash sent."""
    s3 = s3_server(request, "seaweedfs")
    hashed: list[str] = []
    payload = botocore.auth.SigV4Auth.payload

    def spy(self: Any, request: Any) -> Any:
        hashed.append(type(request.body).__name__)
        return payload(self, request)

    signed: list[tuple[str, str]] = []  # (the hash signed, the body's)

    def check(request: Any, **_: Any) -> None:
        body = request.body
        if hasattr(body, "payload_sha256"):
            at = body.tell()
            signed.append((request.headers["X-Amz-Content-SHA256"], sha256(body.read())))
            body.seek(at)

    monkeypatch.setattr(botocore.auth.SigV4Auth, "payload", spy)
    async with mounted(s3, client, **SMALL) as mount:
        mount.storage.client.meta.events.register("before-send.s3", check)
        for size in [1000, 6 * MIB]:
            key = f"writes/{client}/signed-{size}.bin"
            data = os.urandom(size)
            await mount.upload(key, data)
            assert sha256(await mount.read(key)) == sha256(data)
    assert hashed and "_Spool" not in hashed
    assert len(signed) == 3  # a PutObject, two UploadParts
    for sent, body in signed:
        assert (sent if isinstance(sent, str) else sent.decode()) == body


@pytest.mark.anyio
@pytest.mark.parametrize("server", ["moto", "seaweedfs"])
async def test_aiobotocore_sends_spooled_parts_as_spool_payloads(
    request: pytest.FixtureRequest, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp sends each spooled part through ``SpoolPayload`` (proxy/storage/spoolpayload.py),
    not its own file payload: every byte of a PutObject and of three UploadParts, by
    ``sendfile`` (the endpoint is plain HTTP)."""
    from proxy.storage import spoolpayload

    sent: list[int] = []
    write = spoolpayload.SpoolPayload.write_with_length

    async def counted(self: Any, writer: Any, content_length: int | None) -> None:
        sent.append(self.size)
        await write(self, writer, content_length)

    monkeypatch.setattr(spoolpayload.SpoolPayload, "write_with_length", counted)
    s3 = s3_server(request, server)
    before = SendfileTally.bytes
    async with mounted(s3, "aiobotocore", **SMALL) as mount:
        for size in [1000, 2 * PART + 3]:
            key = f"writes/aiobotocore/payload-{size}.bin"
            data = os.urandom(size)
            await mount.upload(key, data)
            assert sha256(await mount.read(key)) == sha256(data)
    assert sent == [1000, PART, PART, 3]
    assert SendfileTally.bytes - before == sum(sent)  # plain HTTP: every part by sendfile


def spooled_in(directory: Path) -> list[str]:
    """The files this process holds open in ``directory`` (unnamed: ``#123 (deleted)``)."""
    inside = os.path.realpath(directory) + os.sep
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith(inside):
                held.append(target)
    return held


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_parts_are_spooled_in_the_spool_directory(
    request: pytest.FixtureRequest, client: str, tmp_path: Path
) -> None:
    """PROXY_UPLOAD_SPOOL_DIR: the parts' files are made there, and gone after the commit."""
    s3 = s3_server(request, "moto")
    spool = tmp_path / "spool"
    spool.mkdir()
    key = f"writes/{client}/spooled.bin"
    data = random.Random(5).randbytes(2 * PART + 100)
    async with mounted(s3, client, spool_dir=spool, **SMALL) as mount:
        upload = await mount.begin(key, NewObject("video/mp4"))
        try:
            await mount.run(upload.write, data[: PART + 100])  # a part full, the next filling
            assert spooled_in(spool)
            await mount.run(upload.write, data[PART + 100 :])
            written = await mount.run(upload.commit)
        except BaseException:
            await mount.run(upload.abort)
            raise
        assert written.parts == 3 and sha256(await mount.read(key)) == sha256(data)
    assert spooled_in(spool) == [] and os.listdir(spool) == []


@pytest.mark.anyio
async def test_an_abort_after_parts_leaves_no_upload_and_the_old_version(
    where: tuple[S3Server, str],
) -> None:
    s3, client = where
    key = f"writes/{client}/aborted.bin"
    old = os.urandom(3 * MIB)
    put_object(s3, key, old, "application/octet-stream")
    async with mounted(s3, client, **SMALL) as mount:
        upload = await mount.begin(key, NewObject("application/octet-stream"))
        data = os.urandom(11 * MIB)  # two parts sent (the second may still be under way)
        for batch in batches(data, random.Random(1)):
            await mount.run(upload.write, batch)
        assert pending_uploads(s3, key) != []
        await mount.run(upload.abort)
        await mount.run(upload.abort)  # idempotent
        assert pending_uploads(s3, key) == []
        assert sha256(await mount.read(key)) == sha256(old)
        with pytest.raises(StorageError):
            await mount.run(upload.write, b"more")


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_threshold_above_the_part_size_makes_a_longer_first_part(
    request: pytest.FixtureRequest, client: str
) -> None:
    """Threshold 8 MiB, parts of 5 MiB: 7 MiB is one PutObject, 12 MiB two parts (8 + 4)."""
    s3 = s3_server(request, "moto")
    settings: dict[str, Any] = {"multipart_threshold": 8 * MIB, "multipart_part_size": PART}
    async with mounted(s3, client, **settings) as mount:
        for size, parts in [(7 * MIB, 1), (8 * MIB, 1), (12 * MIB, 2), (21 * MIB + 1, 4)]:
            key = f"writes/{client}/threshold-{size}.bin"
            data = os.urandom(size)
            written = await mount.upload(key, data, seed=size)
            assert written.parts == parts, size
            assert sha256(await mount.read(key)) == sha256(data)


@pytest.mark.anyio
async def test_an_abort_whose_caller_is_cancelled_still_ends_the_upload(
    request: pytest.FixtureRequest,
) -> None:
    """The aiobotocore flavour's abort is shielded: cancelling its caller (a client gone)
    does not leave the multipart upload pending."""
    s3 = s3_server(request, "seaweedfs")
    key = "writes/aiobotocore/abort-cancelled.bin"
    drop_uploads(s3, key)
    async with mounted(s3, "aiobotocore", **SMALL) as mount:
        upload = await mount.begin(key, NewObject("application/octet-stream"))
        for batch in batches(os.urandom(11 * MIB), random.Random(2)):
            await upload.write(batch)
        assert pending_uploads(s3, key) != []
        aborting = asyncio.create_task(upload.abort())
        await asyncio.sleep(0)
        aborting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await aborting
        for _ in range(100):  # bounded: 10 s
            if not pending_uploads(s3, key):
                break
            await asyncio.sleep(0.1)
        assert pending_uploads(s3, key) == []
        assert stored(s3, key) is None


# --- conditions ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_if_match_and_if_none_match(where: tuple[S3Server, str]) -> None:
    s3, client = where
    key = f"writes/{client}/conditional.bin"
    first = os.urandom(1000)
    async with mounted(s3, client, **SMALL) as mount:
        with contextlib.suppress(ObjectNotFound):
            await mount.delete(key)
        absent = NewObject("text/plain", conditions=WriteConditions(if_match='"nothing"'))
        with pytest.raises(PreconditionFailed):  # refused at begin: nothing stored
            await mount.begin(key, absent)
        create = NewObject("text/plain", conditions=WriteConditions(if_none_match=True))
        written = await mount.upload(key, first, create)
        assert written.created
        with pytest.raises(PreconditionFailed):  # refused at begin: stored now
            await mount.begin(key, create)
        etag = written.meta.etag
        assert etag is not None
        wrong = NewObject("text/plain", conditions=WriteConditions(if_match='"0123"'))
        with pytest.raises(PreconditionFailed):
            await mount.begin(key, wrong)
        # Right at begin, stale at commit (another writer came between): refused, for a
        # single PutObject and for a multipart upload (aborted: nothing pending).
        for size in [2000, 6 * MIB]:
            current = stored(s3, key)
            assert current is not None
            stale = NewObject("text/plain", conditions=WriteConditions(if_match=current["ETag"]))
            upload = await mount.begin(key, stale)
            data = os.urandom(size)
            for batch in batches(data, random.Random(size)):
                await mount.run(upload.write, batch)
            between = os.urandom(100)
            put_object(s3, key, between, "text/plain")
            with pytest.raises(PreconditionFailed):
                await mount.run(upload.commit)
            await mount.run(upload.abort)
            assert pending_uploads(s3, key) == []
            assert sha256(await mount.read(key)) == sha256(between)
        # Right: replaced, for both kinds of write.
        for size in [3000, 7 * MIB]:
            current = stored(s3, key)
            assert current is not None
            right = NewObject("text/plain", conditions=WriteConditions(if_match=current["ETag"]))
            data = os.urandom(size)
            written = await mount.upload(key, data, right)
            assert not written.created
            assert sha256(await mount.read(key)) == sha256(data)


async def race(mount: Mount, key: str, bodies: list[bytes]) -> list[Written | None]:
    """Writers of ``bodies`` to ``key`` on If-None-Match: *, committing together (threads for
    boto3, tasks for aiobotocore): each one's Written, or None when refused."""
    new = NewObject("application/octet-stream", conditions=WriteConditions(if_none_match=True))
    uploads = [await mount.begin(key, new) for _ in bodies]
    for upload, data in zip(uploads, bodies, strict=True):
        for batch in batches(data, random.Random(len(data))):
            await mount.run(upload.write, batch)
    results: list[Written | None] = [None] * len(bodies)
    if mount.sync:
        ready = threading.Barrier(len(bodies), timeout=30)

        def commit(i: int) -> None:
            ready.wait()
            try:
                results[i] = uploads[i].commit()
            except PreconditionFailed:
                uploads[i].abort()

        threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join, 60)
        return results

    async def acommit(i: int) -> None:
        try:
            results[i] = await uploads[i].commit()
        except PreconditionFailed:
            await uploads[i].abort()

    await asyncio.gather(*(acommit(i) for i in range(len(bodies))))
    return results


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1000, PART + 1], ids=["put", "multipart"])
async def test_if_none_match_races_have_exactly_one_winner(
    where: tuple[S3Server, str], size: int
) -> None:
    s3, client = where
    async with mounted(s3, client, **SMALL) as mount:
        for round_ in range(RACES):
            key = f"writes/{client}/race-{size}-{round_}.bin"
            with contextlib.suppress(ObjectNotFound):
                await mount.delete(key)
            bodies = [os.urandom(size), os.urandom(size)]
            results = await race(mount, key, bodies)
            winners = [i for i, result in enumerate(results) if result is not None]
            assert len(winners) == 1, results
            assert sha256(await mount.read(key)) == sha256(bodies[winners[0]])
            assert pending_uploads(s3, key) == []


# --- deletes ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delete(where: tuple[S3Server, str]) -> None:
    s3, client = where
    key = f"writes/{client}/deleted.bin"
    etag = put_object(s3, key, b"doomed", "text/plain")
    async with mounted(s3, client) as mount:
        with pytest.raises(PreconditionFailed):
            await mount.delete(key, WriteConditions(if_match='"other"'))
        with pytest.raises(PreconditionFailed):
            await mount.delete(key, WriteConditions(if_none_match=True))
        assert await mount.read(key) == b"doomed"
        await mount.delete(key, WriteConditions(if_match=etag))
        assert stored(s3, key) is None
        with pytest.raises(ObjectNotFound):
            await mount.delete(key)
        put_object(s3, key, b"again", "text/plain")
        await mount.delete(key)
        with pytest.raises(ObjectNotFound):
            await mount.read(key)


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_mount_with_a_prefix_writes_and_deletes_under_it(
    request: pytest.FixtureRequest, client: str
) -> None:
    s3 = s3_server(request, "moto")
    key = f"prefixed-{client}.txt"
    async with mounted(s3, client, prefix="/under/here/") as mount:
        written = await mount.upload(key, b"under a prefix", NewObject("text/plain"))
        head = stored(s3, f"under/here/{key}")
        assert head is not None and head["ETag"] == written.meta.etag
        assert stored(s3, key) is None
        assert await mount.read(key) == b"under a prefix"
        await mount.delete(key)
        assert stored(s3, f"under/here/{key}") is None


# --- the slice cache -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cached_mount_serves_the_new_version_at_once(
    where: tuple[S3Server, str], tmp_path: Path
) -> None:
    s3, client = where
    key = f"writes/{client}/cached.bin"
    old = os.urandom(200_000)
    put_object(s3, key, old, "application/octet-stream")
    async with mounted(s3, client, cache=tmp_path / "cache", **SMALL) as mount:
        assert sha256(await mount.read(key)) == sha256(old)  # metadata cached for an hour
        for data in [os.urandom(150_000), os.urandom(6 * MIB)]:
            await mount.upload(key, data)
            assert sha256(await mount.read(key)) == sha256(data)
        await mount.delete(key)
        with pytest.raises(ObjectNotFound):
            await mount.read(key)


# --- S3 failing ------------------------------------------------------------------------------


def no_expect(request: Any, **_: Any) -> None:
    """Send bodies without waiting for 100 Continue (which the relay would not pass on)."""
    if "Expect" in request.headers:
        del request.headers["Expect"]


def part_puts(number: int) -> Callable[[S3Request], bool]:
    return lambda r: r.method == "PUT" and f"partNumber={number}" in r.target


@pytest.mark.anyio
async def test_s3_failing_mid_upload_is_a_storage_error_and_nothing_visible(
    where: tuple[S3Server, str],
) -> None:
    s3, client = where
    key = f"writes/{client}/failing.bin"
    drop_uploads(s3, key)
    with contextlib.suppress(Exception):
        with contextlib.closing(s3_client(s3)) as raw:
            raw.delete_object(Bucket=BUCKET, Key=key)
    port = int(s3.endpoint_url.rsplit(":", 1)[1])
    with faulty_relay(port) as relay:
        via = replace(s3, endpoint_url=relay.endpoint_url)
        more: dict[str, Any] = {
            **SMALL,
            "read_timeout": 2.0,
            "connect_timeout": 2.0,
            "deadline": 4.0,
        }
        async with mounted(via, client, **more) as mount:
            # The relay reads a request's body before it relays the request: no Expect.
            mount.storage.client.meta.events.register("before-send.s3", no_expect)
            # No attempt of the second part's UploadPart is answered (each one times out).
            relay.arm(Fault("stall_head", match=part_puts(2), times=10))
            with pytest.raises(BackendTimeout):
                await mount.upload(key, os.urandom(12 * MIB))
            assert "stall_head" in relay.applied
            assert stored(s3, key) is None
            assert pending_uploads(s3, key) == []
            # The endpoint gone before a single PutObject.
            relay.disarm()
            upload = await mount.begin(key, NewObject("text/plain"))
            await mount.run(upload.write, b"never stored")
            relay.down()
            with pytest.raises(BackendUnavailable):
                await mount.run(upload.commit)
            await mount.run(upload.abort)
            relay.up()
            assert stored(s3, key) is None
