"""Listings: ``GET /objects/{prefix}/`` (and ``/objects/`` for the root) when ``PROXY_LISTING``
is on, as JSON Lines, a JSON array or a browse page, streamed page by page from the storage's
``listing`` (``proxy.storage.base.Lister``).

The two flavours share everything but the iteration: a blocking storage's pages are read and
rendered by a ``def`` generator, one worker-thread hop per page (``aiter_blocking``); an async
storage's by an ``async def`` one. The first page is read before the response starts, so a
failure there is the usual JSON error; a failure after it cuts the stream (the server aborts the
connection), never a short listing presented as complete. What a listing shows is scoped to the
caller's grant (``proxy.auth``): asked for a folder above its scope, the storage is asked for the
scope alone and the answer folded back to the folder's level.

With mounts, each mount lists its own storage (its ``listing`` option) under
``/objects/{mount}/``, and ``/objects/`` lists the mounts themselves as folders.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, quote, urlencode

import anyio
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from proxy.auth import (
    LISTING_PARAMETERS,
    Grant,
    authorize_listing,
    authorize_mounts,
    read_once,
    signed_like,
)
from proxy.config import Mount, Settings
from proxy.http import listing_html as html
from proxy.http.listing import (
    HTML_PAGE,
    MEDIA_TYPES,
    BadQuery,
    ListingQuery,
    end_json,
    entry_json,
    folder_json,
)
from proxy.http.plan import error_body
from proxy.storage.base import (
    AsyncLister,
    Folder,
    Listed,
    Lister,
    aiter_blocking,
    folded,
    listed_name,
)
from proxy.storage.keys import check_prefix, listable

_HEADERS = {"vary": "Accept", "cache-control": "no-cache"}
# A signed listing's links carry signatures: never send them on in a Referer.
_HTML_HEADERS = {**_HEADERS, "content-security-policy": html.CSP, "referrer-policy": "no-referrer"}


class Links:
    """The links of a browse page: ``/objects/`` plus the mount's path and the percent-encoded
    key (every byte but unreserved ones and ``/``), signed like the listing's own URL when that
    was signed (the mount's path included)."""

    def __init__(self, settings: Settings, grant: Grant, root_path: str, mount: str = "") -> None:
        self._settings = settings
        self._grant = grant
        self._mount = mount
        self._base = f"{root_path}/objects/{quote(mount)}"

    def href(self, key: str, extra: str = "") -> str | None:
        """The link to ``key`` (an object, or a folder's listing) with ``extra`` query (encoded);
        None for a folder above a signed listing's scope, which its signature does not grant."""
        query = extra
        if self._grant.kid is not None:
            if not key.startswith(self._grant.scope):
                return None
            # The link's own parameters are signed with it: a signed request carries no other.
            params = parse_qsl(extra, keep_blank_values=True)
            query = signed_like(self._settings, self._grant, self._mount + key, params)
        return self._base + quote(key) + (f"?{query}" if query else "")


class Renderer(Protocol):
    """One format's bytes: the start, one chunk per page of entries, the end."""

    def start(self) -> str: ...

    def page(self, entries: list[Listed]) -> str: ...

    def end(self, count: int, next_after: str | None) -> str: ...


class JsonLines:
    def start(self) -> str:
        return ""

    def page(self, entries: list[Listed]) -> str:
        return "".join(
            (folder_json(entry.prefix) if isinstance(entry, Folder) else entry_json(entry)) + "\n"
            for entry in entries
        )

    def end(self, count: int, next_after: str | None) -> str:
        return end_json(count, next_after) + "\n"


class JsonArray(JsonLines):
    def __init__(self) -> None:
        self._first = True

    def start(self) -> str:
        return "["

    def page(self, entries: list[Listed]) -> str:
        if not entries:
            return ""
        lines = super().page(entries).rstrip("\n").replace("\n", ",\n")
        lead, self._first = ("\n" if self._first else ",\n"), False
        return lead + lines

    def end(self, count: int, next_after: str | None) -> str:
        return "\n]\n"


class BrowsePage:
    """The HTML page: the head at once; the rows at the end, folders first (a page holds at
    most ``HTML_PAGE`` entries, so this keeps little)."""

    def __init__(self, prefix: str, query: ListingQuery, links: Links, mount: str = "") -> None:
        self._prefix = prefix
        self._mount = mount
        self._query = query
        self._links = links
        self._folders: list[str] = []
        self._objects: list[str] = []

    def start(self) -> str:
        crumbs: list[tuple[str, str | None]] = [("root", self._links.href(""))]
        parts = self._prefix.split("/")[:-1]
        for depth, part in enumerate(parts):
            crumbs.append((part, self._links.href("/".join(parts[: depth + 1]) + "/")))
        crumbs[-1] = (crumbs[-1][0], None)  # the folder shown: no link
        return html.page_start(f"/{self._mount}{self._prefix}", crumbs)

    def page(self, entries: list[Listed]) -> str:
        start = len(self._prefix)
        for entry in entries:
            if isinstance(entry, Folder):
                href = self._links.href(entry.prefix, self._keep())
                if href is not None:
                    self._folders.append(html.folder_row(entry.prefix[start:], href))
                continue
            href = self._links.href(entry.key)
            download = self._links.href(entry.key, "download")
            if href is not None and download is not None:
                self._objects.append(html.object_row(entry, entry.key[start:], href, download))
        return ""

    def end(self, count: int, next_after: str | None) -> str:
        more = None
        if next_after is not None:
            more = self._links.href(self._prefix, self._keep(after=next_after))
        rows = "".join(self._folders) + "".join(self._objects)
        return rows + html.page_end(count, more)

    def _keep(self, **extra: str) -> str:
        """The query that keeps this page's choices (recursive, limit) on a link."""
        query = {"recursive": "true"} if self._query.recursive else {}
        if self._query.limit is not None and self._query.limit != HTML_PAGE:
            query["limit"] = str(self._query.limit)
        return urlencode({**query, **extra}, quote_via=quote)


class Listing:
    """One listing response: which entries it shows (after ``?after``, within the key policy,
    folded to the prefix's level when the storage was asked for a narrower scope, up to
    ``?limit``) and their bytes, page by page."""

    def __init__(self, query: ListingQuery, fold: str | None, renderer: Renderer) -> None:
        self._query = query
        self._fold = fold  # the level to fold entries to, or None
        self._renderer = renderer
        self.count = 0
        self.done = False
        self._last = ""  # the last name shown
        self._next_after: str | None = None

    def start(self) -> bytes:
        return self._renderer.start().encode()

    def chunk(self, page: list[Listed]) -> bytes:
        entries = page if self._fold is None else folded(page, self._fold)
        after, limit = self._query.after, self._query.limit
        shown: list[Listed] = []
        for entry in entries:
            name = listed_name(entry)
            if name <= after or name == self._last:
                continue  # S3 gives a folder again after a StartAfter inside it; folds repeat
            if not listable(name, isinstance(entry, Folder)):
                continue
            if self.count == limit:
                self._next_after, self.done = self._last, True
                break
            shown.append(entry)
            self.count += 1
            self._last = name
        return self._renderer.page(shown).encode()

    def end(self) -> bytes:
        return self._renderer.end(self.count, self._next_after).encode()


def iter_listing(
    listing: Listing, first: list[Listed], pages: Iterator[list[Listed]]
) -> Iterator[bytes]:
    """The body of a blocking storage's listing, ``first`` page already read."""
    yield listing.start() + listing.chunk(first)
    while not listing.done and (page := next(pages, None)) is not None:
        if chunk := listing.chunk(page):
            yield chunk
    yield listing.end()


async def aiter_listing(
    listing: Listing, first: list[Listed], pages: AsyncIterator[list[Listed]]
) -> AsyncIterator[bytes]:
    """The async twin of ``iter_listing``."""
    yield listing.start() + listing.chunk(first)
    while not listing.done and (page := await anext(pages, None)) is not None:
        if chunk := listing.chunk(page):
            yield chunk
    yield listing.end()


class ListingResponse(StreamingResponse):
    """Streams a listing's chunks (HEAD: the headers alone) and always closes them, and with
    them the storage's pages, also when the client leaves or a page fails mid-stream (which
    propagates, so the server aborts the connection)."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[Any]],
        head: bool,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        super().__init__(chunks, headers=headers, media_type=media_type)
        self._chunks = chunks
        self._close = close
        self._head = head

    async def stream_response(self, send: Send) -> None:
        try:
            if not self._head:
                await super().stream_response(send)
                return
            start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await cast(Any, self._chunks).aclose()
                finally:
                    await self._close()


def bad_query(detail: str) -> Response:
    return Response(error_body("invalid_request", detail), 400, media_type="application/json")


class ListingEndpoint:
    """Listings; ``ObjectEndpoint`` hands it the keys ending in ``/`` of a mount that lists,
    with the mount, its storage and its flavour (``sync``)."""

    async def get_response(
        self,
        request: Request,
        key: str,
        mount: Mount | None = None,
        storage: Any = None,
        sync: bool = False,
    ) -> Response:
        """``key``: the path below ``/objects/``; the listing is of its part within ``mount``."""
        mount = mount or Mount("", request.app.state.settings)
        grant = await authorize_listing(request, key, mount)
        prefix = check_prefix(key[len(mount.path) :])
        # Each option once (DuplicateParameter, a 400), also with access control off.
        read_once(request.query_params.multi_items(), LISTING_PARAMETERS)
        try:
            query = ListingQuery.from_request(request.query_params, request.headers.get("accept"))
        except BadQuery as exc:
            return bad_query(str(exc))
        settings: Settings = mount.settings
        # Asked for a folder above the caller's scope: only the scope is listed, folded back.
        asked, fold = (grant.scope, prefix) if len(grant.scope) > len(prefix) else (prefix, None)
        if fold is not None and query.recursive:
            fold = None
        renderer: Renderer = JsonLines() if query.format == "jsonl" else JsonArray()
        if query.format == "html":
            links = Links(settings, grant, request.scope.get("root_path", ""), mount.path)
            renderer = BrowsePage(prefix, query, links, mount.path)
        listing = Listing(query, fold, renderer)
        chunks: AsyncIterator[bytes]
        if storage is None:
            storage = request.app.state.storage
        if sync:
            pages = cast(Lister, storage).listing(asked, query.recursive, query.after)
            close: Callable[[], Awaitable[Any]]
            close = partial(run_in_threadpool, getattr(pages, "close", _nothing))
            first = await _first(run_in_threadpool(next, pages, []), close)
            chunks = aiter_blocking(iter_listing(listing, first, pages))
        else:
            apages = cast(AsyncLister, storage).listing(asked, query.recursive, query.after)
            close = getattr(apages, "aclose", _anothing)
            first = await _first(anext(apages, []), close)
            chunks = aiter_listing(listing, first, apages)
        headers = _HTML_HEADERS if query.format == "html" else _HEADERS
        head = request.method == "HEAD"
        return ListingResponse(chunks, close, head, headers, MEDIA_TYPES[query.format])


async def list_mounts(request: Request, mounts: list[Mount]) -> Response:
    """``/objects/`` with several mounts: those the request may see, as folders, in any of the
    listing formats (a listing of the mounts' own content is one level down)."""
    grant, shown = await authorize_mounts(request, mounts)
    read_once(request.query_params.multi_items(), LISTING_PARAMETERS)
    try:
        query = ListingQuery.from_request(request.query_params, request.headers.get("accept"))
    except BadQuery as exc:
        return bad_query(str(exc))
    settings: Settings = request.app.state.settings
    renderer: Renderer = JsonLines() if query.format == "jsonl" else JsonArray()
    if query.format == "html":
        links = Links(settings, grant, request.scope.get("root_path", ""))
        renderer = BrowsePage("", query, links)
    folders: list[Listed] = [Folder(mount.path) for mount in sorted(shown, key=_path)]
    chunks = aiter_listing(Listing(query, None, renderer), folders, _no_pages())
    headers = _HTML_HEADERS if query.format == "html" else _HEADERS
    head = request.method == "HEAD"
    return ListingResponse(chunks, _anothing, head, headers, MEDIA_TYPES[query.format])


def _path(mount: Mount) -> str:
    return mount.path


async def _no_pages() -> AsyncIterator[list[Listed]]:
    return
    yield


async def _first(
    page: Awaitable[list[Listed]], close: Callable[[], Awaitable[Any]]
) -> list[Listed]:
    """The first page (a failure: the pages closed, the error answered as JSON)."""
    try:
        return await page
    except BaseException:
        with anyio.CancelScope(shield=True):
            await close()
        raise


def _nothing() -> None:
    return None


async def _anothing() -> None:
    return None
