"""read_hint (``proxy.routes``): which first storage call serves a request in one round trip."""

from __future__ import annotations

import pytest

from proxy.http.codec import Range, RangeSpec
from proxy.http.request import ObjectRequest
from proxy.routes import read_hint
from proxy.storage.base import METADATA_ONLY, WHOLE, ReadHint


def one(first: int | None, last: int | None) -> ReadHint:
    """The hint that fetches the body along with one range spec."""
    return ReadHint(True, Range((RangeSpec(first, last),)))


@pytest.mark.parametrize(
    ("method", "headers", "expected", "s3_range"),
    [
        ("GET", {}, WHOLE, None),
        ("HEAD", {}, METADATA_ONLY, None),
        ("HEAD", {"range": "bytes=0-1"}, METADATA_ONLY, None),
        ("GET", {"range": "bytes=0-1"}, one(0, 1), "bytes=0-1"),
        ("GET", {"range": "bytes=100-"}, one(100, None), "bytes=100-"),
        ("GET", {"range": "bytes=-500"}, one(None, 500), "bytes=-500"),
        ("GET", {"range": "bytes=-0"}, METADATA_ONLY, None),
        ("GET", {"range": "bytes=0-1,5-9"}, METADATA_ONLY, None),
        ("GET", {"range": "bytes=5-4"}, WHOLE, None),
        ("GET", {"range": "items=0-1"}, WHOLE, None),
        ("GET", {"if-none-match": '"a"'}, METADATA_ONLY, None),
        ("GET", {"if-modified-since": "x"}, METADATA_ONLY, None),
        ("GET", {"if-match": "*", "range": "bytes=0-1"}, METADATA_ONLY, None),
        ("GET", {"if-unmodified-since": "x"}, METADATA_ONLY, None),
        ("GET", {"if-range": '"a"', "range": "bytes=9-"}, one(9, None), "bytes=9-"),
        # The range goes to S3 in its normal form, whatever the client's spelling.
        ("GET", {"range": "BYTES= 007-0010 "}, one(7, 10), "bytes=7-10"),
        ("GET", {"range": "bytes=,0-1,"}, one(0, 1), "bytes=0-1"),
        ("GET", {"range": "bytes=-00"}, METADATA_ONLY, None),
        ("GET", {"range": "bytes=0-0," * 17}, WHOLE, None),  # more than max_ranges: ignored
    ],
)
def test_read_hint(
    method: str, headers: dict[str, str], expected: ReadHint, s3_range: str | None
) -> None:
    hint = read_hint(ObjectRequest.from_fields(method, headers, max_ranges=16))
    assert hint == expected
    # Was hint.s3_range(): the Range argument the S3 backend sends with its GetObject.
    assert (None if hint.range is None else hint.range.to_header()) == s3_range
