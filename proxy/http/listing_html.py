"""The browse page of a listing, sans I/O: breadcrumbs, folders first, then objects with their
size in human units, last modified, a link, a download link, and an inline player (video,
audio) or thumbnail (images) that loads the object itself.

Every name and link is escaped (a key named ``<script>`` or ``"onload=`` is text); the page has
no script, and its only style is one ``<style>`` element that the ``Content-Security-Policy``
admits by hash, so nothing injected could run or load from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from html import escape

from proxy.http.listing import Entry, rfc3339

STYLE = (
    "body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{padding:.35em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "td.size{text-align:right;white-space:nowrap}"
    "nav ol{list-style:none;padding:0;margin:0 0 1em}nav li{display:inline}"
    "nav li+li:before{content:' / '}"
    "video{max-width:320px;max-height:180px}audio{width:280px}"
    "img.thumb{max-width:160px;max-height:120px}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# Media and thumbnails from the proxy itself; nothing else at all (no script, no frames, no form).
CSP = (
    f"default-src 'none'; img-src 'self'; media-src 'self'; style-src 'sha256-{_STYLE_HASH}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(size: int) -> str:
    """``1023 B``, ``1.0 KiB``, ``3.1 MiB``: binary units, one decimal."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def page_start(title: str, crumbs: Sequence[tuple[str, str | None]]) -> str:
    """The page up to the table's body: ``crumbs`` are (label, link or None) from the root."""
    items = "".join(
        f'<li><a href="{escape(href)}">{escape(label)}</a></li>'
        if href is not None
        else f'<li aria-current="page">{escape(label)}</li>'
        for label, href in crumbs
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f'<nav aria-label="Breadcrumbs"><ol>{items}</ol></nav>\n<h1>{escape(title)}</h1>\n'
        '<table>\n<thead><tr><th scope="col">Name</th><th scope="col">Size</th>'
        '<th scope="col">Last modified</th><th scope="col">Preview</th></tr></thead>\n<tbody>\n'
    )


def folder_row(name: str, href: str) -> str:
    return (
        f'<tr class="folder"><td><a href="{escape(href)}">{escape(name)}</a></td>'
        '<td class="size">—</td><td></td><td></td></tr>\n'
    )


def _preview(media_type: str, href: str) -> str:
    kind = media_type.partition("/")[0]
    if kind in ("video", "audio"):
        return f'<{kind} controls preload="metadata" src="{escape(href)}"></{kind}>'
    if kind == "image":
        return f'<img class="thumb" loading="lazy" alt="" src="{escape(href)}">'
    return ""


def object_row(entry: Entry, name: str, href: str, download: str) -> str:
    modified = ""
    if (stamp := rfc3339(entry.last_modified)) is not None:
        modified = f'<time datetime="{stamp}">{stamp[:16].replace("T", " ")} UTC</time>'
    return (
        f'<tr class="object"><td><a href="{escape(href)}">{escape(name)}</a> '
        f'(<a href="{escape(download)}" download>download</a>)</td>'
        f'<td class="size">{human_size(entry.size)}</td><td>{modified}</td>'
        f"<td>{_preview(entry.media_type, href)}</td></tr>\n"
    )


def page_end(count: int, next_href: str | None) -> str:
    """The end of the table, the count and, when the page is full, a link to the next one."""
    shown = "Nothing here." if not count else f"{count} entr{'y' if count == 1 else 'ies'}."
    more = "" if next_href is None else f' <a href="{escape(next_href)}" rel="next">Next page</a>'
    return f"</tbody>\n</table>\n<p>{shown}{more}</p>\n</body></html>\n"
