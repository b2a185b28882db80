"""One pure ASGI middleware around every request: request id, nosniff, access log, metrics.

Pure ASGI (not BaseHTTPMiddleware): it only watches ``send``, so streams pass through unbuffered.

Each access-log line says how the transfer ended (``outcome``): ``complete``, ``client_closed``
(the client went away: no error, no traceback), ``backend_error`` (storage failed after the
headers went out: the server aborts the connection; one warning line on the ``proxy`` logger
gives the cause, and uvicorn's traceback of it is dropped), ``cancelled`` (a shutdown's deadline)
or ``error`` (a bug: its traceback stays). And how many times the storage asked S3 again for
the rest of a cut body (``s3_resumes``, counted through ``proxy.storage.notes``).
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import functools
import itertools
import json
import logging
import math
import re
import secrets
import time
import weakref
from collections.abc import Callable, Iterable
from typing import NamedTuple, TextIO

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import metrics
from proxy.storage.errors import StorageError
from proxy.storage.notes import CURRENT, ResponseNotes

access_logger = logging.getLogger("proxy.access")
logger = logging.getLogger("proxy")

# An incoming X-Request-ID is kept when it is this tame; otherwise a new one is made.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_LOGGED_RANGE = 200
# Generated ids: random per process, then a counter (uuid4 per request cost 8% of a small range).
_ID_PREFIX = f"{secrets.token_hex(8)}-"
_ID_COUNTER = itertools.count(1)


class LineHandler(logging.StreamHandler[TextIO]):
    """The access log's own handler (installed when the host configured none): each record's
    message as one line on a stream, flushed.

    ``Observability`` hands it the lines directly while it alone would write them, skipping the
    logging module's record, filter and formatter machinery: ~20 µs of the ~280 µs of CPU a
    64 KiB range costs. Anything that could change what gets written (levels, filters, a
    formatter, more handlers, propagation, ``logging.disable``) sends lines through logging.
    Lines handed over on an event loop are kept here and written together, with one write and
    one flush, once the loop's current callbacks are done — whatever the stream's own buffering
    (``PYTHONUNBUFFERED``, which container images often set, makes every write a system call).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._flushing: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def write_line(self, line: str) -> None:
        self.write_lines((line,))

    def write_lines(self, lines: Iterable[str]) -> None:
        """``write_line`` for each of ``lines``: one lock and one look at the loop for all."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._lines.extend(lines)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_kept()  # with any kept on a loop that ended first, in order
            return
        if loop not in self._flushing:
            self._flushing.add(loop)
            loop.call_soon(self._flush_for, loop)

    def _flush_for(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flushing.discard(loop)
        self._write_kept()

    def flush(self) -> None:
        """Write the lines kept so far and flush the stream (``logging.shutdown`` calls it)."""
        if not self._write_kept():
            super().flush()

    def _write_kept(self) -> bool:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
        if lines:
            self._write(lines)
        return bool(lines)

    def _write(self, lines: list[str]) -> None:
        terminator = self.terminator
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(terminator.join(lines) + terminator)
                self.stream.flush()
            except Exception:  # as Handler.emit: reported on stderr, the request goes on
                self.handleError(logging.makeLogRecord({"msg": lines[0]}))


def _direct_line_handler() -> LineHandler | None:
    """The access log's own handler when writing to it directly is what logging would do."""
    logger = access_logger
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate:
        return None
    handler = handlers[0]
    if (
        type(handler) is not LineHandler
        or handler.filters
        or handler.formatter is not None
        or handler.level > logging.INFO
        or not logger.isEnabledFor(logging.INFO)
    ):
        return None
    return handler


class _Exchange:
    """What one request did, as the middleware saw it."""

    __slots__ = ("aborted", "bytes", "first_byte", "notes", "started", "status")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.status = 0
        self.bytes = 0
        self.first_byte: float | None = None
        self.aborted = True  # until the last body message goes out
        self.notes = ResponseNotes()  # what storage reports for this response


# How a transfer ended, in the access log.
COMPLETE, CLIENT_CLOSED, BACKEND_ERROR = "complete", "client_closed", "backend_error"
CANCELLED, ERROR = "cancelled", "error"
REFUSED = "refused"  # by the connection layer, before the app (``report_refusal``)
OUTCOMES = (COMPLETE, CLIENT_CLOSED, BACKEND_ERROR, CANCELLED, ERROR, REFUSED)


def outcome(exchange: _Exchange, error: type[BaseException] | None) -> str:
    if exchange.notes.client_gone:  # a write whose client left mid-body (its answer unsent)
        return CLIENT_CLOSED
    if not exchange.aborted:
        return COMPLETE
    if error is None:
        # Aborted without an error raised: the client went away (ObjectResponse returns
        # quietly); without a response started, the app returned none (a bug).
        return CLIENT_CLOSED if exchange.status != 0 else ERROR
    if issubclass(error, StorageError):
        return BACKEND_ERROR
    if issubclass(error, asyncio.CancelledError):
        return CANCELLED
    return ERROR


def storage_cause(exc: BaseException) -> StorageError | None:
    """The storage failure behind ``exc``: itself, or what it was raised from (Starlette wraps
    an exception that has a handler but came after the response started in a RuntimeError)."""
    for _ in range(8):  # a bounded walk down the chain
        if isinstance(exc, StorageError):
            return exc
        if exc.__cause__ is None:
            return None
        exc = exc.__cause__
    return None


_REPORTED = "_proxy_reported"  # set on an exception whose cause the proxy logged already


class DropReported(logging.Filter):
    """Drops the server's record of an exception the proxy has reported in one line already
    (a body cut by storage): its traceback would be noise, as it is no bug. Installed on
    uvicorn's error logger, whose "Exception in ASGI application" record it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        return not (exc_info and getattr(exc_info[1], _REPORTED, False))


def _install_drop_reported(name: str = "uvicorn.error") -> None:
    target = logging.getLogger(name)
    if not any(isinstance(existing, DropReported) for existing in target.filters):
        target.addFilter(DropReported())  # uvicorn's logging config keeps a logger's filters


_install_drop_reported()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


UNMATCHED = "unmatched"  # the route label of requests no route took
# The method label's values (others: "other"). A request line may carry any token as its method
# (h11 takes them all, httptools some 30), and each label value is a child kept for the life of
# the process: a client sending made-up methods would grow the metrics without bound.
_COUNTED_METHODS = frozenset(("GET", "HEAD", "PUT", "DELETE", "POST", "OPTIONS", "PATCH"))


def _method_label(method: str) -> str:
    return method if method in _COUNTED_METHODS else "other"


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


def _write_lines(lines: list[str]) -> None:
    """Access-log lines, straight to the log's own handler when that is what logging would do."""
    handler = _direct_line_handler()
    if handler is None:
        for line in lines:
            access_logger.info(line)
    else:
        handler.write_lines(lines)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", UNMATCHED))  # templates only: bounded label values


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
def _mount_requests(mount: str, status: int) -> Counter:
    return metrics.MOUNT_REQUESTS.labels(mount, str(status))


@functools.cache
def _mount_bytes(mount: str) -> Counter:
    return metrics.MOUNT_BYTES.labels(mount)


@functools.cache
def _requests(route: str, method: str, status: int) -> Counter:
    # As many entries as the counter has children (routes x methods x statuses) anyway.
    return metrics.REQUESTS.labels(route, method, str(status))


# A request is logged and counted with the others that end within this delay of the first of
# them, or at once when this many have ended.
BATCH_SECONDS = 0.005
BATCH_SIZE = 64


class _Finished(NamedTuple):
    scope: Scope
    request_id: str
    exchange: _Exchange
    done: float
    error: type[BaseException] | None  # not the exception: its traceback holds frames


class _Tally:
    """A batch's metric updates: requests by (route, method, status), body bytes by route,
    requests and bytes by (mount, status), summed; durations and times to first byte by
    route, for ``observe_all``."""

    __slots__ = ("durations", "per_mount", "requests", "route_bytes", "ttfbs")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.route_bytes: dict[str, int] = {}
        self.per_mount: dict[tuple[str, int], list[int]] = {}
        self.durations: dict[str, list[float]] = {}
        self.ttfbs: dict[str, list[float]] = {}


def observe_all(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe`` of each of ``values``, with one update of its sum and of each
    bucket that gains observations: ``observe`` takes a lock for the sum and one for the
    bucket, per observation (two per request were a fifth of what logging and counting a
    64 KiB range cost). prometheus-client keeps each observation in the first bucket whose
    bound holds it (cumulated when collected): that bucket is found by bisection here. A
    client without those internals gets one ``observe`` per value."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        index = bisect.bisect_left(bounds, value)  # the first bound >= value (the last: +Inf)
        counts[index] = counts.get(index, 0) + 1
    total.inc(math.fsum(values))
    for index, count in counts.items():
        buckets[index].inc(count)


class Observability:
    """Adds ``X-Request-ID`` and ``X-Content-Type-Options: nosniff``; logs and counts.

    A request's access-log line and metrics are recorded in a batch, at most ``BATCH_SECONDS``
    after it ended (at once when ``BATCH_SIZE`` requests wait; ``record_waiting`` records what
    waits, as the app's shutdown does): the same lines and numbers, timed when each request
    ended. Recorded one request at a time, between the requests' own work, the logging and
    metrics code ran cold in the CPU's caches and the log was written once per request.
    """

    def __init__(self, app: ASGIApp, access_log: bool = True, metrics_on: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics_on = metrics_on
        self._finished: list[_Finished] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        _OBSERVERS.add(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        if incoming and _REQUEST_ID.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = _new_request_id()
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
            elif message["type"] == "http.response.zerocopysend":  # a file's bytes, by sendfile
                count = message.get("count", 0)
                if count and exchange.first_byte is None:
                    exchange.first_byte = time.perf_counter()
                exchange.bytes += count
                if not message.get("more_body", False):
                    exchange.aborted = False
            await send(message)

        error: type[BaseException] | None = None
        notes_token = CURRENT.set(exchange.notes)
        try:
            await self.app(scope, receive, watch)
        except BaseException as exc:
            error = type(exc)
            if exchange.status and (cut := storage_cause(exc)) is not None:
                error = type(cut)
                self._report_cut(scope, request_id, exchange, cut)
                setattr(exc, _REPORTED, True)
            raise
        finally:
            CURRENT.reset(notes_token)
            if streaming:
                metrics.ACTIVE_STREAMS.dec()
            finished = _Finished(scope, request_id, exchange, time.perf_counter(), error)
            self._finish(finished)

    @staticmethod
    def _report_cut(
        scope: Scope, request_id: str, exchange: _Exchange, cause: StorageError
    ) -> None:
        """One warning line for a body storage cut after the headers went out: the server
        then aborts the connection, and the access line says ``backend_error``."""
        target = scope.get("path_params", {}).get("key", scope["path"])
        logger.warning(
            "request %s: the body of %r was cut by storage after %d bytes (%s: %s)",
            request_id,
            target,
            exchange.bytes,
            type(cause).__name__,
            " ".join(str(cause).split()),  # one line, whatever the message holds
        )

    def _finish(self, finished: _Finished) -> None:
        self._finished.append(finished)
        loop = asyncio.get_running_loop()
        # A batch timed on another loop: that loop ended first (a test client's loop per request).
        if len(self._finished) >= BATCH_SIZE or self._timer_loop not in (None, loop):
            self.record_finished()
        elif self._timer is None:
            self._timer = loop.call_later(BATCH_SECONDS, self.record_finished)
            self._timer_loop = loop

    def record_finished(self) -> None:
        """Log and count the requests that ended and wait for their batch."""
        if self._timer is not None:
            if self._timer_loop is not None and not self._timer_loop.is_closed():
                self._timer.cancel()
            self._timer = self._timer_loop = None
        finished, self._finished = self._finished, []
        tally = _Tally()
        lines: list[str] = []
        for item in finished:
            self._record(*item, tally, lines)
        # Counters summed over the batch, then one update per label set: each counter update
        # costs a lock (two per mount were nearly all of what a third mount cost a 64 KiB
        # range, callgrind +2.1%); histograms likewise, by ``observe_all``.
        for (route, method, status), count in tally.requests.items():
            _requests(route, method, status).inc(count)
        for route, sent in tally.route_bytes.items():
            _route_metrics(route).bytes_sent.inc(sent)
        for route, seconds in tally.durations.items():
            observe_all(_route_metrics(route).duration, seconds)
        for route, seconds in tally.ttfbs.items():
            observe_all(_route_metrics(route).ttfb, seconds)
        for (mount, status), (count, sent) in tally.per_mount.items():
            _mount_requests(mount, status).inc(count)
            _mount_bytes(mount).inc(sent)
        if lines:
            _write_lines(lines)

    def _record(
        self,
        scope: Scope,
        request_id: str,
        exchange: _Exchange,
        done: float,
        error: type[BaseException] | None,
        tally: _Tally,
        lines: list[str],
    ) -> None:
        route = _route(scope)
        ended = outcome(exchange, error)
        by_client = ended is CLIENT_CLOSED
        if self.metrics_on:
            status = exchange.status or 500
            requests = tally.requests
            label = (route, _method_label(scope["method"]), status)
            requests[label] = requests.get(label, 0) + 1
            route_bytes = tally.route_bytes
            route_bytes[route] = route_bytes.get(route, 0) + exchange.bytes
            tally.durations.setdefault(route, []).append(done - exchange.started)
            if exchange.first_byte is not None:
                tally.ttfbs.setdefault(route, []).append(exchange.first_byte - exchange.started)
            if by_client:
                _route_metrics(route).client_aborts.inc()
            if error is not None and issubclass(error, StorageError):  # failed mid-stream
                metrics.BACKEND_ERRORS.labels(error.__name__).inc()
            if mount := scope.get("mount"):  # set by the object route with PROXY_MOUNTS
                counts = tally.per_mount.setdefault((mount, status), [0, 0])
                counts[0] += 1
                counts[1] += exchange.bytes
        if self.access_log:
            lines.append(self._line(scope, request_id, exchange, done, ended))

    @staticmethod
    def _line(scope: Scope, request_id: str, exchange: _Exchange, done: float, ended: str) -> str:
        key = scope.get("path_params", {}).get("key")
        byte_range = _header(scope, b"range")
        ttfb = None if exchange.first_byte is None else exchange.first_byte - exchange.started
        return access_line(
            request_id=request_id,
            method=scope["method"],
            path=scope["path"] if key is None else None,
            key=key,
            byte_range=byte_range[:_MAX_LOGGED_RANGE] if byte_range else None,
            status=exchange.status or 500,
            bytes_sent=exchange.bytes,
            duration_ms=round((done - exchange.started) * 1000, 3),
            ttfb_ms=None if ttfb is None else round(ttfb * 1000, 3),
            client_aborted=ended is CLIENT_CLOSED,
            aborted=exchange.aborted,
            outcome=ended,
            s3_resumes=exchange.notes.resumes,
            mount=scope.get("mount") or None,
            bytes_received=exchange.notes.received,
        )


_OBSERVERS: weakref.WeakSet[Observability] = weakref.WeakSet()


def report_refusal(
    status: int,
    method: str | None,
    seconds: float,
    sent: int,
    *,
    access_log: bool,
    metrics_on: bool,
) -> None:
    """A request the connection layer refused (``proxy.connection``: 400, 408, 414, 431, 503,
    505) before the app saw it: one access-log line, outcome ``refused``, and the request
    counters under the route ``unmatched``, as nginx logs the 400s and 408s it answers itself.
    At once, not batched: refusals are rare, and the connection closes after each."""
    if metrics_on:
        _requests(UNMATCHED, "other" if method is None else _method_label(method), status).inc()
        route = _route_metrics(UNMATCHED)
        route.bytes_sent.inc(sent)
        route.duration.observe(seconds)
    if access_log:
        line = access_line(
            request_id=_new_request_id(),
            method=method,
            path=None,
            key=None,
            byte_range=None,
            status=status,
            bytes_sent=sent,
            duration_ms=round(seconds * 1000, 3),
            ttfb_ms=None,
            client_aborted=False,
            aborted=False,
            outcome=REFUSED,
            s3_resumes=0,
        )
        _write_lines([line])


def record_waiting() -> None:
    """Log and count every request that waits for its batch (at shutdown: no line is lost)."""
    for observer in list(_OBSERVERS):
        observer.record_finished()


# Also at exit, for loops that end without the app's shutdown; before logging's own exit
# handler (registered earlier, so run later) flushes the handlers.
atexit.register(record_waiting)


# What json.dumps writes a str with (its C encoder, ASCII-only output): quotes and escapes.
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_BOOL = {True: "true", False: "false"}
_OUTCOME = {name: _quote(name) for name in OUTCOMES}


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def access_line(
    *,
    request_id: str,
    method: str | None,
    path: str | None,
    key: str | None,
    byte_range: str | None,
    status: int,
    bytes_sent: int,
    duration_ms: float,
    ttfb_ms: float | None,
    client_aborted: bool,
    aborted: bool,
    outcome: str,
    s3_resumes: int,
    mount: str | None = None,
    bytes_received: int | None = None,
) -> str:
    """One access-log line: exactly what ``json.dumps`` makes of these fields as a dict (in
    this order, ``range`` for ``byte_range``), without building the dict and the encoder
    ``json.dumps`` builds per call (~7 µs of a 64 KiB range). ``mount``: with PROXY_MOUNTS,
    the request's mount, after ``key`` (without mounts the line has no such field);
    ``bytes_received``: a write's request body bytes, last (other lines have no such field)."""
    quoted_outcome = _OUTCOME.get(outcome) or _quote(outcome)
    mount_field = "" if mount is None else f'"mount": {_quote(mount)}, '
    received = "" if bytes_received is None else f', "bytes_received": {int(bytes_received)}'
    return (
        f'{{"request_id": {_quote(request_id)}, "method": {_text(method)}, '
        f'"path": {_text(path)}, "key": {_text(key)}, {mount_field}'
        f'"range": {_text(byte_range)}, '
        f'"status": {int(status)}, "bytes_sent": {int(bytes_sent)}, '
        f'"duration_ms": {float(duration_ms)!r}, '
        f'"ttfb_ms": {"null" if ttfb_ms is None else repr(float(ttfb_ms))}, '
        f'"client_aborted": {_BOOL[client_aborted]}, "aborted": {_BOOL[aborted]}, '
        f'"outcome": {quoted_outcome}, "s3_resumes": {int(s3_resumes)}{received}}}'
    )
