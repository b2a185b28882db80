"""``GET /``: what this proxy is and where to go next, as HTML for a browser (``Accept`` prefers
text/html) and JSON otherwise. It names the backend, never credentials, the S3 endpoint or the
local root; like ``/healthz`` it stays open when access control is on."""

from __future__ import annotations

from html import escape
from typing import Any, Literal

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response

from proxy.config import Settings
from proxy.http.accept import prefers_html
from proxy.version import __version__

# name -> (path, what a newcomer finds there)
_LINKS = {
    "docs": ("/docs", "the API, in Swagger UI"),
    "openapi": ("/openapi.json", "the OpenAPI document"),
    "healthz": ("/healthz", "liveness"),
    "readyz": ("/readyz", "readiness: the backend answers"),
    "metrics": ("/metrics", "Prometheus metrics"),
}
_HEADERS = {"vary": "Accept", "cache-control": "no-cache"}
_HTML_HEADERS = {**_HEADERS, "content-security-policy": "default-src 'none'"}


class Backend(BaseModel):
    """Where objects come from: the local disk, or an S3 bucket (and key prefix)."""

    kind: Literal["local", "s3"]
    client: Literal["sync", "async", "boto3", "aiobotocore"]
    bucket: str | None = None
    prefix: str | None = None
    public: bool | None = None  # a mount's: no credentials needed
    redirect: bool | None = None  # a mount's: GETs answered with 307 to S3


class Landing(BaseModel):
    """The landing page's facts (the JSON answer)."""

    service: str
    version: str
    objects: str
    backend: Backend | None = None  # the single backend, without mounts
    mounts: dict[str, Backend] | None = None  # with PROXY_MOUNTS: each mount's
    slice_cache: bool
    access_control: bool
    writes: bool = False  # some mount takes PUT and DELETE (PROXY_WRITES)
    links: dict[str, str]


def backend_of(settings: Settings) -> Backend:
    """What a (mount's) settings serve, without endpoint, root or credentials."""
    if settings.backend == "s3":
        return Backend(
            kind="s3",
            client=settings.s3_client,
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
        )
    return Backend(kind="local", client=settings.flavor)


def landing_for(settings: Settings, root_path: str = "") -> Landing:
    """The facts for ``settings``; links are prefixed with the app's ``root_path``."""
    mounts = settings.mount_list()
    backend, by_mount, objects = None, None, "/objects/{key}"
    if len(mounts) == 1 and not mounts[0].name:
        backend = backend_of(settings)
    else:
        objects = "/objects/{mount}/{key}"
        by_mount = {
            mount.name: backend_of(mount.settings).model_copy(
                update={"public": mount.public, "redirect": mount.redirect}
            )
            for mount in mounts
        }
    links = {name: root_path + path for name, (path, _) in _LINKS.items()}
    if not settings.metrics:
        del links["metrics"]
    return Landing(
        service="media object proxy",
        version=__version__,
        objects=root_path + objects,
        backend=backend,
        mounts=by_mount,
        slice_cache=any(mount.settings.cache_dir is not None for mount in mounts),
        access_control=settings.auth_enabled,
        writes=any(mount.settings.writes for mount in mounts),
        links=links,
    )


def _where(backend: Backend) -> str:
    where = f"{escape(backend.kind)} ({escape(backend.client)})"
    if backend.kind == "s3":
        where += f", bucket <code>{escape(backend.bucket or '')}</code>"
        where += f", prefix <code>{escape(backend.prefix or '')}</code>"
    if backend.public:
        where += ", public"
    if backend.redirect:
        where += ", GETs redirected to S3"
    return where


def render_html(landing: Landing) -> str:
    """A small page without script or style; every interpolated value is escaped."""
    if landing.backend is not None:
        where = _where(landing.backend)
    else:
        items = "".join(
            f"<li><code>{escape(name)}/</code>: {_where(backend)}</li>"
            for name, backend in (landing.mounts or {}).items()
        )
        where = f"mounts<ul>{items}</ul>"
    access = "on: objects need a bearer key or a signed URL" if landing.access_control else "off"
    writes = "on: PUT and DELETE with write credentials" if landing.writes else "off"
    links = "".join(
        f'<li><a href="{escape(url)}">{escape(url)}</a>: {escape(_LINKS[name][1])}</li>\n'
        for name, url in landing.links.items()
    )
    title = escape(f"{landing.service} {landing.version}")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head>\n<body>\n<h1>{title}</h1>\n"
        f"<p>Objects are served at <code>{escape(landing.objects)}</code>, whole or in ranges."
        "</p>\n<dl>\n"
        f"<dt>backend</dt><dd>{where}</dd>\n"
        f"<dt>slice cache</dt><dd>{'on' if landing.slice_cache else 'off'}</dd>\n"
        f"<dt>access control</dt><dd>{access}</dd>\n"
        f"<dt>writes</dt><dd>{writes}</dd>\n</dl>\n<ul>\n{links}</ul>\n</body></html>\n"
    )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Landing,
        "description": "JSON, or a small HTML page when Accept prefers text/html",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
}


def add_landing_route(app: FastAPI) -> None:
    """GET and HEAD ``/``, documented under the ``about`` tag."""

    async def landing(request: Request) -> Response:
        facts = landing_for(request.app.state.settings, request.scope.get("root_path", ""))
        if prefers_html(request.headers.get("accept")):
            return Response(render_html(facts), media_type="text/html", headers=_HTML_HEADERS)
        body = facts.model_dump_json(exclude_none=True)
        return Response(body, media_type="application/json", headers=_HEADERS)

    for method, operation_id in (("GET", "landing"), ("HEAD", "head_landing")):
        app.add_api_route(
            "/",
            landing,
            methods=[method],
            tags=["about"],
            summary="Landing page",
            operation_id=operation_id,
            response_class=Response,
            responses=_RESPONSES,
        )
