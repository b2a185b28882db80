"""One pure ASGI middleware around every request: request id, nosniff, access log, metrics.

Pure ASGI (not BaseHTTPMiddleware): it only watches ``send``, so streams pass through unbuffered.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
import secrets
import time
from typing import Any, NamedTuple

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import metrics
from proxy.storage.errors import StorageError

access_logger = logging.getLogger("proxy.access")

# An incoming X-Request-ID is kept when it is this tame; otherwise a new one is made.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_LOGGED_RANGE = 200
# Generated ids: random per process, then a counter (uuid4 per request cost 8% of a small range).
_ID_PREFIX = f"{secrets.token_hex(8)}-"
_ID_COUNTER = itertools.count(1)


class _Exchange:
    """What one request did, as the middleware saw it."""

    __slots__ = ("aborted", "bytes", "first_byte", "started", "status")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.status = 0
        self.bytes = 0
        self.first_byte: float | None = None
        self.aborted = True  # until the last body message goes out


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))  # templates only: bounded label values


class _RouteMetrics(NamedTuple):
    """One route's labelled children: ``labels()`` per request cost a lock and a lookup each."""

    bytes_sent: Counter
    duration: Histogram
    ttfb: Histogram
    client_aborts: Counter


@functools.cache
def _route_metrics(route: str) -> _RouteMetrics:
    # Bounded: routes are templates (plus "unmatched"), never request paths.
    return _RouteMetrics(
        metrics.BYTES_SENT.labels(route),
        metrics.DURATION.labels(route),
        metrics.TTFB.labels(route),
        metrics.CLIENT_ABORTS.labels(route),
    )


@functools.cache
def _requests(route: str, method: str, status: int) -> Counter:
    # As many entries as the counter has children (routes x methods x statuses) anyway.
    return metrics.REQUESTS.labels(route, method, str(status))


class Observability:
    """Adds ``X-Request-ID`` and ``X-Content-Type-Options: nosniff``; logs and counts."""

    def __init__(self, app: ASGIApp, access_log: bool = True, metrics_on: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics_on = metrics_on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        if incoming and _REQUEST_ID.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):x}"
        exchange = _Exchange()
        streaming = False

        async def watch(message: Message) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                    (b"x-content-type-options", b"nosniff"),
                ]
                if self.metrics_on and _route(scope).startswith("/objects/"):
                    streaming = True
                    metrics.ACTIVE_STREAMS.inc()
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and exchange.first_byte is None:
                    exchange.first_byte = time.perf_counter()
                exchange.bytes += len(body)
                if not message.get("more_body", False):
                    exchange.aborted = False
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, watch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if streaming:
                metrics.ACTIVE_STREAMS.dec()
            self._record(scope, request_id, exchange, error)

    def _record(
        self, scope: Scope, request_id: str, exchange: _Exchange, error: BaseException | None
    ) -> None:
        done = time.perf_counter()
        route = _route(scope)
        # Aborted without an error raised: the client went away (ObjectResponse returns quietly).
        by_client = exchange.aborted and error is None and exchange.status != 0
        if self.metrics_on:
            per_route = _route_metrics(route)
            _requests(route, scope["method"], exchange.status or 500).inc()
            per_route.bytes_sent.inc(exchange.bytes)
            per_route.duration.observe(done - exchange.started)
            if exchange.first_byte is not None:
                per_route.ttfb.observe(exchange.first_byte - exchange.started)
            if by_client:
                per_route.client_aborts.inc()
            if isinstance(error, StorageError):  # failed mid-stream: the connection was cut
                metrics.BACKEND_ERRORS.labels(type(error).__name__).inc()
        if self.access_log:
            access_logger.info(json.dumps(self._line(scope, request_id, exchange, done, by_client)))

    @staticmethod
    def _line(
        scope: Scope, request_id: str, exchange: _Exchange, done: float, by_client: bool
    ) -> dict[str, Any]:
        key = scope.get("path_params", {}).get("key")
        byte_range = _header(scope, b"range")
        ttfb = None if exchange.first_byte is None else exchange.first_byte - exchange.started
        return {
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"] if key is None else None,
            "key": key,
            "range": byte_range[:_MAX_LOGGED_RANGE] if byte_range else None,
            "status": exchange.status or 500,
            "bytes_sent": exchange.bytes,
            "duration_ms": round((done - exchange.started) * 1000, 3),
            "ttfb_ms": None if ttfb is None else round(ttfb * 1000, 3),
            "client_aborted": by_client,
            "aborted": exchange.aborted,
        }
