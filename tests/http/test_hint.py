"""read_hint: which first storage call serves a request in one round trip."""

from __future__ import annotations

import pytest

from proxy.http.hint import METADATA_ONLY, WHOLE, ReadHint, read_hint
from proxy.http.ranges import RangeSpec


@pytest.mark.parametrize(
    ("method", "headers", "expected", "s3_range"),
    [
        ("GET", {}, WHOLE, None),
        ("HEAD", {}, METADATA_ONLY, None),
        ("HEAD", {"range": "bytes=0-1"}, METADATA_ONLY, None),
        ("GET", {"range": "bytes=0-1"}, ReadHint(True, RangeSpec(0, 1)), "bytes=0-1"),
        ("GET", {"range": "bytes=100-"}, ReadHint(True, RangeSpec(100, None)), "bytes=100-"),
        ("GET", {"range": "bytes=-500"}, ReadHint(True, RangeSpec(None, 500)), "bytes=-500"),
        ("GET", {"range": "bytes=-0"}, METADATA_ONLY, None),
        ("GET", {"range": "bytes=0-1,5-9"}, METADATA_ONLY, None),
        ("GET", {"range": "bytes=5-4"}, WHOLE, None),
        ("GET", {"range": "items=0-1"}, WHOLE, None),
        ("GET", {"if-none-match": '"a"'}, METADATA_ONLY, None),
        ("GET", {"if-modified-since": "x"}, METADATA_ONLY, None),
        ("GET", {"if-match": "*", "range": "bytes=0-1"}, METADATA_ONLY, None),
        ("GET", {"if-unmodified-since": "x"}, METADATA_ONLY, None),
        (
            "GET",
            {"if-range": '"a"', "range": "bytes=9-"},
            ReadHint(True, RangeSpec(9, None)),
            "bytes=9-",
        ),
    ],
)
def test_read_hint(
    method: str, headers: dict[str, str], expected: ReadHint, s3_range: str | None
) -> None:
    hint = read_hint(method, headers, max_ranges=16)
    assert hint == expected
    assert hint.s3_range() == s3_range
