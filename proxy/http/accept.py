"""Proactive negotiation on ``Accept`` (RFC 9110 §12.5.1): the quality a client gives a media
type, from the most specific media range that matches it."""

from __future__ import annotations

import re

_TOKEN = r"[!#$%&'*+.^_`|~0-9a-z-]+"
_MEDIA_RANGE = re.compile(rf"({_TOKEN})/({_TOKEN})")
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110 §12.4.2


def parse_accept(value: str) -> list[tuple[str, str, float]]:
    """``(type, subtype, q)`` per media range, lowercased; malformed ranges are left out."""
    ranges = []
    for item in value.split(","):
        media_range, *parameters = item.split(";")
        match = _MEDIA_RANGE.fullmatch(media_range.strip().lower())
        if match is None:
            continue
        quality: float | None = 1.0
        for parameter in parameters:
            name, _, text = parameter.partition("=")
            if name.strip().lower() == "q":
                quality = float(text) if _QVALUE.fullmatch(text := text.strip()) else None
        if quality is not None:
            ranges.append((match[1], match[2], quality))
    return ranges


def quality(ranges: list[tuple[str, str, float]], media_type: str) -> float:
    """The q the most specific matching range gives ``media_type`` (0 when none matches)."""
    main, sub = media_type.split("/")
    best, found = -1, 0.0
    for range_main, range_sub, q in ranges:
        if (range_main, range_sub) == (main, sub):
            specificity = 2
        elif (range_main, range_sub) == (main, "*"):
            specificity = 1
        elif (range_main, range_sub) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best or (specificity == best and q > found):
            best, found = specificity, q
    return found


def prefers_html(accept: str | None) -> bool:
    """Whether ``text/html`` is strictly preferred to ``application/json``: a browser's
    navigation is; ``*/*``, no ``Accept`` and ``application/json`` are not."""
    if not accept:
        return False
    ranges = parse_accept(accept)
    return quality(ranges, "text/html") > quality(ranges, "application/json")
