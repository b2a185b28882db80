"""Independent reference models of RFC 9110 §13.2.2 (preconditions), §13.1.5 (If-Range) and
§14 (Range), written from the RFC and HTTP-NOTES.md, not from ``proxy.http``.

Strategies build each header from its *meaning*, so the model never parses the wire text:
an entity tag list is ``"*"`` or the tags it holds, a date is the instant it names (None when
the text is not a valid HTTP-date), a range spec is its numbers as digit strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")
Tag = tuple[str, bool]  # (opaque tag with its quotes, weak)
TagList = Literal["*"] | tuple[Tag, ...]
INFINITY = 10**30  # larger than any object here; stands in for numbers of thousands of digits

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --- HTTP-dates in the three forms of RFC 9110 §5.6.7 --------------------------------------


def imf_fixdate(dt: datetime) -> str:
    return (
        f"{DAYS[dt.weekday()]}, {dt.day:02d} {MONTHS[dt.month - 1]} {dt.year:04d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} GMT"
    )


def rfc850_date(dt: datetime) -> str:
    return (
        f"{LONG_DAYS[dt.weekday()]}, {dt.day:02d}-{MONTHS[dt.month - 1]}-{dt.year % 100:02d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} GMT"
    )


def asctime_date(dt: datetime) -> str:
    return (
        f"{DAYS[dt.weekday()]} {MONTHS[dt.month - 1]} {dt.day:2d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {dt.year:04d}"
    )


DATE_FORMS = (imf_fixdate, rfc850_date, asctime_date)

# Text that is not an HTTP-date, so a recipient must ignore the field (§13.1.3, §13.1.4).
INVALID_DATES = (
    "",
    "yesterday",
    "0",
    "-1",
    "1994-11-06T08:49:37Z",
    "Sun, 06 Nov 1994 08:49:37 UTC",
    "Sun, 06 Nov 1994 08:49:37 +0000",
    "sun, 06 nov 1994 08:49:37 gmt",
    "Sun, 6 Nov 1994 08:49:37 GMT",
    "Sun, 31 Feb 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994 24:00:00 GMT",
    "Sun, 06 Nov 1994 08:49:60 GMT",
    "Sun, 06 Nov 0000 08:49:37 GMT",
    "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov " + "9" * 3000 + " 08:49:37 GMT",
    "Sunday, 06-Nov-1994 08:49:37 GMT",
    "Sun Nov 6 08:49:37 1994",
    "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
)


def dates_near(anchor: datetime) -> st.SearchStrategy[tuple[str, datetime | None]]:
    """An HTTP-date near ``anchor`` in any of the three forms, or invalid text (meaning None).

    Offsets stay within ±20 years so a two-digit RFC 850 year has one reading either way.
    """
    offsets = st.one_of(
        st.sampled_from([0, 0, -1, 1, -60, 3600, -86400]),
        st.integers(-20 * 365 * 86400, 20 * 365 * 86400),
    )
    valid = st.builds(
        lambda offset, form: (
            form(anchor + timedelta(seconds=offset)),
            anchor + timedelta(seconds=offset),
        ),
        offsets,
        st.sampled_from(DATE_FORMS),
    )
    invalid = st.one_of(
        st.sampled_from(INVALID_DATES),
        st.text(
            st.characters(codec="latin-1", exclude_categories=["Cc"], exclude_characters=":"),
            max_size=40,
        ),
    ).map(lambda text: (text, None))
    return st.one_of(valid, valid, invalid)


# --- entity tags ------------------------------------------------------------------------------


def tag_text(tag: Tag) -> str:
    opaque, weak = tag
    return f"W/{opaque}" if weak else opaque


def tags_for(stored: str) -> st.SearchStrategy[Tag]:
    """Tags around ``stored`` (a strong tag): itself, weak, and others that never match."""
    return st.tuples(
        st.sampled_from(
            [stored, stored, '"other"', '""', stored[:-1] + 'x"', '"' + "a" * 300 + '"']
        ),
        st.booleans(),
    )


# Elements a list may hold that are not entity tags and match nothing (no quotes: an
# unterminated quote would swallow the rest of the field, which the model would have to parse).
JUNK_ELEMENTS = ("junk junk", "W/", "W/ x", "w/x", "\u00e9t\u00e9 x", "a b")


def tag_lists(stored: str) -> st.SearchStrategy[tuple[str, TagList]]:
    """An If-Match / If-None-Match value and its meaning."""

    def render(items: list[Tag | str], separators: list[str]) -> tuple[str, TagList]:
        text = ""
        for index, item in enumerate(items):
            if index:
                text += separators[index % len(separators)]
            text += item if isinstance(item, str) else tag_text(item)
        return text, tuple(item for item in items if not isinstance(item, str))

    element: st.SearchStrategy[Tag | str] = st.one_of(
        tags_for(stored), tags_for(stored), st.sampled_from(JUNK_ELEMENTS)
    )
    lists = st.builds(
        render,
        st.lists(element, max_size=5),
        st.lists(st.sampled_from([",", ", ", " , ", ",\t", ",,", ", ,"]), min_size=1, max_size=3),
    )
    star: st.SearchStrategy[tuple[str, TagList]] = st.sampled_from(
        [("*", "*"), (" * ", "*"), ('"other", *', "*")]
    )
    return st.one_of(lists, lists, star)


def if_range_values(
    stored: str, last_modified: datetime
) -> st.SearchStrategy[tuple[str, Tag | datetime | None]]:
    tags = tags_for(stored).map(lambda tag: (tag_text(tag), tag))
    junk = st.sampled_from(["", "*", "abc", "W/abc", '"unterminated', stored[1:-1]]).map(
        lambda text: (text, None)
    )
    dates: st.SearchStrategy[tuple[str, Tag | datetime | None]] = dates_near(last_modified)
    lm = last_modified.replace(microsecond=0)
    holds = st.sampled_from(
        [
            (stored, (stored, False)),
            (imf_fixdate(lm), lm),
            (rfc850_date(lm), lm),
            (asctime_date(lm), lm),
        ]
    )
    return st.one_of(holds, tags, dates, junk)


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conditions:
    if_match: tuple[str, TagList] | None = None
    if_none_match: tuple[str, TagList] | None = None
    if_modified_since: tuple[str, datetime | None] | None = None
    if_unmodified_since: tuple[str, datetime | None] | None = None
    if_range: tuple[str, Tag | datetime | None] | None = None

    def fields(self) -> list[tuple[str, str]]:
        pairs = [
            ("If-Match", self.if_match),
            ("If-None-Match", self.if_none_match),
            ("If-Modified-Since", self.if_modified_since),
            ("If-Unmodified-Since", self.if_unmodified_since),
            ("If-Range", self.if_range),
        ]
        return [(name, value[0]) for name, value in pairs if value is not None]


def conditions(stored: str, last_modified: datetime) -> st.SearchStrategy[Conditions]:
    def maybe(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
        # Absent two times in three, so the ladder often lets requests through to Range.
        return st.one_of(st.none(), st.none(), strategy)

    dates = dates_near(last_modified)
    return st.builds(
        Conditions,
        if_match=maybe(tag_lists(stored)),
        if_none_match=maybe(tag_lists(stored)),
        if_modified_since=maybe(dates),
        if_unmodified_since=maybe(dates),
        if_range=maybe(if_range_values(stored, last_modified)),
    )


def _strong_equal(a: Tag, b: Tag) -> bool:
    return not a[1] and not b[1] and a[0] == b[0]


def precondition_status(
    method: str, cond: Conditions, stored: Tag, last_modified: datetime
) -> int | None:
    """RFC 9110 §13.2.2 for GET/HEAD on an existing object: 412, 304, or None to go on."""
    lm = last_modified.replace(microsecond=0)
    # 1. If-Match: "*" is true for any current representation; else a strong match.
    if cond.if_match is not None:
        meaning = cond.if_match[1]
        if meaning != "*" and not any(_strong_equal(tag, stored) for tag in meaning):
            return 412
    # 2. If-Unmodified-Since, only without If-Match; an invalid date is ignored.
    elif cond.if_unmodified_since is not None:
        date = cond.if_unmodified_since[1]
        if date is not None and lm > date:
            return 412
    # 3. If-None-Match: weak comparison; true when nothing matches.
    if cond.if_none_match is not None:
        meaning = cond.if_none_match[1]
        if meaning == "*" or any(tag[0] == stored[0] for tag in meaning):
            return 304
    # 4. If-Modified-Since, only without If-None-Match.
    elif cond.if_modified_since is not None:
        date = cond.if_modified_since[1]
        if date is not None and lm <= date:
            return 304
    return None


def if_range_holds(cond: Conditions, stored: Tag, last_modified: datetime) -> bool:
    """§13.1.5: a strong tag matching strongly, or a date equal to Last-Modified."""
    assert cond.if_range is not None
    meaning = cond.if_range[1]
    if isinstance(meaning, datetime):
        return meaning == last_modified.replace(microsecond=0)
    return meaning is not None and _strong_equal(meaning, stored)


# --- ranges -----------------------------------------------------------------------------------


def number(digits: str) -> int:
    """The value of an ASCII digit string of any length (huge ones become INFINITY)."""
    digits = digits.lstrip("0") or "0"
    return INFINITY if len(digits) > 30 else int(digits)


@dataclass(frozen=True)
class Spec:
    """``first-last`` (last may be ""), or ``-suffix`` when first is None; ASCII digits."""

    first: str | None
    last: str

    def text(self) -> str:
        return f"-{self.last}" if self.first is None else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class RangeExpectation:
    """What a GET with this Range must get, ignoring preconditions."""

    status: int  # 200 (ignore the field), 206 or 416
    wanted: tuple[tuple[int, int], ...] = ()  # merged half-open intervals for 206
    may_send_whole: bool = False  # §17.15: an egregious set may be answered with 200


def merge(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return tuple(merged)


def expect_ranges(specs: tuple[Spec, ...] | None, size: int, max_ranges: int) -> RangeExpectation:
    """§14.1.2 and §14.2: ``specs`` None means the field is invalid or of another unit."""
    if specs is None or len(specs) > max_ranges:
        return RangeExpectation(200)
    intervals: list[tuple[int, int]] = []
    suffix_on_empty = False
    for spec in specs:
        if spec.first is None:
            suffix = number(spec.last)
            if suffix > 0 and size == 0:
                suffix_on_empty = True  # satisfiable, yet no byte exists to put in a 206
            elif suffix > 0:
                intervals.append((max(size - suffix, 0), size))
        elif number(spec.first) < size:
            last = size - 1 if spec.last == "" else min(number(spec.last), size - 1)
            intervals.append((number(spec.first), last + 1))
    if suffix_on_empty:
        return RangeExpectation(200)
    if not intervals:
        return RangeExpectation(416)
    total = sum(stop - start for start, stop in intervals)
    return RangeExpectation(206, merge(intervals), may_send_whole=total > 2 * size)


def covered(parts: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The merged half-open intervals that inclusive ``(first, last)`` parts cover."""
    return merge([(first, last + 1) for first, last in parts])
