"""Listings on the local disk, both flavours, through real uvicorn servers: formats and their
negotiation, S3's order and semantics, paging, the root's confinement, escaping, scoping by
bearer key and signed listing URLs. S3 backends: tests/test_listing_s3.py."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import pytest

from proxy.app import create_app
from proxy.auth import hash_token, signed_query
from proxy.config import Settings
from tests.conftest import FLAVORS, MediaTree, RunningServer, StartServer, settings_for

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
# Names that break naive listings: URL syntax, quotes, markup, non-ASCII around "/" (0x2f).
AWKWARD = [
    "a+b.txt",
    "with space.txt",
    "100%.txt",
    "%2e%2e.txt",
    'dq".txt',
    "apos'.txt",
    "<script>alert(1)<.txt",
    '"onload=alert(1) x=".mp4',
    "a-b",
    "a.txt",
    "a0",
    "a/inner.txt",  # folder a/ sorts between a.txt and a0
    "Z.txt",
    "é.txt",
    "Ω.txt",
    "日本/語.txt",
    "😀.txt",
    "deep/1/2/3/leaf.bin",
    "deep/top.bin",
]
TOKEN = "listing-token-0123456789"
SIGNING = {"k1": "listing-secret"}


def tree(base: Path) -> Path:
    root = base / "root"
    for index, name in enumerate(AWKWARD):
        path = root / "awk" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * index)
    (root / "awk" / "empty-dir" / "empty-sub").mkdir(parents=True)  # no object: no folder
    (root / "video").mkdir()
    (root / "video" / "clip.mp4").write_bytes(b"\0" * 2048)
    (root / "top.txt").write_bytes(b"top\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    os.symlink(outside / "secret.txt", root / "escape.txt")
    os.symlink(outside, root / "escape-dir")
    os.symlink(root / "top.txt", root / "linked.txt")
    os.symlink(root, root / "loop")  # a link back to the root: never walked twice
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tree(tmp_path_factory.mktemp("listing"))


def listing_settings(root: Path, flavor: str, **overrides: object) -> Settings:
    return settings_for(MediaTree(root, root.parent / "outside"), flavor, listing=True, **overrides)


@pytest.fixture(scope="module", params=FLAVORS)
def lister(request: pytest.FixtureRequest, root: Path, serve: StartServer) -> RunningServer:
    return serve(listing_settings(root, request.param, access_log=False))


@pytest.fixture
def client(lister: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lister.url, timeout=10) as c:
        yield c


def lines(response: httpx.Response) -> list[dict[str, object]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/jsonl"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


def names(entries: list[dict[str, object]]) -> list[object]:
    return [entry.get("key", entry.get("prefix")) for entry in entries[:-1]]


def utf8_order(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda key: key.encode("utf-8"))


ALL_AWK = utf8_order([f"awk/{name}" for name in AWKWARD])


def test_a_folder_lists_objects_and_folders_in_s3_order(client: httpx.Client) -> None:
    entries = lines(client.get("/objects/awk/"))
    assert names(entries) == [
        'awk/"onload=alert(1) x=".mp4',
        "awk/%2e%2e.txt",
        "awk/100%.txt",
        "awk/<script>alert(1)<.txt",
        "awk/Z.txt",
        "awk/a+b.txt",
        "awk/a-b",
        "awk/a.txt",
        "awk/a/",
        "awk/a0",
        "awk/apos'.txt",
        "awk/deep/",
        'awk/dq".txt',
        "awk/with space.txt",
        "awk/é.txt",
        "awk/Ω.txt",
        "awk/日本/",
        "awk/😀.txt",
    ]  # no empty-dir/: a folder exists only while an object lies below it (S3)
    assert entries[-1] == {"complete": True, "count": 18}
    first = entries[0]
    assert set(first) == {"key", "size", "etag", "last_modified", "media_type"}
    size = AWKWARD.index(str(first["key"])[4:])
    assert (first["size"], first["media_type"]) == (size, "video/mp4")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(first["last_modified"]))
    # The ETag is the one a GET of the object answers with.
    head = client.head("/objects/" + quote(str(first["key"])))
    assert first["etag"] == head.headers["etag"]


def test_recursive_lists_every_key_below_in_utf8_order(client: httpx.Client) -> None:
    entries = lines(client.get("/objects/awk/", params={"recursive": "true"}))
    assert names(entries) == ALL_AWK
    assert entries[-1] == {"complete": True, "count": len(AWKWARD)}
    assert lines(client.get("/objects/awk/?recursive"))[:-1] == entries[:-1]


def test_limit_and_after_page_through_a_listing(client: httpx.Client) -> None:
    collected: list[object] = []
    after = ""
    for _ in range(20):  # bounded: 19 keys in pages of 3
        page = lines(
            client.get("/objects/awk/", params={"recursive": "", "limit": 3, "after": after})
        )
        collected += names(page)
        end = page[-1]
        assert end["count"] == len(page) - 1 <= 3
        if "next_after" not in end:
            break
        after = str(end["next_after"])
        assert after == names(page)[-1]
    assert collected == ALL_AWK
    # after a folder's name: nothing of that folder again
    entries = lines(client.get("/objects/awk/", params={"after": "awk/a/"}))
    assert names(entries)[0] == "awk/a0"


def test_the_root_and_prefixes_that_do_not_exist(client: httpx.Client) -> None:
    root = names(lines(client.get("/objects/")))
    # Links out of the root, the link back to it, a FIFO: none of them is an object to list.
    assert root == ["awk/", "linked.txt", "top.txt", "video/"]
    for missing in ["/objects/nothing/", "/objects/top.txt/", "/objects/awk/empty-dir/"]:
        assert lines(client.get(missing)) == [{"complete": True, "count": 0}]
    everything = names(lines(client.get("/objects/?recursive")))
    assert everything == utf8_order([*ALL_AWK, "linked.txt", "top.txt", "video/clip.mp4"])
    assert lines(client.get("/objects/escape-dir/")) == [{"complete": True, "count": 0}]
    assert lines(client.get("/objects/loop/")) == [{"complete": True, "count": 0}]


def test_json_is_one_array_of_the_same_entries(client: httpx.Client) -> None:
    jsonl = lines(client.get("/objects/awk/"))
    response = client.get("/objects/awk/", headers={"accept": "application/json"})
    assert response.headers["content-type"] == "application/json"
    assert response.json() == jsonl[:-1]
    assert client.get("/objects/nothing/?format=json").json() == []


@pytest.mark.parametrize(
    ("accept", "query", "media_type"),
    [
        (None, "", "application/jsonl"),
        ("*/*", "", "application/jsonl"),
        ("application/jsonl", "", "application/jsonl"),
        ("application/json", "", "application/json"),
        (BROWSER, "", "text/html; charset=utf-8"),
        ("application/json", "?format=html", "text/html; charset=utf-8"),
        (BROWSER, "?format=jsonl", "application/jsonl"),
    ],
)
def test_the_format_follows_accept_unless_named(
    client: httpx.Client, accept: str | None, query: str, media_type: str
) -> None:
    headers = {"accept": accept} if accept else {}
    response = client.get(f"/objects/video/{query}", headers=headers)
    assert (response.status_code, response.headers["content-type"]) == (200, media_type)
    assert response.headers["vary"] == "Accept"


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=-1", "limit=x", "limit=%EF%BC%91", "format=xml", "recursive=2"]
)
def test_a_bad_query_is_400(client: httpx.Client, query: str) -> None:
    response = client.get(f"/objects/awk/?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("target", ["/objects/awk//", "/objects/%2E%2E/", "/objects/a%5c/"])
def test_a_bad_prefix_stays_400(client: httpx.Client, target: str) -> None:
    response = client.get(target)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_key")


def test_head_has_the_get_headers_and_no_body(client: httpx.Client) -> None:
    response = client.head("/objects/awk/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/jsonl"
    assert response.content == b""


def test_objects_are_served_as_before(client: httpx.Client) -> None:
    response = client.get("/objects/awk/a+b.txt")
    assert (response.status_code, response.content) == (200, b"")
    assert client.get("/objects/escape.txt").status_code == 404


class Page(HTMLParser):
    """What a browse page holds: its tags with attributes, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, attribute: str) -> list[str]:
        return [
            str(attrs[attribute]) for name, attrs in self.tags if name == tag and attribute in attrs
        ]


def test_the_browse_page_escapes_every_name_and_allows_no_script(client: httpx.Client) -> None:
    response = client.get("/objects/awk/", headers={"accept": BROWSER})
    csp = response.headers["content-security-policy"]
    assert csp.startswith(
        "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'sha256-"
    )
    assert "script" not in csp
    page = Page(response.text)
    assert [name for name, _ in page.tags if name == "script"] == []
    assert not any(attr.startswith("on") for _, attrs in page.tags for attr in attrs)
    assert "<script>alert(1)<.txt" in page.text  # as text
    assert '"onload=alert(1) x=".mp4' in page.text
    links = [unquote(href) for href in page.all("a", "href")]
    # Folders first, then objects, each object with its download link.
    objects = [f"/objects/{key}" for key in names(lines(client.get("/objects/awk/")))]
    assert links[0] == "/objects/"  # the root's breadcrumb; awk/ is the page itself
    folders = [link for link in links if link.endswith("/")][1:]
    assert folders == ["/objects/awk/a/", "/objects/awk/deep/", "/objects/awk/日本/"]
    shown = [link for link in links if not link.endswith("/") and "?" not in link]
    assert shown == [link for link in objects if not link.endswith("/")]
    assert "/objects/awk/100%.txt?download" in links
    players = page.all("video", "src")
    assert [unquote(src) for src in players] == ['/objects/awk/"onload=alert(1) x=".mp4']
    assert [attrs["preload"] for name, attrs in page.tags if name == "video"] == ["metadata"]
    # Every link is percent-encoded: the bytes of the key, never raw markup or quotes.
    for href in page.all("a", "href"):
        assert not set(href) & set(" <>\"'")


def test_the_browse_page_of_a_media_folder(client: httpx.Client) -> None:
    response = client.get("/objects/video/", headers={"accept": BROWSER})
    page = Page(response.text)
    assert page.all("video", "src") == ["/objects/video/clip.mp4"]
    assert "2.0 KiB" in page.text
    crumbs = page.all("a", "href")[:1]
    assert crumbs == ["/objects/"]
    assert "1 entry." in "".join(page.text)


def test_a_browse_page_is_paged(client: httpx.Client) -> None:
    page = Page(client.get("/objects/awk/?recursive&limit=5&format=html").text)
    (next_link,) = [attrs["href"] for name, attrs in page.tags if attrs.get("rel") == "next"]
    query = parse_qs(urlsplit(str(next_link)).query)
    assert query == {"recursive": ["true"], "limit": ["5"], "after": [ALL_AWK[4]]}


# -- access control ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=FLAVORS)
def secured(request: pytest.FixtureRequest, root: Path, serve: StartServer) -> RunningServer:
    api_keys = [
        {"name": "awk", "sha256": hash_token(TOKEN), "prefix": "awk/a"},
        {"name": "all", "sha256": hash_token(TOKEN + "-all")},
    ]
    settings = listing_settings(
        root, request.param, access_log=False, api_keys=api_keys, signing_keys=SIGNING
    )
    return serve(settings)


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_bearer_key_lists_only_within_its_prefix(secured: RunningServer) -> None:
    url = secured.url + "/objects/"
    assert httpx.get(url).status_code == 401
    # Above the key's prefix "awk/a": only what lies within it shows, folded to the level.
    assert names(lines(httpx.get(url, headers=bearer()))) == ["awk/"]
    within = names(lines(httpx.get(url + "awk/", headers=bearer())))
    assert within == ["awk/a+b.txt", "awk/a-b", "awk/a.txt", "awk/a/", "awk/a0", "awk/apos'.txt"]
    everything = names(lines(httpx.get(url + "?recursive", headers=bearer())))
    assert everything == [key for key in ALL_AWK if key.startswith("awk/a")]
    assert names(lines(httpx.get(url + "awk/a/", headers=bearer()))) == ["awk/a/inner.txt"]
    for outside in ["video/", "awk/deep/", "awk/b/"]:
        assert httpx.get(url + outside, headers=bearer()).status_code == 403
    assert len(names(lines(httpx.get(url, headers=bearer(TOKEN + "-all"))))) == 4


def test_a_signed_listing_signs_its_links_for_the_same_lifetime(secured: RunningServer) -> None:
    query = signed_query(secured.settings, "awk/", ttl=600)
    expires = parse_qs(query)["expires"]
    response = httpx.get(f"{secured.url}/objects/awk/?{query}", headers={"accept": BROWSER})
    assert response.status_code == 200
    page = Page(response.text)
    hrefs = page.all("a", "href")
    assert "/objects/" not in hrefs  # the root is above the signature's prefix: no link
    signed = [href for href in hrefs if "sig=" in href]
    assert len(signed) == len(hrefs) == 3 + 2 * 15  # folders, objects and their downloads
    for href in signed:
        assert parse_qs(urlsplit(href).query)["expires"] == expires
    with httpx.Client(base_url=secured.url, timeout=10) as client:
        for href in signed:
            assert client.get(href).status_code == 200, href
        (video,) = page.all("video", "src")
        assert client.get(video, headers={"range": "bytes=0-0"}).status_code == 206
        # The signature is bound to its prefix: not the root, not another folder.
        assert client.get(f"/objects/?{query}").status_code == 403
        assert client.get(f"/objects/video/?{query}").status_code == 403
        assert client.get(f"/objects/video/clip.mp4?{query}").status_code == 403
        # The listing's options are signed with it: one added to the link is refused.
        assert client.get(f"/objects/awk/?{query}&recursive").status_code == 403
        recursive = signed_query(secured.settings, "awk/", ttl=600, params=[("recursive", "")])
        jsonl = lines(client.get(f"/objects/awk/?{recursive}"))
        assert names(jsonl) == ALL_AWK


def test_listings_are_in_the_openapi_document_when_on(root: Path) -> None:
    documented = create_app(listing_settings(root, "async")).openapi()["paths"]
    operation = documented["/objects/{prefix}/"]["get"]
    names = [parameter["name"] for parameter in operation["parameters"]]
    assert names == ["prefix", "format", "recursive", "limit", "after"]
    assert set(operation["responses"]["200"]["content"]) == {
        "application/jsonl",
        "application/json",
        "text/html",
    }
    off = create_app(settings_for(MediaTree(root, root), "async")).openapi()["paths"]
    assert "/objects/{prefix}/" not in off
