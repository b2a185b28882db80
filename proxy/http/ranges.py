"""Byte ranges (RFC 9110 §14): parse a Range header, resolve it against a size.

STUB: the helper owning proxy/http/ completes this module; ByteRange's shape is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Half-open ``[start, stop)``; converted to inclusive only at the wire."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        """``Content-Range`` value for this range of a ``size``-byte representation."""
        return f"bytes {self.start}-{self.stop - 1}/{size}"
