"""End to end over real sockets: every test runs against a uvicorn server of each flavour."""

from __future__ import annotations

import email.utils
import hashlib
import re
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import MediaTree, RunningServer, raw_request, sha256

CLIP = "video/clip.mp4"


def multipart_parts(response: httpx.Response) -> list[tuple[str, str, bytes]]:
    """(content-type, content-range, data) per part of a multipart/byteranges body."""
    match = re.fullmatch(
        r"multipart/byteranges; boundary=([0-9A-Za-z]+)", response.headers["content-type"]
    )
    assert match, response.headers["content-type"]
    boundary = match.group(1).encode()
    body = response.content
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    parts = []
    for raw in body[: -len(b"\r\n--" + boundary + b"--\r\n")].split(b"--" + boundary + b"\r\n")[1:]:
        head, _, data = raw.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((headers["Content-Type"], headers["Content-Range"], data))
    return parts


def test_full_get_streams_the_object_with_its_headers(
    client: httpx.Client, media: MediaTree, backend: str
) -> None:
    response = client.get(f"/objects/{CLIP}")
    data = media.data(CLIP)
    assert response.status_code == 200
    assert sha256(response.content) == sha256(data)
    assert response.headers["content-length"] == str(len(data))
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == "public, max-age=60"
    last_modified = email.utils.parsedate_to_datetime(response.headers["last-modified"])
    if backend.startswith("local"):
        assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+-[0-9a-f]+"', response.headers["etag"])
        assert last_modified.timestamp() == int((media.root / CLIP).stat().st_mtime)
    else:  # the stored object's own validators: a single-part upload's ETag is its MD5
        assert response.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
        assert abs(last_modified.timestamp() - time.time()) < 3600
    assert "content-range" not in response.headers


def test_head_sends_the_get_headers_and_no_body(
    server: RunningServer, client: httpx.Client
) -> None:
    get = client.get(f"/objects/{CLIP}")
    head = client.head(f"/objects/{CLIP}")
    assert head.status_code == 200
    assert head.content == b""
    for name in ["content-length", "content-type", "accept-ranges", "etag", "last-modified"]:
        assert head.headers[name] == get.headers[name]
    raw = raw_request(server.port, f"/objects/{CLIP}", method="HEAD")
    assert raw.endswith(b"\r\n\r\n")  # nothing after the headers on the wire


@pytest.mark.parametrize(
    ("key", "media_type"),
    [
        ("hello.txt", "text/plain; charset=utf-8"),
        ("dir/inner.mp3", "audio/mpeg"),
        ("empty.bin", "application/octet-stream"),
        ("name with spaces & (parens) \u00fc.webm", "video/webm"),
        ("linked.txt", "text/plain; charset=utf-8"),
    ],
)
def test_media_type_and_body_per_key(
    client: httpx.Client, media: MediaTree, key: str, media_type: str
) -> None:
    response = client.get(f"/objects/{key}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert sha256(response.content) == sha256(media.data(key))


@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=0-1", 0, 2),  # Safari's probe
        ("bytes=100-199", 100, 200),
        ("bytes=3145000-", 3145000, 3145851),
        ("bytes=-500", 3145851 - 500, 3145851),
        ("bytes=3145800-99999999", 3145800, 3145851),  # last-byte-pos clipped
        ("bytes=0-", 0, 3145851),  # whole object, still 206
        ("bytes=-99999999", 0, 3145851),  # suffix longer than the object
        ("BYTES=10-19", 10, 20),  # the unit is case-insensitive
        ("bytes=0-9,5-19", 0, 20),  # overlapping: coalesced into one part
        ("bytes=0-9,10-19", 0, 20),  # adjacent: coalesced
    ],
)
def test_single_range(
    client: httpx.Client, media: MediaTree, range_header: str, start: int, stop: int
) -> None:
    data = media.data(CLIP)
    assert len(data) == 3145851
    response = client.get(f"/objects/{CLIP}", headers={"Range": range_header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(data)}"
    assert response.headers["content-length"] == str(stop - start)
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == client.head(f"/objects/{CLIP}").headers["etag"]
    assert sha256(response.content) == sha256(data[start:stop])


def test_multiple_ranges_give_multipart_byteranges(client: httpx.Client, media: MediaTree) -> None:
    data = media.data(CLIP)
    size = len(data)
    response = client.get(
        f"/objects/{CLIP}", headers={"Range": "bytes=-10, 0-99,1000-1999,1500-2500"}
    )
    assert response.status_code == 206
    assert "content-range" not in response.headers
    assert response.headers["content-length"] == str(len(response.content))
    parts = multipart_parts(response)
    expected = [(0, 100), (1000, 2501), (size - 10, size)]
    assert [(ct, cr) for ct, cr, _ in parts] == [
        ("video/mp4", f"bytes {a}-{b - 1}/{size}") for a, b in expected
    ]
    for (_, _, got), (a, b) in zip(parts, expected, strict=True):
        assert sha256(got) == sha256(data[a:b])


def test_multipart_boundary_is_random(client: httpx.Client) -> None:
    headers = {"Range": "bytes=0-0,10-10"}
    first = client.get(f"/objects/{CLIP}", headers=headers).headers["content-type"]
    second = client.get(f"/objects/{CLIP}", headers=headers).headers["content-type"]
    assert first != second


@pytest.mark.parametrize(
    "range_header",
    ["bytes=3145851-", "bytes=99999999-", "bytes=-0", "bytes=3145851-3145900,4000000-"],
)
def test_unsatisfiable_ranges_give_416(client: httpx.Client, range_header: str) -> None:
    response = client.get(f"/objects/{CLIP}", headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */3145851"
    assert response.json()["error"] == "range_not_satisfiable"


@pytest.mark.parametrize(
    "range_header",
    [
        "bytes=5-4",  # first > last
        "bytes=abc",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=\u0661-2",
        "items=0-10",  # another unit
        "bytes=",
        "bytes 0-10",
        "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17)),  # over max_ranges
        "bytes=0-" + "9" * 5000,  # huge numbers never break parsing
    ],
)
def test_invalid_range_is_ignored(
    client: httpx.Client, media: MediaTree, range_header: str
) -> None:
    response = client.get(f"/objects/{CLIP}", headers={b"Range": range_header.encode()})
    if range_header.startswith("bytes=0-9999"):
        assert response.status_code == 206  # valid: last-byte-pos clipped
        assert response.headers["content-range"] == "bytes 0-3145850/3145851"
    else:
        assert response.status_code == 200
        assert "content-range" not in response.headers
    assert sha256(response.content) == sha256(media.data(CLIP))


def test_range_on_head_is_ignored(client: httpx.Client) -> None:
    response = client.head(f"/objects/{CLIP}", headers={"Range": "bytes=0-9"})
    assert response.status_code == 200
    assert response.headers["content-length"] == "3145851"
    assert "content-range" not in response.headers


def test_zero_byte_object(client: httpx.Client) -> None:
    full = client.get("/objects/empty.bin")
    assert (full.status_code, full.content, full.headers["content-length"]) == (200, b"", "0")
    from_start = client.get("/objects/empty.bin", headers={"Range": "bytes=0-"})
    assert from_start.status_code == 416
    assert from_start.headers["content-range"] == "bytes */0"
    suffix = client.get("/objects/empty.bin", headers={"Range": "bytes=-5"})
    assert (suffix.status_code, suffix.content, suffix.headers["content-length"]) == (200, b"", "0")


def validators(client: httpx.Client) -> tuple[str, str, datetime]:
    head = client.head(f"/objects/{CLIP}")
    last_modified = email.utils.parsedate_to_datetime(head.headers["last-modified"])
    return head.headers["etag"], head.headers["last-modified"], last_modified


def http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


def test_if_none_match_gives_304_with_validators(client: httpx.Client) -> None:
    etag, last_modified, _ = validators(client)
    for value in [etag, f"W/{etag}", f'"nope", {etag}', "*"]:
        for method in ["GET", "HEAD"]:
            response = client.request(method, f"/objects/{CLIP}", headers={"If-None-Match": value})
            assert response.status_code == 304, (value, method)
            assert response.content == b""
            assert response.headers["etag"] == etag
            assert response.headers["last-modified"] == last_modified
            assert response.headers["cache-control"] == "public, max-age=60"
            assert (
                "content-length" not in response.headers
                or response.headers["content-length"] == "0"
            )
    assert client.get(f"/objects/{CLIP}", headers={"If-None-Match": '"other"'}).status_code == 200


def test_if_modified_since(client: httpx.Client) -> None:
    _, last_modified, moment = validators(client)
    assert (
        client.get(f"/objects/{CLIP}", headers={"If-Modified-Since": last_modified}).status_code
        == 304
    )
    later = http_date(moment + timedelta(hours=1))
    assert client.get(f"/objects/{CLIP}", headers={"If-Modified-Since": later}).status_code == 304
    earlier = http_date(moment - timedelta(seconds=1))
    assert client.get(f"/objects/{CLIP}", headers={"If-Modified-Since": earlier}).status_code == 200
    invalid = client.get(f"/objects/{CLIP}", headers={"If-Modified-Since": "yesterday-ish"})
    assert invalid.status_code == 200  # invalid dates are ignored
    # If-None-Match present: If-Modified-Since is not evaluated (RFC 9110 §13.2.2 step 4).
    both = {"If-None-Match": '"other"', "If-Modified-Since": later}
    assert client.get(f"/objects/{CLIP}", headers=both).status_code == 200


def test_if_match_and_if_unmodified_since_give_412(client: httpx.Client) -> None:
    etag, _, moment = validators(client)
    assert client.get(f"/objects/{CLIP}", headers={"If-Match": etag}).status_code == 200
    assert client.get(f"/objects/{CLIP}", headers={"If-Match": "*"}).status_code == 200
    failed = client.get(f"/objects/{CLIP}", headers={"If-Match": '"other"'})
    assert failed.status_code == 412
    assert failed.json()["error"] == "precondition_failed"
    # If-Match uses strong comparison: a weak tag never matches.
    assert client.get(f"/objects/{CLIP}", headers={"If-Match": f"W/{etag}"}).status_code == 412
    earlier = http_date(moment - timedelta(seconds=1))
    assert (
        client.get(f"/objects/{CLIP}", headers={"If-Unmodified-Since": earlier}).status_code == 412
    )
    later = http_date(moment + timedelta(seconds=1))
    assert client.get(f"/objects/{CLIP}", headers={"If-Unmodified-Since": later}).status_code == 200
    ignored = {"If-Unmodified-Since": "not a date"}
    assert client.get(f"/objects/{CLIP}", headers=ignored).status_code == 200
    # If-Match wins over If-None-Match: 412 before 304.
    both = {"If-Match": '"other"', "If-None-Match": etag}
    assert client.get(f"/objects/{CLIP}", headers=both).status_code == 412


def test_if_range(client: httpx.Client, media: MediaTree) -> None:
    etag, last_modified, moment = validators(client)
    data = media.data(CLIP)
    matching = [etag, last_modified]
    not_matching = [f"W/{etag}", '"other"', http_date(moment - timedelta(seconds=1)), "garbage"]
    for value in matching:
        response = client.get(
            f"/objects/{CLIP}", headers={"Range": "bytes=10-19", "If-Range": value}
        )
        assert response.status_code == 206, value
        assert response.content == data[10:20]
    for value in not_matching:
        response = client.get(
            f"/objects/{CLIP}", headers={"Range": "bytes=10-19", "If-Range": value}
        )
        assert response.status_code == 200, value
        assert sha256(response.content) == sha256(data)


def test_conditionals_do_not_hide_a_missing_object(client: httpx.Client) -> None:
    response = client.get(
        "/objects/missing.mp4", headers={"If-None-Match": "*", "Range": "bytes=0-1"}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no object at this key"}


def test_download_sets_an_encoded_content_disposition(client: httpx.Client) -> None:
    plain = client.get("/objects/hello.txt", params={"download": ""})
    assert plain.headers["content-disposition"] == 'attachment; filename="hello.txt"'
    named = client.get("/objects/hello.txt", params={"download": 'r\u00e9sum\u00e9 "1".txt'})
    disposition = named.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=\"r_sum_ _1_.txt\"; filename*=UTF-8''")
    assert "r%C3%A9sum%C3%A9" in disposition
    assert client.get("/objects/hello.txt").headers.get("content-disposition") is None


def test_download_name_cannot_inject_headers(server: RunningServer) -> None:
    raw = raw_request(server.port, "/objects/hello.txt?download=a%0d%0aSet-Cookie:%20x=1%0d%0a.txt")
    assert raw.startswith(b"HTTP/1.1 200 ")
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    names = [line.split(b":", 1)[0].lower() for line in lines]
    assert b"set-cookie" not in names
    (disposition,) = [line for line in lines if line.lower().startswith(b"content-disposition:")]
    assert disposition.startswith(b'content-disposition: attachment; filename="aSet-Cookie')


@pytest.mark.parametrize(
    "target",
    [
        "/objects/../../../../etc/passwd",
        "/objects/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/objects/..%2f..%2f..%2fetc%2fpasswd",
        "/objects/video%2f..%2f..%2f..%2fetc%2fpasswd",
        "/objects/..%5c..%5cetc%5cpasswd",
        "/objects/hello.txt%00.mp4",
        "/objects//etc/passwd",
        "/objects/%2fetc%2fpasswd",
        "/objects/escape.txt",
        "/objects/escape-dir/secret.txt",
        "/objects/dir",
        "/objects/dir/",
        "/objects/video/",
        "/objects/",
    ],
)
def test_no_key_reaches_outside_the_root(server: RunningServer, target: str) -> None:
    raw = raw_request(server.port, target)
    status = int(raw.split(b" ", 2)[1])
    assert status in (400, 404), raw[:200]
    assert b"SECRET" not in raw and b"root:" not in raw
    assert raw.split(b"\r\n\r\n", 1)[1].startswith(b'{"error":')


def test_errors_are_json_without_internals(client: httpx.Client, media: MediaTree) -> None:
    response = client.get("/objects/a/../b")
    assert response.status_code in (400, 404)
    assert str(media.root) not in response.text
    not_allowed = client.post(f"/objects/{CLIP}")
    assert not_allowed.status_code == 405
    assert not_allowed.json()["error"] == "method_not_allowed"
    assert set(not_allowed.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    unknown = client.get("/nowhere")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_header_fields_are_read_once_and_agree_with_starlette() -> None:
    from starlette.requests import Request

    from proxy.http.codec import Range, RangeSpec
    from proxy.http.request import ObjectRequest

    raw = [(b"range", b"bytes=0-1"), (b"if-none-match", b'"a"'), (b"range", b"bytes=5-6")]
    request = Request({"type": "http", "method": "GET", "headers": raw, "query_string": b""})
    fields = ObjectRequest.from_raw("GET", raw)
    assert fields.range == Range((RangeSpec(0, 1),))  # parsed once, the first field's
    assert fields.if_none_match == '"a"'
    assert request.headers.get("range") == "bytes=0-1"
    assert request.headers.get("if-none-match") == fields.if_none_match


def test_a_repeated_range_field_serves_the_first(server: RunningServer, media: MediaTree) -> None:
    head, _, body = raw_request(
        server.port, "/objects/hello.txt", headers="Range: bytes=0-4\r\nRange: bytes=6-10\r\n"
    ).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206")
    assert body == media.data("hello.txt")[0:5]
