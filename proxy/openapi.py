"""The object routes' entries in the OpenAPI document: they are Starlette ``Route``s (see
``proxy.routes``), which FastAPI's generator skips, so they are described here by hand."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

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


def document_object_routes(app: FastAPI, listing: bool = False, writes: bool = False) -> None:
    """Add GET and HEAD ``/objects/{key}`` (and, with ``listing``, GET ``/objects/{prefix}/``)
    to the OpenAPI document FastAPI generates (FastAPI's "Extending OpenAPI" recipe: the object
    route is a Starlette ``Route``, which it skips)."""
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
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
