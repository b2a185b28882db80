"""A key ending in ``/`` asks for a listing, which the proxy serves only with ``PROXY_LISTING``
on; off (the default): 404 with its JSON error, on every backend and both flavours; other empty
segments stay 400 either way (``check_request_key``, ``check_prefix``).
"""

from __future__ import annotations

import json

import httpx
import pytest

from proxy.auth import hash_token
from proxy.storage.errors import InvalidKey, ObjectNotFound
from proxy.storage.keys import check_request_key
from tests.conftest import MediaTree, RunningServer, StartServer, raw_request, settings_for

NO_LISTINGS = {
    "error": "not_found",
    "detail": "listings are not enabled: a key ending in '/' names a folder, not an object",
}
FOLDERS = [
    "/objects/",
    "/objects/video/",  # a folder that exists on disk, a prefix of keys in S3
    "/objects/dir/",
    "/objects/nothing-here/",
    "/objects/video/clip.mp4/",  # an object's key plus a slash names no object
    "/objects/%76ideo/",  # decoded first: video/
    "/objects/video%2f",
]
STILL_INVALID = [
    "/objects/a//b",
    "/objects/video//clip.mp4",
    "/objects/video//",
    "/objects//",
    "/objects//video/",
    "/objects/../",
    "/objects/video/../",
    "/objects/%2e/",
    "/objects/a%5c/",
    "/objects/a%00/",
]


def answer(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("target", FOLDERS)
def test_a_key_ending_in_a_slash_is_not_listed(server: RunningServer, target: str) -> None:
    status, body = answer(raw_request(server.port, target))
    assert (status, body) == (404, NO_LISTINGS)


def test_head_of_a_folder_is_404_without_a_body(client: httpx.Client) -> None:
    response = client.head("/objects/video/")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.content == b""


@pytest.mark.parametrize("target", STILL_INVALID)
def test_other_empty_segments_stay_400(server: RunningServer, target: str) -> None:
    status, body = answer(raw_request(server.port, target))
    assert (status, body["error"]) == (400, "invalid_key")


def test_access_control_comes_first(media: MediaTree, serve: StartServer) -> None:
    token = "listing-token-0123456789"
    api_keys = [{"name": "video", "sha256": hash_token(token), "prefix": "video/"}]
    running = serve(settings_for(media, "async", access_log=False, api_keys=api_keys))
    assert httpx.get(f"{running.url}/objects/video/").status_code == 401
    authorized = {"authorization": f"Bearer {token}"}
    response = httpx.get(f"{running.url}/objects/video/", headers=authorized)
    assert (response.status_code, response.json()) == (404, NO_LISTINGS)
    # Outside the key's prefix: refused before anything is said about the folder.
    assert httpx.get(f"{running.url}/objects/dir/", headers=authorized).status_code == 403


@pytest.mark.parametrize("key", ["", "a/", "video/", "a/b/", "é/", "a" * 1024 + "/"])
def test_check_request_key_refuses_listings(key: str) -> None:
    with pytest.raises(ObjectNotFound) as info:
        check_request_key(key)
    assert str(info.value) == NO_LISTINGS["detail"]


@pytest.mark.parametrize("key", ["/", "//", "a//", "../", "./", "a/../", "\\/", "a\n/", "/a/"])
def test_check_request_key_keeps_the_key_policy(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_request_key(key)


@pytest.mark.parametrize("key", ["a", "video/clip.mp4", "a/.b"])
def test_check_request_key_returns_an_object_key(key: str) -> None:
    assert check_request_key(key) is key


def test_with_listings_on_the_same_folders_are_listed(media: MediaTree, serve: StartServer) -> None:
    running = serve(settings_for(media, "sync", access_log=False, listing=True))
    for target in FOLDERS:
        head = raw_request(running.port, target).partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 200 "), target
        assert b"content-type: application/jsonl" in head
    for target in STILL_INVALID:
        status, body = answer(raw_request(running.port, target))
        assert (status, body["error"]) == (400, "invalid_key"), target
