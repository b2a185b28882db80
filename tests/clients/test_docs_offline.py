"""The API documentation works offline: Debian's headless Chromium opens ``/docs`` (Swagger UI)
with every request that does not go to 127.0.0.1 aborted, and the page renders from the files
the proxy serves itself (``/docs/assets``, from the fastapi-offline package).

Access control is on, as in the deployment examples: the documentation stays readable.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Request,
    Route,
    sync_playwright,
)

from tests.clients.conftest import require_tool
from tests.clients.test_browser import CHROMIUM, CHROMIUM_ARGS, PAGE_TIMEOUT_MS
from tests.conftest import MediaTree, RunningServer, StartServer, settings_for, sha256

ASSETS = ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"]
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def docs_proxy(media: MediaTree, serve: StartServer) -> RunningServer:
    signing_keys = {"k1": "docs-offline-secret"}
    return serve(settings_for(media, "async", access_log=False, signing_keys=signing_keys))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; missing: a failure in CI, a skip locally."""
    executable = CHROMIUM if Path(CHROMIUM).exists() else require_tool("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=PAGE_TIMEOUT_MS
        )
        try:
            yield launched
        finally:
            launched.close()


def off_loopback(url: str) -> bool:
    """A request that would leave this machine (data: and blob: URLs never do)."""
    parts = urlsplit(url)
    return parts.scheme not in ("data", "blob") and parts.hostname != LOOPBACK


@dataclass
class OfflineTab:
    """A page whose every request passes ``block``: loopback goes on, anything else is aborted
    and recorded in ``blocked``."""

    page: Page
    routed: list[str] = field(default_factory=list)  # every request the blocker saw
    blocked: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)  # every request the page made
    errors: list[str] = field(default_factory=list)  # page errors and console errors

    def block(self, route: Route) -> None:
        url = route.request.url
        self.routed.append(url)
        if off_loopback(url):
            self.blocked.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()


@pytest.fixture
def tab(browser: Browser) -> Iterator[OfflineTab]:
    context = browser.new_context(service_workers="block")
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    seen = OfflineTab(context.new_page())
    context.route("**/*", seen.block)

    def on_request(request: Request) -> None:
        seen.requested.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.errors.append(f"console: {message.text}")

    def on_page_error(error: Error) -> None:
        seen.errors.append(f"pageerror: {error}")

    context.on("request", on_request)
    seen.page.on("console", on_console)
    seen.page.on("pageerror", on_page_error)
    try:
        yield seen
    finally:
        context.close()


def check_stayed_on_loopback(tab: OfflineTab, base: str, expected: list[str]) -> None:
    """Nothing left loopback, and the recorders really saw the page's own requests."""
    assert tab.blocked == [], f"requests off loopback: {tab.blocked}"
    assert [url for url in tab.requested if off_loopback(url)] == []
    for path in expected:
        assert f"{base}{path}" in tab.routed, f"{path} did not pass the blocker: {tab.routed}"
        assert f"{base}{path}" in tab.requested, path
    assert tab.errors == []


def test_swagger_ui_renders_offline(docs_proxy: RunningServer, tab: OfflineTab) -> None:
    page = tab.page
    response = page.goto(f"{docs_proxy.url}/docs")
    assert response is not None and response.status == 200
    # The operation list, rendered by Swagger UI from /openapi.json.
    get_object = page.locator("#operations-objects-get_object")
    get_object.wait_for(state="visible")
    assert get_object.locator(".opblock-summary-path").inner_text() == "/objects/{key}"
    assert get_object.locator(".opblock-summary-method").inner_text() == "GET"
    page.locator("#operations-objects-head_object").wait_for(state="visible")
    page.locator("#operations-about-landing").wait_for(state="visible")
    assert "media object proxy" in page.locator(".info .title").inner_text()
    assert page.get_by_text("Unable to render this definition").count() == 0
    # Swagger UI's own stylesheet applied: the GET badge has its colour, not the default black.
    badge = get_object.locator(".opblock-summary-method")
    assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(97, 175, 254)"
    check_stayed_on_loopback(
        tab,
        docs_proxy.url,
        [
            "/docs",
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/swagger-ui.css",
            "/openapi.json",
        ],
    )


def test_the_landing_page_renders_offline_and_leads_to_the_docs(
    docs_proxy: RunningServer, tab: OfflineTab
) -> None:
    page = tab.page
    response = page.goto(f"{docs_proxy.url}/")
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    version = httpx.get(f"{docs_proxy.url}/", timeout=5).json()["version"]
    assert version in page.locator("body").inner_text()
    links = page.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    for path in ("/docs", "/healthz", "/metrics"):
        assert path in links, links
    page.locator("a[href='/docs']").first.click()
    page.locator("#operations-objects-get_object").wait_for(state="visible")
    check_stayed_on_loopback(tab, docs_proxy.url, ["/", "/docs", "/openapi.json"])


@pytest.mark.parametrize("name", ASSETS)
def test_assets_are_the_installed_files(docs_proxy: RunningServer, name: str) -> None:
    spec = importlib.util.find_spec("fastapi_offline")
    assert spec is not None and spec.origin is not None
    installed = Path(spec.origin).parent / "static" / name
    response = httpx.get(f"{docs_proxy.url}/docs/assets/{name}")
    assert response.status_code == 200
    assert sha256(response.content) == sha256(installed.read_bytes())
