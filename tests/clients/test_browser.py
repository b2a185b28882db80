"""A real browser plays the proxied clips from another origin: Debian's Chromium via Playwright.

Each page lives on the page server's origin and points a ``crossorigin`` media element (or a
``fetch``) at the proxy, so every media request is a real CORS request with real Range headers.
The browser is never downloaded: Playwright drives ``/usr/bin/chromium``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Request,
    Response,
    sync_playwright,
)

from tests.clients.conftest import DURATION, PageServer, require_tool
from tests.conftest import MediaTree, RunningServer, StartServer, settings_for, sha256

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]
WAIT_MS = 20_000  # the bound of every wait inside a page
PAGE_TIMEOUT_MS = 30_000  # Playwright's own bound (navigation, actions), above WAIT_MS
DURATION_TOLERANCE = 0.3
SEEK_FROM_END = 1.0
ADVANCE = 0.2  # playback must move this far past the seek target
LINK_BYTES_PER_S = 500_000  # 4 Mbit/s: the clips are about 1 Mbit/s
LINK_LATENCY_MS = 10

VIDEOS = ["clips/video.webm", "clips/faststart.mp4", "clips/moov-at-end.mp4"]
AUDIOS = ["clips/audio.mp3", "clips/audio.opus"]
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
CORS_WORDS = ("cors", "access-control", "cross-origin")

# Runs in the page right after the media element, so its log holds every event from the first.
# Neither entry point throws: each returns how far it got with the element's state and event log,
# for the assertion messages.
MEDIA_SCRIPT = """
const media = document.getElementById("media");
const log = [];
let metadataAt = null;  // epoch ms, comparable with the browser's request start times
media.addEventListener("loadedmetadata", () => { metadataAt = Date.now(); });
for (const name of ["loadstart", "loadedmetadata", "loadeddata", "canplay", "seeking", "seeked",
                    "play", "playing", "waiting", "stalled", "pause", "ended", "error"]) {
  media.addEventListener(name, () => log.push(`${name}@${media.currentTime.toFixed(3)}`));
}
const state = () => ({
  readyState: media.readyState, networkState: media.networkState,
  currentTime: media.currentTime, duration: media.duration, paused: media.paused,
  error: media.error && { code: media.error.code, message: media.error.message }, log,
});
const until = (what, predicate, waitMs) => new Promise((resolve, reject) => {
  const started = performance.now();
  const check = () => {
    if (media.error) return reject(new Error(`media error while waiting for ${what}`));
    if (predicate()) return resolve();
    if (performance.now() - started > waitMs) return reject(new Error(`no ${what} in time`));
    setTimeout(check, 20);
  };
  check();
});
window.waitForMetadata = async (waitMs) => {
  const result = {};
  try {
    await until("loadedmetadata", () => metadataAt !== null, waitMs);
    Object.assign(result, { ok: true, duration: media.duration, metadataAt });
  } catch (error) {
    Object.assign(result, { ok: false, failure: String(error) });
  }
  return { ...result, state: state() };
};
// Seek near the end, play until the clock moves past the seek target, pause.
window.seekAndPlay = async ({ waitMs, fromEnd, advance }) => {
  const result = { stage: "seeked" };
  try {
    let seeked = false;
    media.addEventListener("seeked", () => { seeked = true; }, { once: true });
    result.target = media.duration - fromEnd;
    media.currentTime = result.target;
    await until("seeked", () => seeked && !media.seeking, waitMs);
    result.seekedAt = media.currentTime;
    result.stage = "play";
    media.muted = true;
    await Promise.race([
      media.play(),
      new Promise((_, reject) => setTimeout(() => reject(new Error("play() hung")), waitMs)),
    ]);
    result.stage = "advance";
    await until("playback progress", () => media.currentTime > result.target + advance, waitMs);
    result.advancedTo = media.currentTime;
    media.pause();
    result.stage = "done";
  } catch (error) {
    result.failure = String(error);
  }
  return { ...result, state: state() };
};
"""

FETCH_RANGE = """
async ({ url, range }) => {
  try {
    const response = await fetch(url, { headers: { Range: range } });
    const body = new Uint8Array(await response.arrayBuffer());
    const header = (name) => response.headers.get(name);
    return {
      ok: true, status: response.status, type: response.type,
      contentRange: header("Content-Range"), acceptRanges: header("Accept-Ranges"),
      etag: header("ETag"), contentLength: header("Content-Length"), body: Array.from(body),
    };
  } catch (error) {
    return { ok: false, name: error.name, message: String(error.message) };
  }
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; missing: a failure in CI, a skip locally."""
    executable = CHROMIUM if Path(CHROMIUM).exists() else require_tool("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=PAGE_TIMEOUT_MS,
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page in a fresh context (no shared media cache) and what it saw."""

    page: Page
    console: list[str] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    failures: list[Request] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)  # (method, URL), preflights too

    def cors_complaints(self) -> list[str]:
        return [line for line in self.console if any(w in line.lower() for w in CORS_WORDS)]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A fresh context and page: HTTP cache off, a broadband-like link, everything recorded."""
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    # With its HTTP cache on, Chromium answers ranges partly from the cache and sends the proxy
    # other (narrower) ranges than the player asked for, reporting synthesized headers: off, the
    # exchanges recorded here are the ones on the wire.
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    # Over loopback the whole clip arrives with the first response before the demuxer looks for
    # the moov atom at the end, and then no tail request is needed; at LINK_BYTES_PER_S the
    # player has to range-read as it would on a real network.
    link = {"offline": False, "latency": LINK_LATENCY_MS, "uploadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", {**link, "downloadThroughput": LINK_BYTES_PER_S})
    seen = Tab(page)

    def on_request_will_be_sent(event: dict[str, Any]) -> None:
        seen.sent.append((event["request"]["method"], event["request"]["url"]))

    cdp.on("Network.requestWillBeSent", on_request_will_be_sent)

    def on_console(message: ConsoleMessage) -> None:
        seen.console.append(f"{message.type}: {message.text}")

    def on_page_error(error: Error) -> None:
        seen.console.append(f"pageerror: {error}")

    def on_response(response: Response) -> None:
        seen.responses.append(response)

    def on_request_failed(request: Request) -> None:
        seen.failures.append(request)

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    try:
        yield seen
    finally:
        context.close()


def write_page(pages: PageServer, name: str, body: str) -> str:
    """Write an HTML page into the page server's root; its URL on the page origin."""
    html = f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{name}</title></head>'
    (pages.root / f"{name}.html").write_text(f"{html}<body>\n{body}\n</body></html>\n")
    return f"{pages.origin}/{name}.html"


def media_page(pages: PageServer, name: str, tag: str, src: str) -> str:
    element = (
        f'<{tag} id="media" crossorigin="anonymous" preload="metadata" muted '
        f'src="{escape(src)}"></{tag}>'
    )
    return write_page(pages, name, f"{element}\n<script>{MEDIA_SCRIPT}</script>")


@dataclass(frozen=True)
class Playback:
    metadata: dict[str, Any]  # ok, duration, metadataAt (epoch ms) or failure; state
    played: dict[str, Any] | None  # stage ("done"), target, seekedAt, advancedTo; state


def play_through_end(tab: Tab, url: str) -> Playback:
    """Open the page, wait for the metadata, then seek near the end and play."""
    tab.page.goto(url)
    metadata: dict[str, Any] = tab.page.evaluate("(ms) => window.waitForMetadata(ms)", WAIT_MS)
    if not metadata["ok"]:
        return Playback(metadata, None)
    arguments = {"waitMs": WAIT_MS, "fromEnd": SEEK_FROM_END, "advance": ADVANCE}
    played: dict[str, Any] = tab.page.evaluate("(a) => window.seekAndPlay(a)", arguments)
    return Playback(metadata, played)


@dataclass(frozen=True)
class Exchange:
    """One media request as the browser saw it (headers as sent and received on the wire)."""

    method: str
    range: str | None
    status: int
    content_range: str | None
    allow_origin: str | None
    started: float  # epoch ms

    def describe(self) -> str:
        return (
            f"{self.method} Range={self.range} -> {self.status} "
            f"Content-Range={self.content_range} ACAO={self.allow_origin} at {self.started:.0f}"
        )

    def first_byte(self) -> int | None:
        """Where the served part starts (a 206 only)."""
        match = CONTENT_RANGE.match(self.content_range or "")
        return int(match[1]) if self.status == 206 and match else None


def exchanges(tab: Tab, url: str) -> list[Exchange]:
    found = []
    for response in tab.responses:
        if response.url != url:
            continue
        sent = response.request.all_headers()
        received = response.all_headers()
        found.append(
            Exchange(
                method=response.request.method,
                range=sent.get("range"),
                status=response.status,
                content_range=received.get("content-range"),
                allow_origin=received.get("access-control-allow-origin"),
                started=response.request.timing["startTime"],
            )
        )
    return found


def check_playback(
    tab: Tab, playback: Playback, url: str, pages: PageServer, size: int
) -> list[Exchange]:
    """The shared assertions of a played clip; returns the media exchanges for more."""
    seen = exchanges(tab, url)
    report = "\n".join(
        [f"metadata: {playback.metadata}", f"played: {playback.played}", "exchanges:"]
        + [e.describe() for e in seen]
        + ["console:", *tab.console, "failed requests:"]
        + [f"{r.method} {r.url}: {r.failure}" for r in tab.failures]
    )
    assert playback.metadata["ok"], report
    assert abs(playback.metadata["duration"] - DURATION) <= DURATION_TOLERANCE, report
    played = playback.played
    assert played is not None and played["stage"] == "done", report
    assert abs(played["seekedAt"] - played["target"]) <= 0.5, report
    assert played["advancedTo"] > played["target"] + ADVANCE, report
    assert not tab.cors_complaints(), report

    gets = [e for e in seen if e.method == "GET"]
    assert gets, report
    partial = [e for e in gets if e.range is not None and e.status == 206]
    assert partial, f"no ranged GET got a 206\n{report}"
    for exchange in gets:
        assert exchange.status in (200, 206), report
        assert exchange.allow_origin == pages.origin, report
        if exchange.status != 206:
            continue
        assert exchange.range is not None and exchange.content_range is not None, report
        asked, served = RANGE.match(exchange.range), CONTENT_RANGE.match(exchange.content_range)
        assert asked and served, report
        first, last, total = (int(n) for n in served.groups())
        assert total == size, report
        assert first == int(asked[1]) and first <= last < size, report
        assert last == (int(asked[2]) if asked[2] else size - 1), report
    # Media loads end by being cancelled (net::ERR_ABORTED) once the player has enough; anything
    # else (a CORS block is net::ERR_FAILED) is a broken load.
    broken = [r for r in tab.failures if r.url == url and r.failure != "net::ERR_ABORTED"]
    assert not broken, report
    return seen


def tail_reads_before_metadata(seen: list[Exchange], playback: Playback, size: int) -> list[str]:
    """The 206s from the second half of the object asked for before the metadata was known."""
    metadata_at: float = playback.metadata["metadataAt"]
    return [
        e.describe()
        for e in seen
        if (first := e.first_byte()) is not None and first > size // 2 and e.started < metadata_at
    ]


def page_name(proxy: RunningServer, key: str) -> str:
    return f"{proxy.port}-{key.replace('/', '-').replace('.', '-')}"


@pytest.mark.parametrize("key", VIDEOS)
def test_video_plays_from_another_origin(
    tab: Tab, media_proxy: RunningServer, client_media: MediaTree, pages: PageServer, key: str
) -> None:
    src = f"{media_proxy.url}/objects/{key}"
    size = (client_media.root / key).stat().st_size
    playback = play_through_end(tab, media_page(pages, page_name(media_proxy, key), "video", src))
    seen = check_playback(tab, playback, src, pages, size)
    everything = [e.describe() for e in seen] + [f"metadata at {playback.metadata['metadataAt']}"]
    tail = tail_reads_before_metadata(seen, playback, size)
    if key == "clips/moov-at-end.mp4":
        # The moov atom sits at the end: the player must range-read the tail to get the metadata.
        assert tail, everything
    elif key == "clips/faststart.mp4":
        # The control: the moov comes first, the metadata needs no tail (the seek reads it later).
        assert not tail, everything


@pytest.mark.parametrize("key", AUDIOS)
def test_audio_plays_from_another_origin(
    tab: Tab, media_proxy: RunningServer, client_media: MediaTree, pages: PageServer, key: str
) -> None:
    src = f"{media_proxy.url}/objects/{key}"
    size = (client_media.root / key).stat().st_size
    playback = play_through_end(tab, media_page(pages, page_name(media_proxy, key), "audio", src))
    check_playback(tab, playback, src, pages, size)


FETCHED = "clips/video.webm"
# (Range, its first and last byte given the size, whether it needs a CORS preflight). A single
# "bytes=N-M" is a CORS-safelisted header value, so Chromium sends it straight away; a suffix
# range is not (Fetch standard), so its GET waits for an OPTIONS preflight allowing Range.
FETCHES = [
    pytest.param("bytes=100-199", lambda size: (100, 199), False, id="simple-range"),
    pytest.param("bytes=-100", lambda size: (size - 100, size - 1), True, id="suffix-range"),
]


@pytest.mark.parametrize(("range_", "span", "preflight"), FETCHES)
def test_ranged_fetch_from_another_origin(
    tab: Tab,
    media_proxy: RunningServer,
    client_media: MediaTree,
    pages: PageServer,
    range_: str,
    span: Callable[[int], tuple[int, int]],
    preflight: bool,
) -> None:
    tab.page.goto(write_page(pages, f"{media_proxy.port}-fetch", "<p>fetch</p>"))
    url = f"{media_proxy.url}/objects/{FETCHED}"
    result: dict[str, Any] = tab.page.evaluate(FETCH_RANGE, {"url": url, "range": range_})
    assert result["ok"], (result, tab.console)
    data = client_media.data(FETCHED)
    first, last = span(len(data))
    assert result["status"] == 206
    assert result["type"] == "cors"
    assert result["contentRange"] == f"bytes {first}-{last}/{len(data)}"
    assert result["acceptRanges"] == "bytes"
    assert result["etag"]
    assert result["contentLength"] == str(last + 1 - first)
    body = bytes(result["body"])
    assert len(body) == last + 1 - first
    assert sha256(body) == sha256(data[first : last + 1])
    assert not tab.cors_complaints(), tab.console
    assert (("OPTIONS", url) in tab.sent) == preflight, tab.sent


@pytest.fixture(scope="module")
def closed_proxy(client_media: MediaTree, serve: StartServer) -> RunningServer:
    """A proxy on the same media that allows no other origin (no CORS configured)."""
    return serve(settings_for(client_media, "async"))


@pytest.mark.parametrize(("range_", "span", "preflight"), FETCHES)
def test_fetch_from_an_origin_not_allowed_fails(
    tab: Tab,
    closed_proxy: RunningServer,
    client_media: MediaTree,
    pages: PageServer,
    range_: str,
    span: Callable[[int], tuple[int, int]],
    preflight: bool,
) -> None:
    url = f"{closed_proxy.url}/objects/{FETCHED}"
    # Outside a browser the same request succeeds: only the missing CORS grant can block it.
    direct = httpx.get(url, headers={"Range": range_}, timeout=10)
    data = client_media.data(FETCHED)
    first, last = span(len(data))
    assert direct.status_code == 206
    assert direct.content == data[first : last + 1]

    tab.page.goto(write_page(pages, "closed-fetch", "<p>fetch</p>"))
    result: dict[str, Any] = tab.page.evaluate(FETCH_RANGE, {"url": url, "range": range_})
    assert not result["ok"], result
    assert result["name"] == "TypeError", result
    assert tab.cors_complaints(), tab.console
    # Without a preflight the GET reaches the proxy and the browser withholds the answer; with
    # one, the refused preflight (no CORS: 405) keeps the GET from being sent at all.
    assert (("OPTIONS", url) in tab.sent) == preflight, tab.sent


def test_video_from_an_origin_not_allowed_fails(
    tab: Tab, closed_proxy: RunningServer, pages: PageServer
) -> None:
    src = f"{closed_proxy.url}/objects/clips/faststart.mp4"
    playback = play_through_end(tab, media_page(pages, "closed-video", "video", src))
    assert not playback.metadata["ok"], playback
    assert playback.metadata["state"]["error"] is not None, playback
    assert playback.metadata["state"]["error"]["code"] == 4, playback  # SRC_NOT_SUPPORTED
    assert tab.cors_complaints(), tab.console
