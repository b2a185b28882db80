"""Content-Disposition for downloads (RFC 6266 §4, RFC 8187 ``filename*``).

The header value is always visible ASCII plus SP, whatever the requested name holds.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

DEFAULT_FILENAME = "download"

# RFC 8187 §3.2.1 attr-char minus ALPHA / DIGIT, which quote() never escapes anyway.
_ATTR_PUNCTUATION = "!#$&+-.^_`|~"
# In the quoted-string fallback: `"` and `\` would need escaping that browsers handle badly,
# `%` makes some browsers percent-decode, `;` confuses naive parsers.
_UNSAFE_ASCII = re.compile(r'[^\x20-\x7e]|["\\%;]')
# Cc: C0, DEL, C1 (U+0085 among them); Zl/Zp: U+2028, U+2029; Cf: bidi overrides and other
# invisible formatting that can disguise an extension; Cs: lone surrogates cannot be encoded.
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _clean(filename: str) -> str:
    """Drop control characters, keep the last path segment; fall back to ``download``."""
    kept = "".join(c for c in filename if unicodedata.category(c) not in _REMOVED_CATEGORIES)
    name = re.split(r"[/\\]", kept)[-1]
    # `.` and `..` name directories, not files; browsers would rename them anyway.
    return DEFAULT_FILENAME if name in ("", ".", "..") else name


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, if needed, a UTF-8 ``filename*``.

    Clients that understand ``filename*`` (RFC 8187) prefer it; the others get the fallback
    with every unsafe character replaced by ``_``.
    """
    name = _clean(filename)
    fallback = _UNSAFE_ASCII.sub("_", name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe=_ATTR_PUNCTUATION, encoding='utf-8')}"
    return value


def download_filename(key: str, requested: str | None) -> str:
    """The name to offer: ``requested`` if non-empty, else the key's last path segment."""
    return requested if requested else key.rsplit("/", 1)[-1]
