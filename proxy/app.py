"""``create_app``: settings, the storage client's lifespan, ONE object router, JSON errors."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import cast

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from proxy import metrics
from proxy.config import Settings
from proxy.idle import TrimWhenIdle, malloc_trim
from proxy.observability import LineHandler, Observability, access_logger, record_waiting
from proxy.routes import OBJECT_METHODS, OBJECT_PREFIX, add_object_routes
from proxy.storage import errors
from proxy.storage.base import AsyncStorage, Storage
from proxy.storage.local import AsyncLocalStorage, LocalStorage
from proxy.storage.openfiles import OpenFiles
from proxy.version import __version__

logger = logging.getLogger("proxy")

# Most specific first: the first isinstance match wins.
STATUS_BY_ERROR: tuple[tuple[type[errors.StorageError], int, str], ...] = (
    (errors.ObjectNotFound, 404, "not_found"),
    (errors.AccessDenied, 403, "forbidden"),
    (errors.InvalidKey, 400, "invalid_key"),
    (errors.BackendUnavailable, 503, "backend_unavailable"),
    (errors.BackendTimeout, 504, "backend_timeout"),
    (errors.ObjectChanged, 503, "object_changed"),
    (errors.StorageError, 502, "bad_gateway"),
)
RETRY_AFTER_SECONDS = "1"

# What a player on another origin sends (a Range needs a preflight) and must be able to read.
CORS_REQUEST_HEADERS = [
    "Range",
    "If-Range",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
]
CORS_EXPOSED_HEADERS = [
    "Content-Range",
    "Accept-Ranges",
    "Content-Length",
    "ETag",
    "Last-Modified",
    "Content-Disposition",
]


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one JSON error shape: ``{"error": code, "detail": text}``."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def storage_error(request: Request, exc: Exception) -> JSONResponse:
    metrics.BACKEND_ERRORS.labels(type(exc).__name__).inc()
    for kind, status, code in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            headers = {"retry-after": RETRY_AFTER_SECONDS} if status == 503 else None
            return error_response(status, code, str(exc), headers)
    raise exc  # unreachable: registered for StorageError only


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and request.url.path.startswith(OBJECT_PREFIX):
        # GET and HEAD are two routes (one OpenAPI operation each); Starlette's Allow names one.
        headers = {"allow": OBJECT_METHODS}
    return error_response(exc.status_code, code, detail, headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, "invalid_request", "the request's parameters are invalid")


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's ServerErrorMiddleware logs the traceback server-side and re-raises.
    return error_response(500, "internal_error", "internal server error")


async def _open_storage(settings: Settings, stack: AsyncExitStack) -> Storage | AsyncStorage:
    """The storage client for this worker process, released when ``stack`` closes."""
    if settings.backend == "s3":
        from proxy.storage import s3  # boto3 and aiobotocore load only when they are used

        if settings.sync:
            storage = s3.open_s3(settings)
            stack.callback(storage.close)
            return storage
        return await s3.aopen_s3(settings, stack)
    if settings.sync:
        local = LocalStorage(settings.local_root, settings.local_open_files)
        stack.callback(local.close)
        await _expire_open_files(local.open_files, stack)
        return local
    alocal = AsyncLocalStorage(settings.local_root, settings.local_open_files)
    stack.push_async_callback(alocal.aclose)
    await _expire_open_files(alocal.open_files, stack)
    return alocal


async def _expire_open_files(files: OpenFiles, stack: AsyncExitStack) -> None:
    """Close cached descriptors that went unused, on an idle server too (a deleted file's
    space comes back only when its last descriptor is closed)."""

    async def expire() -> None:
        while True:
            await asyncio.sleep(files.idle / 2)
            files.expire()

    task = asyncio.create_task(expire())
    stack.callback(task.cancel)


class Readiness:
    """The backend's reachability, checked at most once per ``ttl`` seconds (cheap probes)."""

    def __init__(self, check: Callable[[], Awaitable[None]], ttl: float) -> None:
        self._check = check
        self._ttl = ttl
        self._expires = 0.0
        self._error: errors.StorageError | None = None

    async def __call__(self) -> errors.StorageError | None:
        now = time.monotonic()
        if now >= self._expires:
            try:
                await self._check()
                self._error = None
            except errors.StorageError as exc:
                self._error = exc
            self._expires = now + self._ttl
        return self._error


def _readiness(storage: Storage | AsyncStorage, sync: bool, ttl: float) -> Readiness:
    if sync:
        return Readiness(partial(run_in_threadpool, cast(Storage, storage).check), ttl)
    return Readiness(cast(AsyncStorage, storage).acheck, ttl)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; settings come from the environment unless given."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # def endpoints and sync bodies' chunks run in this pool: size it for slow clients.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threadpool_size
        async with AsyncExitStack() as stack:
            storage = await _open_storage(settings, stack)
            app.state.storage = storage
            app.state.readiness = _readiness(
                storage, settings.sync, settings.readiness_cache_seconds
            )
            # Everything loaded so far lives as long as the process: exempt it from the
            # cyclic GC, whose full passes over it stalled every stream for ~15 ms (p99).
            gc.collect()
            gc.freeze()
            yield
            record_waiting()  # the last requests' lines and metrics, before the loop ends
        metrics.worker_exited(os.getpid())

    app = FastAPI(
        title="media object proxy",
        version=__version__,
        lifespan=lifespan,
        # Metrics and logs come from Observability; FastAPI's OpenTelemetry hooks would only
        # check on every request whether some provider was configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.add_exception_handler(errors.StorageError, storage_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """The storage backend is reachable (checked at most every few seconds)."""
        error = await request.app.state.readiness()
        if error is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"status": "unavailable", "error": type(error).__name__},
            status_code=503,
            headers={"retry-after": RETRY_AFTER_SECONDS},
        )

    add_object_routes(app, settings.sync)  # before any middleware: its shortcut is innermost
    if settings.metrics:

        @app.get("/metrics", tags=["health"], response_class=Response)
        async def metrics_endpoint() -> Response:
            """Prometheus exposition of this process (all workers' in multiprocess mode)."""
            body, media_type = metrics.render()
            return Response(body, media_type=media_type)

    if settings.cors_allow_origins:
        # Pure ASGI middleware: it only adds headers, the stream passes through untouched.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "HEAD"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=settings.cors_max_age,
        )
    if settings.access_log:
        _log_to_stdout(access_logger)
    if (trim := malloc_trim()) is not None:
        app.add_middleware(TrimWhenIdle, trim=trim)
    # Outermost: sees every answer, CORS preflights and errors included.
    app.add_middleware(Observability, access_log=settings.access_log, metrics_on=settings.metrics)
    return app


def _log_to_stdout(logger_: logging.Logger) -> None:
    """One JSON object per line on stdout, unless the host application configured the logger."""
    if not logger_.handlers:
        logger_.addHandler(LineHandler(sys.stdout))  # no formatter: the message alone
        logger_.setLevel(logging.INFO)
        logger_.propagate = False
