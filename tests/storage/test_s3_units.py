"""S3 backend units: the error table, the typed answer (stored metadata, content ranges),
session tuning, chunking (no server needed)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import botocore.session
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from prometheus_client import REGISTRY

from proxy.http.codec import ByteRange, ContentRange
from proxy.storage import errors
from proxy.storage.base import ReadyChunks
from proxy.storage.s3 import RangeNotSatisfiable, S3Body, _Chunks, _Prefetch
from proxy.storage.s3answer import (
    ERRORS,
    S3Answer,
    cut_cause,
    error_for_code,
    map_client_errors,
    meta_from,
)
from proxy.storage.s3client import ENDPOINT_SERVICES, _tune

HOST = "http://secret-host.internal"


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "secret-host.internal bucket=private"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (client_error("NoSuchKey", 404), errors.ObjectNotFound),
        (client_error("404", 404), errors.ObjectNotFound),  # HeadObject has no body, no code
        (client_error("AccessDenied", 403), errors.AccessDenied),
        (client_error("403", 403), errors.AccessDenied),
        (client_error("PreconditionFailed", 412), errors.ObjectChanged),
        (client_error("InvalidRange", 416), RangeNotSatisfiable),
        (client_error("SlowDown", 503), errors.BackendUnavailable),
        (client_error("ServiceUnavailable", 503), errors.BackendUnavailable),
        (client_error("InternalError", 500), errors.BackendUnavailable),
        (client_error("NoSuchBucket", 404), errors.BackendUnavailable),
        (client_error("InvalidAccessKeyId", 403), errors.BackendUnavailable),
        (client_error("RequestTimeout", 400), errors.BackendTimeout),
        (
            EndpointConnectionError(endpoint_url="http://secret-host.internal"),
            errors.BackendUnavailable,
        ),
        (NoCredentialsError(), errors.BackendUnavailable),
        (ConnectTimeoutError(endpoint_url=HOST), errors.BackendTimeout),
        (ReadTimeoutError(endpoint_url=HOST), errors.BackendTimeout),
        (TimeoutError(), errors.BackendTimeout),
        (IncompleteReadError(actual_bytes=1, expected_bytes=2), errors.BodyTruncated),
        (ResponseStreamingError(error="reset"), errors.BodyTruncated),
        (aiohttp.ClientPayloadError("cut"), errors.BodyTruncated),
        (aiohttp.ClientConnectionError("refused"), errors.BackendUnavailable),
    ],
)
def test_map_client_errors(raised: Exception, expected: type[errors.StorageError]) -> None:
    with pytest.raises(expected) as info, map_client_errors():
        raise raised
    assert info.value.__cause__ is raised
    assert "secret-host" not in str(info.value) and "private" not in str(info.value)


def test_other_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), map_client_errors():
        raise KeyError("not ours")


# The table, row by row: S3 error code or HTTP status -> (StorageError, definite for a presigned
# GET's reply).
TABLE: dict[str, tuple[type[errors.StorageError], bool]] = {
    "NoSuchKey": (errors.ObjectNotFound, True),
    "NotFound": (errors.ObjectNotFound, False),
    "404": (errors.ObjectNotFound, False),
    "AccessDenied": (errors.AccessDenied, False),
    "Forbidden": (errors.AccessDenied, False),
    "403": (errors.AccessDenied, False),
    "AllAccessDisabled": (errors.AccessDenied, False),
    "PreconditionFailed": (errors.ObjectChanged, True),
    "412": (errors.ObjectChanged, True),
    "InvalidRange": (errors.RangeNotSatisfiable, True),
    "416": (errors.RangeNotSatisfiable, True),
    "RequestTimeout": (errors.BackendTimeout, False),
    "RequestTimeoutException": (errors.BackendTimeout, False),
    "SlowDown": (errors.BackendUnavailable, False),
    "ServiceUnavailable": (errors.BackendUnavailable, False),
    "503": (errors.BackendUnavailable, False),
    "Throttling": (errors.BackendUnavailable, False),
    "ThrottlingException": (errors.BackendUnavailable, False),
    "RequestLimitExceeded": (errors.BackendUnavailable, False),
    "TooManyRequests": (errors.BackendUnavailable, False),
    "InternalError": (errors.BackendUnavailable, False),
    "500": (errors.BackendUnavailable, False),
}


def test_one_table_maps_s3_answers() -> None:
    assert {code: (row.error, row.definite) for code, row in ERRORS.items()} == TABLE


@pytest.mark.parametrize(("code", "expected"), [(code, row[0]) for code, row in TABLE.items()])
def test_each_code_of_the_table_maps_a_client_error_quietly(
    code: str, expected: type[errors.StorageError], caplog: pytest.LogCaptureFixture
) -> None:
    raised = client_error(code, 400)
    with caplog.at_level(logging.DEBUG, logger="proxy"):
        with pytest.raises(errors.StorageError) as info, map_client_errors():
            raise raised
    assert (type(info.value), info.value.__cause__) == (expected, raised)
    assert caplog.records == []  # a known answer is not the operator's to fix


@pytest.mark.parametrize("code", ["NoSuchBucket", "InvalidAccessKeyId", ""])
def test_a_code_outside_the_table_is_logged_and_unavailable(
    code: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.s3"):
        error = error_for_code(code)
    assert type(error) is errors.BackendUnavailable
    assert [record.getMessage() for record in caplog.records] == [f"S3 error {code}"]


@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (EndpointConnectionError(endpoint_url=HOST), "S3 unavailable: EndpointConnectionError"),
        (NoCredentialsError(), "S3 unavailable: NoCredentialsError"),
        (aiohttp.ClientConnectionError("refused"), "S3 unavailable: ClientConnectionError"),
    ],
)
def test_an_unreachable_backend_is_logged_by_type_only(
    raised: Exception, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.s3"):
        with pytest.raises(errors.BackendUnavailable), map_client_errors():
            raise raised
    assert [record.getMessage() for record in caplog.records] == [message]


FLAVOUR_IMPORTS = """
import asyncio, sys
from contextlib import AsyncExitStack
from proxy.storage import s3
from proxy.storage.options import S3Options
options = S3Options(bucket="b", client=sys.argv[1], endpoint_url="http://127.0.0.1:9",
    region="us-east-1")
async def aopen():
    async with AsyncExitStack() as stack:
        await s3.aopen_s3(options, stack)
s3.open_s3(options).close() if sys.argv[1] == "boto3" else asyncio.run(aopen())
print(*sorted({"boto3", "aiobotocore", "aiohttp"} & set(sys.modules)))
"""


@pytest.mark.parametrize(
    ("flavour", "imported"),
    [("boto3", "boto3"), ("aiobotocore", "aiobotocore aiohttp")],
)
def test_each_flavour_imports_only_its_own_library(flavour: str, imported: str) -> None:
    """The other flavour's modules would cost ~16 MB of RSS (aiohttp and aiobotocore)."""
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    done = subprocess.run(
        [sys.executable, "-c", FLAVOUR_IMPORTS, flavour],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == imported.split()


def _services(session: botocore.session.Session) -> set[str]:
    endpoints = session.get_component("data_loader").load_data("endpoints")
    return {name for partition in endpoints["partitions"] for name in partition["services"]}


def test_sessions_keep_only_the_endpoints_of_the_services_they_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore's full table has hundreds of services (~7 MB of dicts kept per session)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    full = botocore.session.Session()
    assert len(_services(full)) > 100
    tuned = _tune(botocore.session.Session())
    assert _services(tuned) == ENDPOINT_SERVICES & _services(full)
    assert {"s3", "sts"} <= _services(tuned)
    for region in ("eu-west-1", "cn-north-1", "us-gov-west-1"):  # a region of three partitions
        for service in ("s3", "sts"):
            ours = tuned.create_client(service, region_name=region).meta.endpoint_url
            theirs = full.create_client(service, region_name=region).meta.endpoint_url
            assert ours == theirs


def test_sessions_keep_service_models_without_their_documentation() -> None:
    """S3's model without its documentation strings: 3.4 MB of dicts held per session, 0.75 MB
    so. Every other value is the same, in the same order."""
    full = botocore.session.Session().get_component("data_loader")
    tuned = _tune(botocore.session.Session()).get_component("data_loader")
    for service in ("s3", "sts"):
        theirs = full.load_service_model(service, "service-2")
        ours = tuned.load_service_model(service, "service-2")
        assert _documentation(theirs) and not _documentation(ours)
        assert json.dumps(ours) == json.dumps(_documentation_emptied(theirs))


def _documentation(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k == "documentation" and v]
        return found + [d for v in value.values() for d in _documentation(v)]
    if isinstance(value, list):
        return [d for v in value for d in _documentation(v)]
    return []


def _documentation_emptied(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "" if k == "documentation" and isinstance(v, str) else _documentation_emptied(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_documentation_emptied(v) for v in value]
    return value


def test_a_data_path_of_the_user_is_still_searched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AWS_DATA_PATH overrides botocore's files; the endpoint table is trimmed there too."""
    (tmp_path / "endpoints.json").write_text(
        json.dumps(
            {
                "version": 3,
                "partitions": [
                    {"partition": "mine", "regions": {}, "services": {"s3": {}, "ec2": {}}}
                ],
            }
        )
    )
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    tuned = _tune(botocore.session.Session())
    assert tuned.get_component("data_loader").load_data("endpoints")["partitions"] == [
        {"partition": "mine", "regions": {}, "services": {"s3": {}}}
    ]


MODIFIED = "Sat, 21 Nov 2026 05:00:07 GMT"  # the header's text: the clients keep it raw


@pytest.mark.parametrize(
    ("stored", "key", "media_type"),
    [
        ("video/mp4", "clip.bin", "video/mp4"),  # the stored type wins over the extension
        ("audio/mpeg", "song", "audio/mpeg"),
        (None, "song.mp3", "audio/mpeg"),  # none stored: the extension
        ("", "song.mp3", "audio/mpeg"),
        ("binary/octet-stream", "clip.webm", "video/webm"),  # S3's default for untyped uploads
        ("application/octet-stream", "clip.webm", "video/webm"),
        ("binary/octet-stream", "blob", "application/octet-stream"),
        ("text/plain; charset=utf-8", "x.mp4", "text/plain; charset=utf-8"),
    ],
)
def test_meta_from_a_response(stored: str | None, key: str, media_type: str) -> None:
    response: dict[str, Any] = {"ContentLength": 10, "ETag": '"abc"', "LastModified": MODIFIED}
    if stored is not None:
        response["ContentType"] = stored
    meta = meta_from(key, S3Answer.from_botocore(response))
    assert meta.media_type == media_type
    assert (meta.key, meta.size, meta.etag) == (key, 10, '"abc"')
    assert meta.last_modified == datetime(2026, 11, 21, 5, 0, 7, tzinfo=UTC)


def test_meta_and_range_from_a_ranged_response() -> None:
    response = {"ContentLength": 10, "ContentRange": "bytes 5-14/1000", "ETag": "abc-5"}
    answer = S3Answer.from_botocore(response)
    meta = meta_from("a.mp4", answer)
    assert (meta.size, meta.etag, meta.last_modified) == (1000, '"abc-5"', None)
    assert answer.byte_range == ByteRange(5, 15)
    assert S3Answer.from_botocore({"ContentLength": 1000}).byte_range == ByteRange(0, 1000)


HEADERS = {
    "Content-Length": "10",
    "Content-Range": "bytes 5-14/1000",
    "Content-Type": "binary/octet-stream",
    "ETag": "abc-5",
    "Last-Modified": MODIFIED,
}
# botocore's names for the same header fields (its timestamps left as text by _tune)
BOTOCORE = {
    "ContentLength": 10,
    "ContentRange": "bytes 5-14/1000",
    "ContentType": "binary/octet-stream",
    "ETag": "abc-5",
    "LastModified": MODIFIED,
}


@pytest.mark.parametrize(
    "dropped",
    [(), ("Content-Range", "ContentRange"), ("Content-Type", "ContentType"), ("ETag", "ETag")],
)
def test_a_presigned_reply_and_botocore_give_the_same_answer(dropped: tuple[str, ...]) -> None:
    headers = {name: value for name, value in HEADERS.items() if name not in dropped}
    response = {name: value for name, value in BOTOCORE.items() if name not in dropped}
    stream = object()
    presigned = S3Answer.from_headers(headers, stream)
    botocore = S3Answer.from_botocore({**response, "Body": stream})
    assert presigned == botocore
    assert presigned is not None
    assert meta_from("a.webm", presigned) == meta_from("a.webm", botocore)
    ranged = "Content-Range" not in dropped
    assert presigned.byte_range == (ByteRange(5, 15) if ranged else ByteRange(0, 10))
    assert presigned.size == (1000 if ranged else 10)
    if ranged:
        assert presigned.content_range == ContentRange(ByteRange(5, 15), 1000)


def test_a_malformed_content_range_from_botocore_is_an_error() -> None:
    with pytest.raises(ValueError):
        S3Answer.from_botocore({"ContentLength": 10, "ContentRange": "bytes 5-14/*"})


class Stream:
    """A body reader: ``have`` bytes are ready at a time (``read_ready``), all of them blocking."""

    def __init__(self, data: bytes, have: int) -> None:
        self.data = data
        self.have = have
        self.asked: list[tuple[str, int]] = []

    def read(self, size: int) -> bytes:
        self.asked.append(("read", size))
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def read_ready(self, size: int) -> bytes | None:
        self.asked.append(("ready", size))
        return None if size > self.have else self.read(size)

    def close(self) -> None:
        self.closed = True


def test_chunks_take_what_is_ready_and_never_read_past_the_range() -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes, 10,000 of them in the range
    stream = Stream(data, have=4096)
    sizes = [4096, 4096, 8192]  # a pacer's answers; the last one repeats
    chunks = _Chunks(stream, 10_000, lambda: sizes.pop(0) if len(sizes) > 1 else sizes[0])
    assert isinstance(chunks, ReadyChunks)
    first = chunks.ready()
    second = chunks.ready()
    stream.have = 1000
    assert chunks.ready() is None  # 1,808 left and asked for, 1,000 ready: it would wait
    assert stream.asked[-1] == ("ready", 1808)  # never more than the range's rest
    stream.have = 2000
    third = chunks.ready()
    assert (chunks.ready(), list(chunks)) == (b"", [])  # the end
    assert (first or b"") + (second or b"") + (third or b"") == data[:10_000]
    assert [size for how, size in stream.asked if how == "read"] == [4096, 4096, 1808]


def test_chunks_without_a_ready_read_always_block() -> None:
    class Plain:
        def __init__(self) -> None:
            self.data = b"abcdefg"

        def read(self, size: int) -> bytes:
            chunk, self.data = self.data[:size], self.data[size:]
            return chunk

    chunks = _Chunks(Plain(), 7, 3)
    assert chunks.ready() is None
    assert list(chunks) == [b"abc", b"def", b"g"]


@pytest.mark.parametrize("how", ["ready", "next"])
def test_chunks_of_a_body_that_ends_early_raise_body_truncated(how: str) -> None:
    chunks = _Chunks(Stream(b"abc", have=10), 5, 4)
    assert next(chunks) == b"abc"
    if how == "ready":  # never resumed on the event loop: left to next(), in a thread
        assert chunks.ready() is None
    with pytest.raises(errors.BodyTruncated):
        next(chunks)


class Cut(Stream):
    """A stream that raises ``error`` once its ``data`` is read."""

    def __init__(self, data: bytes, have: int, error: Exception) -> None:
        super().__init__(data, have)
        self.error = error

    def read(self, size: int) -> bytes:
        if not self.data:
            raise self.error
        return super().read(size)


@pytest.mark.parametrize("how", ["ready", "next"])
def test_a_cut_stream_goes_on_from_its_resume_with_the_bytes_not_taken(how: str) -> None:
    data = bytes(range(100))
    asked: list[tuple[int, Exception]] = []

    def resume(remaining: int, stream: object, error: Exception) -> Stream:
        asked.append((remaining, error))
        return Stream(data[len(data) - remaining :], have=100)

    reset = ConnectionResetError(104, "reset")
    first = Cut(data[:30], have=100, error=errors.BodyTruncated())
    first.error.__cause__ = reset
    chunks = _Chunks(first, 100, 20, resume)
    taken = []
    for _ in range(20):  # bounded: 100 bytes in chunks of 20, one resume
        chunk = chunks.ready() if how == "ready" else next(chunks, None)
        if chunk is None and how == "ready":
            chunk = next(chunks, None)  # what a thread does when ready() has nothing
        if not chunk:
            break
        taken.append(chunk)
    assert b"".join(taken) == data
    assert [remaining for remaining, _ in asked] == [70]


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (errors.BodyTruncated(), "connection closed early"),
        (IncompleteReadError(actual_bytes=1, expected_bytes=2), "connection closed early"),
        (ResponseStreamingError(error=ConnectionResetError(104, "reset")), "connection reset"),
        (ReadTimeoutError(endpoint_url=HOST), "read timeout"),
        (errors.BackendTimeout(), "read timeout"),
        (errors.ObjectChanged(), "object changed"),
    ],
)
def test_a_cut_names_its_cause(error: Exception, cause: str) -> None:
    wrapped = errors.BodyTruncated()
    wrapped.__cause__ = error
    assert cut_cause(wrapped) == cause


class Bucket:
    """A storage double for a body's resumes: each GET answers what ``answers`` holds next (an
    S3Answer, or an error to raise), and is recorded."""

    resume_attempts = 2

    def __init__(self, *answers: S3Answer | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str | None, str | None]] = []

    def get(self, s3_key: str, range_value: str | None, etag: str | None = None) -> S3Answer:
        self.asked.append((range_value, etag))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def rest_of(data: bytes, start: int, etag: str = '"v1"') -> S3Answer:
    return S3Answer(
        len(data) - start,
        ContentRange(ByteRange(start, len(data)), len(data)),
        etag=etag,
        stream=Stream(data[start:], have=0),
    )


def resumes(outcome: str) -> float:
    return REGISTRY.get_sample_value("proxy_s3_resumes_total", {"outcome": outcome}) or 0.0


def read_cut_body(bucket: Bucket, data: bytes, cut_at: int) -> bytes:
    first = Cut(data[:cut_at], have=0, error=errors.BodyTruncated())
    body = S3Body(bucket, "k", '"v1"', _Prefetch(ByteRange(0, len(data)), first))
    try:
        return b"".join(body.iter_range(ByteRange(0, len(data)), 7))
    finally:
        body.close()


def test_a_resume_goes_on_from_the_first_byte_not_taken_pinned_to_the_etag() -> None:
    data = bytes(range(50))
    bucket = Bucket(rest_of(data, 21))
    before = resumes("resumed")
    assert read_cut_body(bucket, data, 21) == data
    assert bucket.asked == [("bytes=21-49", '"v1"')]
    assert resumes("resumed") == before + 1


@pytest.mark.parametrize(
    "answer",
    [
        errors.ObjectChanged(),  # S3's 412
        errors.ObjectNotFound(),
        rest_of(bytes(range(50)), 21, etag='"v2"'),  # If-Match not honoured: another version
        rest_of(bytes(range(50)), 20),  # not the bytes asked for
    ],
    ids=["412", "deleted", "another-etag", "another-range"],
)
def test_a_resume_of_another_version_cuts_the_body(answer: S3Answer | Exception) -> None:
    data = bytes(range(50))
    before = resumes("changed")
    with pytest.raises(errors.BodyTruncated, match="^the S3 body was cut: object changed"):
        read_cut_body(Bucket(answer), data, 21)
    assert resumes("changed") == before + 1


def test_resumes_that_find_no_answer_end_at_the_responses_budget() -> None:
    data = bytes(range(50))
    bucket = Bucket(errors.BackendUnavailable(), errors.BackendTimeout(), rest_of(data, 21))
    before = resumes("failed")
    with pytest.raises(errors.BodyTruncated, match="^the S3 body was cut: read timeout after 2"):
        read_cut_body(bucket, data, 21)
    assert len(bucket.asked) == 2  # PROXY_S3_RESUME_ATTEMPTS
    assert resumes("failed") == before + 2
