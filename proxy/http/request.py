"""The header fields an object request is decided on, read once into a typed view (RFC 9110).

The Range is parsed here, once per request; preconditions keep their text until the ladder in
``proxy.http.conditional`` reads them (most requests carry none).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.http.codec import Range, RangeSpec

_ZERO_SUFFIX = RangeSpec(None, 0)


@dataclass(frozen=True, slots=True)
class ObjectRequest:
    """A GET or HEAD of an object, as far as HTTP decides it."""

    method: str
    range: Range | None = None  # None: no Range, or one that must be ignored (§14.2)
    if_range: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None

    @classmethod
    def from_fields(
        cls, method: str, fields: Mapping[str, str], max_ranges: int = 16
    ) -> ObjectRequest:
        """From header fields by lowercase name (the first of a repeated field)."""
        range_value = fields.get("range")
        return cls(
            method,
            None if range_value is None else Range.from_header(range_value, max_ranges),
            fields.get("if-range"),
            fields.get("if-match"),
            fields.get("if-none-match"),
            fields.get("if-modified-since"),
            fields.get("if-unmodified-since"),
        )

    @classmethod
    def from_raw(
        cls, method: str, raw: Iterable[tuple[bytes, bytes]], max_ranges: int = 16
    ) -> ObjectRequest:
        """From ASGI's raw header list (lowercase names), reading each field once; the first of
        a repeated field wins, as Starlette's ``Headers.get`` has it."""
        fields: dict[str, str] = {}
        for name, value in raw:
            if name in _FIELDS:
                fields.setdefault(_FIELDS[name], value.decode("latin-1"))
        return cls.from_fields(method, fields, max_ranges)

    @property
    def conditional(self) -> bool:
        """Whether a precondition may answer 304 or 412 before any byte is read."""
        return (
            self.if_match is not None
            or self.if_none_match is not None
            or self.if_modified_since is not None
            or self.if_unmodified_since is not None
        )

    def single_range(self) -> Range | None:
        """The Range when it names exactly one satisfiable-looking spec (not ``-0``), which a
        backend can fetch as it is, along with the metadata; None otherwise."""
        if self.range is None or len(self.range.specs) != 1:
            return None
        return None if self.range.specs[0] == _ZERO_SUFFIX else self.range


_FIELDS = {
    name.encode("latin-1"): name
    for name in (
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    )
}
