"""Accept negotiation (RFC 9110 §12.5.1): the landing page's choice between HTML and JSON."""

from __future__ import annotations

import pytest

from proxy.http.accept import parse_accept, prefers_html, quality

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),  # curl, httpx: a tie goes to JSON
        ("application/json", False),
        ("text/html", True),
        (BROWSER, True),
        ("TEXT/HTML", True),
        ("text/*", True),
        ("text/*;q=0.5, */*;q=0.4", True),
        ("text/html;q=0.5, application/json", False),
        ("application/json;q=0.9, text/html", True),
        ("text/html;q=0, */*", False),  # explicitly unacceptable
        ("text/html;q=0.001", True),  # above the implicit 0 of application/json
        ("text/html;q=1.0", True),
        ("text/html;q=1.5", False),  # an invalid q drops its range
        ("text/html;q=0.1234", False),
        ("text/html;q=+1", False),
        ("text/html;level=1;q=0.7, application/json;q=0.6", True),
        ("*/*;q=0.1, application/json;q=0.2, text/html", True),
        ("html", False),  # not a media range
        ("text/html/x", False),
        (",,, ;q=1", False),
    ],
)
def test_prefers_html(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html


def test_parse_accept_keeps_order_and_lowercases() -> None:
    assert parse_accept("Text/HTML;Q=0.5 , application/json, bad, */*;q=0") == [
        ("text", "html", 0.5),
        ("application", "json", 1.0),
        ("*", "*", 0.0),
    ]


@pytest.mark.parametrize(
    ("accept", "media_type", "expected"),
    [
        ("*/*;q=0.3, text/*;q=0.6, text/html;q=0.9", "text/html", 0.9),
        ("*/*;q=0.3, text/*;q=0.6, text/html;q=0.9", "text/plain", 0.6),
        ("*/*;q=0.3, text/*;q=0.6, text/html;q=0.9", "application/json", 0.3),
        ("text/html;q=0.2, */*", "text/html", 0.2),  # the most specific range wins, not the highest
        ("text/html;q=0.2, text/html;q=0.4", "text/html", 0.4),
        ("image/png", "text/html", 0.0),
    ],
)
def test_quality_takes_the_most_specific_range(
    accept: str, media_type: str, expected: float
) -> None:
    assert quality(parse_accept(accept), media_type) == expected
