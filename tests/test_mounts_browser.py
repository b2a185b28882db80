"""Headless Chromium plays a video through a redirecting mount (issue 24): the player's GETs
reach the proxy, which checks the signed URL and answers 307 to a presigned SeaweedFS URL; the
browser follows each one and seeks with Range requests that S3 itself answers with 206. Both
flavours (boto3 and aiobotocore mounts) in one proxy.

The page and the proxy share no origin with S3, and the element has no ``crossorigin``: a
redirected media load needs no CORS from S3 (with ``crossorigin`` S3 would have to allow the
page's origin, which is S3's configuration, not the proxy's).
"""

from __future__ import annotations

from html import escape

import pytest

from proxy.auth import signed_url
from proxy.testing.s3servers import REGION, S3Server
from tests.clients.conftest import (
    DURATION,
    PageServer,
    client_media,
    pages,
    seaweedfs_with_client_media,
)
from tests.clients.test_browser import (
    CONTENT_RANGE,
    DURATION_TOLERANCE,
    MEDIA_SCRIPT,
    Tab,
    browser,
    play_through_end,
    tab,
    write_page,
)
from tests.conftest import MediaTree, RunningServer, StartServer
from tests.test_mounts import mounts_settings

__all__ = ["browser", "client_media", "pages", "seaweedfs_with_client_media", "tab"]

KEYS = ["clips/moov-at-end.mp4", "clips/video.webm"]


@pytest.fixture(scope="module")
def redirect_proxy(seaweedfs_with_client_media: S3Server, serve: StartServer) -> RunningServer:
    s3 = seaweedfs_with_client_media
    common = {
        "backend": "s3",
        "s3_bucket": "media",
        "s3_endpoint_url": s3.endpoint_url,
        "s3_region": REGION,
        "s3_addressing_style": "path",
        "mode": "redirect",
    }
    mounts = {
        "sync": {**common, "s3_client": "boto3"},
        "async": {**common, "s3_client": "aiobotocore"},
    }
    return serve(mounts_settings(mounts, signing_keys={"k1": "browser-secret"}))


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("mount", ["sync", "async"])
def test_chromium_plays_and_seeks_through_a_redirecting_mount(
    tab: Tab,
    redirect_proxy: RunningServer,
    seaweedfs_with_client_media: S3Server,
    client_media: MediaTree,
    pages: PageServer,
    mount: str,
    key: str,
) -> None:
    src = signed_url(redirect_proxy.settings, redirect_proxy.url, f"{mount}/{key}", 600)
    element = f'<video id="media" preload="metadata" muted src="{escape(src)}"></video>'
    name = f"redirect-{mount}-{key.replace('/', '-').replace('.', '-')}"
    url = write_page(pages, name, f"{element}\n<script>{MEDIA_SCRIPT}</script>")
    playback = play_through_end(tab, url)
    size = (client_media.root / key).stat().st_size
    s3_origin = seaweedfs_with_client_media.endpoint_url
    at_proxy = [r for r in tab.responses if r.url == src]
    at_s3 = [r for r in tab.responses if r.url.startswith(s3_origin + "/media/" + key)]
    report = "\n".join(
        [f"metadata: {playback.metadata}", f"played: {playback.played}"]
        + [f"{r.request.method} {r.url[:90]} -> {r.status}" for r in tab.responses]
        + tab.console
    )
    assert playback.metadata["ok"], report
    assert abs(playback.metadata["duration"] - DURATION) <= DURATION_TOLERANCE, report
    played = playback.played
    assert played is not None and played["stage"] == "done", report
    assert played["advancedTo"] > played["target"], report
    # Every media request the player made reached the proxy first and was sent on by a 307.
    assert at_proxy and all(r.status == 307 for r in at_proxy), report
    assert all(r.headers["location"].startswith(s3_origin + "/") for r in at_proxy), report
    # S3 answered the ranges, and they reached past the middle: the seek near the end played
    # bytes S3 sent as a 206. (Chromium may ask for the tail by a range of its own, or may
    # already hold it from an open range such as bytes=65536-, so no particular start is due.)
    ranged = [r for r in at_s3 if r.status == 206]
    assert ranged, report
    ends = []
    for response in ranged:
        match = CONTENT_RANGE.match(response.headers["content-range"])
        assert match and int(match[3]) == size, report
        ends.append(int(match[2]))
    assert max(ends) > size // 2, report
