"""Byte ranges (RFC 9110 §14): parse a Range header, resolve it against a size.

Multi-range policy: see ``resolve`` (clip, drop unsatisfiable, sort, coalesce; cap per §17.15).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# Numbers longer than this are clamped to _HUGE instead of being converted: int() on thousands
# of digits is slow and raises past 4300 digits, and no object is anywhere near 10**18 bytes.
_MAX_DIGITS = 18
_HUGE = 10**18

# Multi-range policy (RFC 9110 §14.2, §17.15): at most `max_ranges` specs are parsed (more and
# the header is ignored, so the whole object is sent); satisfiable specs are clipped, sorted
# and coalesced when they overlap or touch; a set whose clipped lengths add up to more than
# 2 * size + _SLACK is served whole instead of amplified. One range left => a plain 206.
_SLACK = 1024

# One list element with its optional whitespace (RFC 9110 §5.6.1 allows OWS around commas).
_SPEC = re.compile(r"[ \t]*(?:([0-9]+)-([0-9]*)|-([0-9]+))[ \t]*")
_OWS = re.compile(r"[ \t]*")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Half-open ``[start, stop)``; converted to inclusive only at the wire."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        """``Content-Range`` value for this range of a ``size``-byte representation."""
        return f"bytes {self.start}-{self.stop - 1}/{size}"


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One ``range-spec``: ``a-b`` is (a, b), ``a-`` is (a, None), ``-n`` is (None, n)."""

    first: int | None
    last: int | None


def _number(digits: str) -> int:
    """Convert ASCII digits (already checked), clamping absurdly long numbers to ``_HUGE``."""
    digits = digits.lstrip("0") or "0"  # leading zeros do not make a number bigger
    return _HUGE if len(digits) > _MAX_DIGITS else int(digits)


def _greater(a: str, b: str) -> bool:
    """Exact ``int(a) > int(b)`` for digit strings of any length, without converting them."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return len(a) > len(b) or (len(a) == len(b) and a > b)


def _parse_spec(element: str) -> RangeSpec | None:
    match = _SPEC.fullmatch(element)
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        return RangeSpec(None, _number(suffix))
    if last == "":
        return RangeSpec(_number(first), None)
    if _greater(first, last):  # `bytes=5-4` makes the whole header invalid (§14.1.1)
        return None
    return RangeSpec(_number(first), _number(last))


@functools.lru_cache(maxsize=64)  # read_hint and plan_response both parse each request's value
def parse_range(value: str, max_ranges: int) -> tuple[RangeSpec, ...] | None:
    """Parse a ``Range`` header value (RFC 9110 §14.2).

    Returns None when the header must be ignored: a unit other than ``bytes``, a syntax error
    anywhere, no range at all, or more than ``max_ranges`` ranges. Linear in ``len(value)``
    and stops reading as soon as the count is exceeded.
    """
    unit, sep, rest = value.partition("=")
    if not sep or unit.lower() != "bytes":
        return None
    specs: list[RangeSpec] = []
    pos = 0
    while True:
        comma = rest.find(",", pos)
        end = len(rest) if comma == -1 else comma
        element = rest[pos:end]
        # Empty elements (`0-1,,2-3`, leading or trailing commas) are skipped (§5.6.1).
        if _OWS.fullmatch(element) is None:
            if len(specs) == max_ranges:
                return None
            spec = _parse_spec(element)
            if spec is None:
                return None
            specs.append(spec)
        if comma == -1:
            break
        pos = comma + 1
    return tuple(specs) if specs else None


def resolve(specs: tuple[RangeSpec, ...], size: int) -> tuple[ByteRange, ...] | None:
    """Resolve parsed specs against a ``size``-byte representation (RFC 9110 §14.1.2).

    Returns the sorted, coalesced ranges to send; ``()`` when none is satisfiable (416); or
    None when the whole representation should be sent with 200 instead: an empty
    representation asked for a non-zero suffix, or an egregious overlapping set (§17.15).
    """
    ranges: list[ByteRange] = []
    empty_suffix = False
    total = 0
    for spec in specs:
        if spec.first is None:
            suffix = spec.last or 0
            if suffix == 0:  # `-0` asks for no byte at all: unsatisfiable
                continue
            if size == 0:  # satisfiable, but there is no byte to describe in a 206
                empty_suffix = True
                continue
            byte_range = ByteRange(max(size - suffix, 0), size)
        else:
            if spec.first >= size:
                continue
            stop = size if spec.last is None else min(spec.last + 1, size)
            byte_range = ByteRange(spec.first, stop)
        ranges.append(byte_range)
        total += byte_range.length
    if empty_suffix or total > 2 * size + _SLACK:
        return None
    ranges.sort(key=lambda r: r.start)
    merged: list[ByteRange] = []
    for byte_range in ranges:
        if merged and byte_range.start <= merged[-1].stop:  # overlapping or adjacent
            last = merged[-1]
            merged[-1] = ByteRange(last.start, max(last.stop, byte_range.stop))
        else:
            merged.append(byte_range)
    return tuple(merged)


def unsatisfied_range(size: int) -> str:
    """``Content-Range`` value of a 416 response (RFC 9110 §14.4): ``bytes */size``."""
    return f"bytes */{size}"
