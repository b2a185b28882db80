"""Access control: bearer API keys (RFC 6750) for services, HMAC-signed URLs for browsers.

A signed URL (version 2) carries ``expires`` (Unix seconds), ``kid``, ``sv=2`` and ``sig`` =
base64url(HMAC-SHA256(secret[kid], "v2\\n{METHOD}\\n{key}\\n{canonical query}")), where the
canonical query is every parameter but ``sig`` (``expires``, ``kid`` and ``sv`` included),
percent-encoded as SigV4's canonical query string (RFC 3986 unreserved characters kept, the rest
``%XX`` of their UTF-8 bytes) and sorted by name, then value. So a signed request carries
exactly the parameters that were signed (one more, one fewer or one changed: 403), and the
method that was signed; a link signed for GET also serves HEAD (the same answer without its
body, which players and browsers ask first). It stays valid for every Range request of the
same object until it expires. The proxy reads each of its parameters once: one given twice is
a 400 (``DuplicateParameter``), signed or not. Unsigned requests ignore parameters the proxy
does not read (a cache-buster).

Version 1 links (no ``sv``; ``sig`` over "v1\\n{kid}\\n{expires}\\n{key}", the key and expiry
only) keep verifying until they expire, as long as they carry no parameter besides ``expires``,
``kid`` and ``sig``. One check serves both flavours.

A listing (``/objects/{prefix}/``) is a key ending in ``/``: its signature, made the same way over
that prefix and the listing's options, grants the listing and every object and folder below it
(the listing signs their links with the same ``kid`` and ``expires``); a bearer key lists within
its own prefix only.

Mounts (``PROXY_MOUNTS``): the key a signature covers is the whole path below ``/objects/``,
the mount's name included (``videos/clip.mp4``), so a link never serves another mount's object
of the same name. A bearer key reads the mounts its ``mounts`` lists (all of them when it lists
none; another: 403), and its ``prefix`` applies to the keys within each mount. A grant's
``scope`` is within the mount. A ``public`` mount asks for no credentials; a mount's ``auth``
takes bearer keys only (``keys``: a signed URL there is a 403) or signed URLs only
(``signed``), or both (``any``, the default).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from fastapi import Request

from proxy.config import ApiKey, Mount, Settings

REALM = "media-proxy"
_DIGITS = re.compile(r"[0-9]{1,12}")

SIGNATURE, EXPIRES, KEY_ID, VERSION = "sig", "expires", "kid", "sv"
SIGNING_PARAMETERS = frozenset({SIGNATURE, EXPIRES, KEY_ID, VERSION})
_V1_PARAMETERS = frozenset({SIGNATURE, EXPIRES, KEY_ID})
SIGNED_VERSION = "2"
# The query parameters the proxy reads, besides the signing ones: each at most once.
OBJECT_PARAMETERS = frozenset({"download"})
LISTING_PARAMETERS = frozenset({"format", "recursive", "limit", "after"})
_READ_BY_OBJECTS = SIGNING_PARAMETERS | OBJECT_PARAMETERS
_READ_BY_LISTINGS = SIGNING_PARAMETERS | LISTING_PARAMETERS

# Methods that change what is stored: never without credentials (a public mount included).
WRITE_METHODS = frozenset({"PUT", "DELETE"})

Pairs = Sequence[tuple[str, str]]


class MultiItems(Protocol):
    """Starlette's ``QueryParams``: every (name, value) pair, in order, duplicates kept."""

    def multi_items(self) -> list[tuple[str, str]]: ...


Query = MultiItems | Mapping[str, str] | Pairs


class Denied(Exception):
    """Why a request may not read an object: 401 (no or bad credentials) or 403."""

    def __init__(self, status: int, detail: str, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.challenge = challenge  # the WWW-Authenticate value of a 401


class DuplicateParameter(ValueError):
    """A query parameter the proxy reads, given more than once (400): which one to take is
    not the proxy's guess to make."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the query parameter {name!r} is given more than once")
        self.name = name


@dataclass(frozen=True, slots=True)
class Grant:
    """What a request's credentials allow: reading keys (within the mount) that start with
    ``scope``; for a signed URL also its key id and expiry, with which a listing signs the links
    it gives out."""

    scope: str = ""
    kid: str | None = None
    expires: int = 0
    mounts: tuple[str, ...] | None = None  # a bearer key's mounts (None: every mount)
    writes: bool = False  # a bearer key with "access": "write", or a URL signed for PUT/DELETE

    def reads(self, mount: Mount) -> bool:
        """Whether the grant reaches into ``mount`` at all (its scope aside)."""
        if mount.public:
            return True
        if mount.auth == ("keys" if self.kid is not None else "signed"):
            return False  # the mount does not take this kind of credential
        return self.mounts is None or mount.name in self.mounts


OPEN = Grant()  # access control off


def hash_token(token: str) -> str:
    """What settings store for an API key: the hex SHA-256 of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def query_pairs(query: Query) -> Pairs:
    """Every (name, value) of a query, decoded, in order, duplicates kept."""
    multi_items = getattr(query, "multi_items", None)
    if multi_items is not None:
        pairs: Pairs = multi_items()
        return pairs
    if isinstance(query, Mapping):
        return list(query.items())
    return query  # type: ignore[return-value]  # already pairs


def read_once(pairs: Iterable[tuple[str, str]], names: Collection[str]) -> dict[str, str]:
    """The values of ``names`` found in ``pairs``; ``DuplicateParameter`` for one given twice."""
    found: dict[str, str] = {}
    for name, value in pairs:
        if name in names:
            if name in found:
                raise DuplicateParameter(name)
            found[name] = value
    return found


def _encode(text: str) -> str:
    # quote() keeps exactly RFC 3986's unreserved characters with safe="", as SigV4 does, and
    # writes upper-case hex; a lone surrogate (never from a parsed query) cannot raise.
    return quote(text, safe="", errors="surrogatepass")


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """SigV4's canonical query string of every parameter but the signature: names and values
    percent-encoded, sorted by name, then value; ``name=`` for a parameter without a value."""
    encoded = sorted((_encode(name), _encode(value)) for name, value in pairs if name != SIGNATURE)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _digest(secret: str, message: str) -> str:
    mac = hmac.new(secret.encode("utf-8"), message.encode("utf-8", "surrogatepass"), "sha256")
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def _v2_signature(secret: str, method: str, key: str, canonical: str) -> str:
    # The canonical query holds no raw newline: the message splits one way only.
    return _digest(secret, f"v2\n{method}\n{key}\n{canonical}")


def _v1_signature(secret: str, kid: str, expires: int, key: str) -> str:
    return _digest(secret, f"v1\n{kid}\n{expires}\n{key}")


def _signed(
    secret: str, kid: str, expires: int, method: str, key: str, params: Iterable[tuple[str, str]]
) -> str:
    """The query string (canonical order, then ``sig``) that grants ``method`` on ``key``."""
    pairs = list(params)
    reserved = sorted({name for name, _ in pairs} & SIGNING_PARAMETERS)
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: set by the signature itself")
    pairs += [(EXPIRES, str(expires)), (KEY_ID, kid), (VERSION, SIGNED_VERSION)]
    canonical = canonical_query(pairs)
    return f"{canonical}&{SIGNATURE}={_v2_signature(secret, method, key, canonical)}"


def signed_query(
    settings: Settings,
    key: str,
    ttl: int,
    now: float | None = None,
    *,
    method: str = "GET",
    params: Iterable[tuple[str, str]] = (),
) -> str:
    """The query string that grants ``method`` (GET: also HEAD) on ``key`` for ``ttl`` seconds,
    with the query parameters ``params`` (e.g. ``("download", "")``) and no others."""
    if not settings.signing_keys:
        raise ValueError("no signing key configured (PROXY_SIGNING_KEYS)")
    kid = settings.signing_key_id or list(settings.signing_keys)[-1]
    secret = settings.signing_keys[kid].get_secret_value()
    expires = int(now if now is not None else time.time()) + ttl
    return _signed(secret, kid, expires, method, key, params)


def signed_like(
    settings: Settings, grant: Grant, key: str, params: Iterable[tuple[str, str]] = ()
) -> str:
    """The query string that grants GET of ``key`` with ``params`` for as long as ``grant``, a
    signed URL's, does (same key id and expiry): what a signed listing puts on its links."""
    assert grant.kid is not None
    secret = settings.signing_keys[grant.kid].get_secret_value()
    return _signed(secret, grant.kid, grant.expires, "GET", key, params)


def signed_url(
    settings: Settings,
    base_url: str,
    key: str,
    ttl: int,
    *,
    method: str = "GET",
    params: Iterable[tuple[str, str]] = (),
) -> str:
    query = signed_query(settings, key, ttl, method=method, params=params)
    return f"{base_url.rstrip('/')}/objects/{quote(key)}?{query}"


def _check_signature(
    settings: Settings,
    method: str,
    key: str,
    pairs: Pairs,
    values: Mapping[str, str],
    now: float,
) -> int:
    """The signed URL's expiry; ``Denied`` (403) unless it grants ``method`` on ``key`` with
    exactly the parameters ``pairs``."""
    kid, expires, sig = values.get(KEY_ID, ""), values.get(EXPIRES, ""), values[SIGNATURE]
    secret = settings.signing_keys.get(kid)
    if secret is None or not _DIGITS.fullmatch(expires):
        raise Denied(403, "the signed URL is not valid")
    deadline = int(expires)
    if deadline < now:
        raise Denied(403, "the signed URL has expired")
    if deadline > now + settings.max_signed_ttl:
        raise Denied(403, "the signed URL is not valid")
    version = values.get(VERSION)
    if version is None:  # version 1: the key and expiry only, so no other parameter may ride
        if any(name not in _V1_PARAMETERS for name, _ in pairs):
            raise Denied(403, "the signed URL does not cover all of this request's parameters")
        expected: Iterable[str] = [_v1_signature(secret.get_secret_value(), kid, deadline, key)]
    elif version == SIGNED_VERSION:
        canonical = canonical_query(pairs)
        # A link signed for GET serves HEAD too (tried first: a player's HEAD on its GET link);
        # one signed for HEAD serves HEAD only.
        methods = ("GET", "HEAD") if method == "HEAD" else (method,)
        value = secret.get_secret_value()
        expected = (_v2_signature(value, signed, key, canonical) for signed in methods)
    else:
        raise Denied(403, "the signed URL is not valid")
    given = sig.encode("utf-8", "replace")
    if not any(hmac.compare_digest(digest.encode(), given) for digest in expected):
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
    query: Query,
    now: float | None = None,
    *,
    method: str = "GET",
    mount: Mount | None = None,
) -> None:
    """Raise ``Denied`` unless the request may read ``key`` (the path below ``/objects/``, in
    ``mount`` when given; ``DuplicateParameter`` for a parameter it reads given twice); a no-op
    when auth is off."""
    if not settings.auth_enabled:
        return
    grant = grant_for(settings, key, authorization, query, now, method=method, mount=mount)
    within = key[len(mount.path) :] if mount is not None else key
    if not within.startswith(grant.scope):
        raise Denied(403, "this key may not read this object")


def grant_for(
    settings: Settings,
    key: str,
    authorization: str | None,
    query: Query,
    now: float | None = None,
    *,
    method: str = "GET",
    reads: frozenset[str] = _READ_BY_OBJECTS,
    mount: Mount | None = None,
) -> Grant:
    """What the request's credentials grant (``Denied`` when they are missing or invalid): a
    signed URL checked against ``method``, ``key`` and every parameter, else a bearer key; auth
    on. The parameters ``reads`` (the signing ones among them) must come once each, signed
    or not (``DuplicateParameter``), checked first."""
    now = time.time() if now is None else now
    pairs = query_pairs(query)
    values = read_once(pairs, reads)
    if SIGNATURE in values:
        if mount is not None and mount.auth == "keys":
            raise Denied(403, "this mount takes bearer keys only")
        expires = _check_signature(settings, method, key, pairs, values, now)
        within = key[len(mount.path) :] if mount is not None else key
        return Grant(within, values[KEY_ID], expires, writes=method in WRITE_METHODS)
    if mount is not None and mount.auth == "signed":
        raise Denied(403, "this mount takes signed URLs only")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(401, "credentials required", f'Bearer realm="{REALM}"')
    api_key = _matching_key(settings.api_keys, token.strip())
    if api_key is None:
        challenge = f'Bearer realm="{REALM}", error="invalid_token"'
        raise Denied(401, "the bearer token is not valid", challenge)
    grant = Grant(
        api_key.prefix,
        mounts=None if api_key.mounts is None else tuple(api_key.mounts),
        writes=api_key.access == "write",
    )
    if mount is not None and not grant.reads(mount):
        raise Denied(403, "this key may not read this mount")
    return grant


async def authorize(request: Request, key: str, mount: Mount | None = None) -> None:
    """Raise ``Denied`` (401/403, answered by the app's handler) before any storage call;
    ``key`` is the path below ``/objects/``, in ``mount``."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:
        return  # before touching the query string: parsing it costs on every request
    authorization = request.headers.get("authorization")
    query = request.query_params
    check_access(settings, key, authorization, query, method=request.method, mount=mount)


async def authorize_write(request: Request, key: str, mount: Mount | None = None) -> None:
    """Raise ``Denied`` unless the request may PUT or DELETE ``key`` (the path below
    ``/objects/``, in ``mount``): credentials are always needed, on a public mount too; a bearer
    key needs ``"access": "write"`` (and its prefix and mounts apply), a signed URL must be
    signed for this very method."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:  # Settings refuse writes without credentials configured
        raise Denied(401, "credentials required", f'Bearer realm="{REALM}"')
    grant = grant_for(
        settings,
        key,
        request.headers.get("authorization"),
        request.query_params,
        method=request.method,
        reads=SIGNING_PARAMETERS,
        mount=mount,
    )
    if not grant.writes:
        raise Denied(403, "this key may only read")
    if mount is not None and grant.mounts is not None and mount.name not in grant.mounts:
        raise Denied(403, "this key may not write to this mount")
    within = key[len(mount.path) :] if mount is not None else key
    if not within.startswith(grant.scope):
        raise Denied(403, "this key may not write this object")


async def authorize_listing(request: Request, prefix: str, mount: Mount | None = None) -> Grant:
    """What the request may list of ``prefix`` (the path below ``/objects/``, ending in ``/``,
    in ``mount``): ``Denied`` unless its scope and the prefix within the mount overlap, one lying
    within the other (the listing shows only what lies within both)."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled or (mount is not None and mount.public):
        return OPEN
    query = request.query_params
    authorization = request.headers.get("authorization")
    grant = grant_for(
        settings,
        prefix,
        authorization,
        query,
        method=request.method,
        reads=_READ_BY_LISTINGS,
        mount=mount,
    )
    if mount is not None:
        prefix = prefix[len(mount.path) :]
    if not (prefix.startswith(grant.scope) or grant.scope.startswith(prefix)):
        raise Denied(403, "this key may not list this prefix")
    return grant


async def authorize_mounts(request: Request, mounts: Sequence[Mount]) -> tuple[Grant, list[Mount]]:
    """What a request for ``/objects/`` (the mounts, as folders) may see: with access control
    on, the mounts its credentials reach (a link signed for ``/objects/`` reaches every one),
    and the public ones; ``Denied`` when it reaches none."""
    settings: Settings = request.app.state.settings
    if not settings.auth_enabled:
        return OPEN, list(mounts)
    public = [mount for mount in mounts if mount.public]
    try:
        grant = grant_for(
            settings,
            "",
            request.headers.get("authorization"),
            request.query_params,
            method=request.method,
            reads=_READ_BY_LISTINGS,
        )
    except Denied as exc:
        if exc.status != 401 or not public:  # without credentials: the public mounts
            raise
        return OPEN, public
    return grant, [mount for mount in mounts if grant.reads(mount)]
