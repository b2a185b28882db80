"""The browse page in a real browser (Debian's Chromium via Playwright): it renders under its own
strict Content-Security-Policy without a single violation, shows a thumbnail that loads, a click
on a video plays it (its clock advances) and a seek lands; a screenshot goes to the test
artifacts (``TEST_ARTIFACTS``, default ``build/test-artifacts``). Local disk and SeaweedFS."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response

from proxy.testing.s3servers import S3Server, upload_tree
from tests.clients.conftest import DURATION, require_tool
from tests.clients.test_browser import PAGE_TIMEOUT_MS, browser  # noqa: F401  # the fixture
from tests.conftest import MediaTree, StartServer, s3_settings, settings_for

ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build/test-artifacts")
)
WAIT_S = 20.0  # the bound of every wait for the page
# Markup in a name: it must show as text, never become an element.
TRAP = '<b id="trap">"x".mp4'
BACKENDS = ["local-async", "seaweedfs-boto3"]


@pytest.fixture(scope="module")
def browse_tree(client_media: MediaTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """browse/: two clips (one named with markup), an audio clip, an image, a sub-folder."""
    root = tmp_path_factory.mktemp("browse") / "root"
    clips = root / "browse"
    (clips / "more").mkdir(parents=True)
    shutil.copy(client_media.root / "clips/faststart.mp4", clips / "clip.mp4")
    shutil.copy(client_media.root / "clips/faststart.mp4", clips / TRAP)
    shutil.copy(client_media.root / "clips/audio.mp3", clips / "tone.mp3")
    (clips / "more" / "notes.txt").write_text("notes\n")
    ffmpeg = require_tool("ffmpeg")
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"]
    command += ["-i", "testsrc2=size=160x120", "-frames:v", "1", str(clips / "still.png")]
    subprocess.run(command, check=True, timeout=60)
    return root


@pytest.fixture(scope="module", params=BACKENDS)
def browse_url(
    request: pytest.FixtureRequest, browse_tree: Path, serve: StartServer
) -> Iterator[str]:
    """The browse page of browse/ on a proxy with listings on."""
    kind, flavor = request.param.split("-")
    if kind == "local":
        settings = settings_for(MediaTree(browse_tree, browse_tree), flavor, listing=True)
    else:
        s3: S3Server = request.getfixturevalue("seaweedfs")
        upload_tree(s3, browse_tree)
        settings = s3_settings(s3, flavor, listing=True)
    running = serve(settings)
    yield f"{running.url}/objects/browse/"


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:  # noqa: F811
    """A fresh context (CSP enforced) and page, with its console messages and every answer
    that was not 2xx (but the favicon's: Chromium asks for one, the proxy has none)."""
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    opened = context.new_page()
    console: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        console.append(f"{message.type}: {message.text}")

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: console.append(f"pageerror: {error}"))

    def on_response(response: Response) -> None:
        if response.status >= 300 and not response.url.endswith("/favicon.ico"):
            console.append(f"answer: {response.status} {response.url}")

    opened.on("response", on_response)
    try:
        yield opened, console
    finally:
        context.close()


def poll(page: Page, expression: str, what: str) -> Any:
    """Evaluate ``expression`` (a function) until it returns something truthy, for WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if value := page.evaluate(expression):
            return value
        time.sleep(0.05)
    state = page.evaluate(VIDEO_STATE)
    raise AssertionError(f"no {what} within {WAIT_S} s; video: {state}")


VIDEO = "document.querySelector('video[src$=\"/clip.mp4\"]')"
VIDEO_STATE = f"""() => {{ const v = {VIDEO};
  return {{ paused: v.paused, time: v.currentTime, ready: v.readyState,
           error: v.error && v.error.message, duration: v.duration }}; }}"""


def test_the_browse_page_plays_and_seeks_in_chromium(
    browse_url: str, page: tuple[Page, list[str]], request: pytest.FixtureRequest
) -> None:
    tab, console = page
    response = tab.goto(browse_url)
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert tab.title() == "/browse/"
    # Folders first, then the objects in S3's order; the name with markup is text.
    rows = tab.locator("tbody tr td:first-child > a:first-child").all_inner_texts()
    assert rows == ["more/", TRAP, "clip.mp4", "still.png", "tone.mp3"]  # "<" < "c"
    assert tab.locator("#trap").count() == 0
    assert tab.locator("video").count() == 2 and tab.locator("audio").count() == 1
    poll(tab, "() => document.querySelector('img.thumb').naturalWidth === 160", "thumbnail")
    poll(tab, f"() => {VIDEO}.readyState >= 1", "video metadata")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"listing-{request.node.callspec.id}.png"
    tab.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # A click on the video (its controls' play button, in the middle) plays it.
    tab.locator('video[src$="/clip.mp4"]').click()
    poll(tab, f"() => !{VIDEO}.paused && {VIDEO}.currentTime > 0.5", "playback")
    target = DURATION - 2
    tab.evaluate(f"() => {{ {VIDEO}.currentTime = {target}; }}")
    advanced = poll(
        tab,
        f"() => !{VIDEO}.seeking && {VIDEO}.currentTime > {target + 0.3} && {VIDEO}.currentTime",
        "playback after the seek",
    )
    assert target + 0.3 < advanced <= DURATION
    # No Content-Security-Policy violation (the style is admitted by its hash), no script error,
    # no failed answer.
    unexpected = [line for line in console if not line.startswith("error: Failed to load")]
    assert unexpected == []
