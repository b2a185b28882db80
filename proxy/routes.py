"""The object endpoints, side by side: ``def`` (sync storage) and ``async def`` (async storage).

Both build the same ``Plan`` with ``plan_object`` and differ only in their I/O calls. They are
served by ``ObjectRoute``, which calls them without FastAPI's per-request dependency solving.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.auth import authorize
from proxy.config import Settings
from proxy.http.disposition import content_disposition, download_filename
from proxy.http.hint import ReadHint, read_hint
from proxy.http.plan import Plan, body_length, plan_response
from proxy.responses import ObjectResponse, Pacer, aiter_plan, iter_plan
from proxy.storage.base import AsyncStorage, ObjectMeta, Storage
from proxy.storage.keys import check_key
from proxy.storage.mediatypes import is_active_content


class ObjectKeyConvertor(PathConvertor):
    """Starlette's ``path`` with one change: ``.*`` stops at a newline and the route's ``$`` also
    matches before a final one, so ``/objects/a.txt%0A`` would arrive as key ``a.txt``. This
    regex takes every character, and ``check_key`` refuses the control characters."""

    regex = r"[\s\S]*"


register_url_convertor("objectkey", ObjectKeyConvertor())

OBJECT_PREFIX = "/objects/"
OBJECT_PATH = OBJECT_PREFIX + "{key:objectkey}"
OBJECT_METHODS = "GET, HEAD"  # two routes: FastAPI adds no HEAD to a GET route by itself
SANDBOX = "sandbox; default-src 'none'"


# async dependencies run on the event loop; a plain `def` would cost a thread hop per request.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def get_async_storage(request: Request) -> AsyncStorage:
    storage: AsyncStorage = request.app.state.storage
    return storage


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
AsyncStorageDep = Annotated[AsyncStorage, Depends(get_async_storage)]
Download = Annotated[
    str | None,
    Query(description="Present: send Content-Disposition: attachment (optionally with this name)"),
]

OBJECT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole object", "content": {"application/octet-stream": {}}},
    206: {"description": "One range, or multipart/byteranges"},
    304: {"description": "Not modified"},
    400: {"description": "Invalid key"},
    401: {"description": "Credentials required (bearer key or signed URL)"},
    403: {"description": "Not allowed to read this object"},
    404: {"description": "No such object"},
    412: {"description": "A precondition failed"},
    416: {"description": "Range not satisfiable"},
}


def header_fields(request: Request) -> dict[str, str]:
    """The request's header fields by (lowercase) name, the first of a repeated one as
    Starlette's ``Headers.get`` gives it; built once per request, where ``Headers`` scans every
    field on each of the planning's dozen lookups."""
    scope = request.scope
    fields: dict[str, str] | None = scope.get(_HEADER_FIELDS)
    if fields is None:
        fields = {}
        for name, value in scope["headers"]:
            fields.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        scope[_HEADER_FIELDS] = fields
    return fields


_HEADER_FIELDS = "proxy.header_fields"  # where header_fields keeps them in the ASGI scope


def open_arguments(request: Request, key: str, settings: Settings) -> tuple[str, ReadHint]:
    """The checked key and what the first storage call should fetch."""
    hint = read_hint(request.method, header_fields(request), settings.max_ranges)
    return check_key(key), hint


def plan_object(
    request: Request, meta: ObjectMeta, settings: Settings, download: str | None
) -> Plan:
    """The HTTP decisions for one request: conditionals, ranges, headers."""
    extra: tuple[tuple[str, str], ...] = ()
    active = not settings.inline_active_content and is_active_content(meta.media_type)
    if download is not None or active:
        # Stored HTML/SVG/XML would run script on the proxy's origin: never render it inline.
        name = download_filename(meta.key, download)
        extra = (("content-disposition", content_disposition(name)),)
    if active:
        extra += (("content-security-policy", SANDBOX),)
    return plan_response(
        request.method,
        header_fields(request),
        meta,
        cache_control=settings.cache_control,
        max_ranges=settings.max_ranges,
        extra_headers=extra,
    )


class ObjectRoute(APIRoute):
    """Serves ``get_object``/``aget_object`` without FastAPI's per-request dependency solving.

    Solving the dependencies below (and validating two plain strings) took a fifth of the
    event loop's time on a 64 KiB range. The route still declares them, so OpenAPI documents
    the operation as usual; ``handler`` passes the same values directly, after ``authorize``.
    Anything else declared on the endpoint would be skipped silently, so it is refused here.
    """

    PARAMETERS = ("key", "request", "storage", "settings", "download")

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        declared = tuple(inspect.signature(endpoint).parameters)
        dependencies = [d.dependency for d in kwargs.get("dependencies") or ()]
        if declared != self.PARAMETERS or dependencies != [authorize]:
            raise TypeError(f"ObjectRoute cannot serve {endpoint.__name__}{declared}")
        self.handler = _handler(endpoint)
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.handler


def _handler(endpoint: Callable[..., Any]) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    blocking = not inspect.iscoroutinefunction(endpoint)

    async def handler(request: Request) -> Response:
        key: str = request.path_params["key"]
        await authorize(request, key)
        state = request.app.state
        # Parsing an absent query string still cost 2% of a small range.
        download = request.query_params.get("download") if request.scope["query_string"] else None
        arguments = (key, request, state.storage, state.settings, download)
        if blocking:  # a `def` endpoint runs in the threadpool, as FastAPI would run it
            response: Response = await run_in_threadpool(endpoint, *arguments)
            return response
        return await endpoint(*arguments)  # type: ignore[no-any-return]

    return handler


class ObjectShortcut:
    """Pure ASGI middleware, the innermost one: an object request goes straight to its route.

    FastAPI's exception middleware, exit stack, router and request wrapper cost a third of a
    64 KiB range's event-loop time. Here the route's own ``matches`` picks the request (so
    paths, methods and root_path are read exactly as the router would) and its handler answers
    it; exceptions go to the handlers registered on the app, looked up by class like
    Starlette's ExceptionMiddleware does. Anything else (405s included) goes on to FastAPI.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[ObjectRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self._serve(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(route: ObjectRoute, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await route.handler(request)
        except Exception as exc:
            handler = _exception_handler(request.app.exception_handlers, exc)
            if handler is None:
                raise  # to ServerErrorMiddleware: logged, and a JSON 500 from its handler
            response = await handler(request, exc)
        await response(scope, receive, send)


def _exception_handler(
    handlers: Mapping[Any, Callable[[Request, Exception], Any]], exc: Exception
) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The handler registered for the nearest class of ``exc``; the catch-all one is left to
    ServerErrorMiddleware, as in Starlette."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


def add_object_routes(app: FastAPI, sync: bool) -> None:
    """GET and HEAD of an object (two OpenAPI operations), served by the flavour's endpoint,
    and the ``ObjectShortcut`` to them. Call it before adding any other middleware, so that
    the shortcut is the innermost one.

    Added to the app directly: an included APIRouter costs a lookup layer per request.
    Access control runs first, the same for both flavours (a no-op unless keys are configured).
    """
    endpoint = get_object if sync else aget_object
    for method, operation_id in (("GET", "get_object"), ("HEAD", "head_object")):
        app.router.add_api_route(
            OBJECT_PATH,
            endpoint,
            methods=[method],
            operation_id=operation_id,
            responses=OBJECT_RESPONSES,
            tags=["objects"],
            dependencies=[Depends(authorize)],
            route_class_override=ObjectRoute,
        )
    routes = [route for route in app.router.routes if isinstance(route, ObjectRoute)]
    app.add_middleware(ObjectShortcut, routes=routes)


def pacer_for(plan: Plan, settings: Settings) -> Pacer | None:
    """The pacer to stream ``plan``'s body with, or None when it fits in one chunk: then it is
    read at once (no hop per chunk, no close callback or disconnect watcher, and a failed read
    still gets a clean error status) and sent as one message."""
    if body_length(plan) <= settings.chunk_size:
        return None
    return Pacer(settings.min_chunk_size, settings.chunk_size)


def get_object(
    key: str,
    request: Request,
    storage: StorageDep,
    settings: SettingsDep,
    download: Download = None,
) -> ObjectResponse:
    """Stream an object (blocking storage, run in FastAPI's threadpool)."""
    body = storage.open(*open_arguments(request, key, settings))
    try:
        plan = plan_object(request, body.meta, settings, download)
        pacer = pacer_for(plan, settings)
        chunks = iter_plan(body, plan, pacer or settings.chunk_size)
        content = b"".join(chunks) if pacer is None else None
    except BaseException:
        body.close()
        raise
    if content is not None:
        body.close()
        return ObjectResponse(plan, content=content)
    close = partial(run_in_threadpool, body.close)
    return ObjectResponse(plan, chunks, close=close, pacer=pacer)


async def aget_object(
    key: str,
    request: Request,
    storage: AsyncStorageDep,
    settings: SettingsDep,
    download: Download = None,
) -> ObjectResponse:
    """Stream an object (async storage, on the event loop)."""
    body = await storage.open(*open_arguments(request, key, settings))
    try:
        plan = plan_object(request, body.meta, settings, download)
        pacer = pacer_for(plan, settings)
        chunks = await aiter_plan(body, plan, pacer or settings.chunk_size)
        content = b"".join([chunk async for chunk in chunks]) if pacer is None else None
    except BaseException:
        await body.aclose()
        raise
    if content is not None:
        await body.aclose()
        return ObjectResponse(plan, content=content)
    return ObjectResponse(plan, chunks, close=body.aclose, pacer=pacer)
