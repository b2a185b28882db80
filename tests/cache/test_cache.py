"""The slice cache end to end: real proxies (both flavours) on moto and SeaweedFS, what reached
S3 counted by a relay in front of it, bodies compared by sha256."""

from __future__ import annotations

import hashlib
import re
import threading
import time

import httpx

from proxy.testing.s3servers import BUCKET, s3_client
from tests.cache.conftest import SLICE, CachedProxy, MakeProxy


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slice_ranges(traffic_ranges: list[str | None]) -> list[tuple[int, int]]:
    """The (first, last) byte of each ranged GET the relay saw."""
    found = []
    for value in traffic_ranges:
        assert value is not None, "a GET without Range: the cache never asks for whole objects"
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", value)
        assert match, value
        found.append((int(match[1]), int(match[2])))
    return found


def test_a_miss_stores_the_slices_and_the_next_request_is_a_hit(proxy: CachedProxy) -> None:
    key, data = proxy.put(3 * SLICE + 1000)

    first = proxy.get(key)
    assert first.status_code == 200
    assert sha256(first.content) == sha256(data)
    assert first.headers["cache-status"] == "media-proxy; fwd=miss; stored"
    assert len(proxy.traffic.heads()) == 1
    assert slice_ranges(proxy.traffic.ranges()) == [(0, len(data) - 1)]  # one run, 4 slices

    proxy.traffic.reset()
    again = proxy.get(key)
    assert again.status_code == 200
    assert sha256(again.content) == sha256(data)
    assert again.headers["cache-status"] == "media-proxy; hit"
    assert proxy.traffic.requests == []
    assert proxy.traffic.received == 0


def test_a_range_on_a_miss_fetches_only_the_slices_it_covers(proxy: CachedProxy) -> None:
    key, data = proxy.put(8 * SLICE)
    start, stop = 5 * SLICE + 100, 5 * SLICE + 200  # inside slice 5

    response = proxy.get(key, range=f"bytes={start}-{stop - 1}")

    assert response.status_code == 206
    assert response.content == data[start:stop]
    assert slice_ranges(proxy.traffic.ranges()) == [(5 * SLICE, 6 * SLICE - 1)]
    assert proxy.traffic.received < 1.1 * SLICE


def test_a_range_across_slices_returns_exactly_its_bytes(proxy: CachedProxy) -> None:
    key, data = proxy.put(6 * SLICE + 17)
    for start, stop in [
        (SLICE - 10, SLICE + 10),  # across one boundary, cold
        (SLICE - 10, 4 * SLICE + 3),  # across several, partly warm
        (0, 6 * SLICE + 17),  # the whole object as a range, warm
        (6 * SLICE, 6 * SLICE + 17),  # the short last slice
    ]:
        response = proxy.get(key, range=f"bytes={start}-{stop - 1}")
        assert response.status_code == 206
        assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(data)}"
        assert sha256(response.content) == sha256(data[start:stop])
    proxy.traffic.reset()
    response = proxy.get(key, range=f"bytes=10-{6 * SLICE}")
    assert response.headers["cache-status"] == "media-proxy; hit"
    assert proxy.traffic.requests == []


def test_concurrent_requests_for_missing_slices_make_one_s3_read(proxy: CachedProxy) -> None:
    key, data = proxy.put(16 * SLICE)
    proxy.get(key, range="bytes=0-0")  # the metadata (and slice 0): only the slices race below
    proxy.traffic.reset()
    bodies: list[bytes] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def download() -> None:
        try:
            with httpx.Client(base_url=proxy.url, timeout=60) as client:
                start.wait()
                bodies.append(client.get(f"/objects/{key}").content)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=download) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert [sha256(body) for body in bodies] == [sha256(data)] * 16
    assert proxy.traffic.received <= 1.05 * len(data), proxy.traffic.ranges()
    assert proxy.traffic.heads() == []


def test_head_and_preconditions_are_answered_from_cached_metadata(proxy: CachedProxy) -> None:
    key, data = proxy.put(2 * SLICE)
    etag = proxy.get(key).headers["etag"]
    proxy.traffic.reset()

    head = proxy.head(key)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["cache-status"] == "media-proxy; hit"
    assert proxy.get(key, if_none_match=etag).status_code == 304
    assert proxy.get(key, if_match='"other"').status_code == 412
    assert proxy.get(key, range=f"bytes={len(data)}-").status_code == 416
    multipart = proxy.get(key, range=f"bytes=0-9,{SLICE}-{SLICE + 9}")
    assert multipart.status_code == 206
    assert multipart.headers["content-type"].startswith("multipart/byteranges")
    assert data[:10] in multipart.content and data[SLICE : SLICE + 10] in multipart.content
    assert proxy.traffic.requests == []


def test_an_overwritten_object_is_served_new_once_revalidation_sees_it(
    make_proxy: MakeProxy,
) -> None:
    validity = 2
    proxy = make_proxy(cache_validity=validity)
    key, old = proxy.put(2 * SLICE)
    started = time.monotonic()  # the metadata is fetched between these two instants
    assert sha256(proxy.get(key).content) == sha256(old)
    fetched_by = time.monotonic()
    new = bytes(reversed(old))
    proxy.overwrite(key, new)

    within = proxy.get(key)  # trusted for PROXY_CACHE_VALIDITY: the old version, whole
    if time.monotonic() - started < validity:  # a loaded machine may have taken longer
        assert sha256(within.content) == sha256(old)
    time.sleep(max(0.0, fetched_by + validity + 0.1 - time.monotonic()))
    proxy.traffic.reset()
    after = proxy.get(key)
    assert sha256(after.content) == sha256(new)
    assert after.headers["cache-status"] == "media-proxy; fwd=stale; fwd-status=200; stored"
    assert len(proxy.traffic.heads()) == 1
    assert 'if-none-match: "' in proxy.traffic.heads()[0].lower()


def test_an_unchanged_object_is_revalidated_with_one_conditional_head(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy(cache_validity=0.5)
    key, data = proxy.put(SLICE)
    proxy.get(key)
    time.sleep(0.6)
    proxy.traffic.reset()

    response = proxy.get(key)

    assert sha256(response.content) == sha256(data)
    assert response.headers["cache-status"] == "media-proxy; fwd=stale; fwd-status=304"
    assert len(proxy.traffic.heads()) == 1
    assert proxy.traffic.gets() == []


def test_the_cache_survives_a_restart(make_proxy: MakeProxy) -> None:
    first = make_proxy()
    key, data = first.put(3 * SLICE)
    first.get(key)
    second = make_proxy()  # another process's view: a new server on the same directory

    response = second.get(key)

    assert sha256(response.content) == sha256(data)
    assert response.headers["cache-status"] == "media-proxy; hit"
    assert second.traffic.requests == []


def test_a_deleted_object_is_a_404_once_revalidated(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(cache_validity=0.2)
    key, _ = proxy.put(SLICE)
    proxy.get(key)
    s3_client(proxy.s3).delete_object(Bucket=BUCKET, Key=key)
    time.sleep(0.3)
    response = proxy.get(key)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
