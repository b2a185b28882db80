"""Listings of a prefix, sans I/O: the request's query (``?format``, ``?recursive``, ``?limit``,
``?after``) with the format negotiated on ``Accept`` (RFC 9110 §12.5.1), and the JSON Lines and
JSON renderings of a page of entries, each page one chunk of the streamed body.

JSON Lines (``application/jsonl``): one object per line, then ``{"complete": true, "count": N}``
(with ``"next_after"`` when ``?limit`` cut the listing short), so a client tells a whole listing
from a cut stream. JSON (``application/json``): one array of the same objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring  # the C encoder, not ASCII-only
from typing import Literal, Protocol

from proxy.http.accept import parse_accept, quality
from proxy.http.plan import Representation

Format = Literal["jsonl", "json", "html"]
MEDIA_TYPES: dict[Format, str] = {
    "jsonl": "application/jsonl",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
}
HTML_PAGE = 1000  # the most entries one browse page shows (then a link to the next page)
MAX_AFTER_BYTES = 1024
_DIGITS = re.compile(r"[0-9]{1,12}")
_YES, _NO = frozenset({"", "1", "true", "yes"}), frozenset({"0", "false", "no"})


class Entry(Representation, Protocol):
    """An object in a listing (``proxy.storage.base.ObjectMeta`` fits)."""

    @property
    def key(self) -> str: ...


class BadQuery(ValueError):
    """A listing's query parameter that cannot be served (400; the message says which)."""


@dataclass(frozen=True, slots=True)
class ListingQuery:
    """What a listing request asks for."""

    format: Format
    recursive: bool = False
    limit: int | None = None  # the most entries to list; None: all
    after: str = ""  # list only names after this one (UTF-8 byte order)

    @classmethod
    def from_request(cls, query: Mapping[str, str], accept: str | None) -> ListingQuery:
        """Parse the query; ``?format`` wins over ``Accept``. Raises ``BadQuery``."""
        named = query.get("format")
        if named is None:
            chosen = negotiate(accept)
        elif named in MEDIA_TYPES:
            chosen = named
        else:
            raise BadQuery("format must be jsonl, json or html")
        recursive = query.get("recursive", "false").lower()
        if recursive not in _YES | _NO:
            raise BadQuery("recursive must be true or false")
        limit = query.get("limit")
        if limit is not None and (not _DIGITS.fullmatch(limit) or int(limit) < 1):
            raise BadQuery("limit must be a positive whole number")
        after = query.get("after", "")
        if len(after.encode("utf-8", "replace")) > MAX_AFTER_BYTES:
            raise BadQuery(f"after must be at most {MAX_AFTER_BYTES} bytes")
        count = None if limit is None else int(limit)
        if chosen == "html":  # a page a person reads: paged, folders first within the page
            count = min(count or HTML_PAGE, HTML_PAGE)
        return cls(chosen, recursive in _YES, count, after)


def negotiate(accept: str | None) -> Format:
    """The format ``Accept`` gives the highest quality, JSON Lines on ties or without it (curl
    sends ``*/*``); a browser's navigation prefers text/html."""
    if not accept:
        return "jsonl"
    ranges = parse_accept(accept)
    best: Format = "jsonl"
    best_q = quality(ranges, "application/jsonl")
    for name in ("json", "html"):
        q = quality(ranges, MEDIA_TYPES[name].partition(";")[0])
        if q > best_q:
            best, best_q = name, q
    return best


def rfc3339(moment: datetime | None) -> str | None:
    """A UTC time as RFC 3339, whole seconds (``isoformat``: a third of ``strftime``'s time)."""
    return None if moment is None else moment.isoformat()[:19] + "Z"


def _string(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def entry_json(entry: Entry) -> str:
    """One object as JSON, built directly: 1.5 µs, against 5 µs for ``json.dumps`` of a dict."""
    return (
        f'{{"key":{encode_basestring(entry.key)},"size":{entry.size},'
        f'"etag":{_string(entry.etag)},"last_modified":{_string(rfc3339(entry.last_modified))},'
        f'"media_type":{encode_basestring(entry.media_type)}}}'
    )


def folder_json(prefix: str) -> str:
    return f'{{"prefix":{encode_basestring(prefix)}}}'


def end_json(count: int, next_after: str | None) -> str:
    """The final line: the listing is complete, with how many entries came before it, and
    where the next page starts when ``?limit`` ended this one early."""
    more = "" if next_after is None else f',"next_after":{encode_basestring(next_after)}'
    return f'{{"complete":true,"count":{count}{more}}}'
