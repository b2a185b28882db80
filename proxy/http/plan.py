"""Plan a response to GET/HEAD (RFC 9110 §13.2.2, §14, §15.3.7): status, headers, byte parts.

Pure: the caller streams ``Plan.parts`` from storage, then sends ``Plan.tail``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from proxy.http.conditional import Outcome, evaluate, format_http_date, if_range_matches
from proxy.http.ranges import ByteRange, parse_range, resolve, unsatisfied_range

Headers = tuple[tuple[str, str], ...]


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


def _error(status: int, code: str, detail: str, headers: Headers, head_only: bool) -> Plan:
    body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()
    top = (("content-type", "application/json"), ("content-length", str(len(body))))
    return Plan(status, top + headers, tail=b"" if head_only else body)


def _not_modified(validators: Headers, cache_control: str) -> Plan:
    # §15.4.5: a 304 carries the fields a 200 would have that guide cache updates: the ETag,
    # Last-Modified (nginx and S3 send it too) and Cache-Control; no content fields.
    cache = (("cache-control", cache_control),) if cache_control else ()
    return Plan(304, validators + cache)


def _select(
    method: str, headers: Mapping[str, str], meta: Representation, max_ranges: int
) -> tuple[ByteRange, ...] | None:
    """The ranges to send with 206, ``()`` for 416, or None for the whole object (§14.2)."""
    range_value = headers.get("range")
    if method != "GET" or range_value is None:  # Range is ignored on HEAD (§14.2)
        return None
    # https://www.rfc-editor.org/rfc/rfc9110#section-13.1.5: a false If-Range => whole object
    if_range = headers.get("if-range")
    if if_range is not None and not if_range_matches(if_range, meta.etag, meta.last_modified):
        return None
    specs = parse_range(range_value, max_ranges)
    return None if specs is None else resolve(specs, meta.size)


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
    method: str,
    headers: Mapping[str, str],
    meta: Representation,
    *,
    cache_control: str = "",
    max_ranges: int = 16,
    extra_headers: Headers = (),
) -> Plan:
    """Decide the response to a GET or HEAD of ``meta`` (RFC 9110 §13.2.2 then §14).

    ``headers`` is looked up with lowercase names. HEAD gets the status and headers GET
    without Range would get, and no body.
    """
    head_only = method == "HEAD"
    validators = _validators(meta)

    outcome = evaluate(method, headers, meta.etag, meta.last_modified)
    if outcome is Outcome.NOT_MODIFIED:
        return _not_modified(validators, cache_control)
    if outcome is Outcome.PRECONDITION_FAILED:
        detail = "a precondition in the request headers failed"
        return _error(412, "precondition_failed", detail, validators, head_only)

    ranges = _select(method, headers, meta, max_ranges)
    if ranges == ():
        range_header = (("content-range", unsatisfied_range(meta.size)),)
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
    all_headers = top + validators + cache + content_range + extra_headers
    if head_only:
        return Plan(status, all_headers)
    return Plan(status, all_headers, parts, tail)
