"""Range parsing and resolution (RFC 9110 §14), table-driven plus a brute-force reference model."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.ranges import ByteRange, RangeSpec, parse_range, resolve, unsatisfied_range

HUGE = 10**18


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-499", ((0, 499),)),
        ("bytes=500-", ((500, None),)),
        ("bytes=-500", ((None, 500),)),
        ("bytes=0-0,-1", ((0, 0), (None, 1))),
        ("BYTES=1-2", ((1, 2),)),
        ("Bytes=1-2", ((1, 2),)),
        ("bytes=5-5", ((5, 5),)),
        ("bytes=-0", ((None, 0),)),
        ("bytes=0-", ((0, None),)),
        ("bytes=0-1,,2-3", ((0, 1), (2, 3))),
        ("bytes=,0-1", ((0, 1),)),
        ("bytes=0-1,", ((0, 1),)),
        ("bytes= 0-1 , 2-3\t,\t-4 ", ((0, 1), (2, 3), (None, 4))),
        ("bytes=0-1, ,2-3", ((0, 1), (2, 3))),
        ("bytes=10-5000,0-1", ((10, 5000), (0, 1))),
        ("bytes=007-0010", ((7, 10),)),
        ("bytes=" + "9" * 19 + "-", ((HUGE, None),)),
        ("bytes=0-" + "9" * 5000, ((0, HUGE),)),
        ("bytes=-" + "1" * 5000, ((None, HUGE),)),
        ("bytes=" + "0" * 40 + "5-" + "0" * 40 + "6", ((5, 6),)),
        ("bytes=" + "9" * 18 + "-", ((10**18 - 1, None),)),
    ],
)
def test_parse_range_valid(value: str, expected: tuple[tuple[int | None, int | None], ...]) -> None:
    assert parse_range(value, 16) == tuple(RangeSpec(a, b) for a, b in expected)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes= , ,",
        "bytes=-",
        "bytes=--1",
        "bytes=1--2",
        "bytes=a-b",
        "bytes=1-a",
        "bytes=5-4",
        "bytes=0-1,5-4",
        "bytes=" + "2" * 30 + "-" + "1" * 30,
        "bytes=1" + "0" * 30 + "-" + "9" * 30,
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=1_0-20",
        "bytes=\u0663-4",
        "bytes=1 0-20",
        "bytes=1 -2",
        "bytes=1- 2",
        "bytes=1-2;3-4",
        "bytes=1-2 3-4",
        "items=0-1",
        "bytes =0-1",
        " bytes=0-1",
        "bytes=0-1\n",
        "bytes=0x1-2",
        "bytes=1.0-2",
        "bytes=0-1,junk",
        "bytes=0-1=2",
    ],
)
def test_parse_range_invalid(value: str) -> None:
    assert parse_range(value, 16) is None


def test_parse_range_max_ranges() -> None:
    assert parse_range("bytes=0-0,2-2,4-4", 3) == (
        RangeSpec(0, 0),
        RangeSpec(2, 2),
        RangeSpec(4, 4),
    )
    assert parse_range("bytes=0-0,2-2,4-4", 2) is None
    # Empty elements do not count towards the limit.
    assert parse_range("bytes=0-0,,,,,2-2,,", 2) == (RangeSpec(0, 0), RangeSpec(2, 2))
    assert parse_range("bytes=0-0", 0) is None


def test_parse_range_huge_header_is_fast() -> None:
    many = "bytes=" + ",".join(["0-1"] * 200_000)
    commas = "bytes=0-1" + "," * 2_000_000
    digits = "bytes=0-" + "9" * 2_000_000
    began = time.perf_counter()
    assert parse_range(many, 100) is None
    assert parse_range(commas, 1) == (RangeSpec(0, 1),)
    assert parse_range(digits, 1) == (RangeSpec(0, HUGE),)
    assert parse_range(many.replace("bytes", "items"), 100) is None
    assert time.perf_counter() - began < 10.0  # quadratic work would take minutes


@pytest.mark.parametrize(
    ("specs", "size", "expected"),
    [
        (((0, 0),), 10, ((0, 1),)),
        (((0, 9),), 10, ((0, 10),)),
        (((0, 99),), 10, ((0, 10),)),
        (((5, None),), 10, ((5, 10),)),
        (((9, None),), 10, ((9, 10),)),
        (((None, 3),), 10, ((7, 10),)),
        (((None, 10),), 10, ((0, 10),)),
        (((None, 50),), 10, ((0, 10),)),
        (((None, HUGE),), 10, ((0, 10),)),
        (((0, HUGE),), 10, ((0, 10),)),
        (((10, None),), 10, ()),
        (((10, 20),), 10, ()),
        (((HUGE, None),), 10, ()),
        (((None, 0),), 10, ()),
        (((None, 0), (10, 11)), 10, ()),
        (((None, 0), (2, 3)), 10, ((2, 4),)),
        (((0, 1), (2, 3)), 10, ((0, 4),)),  # adjacent: coalesced
        (((0, 1), (3, 4)), 10, ((0, 2), (3, 5))),  # a one-byte gap: kept apart
        (((3, 4), (0, 1)), 10, ((0, 2), (3, 5))),  # sorted
        (((0, 5), (2, 3)), 10, ((0, 6),)),  # contained
        (((0, 5), (4, 8)), 10, ((0, 9),)),  # overlapping
        (((8, None), (None, 5)), 10, ((5, 10),)),
        (((0, 0), (None, 1)), 10, ((0, 1), (9, 10))),
        (((0, 0), (20, 30), (5, 5)), 10, ((0, 1), (5, 6))),
        (((0, 0),), 0, ()),
        (((0, None),), 0, ()),
        (((None, 0),), 0, ()),
        (((None, 1),), 0, None),  # satisfiable on an empty representation: serve it whole
        (((0, 0), (None, 5)), 0, None),
        (((0, 0),), 1, ((0, 1),)),
        (((None, 1),), 1, ((0, 1),)),
    ],
)
def test_resolve(
    specs: tuple[tuple[int | None, int | None], ...],
    size: int,
    expected: tuple[tuple[int, int], ...] | None,
) -> None:
    result = resolve(tuple(RangeSpec(a, b) for a, b in specs), size)
    if expected is None:
        assert result is None
    else:
        assert result == tuple(ByteRange(a, b) for a, b in expected)


def test_resolve_egregious_overlap_is_served_whole() -> None:
    size = 1000
    # Clipped lengths sum to exactly 2 * size + 1024: still resolved.
    at_limit = (RangeSpec(0, None), RangeSpec(0, None), RangeSpec(0, 1023))
    assert resolve(at_limit, size) == (ByteRange(0, 1000),)
    # One byte more and the set is egregious.
    over = (RangeSpec(0, None), RangeSpec(0, None), RangeSpec(0, None), RangeSpec(0, 24))
    assert resolve(over, size) is None
    # Many tiny overlapping ranges on a small object.
    assert resolve(tuple(RangeSpec(0, 0) for _ in range(1025)), 0) == ()
    assert resolve(tuple(RangeSpec(0, 0) for _ in range(1025)), 1) == (ByteRange(0, 1),)
    assert resolve(tuple(RangeSpec(0, 0) for _ in range(1027)), 1) is None


def test_resolve_many_ranges_is_fast() -> None:
    specs = tuple(RangeSpec(i * 2, i * 2) for i in range(200_000, 0, -1))
    began = time.perf_counter()
    result = resolve(specs, 10**9)
    assert result is not None and len(result) == 200_000
    assert result[0] == ByteRange(2, 3) and result[-1] == ByteRange(400_000, 400_001)
    assert time.perf_counter() - began < 10.0  # quadratic work would take minutes


def test_unsatisfied_range() -> None:
    assert unsatisfied_range(0) == "bytes */0"
    assert unsatisfied_range(1234) == "bytes */1234"


def test_byte_range() -> None:
    assert ByteRange(2, 5).length == 3
    assert ByteRange(2, 5).content_range(10) == "bytes 2-4/10"


# --- property tests against independent reference models ------------------------------------

number = st.integers(min_value=0, max_value=60)
spec_text = st.one_of(
    st.tuples(number, number).map(lambda t: (f"{min(t)}-{max(t)}", (min(t), max(t)))),
    number.map(lambda a: (f"{a}-", (a, None))),
    number.map(lambda n: (f"-{n}", (None, n))),
)
ows = st.sampled_from(["", " ", "\t", " \t "])


@given(
    st.lists(st.tuples(spec_text, ows, ows, st.booleans()), min_size=1, max_size=8),
    st.sampled_from(["bytes", "BYTES", "Bytes"]),
)
def test_parse_range_round_trip(
    elements: list[tuple[tuple[str, tuple[int | None, int | None]], str, str, bool]],
    unit: str,
) -> None:
    pieces = []
    for (text, _), before, after, empty_before in elements:
        if empty_before:
            pieces.append(before)  # an empty list element, skipped by the parser
        pieces.append(f"{before}{text}{after}")
    value = f"{unit}=" + ",".join(pieces)
    expected = tuple(RangeSpec(*spec) for (_, spec), _, _, _ in elements)
    assert parse_range(value, 8) == expected
    assert parse_range(value, len(elements)) == expected
    assert parse_range(value, len(elements) - 1) is None


@given(st.text(alphabet="bytes=0123456789-, \t+_xB", max_size=30))
def test_parse_range_never_raises_and_respects_grammar(value: str) -> None:
    result = parse_range(value, 4)
    if result is not None:
        assert 1 <= len(result) <= 4
        assert value.lower().startswith("bytes=")
        for spec in result:
            assert spec.first is not None or spec.last is not None
            if spec.first is not None and spec.last is not None:
                assert spec.first <= spec.last


def reference_offsets(specs: tuple[RangeSpec, ...], size: int) -> set[int]:
    """Every byte offset some spec selects, by enumeration."""
    offsets: set[int] = set()
    for spec in specs:
        if spec.first is None:
            assert spec.last is not None
            offsets.update(o for o in range(size) if o >= size - spec.last)
        else:
            last = size - 1 if spec.last is None else spec.last
            offsets.update(o for o in range(size) if spec.first <= o <= last)
    return offsets


def reference_runs(offsets: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for offset in sorted(offsets):
        if runs and runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], offset + 1)
        else:
            runs.append((offset, offset + 1))
    return runs


spec = st.one_of(
    st.tuples(number, number).map(lambda t: RangeSpec(min(t), max(t))),
    number.map(lambda a: RangeSpec(a, None)),
    number.map(lambda n: RangeSpec(None, n)),
)


@given(st.lists(spec, min_size=1, max_size=10).map(tuple), st.integers(0, 40))
def test_resolve_matches_reference(specs: tuple[RangeSpec, ...], size: int) -> None:
    result = resolve(specs, size)
    offsets = reference_offsets(specs, size)
    clipped_total = sum(len(reference_offsets((s,), size)) for s in specs)
    nonzero_suffix = any(s.first is None and s.last for s in specs)
    if size == 0 and nonzero_suffix:
        assert result is None
    elif clipped_total > 2 * size + 1024:
        assert result is None
    else:
        assert result is not None
        assert [(r.start, r.stop) for r in result] == reference_runs(offsets)
        assert (result == ()) == (not offsets)


@given(st.lists(spec, min_size=1, max_size=10).map(tuple), st.integers(1, 8), st.integers(1, 150))
def test_resolve_caps_amplification(specs: tuple[RangeSpec, ...], size: int, repeat: int) -> None:
    # Repeating a set multiplies the clipped total without adding bytes: past the cap it is
    # served whole (None), below it the result is the same as for the set sent once.
    repeated = specs * repeat
    clipped_total = sum(len(reference_offsets((s,), size)) for s in repeated)
    result = resolve(repeated, size)
    if clipped_total > 2 * size + 1024:
        assert result is None
    else:
        assert result == resolve(specs, size)
        assert result is not None
        assert sum(r.length for r in result) <= size
        assert all(a.stop < b.start for a, b in zip(result, result[1:], strict=False))
