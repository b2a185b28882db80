"""Response plans (RFC 9110 §13.2.2, §14, §15): statuses, headers and the exact body bytes."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.codec import ByteRange
from proxy.http.plan import Part, Plan, body_length, error_body, plan_response
from proxy.http.request import ObjectRequest
from proxy.storage.base import ObjectMeta
from tests.http.plans import assemble, header

DATA = b"0123456789"
LM = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LM_TEXT = "Wed, 01 May 2024 12:00:00 GMT"
META = ObjectMeta("v.mp4", len(DATA), "video/mp4", '"v1"', LM)
EMPTY = ObjectMeta("empty", 0, "text/plain", '"e"', LM)
BARE = ObjectMeta("bare", 4)
BOUNDARY = "0f" * 16
MULTIPART = f"multipart/byteranges; boundary={BOUNDARY}"
VALIDATORS = (("etag", '"v1"'), ("last-modified", LM_TEXT))
PRECONDITION_BODY = (
    b'{"error":"precondition_failed","detail":"a precondition in the request headers failed"}'
)
RANGE_BODY = b'{"error":"range_not_satisfiable","detail":"no requested range overlaps the object"}'


def plan_for(
    method: str,
    headers: dict[str, str],
    meta: ObjectMeta,
    *,
    max_ranges: int = 16,
    cache_control: str = "",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> Plan:
    """``plan_response`` for a request with these header fields (lowercase names)."""
    request = ObjectRequest.from_fields(method, headers, max_ranges)
    return plan_response(request, meta, cache_control=cache_control, extra_headers=extra_headers)


def full_headers(meta: ObjectMeta = META, length: int = 10) -> tuple[tuple[str, str], ...]:
    return (
        ("content-type", meta.media_type),
        ("content-length", str(length)),
        ("accept-ranges", "bytes"),
    ) + VALIDATORS


def parse_multipart(body: bytes, boundary: str, size: int) -> list[tuple[str, str, bytes]]:
    """A strict multipart/byteranges parser driven by each part's Content-Range."""
    parts: list[tuple[str, str, bytes]] = []
    delimiter = f"--{boundary}".encode()
    assert body.startswith(delimiter + b"\r\n")
    pos = len(delimiter) + 2
    while True:
        end = body.index(b"\r\n\r\n", pos)
        fields = dict(line.split(": ", 1) for line in body[pos:end].decode().split("\r\n"))
        assert set(fields) == {"Content-Type", "Content-Range"}
        match = re.fullmatch(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)", fields["Content-Range"])
        assert match is not None and int(match[3]) == size
        first, last = int(match[1]), int(match[2])
        start = end + 4
        data = body[start : start + last - first + 1]
        parts.append((fields["Content-Type"], fields["Content-Range"], data))
        pos = start + last - first + 1
        assert body.startswith(b"\r\n" + delimiter, pos)
        pos += 2 + len(delimiter)
        if body[pos:] == b"--\r\n":
            return parts
        assert body.startswith(b"\r\n", pos)
        pos += 2


@pytest.fixture
def fixed_boundary(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr("proxy.http.plan.secrets.token_hex", lambda n: "0f" * n)
    return BOUNDARY


# --- statuses and headers --------------------------------------------------------------------


def test_plain_get() -> None:
    plan = plan_for("GET", {}, META)
    assert plan == Plan(200, full_headers(), (Part(b"", ByteRange(0, 10)),))
    assert assemble(plan, DATA) == DATA


def test_plain_head() -> None:
    assert plan_for("HEAD", {}, META) == Plan(200, full_headers())


def test_optional_headers() -> None:
    extra = (("content-disposition", 'attachment; filename="v.mp4"'),)
    plan = plan_for("GET", {}, META, cache_control="public, max-age=60", extra_headers=extra)
    assert plan.headers == full_headers() + (("cache-control", "public, max-age=60"),) + extra


STORED = ObjectMeta(
    "v.mp4",
    len(DATA),
    "video/mp4",
    '"v1"',
    LM,
    content_disposition='inline; filename="stored.mp4"',
    cache_control="public, max-age=31536000, immutable",
)
STORED_FIELDS = (
    ("cache-control", "public, max-age=31536000, immutable"),
    ("content-disposition", 'inline; filename="stored.mp4"'),
)


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {}, 200),
        ("HEAD", {}, 200),
        ("GET", {"range": "bytes=2-5"}, 206),
        ("HEAD", {"range": "bytes=2-5"}, 200),
    ],
)
def test_stored_fields_replace_the_configured_cache_control(
    method: str, headers: dict[str, str], status: int
) -> None:
    plan = plan_for(method, headers, STORED, cache_control="no-cache")
    assert plan.status == status
    fields = [(name, value) for name, value in plan.headers if name in dict(STORED_FIELDS)]
    assert fields == list(STORED_FIELDS)  # each once: the configured no-cache is not sent


def test_a_stored_cache_control_goes_with_a_304_but_no_disposition() -> None:
    plan = plan_for("GET", {"if-none-match": '"v1"'}, STORED, cache_control="no-cache")
    assert plan == Plan(304, VALIDATORS + (STORED_FIELDS[0],))


def test_an_extra_disposition_overrides_the_stored_one() -> None:
    download = (("content-disposition", 'attachment; filename="v.mp4"'),)
    plan = plan_for("GET", {}, STORED, extra_headers=download)
    assert [v for n, v in plan.headers if n == "content-disposition"] == [download[0][1]]


def test_errors_send_no_stored_fields() -> None:
    for headers in ({"if-match": '"other"'}, {"range": "bytes=50-"}):
        plan = plan_for("GET", headers, STORED, cache_control="no-cache")
        assert plan.status in (412, 416)
        assert not {"cache-control", "content-disposition"} & {n for n, _ in plan.headers}


def test_multipart_sends_the_stored_fields_at_the_top_only(fixed_boundary: str) -> None:
    plan = plan_for("GET", {"range": "bytes=7-8,0-1"}, STORED, cache_control="private")
    assert plan.status == 206
    assert [(n, v) for n, v in plan.headers if n in dict(STORED_FIELDS)] == list(STORED_FIELDS)
    parts = parse_multipart(assemble(plan, DATA), fixed_boundary, len(DATA))  # parts: 2 fields
    assert [data for _, _, data in parts] == [b"01", b"78"]


def test_bare_object_has_no_validators() -> None:
    plan = plan_for("GET", {}, BARE)
    assert plan.headers == (
        ("content-type", "application/octet-stream"),
        ("content-length", "4"),
        ("accept-ranges", "bytes"),
    )
    assert plan.parts == (Part(b"", ByteRange(0, 4)),)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_empty_object(method: str) -> None:
    plan = plan_for(method, {}, EMPTY)
    assert plan.status == 200
    assert header(plan, "content-length") == "0"
    assert plan.parts == () and plan.tail == b""


@pytest.mark.parametrize(
    ("range_value", "status", "content_range", "data"),
    [
        ("bytes=0-1", 206, "bytes 0-1/10", b"01"),
        ("bytes=0-0", 206, "bytes 0-0/10", b"0"),
        ("bytes=-3", 206, "bytes 7-9/10", b"789"),
        ("bytes=8-", 206, "bytes 8-9/10", b"89"),
        ("bytes=5-500", 206, "bytes 5-9/10", b"56789"),
        ("bytes=0-", 206, "bytes 0-9/10", DATA),  # the whole object still gets 206 (Safari)
        ("bytes=-100", 206, "bytes 0-9/10", DATA),
        ("bytes=0-1,2-3", 206, "bytes 0-3/10", b"0123"),  # adjacent: coalesced, no multipart
        ("bytes=3-4,0-5", 206, "bytes 0-5/10", b"012345"),
        ("bytes=10-,2-2", 206, "bytes 2-2/10", b"2"),
        ("BYTES=1-1", 206, "bytes 1-1/10", b"1"),
        ("bytes=5-4", 200, None, DATA),  # invalid: ignored
        ("items=0-1", 200, None, DATA),
        ("bytes=abc", 200, None, DATA),
        ("bytes=" + "0-0," * 17, 200, None, DATA),  # more than max_ranges: ignored
    ],
)
def test_single_range(
    range_value: str, status: int, content_range: str | None, data: bytes
) -> None:
    plan = plan_for("GET", {"range": range_value}, META)
    assert plan.status == status
    assert assemble(plan, DATA) == data
    assert header(plan, "content-length") == str(len(data)) == str(body_length(plan))
    assert header(plan, "content-range") == content_range
    assert header(plan, "content-type") == "video/mp4"
    assert plan.tail == b""
    if content_range is not None:
        assert plan.headers == full_headers(length=len(data)) + (("content-range", content_range),)


@pytest.mark.parametrize("range_value", ["bytes=10-", "bytes=10-20", "bytes=-0", "bytes=99-,-0"])
def test_unsatisfiable(range_value: str) -> None:
    plan = plan_for("GET", {"range": range_value}, META)
    assert plan == Plan(
        416,
        (
            ("content-type", "application/json"),
            ("content-length", str(len(RANGE_BODY))),
            ("content-range", "bytes */10"),
        ),
        tail=RANGE_BODY,
    )
    assert json.loads(plan.tail)["error"] == "range_not_satisfiable"


def test_max_ranges_comes_from_the_request() -> None:
    three = {"range": "bytes=0-0,4-4,8-8"}
    assert plan_for("GET", three, META, max_ranges=3).status == 206
    plan = plan_for("GET", three, META, max_ranges=2)  # more than max_ranges: ignored
    assert plan == Plan(200, full_headers(), (Part(b"", ByteRange(0, 10)),))
    plan = plan_for("GET", {"range": "bytes=10-"}, META, max_ranges=0)  # not even a 416
    assert plan.status == 200


@pytest.mark.parametrize(
    ("range_value", "status"),
    [("bytes=0-0", 416), ("bytes=0-", 416), ("bytes=-0", 416), ("bytes=-1", 200)],
)
def test_ranges_on_empty_object(range_value: str, status: int) -> None:
    plan = plan_for("GET", {"range": range_value}, EMPTY)
    assert plan.status == status
    assert header(plan, "content-range") == ("bytes */0" if status == 416 else None)
    assert plan.parts == ()


def test_head_ignores_range() -> None:
    assert plan_for("HEAD", {"range": "bytes=0-1"}, META) == Plan(200, full_headers())
    assert plan_for("HEAD", {"range": "bytes=99-"}, META) == Plan(200, full_headers())


def test_egregious_range_set_is_served_whole() -> None:
    big = ObjectMeta("big", 100, "video/mp4")
    # 12 copies send 1200 bytes, within 2 * 100 + 1024; 13 copies (1300) are egregious.
    plan = plan_for("GET", {"range": "bytes=" + ",".join(["0-"] * 12)}, big)
    assert plan.status == 206 and header(plan, "content-range") == "bytes 0-99/100"
    plan = plan_for("GET", {"range": "bytes=" + ",".join(["0-"] * 13)}, big)
    assert plan.status == 200
    assert plan.parts == (Part(b"", ByteRange(0, 100)),)


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        ('"v1"', 206),
        ('W/"v1"', 200),
        ('"v2"', 200),
        (LM_TEXT, 206),
        ("Wed, 01 May 2024 12:00:01 GMT", 200),
        ("Wed, 01 May 2024 11:59:59 GMT", 200),
        ("garbage", 200),
        ("", 200),
    ],
)
def test_if_range(if_range: str, status: int) -> None:
    plan = plan_for("GET", {"range": "bytes=2-3", "if-range": if_range}, META)
    assert plan.status == status
    assert assemble(plan, DATA) == (b"23" if status == 206 else DATA)


def test_if_range_false_skips_416() -> None:
    plan = plan_for("GET", {"range": "bytes=99-", "if-range": '"old"'}, META)
    assert plan.status == 200


def test_if_range_without_range_is_ignored() -> None:
    assert plan_for("GET", {"if-range": '"old"'}, META).status == 200


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "headers",
    [
        {"if-none-match": '"v1"'},
        {"if-none-match": 'W/"v1"', "range": "bytes=0-1"},
        {"if-none-match": "*"},
        {"if-modified-since": LM_TEXT},
        {"if-modified-since": LM_TEXT, "range": "bytes=99-"},
    ],
)
def test_not_modified(method: str, headers: dict[str, str]) -> None:
    plan = plan_for(method, headers, META, cache_control="no-cache", extra_headers=(("x", "y"),))
    assert plan == Plan(304, VALIDATORS + (("cache-control", "no-cache"),))


def test_not_modified_without_etag_sends_last_modified() -> None:
    meta = ObjectMeta("k", 3, last_modified=LM)
    plan = plan_for("GET", {"if-modified-since": LM_TEXT}, meta)
    assert plan == Plan(304, (("last-modified", LM_TEXT),))


@pytest.mark.parametrize(
    "headers",
    [
        {"if-match": '"v2"'},
        {"if-match": 'W/"v1"'},
        {"if-match": '"v2"', "range": "bytes=0-1"},
        {"if-unmodified-since": "Wed, 01 May 2024 11:59:59 GMT"},
        {"if-match": '"v2"', "if-none-match": '"v1"'},
    ],
)
def test_precondition_failed(headers: dict[str, str]) -> None:
    plan = plan_for("GET", headers, META)
    expected_headers = (
        ("content-type", "application/json"),
        ("content-length", str(len(PRECONDITION_BODY))),
    ) + VALIDATORS
    assert plan == Plan(412, expected_headers, tail=PRECONDITION_BODY)
    assert json.loads(plan.tail) == {
        "error": "precondition_failed",
        "detail": "a precondition in the request headers failed",
    }
    head = plan_for("HEAD", headers, META)
    assert head == Plan(412, expected_headers)


def test_precondition_passes_then_range_applies() -> None:
    headers = {"if-match": '"v1"', "if-none-match": '"v0"', "range": "bytes=1-2"}
    plan = plan_for("GET", headers, META)
    assert plan.status == 206 and assemble(plan, DATA) == b"12"


# --- the error body -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "detail", "expected"),
    [
        ("not_found", "no such object", b'{"error":"not_found","detail":"no such object"}'),
        ("x", "", b'{"error":"x","detail":""}'),
        ("x", 'say "hi"\\', b'{"error":"x","detail":"say \\"hi\\"\\\\"}'),
        ("x", "caf\u00e9 \u65e5\n", b'{"error":"x","detail":"caf\\u00e9 \\u65e5\\n"}'),
    ],
)
def test_error_body(code: str, detail: str, expected: bytes) -> None:
    body = error_body(code, detail)
    assert body == expected
    assert body.isascii()
    assert json.loads(body) == {"error": code, "detail": detail}


def test_error_bodies_of_plans() -> None:
    precondition = error_body("precondition_failed", "a precondition in the request headers failed")
    assert precondition == PRECONDITION_BODY
    assert error_body("range_not_satisfiable", "no requested range overlaps the object") == (
        RANGE_BODY
    )


# --- multipart --------------------------------------------------------------------------------


def test_multipart_exact_bytes(fixed_boundary: str) -> None:
    plan = plan_for("GET", {"range": "bytes=7-8,0-1"}, META, cache_control="private")
    body = assemble(plan, DATA)
    assert body == (
        b"--" + fixed_boundary.encode() + b"\r\n"
        b"Content-Type: video/mp4\r\n"
        b"Content-Range: bytes 0-1/10\r\n"
        b"\r\n"
        b"01\r\n"
        b"--" + fixed_boundary.encode() + b"\r\n"
        b"Content-Type: video/mp4\r\n"
        b"Content-Range: bytes 7-8/10\r\n"
        b"\r\n"
        b"78\r\n"
        b"--" + fixed_boundary.encode() + b"--\r\n"
    )
    assert plan.status == 206
    assert plan.headers == (
        ("content-type", MULTIPART),
        ("content-length", str(len(body))),
        ("accept-ranges", "bytes"),
        *VALIDATORS,
        ("cache-control", "private"),
    )
    assert [p.byte_range for p in plan.parts] == [ByteRange(0, 2), ByteRange(7, 9)]
    assert plan.parts[0].head.startswith(b"--") and plan.parts[1].head.startswith(b"\r\n--")
    assert plan.tail == b"\r\n--" + fixed_boundary.encode() + b"--\r\n"


def test_multipart_boundary_is_random() -> None:
    first = header(plan_for("GET", {"range": "bytes=0-0,2-2"}, META), "content-type")
    second = header(plan_for("GET", {"range": "bytes=0-0,2-2"}, META), "content-type")
    assert first is not None and re.fullmatch(r"multipart/byteranges; boundary=[0-9a-f]{32}", first)
    assert first != second


def test_multipart_parses_with_email() -> None:
    data = bytes(range(65, 91)) * 4  # printable, so the email parser keeps it verbatim
    meta = ObjectMeta("k", len(data), "text/plain", None, None)
    plan = plan_for("GET", {"range": "bytes=0-4, 10-19, -6"}, meta)
    content_type = header(plan, "content-type")
    assert content_type is not None
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + assemble(plan, data)
    message = message_from_bytes(raw)
    assert message.is_multipart() and not message.defects
    payloads = message.get_payload()
    assert isinstance(payloads, list)
    got = []
    for part in payloads:
        assert isinstance(part, Message)
        got.append((part["Content-Range"], part.get_payload()))
    assert got == [
        ("bytes 0-4/104", data[0:5].decode()),
        ("bytes 10-19/104", data[10:20].decode()),
        ("bytes 98-103/104", data[98:].decode()),
    ]


spec = st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: f"{min(t)}-{max(t)}")
specs = st.one_of(
    spec,
    st.integers(0, 60).map(lambda n: f"-{n}"),
    st.integers(0, 60).map(str).map(lambda a: f"{a}-"),
)


@given(st.binary(min_size=0, max_size=50), st.lists(specs, min_size=1, max_size=6))
def test_any_range_request_is_consistent(data: bytes, range_specs: list[str]) -> None:
    meta = ObjectMeta("k", len(data), "application/x-test", '"t"', LM)
    plan = plan_for("GET", {"range": "bytes=" + ",".join(range_specs)}, meta)
    body = assemble(plan, data)
    assert header(plan, "content-length") == str(len(body)) == str(body_length(plan))
    head = plan_for("HEAD", {}, meta)
    assert head.parts == () and head.tail == b""

    # Reference model: the set of requested offsets, by enumeration.
    wanted: set[int] = set()
    for text in range_specs:
        lo, _, hi = text.partition("-")
        if lo == "":
            wanted.update(range(max(len(data) - int(hi), 0), len(data)) if int(hi) else ())
        else:
            wanted.update(range(int(lo), min(int(hi) + 1 if hi else len(data), len(data))))

    content_type = header(plan, "content-type")
    assert content_type is not None
    if plan.status == 200:
        assert body == data and len(data) == 0
        assert head == Plan(200, plan.headers)
    elif plan.status == 416:
        assert not wanted
        assert header(plan, "content-range") == f"bytes */{len(data)}"
    elif content_type.startswith("multipart/byteranges; boundary="):
        assert plan.status == 206 and header(plan, "content-range") is None
        boundary = content_type.split("boundary=")[1]
        parts = parse_multipart(body, boundary, len(data))
        assert len(parts) >= 2
        offsets: list[int] = []
        previous_last = -2
        for part_type, content_range, chunk in parts:
            assert part_type == "application/x-test"
            first, last = map(int, content_range[6:].split("/")[0].split("-"))
            assert first > previous_last + 1  # coalesced: parts never touch or overlap
            assert chunk == data[first : last + 1]
            offsets.extend(range(first, last + 1))
            previous_last = last
        assert offsets == sorted(wanted)
    else:
        assert plan.status == 206 and content_type == "application/x-test"
        first = min(wanted)
        assert header(plan, "content-range") == f"bytes {first}-{max(wanted)}/{len(data)}"
        assert body == bytes(data[i] for i in sorted(wanted))
        assert sorted(wanted) == list(range(first, max(wanted) + 1))
