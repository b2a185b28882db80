"""ObjectRequest: the header fields an object request is decided on, read once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from proxy.http.codec import Range, RangeSpec
from proxy.http.request import ObjectRequest

FIELDS = (
    "range",
    "if-range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
)


def fields_of(request: ObjectRequest) -> dict[str, str | None]:
    """The text fields of ``request`` by header name (the Range is parsed, so it is not here)."""
    return {
        "if-range": request.if_range,
        "if-match": request.if_match,
        "if-none-match": request.if_none_match,
        "if-modified-since": request.if_modified_since,
        "if-unmodified-since": request.if_unmodified_since,
    }


def test_from_fields() -> None:
    request = ObjectRequest.from_fields(
        "GET",
        {
            "range": "bytes=0-1",
            "if-range": '"r"',
            "if-match": '"m"',
            "if-none-match": '"n"',
            "if-modified-since": "ims",
            "if-unmodified-since": "ius",
            "x-other": "ignored",
        },
    )
    assert request == ObjectRequest(
        "GET", Range((RangeSpec(0, 1),)), '"r"', '"m"', '"n"', "ims", "ius"
    )
    assert ObjectRequest.from_fields("HEAD", {}) == ObjectRequest("HEAD")


def test_from_fields_parses_the_range_once() -> None:
    assert ObjectRequest.from_fields("GET", {"range": "bytes=5-4"}).range is None  # ignored
    assert ObjectRequest.from_fields("GET", {"range": ""}).range is None
    many = {"range": "bytes=0-0,2-2,4-4"}
    assert ObjectRequest.from_fields("GET", many).range is not None  # max_ranges=16 by default
    assert ObjectRequest.from_fields("GET", many, max_ranges=3).range is not None
    assert ObjectRequest.from_fields("GET", many, max_ranges=2).range is None
    assert ObjectRequest.from_raw("GET", [(b"range", b"bytes=0-0,2-2,4-4")], 2).range is None


def test_from_raw() -> None:
    raw = [
        (b"host", b"example.test"),
        (b"range", b"bytes=-5"),
        (b"if-none-match", b'"a"'),
        (b"if-modified-since", b"Wed, 01 May 2024 12:00:00 GMT"),
        (b"if-range", b'W/"\xe9"'),  # decoded as latin-1, like Starlette
    ]
    request = ObjectRequest.from_raw("GET", raw, 16)
    assert request == ObjectRequest(
        "GET",
        Range((RangeSpec(None, 5),)),
        if_range='W/"\xe9"',
        if_none_match='"a"',
        if_modified_since="Wed, 01 May 2024 12:00:00 GMT",
    )
    assert ObjectRequest.from_raw("HEAD", []) == ObjectRequest("HEAD")


def test_from_raw_first_of_a_repeated_field_wins() -> None:
    raw = [
        (b"if-match", b'"first"'),
        (b"range", b"bytes=0-1"),
        (b"if-match", b'"second"'),
        (b"range", b"bytes=2-3"),
        (b"if-match", b"*"),
    ]
    request = ObjectRequest.from_raw("GET", raw)
    assert request.if_match == '"first"' == Headers(raw=raw).get("if-match")
    assert request.range == Range((RangeSpec(0, 1),))
    # An invalid first Range is not replaced by a valid later one: the header is ignored.
    raw = [(b"range", b"bytes=junk"), (b"range", b"bytes=0-1")]
    assert ObjectRequest.from_raw("GET", raw).range is None


def test_from_raw_ignores_other_fields() -> None:
    raw = [
        (b"x-range", b"bytes=0-1"),
        (b"content-range", b"bytes 0-1/10"),
        (b"range-", b"bytes=0-1"),
        (b"if-match-x", b'"x"'),
        (b"if_none_match", b'"x"'),
        (b"Range", b"bytes=0-1"),  # ASGI names are lowercase; Starlette does not find it either
        (b"IF-MATCH", b'"x"'),
        (b"if-range ", b'"x"'),
        (b"etag", b'"x"'),
    ]
    request = ObjectRequest.from_raw("GET", raw)
    assert request == ObjectRequest("GET")
    assert not request.conditional
    assert all(Headers(raw=raw).get(name) is None for name in FIELDS)


names = st.sampled_from(
    [name.encode() for name in FIELDS]
    + [b"host", b"x-range", b"Range", b"IF-MATCH", b"if-range ", b"content-range"]
)
values = st.one_of(
    st.binary(max_size=20),
    st.sampled_from([b"bytes=0-1", b"bytes=-0", b"bytes=0-0,2-2", b'"a"', b"*", b"bytes=5-4"]),
)


@given(st.lists(st.tuples(names, values), max_size=12), st.integers(0, 3))
def test_from_raw_agrees_with_starlette(raw: list[tuple[bytes, bytes]], max_ranges: int) -> None:
    request = ObjectRequest.from_raw("GET", raw, max_ranges)
    headers = Headers(raw=raw)
    assert fields_of(request) == {name: headers.get(name) for name in fields_of(request)}
    range_value = headers.get("range")
    expected = None if range_value is None else Range.from_header(range_value, max_ranges)
    assert request.range == expected
    assert request == ObjectRequest.from_fields("GET", headers, max_ranges)


@pytest.mark.parametrize(
    ("headers", "conditional"),
    [
        ({}, False),
        ({"range": "bytes=0-1"}, False),
        ({"if-range": '"a"', "range": "bytes=0-1"}, False),  # If-Range only guards the Range
        ({"if-match": '"a"'}, True),
        ({"if-none-match": '"a"'}, True),
        ({"if-modified-since": "junk"}, True),  # present, even if it will not parse
        ({"if-unmodified-since": ""}, True),
        ({"if-match": "*", "range": "bytes=0-1"}, True),
    ],
)
def test_conditional(headers: dict[str, str], conditional: bool) -> None:
    assert ObjectRequest.from_fields("GET", headers).conditional is conditional
    assert ObjectRequest.from_fields("HEAD", headers).conditional is conditional


@pytest.mark.parametrize(
    ("range_value", "single"),
    [
        (None, None),
        ("bytes=0-1", Range((RangeSpec(0, 1),))),
        ("bytes=100-", Range((RangeSpec(100, None),))),
        ("bytes=-500", Range((RangeSpec(None, 500),))),
        ("bytes=0-0", Range((RangeSpec(0, 0),))),
        ("bytes=,0-1,", Range((RangeSpec(0, 1),))),
        ("bytes=99999-", Range((RangeSpec(99999, None),))),  # may be unsatisfiable: S3 says
        ("bytes=-0", None),  # asks for no byte: a 416 without any body read
        ("bytes=-000", None),
        ("bytes=0-1,5-9", None),  # several: multipart
        ("bytes=0-1,2-3", None),  # even when they coalesce
        ("bytes=-0,-0", None),
        ("bytes=5-4", None),  # ignored
        ("items=0-1", None),
    ],
)
def test_single_range(range_value: str | None, single: Range | None) -> None:
    headers = {} if range_value is None else {"range": range_value}
    request = ObjectRequest.from_fields("GET", headers)
    assert request.single_range() == single
    if single is not None:
        assert request.single_range() is request.range
