"""The OpenAPI document with mounts (issue 24): ``/objects/{mount}/{key}`` with ``mount`` an
enum of the configured names and each one's policy, the 307 of redirecting mounts, listings
per mount and the mounts at ``/objects/``; without mounts the object paths stay as they were.

Validated with openapi-spec-validator (OpenAPI 3.1's own schema), then used by real OpenAPI
tools against a real server: schemathesis builds each mount's request from the document and
checks the answer against it, and Swagger UI at ``/docs`` (headless Chromium) offers the mounts
and sends a GET for a two-segment name, ``/`` percent-encoded as OpenAPI tools do.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_headers_conformance,
    status_code_conformance,
)

from proxy.app import create_app
from proxy.auth import hash_token
from proxy.testing.s3servers import S3Server
from tests.clients.test_docs_offline import OfflineTab, browser, check_stayed_on_loopback, tab
from tests.conftest import MediaTree, RunningServer, StartServer, settings_for, sha256
from tests.test_mounts import s3_mount

TOKEN = "openapi-mounts-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
__all__ = ["browser", "tab"]  # the offline docs' fixtures, used here

NAMES = ["media/2024", "builds", "videos"]
OBJECT_PATHS = {"/objects/{mount}/{key}", "/objects/{mount}/", "/objects/{mount}/{prefix}/"}


@pytest.fixture(scope="module")
def documented(media: MediaTree, moto: S3Server, serve: StartServer) -> RunningServer:
    """Three mounts: a public local one under a two-segment name, a local one for bearer keys
    only that does not list, a redirecting S3 one; listings on, keys and signed URLs on."""
    local = {"backend": "local", "local_root": str(media.root)}
    mounts = {
        "media/2024": {**local, "public": True},
        "builds": {**local, "auth": "keys", "listing": False},
        "videos": s3_mount(moto, "aiobotocore", mode="redirect"),
    }
    settings = settings_for(
        media,
        "async",
        mounts=mounts,
        listing=True,
        redirect_ttl=120,
        api_keys=[{"name": "all", "sha256": hash_token(TOKEN)}],
        signing_keys={"k1": "openapi-mounts-secret"},
        access_log=False,
    )
    return serve(settings)


@pytest.fixture(scope="module")
def document(documented: RunningServer) -> dict[str, Any]:
    response = httpx.get(f"{documented.url}/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def mount_parameter(operation: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = operation["parameters"][0]
    assert first["name"] == "mount" and first["in"] == "path" and first["required"]
    return first


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)  # raises OpenAPIValidationError, naming the place, when not
    assert document["openapi"].startswith("3.1")


def test_object_paths_move_below_the_mounts(document: dict[str, Any]) -> None:
    paths = document["paths"]
    objects = {path for path in paths if path.startswith("/objects/")}
    assert objects == OBJECT_PATHS | {"/objects/"}
    item = paths["/objects/{mount}/{key}"]
    assert {method: op["operationId"] for method, op in item.items()} == {
        "get": "get_object",
        "head": "head_object",
    }
    for operation in item.values():
        names = [parameter["name"] for parameter in operation["parameters"]]
        assert names == ["mount", "key", "download"]
        assert mount_parameter(operation)["schema"]["enum"] == NAMES
    # Listings: only the mounts that list; the mounts themselves at /objects/.
    for path in ["/objects/{mount}/", "/objects/{mount}/{prefix}/"]:
        listing = paths[path]["get"]
        assert mount_parameter(listing)["schema"]["enum"] == ["media/2024", "videos"]
    names = [p["name"] for p in paths["/objects/{mount}/{prefix}/"]["get"]["parameters"]]
    assert names == ["mount", "prefix", "format", "recursive", "limit", "after"]
    top = paths["/objects/{mount}/"]["get"]
    assert top["operationId"] == "list_mount"
    assert [p["name"] for p in top["parameters"]] == [
        "mount",
        "format",
        "recursive",
        "limit",
        "after",
    ]
    mounts = paths["/objects/"]["get"]
    assert mounts["operationId"] == "list_mounts"
    assert [p["name"] for p in mounts["parameters"]] == ["format", "limit", "after"]
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_each_mounts_policy_and_the_redirect_are_described(document: dict[str, Any]) -> None:
    item = document["paths"]["/objects/{mount}/{key}"]
    text = mount_parameter(item["get"])["description"]
    lines = {
        line[2:].split("`: ")[0].strip("`"): line for line in text.splitlines() if line[:2] == "- "
    }
    assert set(lines) == set(NAMES)
    assert "public: no credentials" in lines["media/2024"]
    assert "lists its folders" in lines["media/2024"]
    assert "bearer keys only" in lines["builds"] and "lists" not in lines["builds"]
    assert "a bearer key or a signed URL" in lines["videos"]
    assert "GET answers 307 to a presigned S3 URL valid 120 s" in lines["videos"]
    # The 307 is GET's only: HEAD is answered by the proxy on every mount.
    redirect = item["get"]["responses"]["307"]
    assert "`videos`" in redirect["description"]
    assert "media/2024" not in redirect["description"]
    assert redirect["headers"]["Location"]["schema"] == {"type": "string", "format": "uri"}
    assert "307" not in item["head"]["responses"]
    codes = list(item["get"]["responses"])
    assert codes == sorted(codes)


def test_without_redirecting_mounts_no_307(media: MediaTree) -> None:
    local = {"backend": "local", "local_root": str(media.root)}
    settings = settings_for(media, "async", mounts={"a": local, "b/c": local})
    document = create_app(settings).openapi()
    validate(document)
    get = document["paths"]["/objects/{mount}/{key}"]["get"]
    assert "307" not in get["responses"] and "503" not in get["responses"]
    assert mount_parameter(get)["schema"]["enum"] == ["a", "b/c"]
    assert "public: no credentials" in mount_parameter(get)["description"]  # no auth configured
    # Listings off everywhere: no listing paths.
    assert {p for p in document["paths"] if p.startswith("/objects/")} == {"/objects/{mount}/{key}"}


@pytest.mark.parametrize("listing", [False, True])
def test_without_mounts_the_document_is_unchanged(media: MediaTree, listing: bool) -> None:
    document = create_app(settings_for(media, "async", listing=listing)).openapi()
    validate(document)
    objects = {path: item for path, item in document["paths"].items() if "/objects/" in path}
    assert set(objects) == (
        {"/objects/{key}", "/objects/{prefix}/"} if listing else {"/objects/{key}"}
    )
    assert "mount" not in str(objects)
    assert "307" not in objects["/objects/{key}"]["get"]["responses"]


def test_schemathesis_reaches_each_mount_from_the_document(
    documented: RunningServer, document: dict[str, Any], media: MediaTree
) -> None:
    """schemathesis forms each request from the document (a ``/`` in the mount's name
    percent-encoded) and checks the answer's status and headers against it."""
    schema = schemathesis.openapi.from_dict(document)
    schema.config.base_url = documented.url  # the document's servers list is empty
    operation = schema["/objects/{mount}/{key}"]["GET"]
    seen: dict[str, tuple[str, int]] = {}
    for name in NAMES:
        case = operation.Case(
            path_parameters={"mount": name, "key": "hello.txt"}, headers=dict(AUTH)
        )
        response = case.call(base_url=documented.url, timeout=10)
        case.validate_response(
            response,
            checks=[not_a_server_error, status_code_conformance, response_headers_conformance],
        )
        seen[name] = (str(response.request.url), response.status_code)
        if response.status_code == 200:
            assert sha256(response.content) == sha256(media.data("hello.txt"))
    url, status = seen["media/2024"]  # schemathesis sends the name's '/' as it is
    assert status == 200 and url.endswith(("/media%2F2024/hello.txt", "/media/2024/hello.txt"))
    assert seen["builds"][1] == 200
    assert seen["videos"][1] == 307


@pytest.mark.parametrize(
    "path", ["/objects/media%2F2024/hello.txt", "/objects/media/2024/hello.txt"]
)
def test_a_two_segment_name_is_reached_encoded_or_not(
    documented: RunningServer, media: MediaTree, path: str
) -> None:
    response = httpx.get(documented.url + path)
    assert response.status_code == 200
    assert sha256(response.content) == sha256(media.data("hello.txt"))


def test_swagger_ui_offers_the_mounts_and_reaches_a_two_segment_one(
    documented: RunningServer, tab: OfflineTab
) -> None:
    """The offline /docs: the mount is a drop-down of the names; "Try it out" on the public
    two-segment mount sends ``/objects/media%2F2024/hello.txt`` and shows the 200."""
    page = tab.page
    response = page.goto(f"{documented.url}/docs")
    assert response is not None and response.status == 200
    get_object = page.locator("#operations-objects-get_object")
    get_object.wait_for(state="visible")
    summary = get_object.locator(".opblock-summary-path").inner_text()
    assert summary.replace("\u200b", "") == "/objects/{mount}/{key}"
    get_object.locator(".opblock-summary").click()
    get_object.locator(".try-out__btn").click()
    choice = get_object.locator('tr[data-param-name="mount"] select')
    options = choice.locator("option").all_inner_texts()
    assert [o for o in options if o != "--"] == NAMES
    choice.select_option("media/2024")
    get_object.locator('tr[data-param-name="key"] input').fill("hello.txt")
    get_object.locator(".btn.execute").click()
    status = get_object.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(state="visible")
    assert status.inner_text().strip().startswith("200")
    request_url = get_object.locator(".request-url pre").inner_text()
    assert request_url == f"{documented.url}/objects/media%2F2024/hello.txt"
    check_stayed_on_loopback(tab, documented.url, ["/docs", "/openapi.json"])
