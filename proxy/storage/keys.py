"""Object key policy: which URL paths may name an object, whatever the backend; a path ending in
``/`` names a folder, listed only where listings are on (``check_prefix``), and a listing shows
only what the policy lets a request name (``listable``)."""

from __future__ import annotations

import re

from proxy.storage.errors import InvalidKey, ObjectNotFound

MAX_KEY_BYTES = 1024  # S3's limit, applied to every backend so keys stay portable

# C0 controls, DEL and C1 controls: never part of a name a client can mean.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
NO_LISTINGS = "listings are not enabled: a key ending in '/' names a folder, not an object"


def check_key(key: str) -> str:
    """Return ``key`` unchanged if it may name an object, else raise ``InvalidKey``.

    This is backend-independent policy, applied before any backend sees the key. Keys are
    URL paths the server has already percent-decoded (``%2e%2e`` arrives as ``..``), so a
    key that is relative, clean and free of controls is the same for disk and for S3: no
    empty, ``.`` or ``..`` segment, no leading ``/``, no backslash, at most 1024 UTF-8 bytes.
    """
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("the key is not valid UTF-8") from None  # a lone surrogate
    if not encoded:
        raise InvalidKey("the key is empty")
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"the key is longer than {MAX_KEY_BYTES} bytes")
    # Printable ASCII holds no control character: the regex only for the rest (~2x faster).
    if not (key.isascii() and key.isprintable()) and _CONTROL.search(key):
        raise InvalidKey("the key contains a control character")
    if "\\" in key:
        # A separator on Windows, and a common traversal disguise elsewhere.
        raise InvalidKey("the key contains a backslash")
    if key.startswith("/"):
        raise InvalidKey("the key is absolute")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey("the key has an empty, '.' or '..' segment")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` (``""`` or a folder's, ending in ``/``) unchanged if a listing may be
    asked for it: the folder passes ``check_key``; else raise ``InvalidKey``."""
    if prefix:
        check_key(prefix[:-1])
    return prefix


def listable(name: str, folder: bool = False) -> bool:
    """Whether a listing may show ``name``: an object key that passes ``check_key``, or a
    folder's prefix (ending in ``/``) whose name does. Anything else could be neither read nor
    listed through the proxy (``a//b``, ``../x``, a folder marker object ``a/``, a control
    character)."""
    if folder != name.endswith("/"):
        return False
    try:
        check_key(name[:-1] if folder else name)
    except InvalidKey:
        return False
    return True


def check_request_key(key: str) -> str:
    """``check_key`` for the key of a request path (``/objects/{key}``), where a key ending in
    ``/`` (the empty key of ``/objects/`` too) asks for a folder's listing: ``ObjectNotFound``
    saying listings are not enabled, once the folder passes the policy itself: ``a//`` and
    ``../`` stay ``InvalidKey``, like ``a//b`` and ``../b``."""
    if key and not key.endswith("/"):
        return check_key(key)
    check_prefix(key)
    raise ObjectNotFound(NO_LISTINGS)
