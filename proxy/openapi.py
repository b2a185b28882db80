"""The object routes' entries in the OpenAPI document: they are Starlette ``Route``s (see
``proxy.routes``), which FastAPI's generator skips, so they are described here by hand.

With mounts (``PROXY_MOUNTS``) the object operations move below ``/objects/{mount}/``
(``mount_paths``): ``mount`` is an enum of the names, each one's policy in its description.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from proxy.config import Mount

_OBJECT_PARAMETERS = [
    {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "title": "Key"}},
    {
        "name": "download",
        "in": "query",
        "required": False,
        "description": "Present: send Content-Disposition: attachment (optionally with this name)",
        "schema": {"type": "string", "title": "Download"},
    },
]
_OBJECT_RESPONSES: dict[str, dict[str, Any]] = {
    "200": {
        "description": "The whole object",
        "content": {"application/json": {"schema": {}}, "application/octet-stream": {}},
    },
    "206": {"description": "One range, or multipart/byteranges"},
    "304": {"description": "Not modified"},
    "400": {"description": "Invalid key"},
    "401": {"description": "Credentials required (bearer key or signed URL)"},
    "403": {"description": "Not allowed to read this object"},
    "404": {"description": "No such object, or a key ending in '/': listings are not enabled"},
    "412": {"description": "A precondition failed"},
    "416": {"description": "Range not satisfiable"},
}


def _operation(operation_id: str, summary: str) -> dict[str, Any]:
    return {
        "tags": ["objects"],
        "summary": summary,
        "description": "Stream an object, whole or in ranges (RFC 9110 §14), with conditionals.",
        "operationId": operation_id,
        "parameters": _OBJECT_PARAMETERS,
        "responses": _OBJECT_RESPONSES,
    }


_LISTING_PARAMETERS = [
    {"name": "prefix", "in": "path", "required": True, "schema": {"type": "string"}},
    *(
        {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
        for name, text, schema in [
            ("format", "jsonl, json or html (else by Accept)", {"enum": ["jsonl", "json", "html"]}),
            ("recursive", "every key below, no folders", {"type": "boolean"}),
            ("limit", "the most entries", {"type": "integer", "minimum": 1}),
            ("after", "only names after this one", {"type": "string"}),
        ]
    ),
]
_LISTING_OPERATION: dict[str, Any] = {
    "tags": ["objects"],
    "summary": "List a prefix",
    "description": "The keys and folders below the prefix in S3's order, streamed: JSON Lines "
    '(then {"complete": true, "count": N}), a JSON array, or an HTML browse page.',
    "operationId": "list_prefix",
    "parameters": _LISTING_PARAMETERS,
    "responses": {
        "200": {
            "description": "The listing (empty when nothing lies below the prefix)",
            "content": {
                "application/jsonl": {},
                "application/json": {"schema": {"type": "array", "items": {}}},
                "text/html": {},
            },
        },
        **{code: _OBJECT_RESPONSES[code] for code in ("400", "401", "403")},
        "503": {"description": "The storage backend is unavailable"},
    },
}


_WRITE_HEADERS = [
    {"name": name, "in": "header", "required": False, "description": text, "schema": schema}
    for name, text, schema in [
        ("If-None-Match", "`*`: store only if no object is at the key", {"enum": ["*"]}),
        ("If-Match", "store (or delete) only this version: its ETag, or `*`", {"type": "string"}),
        ("Content-MD5", "base64 MD5 of the body, verified before storing", {"type": "string"}),
        ("x-amz-checksum-sha256", "base64 SHA-256 of the body, verified", {"type": "string"}),
    ]
]
_WRITE_RESPONSES: dict[str, dict[str, Any]] = {
    "400": {"description": "Invalid key or header field; bad_digest: the body fails its digest"},
    "401": {"description": "Credentials required: writes always need them"},
    "403": {"description": "The credentials may not write here (a read-only key)"},
    "404": {"description": "No object at this key (DELETE)"},
    "405": {"description": "Writes are not enabled for this mount"},
    "412": {"description": "If-Match or If-None-Match failed: nothing was stored or removed"},
}
_PUT_OPERATION: dict[str, Any] = {
    "tags": ["objects"],
    "summary": "Put Object",
    "description": "Store the request body (streamed; chunked bodies too) as the object, "
    "visible only once whole. The media type is the request's Content-Type, else the key's.",
    "operationId": "put_object",
    "parameters": [_OBJECT_PARAMETERS[0], *_WRITE_HEADERS],
    "requestBody": {"required": True, "content": {"*/*": {"schema": {"format": "binary"}}}},
    "responses": {
        "201": {"description": "Stored: a new object (ETag and Location set)"},
        "200": {"description": "Stored: it replaced an object"},
        **_WRITE_RESPONSES,
        "413": {"description": "The body is larger than PROXY_MAX_UPLOAD_SIZE"},
    },
}
_DELETE_OPERATION: dict[str, Any] = {
    "tags": ["objects"],
    "summary": "Delete Object",
    "operationId": "delete_object",
    "parameters": [_OBJECT_PARAMETERS[0], _WRITE_HEADERS[1]],
    "responses": {"204": {"description": "Deleted"}, **_WRITE_RESPONSES},
}


def document_object_routes(
    app: FastAPI, listing: bool = False, mounts: Sequence[Mount] = (), writes: bool = False
) -> None:
    """Add GET and HEAD ``/objects/{key}`` (and, with ``listing``, GET ``/objects/{prefix}/``)
    to the OpenAPI document FastAPI generates (FastAPI's "Extending OpenAPI" recipe: the object
    route is a Starlette ``Route``, which it skips); with ``mounts``, below each mount
    (``mount_paths``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema["paths"]["/objects/{key}"] = {
                "get": _operation("get_object", "Get Object"),
                "head": _operation("head_object", "Head Object"),
            }
            if writes:
                schema["paths"]["/objects/{key}"] |= {
                    "put": _PUT_OPERATION,
                    "delete": _DELETE_OPERATION,
                }
            if listing:
                schema["paths"]["/objects/{prefix}/"] = {"get": _LISTING_OPERATION}
            if mounts:
                mount_paths(schema["paths"], mounts, listing)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- mounts ----------------------------------------------------------------------------------

MOUNTED_OBJECT = "/objects/{mount}/{key}"
_CREDENTIALS = {
    "any": "a bearer key or a signed URL",
    "keys": "bearer keys only",
    "signed": "signed URLs only",
}


def mount_paths(paths: dict[str, Any], mounts: Sequence[Mount], listing: bool) -> None:
    """Move the object operations of ``paths`` below the mounts: every operation documented at
    ``/objects/{key}`` (and ``/objects/{prefix}/``) is documented at ``/objects/{mount}/{key}``
    (and ``/objects/{mount}/{prefix}/``, for the mounts that list) instead, with a ``mount``
    path parameter first whose enum is the mount names; a GET there may answer 307 when some
    mount redirects. With ``listing``, ``/objects/`` lists the mounts.

    A name with ``/`` (``media/2024``) is one enum value: OpenAPI tools percent-encode a path
    parameter's ``/`` (Swagger UI: ``/objects/media%2F2024/clip.mp4``), which the server
    decodes before routing, so it reaches the mount; sent unencoded, it does too."""
    objects = paths.pop("/objects/{key}")
    listings = paths.pop("/objects/{prefix}/", None)
    parameter = _mount_parameter(mounts)
    mounted = {method: _below(operation, parameter) for method, operation in objects.items()}
    redirecting = [mount for mount in mounts if mount.redirect]
    if redirecting and "get" in mounted:
        responses = mounted["get"]["responses"]
        responses["307"] = _redirect_response(redirecting)
        responses["503"] = {"description": "A redirecting mount cannot presign (no credentials)"}
        mounted["get"]["responses"] = dict(sorted(responses.items()))
    paths[MOUNTED_OBJECT] = mounted
    listed = [mount for mount in mounts if mount.settings.listing]
    if listed:
        listed_get = listings["get"] if listings else _LISTING_OPERATION
        operation = _below(listed_get, _mount_parameter(listed))
        top = copy.deepcopy(operation)
        top["operationId"] = "list_mount"
        top["summary"] = "List a mount's top level"
        top["parameters"] = [p for p in top["parameters"] if p["name"] != "prefix"]
        paths["/objects/{mount}/"] = {"get": top}
        paths["/objects/{mount}/{prefix}/"] = {"get": operation}
    if listing:
        paths["/objects/"] = {"get": _list_mounts_operation()}


def policy(mount: Mount) -> str:
    """A mount's flavour-independent policy, in words: credentials, redirect, listing."""
    settings = mount.settings
    if mount.public or not settings.auth_enabled:
        parts = ["public: no credentials"]
    else:
        parts = [_CREDENTIALS[mount.auth]]
    if mount.redirect:
        parts.append(
            f"GET answers 307 to a presigned S3 URL valid {settings.redirect_ttl} s (HEAD and "
            "GETs that a precondition decides are answered here)"
        )
    if settings.listing:
        parts.append("lists its folders")
    return "; ".join(parts)


def _mount_parameter(mounts: Sequence[Mount]) -> dict[str, Any]:
    lines = "\n".join(f"- `{mount.name}`: {policy(mount)}" for mount in mounts)
    return {
        "name": "mount",
        "in": "path",
        "required": True,
        "description": "The mount: a name of one or more segments (a `/` in it may be sent "
        f"percent-encoded, as `%2F`).\n\n{lines}",
        "schema": {"type": "string", "title": "Mount", "enum": [m.name for m in mounts]},
    }


def _below(operation: dict[str, Any], parameter: dict[str, Any]) -> dict[str, Any]:
    """``operation`` with the ``mount`` path parameter first (a copy: the constants stay)."""
    moved = copy.deepcopy(operation)
    moved["parameters"] = [parameter, *moved.get("parameters", [])]
    return moved


def _redirect_response(redirecting: Sequence[Mount]) -> dict[str, Any]:
    names = ", ".join(f"`{mount.name}`" for mount in redirecting)
    return {
        "description": f"Redirecting mounts ({names}): the object is at the presigned S3 URL "
        "in `Location` (`?download` becomes its `response-content-disposition`); the client "
        "fetches it, ranges included, from S3",
        "headers": {
            "Location": {
                "description": "A presigned S3 GetObject URL",
                "schema": {"type": "string", "format": "uri"},
            }
        },
    }


def _list_mounts_operation() -> dict[str, Any]:
    listing = _LISTING_OPERATION
    return {
        "tags": ["objects"],
        "summary": "List the mounts",
        "description": "The mounts the request's credentials reach (and the public ones), as "
        "folders (`videos/`), in the formats of a listing.",
        "operationId": "list_mounts",
        "parameters": [
            p for p in listing["parameters"] if p["name"] in ("format", "limit", "after")
        ],
        "responses": copy.deepcopy(
            {code: listing["responses"][code] for code in ("200", "400", "401", "403")}
        ),
    }
