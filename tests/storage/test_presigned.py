"""Presigned GET units: the URL cache, the reply's answer and verdicts, when plain GETs apply."""

from __future__ import annotations

import pytest

from proxy.http.codec import ByteRange, ContentRange
from proxy.storage import errors, presigned
from proxy.storage.presigned import UrlCache
from proxy.storage.s3answer import S3Answer, definite_error


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_url_is_reused_until_its_time_is_up() -> None:
    clock = Clock()
    cache = UrlCache(limit=8, reuse=300, clock=clock)
    assert cache.get("a") is None
    cache.put("a", "https://s3/a?sig=1")
    clock.now += 299.9
    assert cache.get("a") == "https://s3/a?sig=1"
    clock.now += 0.1
    assert cache.get("a") is None  # presigned again: a fresh URL, fresh credentials
    cache.put("a", "https://s3/a?sig=2")
    assert cache.get("a") == "https://s3/a?sig=2"
    cache.drop("a")
    assert cache.get("a") is None
    cache.drop("a")  # dropping twice is harmless


def test_the_cache_keeps_at_most_its_limit_dropping_the_oldest() -> None:
    cache = UrlCache(limit=3, clock=Clock())
    for key in "abcd":
        cache.put(key, f"url-{key}")
    assert [cache.get(key) for key in "abcd"] == [None, "url-b", "url-c", "url-d"]
    cache.put("b", "url-b2")  # put again: now the newest
    cache.put("e", "url-e")
    assert [cache.get(key) for key in "bcde"] == ["url-b2", None, "url-d", "url-e"]


def test_request_headers() -> None:
    agent = {"User-Agent": presigned.USER_AGENT}
    assert presigned.request_headers(None, None) == agent
    both = {"Range": "bytes=0-9", "If-Match": '"e"'}
    assert presigned.request_headers("bytes=0-9", '"e"') == agent | both


def test_an_answer_from_the_replys_header_fields() -> None:
    headers = {
        "Content-Length": "10",
        "Content-Range": "bytes 0-9/100",
        "Content-Type": "video/mp4",
        "ETag": '"abc"',
        "Last-Modified": "Sat, 21 Nov 2026 00:00:00 GMT",
    }
    stream = object()
    assert S3Answer.from_headers(headers, stream) == S3Answer(
        length=10,
        content_range=ContentRange(ByteRange(0, 10), 100),
        content_type="video/mp4",
        etag='"abc"',
        last_modified="Sat, 21 Nov 2026 00:00:00 GMT",
        stream=stream,
    )
    assert S3Answer.from_headers({"Content-Length": "7"}, stream) == S3Answer(7, stream=stream)


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "video/mp4"},  # chunked: botocore
        {"Content-Length": "-1"},
        {"Content-Length": "+1"},
        {"Content-Length": "\u0661\u0660"},  # non-ASCII digits
        {"Content-Length": "10", "Content-Range": "bytes 0-9/*"},  # a 2xx names its size
        {"Content-Length": "10", "Content-Range": "bytes */100"},
        {"Content-Length": "10", "Content-Range": "bytes 9-0/100"},
        {"Content-Length": "10", "Content-Range": "items 0-9/100"},
    ],
)
def test_a_reply_without_a_length_or_with_a_malformed_range_is_botocores(
    headers: dict[str, str],
) -> None:
    assert S3Answer.from_headers(headers, object()) is None


def document(code: str) -> bytes:
    return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>".encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (412, b"", errors.ObjectChanged),
        (412, document("PreconditionFailed"), errors.ObjectChanged),
        (412, document("NoSuchKey"), errors.ObjectChanged),  # the status settles it
        (416, document("InvalidRange"), errors.RangeNotSatisfiable),
        (416, b"", errors.RangeNotSatisfiable),
        (404, document("NoSuchKey"), errors.ObjectNotFound),
    ],
)
def test_definite_answers(status: int, body: bytes, expected: type[Exception]) -> None:
    assert type(definite_error(status, body)) is expected


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, document("NoSuchBucket")),  # the operator's to fix: botocore logs it
        (404, b""),
        (404, document("NotFound")),  # not definite: a 404 settles nothing without NoSuchKey
        (403, document("SignatureDoesNotMatch")),  # an expired URL: botocore signs afresh
        (403, document("AccessDenied")),
        (403, b""),
        (400, document("ExpiredToken")),
        (400, document("PreconditionFailed")),  # a code must agree with its status
        (503, document("SlowDown")),  # botocore's retry policy decides
        (500, document("NoSuchKey")),
        (500, b"<html>"),
        (301, document("PermanentRedirect")),
    ],
)
def test_everything_else_is_botocores_to_answer(status: int, body: bytes) -> None:
    assert definite_error(status, body) is None


def test_plain_gets_avoid_an_http_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"]:
        monkeypatch.delenv(name, raising=False)
    assert presigned.usable("https://s3.eu-west-1.amazonaws.com")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert not presigned.usable("https://s3.eu-west-1.amazonaws.com")
    assert presigned.usable("http://127.0.0.1:9000")  # no proxy for this scheme
    monkeypatch.setenv("NO_PROXY", "s3.eu-west-1.amazonaws.com")
    assert presigned.usable("https://s3.eu-west-1.amazonaws.com")


def test_the_ca_bundle_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.session

    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    default = presigned.ca_file(botocore.session.Session())
    assert default.endswith(".pem")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert presigned.ca_file(botocore.session.Session()) == "/etc/ssl/certs/ca-certificates.crt"
