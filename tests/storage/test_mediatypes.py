"""media_type_for: the explicit table, the built-in fallback, the default."""

from __future__ import annotations

import pytest

from proxy.storage.base import DEFAULT_MEDIA_TYPE
from proxy.storage.mediatypes import MEDIA_TYPES, media_type_for

# Literal expectations, written as file names: the table in the module must agree.
EXPECTED = [
    ("clip.mp4", "video/mp4"),
    ("clip.m4v", "video/mp4"),
    ("clip.mov", "video/quicktime"),
    ("clip.webm", "video/webm"),
    ("clip.mkv", "video/x-matroska"),
    ("clip.m4a", "audio/mp4"),
    ("clip.mp3", "audio/mpeg"),
    ("clip.ogg", "audio/ogg"),
    ("clip.oga", "audio/ogg"),
    ("clip.opus", "audio/ogg"),
    ("clip.flac", "audio/flac"),
    ("clip.wav", "audio/wav"),
    ("clip.aac", "audio/aac"),
    ("clip.m3u8", "application/vnd.apple.mpegurl"),
    ("clip.ts", "video/mp2t"),
    ("clip.m4s", "video/iso.segment"),
    ("clip.mpd", "application/dash+xml"),
    ("clip.json", "application/json"),
    ("clip.txt", "text/plain; charset=utf-8"),
    ("clip.vtt", "text/vtt; charset=utf-8"),
    ("clip.srt", "application/x-subrip"),
    ("clip.html", "text/html; charset=utf-8"),
    ("clip.htm", "text/html; charset=utf-8"),
    ("clip.css", "text/css; charset=utf-8"),
    ("clip.js", "text/javascript; charset=utf-8"),
    ("clip.xml", "application/xml"),
    ("clip.png", "image/png"),
    ("clip.jpg", "image/jpeg"),
    ("clip.jpeg", "image/jpeg"),
    ("clip.gif", "image/gif"),
    ("clip.webp", "image/webp"),
    ("clip.avif", "image/avif"),
    ("clip.svg", "image/svg+xml"),
    ("clip.pdf", "application/pdf"),
    ("clip.zip", "application/zip"),
    ("clip.tar", "application/x-tar"),
    ("clip.gz", "application/gzip"),
    ("clip.wasm", "application/wasm"),
]


@pytest.mark.parametrize(("name", "media_type"), EXPECTED)
def test_table(name: str, media_type: str) -> None:
    assert MEDIA_TYPES[name.removeprefix("clip")] == media_type
    assert media_type_for(name) == media_type
    assert media_type_for(f"dir/sub/{name}") == media_type


@pytest.mark.parametrize(("name", "media_type"), EXPECTED)
def test_extension_is_case_insensitive(name: str, media_type: str) -> None:
    assert media_type_for(name.upper()) == media_type


def test_table_has_no_untested_entry() -> None:
    assert sorted(MEDIA_TYPES) == sorted(name.removeprefix("clip") for name, _ in EXPECTED)


@pytest.mark.parametrize(
    ("key", "media_type"),
    [
        ("archive.tar.gz", "application/gzip"),  # last suffix only, never a Content-Encoding
        ("Movie.Final.MP4", "video/mp4"),
        ("a.b/c", DEFAULT_MEDIA_TYPE),  # a dot in a directory name is not an extension
        ("README", DEFAULT_MEDIA_TYPE),
        (".mp4", DEFAULT_MEDIA_TYPE),  # a dotfile has no extension
        ("dir/.profile", DEFAULT_MEDIA_TYPE),
        ("trailing.", DEFAULT_MEDIA_TYPE),
        ("file.unknownext", DEFAULT_MEDIA_TYPE),
        ("file.mp4x", DEFAULT_MEDIA_TYPE),
        # Python's built-in defaults fill the gaps; text/* gains a charset.
        ("image.bmp", "image/bmp"),
        ("table.csv", "text/csv; charset=utf-8"),
        ("TABLE.CSV", "text/csv; charset=utf-8"),
    ],
)
def test_fallbacks(key: str, media_type: str) -> None:
    assert media_type_for(key) == media_type
