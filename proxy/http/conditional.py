"""Conditional requests (RFC 9110 §13): the precondition ladder and If-Range.

Validators come in as wire strings (``proxy.http.codec`` parses them); ``evaluate`` returns an
``Outcome``, never raises.
"""

from __future__ import annotations

import enum
from datetime import datetime

from proxy.http.codec import (
    EntityTag,
    lenient_etag,
    parse_etag,
    parse_etag_list,
    parse_http_date,
    strong_match,
    utc_seconds,
    weak_match,
)
from proxy.http.request import ObjectRequest


class Outcome(enum.Enum):
    """What the preconditions decide: go on, or answer 304 or 412 right away."""

    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"
    PRECONDITION_FAILED = "precondition_failed"


def _stored(etag: str | None) -> EntityTag | None:
    return None if etag is None else lenient_etag(etag)


def evaluate(request: ObjectRequest, etag: str | None, last_modified: datetime | None) -> Outcome:
    """Evaluate the preconditions of a request on an existing object (RFC 9110 §13.2.2).

    ``etag`` is the stored wire form.
    """
    stored = _stored(etag)
    modified = None if last_modified is None else utc_seconds(last_modified)
    safe = request.method in ("GET", "HEAD")

    # 1. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.1 (strong comparison)
    if request.if_match is not None:
        tags = parse_etag_list(request.if_match)
        if tags != "*" and not (stored is not None and any(strong_match(t, stored) for t in tags)):
            return Outcome.PRECONDITION_FAILED
    # 2. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.4 (only without If-Match)
    else:
        if_unmodified = request.if_unmodified_since
        date = None if if_unmodified is None else parse_http_date(if_unmodified)
        if date is not None and modified is not None and modified > date:
            return Outcome.PRECONDITION_FAILED

    # 3. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.2 (weak comparison)
    if request.if_none_match is not None:
        tags = parse_etag_list(request.if_none_match)
        if tags == "*" or (stored is not None and any(weak_match(t, stored) for t in tags)):
            return Outcome.NOT_MODIFIED if safe else Outcome.PRECONDITION_FAILED
    # 4. https://www.rfc-editor.org/rfc/rfc9110#section-13.1.3 (GET/HEAD, no If-None-Match)
    elif safe:
        if_modified = request.if_modified_since
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
    return date is not None and last_modified is not None and utc_seconds(last_modified) == date
