"""What the first storage call should fetch, decided from the request alone (RFC 9110 §14).

S3 answers a GetObject carrying the Range with the metadata the plan needs, so the hot path
(a GET with or without one range) costs one round trip. Everything else asks for metadata only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from proxy.http.ranges import RangeSpec, parse_range

# Requests that may well end in 304/412: metadata first, the body only when it is needed.
_PRECONDITIONS = frozenset(
    ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
)


@dataclass(frozen=True, slots=True)
class ReadHint:
    """``body`` False: metadata only. Otherwise the body, whole (``spec`` None) or one range."""

    body: bool
    spec: RangeSpec | None = None

    def s3_range(self) -> str | None:
        """The spec in S3's ``Range`` syntax (inclusive, like the header it came from)."""
        if self.spec is None:
            return None
        first, last = self.spec.first, self.spec.last
        if first is None:
            return f"bytes=-{last}"
        return f"bytes={first}-" if last is None else f"bytes={first}-{last}"


METADATA_ONLY = ReadHint(body=False)
WHOLE = ReadHint(body=True)


def read_hint(method: str, headers: Mapping[str, str], max_ranges: int) -> ReadHint:
    """The fetch most likely to serve this request without a second storage call."""
    if method != "GET" or not _PRECONDITIONS.isdisjoint(headers):
        return METADATA_ONLY
    value = headers.get("range")
    if value is None:
        return WHOLE
    specs = parse_range(value, max_ranges)
    if specs is None:
        return WHOLE  # an ignored Range: the whole object
    if len(specs) != 1 or specs[0] == RangeSpec(None, 0):
        return METADATA_ONLY  # multipart (one GET per part) or a zero suffix (416)
    return ReadHint(body=True, spec=specs[0])
