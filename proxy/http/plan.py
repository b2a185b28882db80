"""Plan a response to GET/HEAD (RFC 9110 §13.2.2, §14, §15.3.7): status, headers, byte parts.

Pure: the caller streams ``Plan.parts`` from storage, then sends ``Plan.tail``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from proxy.http.codec import ByteRange, ContentRange, Range, format_http_date
from proxy.http.conditional import Outcome, evaluate, if_range_matches
from proxy.http.request import ObjectRequest

Headers = tuple[tuple[str, str], ...]

# Multi-range policy (RFC 9110 §14.2, §17.15): at most ``max_ranges`` specs are parsed (more and
# the header is ignored, so the whole object is sent: ``Range.from_header``); satisfiable specs
# are clipped, sorted and coalesced when they overlap or touch; a set whose clipped lengths add
# up to more than 2 * size + _SLACK is served whole instead of amplified. One range left => a
# plain 206.
_SLACK = 1024


def resolve(range_: Range, size: int) -> tuple[ByteRange, ...] | None:
    """Resolve a Range against a ``size``-byte representation (RFC 9110 §14.1.2).

    Returns the sorted, coalesced ranges to send; ``()`` when none is satisfiable (416); or
    None when the whole representation should be sent with 200 instead: an empty
    representation asked for a non-zero suffix, or an egregious overlapping set (§17.15).
    """
    ranges: list[ByteRange] = []
    empty_suffix = False
    total = 0
    for spec in range_.specs:
        byte_range = spec.resolve(size)
        if byte_range is None:
            # A non-zero suffix of an empty representation is satisfiable, but there is no
            # byte to describe in a 206; `-0` and a first byte past the end are unsatisfiable.
            empty_suffix = empty_suffix or (spec.first is None and bool(spec.last) and not size)
            continue
        ranges.append(byte_range)
        total += byte_range.length
    if empty_suffix or total > 2 * size + _SLACK:
        return None
    ranges.sort(key=lambda r: r.start)
    merged: list[ByteRange] = []
    for byte_range in ranges:
        if merged and byte_range.start <= merged[-1].stop:  # overlapping or adjacent
            last = merged[-1]
            merged[-1] = ByteRange(last.start, max(last.stop, byte_range.stop))
        else:
            merged.append(byte_range)
    return tuple(merged)


class Representation(Protocol):
    """The selected representation's metadata (``proxy.storage.base.ObjectMeta`` fits)."""

    @property
    def size(self) -> int: ...

    @property
    def media_type(self) -> str: ...

    @property
    def etag(self) -> str | None: ...

    @property
    def last_modified(self) -> datetime | None: ...

    @property
    def content_disposition(self) -> str | None: ...

    @property
    def cache_control(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Part:
    """Bytes ``byte_range`` of the object, preceded by ``head`` (multipart framing or b"")."""

    head: bytes
    byte_range: ByteRange


@dataclass(frozen=True, slots=True)
class Plan:
    """A response decided before any byte is read: send headers, then parts, then tail."""

    status: int
    headers: Headers
    parts: tuple[Part, ...] = ()
    tail: bytes = b""


def body_length(plan: Plan) -> int:
    """The exact number of body bytes ``plan`` describes (its Content-Length on GET)."""
    parts = sum(len(part.head) + part.byte_range.length for part in plan.parts)
    return parts + len(plan.tail)


def _validators(meta: Representation) -> Headers:
    headers: list[tuple[str, str]] = []
    if meta.etag is not None:
        headers.append(("etag", meta.etag))
    if meta.last_modified is not None:
        headers.append(("last-modified", format_http_date(meta.last_modified)))
    return tuple(headers)


def error_body(code: str, detail: str) -> bytes:
    """The one JSON error body of the proxy: ``{"error": code, "detail": text}``."""
    return json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()


def _error(status: int, code: str, detail: str, headers: Headers, head_only: bool) -> Plan:
    body = error_body(code, detail)
    top = (("content-type", "application/json"), ("content-length", str(len(body))))
    return Plan(status, top + headers, tail=b"" if head_only else body)


def _not_modified(validators: Headers, cache_control: str) -> Plan:
    # §15.4.5: a 304 carries the fields a 200 would have that guide cache updates: the ETag,
    # Last-Modified (nginx and S3 send it too) and Cache-Control; no content fields.
    cache = (("cache-control", cache_control),) if cache_control else ()
    return Plan(304, validators + cache)


def _stored(meta: Representation, extra_headers: Headers) -> Headers:
    """``extra_headers``, after the object's stored Content-Disposition unless they hold one."""
    disposition = meta.content_disposition
    if disposition is None or any(name == "content-disposition" for name, _ in extra_headers):
        return extra_headers
    return (("content-disposition", disposition), *extra_headers)


def _select(request: ObjectRequest, meta: Representation) -> tuple[ByteRange, ...] | None:
    """The ranges to send with 206, ``()`` for 416, or None for the whole object (§14.2)."""
    if request.method != "GET" or request.range is None:  # Range is ignored on HEAD (§14.2)
        return None
    # https://www.rfc-editor.org/rfc/rfc9110#section-13.1.5: a false If-Range => whole object
    if_range = request.if_range
    if if_range is not None and not if_range_matches(if_range, meta.etag, meta.last_modified):
        return None
    return resolve(request.range, meta.size)


def _multipart(
    ranges: tuple[ByteRange, ...], meta: Representation
) -> tuple[str, tuple[Part, ...], bytes]:
    """multipart/byteranges framing (RFC 9110 §14.6), CRLF throughout."""
    boundary = secrets.token_hex(16)
    parts = []
    for index, byte_range in enumerate(ranges):
        # The CRLF ending the previous part's data belongs to the next delimiter (RFC 2046).
        head = (
            f"--{boundary}\r\n"
            f"Content-Type: {meta.media_type}\r\n"
            f"Content-Range: {byte_range.content_range(meta.size)}\r\n\r\n"
        ).encode("latin-1")
        parts.append(Part(head if index == 0 else b"\r\n" + head, byte_range))
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return f"multipart/byteranges; boundary={boundary}", tuple(parts), tail


def plan_response(
    request: ObjectRequest,
    meta: Representation,
    *,
    cache_control: str = "",
    extra_headers: Headers = (),
) -> Plan:
    """Decide the response to a GET or HEAD of ``meta`` (RFC 9110 §13.2.2 then §14).

    HEAD gets the status and headers GET without Range would get, and no body.

    Header fields stored with the object: its own Cache-Control replaces ``cache_control`` (the
    configured default), in a 304 too (§15.4.5); its Content-Disposition is sent unless
    ``extra_headers`` hold one (``?download``, active content). Both describe the whole
    response, so a multipart/byteranges 206 sends them once, at the top: a part's header holds
    only Content-Type and Content-Range (§14.6).
    """
    head_only = request.method == "HEAD"
    validators = _validators(meta)
    cache_control = meta.cache_control or cache_control

    if request.conditional:
        outcome = evaluate(request, meta.etag, meta.last_modified)
        if outcome is Outcome.NOT_MODIFIED:
            return _not_modified(validators, cache_control)
        if outcome is Outcome.PRECONDITION_FAILED:
            detail = "a precondition in the request headers failed"
            return _error(412, "precondition_failed", detail, validators, head_only)

    ranges = _select(request, meta)
    if ranges == ():
        range_header = (("content-range", ContentRange(None, meta.size).to_header()),)
        detail = "no requested range overlaps the object"
        return _error(416, "range_not_satisfiable", detail, range_header, head_only)

    tail = b""
    parts: tuple[Part, ...]
    content_range: Headers = ()
    if ranges is None:
        status, media_type = 200, meta.media_type
        parts = (Part(b"", ByteRange(0, meta.size)),) if meta.size > 0 else ()
    elif len(ranges) == 1:
        # Even a range covering the whole object gets 206: Safari treats 200 as "no ranges".
        status, media_type = 206, meta.media_type
        parts = (Part(b"", ranges[0]),)
        content_range = (("content-range", ranges[0].content_range(meta.size)),)
    else:
        status = 206
        media_type, parts, tail = _multipart(ranges, meta)

    length = body_length(Plan(status, (), parts, tail))
    top = (
        ("content-type", media_type),
        ("content-length", str(length)),
        ("accept-ranges", "bytes"),
    )
    cache = (("cache-control", cache_control),) if cache_control else ()
    all_headers = top + validators + cache + content_range + _stored(meta, extra_headers)
    if head_only:
        return Plan(status, all_headers)
    return Plan(status, all_headers, parts, tail)
