"""Access control: bearer API keys and signed URLs, on real servers of both flavours."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from proxy.auth import Denied, check_access, hash_token, signed_query
from proxy.config import Settings
from tests.conftest import FLAVORS, MediaTree, RunningServer, StartServer, settings_for, sha256

CLIP = "video/clip.mp4"
CI_TOKEN = "ci-token-0123456789"
OPS_TOKEN = "ops-token-9876543210"
API_KEYS = [
    {"name": "ci", "sha256": hash_token(CI_TOKEN), "prefix": "video/"},
    {"name": "ops", "sha256": hash_token(OPS_TOKEN)},
]
SIGNING_KEYS = {"2025": "old-secret", "2026": "new-secret"}


def auth_settings(media: MediaTree, flavor: str = "async", **overrides: object) -> Settings:
    return settings_for(
        media,
        flavor,
        api_keys=API_KEYS,
        signing_keys=SIGNING_KEYS,
        signing_key_id="2026",
        **overrides,
    )


@pytest.fixture(scope="module", params=FLAVORS)
def secured(request: pytest.FixtureRequest, media: MediaTree, serve: StartServer) -> RunningServer:
    return serve(auth_settings(media, request.param))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_auth_is_off_by_default(server: RunningServer) -> None:
    assert not server.settings.auth_enabled
    assert httpx.get(f"{server.url}/objects/hello.txt").status_code == 200


def test_missing_credentials_get_401_with_a_challenge(secured: RunningServer) -> None:
    for method in ["GET", "HEAD"]:
        response = httpx.request(method, f"{secured.url}/objects/{CLIP}")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="media-proxy"'
    assert httpx.get(f"{secured.url}/objects/{CLIP}").json()["error"] == "unauthorized"
    # Health stays open for load balancers and orchestrators.
    assert httpx.get(f"{secured.url}/healthz").status_code == 200


def test_bearer_keys(secured: RunningServer, media: MediaTree) -> None:
    response = httpx.get(f"{secured.url}/objects/{CLIP}", headers=bearer(CI_TOKEN))
    assert response.status_code == 200
    assert sha256(response.content) == sha256(media.data(CLIP))
    # Scoped to video/: another prefix is forbidden, an unscoped key reads anything.
    scoped = httpx.get(f"{secured.url}/objects/hello.txt", headers=bearer(CI_TOKEN))
    assert (scoped.status_code, scoped.json()["error"]) == (403, "forbidden")
    assert (
        httpx.get(f"{secured.url}/objects/hello.txt", headers=bearer(OPS_TOKEN)).status_code == 200
    )
    wrong = httpx.get(f"{secured.url}/objects/{CLIP}", headers=bearer("guess"))
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = httpx.get(f"{secured.url}/objects/{CLIP}", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401


def test_a_signed_url_survives_ranges_and_seeks(secured: RunningServer, media: MediaTree) -> None:
    query = signed_query(secured.settings, CLIP, ttl=600)
    url = f"{secured.url}/objects/{CLIP}?{query}"
    data = media.data(CLIP)
    assert sha256(httpx.get(url).content) == sha256(data)
    for spec, (start, stop) in [
        ("bytes=0-1", (0, 2)),
        ("bytes=-100", (len(data) - 100, len(data))),
    ]:
        response = httpx.get(url, headers={"Range": spec})
        assert response.status_code == 206
        assert response.content == data[start:stop]
    assert httpx.head(url).status_code == 200


def tampered(query: str, **changes: str) -> str:
    fields = {k: v[0] for k, v in parse_qs(query).items()}
    fields.update(changes)
    return "&".join(f"{k}={v}" for k, v in fields.items())


def test_bad_signed_urls_get_403(secured: RunningServer) -> None:
    good = signed_query(secured.settings, CLIP, ttl=600)
    expired = signed_query(secured.settings, CLIP, ttl=-1)
    fields = parse_qs(good)
    sig = fields["sig"][0]
    bad = [
        expired,
        tampered(good, expires=str(int(fields["expires"][0]) + 1)),  # a longer life
        tampered(good, sig=("A" if sig[0] != "A" else "B") + sig[1:]),
        tampered(good, kid="2024"),  # no such key id
        tampered(good, kid="2025"),  # another key's id: the signature does not match
        tampered(good, expires="1e12"),
    ]
    for query in bad:
        response = httpx.get(f"{secured.url}/objects/{CLIP}?{query}")
        assert (response.status_code, response.json()["error"]) == (403, "forbidden"), query
    # Bound to its key: the same signature does not open another object.
    other = httpx.get(f"{secured.url}/objects/hello.txt?{good}")
    assert other.status_code == 403


def test_old_signing_keys_keep_working_for_rotation(secured: RunningServer) -> None:
    old = signed_query(auth_settings_with_kid(secured.settings, "2025"), CLIP, ttl=600)
    assert parse_qs(old)["kid"] == ["2025"]
    assert (
        httpx.get(f"{secured.url}/objects/{CLIP}?{old}", headers={"Range": "bytes=0-0"}).status_code
        == 206
    )


def auth_settings_with_kid(settings: Settings, kid: str) -> Settings:
    return settings.model_copy(update={"signing_key_id": kid})


def test_sign_command_prints_a_working_url(secured: RunningServer, media: MediaTree) -> None:
    env = {
        "PROXY_SIGNING_KEYS": json.dumps(SIGNING_KEYS),
        "PROXY_SIGNING_KEY_ID": "2026",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", CLIP, "--ttl", "3600", "--base-url", secured.url],
        env=env,
        capture_output=True,
        timeout=30,
        check=True,
    )
    url = result.stdout.decode().strip()
    assert urlsplit(url).path == f"/objects/{CLIP}"
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    assert 3500 < expires - time.time() <= 3600
    assert sha256(httpx.get(url).content) == sha256(media.data(CLIP))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    assert result.stderr.decode() == f"expires {when} (in 3600 s)\n"  # stdout: the URL alone


@pytest.mark.parametrize("ttl", ["-5", "0", "604801", "99999999"])
def test_sign_refuses_a_ttl_the_proxy_would_refuse(ttl: str) -> None:
    """A link that could never work is not printed: one line naming the option, status 2."""
    env = {
        "PROXY_SIGNING_KEYS": json.dumps(SIGNING_KEYS),
        "PROXY_SIGNING_KEY_ID": "2026",
        "PROXY_MAX_SIGNED_TTL": "604800",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "sign", CLIP, "--ttl", ttl],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"--ttl: {ttl} is not between 1 and PROXY_MAX_SIGNED_TTL (604800)\n"
    )


def test_hash_key_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "hash-key"],
        input=b"my-token\n",
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.decode().strip() == hash_token("my-token")


def test_check_access_decisions(media: MediaTree) -> None:
    settings = auth_settings(media, max_signed_ttl=3600)
    now = 1_800_000_000.0
    check_access(settings, CLIP, f"Bearer {CI_TOKEN}", {}, now)
    check_access(settings, CLIP, f"bearer  {OPS_TOKEN} ", {}, now)
    query = dict(
        pair.split("=", 1) for pair in signed_query(settings, CLIP, 60, now=now).split("&")
    )
    check_access(settings, CLIP, None, query, now)
    cases: list[tuple[str | None, dict[str, str], float, int]] = [
        (None, {}, now, 401),
        ("Bearer", {}, now, 401),
        (f"Bearer {CI_TOKEN}x", {}, now, 401),
        (None, query, now + 61, 403),  # expired
        (None, {**query, "sig": query["sig"][:-1]}, now, 403),
        (None, {**query, "expires": str(int(now) + 7200)}, now, 403),  # beyond max_signed_ttl
    ]
    for authorization, params, moment, status in cases:
        with pytest.raises(Denied) as denied:
            check_access(settings, CLIP, authorization, params, moment)
        assert denied.value.status == status
