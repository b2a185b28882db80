"""Media types from key extensions: an explicit table, then Python's built-in defaults."""

from __future__ import annotations

import functools
import mimetypes
import posixpath
import re

from proxy.storage.base import DEFAULT_MEDIA_TYPE

_TEXT = "; charset=utf-8"

# Explicit, so answers do not depend on the host's /etc/mime.types or Python's version.
# Compressed archives keep their own type: the proxy never sets a Content-Encoding.
MEDIA_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".m4a": "audio/mp4",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
    ".wav": "audio/wav",
    ".aac": "audio/aac",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mpd": "application/dash+xml",
    ".json": "application/json",
    ".txt": "text/plain" + _TEXT,
    ".vtt": "text/vtt" + _TEXT,
    ".srt": "application/x-subrip",
    ".html": "text/html" + _TEXT,
    ".htm": "text/html" + _TEXT,
    ".css": "text/css" + _TEXT,
    ".js": "text/javascript" + _TEXT,
    ".xml": "application/xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".gz": "application/gzip",
    ".wasm": "application/wasm",
}

# Built-in defaults only (filenames=()): never read /etc/mime.types, so results are the same
# on every host.
_FALLBACK = mimetypes.MimeTypes(filenames=())


def media_type_for(key: str) -> str:
    """The media type for ``key``, judged by its last suffix, case-insensitively."""
    _, ext = posixpath.splitext(posixpath.basename(key))  # ".profile" has no extension
    ext = ext.lower()
    if not ext:
        return DEFAULT_MEDIA_TYPE
    if ext in MEDIA_TYPES:
        return MEDIA_TYPES[ext]
    guessed = _FALLBACK.types_map[True].get(ext)
    if guessed is None:
        return DEFAULT_MEDIA_TYPE
    return guessed + _TEXT if guessed.startswith("text/") else guessed


# Types a browser would render with script on the proxy's origin (HTML, SVG, XML documents).
_ACTIVE = re.compile(
    r"text/html|application/xhtml\+xml|image/svg\+xml|(text|application)/([a-z.+-]*\+)?xml"
)


@functools.lru_cache(maxsize=256)  # asked per request, of a handful of types
def is_active_content(media_type: str) -> bool:
    """Whether an object of this type could run script if rendered inline."""
    return bool(_ACTIVE.fullmatch(media_type.split(";", 1)[0].strip().lower()))
