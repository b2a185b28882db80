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


def document_object_routes(app: FastAPI, listing: bool = False) -> None:
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
            if listing:
                schema["paths"]["/objects/{prefix}/"] = {"get": _LISTING_OPERATION}
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
