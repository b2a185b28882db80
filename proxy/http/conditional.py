"""Conditional requests (RFC 9110 §13): entity tags, HTTP dates and the precondition ladder.

Validators come in as wire strings; ``evaluate`` returns an ``Outcome``, never raises.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text (§8.8.3)
_OPAQUE = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
# What a lenient recipient takes as an unquoted tag (like werkzeug): no quote, no whitespace.
_BARE = re.compile(r"[\x21\x23-\x2b\x2d-\x7e\x80-\xff]+")

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY = "|".join(_DAYS)
_MONTH = "|".join(_MONTHS)
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# §5.6.7: the preferred IMF-fixdate, then the obsolete RFC 850 and asctime forms. The names
# are case-sensitive and the day name is not cross-checked against the date (it is redundant).
_IMF = re.compile(rf"(?:{_DAY}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} GMT")
_LONG_DAY = "|".join(_LONG_DAYS)
_RFC850 = re.compile(rf"(?:{_LONG_DAY}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME = re.compile(rf"(?:{_DAY}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")
_MAX_DATE_LENGTH = 64  # every valid form is under 40 characters; skip regexes on huge junk


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


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """Strong comparison (§8.8.3.2): both strong and the same opaque tag."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """Weak comparison (§8.8.3.2): the same opaque tag, weakness ignored."""
    return a.opaque == b.opaque


def _lenient_tag(element: str) -> EntityTag | None:
    """A list element: a proper entity tag, or an unquoted token taken as if quoted."""
    tag = parse_etag(element)
    if tag is not None:
        return tag
    weak = element.startswith("W/")
    token = element[2:] if weak else element
    return EntityTag(f'"{token}"', weak) if _BARE.fullmatch(token) else None


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
        tag = _lenient_tag(element)
        if tag is not None:
            tags.append(tag)
    return tuple(tags)


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
    dt = _utc(dt)
    # Not strftime: %a and %b follow the process locale.
    return (
        f"{_DAYS[dt.weekday()]}, {dt.day:02d} {_MONTHS[dt.month - 1]} {dt.year:04d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} GMT"
    )


def _utc(dt: datetime) -> datetime:
    """UTC, whole seconds: HTTP dates have no finer resolution to compare against."""
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.replace(microsecond=0)


def _stored(etag: str | None) -> EntityTag | None:
    return None if etag is None else _lenient_tag(etag.strip(" \t"))


class Outcome(enum.Enum):
    """What the preconditions decide: go on, or answer 304 or 412 right away."""

    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"
    PRECONDITION_FAILED = "precondition_failed"


def evaluate(
    method: str,
    headers: Mapping[str, str],
    etag: str | None,
    last_modified: datetime | None,
) -> Outcome:
    """Evaluate the preconditions of a request on an existing object (RFC 9110 §13.2.2).

    ``headers`` is looked up with lowercase names. ``etag`` is the stored wire form.
    """
    stored = _stored(etag)
    modified = None if last_modified is None else _utc(last_modified)
    safe = method in ("GET", "HEAD")

    # 1. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.1 (strong comparison)
    if_match = headers.get("if-match")
    if if_match is not None:
        tags = parse_etag_list(if_match)
        if tags != "*" and not (stored is not None and any(strong_match(t, stored) for t in tags)):
            return Outcome.PRECONDITION_FAILED
    # 2. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.4 (only without If-Match)
    else:
        if_unmodified = headers.get("if-unmodified-since")
        date = None if if_unmodified is None else parse_http_date(if_unmodified)
        if date is not None and modified is not None and modified > date:
            return Outcome.PRECONDITION_FAILED

    # 3. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.2 (weak comparison)
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = parse_etag_list(if_none_match)
        if tags == "*" or (stored is not None and any(weak_match(t, stored) for t in tags)):
            return Outcome.NOT_MODIFIED if safe else Outcome.PRECONDITION_FAILED
    # 4. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.3 (GET/HEAD, no If-None-Match)
    elif safe:
        if_modified = headers.get("if-modified-since")
        date = None if if_modified is None else parse_http_date(if_modified)
        if date is not None and modified is not None and modified <= date:
            return Outcome.NOT_MODIFIED

    return Outcome.PROCEED


def if_range_matches(value: str, etag: str | None, last_modified: datetime | None) -> bool:
    """Whether an ``If-Range`` value holds, so the Range applies (RFC 9110 §13.1.5).

    An entity tag must match strongly (a weak tag never does); a date must equal
    Last-Modified exactly. Anything invalid is false, which means: send the whole object.
    """
    value = value.strip(" \t")
    if value.startswith(('"', "W/")):
        tag, stored = parse_etag(value), _stored(etag)
        return tag is not None and stored is not None and strong_match(tag, stored)
    date = parse_http_date(value)
    return date is not None and last_modified is not None and _utc(last_modified) == date
