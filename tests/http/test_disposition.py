"""Content-Disposition values (RFC 6266, RFC 8187): safe ASCII whatever the requested name."""

from __future__ import annotations

import re
from email.message import EmailMessage
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.http.disposition import content_disposition, download_filename


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", 'attachment; filename="report.pdf"'),
        ("my report (1).pdf", 'attachment; filename="my report (1).pdf"'),
        ("a'b,c=d[e]{f}.txt", 'attachment; filename="a\'b,c=d[e]{f}.txt"'),
        (
            "résumé.pdf",
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
        ),
        ("日本.txt", "attachment; filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt"),
        (
            'say "hi".txt',
            "attachment; filename=\"say _hi_.txt\"; filename*=UTF-8''say%20%22hi%22.txt",
        ),
        ("100%.txt", "attachment; filename=\"100_.txt\"; filename*=UTF-8''100%25.txt"),
        ("a;b.txt", "attachment; filename=\"a_b.txt\"; filename*=UTF-8''a%3Bb.txt"),
        ("!#$&+-.^_`|~", 'attachment; filename="!#$&+-.^_`|~"'),
        (
            "é!#$&+-.^_`|~",
            "attachment; filename=\"_!#$&+-.^_`|~\"; filename*=UTF-8''%C3%A9!#$&+-.^_`|~",
        ),
        # Control characters are removed, not replaced.
        ("evil\r\nSet-Cookie: x=1.txt", 'attachment; filename="evilSet-Cookie: x=1.txt"'),
        ("a\x00b\x7fc\x1bd.txt", 'attachment; filename="abcd.txt"'),
        ("a\u0085b\u2028c\u2029d", 'attachment; filename="abcd"'),
        ("cod\u202eexe.pdf", 'attachment; filename="codexe.pdf"'),
        # Only the last path segment is kept.
        ("../../etc/passwd", 'attachment; filename="passwd"'),
        ("C:\\Users\\me\\file.txt", 'attachment; filename="file.txt"'),
        ("dir/sub\\x.bin", 'attachment; filename="x.bin"'),
        ("/\r/\n", 'attachment; filename="download"'),
        # Nothing usable left.
        ("", 'attachment; filename="download"'),
        ("\r\n\x00", 'attachment; filename="download"'),
        ("dir/", 'attachment; filename="download"'),
        ("..", 'attachment; filename="download"'),
        ("a/.", 'attachment; filename="download"'),
        ("...", 'attachment; filename="..."'),
        (" ", 'attachment; filename=" "'),
    ],
)
def test_content_disposition(filename: str, expected: str) -> None:
    assert content_disposition(filename) == expected


VALUE = re.compile(r"attachment; filename=\"([^\"]*)\"(?:; filename\*=UTF-8''([^;]+))?")


def recovered_name(value: str) -> str:
    """The name a client preferring ``filename*`` (as RFC 6266 §4.3 asks) would use."""
    match = VALUE.fullmatch(value)
    assert match is not None, value
    fallback, extended = match.groups()
    if extended is None:
        return fallback
    assert re.fullmatch(r"[A-Za-z0-9!#$&+\-.^_`|~%]+", extended)
    decoded = unquote(extended, errors="strict")
    # Cross-check the RFC 8187 encoding with the stdlib's RFC 2231 decoder.
    message = EmailMessage()
    message["Content-Disposition"] = f"attachment; filename*=UTF-8''{extended}"
    assert message.get_filename() == decoded.strip()  # it strips whitespace
    return decoded


def reference_clean(filename: str) -> str:
    """An independent model of the cleaning rules, by character class."""
    removed = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2064]")
    name = re.split(r"[/\\]", removed.sub("", filename))[-1]
    return "download" if name in ("", ".", "..") else name


@given(st.text())
def test_content_disposition_is_always_safe(filename: str) -> None:
    value = content_disposition(filename)
    assert re.fullmatch(r"[\x20-\x7e]*", value), value
    fallback = value.split('"')[1]
    assert re.fullmatch(r"[\x20-\x7e]+", fallback)
    assert not set(fallback) & set('"\\%;/')
    assert recovered_name(value) != ""


@given(st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cf", "Cs", "Zl", "Zp"])))
def test_content_disposition_round_trips_names(filename: str) -> None:
    value = content_disposition(filename)
    assert recovered_name(value) == reference_clean(filename)


@given(st.text(alphabet=st.characters(codec="ascii")))
def test_content_disposition_ascii_needs_no_extended_form(filename: str) -> None:
    value = content_disposition(filename)
    plain = not re.search(r'["\\%;]', reference_clean(filename))
    assert ("filename*=" not in value) == plain
    assert value.split('"')[1] == re.sub(r'["\\%;]', "_", reference_clean(filename))


@pytest.mark.parametrize(
    ("key", "requested", "expected"),
    [
        ("media/video.mp4", None, "video.mp4"),
        ("media/video.mp4", "", "video.mp4"),
        ("media/video.mp4", "clip.mp4", "clip.mp4"),
        ("video.mp4", None, "video.mp4"),
        ("a/b/c/d.txt", None, "d.txt"),
        ("dir/", None, ""),
    ],
)
def test_download_filename(key: str, requested: str | None, expected: str) -> None:
    assert download_filename(key, requested) == expected
