"""Access control: bearer API keys (RFC 6750) for services, HMAC-signed URLs for browsers.

A signed URL carries ``expires`` (Unix seconds), ``kid`` and ``sig`` =
base64url(HMAC-SHA256(secret[kid], "v1\\n{kid}\\n{expires}\\n{key}")); it stays valid for every
Range request of the same object until it expires. One check serves both flavours.

A listing (``/objects/{prefix}/``) is a key ending in ``/``: its signature, made the same way over
that prefix, grants the listing and every object and folder below it (the listing signs their
links with the same ``kid`` and ``expires``); a bearer key lists within its own prefix only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request

from proxy.config import ApiKey, Settings

REALM = "media-proxy"
_DIGITS = re.compile(r"[0-9]{1,12}")


class Denied(Exception):
    """Why a request may not read an object: 401 (no or bad credentials) or 403."""

    def __init__(self, status: int, detail: str, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.challenge = challenge  # the WWW-Authenticate value of a 401


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request's credentials allow: reading keys that start with ``scope``; for a signed
    URL also its key id and expiry, with which a listing signs the links it gives out."""

    scope: str = ""
    kid: str | None = None
    expires: int = 0


OPEN = Grant()  # access control off


def hash_token(token: str) -> str:
    """What settings store for an API key: the hex SHA-256 of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _signature(secret: str, kid: str, expires: int, key: str) -> str:
    message = f"v1\n{kid}\n{expires}\n{key}".encode()
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def signed_query(settings: Settings, key: str, ttl: int, now: float | None = None) -> str:
    """The query string that grants GET/HEAD of ``key`` for ``ttl`` seconds."""
    if not settings.signing_keys:
        raise ValueError("no signing key configured (PROXY_SIGNING_KEYS)")
    kid = settings.signing_key_id or list(settings.signing_keys)[-1]
    secret = settings.signing_keys[kid].get_secret_value()
    expires = int(now if now is not None else time.time()) + ttl
    return f"expires={expires}&kid={quote(kid)}&sig={_signature(secret, kid, expires, key)}"


def signed_like(settings: Settings, grant: Grant, key: str) -> str:
    """The query string that grants ``key`` for as long as ``grant``, a signed URL's, does
    (same key id and expiry): what a signed listing puts on its links."""
    assert grant.kid is not None
    secret = settings.signing_keys[grant.kid].get_secret_value()
    signature = _signature(secret, grant.kid, grant.expires, key)
    return f"expires={grant.expires}&kid={quote(grant.kid)}&sig={signature}"


def signed_url(settings: Settings, base_url: str, key: str, ttl: int) -> str:
    return f"{base_url.rstrip('/')}/objects/{quote(key)}?{signed_query(settings, key, ttl)}"


def _check_signature(settings: Settings, key: str, query: Mapping[str, str], now: float) -> int:
    kid, expires, sig = query.get("kid", ""), query.get("expires", ""), query.get("sig", "")
    secret = settings.signing_keys.get(kid)
    if secret is None or not _DIGITS.fullmatch(expires):
        raise Denied(403, "the signed URL is not valid")
    deadline = int(expires)
    if deadline < now:
        raise Denied(403, "the signed URL has expired")
    if deadline > now + settings.max_signed_ttl:
        raise Denied(403, "the signed URL is not valid")
    expected = _signature(secret.get_secret_value(), kid, deadline, key)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
        raise Denied(403, "the signed URL is not valid")
    return deadline


def _matching_key(api_keys: list[ApiKey], token: str) -> ApiKey | None:
    digest = hash_token(token).encode()
    found = None
    for api_key in api_keys:  # no early exit: the time taken does not tell which key matched
        if hmac.compare_digest(digest, api_key.sha256.encode()):
            found = api_key
    return found


def check_access(
    settings: Settings,
    key: str,
    authorization: str | None,
    query: Mapping[str, str],
    now: float | None = None,
) -> None:
    """Raise ``Denied`` unless the request may read ``key``; a no-op when auth is off."""
    if not settings.auth_enabled:
        return
    if not key.startswith(grant_for(settings, key, authorization, query, now).scope):
        raise Denied(403, "this key may not read this object")


def grant_for(
    settings: Settings,
    key: str,
    authorization: str | None,
    query: Mapping[str, str],
    now: float | None = None,
) -> Grant:
    """What the request's credentials grant (``Denied`` when they are missing or invalid): a
    signed URL checked against ``key``, else a bearer key; auth on."""
    now = time.time() if now is None else now
    if "sig" in query:
        expires = _check_signature(settings, key, query, now)
        return Grant(key, query["kid"], expires)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(401, "credentials required", f'Bearer realm="{REALM}"')
    api_key = _matching_key(settings.api_keys, token.strip())
    if api_key is None:
        challenge = f'Bearer realm="{REALM}", error="invalid_token"'
        raise Denied(401, "the bearer token is not valid", challenge)
    return Grant(api_key.prefix)


async def authorize(request: Request, key: str) -> None:
    """Raise ``Denied`` (401/403, answered by the app's handler) before any storage call."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:
        return  # before touching the query string: parsing it costs on every request
    check_access(settings, key, request.headers.get("authorization"), request.query_params)


async def authorize_listing(request: Request, prefix: str) -> Grant:
    """What the request may list of ``prefix`` (a key ending in ``/``, or ""): ``Denied``
    unless its scope and ``prefix`` overlap, one lying within the other (the listing shows
    only what lies within both)."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:
        return OPEN
    query = request.query_params
    grant = grant_for(settings, prefix, request.headers.get("authorization"), query)
    if not (prefix.startswith(grant.scope) or grant.scope.startswith(prefix)):
        raise Denied(403, "this key may not list this prefix")
    return grant
