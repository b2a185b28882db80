"""``create_app`` composes: settings, the storage stack of each mount (``proxy.mounts``,
``proxy.storage.factory``) in the lifespan, the object route, the landing page, offline docs,
health and metrics endpoints, JSON errors, middleware."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import metrics
from proxy.config import Settings
from proxy.docs import add_docs_routes
from proxy.errorhandlers import RETRY_AFTER_SECONDS, add_error_handlers
from proxy.idle import TrimWhenIdle, cap_malloc_arenas, malloc_trim
from proxy.landing import add_landing_route
from proxy.mounts import MountTable, open_mounts
from proxy.observability import LineHandler, Observability, access_logger, record_waiting
from proxy.routes import OBJECT_PREFIX, add_object_routes
from proxy.settingsdoc import settings_or_exit
from proxy.uploads import CloseUnreadBodies
from proxy.version import __version__

logger = logging.getLogger("proxy")

# What a player on another origin sends (a Range needs a preflight) and must be able to read.
CORS_REQUEST_HEADERS = [
    "Range",
    "If-Range",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
]
# What an upload from another origin sends besides (a PUT always needs a preflight).
CORS_WRITE_HEADERS = [
    "Content-Type",
    "Content-MD5",
    "x-amz-checksum-sha256",
    "Content-Disposition",
    "Cache-Control",
    "Authorization",
]
CORS_EXPOSED_HEADERS = [
    "Content-Range",
    "Accept-Ranges",
    "Content-Length",
    "ETag",
    "Last-Modified",
    "Content-Disposition",
    "Location",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; settings come from the environment unless given (a bad one:
    one line per problem on stderr and exit status 2, also in a uvicorn worker)."""
    settings = settings or settings_or_exit()
    if any(mount.settings.sync for mount in settings.mount_list()):
        # Threads read bodies (docs/design.md). First: glibc reads the cap when it makes a
        # thread's arena, so one made before it (a client library's thread) would stay.
        cap_malloc_arenas()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # def endpoints and sync bodies' chunks run in this pool: size it for slow clients.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threadpool_size
        async with AsyncExitStack() as stack:
            mounts = await open_mounts(settings, stack)
            app.state.mounts = mounts
            if mounts.root is not None:  # the single backend of the PROXY_ variables
                app.state.storage = mounts.root.storage
                app.state.readiness = mounts.root.ready
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
        # /docs is served by add_docs_routes from installed files: FastAPI's own pages load a
        # CDN's. No ReDoc, no OAuth2 redirect: proxy.docs says why.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.settings = settings
    add_error_handlers(app)
    add_landing_route(app)
    add_docs_routes(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """The storage backend is reachable (checked at most every few seconds); with mounts,
        each one's, by name: 503 when any is not."""
        state = request.app.state
        table: MountTable = state.mounts
        if table.root is not None:
            error = await state.readiness()
            if error is None:
                return JSONResponse({"status": "ready"})
            return JSONResponse(
                {"status": "unavailable", "error": type(error).__name__},
                status_code=503,
                headers={"retry-after": RETRY_AFTER_SECONDS},
            )
        errors = await asyncio.gather(*(mount.ready() for mount in table.mounts))
        report = {
            mount.name: "ready" if error is None else type(error).__name__
            for mount, error in zip(table.mounts, errors, strict=True)
        }
        failing = sorted(name for name, status in report.items() if status != "ready")
        if not failing:
            return JSONResponse({"status": "ready", "mounts": report})
        return JSONResponse(
            {"status": "unavailable", "failing": failing, "mounts": report},
            status_code=503,
            headers={"retry-after": RETRY_AFTER_SECONDS},
        )

    add_object_routes(app, settings)
    if settings.metrics:

        @app.get("/metrics", tags=["health"], response_class=Response)
        async def metrics_endpoint() -> Response:
            """Prometheus exposition of this process (all workers' in multiprocess mode)."""
            body, media_type = metrics.render()
            return Response(body, media_type=media_type)

    mounts = settings.mount_list()
    if any(
        (mount.settings.cors_allow_origins, mount.settings.writes)
        != (settings.cors_allow_origins, settings.writes)
        for mount in mounts
    ):
        # Mounts with origins (or writes) of their own: each mount's paths get their own CORS
        # answers.
        by_mount = {mount.path: mount.settings for mount in mounts}
        app.add_middleware(CorsByMount, settings=settings, by_mount=by_mount)
    elif settings.cors_allow_origins:
        # Pure ASGI middleware: it only adds headers, the stream passes through untouched.
        app.add_middleware(CORSMiddleware, **cors_options(settings.cors_allow_origins, settings))
    if settings.access_log:
        _log_to_stdout(access_logger)
    if any(mount.settings.writes for mount in mounts):
        app.add_middleware(CloseUnreadBodies)
    if (trim := malloc_trim()) is not None:
        app.add_middleware(TrimWhenIdle, trim=trim)
    # Outermost: sees every answer, CORS preflights and errors included.
    app.add_middleware(Observability, access_log=settings.access_log, metrics_on=settings.metrics)
    return app


def cors_options(origins: list[str], settings: Settings) -> dict[str, Any]:
    """Starlette's ``CORSMiddleware`` options for a player on one of ``origins`` (and, where
    writes are on, an uploader: PUT and DELETE with their header fields)."""
    writes = settings.writes
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "HEAD", "PUT", "DELETE"] if writes else ["GET", "HEAD"],
        "allow_headers": CORS_REQUEST_HEADERS + (CORS_WRITE_HEADERS if writes else []),
        "expose_headers": CORS_EXPOSED_HEADERS,
        "max_age": settings.cors_max_age,
    }


class CorsByMount:
    """CORS per mount: a request below ``/objects/{mount}/`` is answered with its mount's
    origins (``cors_allow_origins``) and methods (PUT and DELETE where it writes), any other
    request with the app's (a ``CORSMiddleware`` per mount, none for an empty list)."""

    def __init__(self, app: ASGIApp, settings: Settings, by_mount: dict[str, Settings]) -> None:
        def layer(own: Settings) -> ASGIApp:
            allowed = own.cors_allow_origins
            return CORSMiddleware(app, **cors_options(allowed, own)) if allowed else app

        self._default = layer(settings)
        # Longest path first; mount names never nest, so at most one path matches anyway.
        self._by_path = [
            (OBJECT_PREFIX + path, layer(own))
            for path, own in sorted(by_mount.items(), key=lambda item: -len(item[0]))
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(OBJECT_PREFIX):
            for prefix, layer in self._by_path:
                if path.startswith(prefix):
                    await layer(scope, receive, send)
                    return
        await self._default(scope, receive, send)


def _log_to_stdout(logger_: logging.Logger) -> None:
    """One JSON object per line on stdout, unless the host application configured the logger."""
    if not logger_.handlers:
        logger_.addHandler(LineHandler(sys.stdout))  # no formatter: the message alone
        logger_.setLevel(logging.INFO)
        logger_.propagate = False
