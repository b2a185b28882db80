"""Mounts (issue 24): several backends under one proxy, both flavours in one process.

One proxy serves a local directory (blocking and async), two moto buckets (boto3 and
aiobotocore, one under a key prefix), SeaweedFS (aiobotocore, under a two-segment mount name);
the RFC 9110 range and conditional checks of ``tests/test_routes.py`` run through each mount by
a client that puts the mount's name into every ``/objects/`` path. Bodies compared by sha256.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.auth import hash_token, signed_query
from proxy.config import Settings
from proxy.storage.mediatypes import media_type_for
from proxy.testing.s3servers import (
    LIMITED_PROFILE,
    OTHER_BUCKET,
    REGION,
    S3Server,
    put_object,
    upload_tree,
)
from tests import test_routes as routes
from tests.conftest import CHUNK_SIZE, MediaTree, RunningServer, StartServer, sha256
from tests.test_access_log import lines, sole, stream

__all__ = ["stream"]  # the access log's fixture, used here

CLIP = routes.CLIP
SECOND_BUCKET = "mounts-builds"
TOKEN_ALL, TOKEN_LOCAL = "every-mount-token", "local-only-token"
SIGNING = {"k1": "mount-signing-secret"}


def s3_mount(s3: S3Server, client: str, bucket: str = "media", **options: Any) -> dict[str, Any]:
    return {
        "backend": "s3",
        "s3_client": client,
        "s3_bucket": bucket,
        "s3_endpoint_url": s3.endpoint_url,
        "s3_region": REGION,
        "s3_addressing_style": "path",
        **options,
    }


def mounts_settings(mounts: dict[str, Any], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mounts": mounts,
        "chunk_size": CHUNK_SIZE,
        "cache_control": "public, max-age=60",
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.fixture(scope="session")
def second_bucket(
    moto: S3Server, media: MediaTree, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The media tree again in another moto bucket, under the key prefix ``v/``."""
    base = tmp_path_factory.mktemp("second-bucket")
    shutil.copytree(media.root, base / "v", symlinks=True)
    upload_tree(moto, base, bucket=SECOND_BUCKET, content_type=media_type_for)
    put_object(moto, "v/linked.txt", media.data("hello.txt"), "text/plain", bucket=SECOND_BUCKET)
    return SECOND_BUCKET


# name -> (backend kind for test_routes' validators check, the mount's options)
MOUNT_KINDS = {
    "disk": "local-sync",
    "adisk": "local-async",
    "videos": "moto-boto3",
    "builds": "moto-aiobotocore",
    "archive/sw": "seaweedfs-aiobotocore",
    "cached": "moto-boto3-cache",
}


@pytest.fixture(scope="session")
def mounted(
    media: MediaTree,
    moto: S3Server,
    seaweedfs: S3Server,
    second_bucket: str,
    serve: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> RunningServer:
    """One proxy, six mounts, both flavours, one through the slice cache (small slices, so that
    ranges cross them); keys and signed URLs on, one mount public."""
    mounts = {
        "disk": {"backend": "local", "local_root": str(media.root), "flavor": "sync"},
        "adisk": {
            "backend": "local",
            "local_root": str(media.root),
            "flavor": "async",
            "public": True,
            "listing": True,
        },
        "videos": s3_mount(moto, "boto3", cache_control="max-age=3600", listing=False),
        "builds": s3_mount(moto, "aiobotocore", second_bucket, s3_prefix="v", listing=True),
        "archive/sw": s3_mount(seaweedfs, "aiobotocore"),
        "cached": s3_mount(
            moto,
            "boto3",
            second_bucket,
            s3_prefix="v",
            cache_dir=str(tmp_path_factory.mktemp("mount-cache")),
            cache_slice_size=65536,
        ),
    }
    api_keys = [
        {"name": "all", "sha256": hash_token(TOKEN_ALL)},
        {"name": "local", "sha256": hash_token(TOKEN_LOCAL), "mounts": ["disk", "adisk"]},
    ]
    return serve(mounts_settings(mounts, api_keys=api_keys, signing_keys=SIGNING, listing=True))


class MountedTransport(httpx.HTTPTransport):
    """Puts ``mount/`` after ``/objects/`` in every request path (and a bearer key on)."""

    def __init__(self, mount: str, token: str | None = TOKEN_ALL) -> None:
        super().__init__()
        self.mount = mount.encode()
        self.token = token

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path
        if path.startswith(b"/objects/"):
            request.url = request.url.copy_with(
                raw_path=b"/objects/" + self.mount + b"/" + path[9:]
            )
        if self.token is not None:
            request.headers["authorization"] = f"Bearer {self.token}"
        return super().handle_request(request)


@pytest.fixture(params=list(MOUNT_KINDS))
def mount(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def through(mounted: RunningServer, mount: str) -> Iterator[httpx.Client]:
    """A client whose ``/objects/{key}`` is ``/objects/{mount}/{key}`` on the mounted proxy."""
    transport = MountedTransport(mount)
    with httpx.Client(base_url=mounted.url, timeout=10, transport=transport) as client:
        yield client


def test_the_suites_range_and_conditional_checks_pass_through_each_mount(
    through: httpx.Client, media: MediaTree, mount: str
) -> None:
    kind = MOUNT_KINDS[mount]
    if mount == "videos":  # its own Cache-Control: the global one is checked elsewhere
        response = through.get(f"/objects/{CLIP}")
        assert response.headers["cache-control"] == "max-age=3600"
        assert sha256(response.content) == sha256(media.data(CLIP))
        return
    routes.test_full_get_streams_the_object_with_its_headers(through, media, kind)
    for key, media_type in [
        ("hello.txt", "text/plain; charset=utf-8"),
        ("dir/inner.mp3", "audio/mpeg"),
        ("empty.bin", "application/octet-stream"),
        ("name with spaces & (parens) \u00fc.webm", "video/webm"),
    ]:
        routes.test_media_type_and_body_per_key(through, media, key, media_type)
    for range_header, start, stop in [
        ("bytes=0-1", 0, 2),
        ("bytes=100-199", 100, 200),
        ("bytes=-500", 3145851 - 500, 3145851),
        ("bytes=3145800-99999999", 3145800, 3145851),
    ]:
        routes.test_single_range(through, media, range_header, start, stop)
    routes.test_multiple_ranges_give_multipart_byteranges(through, media)
    routes.test_unsatisfiable_ranges_give_416(through, "bytes=3145851-")
    routes.test_invalid_range_is_ignored(through, media, "bytes=5-4")
    routes.test_range_on_head_is_ignored(through)
    routes.test_zero_byte_object(through)
    routes.test_if_none_match_gives_304_with_validators(through)
    routes.test_if_modified_since(through)
    routes.test_if_match_and_if_unmodified_since_give_412(through)
    routes.test_if_range(through, media)
    routes.test_conditionals_do_not_hide_a_missing_object(through)
    routes.test_download_sets_an_encoded_content_disposition(through)


def test_one_process_serves_both_flavours(mounted: RunningServer) -> None:
    table = mounted.app.state.mounts
    flavours = {served.name: served.sync for served in table.mounts}
    assert flavours == {
        "disk": True,
        "adisk": False,
        "videos": True,
        "builds": False,
        "archive/sw": False,
        "cached": True,
    }
    assert table.root is None
    assert type(table._by_name["cached"].storage).__name__ == "SliceCache"


@pytest.mark.parametrize(
    "path",
    [
        "/objects/nowhere/hello.txt",
        "/objects/videos",  # the mount itself, no key
        "/objects/archive/hello.txt",  # half of a two-segment name
        "/objects/hello.txt",
        "/objects/vid/eos/hello.txt",
    ],
)
def test_a_key_that_names_no_mount_is_404(mounted: RunningServer, path: str) -> None:
    response = httpx.get(mounted.url + path, headers={"authorization": f"Bearer {TOKEN_ALL}"})
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "the key names no mount"}


def test_the_same_key_in_two_buckets_and_a_prefix(mounted: RunningServer, media: MediaTree) -> None:
    auth = {"authorization": f"Bearer {TOKEN_ALL}"}
    for name in MOUNT_KINDS:
        response = httpx.get(f"{mounted.url}/objects/{name}/dir/inner.mp3", headers=auth)
        assert response.status_code == 200, name
        assert sha256(response.content) == sha256(media.data("dir/inner.mp3"))
    # builds is s3://mounts-builds/v/...: its bucket holds nothing outside the prefix.
    assert httpx.get(f"{mounted.url}/objects/builds/v/hello.txt", headers=auth).status_code == 404


def test_keys_scoped_to_mounts(mounted: RunningServer, media: MediaTree) -> None:
    def status(path: str, token: str | None = None, query: str = "") -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        url = f"{mounted.url}/objects/{path}" + (f"?{query}" if query else "")
        return httpx.get(url, headers=headers).status_code

    assert status("disk/hello.txt", TOKEN_LOCAL) == 200
    assert status("adisk/hello.txt", TOKEN_LOCAL) == 200
    for other in ["videos", "builds", "archive/sw", "cached"]:
        assert status(f"{other}/hello.txt", TOKEN_LOCAL) == 403, other
        assert status(f"{other}/hello.txt", TOKEN_ALL) == 200, other
        assert status(f"{other}/hello.txt") == 401, other
    denied = httpx.get(
        f"{mounted.url}/objects/videos/hello.txt",
        headers={"authorization": f"Bearer {TOKEN_LOCAL}"},
    )
    assert denied.json() == {"error": "forbidden", "detail": "this key may not read this mount"}
    # The public mount asks for nothing; a wrong token there is no reason to refuse either.
    assert status("adisk/hello.txt") == 200
    # A signature covers the mount's name: the same key in another mount is another object.
    settings = mounted.settings
    query = signed_query(settings, "videos/hello.txt", 60)
    assert status("videos/hello.txt", query=query) == 200
    assert status("disk/hello.txt", query=query) == 403
    assert status("builds/hello.txt", query=query) == 403


def test_listings_per_mount_and_the_mounts_at_the_root(
    mounted: RunningServer, media: MediaTree
) -> None:
    auth = {"authorization": f"Bearer {TOKEN_ALL}"}
    root = httpx.get(f"{mounted.url}/objects/?format=json", headers=auth)
    assert root.status_code == 200
    assert [entry["prefix"] for entry in root.json()] == [
        "adisk/",
        "archive/sw/",
        "builds/",
        "cached/",
        "disk/",
        "videos/",
    ]
    # The key for the local mounts sees those; no credentials: the public one.
    local = httpx.get(
        f"{mounted.url}/objects/?format=json", headers={"authorization": f"Bearer {TOKEN_LOCAL}"}
    )
    assert [entry["prefix"] for entry in local.json()] == ["adisk/", "disk/"]
    anonymous = httpx.get(f"{mounted.url}/objects/?format=json")
    assert [entry["prefix"] for entry in anonymous.json()] == ["adisk/"]
    # A mount's own listing: its keys, relative to the mount (builds: below its prefix).
    for name in ["adisk", "builds"]:
        listing = httpx.get(f"{mounted.url}/objects/{name}/dir/?format=json", headers=auth)
        assert listing.status_code == 200, name
        assert [entry["key"] for entry in listing.json()] == ["dir/inner.mp3"], name
    # HTML links carry the mount's path.
    page = httpx.get(f"{mounted.url}/objects/builds/dir/?format=html", headers=auth)
    assert 'href="/objects/builds/dir/inner.mp3"' in page.text
    # Listings off on a mount (the others take PROXY_LISTING's true): a folder is 404 there.
    off = httpx.get(f"{mounted.url}/objects/videos/dir/", headers=auth)
    assert off.status_code == 404


def test_readyz_reports_every_mount(mounted: RunningServer) -> None:
    response = httpx.get(f"{mounted.url}/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "mounts": {name: "ready" for name in MOUNT_KINDS},
    }


def test_readyz_names_the_failing_mount(
    media: MediaTree, moto: S3Server, serve: StartServer, tmp_path: Path
) -> None:
    # An endpoint nothing listens on: connection refused at once.
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    mounts = {
        "disk": {"backend": "local", "local_root": str(media.root)},
        "videos": s3_mount(moto, "boto3"),
        "gone": {
            "backend": "s3",
            "s3_bucket": "media",
            "s3_endpoint_url": dead,
            "s3_region": REGION,
            "s3_max_attempts": 1,
            "s3_connect_timeout": 1,
        },
    }
    proxy = serve(mounts_settings(mounts))
    response = httpx.get(f"{proxy.url}/readyz", timeout=30)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["failing"] == ["gone"]
    assert body["mounts"]["disk"] == body["mounts"]["videos"] == "ready"
    assert body["mounts"]["gone"] != "ready"
    assert response.headers["retry-after"] == "1"
    # The other mounts still serve.
    assert httpx.get(f"{proxy.url}/objects/videos/hello.txt").status_code == 200


# --------------------------------------------------------------------------------------------
# mode: redirect


@pytest.fixture(scope="session")
def redirecting(
    media: MediaTree,
    moto: S3Server,
    seaweedfs: S3Server,
    second_bucket: str,
    serve: StartServer,
) -> RunningServer:
    """Redirecting mounts on both flavours (moto with boto3, SeaweedFS with aiobotocore), one
    with a key prefix, behind bearer keys; a mount that streams beside them."""
    mounts = {
        "rv": s3_mount(moto, "boto3", mode="redirect"),
        "ra": s3_mount(seaweedfs, "aiobotocore", mode="redirect"),
        "rp": s3_mount(moto, "aiobotocore", second_bucket, s3_prefix="v", mode="redirect"),
        "streamed": s3_mount(moto, "aiobotocore"),
    }
    api_keys = [{"name": "all", "sha256": hash_token(TOKEN_ALL)}]
    return serve(mounts_settings(mounts, api_keys=api_keys, redirect_ttl=120))


REDIRECTS = {"rv": "moto", "ra": "seaweedfs", "rp": "moto"}
AUTH = {"authorization": f"Bearer {TOKEN_ALL}"}


@pytest.mark.parametrize("name", list(REDIRECTS))
def test_a_redirecting_mount_answers_get_with_307_to_a_presigned_url(
    request: pytest.FixtureRequest,
    redirecting: RunningServer,
    second_bucket: str,
    media: MediaTree,
    name: str,
) -> None:
    s3: S3Server = request.getfixturevalue(REDIRECTS[name])
    url = f"{redirecting.url}/objects/{name}/{CLIP}"
    answer = httpx.get(url, headers=AUTH)
    assert answer.status_code == 307
    location = answer.headers["location"]
    assert location.startswith(s3.endpoint_url + "/")
    key_path = f"/{second_bucket}/v/{CLIP}" if name == "rp" else f"/media/{CLIP}"
    assert httpx.URL(location).path == key_path
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=120" in location
    assert answer.headers["cache-control"] == "no-store"
    assert answer.content == b""
    # Followed (the bearer key is not sent on to S3: another origin).
    with httpx.Client(follow_redirects=True, headers=AUTH, timeout=10) as client:
        whole = client.get(url)
        assert whole.status_code == 200 and whole.url.host == httpx.URL(s3.endpoint_url).host
        assert sha256(whole.content) == sha256(media.data(CLIP))
        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206
        assert part.headers["content-range"] == "bytes 100-199/3145851"
        assert sha256(part.content) == sha256(media.data(CLIP)[100:200])
    # No credentials: refused by the proxy, never redirected.
    assert httpx.get(url).status_code == 401


@pytest.mark.parametrize("name", list(REDIRECTS))
def test_head_and_conditionals_are_answered_by_the_proxy(
    redirecting: RunningServer, media: MediaTree, name: str
) -> None:
    url = f"{redirecting.url}/objects/{name}/{CLIP}"
    head = httpx.head(url, headers=AUTH)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(media.data(CLIP)))
    assert head.headers["cache-control"] == "public, max-age=60"  # the proxy's, not S3's
    etag = head.headers["etag"]
    not_modified = httpx.get(url, headers={**AUTH, "If-None-Match": etag})
    assert (not_modified.status_code, not_modified.headers["etag"]) == (304, etag)
    failed = httpx.get(url, headers={**AUTH, "If-Match": '"other"'})
    assert (failed.status_code, failed.json()["error"]) == (412, "precondition_failed")
    # A precondition that holds: S3 sends the bytes.
    holds = httpx.get(url, headers={**AUTH, "If-None-Match": '"other"'})
    assert holds.status_code == 307
    missing = httpx.get(
        f"{redirecting.url}/objects/{name}/missing.mp4", headers={**AUTH, "If-None-Match": "*"}
    )
    assert missing.status_code == 404


def test_download_becomes_the_presigned_content_disposition(
    redirecting: RunningServer, media: MediaTree
) -> None:
    url = f"{redirecting.url}/objects/rv/hello.txt"
    answer = httpx.get(url, headers=AUTH, params={"download": "r\u00e9sum\u00e9.txt"})
    assert answer.status_code == 307
    query = dict(httpx.URL(answer.headers["location"]).params)
    streamed = httpx.get(
        f"{redirecting.url}/objects/streamed/hello.txt",
        headers=AUTH,
        params={"download": "r\u00e9sum\u00e9.txt"},
    )
    assert query["response-content-disposition"] == streamed.headers["content-disposition"]
    followed = httpx.get(answer.headers["location"])
    assert followed.headers["content-disposition"] == streamed.headers["content-disposition"]
    assert sha256(followed.content) == sha256(media.data("hello.txt"))


def test_curl_follows_the_redirect(redirecting: RunningServer, media: MediaTree) -> None:
    import subprocess

    from tests.clients.conftest import require_tool

    curl = require_tool("curl")
    for name in REDIRECTS:
        url = f"{redirecting.url}/objects/{name}/{CLIP}"
        for extra, expected in [
            ([], media.data(CLIP)),
            (["-r", "1000-1999"], media.data(CLIP)[1000:2000]),
        ]:
            done = subprocess.run(
                [curl, "-sSfL", "-H", f"Authorization: Bearer {TOKEN_ALL}", *extra, url],
                capture_output=True,
                timeout=60,
                check=True,
            )
            assert sha256(done.stdout) == sha256(expected), (name, extra)


# --------------------------------------------------------------------------------------------
# the access log and metrics


def test_access_lines_and_metrics_carry_the_mount(
    mounted: RunningServer, stream: io.StringIO
) -> None:
    def counted(mount: str) -> float:
        text = httpx.get(f"{mounted.url}/metrics").text
        pattern = rf'^proxy_mount_requests_total{{mount="{re.escape(mount)}",status="206"}} (\S+)$'
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    before = {name: counted(name) for name in ["archive/sw", "disk"]}
    sole(stream)
    for name in ["archive/sw", "disk"]:
        response = httpx.get(
            f"{mounted.url}/objects/{name}/{CLIP}", headers={**AUTH, "Range": "bytes=0-99"}
        )
        assert response.status_code == 206

    def objects() -> list[dict[str, Any]]:  # the lines of object requests (not /metrics')
        return [line for line in lines(stream) if line["key"] is not None]

    deadline = time.monotonic() + 10
    while len(objects()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    found = [(line["key"], line["mount"], line["status"]) for line in objects()]
    assert found == [(f"archive/sw/{CLIP}", "archive/sw", 206), (f"disk/{CLIP}", "disk", 206)]
    assert list(objects()[0])[3:6] == ["key", "mount", "range"]
    for name in ["archive/sw", "disk"]:
        assert counted(name) == before[name] + 1, name


# --------------------------------------------------------------------------------------------
# CORS per mount


def test_each_mount_answers_cors_for_its_own_origins(media: MediaTree, serve: StartServer) -> None:
    local = {"backend": "local", "local_root": str(media.root)}
    proxy = serve(
        mounts_settings(
            {
                "a": {**local, "cors_allow_origins": ["https://a.example"]},
                "inherits": local,
                "none": {**local, "cors_allow_origins": []},
            },
            cors_allow_origins=["https://player.example"],
        )
    )

    def allowed(mount: str, origin: str) -> tuple[str | None, str | None]:
        """What a preflight and a GET from ``origin`` get back as the allowed origin."""
        url = f"{proxy.url}/objects/{mount}/{CLIP}"
        preflight = httpx.options(
            url,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "range",
            },
        )
        get = httpx.get(url, headers={"Origin": origin, "Range": "bytes=0-9"})
        assert get.status_code == 206 and get.content == media.data(CLIP)[:10]
        return (
            preflight.headers.get("access-control-allow-origin"),
            get.headers.get("access-control-allow-origin"),
        )

    assert allowed("a", "https://a.example") == ("https://a.example", "https://a.example")
    assert allowed("a", "https://player.example") == (None, None)
    assert allowed("inherits", "https://player.example") == (
        "https://player.example",
        "https://player.example",
    )
    assert allowed("inherits", "https://a.example") == (None, None)
    assert allowed("none", "https://player.example") == (None, None)
    # Outside any mount, the app's own origins.
    health = httpx.get(f"{proxy.url}/healthz", headers={"Origin": "https://player.example"})
    assert health.headers["access-control-allow-origin"] == "https://player.example"


def test_the_landing_page_names_each_mount(mounted: RunningServer) -> None:
    facts = httpx.get(f"{mounted.url}/").json()
    assert facts["objects"] == "/objects/{mount}/{key}"
    assert "backend" not in facts and facts["slice_cache"] is True
    assert facts["mounts"]["builds"] == {
        "kind": "s3",
        "client": "aiobotocore",
        "bucket": SECOND_BUCKET,
        "prefix": "v",
        "public": False,
        "redirect": False,
    }
    assert facts["mounts"]["adisk"] == {
        "kind": "local",
        "client": "async",
        "public": True,
        "redirect": False,
    }
    page = httpx.get(f"{mounted.url}/", headers={"accept": "text/html"}).text
    assert "<code>archive/sw/</code>" in page and "public" in page


# --------------------------------------------------------------------------------------------
# credentials per mount


def test_each_mount_reads_with_its_own_credentials_profile(
    seaweedfs: S3Server, media: MediaTree, serve: StartServer
) -> None:
    """SeaweedFS knows the default identity (everything) and the ``limited`` profile's (reads
    OTHER_BUCKET only): the same proxy reads each bucket with the profile its mount names."""
    put_object(seaweedfs, "hello.txt", media.data("hello.txt"), "text/plain", OTHER_BUCKET)
    proxy = serve(
        mounts_settings(
            {
                "full": s3_mount(seaweedfs, "boto3"),
                "limited": s3_mount(
                    seaweedfs, "aiobotocore", OTHER_BUCKET, s3_profile=LIMITED_PROFILE
                ),
                "limited-sync": s3_mount(
                    seaweedfs, "boto3", OTHER_BUCKET, s3_profile=LIMITED_PROFILE
                ),
                "denied": s3_mount(seaweedfs, "aiobotocore", s3_profile=LIMITED_PROFILE),
            }
        )
    )
    for name in ["full", "limited", "limited-sync"]:
        response = httpx.get(f"{proxy.url}/objects/{name}/hello.txt", timeout=30)
        assert response.status_code == 200, name
        assert sha256(response.content) == sha256(media.data("hello.txt"))
    denied = httpx.get(f"{proxy.url}/objects/denied/hello.txt", timeout=30)
    assert (denied.status_code, denied.json()["error"]) == (403, "forbidden")


def test_a_mount_takes_only_the_credentials_its_auth_names(
    media: MediaTree, serve: StartServer
) -> None:
    local = {"backend": "local", "local_root": str(media.root)}
    proxy = serve(
        mounts_settings(
            {"k": {**local, "auth": "keys"}, "s": {**local, "auth": "signed"}, "any": local},
            api_keys=[{"name": "all", "sha256": hash_token(TOKEN_ALL)}],
            signing_keys=SIGNING,
            listing=True,
        )
    )

    def answer(mount: str, signed: bool) -> tuple[int, str | None]:
        key = f"{mount}/hello.txt"
        if signed:
            query = signed_query(proxy.settings, key, 60)
            response = httpx.get(f"{proxy.url}/objects/{key}?{query}")
        else:
            response = httpx.get(f"{proxy.url}/objects/{key}", headers=AUTH)
        return response.status_code, response.json().get("detail") if response.is_error else None

    assert answer("k", signed=False) == (200, None)
    assert answer("k", signed=True) == (403, "this mount takes bearer keys only")
    assert answer("s", signed=True) == (200, None)
    assert answer("s", signed=False) == (403, "this mount takes signed URLs only")
    assert answer("any", signed=True) == answer("any", signed=False) == (200, None)
    # The mounts a credential can use, and no others, are listed at /objects/.
    bearer = httpx.get(f"{proxy.url}/objects/?format=json", headers=AUTH).json()
    assert [entry["prefix"] for entry in bearer] == ["any/", "k/"]
    query = signed_query(proxy.settings, "", 60, params=[("format", "json")])
    signed = httpx.get(f"{proxy.url}/objects/?{query}").json()
    assert [entry["prefix"] for entry in signed] == ["any/", "s/"]
