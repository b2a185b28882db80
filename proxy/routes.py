"""The object endpoint: GET and HEAD ``/objects/{key}``, a Starlette ``Route`` on the FastAPI app.

The two flavours, side by side, differ only in their I/O calls: ``get_object`` (``def``, run in
the threadpool, blocking storage) and ``aget_object`` (``async def``, async storage). Both read the
request's fields once (``ObjectRequest``), open with a read hint, plan, and stream. A ``Route``
to an ASGI endpoint, not an ``APIRoute``: FastAPI's per-request parameter solving nearly doubled
a small range's CPU (see docs/design.md); the app's router and exception handlers serve it, and
``document_object_routes`` describes it in the OpenAPI document. With listings on, a key
ending in ``/`` goes to ``proxy.listing`` instead.

Mounts (``proxy.mounts``): the key's first segments name the mount, whose storage, flavour,
settings and policy serve the rest; both flavours are served by this one endpoint, side by side
in one process. A redirecting mount answers a GET with ``307`` to a presigned S3 URL, unless a
precondition decides it (304, 412), which needs the metadata and so the proxy.
"""

from __future__ import annotations

from functools import partial
from typing import cast

from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from proxy.auth import OBJECT_PARAMETERS, WRITE_METHODS, authorize, read_once
from proxy.config import Settings
from proxy.http.disposition import content_disposition, download_filename
from proxy.http.plan import Plan, body_length, plan_response
from proxy.http.request import ObjectRequest
from proxy.listing import ListingEndpoint, list_mounts
from proxy.mounts import MountTable, ServedMount
from proxy.openapi import document_object_routes
from proxy.responses import FileChunks, ObjectResponse, Pacer, aiter_plan, iter_plan
from proxy.storage.base import (
    METADATA_ONLY,
    WHOLE,
    AsyncStorage,
    Body,
    ObjectMeta,
    ReadHint,
    Storage,
)
from proxy.storage.errors import ObjectNotFound
from proxy.storage.keys import check_request_key
from proxy.storage.mediatypes import is_active_content
from proxy.uploads import WriteEndpoint


class ObjectKeyConvertor(PathConvertor):
    """Starlette's ``path`` with one change: ``.*`` stops at a newline and the route's ``$`` also
    matches before a final one, so ``/objects/a.txt%0A`` would arrive as key ``a.txt``. This
    regex takes every character, and ``check_request_key`` refuses the control characters."""

    regex = r"[\s\S]*"


register_url_convertor("objectkey", ObjectKeyConvertor())

OBJECT_PREFIX = "/objects/"
OBJECT_PATH = OBJECT_PREFIX + "{key:objectkey}"
OBJECT_METHODS = "GET, HEAD"
WRITE_OBJECT_METHODS = "GET, HEAD, PUT, DELETE"  # where some mount writes
SANDBOX = "sandbox; default-src 'none'"
NO_MOUNT = "the key names no mount"
# Statuses a precondition answers on a redirecting mount; anything else is S3's to send.
DECIDED_HERE = (304, 412)


def read_hint(request: ObjectRequest) -> ReadHint:
    """The fetch most likely to serve this request without a second storage call: S3 answers a
    GetObject carrying the Range with the metadata the plan needs. Requests that may well end
    in 304/412, HEAD, multipart and ``-0`` ask for metadata only."""
    if request.method != "GET" or request.conditional:
        return METADATA_ONLY
    if request.range is None:
        return WHOLE  # no Range, or one that is ignored: the whole object
    single = request.single_range()
    return METADATA_ONLY if single is None else ReadHint(True, single)


def plan_object(
    request: ObjectRequest,
    meta: ObjectMeta,
    settings: Settings,
    download: str | None,
    fields: tuple[tuple[str, str], ...] = (),
) -> Plan:
    """The HTTP decisions for one request: conditionals, ranges, headers (with the header
    ``fields`` the storage stack added: ``Reply.fields``)."""
    extra = fields
    active = not settings.inline_active_content and is_active_content(meta.media_type)
    if download is not None or active:
        # Stored HTML/SVG/XML would run script on the proxy's origin: never render it inline.
        name = download_filename(meta.key, download)
        extra += (("content-disposition", content_disposition(name)),)
    if active:
        extra += (("content-security-policy", SANDBOX),)
    return plan_response(request, meta, cache_control=settings.cache_control, extra_headers=extra)


def pacer_for(plan: Plan, settings: Settings) -> Pacer | None:
    """The pacer to stream ``plan``'s body with, or None when it fits in one chunk: then it is
    sent at once (no hop per chunk, no disconnect watcher, and a failed read still gets a
    clean error status): read whole and sent as one message, or from a local file by
    zero-copy sends where the server offers them (``ObjectResponse(at_once=True)`` decides,
    seeing the server's scope)."""
    if body_length(plan) <= settings.chunk_size:
        return None
    return Pacer(settings.min_chunk_size, settings.chunk_size)


def get_object(
    key: str, request: ObjectRequest, storage: Storage, settings: Settings, download: str | None
) -> ObjectResponse:
    """Stream an object (blocking storage, run in the threadpool)."""
    reply = storage.open(key, read_hint(request))
    body = reply.body
    try:
        plan = plan_object(request, reply.meta, settings, download, reply.fields)
        pacer = pacer_for(plan, settings)
        chunks = iter_plan(body, plan, pacer or settings.chunk_size)
        if pacer is None and type(chunks) is FileChunks:  # a local file: read or sent later
            return ObjectResponse(plan, chunks, close=partial(_close_inline, body), at_once=True)
        content = b"".join(chunks) if pacer is None else None
    except BaseException:
        body.close()
        raise
    if content is not None:
        body.close()
        return ObjectResponse(plan, content=content)
    close = partial(run_in_threadpool, body.close)
    return ObjectResponse(plan, chunks, close=close, pacer=pacer)


async def _close_inline(body: Body) -> None:
    body.close()  # a local file's: os.close, no worker thread needed


async def aget_object(
    key: str,
    request: ObjectRequest,
    storage: AsyncStorage,
    settings: Settings,
    download: str | None,
) -> ObjectResponse:
    """Stream an object (async storage, on the event loop)."""
    reply = await storage.open(key, read_hint(request))
    body = reply.body
    try:
        plan = plan_object(request, reply.meta, settings, download, reply.fields)
        pacer = pacer_for(plan, settings)
        chunks = await aiter_plan(body, plan, pacer or settings.chunk_size)
        if pacer is None and type(chunks) is FileChunks:  # a local file: read or sent later
            return ObjectResponse(plan, chunks, close=body.aclose, at_once=True)
        content = b"".join([chunk async for chunk in chunks]) if pacer is None else None
    except BaseException:
        await body.aclose()
        raise
    if content is not None:
        await body.aclose()
        return ObjectResponse(plan, content=content)
    return ObjectResponse(plan, chunks, close=body.aclose, pacer=pacer)


def preconditions(key: str, request: ObjectRequest, storage: Storage, settings: Settings) -> Plan:
    """The plan for ``request`` from the object's metadata alone (no body read)."""
    reply = storage.open(key, METADATA_ONLY)
    try:
        return plan_object(request, reply.meta, settings, None, reply.fields)
    finally:
        reply.body.close()


async def apreconditions(
    key: str, request: ObjectRequest, storage: AsyncStorage, settings: Settings
) -> Plan:
    """The async twin of ``preconditions``."""
    reply = await storage.open(key, METADATA_ONLY)
    try:
        return plan_object(request, reply.meta, settings, None, reply.fields)
    finally:
        await reply.body.aclose()


async def redirect(
    mount: ServedMount,
    key: str,
    request: ObjectRequest,
    storage: Storage | AsyncStorage,
    download: str | None,
) -> Response:
    """A redirecting mount's GET: 304 or 412 when a precondition decides (the proxy's answer,
    from the metadata), else 307 to a presigned S3 URL; ``?download`` becomes S3's
    ``response-content-disposition``."""
    assert mount.presign is not None
    if request.conditional:
        if mount.sync:
            plan = await run_in_threadpool(
                preconditions, key, request, cast(Storage, storage), mount.settings
            )
        else:
            plan = await apreconditions(key, request, cast(AsyncStorage, storage), mount.settings)
        if plan.status in DECIDED_HERE:
            return ObjectResponse(plan, content=plan.tail)
    disposition = None
    if download is not None:
        disposition = content_disposition(download_filename(key, download))
    # On the loop for both flavours: a URL reused (a tenth of the TTL) or local SigV4 work
    # (~0.25 ms), the credentials resolved at start (a thread hop cost ~0.2 ms more).
    url = mount.presign(key, disposition)
    return Response(status_code=307, headers={"location": url, "cache-control": "no-store"})


class ObjectEndpoint:
    """``/objects/{key}`` as an ASGI app, in the shape of Starlette's ``StaticFiles``
    (``__call__`` -> ``get_response`` -> response): the key's mount (``MountTable.find``;
    none: 404), access control first when the mount has it (the same for both flavours), then
    the mount's flavour's function. Its errors propagate to the app's exception handlers
    (Starlette's ``ExceptionMiddleware``). A key ending in ``/`` (or empty) asks for a listing:
    ``listing`` serves it when the mount lists; without it, ``check_request_key`` answers 404.
    ``/objects/`` with several mounts lists them, when listings are on."""

    def __init__(self, listing: bool = False) -> None:
        self.listing = ListingEndpoint()
        self.list_mounts = listing
        self.writes = WriteEndpoint()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.get_response(Request(scope, receive, send))
        await response(scope, receive, send)

    async def get_response(self, request: Request) -> Response:
        key: str = request.path_params["key"]
        state = request.app.state
        mounts: MountTable = state.mounts
        found = mounts.find(key)
        if found is None:
            if not key and self.list_mounts:
                return await list_mounts(request, [served.mount for served in mounts.mounts])
            check_request_key(key)  # an invalid key is a 400 wherever it points
            raise ObjectNotFound(NO_MOUNT)
        mount, within = found
        scope = request.scope
        scope["mount"] = mount.name  # for the access log and metrics
        # The root mount's storage is the app's (which tests replace to inject failures).
        storage = state.storage if mount is mounts.root else mount.storage
        if scope["method"] in WRITE_METHODS:  # routed here only where some mount writes
            if mount.writer is None:
                raise HTTPException(405, headers={"allow": OBJECT_METHODS})
            return await self.writes.get_response(request, mount, within)
        if mount.listing and (not within or within[-1] == "/"):
            return await self.listing.get_response(request, key, mount.mount, storage, mount.sync)
        if mount.auth:
            await authorize(request, key, mount.mount)
        settings = mount.settings
        # Parsing an absent query string still cost 2% of a small range.
        download = None
        if scope["query_string"]:  # each parameter read once: one given twice is a 400
            params = read_once(request.query_params.multi_items(), OBJECT_PARAMETERS)
            download = params.get("download")
        fields = ObjectRequest.from_raw(scope["method"], scope["headers"], settings.max_ranges)
        within = check_request_key(within)
        if mount.presign is not None and fields.method == "GET":
            return await redirect(mount, within, fields, storage, download)
        if mount.sync:
            sync_storage = cast(Storage, storage)
            return await run_in_threadpool(
                get_object, within, fields, sync_storage, settings, download
            )
        return await aget_object(within, fields, cast(AsyncStorage, storage), settings, download)


class ObjectRoute(Route):
    """A Starlette ``Route`` that names itself in the request's scope, as FastAPI's ``APIRoute``
    does (FastAPI's router sets ``scope["route"]`` for its own routes only): metrics and the
    access log label requests with their route's template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def add_object_routes(app: FastAPI, settings: Settings) -> None:
    """GET (and HEAD, which Starlette adds to a GET route) of an object, served by the flavour's
    endpoint, and described in the app's OpenAPI document.

    The route goes first: the router tries routes in order, and the documentation and health
    routes before it cost a ranged GET ~8% more instructions (callgrind, in process)."""
    endpoint = ObjectEndpoint(listing=settings.listing)
    writes = any(mount.settings.writes for mount in settings.mount_list())
    methods = ["GET", "PUT", "DELETE"] if writes else ["GET"]
    app.state.object_methods = WRITE_OBJECT_METHODS if writes else OBJECT_METHODS
    app.router.routes.insert(0, ObjectRoute(OBJECT_PATH, endpoint, methods=methods, name="object"))
    mounts = [mount for mount in settings.mount_list() if mount.name]  # none: the root's
    document_object_routes(app, settings.listing, mounts, writes)
