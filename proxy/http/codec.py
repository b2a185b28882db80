"""The header values both layers speak, each a small value with a parse/format pair (RFC 9110).

``ByteRange``, ``Range`` (§14.2) and ``ContentRange`` (§14.4), entity tags (§8.8.3) and HTTP
dates (§5.6.7). Parsers return None for a malformed value and never raise. Pure: the storage
layer imports this module and nothing else of ``proxy.http``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

# --- byte ranges (§14) -------------------------------------------------------------------------

# Numbers longer than this are clamped to _HUGE instead of being converted: int() on thousands
# of digits is slow and raises past 4300 digits, and no object is anywhere near 10**18 bytes.
_MAX_DIGITS = 18
_HUGE = 10**18

# One list element with its optional whitespace (RFC 9110 §5.6.1 allows OWS around commas).
_SPEC = re.compile(r"[ \t]*(?:([0-9]+)-([0-9]*)|-([0-9]+))[ \t]*")
_OWS = re.compile(r"[ \t]*")
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18}|\*)")
_UNSATISFIED = re.compile(r"bytes \*/([0-9]{1,18})")


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
        return ContentRange(self, size).to_header()


@dataclass(frozen=True, slots=True)
class RangeSpec:
    """One ``range-spec``: ``a-b`` is (a, b), ``a-`` is (a, None), ``-n`` is (None, n)."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> ByteRange | None:
        """The bytes this spec names in a ``size``-byte representation; None when it names none
        (``-0``, a suffix of an empty one, a first byte at or past the end)."""
        if self.first is None:
            suffix = self.last or 0
            return ByteRange(max(size - suffix, 0), size) if suffix and size else None
        if self.first >= size:
            return None
        return ByteRange(self.first, size if self.last is None else min(self.last + 1, size))

    def to_header(self) -> str:
        """The spec as written in a Range header (inclusive, like the header it came from)."""
        if self.first is None:
            return f"-{self.last}"
        return f"{self.first}-" if self.last is None else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class Range:
    """A ``Range`` header value: one or more byte range specs, in the order the client sent."""

    specs: tuple[RangeSpec, ...]

    @classmethod
    def from_header(cls, value: str, max_ranges: int) -> Range | None:
        """Parse a ``Range`` header value (§14.2); None when the header must be ignored.

        Ignored: a unit other than ``bytes``, a syntax error anywhere, no range at all, or more
        than ``max_ranges`` ranges. Linear in ``len(value)``; stops reading past the count.
        """
        specs = _parse_specs(value, max_ranges)
        return None if specs is None else cls(specs)

    @classmethod
    def of(cls, byte_range: ByteRange) -> Range:
        """The header that asks for exactly ``byte_range``."""
        return cls((RangeSpec(byte_range.start, byte_range.stop - 1),))

    def to_header(self) -> str:
        return "bytes=" + ",".join(spec.to_header() for spec in self.specs)


@dataclass(frozen=True, slots=True)
class ContentRange:
    """A ``Content-Range`` value (§14.4): ``bytes a-b/size``, or ``bytes */size`` (a 416's,
    ``byte_range`` None); ``size`` None when the sender wrote ``*`` (length unknown)."""

    byte_range: ByteRange | None
    size: int | None

    @classmethod
    def from_header(cls, value: str) -> ContentRange | None:
        """Parse a Content-Range value; None when malformed or inconsistent (last < first, or
        last not below a known size)."""
        if match := _CONTENT_RANGE.fullmatch(value):
            first, last = int(match[1]), int(match[2])
            size = None if match[3] == "*" else int(match[3])
            if last < first or (size is not None and last >= size):
                return None
            return cls(ByteRange(first, last + 1), size)
        if match := _UNSATISFIED.fullmatch(value):
            return cls(None, int(match[1]))
        return None

    def to_header(self) -> str:
        size = "*" if self.size is None else str(self.size)
        if self.byte_range is None:
            return f"bytes */{size}"
        return f"bytes {self.byte_range.start}-{self.byte_range.stop - 1}/{size}"


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


def _parse_specs(value: str, max_ranges: int) -> tuple[RangeSpec, ...] | None:
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


# --- entity tags (§8.8.3) ----------------------------------------------------------------------

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text (§8.8.3)
_OPAQUE = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
# What a lenient recipient takes as an unquoted tag (like werkzeug): no quote, no whitespace.
_BARE = re.compile(r"[\x21\x23-\x2b\x2d-\x7e\x80-\xff]+")


@dataclass(frozen=True, slots=True)
class EntityTag:
    """An entity tag (RFC 9110 §8.8.3): ``opaque`` keeps its quotes, e.g. ``'"abc"'``."""

    opaque: str
    weak: bool = False

    @classmethod
    def parse(cls, value: str) -> EntityTag | None:
        """Parse one entity tag such as ``"abc"`` or ``W/"abc"``; None when malformed."""
        return parse_etag(value)

    def __str__(self) -> str:
        return f"W/{self.opaque}" if self.weak else self.opaque


def parse_etag(value: str) -> EntityTag | None:
    """Parse one entity tag such as ``"abc"`` or ``W/"abc"`` (§8.8.3); None when malformed."""
    value = value.strip(" \t")
    weak = value.startswith("W/")
    opaque = value[2:] if weak else value
    return EntityTag(opaque, weak) if _OPAQUE.fullmatch(opaque) else None


def lenient_etag(element: str) -> EntityTag | None:
    """A proper entity tag, or an unquoted token taken as if quoted (what S3-compatible stores
    and old clients send)."""
    tag = parse_etag(element)
    if tag is not None:
        return tag
    element = element.strip(" \t")
    weak = element.startswith("W/")
    token = element[2:] if weak else element
    return EntityTag(f'"{token}"', weak) if _BARE.fullmatch(token) else None


def quote_etag(value: str | None) -> str | None:
    """A stored ETag in its wire form: quoted unless it already is (S3 sends both)."""
    if not value:
        return None
    return value if value.startswith(('"', 'W/"')) else f'"{value}"'


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """Strong comparison (§8.8.3.2): both strong and the same opaque tag."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """Weak comparison (§8.8.3.2): the same opaque tag, weakness ignored."""
    return a.opaque == b.opaque


def parse_etag_list(value: str) -> tuple[EntityTag, ...] | Literal["*"]:
    """Parse ``If-Match``/``If-None-Match`` (§13.1.1, §13.1.2): ``"*"`` or the valid tags.

    Quoted tags may contain commas; unquoted tokens are taken as if quoted; junk elements are
    skipped. Linear in ``len(value)``.
    """
    tags: list[EntityTag] = []
    pos, end = 0, len(value)
    while pos < end:
        # An element runs to the next comma outside quotes: a quote opens a tag only right
        # after the optional `W/` at the start of the element.
        start = pos
        while pos < end and value[pos] in " \t":
            pos += 1
        if value.startswith("W/", pos):
            pos += 2
        if pos < end and value[pos] == '"':
            close = value.find('"', pos + 1)
            pos = end if close == -1 else close + 1
        comma = value.find(",", pos)
        stop = end if comma == -1 else comma
        element = value[start:stop].strip(" \t")
        pos = stop + 1
        if element == "*":
            return "*"
        tag = lenient_etag(element)
        if tag is not None:
            tags.append(tag)
    return tuple(tags)


# --- HTTP dates (§5.6.7) -----------------------------------------------------------------------

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY = "|".join(_DAYS)
_MONTH = "|".join(_MONTHS)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# The preferred IMF-fixdate, then the obsolete RFC 850 and asctime forms. The names are
# case-sensitive and the day name is not cross-checked against the date (it is redundant).
_IMF = re.compile(rf"(?:{_DAY}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} GMT")
_LONG_DAY = "|".join(_LONG_DAYS)
_RFC850 = re.compile(rf"(?:{_LONG_DAY}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME = re.compile(rf"(?:{_DAY}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")
_MAX_DATE_LENGTH = 64  # every valid form is under 40 characters; skip regexes on huge junk


def parse_http_date(value: str, *, now: datetime | None = None) -> datetime | None:
    """Parse an HTTP-date (§5.6.7) into an aware UTC datetime; None when invalid.

    Accepts IMF-fixdate and the obsolete RFC 850 and asctime forms. A two-digit RFC 850 year
    more than 50 years after ``now`` (default: the current time) is read as the century before.
    """
    value = value.strip(" \t")
    if len(value) > _MAX_DATE_LENGTH:
        return None
    if match := _IMF.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _ASCTIME.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
    elif match := _RFC850.fullmatch(value):
        day, month, short_year, hour, minute, second = match.groups()
        current = (now or datetime.now(UTC)).year
        full_year = current - current % 100 + int(short_year)
        if full_year > current + 50:
            full_year -= 100
        year = str(full_year)
    else:
        return None
    try:
        return datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=UTC,
        )
    except ValueError:  # Feb 30, hour 24, second 60, year 0
        return None


@lru_cache(maxsize=256)  # the same few Last-Modified values, formatted for every response
def format_http_date(dt: datetime) -> str:
    """Format ``dt`` as an IMF-fixdate (§5.6.7); a naive datetime is taken as UTC."""
    dt = utc_seconds(dt)
    # Not strftime: %a and %b follow the process locale.
    return (
        f"{_DAYS[dt.weekday()]}, {dt.day:02d} {_MONTHS[dt.month - 1]} {dt.year:04d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} GMT"
    )


def utc_seconds(dt: datetime) -> datetime:
    """UTC, whole seconds: HTTP dates have no finer resolution to compare against."""
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.replace(microsecond=0)
