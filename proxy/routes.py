"""The object endpoints, side by side: ``def`` (sync storage) and ``async def`` (async storage).

Both build the same ``Plan`` with ``plan_object`` and differ only in their I/O calls.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor

from proxy.auth import authorize
from proxy.config import Settings
from proxy.http.disposition import content_disposition, download_filename
from proxy.http.hint import ReadHint, read_hint
from proxy.http.plan import Plan, plan_response
from proxy.responses import ObjectResponse, aiter_plan, iter_plan
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


def open_arguments(request: Request, key: str, settings: Settings) -> tuple[str, ReadHint]:
    """The checked key and what the first storage call should fetch."""
    return check_key(key), read_hint(request.method, request.headers, settings.max_ranges)


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
        request.headers,
        meta,
        cache_control=settings.cache_control,
        max_ranges=settings.max_ranges,
        extra_headers=extra,
    )


# Access control runs first, the same for both flavours (a no-op unless keys are configured).
sync_router = APIRouter(tags=["objects"], dependencies=[Depends(authorize)])
async_router = APIRouter(tags=["objects"], dependencies=[Depends(authorize)])


@sync_router.get(OBJECT_PATH, operation_id="get_object", responses=OBJECT_RESPONSES)
@sync_router.head(OBJECT_PATH, operation_id="head_object", responses=OBJECT_RESPONSES)
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
        chunks = iter_plan(body, plan, settings.chunk_size)
    except BaseException:
        body.close()
        raise
    close = partial(run_in_threadpool, body.close)
    return ObjectResponse(plan, chunks, close=close, chunk_size=settings.chunk_size)


@async_router.get(OBJECT_PATH, operation_id="get_object", responses=OBJECT_RESPONSES)
@async_router.head(OBJECT_PATH, operation_id="head_object", responses=OBJECT_RESPONSES)
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
        chunks = await aiter_plan(body, plan, settings.chunk_size)
    except BaseException:
        await body.aclose()
        raise
    return ObjectResponse(plan, chunks, close=body.aclose, chunk_size=settings.chunk_size)
