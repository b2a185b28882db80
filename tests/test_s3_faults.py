"""S3 faults injected for real (``tests.faults``: a relay between the proxy and SeaweedFS or
moto that stalls, resets and closes on cue): one deadline per S3 exchange, and bodies that S3
cuts resumed into one correct body (or cut, never mixed), on both flavours, with the presigned
GETs on and off. Bodies are compared by sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from proxy.http.codec import ByteRange
from proxy.storage import notes
from proxy.storage.base import METADATA_ONLY
from proxy.storage.errors import BackendTimeout, BodyTruncated
from proxy.storage.options import S3Options
from proxy.storage.s3 import aopen_s3, open_s3
from proxy.testing.s3servers import BUCKET, REGION, S3Server, put_object, s3_client
from tests.conftest import RunningServer, StartServer, s3_server, s3_settings, sha256
from tests.faults import Fault, FaultyRelay, Kind, S3Request, faulty_relay, gets_of

READ_TIMEOUT = 2.0  # PROXY_S3_READ_TIMEOUT: small, so that stalls cost little
DEADLINE = 2 * READ_TIMEOUT  # its default
SIZE = 3 * 1024 * 1024 + 4321
DATA = os.urandom(SIZE)
OTHER = os.urandom(SIZE)  # what an overwrite puts
CUT_AT = 1024 * 1024 + 77  # body bytes that go through before a cut

CLIENTS = ["boto3", "aiobotocore"]
SETUPS = [
    (server, client, presigned)
    for server in ["seaweedfs", "moto"]
    for client in CLIENTS
    for presigned in [True, False]
]


@dataclass
class Setup:
    s3: S3Server
    relay: FaultyRelay
    proxy: RunningServer
    key: str  # DATA, for the resumes
    client: str
    presigned: bool

    def url(self, key: str | None = None) -> str:
        return f"{self.proxy.url}/objects/{key or self.key}"


@contextlib.contextmanager
def behind_a_relay(s3: S3Server) -> Iterator[tuple[FaultyRelay, S3Server]]:
    """A fault-injecting relay in front of ``s3``, and ``s3`` as the proxy sees it through it."""
    with faulty_relay(int(s3.endpoint_url.rsplit(":", 1)[1])) as relay:
        yield relay, S3Server(s3.name, relay.endpoint_url, s3.supports_auth)


def ids(setup: tuple[str, str, bool]) -> str:
    server, client, presigned = setup
    return f"{server}-{client}-{'presigned' if presigned else 'botocore'}"


@pytest.fixture(scope="module", params=SETUPS, ids=ids)
def setup(request: pytest.FixtureRequest, serve: StartServer) -> Iterator[Setup]:
    server, client, presigned = request.param
    s3 = s3_server(request, server)
    key = f"faults/{client}-{presigned}.bin"
    put_object(s3, key, DATA, "application/octet-stream")
    with behind_a_relay(s3) as (relay, via):
        settings = s3_settings(
            via,
            client,
            s3_read_timeout=READ_TIMEOUT,
            s3_connect_timeout=2,
            s3_presigned_gets=presigned,
            readiness_cache_seconds=0,
        )
        yield Setup(s3, relay, serve(settings), key, client, presigned)


@pytest.fixture
def relay(setup: Setup) -> Iterator[FaultyRelay]:
    setup.relay.up()
    setup.relay.disarm()
    setup.relay.clear()
    yield setup.relay
    setup.relay.up()
    setup.relay.disarm()


def resumes(outcome: str) -> float:
    return REGISTRY.get_sample_value("proxy_s3_resumes_total", {"outcome": outcome}) or 0.0


def multipart_bodies(response: httpx.Response) -> list[bytes]:
    """The parts' bodies of a multipart/byteranges response, in order."""
    boundary = response.headers["content-type"].split("boundary=", 1)[1].encode()
    parts = response.content.split(b"--" + boundary)[1:-1]
    return [part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for part in parts]


def byte_range_of(spec: str) -> ByteRange:
    first, last = spec.removeprefix("bytes=").split("-")
    return ByteRange(int(first), int(last) + 1)


# Each request shape: its Range (None: the whole object), the GET the fault cuts, and the bytes
# the response must hold (a part's for multipart).
SHAPES = {
    "whole": (None, None, [DATA]),
    "range": ("bytes=100-2500000", "bytes=100-2500000", [DATA[100:2500001]]),
    "multipart": (
        "bytes=0-99999,1000000-3000000",
        "bytes=1000000-3000000",
        [DATA[:100000], DATA[1000000:3000001]],
    ),
}


def cut_get(key: str, range_value: str | None) -> Callable[[S3Request], bool]:
    """GETs of ``key`` with the Range ``range_value`` (None: without one)."""
    gets = gets_of(key)
    return lambda r: gets(r) and r.range == range_value


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", ["reset", "fin", "stall_body"])
def test_a_cut_body_is_resumed_into_one_correct_body(
    setup: Setup, relay: FaultyRelay, kind: Kind, shape: str
) -> None:
    spec, cut_range, expected = SHAPES[shape]
    relay.arm(Fault(kind, match=cut_get(setup.key, cut_range), after=CUT_AT))
    before = resumes("resumed")
    headers = {} if spec is None else {"Range": spec}
    response = httpx.get(setup.url(), headers=headers, timeout=30)
    assert relay.applied == [kind]
    assert response.status_code == (200 if spec is None else 206)
    bodies = multipart_bodies(response) if shape == "multipart" else [response.content]
    assert [sha256(body) for body in bodies] == [sha256(part) for part in expected]
    # The rest was asked for once, from the first byte not sent, pinned to the version (an RST
    # drops what the proxy had not read yet, a read cut mid-chunk gives nothing: the rest may
    # start before the cut).
    cut = relay.gets(setup.key)
    first = 0 if cut_range is None else byte_range_of(cut_range).start
    stop = SIZE if cut_range is None else byte_range_of(cut_range).stop
    resumed = cut[-1]
    assert resumed.range is not None and resumed.range.endswith(f"-{stop - 1}")
    start = byte_range_of(resumed.range).start
    assert first <= start <= first + CUT_AT
    assert resumed.if_match is not None
    assert resumed.if_match.strip('"') == response.headers["etag"].strip('"')
    assert resumes("resumed") == before + 1


def test_a_reader_that_pauses_past_s3s_idle_close_gets_the_whole_body(
    setup: Setup, relay: FaultyRelay
) -> None:
    # S3 closes a connection that a slow reader left idle: its bytes and FIN wait in the socket
    # while the client (and so the proxy) does not read.
    relay.arm(Fault("fin", match=gets_of(setup.key), after=CUT_AT))
    before = resumes("resumed")
    digest = hashlib.sha256()
    with httpx.stream("GET", setup.url(), timeout=30) as response:
        assert response.status_code == 200
        for index, chunk in enumerate(response.iter_raw(64 * 1024)):
            digest.update(chunk)
            if index == 2:
                time.sleep(1.5)
    assert relay.applied == ["fin"]
    assert digest.hexdigest() == sha256(DATA)
    assert resumes("resumed") == before + 1


def test_a_body_changed_between_the_cut_and_the_resume_is_cut_never_mixed(
    setup: Setup, relay: FaultyRelay
) -> None:
    key = f"faults/changing-{setup.client}-{setup.presigned}.bin"
    put_object(setup.s3, key, DATA, "application/octet-stream")
    overwrite = Fault(
        "fin",
        match=gets_of(key),
        after=CUT_AT,
        then=lambda: put_object(setup.s3, key, OTHER, "application/octet-stream"),
    )
    relay.arm(overwrite)
    before, resumed = resumes("changed"), resumes("resumed")
    received = bytearray()
    cut = False
    with httpx.stream("GET", setup.url(key), timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(SIZE)
        try:
            for chunk in response.iter_raw():
                received += chunk
        except httpx.RemoteProtocolError:
            cut = True
    # What went through the relay, should an assertion fail: each exchange, then every request
    # it saw (one that never got its reply has no exchange line).
    asked = [f"{r.method} {r.target} range={r.range} if-match={r.if_match}" for r in relay.requests]
    trace = "\n".join([*relay.trace, "requests:", *asked])
    assert relay.applied == ["fin"], trace
    # On a loaded machine botocore may first ask again for the whole object (its read timeout
    # passed before the head came; seen once): what follows the cut decides.
    if cut:  # S3 answered the resume with 412: the overwrite was visible
        assert bytes(received) == DATA[: len(received)]  # not one byte of the new version
        assert 0 < len(received) < SIZE
        assert resumes("changed") == before + 1, trace
    elif resumes("resumed") == resumed + 1:
        # SeaweedFS, once in a CI run, still served the old version to the resume: whole
        assert sha256(bytes(received)) == sha256(DATA), trace
    else:
        # Seen once, on a loaded machine: the cut came before anything was sent, and the GET
        # was asked again whole (no Range), not resumed. Either version, whole, is right then.
        assert relay.requests[-1].range is None, trace
        assert sha256(bytes(received)) in (sha256(DATA), sha256(OTHER)), trace
    # The new version is served whole afterwards.
    after = httpx.get(setup.url(key), timeout=30)
    assert sha256(after.content) == sha256(OTHER)


def test_an_endpoint_gone_for_good_cuts_the_body_then_recovers(
    setup: Setup, relay: FaultyRelay
) -> None:
    relay.arm(Fault("reset", match=gets_of(setup.key), after=CUT_AT, then=relay.down))
    before = resumes("failed")
    received = bytearray()
    with (
        httpx.stream("GET", setup.url(), timeout=60) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received += chunk
    assert len(received) < SIZE
    assert bytes(received) == DATA[: len(received)]
    assert resumes("failed") == before + 2  # PROXY_S3_RESUME_ATTEMPTS, each answered by nothing
    ready = httpx.get(f"{setup.proxy.url}/readyz", timeout=30)
    assert ready.status_code == 503
    relay.up()
    deadline = time.monotonic() + 20
    while httpx.get(f"{setup.proxy.url}/readyz", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "/readyz did not recover"
        time.sleep(0.2)
    again = httpx.get(setup.url(), timeout=30)
    assert (again.status_code, sha256(again.content)) == (200, sha256(DATA))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_stall_before_the_reply_is_a_504_within_the_deadline(
    setup: Setup, relay: FaultyRelay, method: str
) -> None:
    key = setup.key

    def stalled(request: S3Request) -> bool:
        return request.method in ("GET", "HEAD") and request.path.endswith(f"/{key}")

    relay.arm(Fault("stall_head", match=stalled, times=100))
    answers: list[tuple[int, float]] = []

    def ask() -> None:
        started = time.monotonic()
        response = httpx.request(method, setup.url(), timeout=60)
        answers.append((response.status_code, time.monotonic() - started))

    thread = threading.Thread(target=ask)
    thread.start()
    # Meanwhile, other requests are answered as usual.
    time.sleep(0.3)
    other = f"faults/other-{setup.client}-{setup.presigned}.bin"
    put_object(setup.s3, other, DATA[:100_000], "application/octet-stream")
    started = time.monotonic()
    assert httpx.get(f"{setup.proxy.url}/healthz", timeout=30).status_code == 200
    response = httpx.get(setup.url(other), timeout=30)
    assert (response.status_code, sha256(response.content)) == (200, sha256(DATA[:100_000]))
    assert time.monotonic() - started < DEADLINE / 2
    thread.join(timeout=60)
    [(status, took)] = answers
    assert status == 504
    assert took < DEADLINE + 1
    # The presigned try and botocore's attempts, bounded by the deadline.
    stalled_requests = [r for r in relay.requests if stalled(r)]
    assert 1 <= len(stalled_requests) <= 3


# --- the storage, driven directly through the relay ---------------------------------------------


def options(relay: FaultyRelay, client: str, presigned: bool, **more: Any) -> S3Options:
    base = S3Options(
        bucket=BUCKET,
        client=client,  # type: ignore[arg-type]
        endpoint_url=relay.endpoint_url,
        region=REGION,
        addressing_style="path",
        read_timeout=READ_TIMEOUT,
        connect_timeout=2,
        deadline=DEADLINE,
        presigned_gets=presigned,
    )
    return replace(base, **more)


@pytest.mark.anyio
@pytest.mark.parametrize("presigned", [True, False], ids=["presigned", "botocore"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_resumes_are_noted_for_the_response_and_cut_with_their_cause(
    request: pytest.FixtureRequest, client: str, presigned: bool
) -> None:
    s3 = s3_server(request, "seaweedfs")
    key = f"faults/noted-{client}-{presigned}.bin"
    put_object(s3, key, DATA, "application/octet-stream")
    with behind_a_relay(s3) as (relay, _):
        # Three cuts, two resumes: the third ends the body, its message naming the cause
        # (aiohttp reports a reset as a body that ended early).
        relay.arm(Fault("reset", match=gets_of(key), after=100_000, times=3))
        cause = "closed early" if (client, presigned) == ("aiobotocore", False) else "reset"
        response_notes = notes.ResponseNotes()
        token = notes.CURRENT.set(response_notes)
        try:
            with pytest.raises(BodyTruncated, match=f"^the S3 body was cut: connection {cause} "):
                await read_through(options(relay, client, presigned), key)
        finally:
            notes.CURRENT.reset(token)
        assert response_notes.resumes == 2
        first, *rest = relay.gets(key)
        assert first.range is None
        starts = [byte_range_of(r.range or "").start for r in rest]
        assert len(starts) == 2 and 0 <= starts[0] < starts[1] <= 200_000
        assert {r.range.split("-")[1] for r in rest if r.range} == {str(SIZE - 1)}
        assert {r.if_match for r in rest} == {first_etag(s3, key)}


@pytest.mark.anyio
@pytest.mark.parametrize("presigned", [True, False], ids=["presigned", "botocore"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_pause_in_the_body_shorter_than_the_read_timeout_is_no_cut(
    request: pytest.FixtureRequest, client: str, presigned: bool
) -> None:
    """The deadline bounds the wait for the head only: the body's reads wait the read timeout
    each, however little of the deadline was left when the head came."""
    s3 = s3_server(request, "moto")
    key = f"faults/pause-{client}-{presigned}.bin"
    put_object(s3, key, DATA, "application/octet-stream")
    with behind_a_relay(s3) as (relay, _):
        relay.arm(Fault("stall_body", match=gets_of(key), after=100_000, lasting=1.8))
        settings = options(relay, client, presigned, deadline=1.0, read_timeout=4.0)
        response_notes = notes.ResponseNotes()
        token = notes.CURRENT.set(response_notes)
        try:
            assert sha256(await read_through(settings, key)) == sha256(DATA)
        finally:
            notes.CURRENT.reset(token)
        assert relay.applied == ["stall_body"]
        assert response_notes.resumes == 0
        assert len(relay.gets(key)) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_resumes_that_stall_each_end_at_the_deadline(
    request: pytest.FixtureRequest, client: str
) -> None:
    """A stall mid-body is seen within the read timeout; each resume then has the deadline."""
    s3 = s3_server(request, "moto")
    key = f"faults/stalling-{client}.bin"
    put_object(s3, key, DATA, "application/octet-stream")
    with behind_a_relay(s3) as (relay, _):
        relay.arm(Fault("stall_body", match=cut_get(key, None), after=CUT_AT))
        relay.arm(Fault("stall_head", match=gets_of(key), times=100))
        opened: list[float] = []
        with pytest.raises(BodyTruncated, match="^the S3 body was cut: read timeout after 2"):
            await read_through(options(relay, client, presigned=True), key, opened)
        # The stall, then two deadlines, + 1 s each.
        assert time.monotonic() - opened[0] < READ_TIMEOUT + 2 * (DEADLINE + 1)
        resumed = [r for r in relay.gets(key) if r.range is not None]
        assert 2 <= len(resumed) <= 2 * 3  # each: the presigned try and botocore's attempts


def first_etag(s3: S3Server, key: str) -> str:
    with contextlib.closing(s3_client(s3)) as client:
        return str(client.head_object(Bucket=BUCKET, Key=key)["ETag"])


async def read_through(settings: S3Options, key: str, opened: list[float] | None = None) -> bytes:
    """The whole object, read as a response does (open, then the body's chunks); ``opened``
    gets the time the open started (once the storage is made)."""
    opened = [] if opened is None else opened
    from proxy.storage.base import WHOLE

    if settings.sync:
        import anyio.to_thread

        def read() -> bytes:
            storage = open_s3(settings)
            try:
                opened.append(time.monotonic())
                reply = storage.open(key, WHOLE)
                try:
                    return b"".join(reply.body.iter_range(ByteRange(0, reply.meta.size), 65536))
                finally:
                    reply.body.close()
            finally:
                storage.close()

        return await anyio.to_thread.run_sync(read)
    async with AsyncExitStack() as stack:
        storage = await aopen_s3(settings, stack)
        opened.append(time.monotonic())
        reply = await storage.open(key, WHOLE)
        try:
            chunks = await reply.body.aiter_range(ByteRange(0, reply.meta.size), 65536)
            return b"".join([chunk async for chunk in chunks])
        finally:
            await reply.body.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stalled_listing_and_head_time_out_at_the_deadline(
    request: pytest.FixtureRequest, client: str
) -> None:
    s3 = s3_server(request, "moto")
    with behind_a_relay(s3) as (relay, _):
        relay.arm(Fault("stall_head", match=lambda r: True, times=100))
        settings = options(relay, client, presigned=True)
        for call in ["head", "listing"]:
            started = time.monotonic()
            with pytest.raises(BackendTimeout):
                await call_once(settings, call)
            # The time includes making the client (a second under a loaded suite): the bound
            # still tells one deadline from the two a retry past it would take.
            assert time.monotonic() - started < DEADLINE + 2
        assert 2 <= len(relay.requests) <= 6


async def call_once(settings: S3Options, call: str) -> None:
    if settings.sync:
        import anyio.to_thread

        def run() -> None:
            storage = open_s3(settings)
            try:
                if call == "head":
                    storage.open("video/clip.mp4", METADATA_ONLY)
                else:
                    next(iter(storage.listing("")))
            finally:
                storage.close()

        await anyio.to_thread.run_sync(run)
        return
    async with AsyncExitStack() as stack:
        storage = await aopen_s3(settings, stack)
        if call == "head":
            await storage.open("video/clip.mp4", METADATA_ONLY)
        else:
            await anext(aiter(storage.listing("")))


def test_the_relay_passes_bodies_through_untouched(setup: Setup, relay: FaultyRelay) -> None:
    response = httpx.get(setup.url(), timeout=30)
    assert (response.status_code, hashlib.sha256(response.content).digest()) == (
        200,
        hashlib.sha256(DATA).digest(),
    )
    assert relay.applied == []
    assert [r.range for r in relay.gets(setup.key)] == [None]


CACHED = [("boto3", True), ("boto3", False), ("aiobotocore", True)]


@pytest.mark.parametrize(
    ("client", "presigned"), CACHED, ids=["boto3-on-the-loop", "boto3-in-a-thread", "async"]
)
def test_the_slice_caches_fills_resume_too(
    request: pytest.FixtureRequest,
    serve: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
    client: str,
    presigned: bool,
) -> None:
    s3 = s3_server(request, "seaweedfs")
    key = f"faults/cached-{client}-{presigned}.bin"
    put_object(s3, key, DATA, "application/octet-stream")
    with behind_a_relay(s3) as (relay, via):
        settings = s3_settings(
            via,
            client,
            s3_read_timeout=READ_TIMEOUT,
            s3_presigned_gets=presigned,
            cache_dir=tmp_path_factory.mktemp("cache"),
            cache_slice_size=256 * 1024,
        )
        proxy = serve(settings)
        relay.arm(Fault("reset", match=gets_of(key), after=CUT_AT))
        before = resumes("resumed")
        response = httpx.get(f"{proxy.url}/objects/{key}", timeout=30)
        assert relay.applied == ["reset"]
        assert (response.status_code, sha256(response.content)) == (200, sha256(DATA))
        assert resumes("resumed") == before + 1
        # What the fill kept is the object: served again from the cache, whole.
        gets = len(relay.gets(key))
        again = httpx.get(f"{proxy.url}/objects/{key}", timeout=30)
        assert sha256(again.content) == sha256(DATA)
        assert len(relay.gets(key)) == gets
