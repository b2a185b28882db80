"""Entity tags, HTTP dates (``proxy.http.codec``) and the precondition ladder
(``proxy.http.conditional``): RFC 9110 §13, §5.6.7, §8.8.3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.codec import (
    EntityTag,
    format_http_date,
    lenient_etag,
    parse_etag,
    parse_etag_list,
    parse_http_date,
    quote_etag,
    strong_match,
    utc_seconds,
    weak_match,
)
from proxy.http.conditional import Outcome, evaluate, if_range_matches
from proxy.http.request import ObjectRequest

LM = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LM_TEXT = "Wed, 01 May 2024 12:00:00 GMT"
BEFORE = "Wed, 01 May 2024 11:59:59 GMT"
AFTER = "Wed, 01 May 2024 12:00:01 GMT"
ETAG = '"abc"'

PROCEED, NOT_MODIFIED, FAILED = Outcome.PROCEED, Outcome.NOT_MODIFIED, Outcome.PRECONDITION_FAILED


def check(
    method: str, headers: dict[str, str], etag: str | None, last_modified: datetime | None
) -> Outcome:
    """``evaluate`` on a request with these header fields (lowercase names)."""
    return evaluate(ObjectRequest.from_fields(method, headers), etag, last_modified)


# --- entity tags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"abc"', EntityTag('"abc"', False)),
        ('W/"abc"', EntityTag('"abc"', True)),
        ('""', EntityTag('""', False)),
        ('W/""', EntityTag('""', True)),
        (' "a-5" ', EntityTag('"a-5"', False)),
        ('"\xe9"', EntityTag('"\xe9"', False)),
        ("abc", None),
        ('"abc', None),
        ('abc"', None),
        ('"a"b"', None),
        ('"a b"', None),
        ('w/"abc"', None),
        ('W/ "abc"', None),
        ("W/abc", None),
        ("*", None),
        ("", None),
    ],
)
def test_parse_etag(value: str, expected: EntityTag | None) -> None:
    assert parse_etag(value) == expected
    assert EntityTag.parse(value) == expected


def test_entity_tag_str() -> None:
    assert str(EntityTag('"x"')) == '"x"'
    assert str(EntityTag('"x"', weak=True)) == 'W/"x"'


# RFC 9110 §8.8.3.2, the comparison table.
@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        ('W/"1"', 'W/"1"', False, True),
        ('W/"1"', 'W/"2"', False, False),
        ('W/"1"', '"1"', False, True),
        ('"1"', '"1"', True, True),
        ('"1"', '"2"', False, False),
    ],
)
def test_comparison_table(a: str, b: str, strong: bool, weak: bool) -> None:
    tag_a, tag_b = parse_etag(a), parse_etag(b)
    assert tag_a is not None and tag_b is not None
    assert strong_match(tag_a, tag_b) is strong
    assert strong_match(tag_b, tag_a) is strong
    assert weak_match(tag_a, tag_b) is weak


S = EntityTag


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*", "*"),
        (" * ", "*"),
        ('"a"', (S('"a"'),)),
        ('"a", W/"b"', (S('"a"'), S('"b"', True))),
        ('"a,b", "c"', (S('"a,b"'), S('"c"'))),
        ('W/"a,b",W/"c"', (S('"a,b"', True), S('"c"', True))),
        ("abc", (S('"abc"'),)),
        ("abc, W/def", (S('"abc"'), S('"def"', True))),
        ('"a", junk junk, "b"', (S('"a"'), S('"b"'))),
        ('"a" x, "b"', (S('"b"'),)),
        ('"a",,, "b",', (S('"a"'), S('"b"'))),
        ('"unterminated, "b"', ()),
        ('"a", "unterminated', (S('"a"'),)),
        ("", ()),
        (" , ", ()),
        ('"a", *', "*"),
        ('"*"', (S('"*"'),)),
    ],
)
def test_parse_etag_list(value: str, expected: object) -> None:
    assert parse_etag_list(value) == expected


def test_parse_etag_list_huge_is_linear() -> None:
    assert len(parse_etag_list('"a",' * 100_000)) == 100_000
    assert parse_etag_list('"' + "x," * 500_000) == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", '"abc"'),  # S3-compatible stores may send it bare
        ('"abc"', '"abc"'),
        ('W/"abc"', 'W/"abc"'),
        ('"d41d8cd98f00b204e9800998ecf8427e-2"', '"d41d8cd98f00b204e9800998ecf8427e-2"'),
        ("W/abc", '"W/abc"'),  # not a weak tag's wire form: quoted like any token
        ("", None),
        (None, None),
    ],
)
def test_quote_etag(value: str | None, expected: str | None) -> None:
    assert quote_etag(value) == expected
    if expected is not None:
        assert quote_etag(expected) == expected  # idempotent
        assert parse_etag(expected) is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"abc"', S('"abc"')),
        ('W/"abc"', S('"abc"', True)),
        ("abc", S('"abc"')),
        ("W/abc", S('"abc"', True)),
        (" abc\t", S('"abc"')),
        ("a b", None),
        ('a"b', None),
        ("a,b", None),
        ("", None),
        ("W/", None),
    ],
)
def test_lenient_etag(value: str, expected: EntityTag | None) -> None:
    assert lenient_etag(value) == expected


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (datetime(2024, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC), LM),
        (datetime(2024, 5, 1, 12, 0, 0), LM),  # naive: taken as UTC
        (datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))), LM),
    ],
)
def test_utc_seconds(dt: datetime, expected: datetime) -> None:
    assert utc_seconds(dt) == expected
    assert utc_seconds(dt).tzinfo is UTC


# --- dates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Sun Nov 06 08:49:37 1994",
        " Sun, 06 Nov 1994 08:49:37 GMT\t",
        "Mon, 06 Nov 1994 08:49:37 GMT",  # a wrong day name is not cross-checked
    ],
)
def test_parse_http_date_forms(value: str) -> None:
    assert parse_http_date(value) == datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 06 Nov 1994 08:49:37",
        "sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:60 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT" + " " * 100 + "x",
        "Sun, 06 Nov " + "9" * 5000 + " 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 GMT",
        "1994-11-06T08:49:37Z",
        "784111777",
    ],
)
def test_parse_http_date_invalid(value: str) -> None:
    assert parse_http_date(value) is None


@pytest.mark.parametrize(
    ("value", "now", "year"),
    [
        ("Sunday, 06-Nov-94 08:49:37 GMT", 2025, 1994),
        ("Thursday, 06-Nov-25 08:49:37 GMT", 2025, 2025),
        ("Wednesday, 06-Nov-75 08:49:37 GMT", 2025, 2075),  # exactly 50 years ahead: kept
        ("Wednesday, 06-Nov-76 08:49:37 GMT", 2025, 1976),  # more than 50 years: past century
        ("Saturday, 06-Nov-99 08:49:37 GMT", 2060, 2099),
        ("Saturday, 06-Nov-11 08:49:37 GMT", 2060, 2011),  # in the past: never moved forward
        ("Saturday, 06-Nov-00 08:49:37 GMT", 2099, 2000),
        ("Saturday, 06-Nov-49 08:49:37 GMT", 1998, 1949),
    ],
)
def test_parse_http_date_two_digit_year(value: str, now: int, year: int) -> None:
    parsed = parse_http_date(value, now=datetime(now, 6, 1, tzinfo=UTC))
    assert parsed is not None and parsed.year == year


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        (datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC), "Sun, 06 Nov 1994 08:49:37 GMT"),
        (datetime(1994, 11, 6, 8, 49, 37, 999_999, tzinfo=UTC), "Sun, 06 Nov 1994 08:49:37 GMT"),
        (datetime(1994, 11, 6, 8, 49, 37), "Sun, 06 Nov 1994 08:49:37 GMT"),
        (
            datetime(1994, 11, 6, 10, 49, 37, tzinfo=timezone(timedelta(hours=2))),
            "Sun, 06 Nov 1994 08:49:37 GMT",
        ),
        (datetime(2000, 1, 1, tzinfo=UTC), "Sat, 01 Jan 2000 00:00:00 GMT"),
        (datetime(5, 2, 3, tzinfo=UTC), "Thu, 03 Feb 0005 00:00:00 GMT"),
    ],
)
def test_format_http_date(dt: datetime, expected: str) -> None:
    assert format_http_date(dt) == expected


aware = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


@given(aware)
def test_date_round_trip_against_email_utils(dt: datetime) -> None:
    text = format_http_date(dt)
    whole = dt.replace(microsecond=0)
    assert parse_http_date(text) == whole
    if dt.year >= 1000:  # email.utils pads years differently below 1000
        assert text == format_datetime(whole, usegmt=True)
    day, month = text[:3], text[8:11]  # English names, whatever the locale
    asctime = f"{day} {month} {whole.day:2d} {whole:%H:%M:%S} {whole.year:04d}"
    assert parse_http_date(asctime) == whole


@given(st.text(max_size=80))
def test_parse_http_date_never_raises(value: str) -> None:
    result = parse_http_date(value)
    assert result is None or result.tzinfo is UTC


@given(aware, st.integers(0, 28), st.characters())
def test_parse_http_date_rejects_mutations(dt: datetime, index: int, char: str) -> None:
    # Changing one character of a valid date gives an invalid date or a different valid one
    # that still formats back to the mutated text (the day name is not cross-checked).
    text = format_http_date(dt)
    mutated = text[:index] + char + text[index + 1 :]
    result = parse_http_date(mutated)
    if result is not None:
        assert format_http_date(result)[5:] == mutated[5:]


# --- the ladder ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "etag", "expected"),
    [
        ("GET", {}, ETAG, PROCEED),
        # 1. If-Match (strong)
        ("GET", {"if-match": '"abc"'}, ETAG, PROCEED),
        ("GET", {"if-match": '"x", "abc"'}, ETAG, PROCEED),
        ("GET", {"if-match": '"x"'}, ETAG, FAILED),
        ("GET", {"if-match": 'W/"abc"'}, ETAG, FAILED),
        ("GET", {"if-match": '"abc"'}, 'W/"abc"', FAILED),
        ("GET", {"if-match": '"abc"'}, None, FAILED),
        ("GET", {"if-match": "*"}, None, PROCEED),
        ("GET", {"if-match": "*"}, ETAG, PROCEED),
        ("GET", {"if-match": ""}, ETAG, FAILED),
        ("PUT", {"if-match": '"x"'}, ETAG, FAILED),
        ("GET", {"if-match": "abc"}, ETAG, PROCEED),  # unquoted, tolerated
        # 2. If-Unmodified-Since, only without If-Match
        ("GET", {"if-unmodified-since": LM_TEXT}, ETAG, PROCEED),
        ("GET", {"if-unmodified-since": AFTER}, ETAG, PROCEED),
        ("GET", {"if-unmodified-since": BEFORE}, ETAG, FAILED),
        ("GET", {"if-unmodified-since": "not a date"}, ETAG, PROCEED),
        ("GET", {"if-match": '"abc"', "if-unmodified-since": BEFORE}, ETAG, PROCEED),
        ("GET", {"if-match": "*", "if-unmodified-since": BEFORE}, ETAG, PROCEED),
        # 3. If-None-Match (weak)
        ("GET", {"if-none-match": '"abc"'}, ETAG, NOT_MODIFIED),
        ("HEAD", {"if-none-match": '"abc"'}, ETAG, NOT_MODIFIED),
        ("GET", {"if-none-match": 'W/"abc"'}, ETAG, NOT_MODIFIED),
        ("GET", {"if-none-match": '"abc"'}, 'W/"abc"', NOT_MODIFIED),
        ("GET", {"if-none-match": '"x", W/"abc"'}, ETAG, NOT_MODIFIED),
        ("GET", {"if-none-match": "*"}, ETAG, NOT_MODIFIED),
        ("GET", {"if-none-match": "*"}, None, NOT_MODIFIED),
        ("GET", {"if-none-match": '"x"'}, ETAG, PROCEED),
        ("GET", {"if-none-match": '"abc"'}, None, PROCEED),
        ("POST", {"if-none-match": '"abc"'}, ETAG, FAILED),
        ("DELETE", {"if-none-match": "*"}, ETAG, FAILED),
        ("get", {"if-none-match": '"abc"'}, ETAG, FAILED),  # methods are case-sensitive
        # 4. If-Modified-Since, GET/HEAD only and only without If-None-Match
        ("GET", {"if-modified-since": LM_TEXT}, ETAG, NOT_MODIFIED),
        ("HEAD", {"if-modified-since": AFTER}, ETAG, NOT_MODIFIED),
        ("GET", {"if-modified-since": BEFORE}, ETAG, PROCEED),
        ("GET", {"if-modified-since": "yesterday"}, ETAG, PROCEED),
        ("POST", {"if-modified-since": AFTER}, ETAG, PROCEED),
        ("GET", {"if-none-match": '"x"', "if-modified-since": AFTER}, ETAG, PROCEED),
        # Order: a failed If-Match wins over a matching If-None-Match.
        ("GET", {"if-match": '"x"', "if-none-match": '"abc"'}, ETAG, FAILED),
        ("GET", {"if-unmodified-since": BEFORE, "if-none-match": '"abc"'}, ETAG, FAILED),
        ("GET", {"if-match": '"abc"', "if-none-match": '"abc"'}, ETAG, NOT_MODIFIED),
        ("GET", {"if-unmodified-since": AFTER, "if-modified-since": AFTER}, ETAG, NOT_MODIFIED),
    ],
)
def test_evaluate(
    method: str, headers: dict[str, str], etag: str | None, expected: Outcome
) -> None:
    assert check(method, headers, etag, LM) is expected


@pytest.mark.parametrize(
    "headers",
    [{}, {"range": "bytes=0-1"}, {"if-range": '"x"', "range": "bytes=0-1"}, {"x-if-match": '"x"'}],
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_evaluate_unconditional_request_proceeds(method: str, headers: dict[str, str]) -> None:
    assert not ObjectRequest.from_fields(method, headers).conditional
    assert check(method, headers, ETAG, LM) is PROCEED
    assert check(method, headers, None, None) is PROCEED


def test_evaluate_without_last_modified_ignores_dates() -> None:
    headers = {"if-unmodified-since": BEFORE}
    assert check("GET", headers, ETAG, None) is PROCEED
    assert check("GET", {"if-modified-since": AFTER}, ETAG, None) is PROCEED


def test_evaluate_compares_whole_seconds() -> None:
    # Last-Modified is sent with whole seconds, so a client echoing it must get 304.
    lm = LM.replace(microsecond=500_000)
    assert check("GET", {"if-modified-since": LM_TEXT}, None, lm) is NOT_MODIFIED
    assert check("GET", {"if-unmodified-since": LM_TEXT}, None, lm) is PROCEED
    naive = datetime(2024, 5, 1, 12, 0, 0)
    assert check("GET", {"if-modified-since": LM_TEXT}, None, naive) is NOT_MODIFIED


@given(st.integers(-5, 5), st.sampled_from(["GET", "HEAD", "POST"]))
def test_evaluate_dates_match_reference(offset: int, method: str) -> None:
    date = format_http_date(LM + timedelta(seconds=offset))
    ims = check(method, {"if-modified-since": date}, None, LM)
    ius = check(method, {"if-unmodified-since": date}, None, LM)
    assert ims is (NOT_MODIFIED if offset >= 0 and method != "POST" else PROCEED)
    assert ius is (FAILED if offset < 0 else PROCEED)


tag_values = st.sampled_from(['"a"', 'W/"a"', '"b"', 'W/"b"'])


@given(st.lists(tag_values, max_size=4), st.one_of(st.none(), tag_values))
def test_if_none_match_matches_reference(listed: list[str], stored: str | None) -> None:
    def opaque(tag: str) -> str:
        return tag.removeprefix("W/")

    expected = stored is not None and any(opaque(t) == opaque(stored) for t in listed)
    outcome = check("GET", {"if-none-match": ", ".join(listed)}, stored, None)
    assert outcome is (NOT_MODIFIED if expected else PROCEED)
    strong = stored is not None and not stored.startswith("W/") and stored in listed
    outcome = check("GET", {"if-match": ", ".join(listed)}, stored, None)
    assert outcome is (PROCEED if strong else FAILED)


# --- If-Range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "etag", "last_modified", "expected"),
    [
        ('"abc"', ETAG, LM, True),
        (' "abc" ', ETAG, LM, True),
        ('"abd"', ETAG, LM, False),
        ('W/"abc"', ETAG, LM, False),
        ('"abc"', 'W/"abc"', LM, False),
        ('W/"abc"', 'W/"abc"', LM, False),
        ('"abc"', None, LM, False),
        ('"abc', ETAG, LM, False),
        ("W/abc", ETAG, LM, False),
        (LM_TEXT, ETAG, LM, True),
        ("Wednesday, 01-May-24 12:00:00 GMT", ETAG, LM, True),
        ("Wed May  1 12:00:00 2024", ETAG, LM, True),
        (AFTER, ETAG, LM, False),
        (BEFORE, ETAG, LM, False),
        (LM_TEXT, ETAG, None, False),
        ("abc", ETAG, LM, False),
        ("", ETAG, LM, False),
        ("*", ETAG, LM, False),
    ],
)
def test_if_range_matches(
    value: str, etag: str | None, last_modified: datetime | None, expected: bool
) -> None:
    assert if_range_matches(value, etag, last_modified) is expected
