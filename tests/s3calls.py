"""What S3 calls a proxy makes: botocore's (seen through its event hooks) and presigned GETs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)  # hashable: botocore's emitter keeps handlers in a dict
class Calls:
    """The S3 API calls a proxy makes: botocore's (its event hooks) and presigned GETs."""

    made: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    presigned: int = 0  # how many of the GetObjects went out presigned
    presigns: int = 0  # how many URLs botocore presigned (that calls nobody)

    def __call__(self, params: dict[str, Any], model: Any, context: Any, **_: Any) -> None:
        if context.get("is_presign_request"):
            self.presigns += 1
        else:
            self.add(model.name, {k: v for k, v in params.items() if k != "Bucket"})

    def add(self, name: str, params: dict[str, Any]) -> None:
        self.made.append((name, params))

    def names(self) -> list[str]:
        return [name for name, _ in self.made]


class _WatchedGets:
    """Presigned GETs that tell ``calls`` of each one, then make it (sync or async alike)."""

    def __init__(self, inner: Any, calls: Calls) -> None:
        self._inner = inner
        self._calls = calls

    def get(self, s3_key: str, range_value: str | None, etag: str | None) -> Any:
        params = {"Key": s3_key, "Range": range_value, "IfMatch": etag}
        self._calls.add("GetObject", {k: v for k, v in params.items() if v is not None})
        self._calls.presigned += 1
        return self._inner.get(s3_key, range_value, etag)  # a coroutine for the async twin

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextmanager
def watching(storage: Any, calls: Calls) -> Iterator[Calls]:
    """Record every S3 call ``storage`` makes into ``calls`` while the context is open."""
    events = storage.client.meta.events
    inner = storage.presigned
    events.register("before-parameter-build.s3", calls, unique_id=f"test-calls-{id(calls)}")
    if inner is not None:
        storage._presigned = _WatchedGets(inner, calls)
    try:
        yield calls
    finally:
        events.unregister("before-parameter-build.s3", unique_id=f"test-calls-{id(calls)}")
        storage._presigned = inner
