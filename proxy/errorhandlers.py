"""The app's JSON errors: storage failures, access denials and HTTP errors to statuses.

Every body is ``proxy.http.plan.error_body``'s ``{"error": code, "detail": text}``; messages are
safe for clients (no paths, hosts or credentials), tracebacks stay in the server's log.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from proxy import metrics
from proxy.auth import Denied, DuplicateParameter
from proxy.http.plan import error_body
from proxy.routes import OBJECT_METHODS, OBJECT_PREFIX
from proxy.storage import errors

# Most specific first: the first isinstance match wins.
STATUS_BY_ERROR: tuple[tuple[type[errors.StorageError], int, str], ...] = (
    (errors.ObjectNotFound, 404, "not_found"),
    (errors.AccessDenied, 403, "forbidden"),
    (errors.InvalidKey, 400, "invalid_key"),
    (errors.BackendUnavailable, 503, "backend_unavailable"),
    (errors.BackendTimeout, 504, "backend_timeout"),
    (errors.ObjectChanged, 503, "object_changed"),
    (errors.PreconditionFailed, 412, "precondition_failed"),
    (errors.InsufficientStorage, 507, "insufficient_storage"),
    (errors.StorageError, 502, "bad_gateway"),
)
RETRY_AFTER_SECONDS = "1"
ERROR_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


def error_response(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON error (``proxy.http.plan.error_body``: the one shape of every error body)."""
    return Response(
        error_body(code, detail), status, headers=headers, media_type="application/json"
    )


async def storage_error(request: Request, exc: Exception) -> Response:
    metrics.BACKEND_ERRORS.labels(type(exc).__name__).inc()
    for kind, status, code in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            headers = {"retry-after": RETRY_AFTER_SECONDS} if status == 503 else None
            return error_response(status, code, str(exc), headers)
    raise exc  # unreachable: registered for StorageError only


async def denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Denied)
    headers = {"www-authenticate": exc.challenge} if exc.challenge else None
    return error_response(exc.status, ERROR_CODES[exc.status], exc.detail, headers)


async def duplicate_parameter(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DuplicateParameter)
    return error_response(400, "invalid_request", str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = ERROR_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and request.url.path.startswith(OBJECT_PREFIX):
        # Starlette's Allow lists the route's methods from a set, in no fixed order; a mount
        # without writes where others write names its own (GET, HEAD).
        if "allow" not in headers or headers["allow"] != OBJECT_METHODS:
            headers = {"allow": getattr(request.app.state, "object_methods", OBJECT_METHODS)}
    return error_response(exc.status_code, code, detail, headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    return error_response(400, "invalid_request", "the request's parameters are invalid")


async def internal_error(request: Request, exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware logs the traceback server-side and re-raises.
    return error_response(500, "internal_error", "internal server error")


def add_error_handlers(app: FastAPI) -> None:
    """Register every handler; Starlette picks the one for the nearest class of an exception."""
    app.add_exception_handler(errors.StorageError, storage_error)
    app.add_exception_handler(Denied, denied)
    app.add_exception_handler(DuplicateParameter, duplicate_parameter)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
