"""Reading a ``Plan`` back in tests: the body it describes and its header values."""

from __future__ import annotations

from proxy.http.plan import Plan


def assemble(plan: Plan, data: bytes) -> bytes:
    """The body a response would send for ``plan`` over an object holding ``data``."""
    body = b"".join(p.head + data[p.byte_range.start : p.byte_range.stop] for p in plan.parts)
    return body + plan.tail


def header(plan: Plan, name: str) -> str | None:
    """The one value of header ``name`` (lowercase), None when absent."""
    values = [v for k, v in plan.headers if k == name]
    assert len(values) <= 1
    return values[0] if values else None
