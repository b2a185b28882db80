"""CORS for players on other origins: off by default; preflight for Range; exposed headers."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MediaTree, RunningServer, StartServer, settings_for, sha256

CLIP = "/objects/video/clip.mp4"
PLAYER = "http://player.test:8080"
EXPOSED = {"content-range", "accept-ranges", "content-length", "etag"}


@pytest.fixture(scope="module", params=["sync", "async"])
def cors_server(
    request: pytest.FixtureRequest, media: MediaTree, serve: StartServer
) -> RunningServer:
    origins = f"{PLAYER}, http://other.test"
    return serve(settings_for(media, request.param, cors_allow_origins=origins))


def exposed(response: httpx.Response) -> set[str]:
    value = response.headers.get("access-control-expose-headers", "")
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def test_no_cors_by_default(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}{CLIP}", headers={"Origin": PLAYER, "Range": "bytes=0-1"})
    assert response.status_code == 206
    assert "access-control-allow-origin" not in response.headers
    preflight = httpx.options(
        f"{server.url}{CLIP}",
        headers={"Origin": PLAYER, "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_ranged_get_from_an_allowed_origin(cors_server: RunningServer, media: MediaTree) -> None:
    response = httpx.get(
        f"{cors_server.url}{CLIP}", headers={"Origin": PLAYER, "Range": "bytes=10-19"}
    )
    assert response.status_code == 206
    assert response.headers["access-control-allow-origin"] == PLAYER
    assert EXPOSED <= exposed(response)
    assert "origin" in response.headers["vary"].lower()
    assert response.content == media.data("video/clip.mp4")[10:20]


def test_whole_get_and_304_carry_cors_headers(cors_server: RunningServer, media: MediaTree) -> None:
    response = httpx.get(f"{cors_server.url}{CLIP}", headers={"Origin": PLAYER})
    assert response.headers["access-control-allow-origin"] == PLAYER
    assert sha256(response.content) == sha256(media.data("video/clip.mp4"))
    etag = response.headers["etag"]
    revalidated = httpx.get(
        f"{cors_server.url}{CLIP}", headers={"Origin": PLAYER, "If-None-Match": etag}
    )
    assert revalidated.status_code == 304
    assert revalidated.headers["access-control-allow-origin"] == PLAYER


def test_other_origins_get_no_permission(cors_server: RunningServer) -> None:
    response = httpx.get(f"{cors_server.url}{CLIP}", headers={"Origin": "http://evil.test"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert "origin" in response.headers["vary"].lower()  # caches keep the answers apart


def test_preflight_for_a_range_request(cors_server: RunningServer) -> None:
    response = httpx.options(
        f"{cors_server.url}{CLIP}",
        headers={
            "Origin": PLAYER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range, if-range",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PLAYER
    assert "GET" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "range" in allowed and "if-range" in allowed
    assert response.headers["access-control-max-age"] == "600"


def test_preflight_from_another_origin_is_refused(cors_server: RunningServer) -> None:
    response = httpx.options(
        f"{cors_server.url}{CLIP}",
        headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
