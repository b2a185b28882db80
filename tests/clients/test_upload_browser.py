"""A browser uploads media straight to the proxy (issue 25) and plays what it stored.

A page on the page server's origin fetches a clip from its own origin, makes a ``Blob`` of it and
sends it with ``fetch(signedPutUrl, {method: "PUT", ...})``: a cross-origin PUT with a
``Content-Type`` that is not CORS-safelisted, so Chromium first sends an OPTIONS preflight, which
the proxy grants for the allowed origin. The stored object is compared by sha256 with the clip,
behind the proxy (the local directory, or SeaweedFS through boto3), and then played and seeked
in a ``<video>`` through a signed GET URL. From an origin the proxy does not allow, the
preflight fails, the PUT is never sent and nothing is stored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.auth import signed_url
from proxy.testing.s3servers import BUCKET, S3Server, s3_client
from tests.clients.conftest import PageServer, client_media, page_server, pages
from tests.clients.test_browser import (
    MEDIA_SCRIPT,
    Tab,
    browser,
    check_playback,
    play_through_end,
    tab,
    write_page,
)
from tests.conftest import MediaTree, RunningServer, StartServer, s3_settings, settings_for, sha256

__all__ = ["browser", "client_media", "pages", "tab"]

CLIP = "clips/moov-at-end.mp4"  # the player must range-read its tail: ranges of the upload
SIGNING_KEYS = {"k1": "browser-upload-secret-0123456789"}
UPLOAD_BACKENDS = ["local-async", "seaweedfs-aiobotocore", "seaweedfs-boto3"]
TTL_S = 600

# Fetches the clip from the page's own origin, uploads it as a Blob, returns what the page saw.
# Never throws: a failed fetch comes back as {ok: false, name, message}.
UPLOAD = """
async ({ source, target, waitMs }) => {
  const bounded = (promise, what) => Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what} hung`)), waitMs)),
  ]);
  try {
    const fetched = await bounded(fetch(source), "fetching the clip");
    const bytes = new Uint8Array(await fetched.arrayBuffer());
    const blob = new Blob([bytes], { type: "video/mp4" });
    const response = await bounded(
      fetch(target, { method: "PUT", body: blob, headers: { "Content-Type": "video/mp4" } }),
      "the upload",
    );
    const answer = await response.text();
    return {
      ok: true, status: response.status, type: response.type, size: blob.size,
      etag: response.headers.get("ETag"), location: response.headers.get("Location"),
      answer,
    };
  } catch (error) {
    return { ok: false, name: error.name, message: String(error.message) };
  }
}
"""
WAIT_MS = 20_000


class Uploads:
    """A proxy with writes on (signed URLs only), its page origin, and what is behind it."""

    def __init__(self, server: RunningServer, root: Path | None, s3: S3Server | None, prefix: str):
        self.server = server
        self.root = root
        self.s3 = s3
        self.prefix = prefix

    def signed(self, key: str, method: str = "GET") -> str:
        return signed_url(self.server.settings, self.server.url, key, TTL_S, method=method)

    def stored(self, key: str) -> bytes | None:
        """The object's bytes as the backend holds them (None: not stored)."""
        if self.root is not None:
            path = self.root / key
            return path.read_bytes() if path.exists() else None
        assert self.s3 is not None
        with contextlib.closing(s3_client(self.s3)) as client:
            try:
                answer = client.get_object(Bucket=BUCKET, Key=f"{self.prefix}/{key}")
            except client.exceptions.NoSuchKey:
                return None
            data: bytes = answer["Body"].read()
            return data


@pytest.fixture(scope="module", params=UPLOAD_BACKENDS)
def uploads(
    request: pytest.FixtureRequest,
    client_media: MediaTree,
    pages: PageServer,
    serve: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Uploads:
    kind, flavor = request.param.split("-")
    options: dict[str, object] = {
        "cors_allow_origins": pages.origin,
        "writes": True,
        "signing_keys": SIGNING_KEYS,
        "chunk_size": 256 * 1024,
    }
    if kind == "local":
        root = tmp_path_factory.mktemp(f"browser-uploads-{flavor}")
        return Uploads(
            serve(settings_for(client_media, flavor, local_root=root, **options)), root, None, ""
        )
    s3: S3Server = request.getfixturevalue(kind)
    prefix = f"browser-uploads-{flavor}-{time.monotonic_ns():x}"
    server = serve(s3_settings(s3, flavor, s3_prefix=prefix, **options))
    return Uploads(server, None, s3, prefix)


@pytest.fixture(scope="module")
def other_pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageServer]:
    """A second page server: an origin no upload proxy allows."""
    with page_server(tmp_path_factory.mktemp("other-pages")) as server:
        yield server


def upload_from_page(
    tab: Tab, site: PageServer, uploads: Uploads, media: MediaTree, put_url: str
) -> dict[str, Any]:
    """Put the clip beside a page on site's origin, open the page, upload it from there."""
    source = f"source-{uploads.server.port}.mp4"
    shutil.copyfile(media.root / CLIP, site.root / source)
    tab.page.goto(write_page(site, f"upload-{uploads.server.port}", "<p>upload</p>"))
    arguments = {"source": f"/{source}", "target": put_url, "waitMs": WAIT_MS}
    result: dict[str, Any] = tab.page.evaluate(UPLOAD, arguments)
    return result


def access_log(caplog: pytest.LogCaptureFixture, key: str, expected: list[str]) -> list[str]:
    """The methods of the requests for key, in the order of the proxy's access log: once they are
    ``expected``, or as they are after 10 s (a line is written after its answer was sent, so it
    may come after the page saw the answer)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]
        path = f"/objects/{key}"
        methods = [line["method"] for line in lines if path == line["path"] or key == line["key"]]
        if methods == expected or time.monotonic() > deadline:
            return methods
        time.sleep(0.05)


def test_a_page_uploads_a_clip_then_plays_and_seeks_it(
    tab: Tab,
    uploads: Uploads,
    client_media: MediaTree,
    pages: PageServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    key = f"uploaded/{time.monotonic_ns():x}.mp4"
    put_url = uploads.signed(key, "PUT")
    result = upload_from_page(tab, pages, uploads, client_media, put_url)
    clip = client_media.data(CLIP)
    report = f"{result}\nsent: {tab.sent}\nconsole: {tab.console}"
    assert result["ok"], report
    assert result["status"] == 201, report
    assert result["type"] == "cors", report
    assert result["size"] == len(clip), report
    assert result["etag"] and result["etag"].startswith('"'), report  # exposed to the page
    assert result["location"] == f"/objects/{key}", report
    # The preflight went first and allowed the PUT; the page then sent it (CDP may announce
    # the PUT before its preflight: the order is the proxy's access log's).
    assert ("OPTIONS", put_url) in tab.sent and ("PUT", put_url) in tab.sent, report
    assert access_log(caplog, key, ["OPTIONS", "PUT"]) == ["OPTIONS", "PUT"], report
    assert not tab.cors_complaints(), report
    stored = uploads.stored(key)
    assert stored is not None and sha256(stored) == sha256(clip)

    # Played back from the page origin through a signed GET URL: ranges, the seek near the end.
    src = uploads.signed(key)
    element = (
        f'<video id="media" crossorigin="anonymous" preload="metadata" muted '
        f'src="{escape(src)}"></video>'
    )
    page = write_page(
        pages, f"play-upload-{uploads.server.port}", f"{element}\n<script>{MEDIA_SCRIPT}</script>"
    )
    playback = play_through_end(tab, page)
    seen = check_playback(tab, playback, src, pages, len(clip))
    head = httpx.head(src, timeout=10)
    assert head.headers["etag"] == result["etag"]
    assert head.headers["content-type"] == "video/mp4"
    assert all(e.status in (200, 206) for e in seen)


def test_a_page_on_an_origin_not_allowed_uploads_nothing(
    tab: Tab,
    uploads: Uploads,
    client_media: MediaTree,
    other_pages: PageServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    key = f"refused/{time.monotonic_ns():x}.mp4"
    put_url = uploads.signed(key, "PUT")
    # The same signed URL outside a browser would store it: only CORS refuses the page.
    preflight = httpx.options(
        put_url,
        headers={
            "Origin": other_pages.origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=10,
    )
    assert "access-control-allow-origin" not in preflight.headers, preflight.headers
    result = upload_from_page(tab, other_pages, uploads, client_media, put_url)
    report = f"{result}\nsent: {tab.sent}\nconsole: {tab.console}"
    assert not result["ok"], report
    assert result["name"] == "TypeError", report  # "Failed to fetch"
    assert ("OPTIONS", put_url) in tab.sent, report
    # Chromium announces the PUT (CDP's requestWillBeSent) but fails it after the preflight
    # without sending it: no answer, net::ERR_FAILED, and no PUT in the proxy's access log.
    assert not [r for r in tab.responses if r.request.method == "PUT"], report
    failed = [r.failure for r in tab.failures if r.method == "PUT" and r.url == put_url]
    assert failed == ["net::ERR_FAILED"], report
    assert tab.cors_complaints(), report
    # httpx's preflight, then the browser's
    assert access_log(caplog, key, ["OPTIONS", "OPTIONS"]) == ["OPTIONS", "OPTIONS"]
    assert uploads.stored(key) is None
    assert httpx.get(uploads.signed(key), timeout=10).status_code == 404
