"""Signed URLs cover the method, the key and every query parameter (issue 29, item 5): each way of
tampering with a link is refused, old links keep working while nothing rides along, unsigned
requests still ignore what the proxy does not read, and ``python -m proxy sign`` links work end
to end (downloads and listings), on real servers of both flavours (and S3 for downloads)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
import pytest

from proxy.auth import canonical_query, hash_token, signed_query
from proxy.config import Settings
from tests.conftest import (
    FLAVORS,
    MediaTree,
    RunningServer,
    StartServer,
    s3_server,
    s3_settings,
    settings_for,
    sha256,
)

CLIP = "video/clip.mp4"
SECRET, OLD_SECRET = "new-secret", "old-secret"
SIGNING_KEYS = {"2025": OLD_SECRET, "2026": SECRET}
TOKEN = "signed-urls-token-0123456789"


def signing(**overrides: object) -> dict[str, object]:
    return {
        "api_keys": [{"name": "all", "sha256": hash_token(TOKEN)}],
        "signing_keys": SIGNING_KEYS,
        "signing_key_id": "2026",
        "access_log": False,
        **overrides,
    }


@pytest.fixture(scope="module", params=FLAVORS)
def secured(request: pytest.FixtureRequest, media: MediaTree, serve: StartServer) -> RunningServer:
    return serve(settings_for(media, request.param, listing=True, **signing()))


@pytest.fixture(scope="module", params=FLAVORS)
def public(request: pytest.FixtureRequest, media: MediaTree, serve: StartServer) -> RunningServer:
    return serve(settings_for(media, request.param, listing=True, access_log=False))


def get(server: RunningServer, key: str, query: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, f"{server.url}/objects/{quote(key)}?{query}", timeout=10)


def refused(response: httpx.Response, status: int = 403) -> str:
    """The JSON error every refusal gets; its detail."""
    assert response.status_code == status, response.text[:200]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    expected = {403: "forbidden", 400: "invalid_request"}[status]
    assert (set(body), body["error"]) == ({"error", "detail"}, expected)
    return str(body["detail"])


def pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def joined(items: Sequence[tuple[str, str]]) -> str:
    return urlencode(items, quote_via=quote)


def replaced(query: str, name: str, value: str) -> str:
    return joined([(n, value if n == name else v) for n, v in pairs(query)])


def without(query: str, name: str) -> str:
    return joined([(n, v) for n, v in pairs(query) if n != name])


def flipped(sig: str) -> str:
    """The signature with its last character changed: always to another one (a fixed
    replacement would leave the one signature in 64 that already ends with it intact)."""
    return sig[:-1] + ("B" if sig.endswith("A") else "A")


def doubled(query: str, name: str) -> str:
    items = pairs(query)
    return joined(items + [(n, v) for n, v in items if n == name])


# -- the canonical query -----------------------------------------------------------------------


def test_the_canonical_query_is_sigv4s() -> None:
    """Unreserved characters kept, everything else %XX (upper case) of its UTF-8 bytes, space
    as %20 (never +), sorted by name then value, no value: ``name=``; never the signature."""
    query = [("b", "2"), ("a", "~é/"), ("sig", "x"), ("a", "x y"), ("A", "+&="), ("c", "")]
    assert canonical_query(query) == "A=%2B%26%3D&a=x%20y&a=~%C3%A9%2F&b=2&c="
    # The AWS SigV4 documentation's own example.
    assert canonical_query([("Version", "2010-05-08"), ("Action", "ListUsers")]) == (
        "Action=ListUsers&Version=2010-05-08"
    )


# -- every tampering ---------------------------------------------------------------------------


def good_link(server: RunningServer) -> str:
    return signed_query(server.settings, CLIP, 600, params=[("download", "clip.mp4")])


def test_an_untouched_link_works_and_sends_its_attachment(
    secured: RunningServer, media: MediaTree
) -> None:
    query = good_link(secured)
    response = get(secured, CLIP, query)
    assert response.status_code == 200
    assert sha256(response.content) == sha256(media.data(CLIP))
    assert response.headers["content-disposition"] == 'attachment; filename="clip.mp4"'
    ranged = httpx.get(
        f"{secured.url}/objects/{CLIP}?{query}", headers={"range": "bytes=10-19"}, timeout=10
    )
    assert (ranged.status_code, ranged.content) == (206, media.data(CLIP)[10:20])
    # The parameters in any order and any valid percent-encoding: the same request.
    shuffled = joined(list(reversed(pairs(query))))
    assert get(secured, CLIP, shuffled).status_code == 200
    encoded = query.replace("kid=2026", "kid=%32%30%32%36")
    assert get(secured, CLIP, encoded).status_code == 200


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda q: q + "&download=evil.html", id="a second download"),
        pytest.param(lambda q: doubled(q, "download"), id="download twice, same value"),
        pytest.param(lambda q: doubled(q, "expires"), id="expires twice"),
        pytest.param(lambda q: doubled(q, "kid"), id="kid twice"),
        pytest.param(lambda q: doubled(q, "sig"), id="sig twice"),
        pytest.param(lambda q: doubled(q, "sv"), id="sv twice"),
    ],
)
def test_a_duplicated_parameter_the_proxy_reads_is_400(
    secured: RunningServer, tamper: object
) -> None:
    assert callable(tamper)
    detail = refused(get(secured, CLIP, tamper(good_link(secured))), 400)
    assert "more than once" in detail


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda q: q + "&x=1", id="an extra parameter"),
        pytest.param(lambda q: q + "&_=1733500000", id="a cache-buster"),
        pytest.param(lambda q: q + "&format=html", id="a parameter listings read"),
        pytest.param(lambda q: replaced(q, "download", "evil.html"), id="download changed"),
        pytest.param(lambda q: replaced(q, "download", ""), id="download emptied"),
        pytest.param(lambda q: without(q, "download"), id="download removed"),
        pytest.param(lambda q: without(q, "sv"), id="version removed"),
        pytest.param(lambda q: replaced(q, "sv", "3"), id="unknown version"),
        pytest.param(lambda q: without(q, "kid"), id="kid removed"),
        pytest.param(lambda q: without(q, "expires"), id="expires removed"),
        pytest.param(lambda q: replaced(q, "kid", "2025"), id="another key id"),
        pytest.param(lambda q: replaced(q, "kid", "2024"), id="no such key id"),
        pytest.param(
            lambda q: replaced(q, "expires", str(int(dict(pairs(q))["expires"]) + 1)),
            id="a longer life",
        ),
        pytest.param(
            lambda q: replaced(q, "sig", flipped(dict(pairs(q))["sig"])), id="sig changed"
        ),
        pytest.param(lambda q: replaced(q, "sig", ""), id="sig emptied"),
    ],
)
def test_a_changed_added_or_removed_parameter_is_403(
    secured: RunningServer, tamper: object
) -> None:
    assert callable(tamper)
    query = tamper(good_link(secured))
    for method in ["GET", "HEAD"]:
        response = get(secured, CLIP, query, method)
        assert response.status_code == 403, (method, query)
    refused(get(secured, CLIP, query))


def test_a_link_serves_only_its_key(secured: RunningServer) -> None:
    query = signed_query(secured.settings, CLIP, 600)
    assert get(secured, CLIP, query).status_code == 200
    for other in ["hello.txt", "video/clip.mp4.bak", "video/", "video/clip.mp"]:
        refused(get(secured, other, query))


def test_a_link_serves_only_its_method(secured: RunningServer) -> None:
    """Signed for GET: GET and HEAD (what players and browsers ask first). Signed for HEAD:
    HEAD only, the signature's method is not GET's."""
    for_get = signed_query(secured.settings, CLIP, 600)
    assert get(secured, CLIP, for_get, "HEAD").status_code == 200
    for_head = signed_query(secured.settings, CLIP, 600, method="HEAD")
    head = get(secured, CLIP, for_head, "HEAD")
    assert (head.status_code, head.headers["content-length"]) == (200, str(3 * 1024 * 1024 + 123))
    refused(get(secured, CLIP, for_head, "GET"))
    # Another method's link (issue 25's uploads) grants neither.
    for_put = signed_query(secured.settings, CLIP, 600, method="PUT")
    refused(get(secured, CLIP, for_put, "GET"))
    assert get(secured, CLIP, for_put, "HEAD").status_code == 403


def test_an_expired_link_is_403(secured: RunningServer) -> None:
    expired = signed_query(secured.settings, CLIP, -1, params=[("download", "")])
    assert refused(get(secured, CLIP, expired)) == "the signed URL has expired"
    old = old_style_link(CLIP, "2026", SECRET, int(time.time()) - 5)
    assert refused(get(secured, CLIP, old)) == "the signed URL has expired"


# -- links signed before (version 1) -----------------------------------------------------------


def old_style_link(key: str, kid: str, secret: str, expires: int) -> str:
    """A link as the proxy signed them before issue 29: the key and expiry only, computed here
    from the old scheme's description, not with the proxy's code."""
    message = f"v1\n{kid}\n{expires}\n{key}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"expires={expires}&kid={kid}&sig={sig}"


def test_old_links_keep_working_while_they_carry_nothing_else(
    secured: RunningServer, media: MediaTree
) -> None:
    expires = int(time.time()) + 600
    for kid, secret in [("2026", SECRET), ("2025", OLD_SECRET)]:
        old = old_style_link(CLIP, kid, secret, expires)
        response = get(secured, CLIP, old)
        assert response.status_code == 200, response.text
        assert sha256(response.content) == sha256(media.data(CLIP))
        assert "content-disposition" not in response.headers
        assert get(secured, CLIP, old, "HEAD").status_code == 200
        assert get(secured, CLIP, joined(list(reversed(pairs(old))))).status_code == 200
        # Anything added is not covered by the old signature.
        for extra in ["download=evil.html", "download", "_=1", "sv=2", "format=json"]:
            refused(get(secured, CLIP, f"{old}&{extra}"))
        refused(get(secured, CLIP, doubled(old, "expires")), 400)
        refused(get(secured, "hello.txt", old))
    # An old link to a listing, too.
    folder = old_style_link("dir/", "2026", SECRET, expires)
    listing = httpx.get(f"{secured.url}/objects/dir/?{folder}", timeout=10)
    assert listing.status_code == 200
    assert [json.loads(line).get("key") for line in listing.text.splitlines()][0] == (
        "dir/inner.mp3"
    )
    refused(httpx.get(f"{secured.url}/objects/dir/?{folder}&format=html", timeout=10))


# -- unsigned requests -------------------------------------------------------------------------


def test_unsigned_requests_ignore_what_the_proxy_does_not_read(
    public: RunningServer, secured: RunningServer, media: MediaTree
) -> None:
    bearer = {"authorization": f"Bearer {TOKEN}"}
    for server, headers in [(public, {}), (secured, bearer)]:
        url = f"{server.url}/objects/{CLIP}"
        busted = httpx.get(f"{url}?_=1&_=2&t=3&flag", headers=headers, timeout=10)
        assert busted.status_code == 200
        assert sha256(busted.content) == sha256(media.data(CLIP))
        named = httpx.get(f"{url}?download=a%20b.mp4&_=1", headers=headers, timeout=10)
        assert named.headers["content-disposition"] == 'attachment; filename="a b.mp4"'
        twice = httpx.get(f"{url}?download=a&download=b", headers=headers, timeout=10)
        assert "'download'" in refused(twice, 400)
        listing = f"{server.url}/objects/dir/"
        assert httpx.get(f"{listing}?_=1&_=2", headers=headers, timeout=10).status_code == 200
        formats = httpx.get(f"{listing}?format=json&format=html", headers=headers, timeout=10)
        assert "'format'" in refused(formats, 400)


# -- python -m proxy sign ----------------------------------------------------------------------


def sign(server_settings: Settings, *args: str, base_url: str) -> str:
    """Run ``python -m proxy sign`` with the server's signing keys; the URL it prints."""
    env = {
        "PROXY_SIGNING_KEYS": json.dumps(SIGNING_KEYS),
        "PROXY_SIGNING_KEY_ID": "2026",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", *args, "--base-url", base_url],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert result.stderr.decode().startswith("expires ")
    return result.stdout.decode().strip()


@pytest.fixture(
    scope="module", params=["local-sync", "local-async", "moto-boto3", "moto-aiobotocore"]
)
def any_backend(
    request: pytest.FixtureRequest, media: MediaTree, serve: StartServer
) -> RunningServer:
    kind, flavor = request.param.split("-")
    if kind == "local":
        return serve(settings_for(media, flavor, **signing()))
    return serve(s3_settings(s3_server(request, kind), flavor, **signing()))


@pytest.mark.parametrize(
    ("options", "disposition"),
    [
        ([], None),
        (["--download"], 'attachment; filename="clip.mp4"'),
        (["--download", "my film.mp4"], 'attachment; filename="my film.mp4"'),
        (["--download", "é.mp4"], "attachment; filename=\"_.mp4\"; filename*=UTF-8''%C3%A9.mp4"),
    ],
    ids=["plain", "download", "download-named", "download-utf8"],
)
def test_sign_download_end_to_end(
    any_backend: RunningServer, media: MediaTree, options: list[str], disposition: str | None
) -> None:
    url = sign(any_backend.settings, CLIP, *options, base_url=any_backend.url)
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert sha256(response.content) == sha256(media.data(CLIP))
    assert response.headers.get("content-disposition") == disposition
    assert httpx.head(url, timeout=10).headers.get("content-disposition") == disposition
    # The holder does not choose the name: another, or none, is refused.
    query = urlsplit(url).query
    base = url.split("?")[0]
    if options:
        refused(httpx.get(f"{base}?{replaced(query, 'download', 'evil.html')}", timeout=10))
        refused(httpx.get(f"{base}?{without(query, 'download')}", timeout=10))
    else:
        refused(httpx.get(f"{url}&download=evil.html", timeout=10))


def test_sign_download_with_curl(secured: RunningServer, tmp_path: Path, media: MediaTree) -> None:
    """What a person does with the printed link: curl -OJ saves it under the signed name."""
    url = sign(secured.settings, CLIP, "--download", "film.mp4", base_url=secured.url)
    done = subprocess.run(
        ["curl", "-sS", "-f", "-O", "-J", url], cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert sha256((tmp_path / "film.mp4").read_bytes()) == sha256(media.data(CLIP))


def test_sign_method_head(secured: RunningServer) -> None:
    url = sign(secured.settings, CLIP, "--method", "HEAD", base_url=secured.url)
    assert httpx.head(url, timeout=10).status_code == 200
    refused(httpx.get(url, timeout=10))


def test_sign_a_listing_with_its_options(secured: RunningServer, media: MediaTree) -> None:
    url = sign(secured.settings, "video/", "--format", "json", "--recursive", base_url=secured.url)
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert [entry["key"] for entry in response.json()] == [CLIP]
    base, query = url.split("?")
    refused(httpx.get(f"{base}?{replaced(query, 'format', 'html')}", timeout=10))
    refused(httpx.get(f"{base}?{without(query, 'recursive')}", timeout=10))
    refused(httpx.get(f"{url}&limit=1", timeout=10))
    refused(httpx.get(f"{url}&format=html", timeout=10), 400)


def test_a_signed_browse_page_signs_its_links_with_their_parameters(
    secured: RunningServer, media: MediaTree
) -> None:
    """The page's object, download, folder and next-page links each carry their own signed
    parameters: every one works as given, none with a parameter added."""
    url = sign(secured.settings, "", "--format", "html", "--limit", "2", base_url=secured.url)
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200, page.text
    hrefs = [
        href.replace("&amp;", "&")
        for href in page.text.split('href="')[1:]
        for href in [href.split('"')[0]]
        if href.startswith("/objects/")
    ]
    assert any("download=" in href for href in hrefs)
    assert any("after=" in href for href in hrefs)  # the next page
    for href in hrefs:
        link = httpx.get(f"{secured.url}{href}", timeout=10)
        assert link.status_code == 200, (href, link.text)
        if "download=" in href:
            assert link.headers["content-disposition"].startswith("attachment")
        refused(httpx.get(f"{secured.url}{href}&x=1", timeout=10))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["video/", "--download"], "--download: a folder's listing is not a download"),
        ([CLIP, "--format", "json"], "--format: listing options need a folder's key"),
        ([CLIP, "--recursive"], "--recursive: listing options need a folder's key"),
        (["video/", "--limit", "0"], "--limit: 0 is not a positive whole number"),
    ],
)
def test_sign_refuses_options_the_key_has_not(args: list[str], message: str) -> None:
    env = {"PROXY_SIGNING_KEYS": json.dumps(SIGNING_KEYS), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", *args], env=env, capture_output=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode().startswith(message)
    assert result.stderr.decode().count("\n") == 1
