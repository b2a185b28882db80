"""``GET /`` on real servers: JSON by default, HTML for browsers, HEAD, open with access control
on, and nothing secret in either form (credentials, the S3 endpoint, the local root)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from proxy.auth import hash_token
from proxy.testing.s3servers import ACCESS_KEY, SECRET_KEY, S3Server
from proxy.version import __version__
from tests.conftest import (
    MediaTree,
    RunningServer,
    StartServer,
    raw_request,
    s3_settings,
    settings_for,
)

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
TOKEN = "landing-token-0123456789"
SIGNING_SECRET = "landing-signing-secret"
LINKS = {
    "docs": "/docs",
    "openapi": "/openapi.json",
    "healthz": "/healthz",
    "readyz": "/readyz",
    "metrics": "/metrics",
}
PREFIX = "odd<b>&\"prefix'/"  # every character HTML escaping is for


class Anchors(HTMLParser):
    """The href of every <a> and the text of <title>."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value or "" for name, value in attrs if name == "href")
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def anchors(html: str) -> Anchors:
    parser = Anchors()
    parser.feed(html)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def local(media: MediaTree, serve: StartServer) -> RunningServer:
    return serve(settings_for(media, "async", access_log=False))


@pytest.fixture(scope="module")
def secured(media: MediaTree, serve: StartServer) -> RunningServer:
    api_keys = [{"name": "ops", "sha256": hash_token(TOKEN)}]
    signing_keys = {"k1": SIGNING_SECRET}
    return serve(
        settings_for(media, "sync", access_log=False, api_keys=api_keys, signing_keys=signing_keys)
    )


def test_json_by_default(local: RunningServer, media: MediaTree) -> None:
    response = httpx.get(f"{local.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["vary"] == "Accept"
    assert response.json() == {
        "service": "media object proxy",
        "version": __version__,
        "objects": "/objects/{key}",
        "backend": {"kind": "local", "client": "async"},
        "slice_cache": False,
        "access_control": False,
        "writes": False,
        "links": LINKS,
    }
    assert __version__ == "0.1.0"
    assert str(media.root) not in response.text
    assert media.root.name not in response.text


@pytest.mark.parametrize("accept", ["*/*", "application/json", "text/html;q=0.5, */*"])
def test_json_for_clients_that_do_not_prefer_html(local: RunningServer, accept: str) -> None:
    response = httpx.get(f"{local.url}/", headers={"accept": accept})
    assert response.headers["content-type"] == "application/json"
    assert response.json()["service"] == "media object proxy"


def test_html_for_browsers(local: RunningServer, media: MediaTree) -> None:
    response = httpx.get(f"{local.url}/", headers={"accept": BROWSER_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    assert response.headers["content-security-policy"] == "default-src 'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    page = anchors(response.text)
    assert page.title == f"media object proxy {__version__}"
    assert page.hrefs == list(LINKS.values())
    assert "<dt>backend</dt><dd>local (async)</dd>" in response.text
    assert "<dt>slice cache</dt><dd>off</dd>" in response.text
    assert "<dt>access control</dt><dd>off</dd>" in response.text
    assert "<script" not in response.text
    assert str(media.root) not in response.text
    # Every link on the page answers (the metrics one with Prometheus text).
    for href in page.hrefs:
        assert httpx.get(f"{local.url}{href}").status_code == 200, href


def test_head_sends_the_get_headers_without_a_body(local: RunningServer) -> None:
    for accept in ["application/json", BROWSER_ACCEPT]:
        get = httpx.get(f"{local.url}/", headers={"accept": accept})
        raw = raw_request(local.port, "/", method="HEAD", headers=f"Accept: {accept}\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b""
        lines = head.decode().lower().split("\r\n")[1:]
        fields = {name: value for name, _, value in (line.partition(": ") for line in lines)}
        assert fields["content-type"] == get.headers["content-type"]
        assert fields["content-length"] == str(len(get.content))


def test_open_with_access_control_on(secured: RunningServer) -> None:
    # Objects need credentials (the control), the landing page and the docs do not.
    assert httpx.get(f"{secured.url}/objects/hello.txt").status_code == 401
    response = httpx.get(f"{secured.url}/")
    assert response.status_code == 200
    assert response.json()["access_control"] is True
    assert response.json()["backend"] == {"kind": "local", "client": "sync"}
    html = httpx.get(f"{secured.url}/", headers={"accept": BROWSER_ACCEPT})
    assert html.status_code == 200
    assert "<dd>on: objects need a bearer key or a signed URL</dd>" in html.text
    assert httpx.head(f"{secured.url}/").status_code == 200
    for path in ["/docs", "/openapi.json", "/docs/assets/swagger-ui.css"]:
        assert httpx.get(f"{secured.url}{path}").status_code == 200, path
    for text in (response.text, html.text):
        assert SIGNING_SECRET not in text and hash_token(TOKEN) not in text and TOKEN not in text


def test_no_metrics_link_when_metrics_are_off(media: MediaTree, serve: StartServer) -> None:
    running = serve(settings_for(media, "async", access_log=False, metrics=False))
    assert httpx.get(f"{running.url}/metrics").status_code == 404
    links = httpx.get(f"{running.url}/").json()["links"]
    assert links == {name: path for name, path in LINKS.items() if name != "metrics"}
    html = httpx.get(f"{running.url}/", headers={"accept": BROWSER_ACCEPT}).text
    assert anchors(html).hrefs == [path for name, path in LINKS.items() if name != "metrics"]


def test_s3_names_client_bucket_and_prefix_never_endpoint_or_credentials(
    moto: S3Server, serve: StartServer, tmp_path: Path
) -> None:
    settings = s3_settings(moto, "boto3", s3_prefix=PREFIX, cache_dir=tmp_path, access_log=False)
    running = serve(settings)
    response = httpx.get(f"{running.url}/")
    assert response.json()["backend"] == {
        "kind": "s3",
        "client": "boto3",
        "bucket": "media",
        "prefix": PREFIX,
    }
    assert response.json()["slice_cache"] is True
    html = httpx.get(f"{running.url}/", headers={"accept": BROWSER_ACCEPT}).text
    assert (
        "<dt>backend</dt><dd>s3 (boto3), bucket <code>media</code>, "
        "prefix <code>odd&lt;b&gt;&amp;&quot;prefix&#x27;/</code></dd>"
    ) in html
    assert "<b>" not in html and PREFIX not in html
    assert "<dt>slice cache</dt><dd>on</dd>" in html
    assert moto.endpoint_url.startswith("http://127.0.0.1:")
    for text in (response.text, html):
        assert moto.endpoint_url not in text and "127.0.0.1" not in text
        assert ACCESS_KEY not in text and SECRET_KEY not in text
        assert str(tmp_path) not in text


def test_documented_in_openapi(local: RunningServer) -> None:
    schema = httpx.get(f"{local.url}/openapi.json").json()
    operations = schema["paths"]["/"]
    assert sorted(operations) == ["get", "head"]
    assert [operations[m]["operationId"] for m in ("get", "head")] == ["landing", "head_landing"]
    for operation in operations.values():
        assert operation["tags"] == ["about"]
        content = operation["responses"]["200"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Landing"}
        assert content["text/html"]["schema"] == {"type": "string"}
    landing = schema["components"]["schemas"]["Landing"]
    # No "backend" with PROXY_MOUNTS: "mounts" describes each mount's instead.
    assert sorted(landing["required"]) == sorted(
        ["service", "version", "objects", "slice_cache", "access_control", "links"]
    )
    # /docs is ours, outside the schema; ReDoc and the OAuth2 redirect page are off.
    assert "/docs" not in schema["paths"]
    assert httpx.get(f"{local.url}/docs").status_code == 200
    assert httpx.get(f"{local.url}/redoc").status_code == 404
    assert httpx.get(f"{local.url}/docs/oauth2-redirect").status_code == 404
