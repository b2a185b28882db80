"""A redirecting mount's presigned URLs are reused for a tenth of their TTL (issue 24), and
never beyond what ``proxy.mounts.PresignedUrls`` guarantees: a URL handed out names exactly
the key and disposition asked for, was signed with the credentials botocore signs with at that
moment, and stays valid for more than 90% of ``PROXY_REDIRECT_TTL``.

botocore really signs (its SigV4 query signer, its ``Credentials`` and
``RefreshableCredentials`` with their refresh rules). Time is one clock for both sides:
botocore's signing time (``botocore.auth.get_current_datetime``) and the credentials' refresh
clock follow the test's, so that minutes of TTL pass in no time; the URLs a real S3 accepts
are checked by the redirect tests in ``tests/test_mounts.py`` and the browser's.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.exceptions import CredentialRetrievalError

from proxy.auth import hash_token
from proxy.http.disposition import content_disposition
from proxy.mounts import PresignedUrls, presigner, signing_time
from proxy.storage.errors import BackendUnavailable
from proxy.storage.options import S3Options
from proxy.storage.s3client import boto3_client
from proxy.testing.s3servers import REGION, S3Server
from tests.conftest import MediaTree, StartServer, sha256
from tests.test_mounts import CLIP, mounts_settings, s3_mount

TTL = 300
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z, whole seconds


class Clock:
    """The test's wall clock, which botocore signs and refreshes by too."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.now, datetime.UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    # botocore's SigV4 query signer dates the URL with this (naive UTC, as botocore's own).
    monkeypatch.setattr(
        "botocore.auth.get_current_datetime",
        lambda remove_tzinfo=True: clock.utc().replace(tzinfo=None),
    )
    return clock


def options(prefix: str = "") -> S3Options:
    return S3Options(
        bucket="media",
        prefix=prefix,
        endpoint_url="http://127.0.0.1:9",
        region=REGION,
        addressing_style="path",
    )


@pytest.fixture
def client(aws_env: None) -> Iterator[Any]:
    made, _ = boto3_client(options())
    yield made
    made.close()


def fields(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def check_url(url: str, key: str, disposition: str | None, now: float, ttl: int = TTL) -> float:
    """The URL is for ``key`` and ``disposition``; answers the seconds it stays valid."""
    assert unquote(urlsplit(url).path) == f"/media/{key}"
    query = fields(url)
    assert query.get("response-content-disposition") == disposition
    assert query["X-Amz-Expires"] == str(ttl)
    signed = signing_time(url)
    assert signed is not None
    return signed + ttl - now


def test_a_url_is_reused_for_less_than_a_tenth_of_the_ttl_and_never_for_another_pair(
    clock: Clock, client: Any
) -> None:
    urls = PresignedUrls(client, "media", "", TTL, clock=clock)
    pairs = [
        ("clip.mp4", None),
        ("clip.mp4", content_disposition("clip.mp4")),
        ("clip.mp4", content_disposition("other name.mp4")),
        ("dir/clip.mp4", None),
    ]
    handed: dict[tuple[str, str | None], list[str]] = {pair: [] for pair in pairs}
    least = float(TTL)
    oldest = 0.0
    for step in range(400):  # 0.75 s steps: 300 s, every pair asked at each
        clock.now = START + 0.25 + step * 0.75
        for key, disposition in pairs:
            url = urls(key, disposition)
            valid = check_url(url, key, disposition, clock.now)
            least = min(least, valid)
            oldest = max(oldest, TTL - valid)
            handed[(key, disposition)].append(url)
    # More than 90% of the TTL left on every URL handed out; reused up to that bound.
    assert least > TTL * 0.9, least
    assert 29 <= oldest < 30, oldest
    for pair, seen in handed.items():
        distinct = list(dict.fromkeys(seen))
        assert 10 <= len(distinct) <= 11, (pair, len(distinct))  # 300 s / 30 s, one more
    every = [url for seen in handed.values() for url in set(seen)]
    assert len(every) == len(set(every))  # no URL was handed out for two pairs


def test_the_guarantee_holds_on_any_schedule_and_a_clock_that_goes_back(
    clock: Clock, client: Any
) -> None:
    urls = PresignedUrls(client, "media", "", TTL, clock=clock)
    moments = [0.0, 0.999, 1.0, 29.5, 29.999, 30.0, 30.2, 59.9, 61.0, 35.0, 35.5, 200.0, 10.0]
    for offset in moments:  # the clock steps back after 61.0 and after 200.0
        clock.now = START + offset
        url = urls("clip.mp4", None)
        valid = check_url(url, "clip.mp4", None, clock.now)
        assert TTL * 0.9 < valid <= TTL, (offset, valid)


def test_short_ttls_are_never_reused_and_the_bound_scales(clock: Clock, client: Any) -> None:
    short = PresignedUrls(client, "media", "", 9, clock=clock)
    first = short("clip.mp4", None)
    clock.now += 1
    assert short("clip.mp4", None) != first
    hourly = PresignedUrls(client, "media", "", 3600, clock=clock)
    first = hourly("clip.mp4", None)
    clock.now += 359
    assert hourly("clip.mp4", None) == first
    clock.now += 1
    renewed = hourly("clip.mp4", None)
    assert renewed != first and check_url(renewed, "clip.mp4", None, clock.now, 3600) == 3600


def test_at_most_limit_urls_are_kept_the_oldest_dropped(clock: Clock, client: Any) -> None:
    urls = PresignedUrls(client, "media", "", TTL, limit=3, clock=clock)
    first = {key: urls(key, None) for key in ["a", "b", "c"]}
    clock.now += 1
    assert urls("d", None) != first["a"]  # a new key, and "a" dropped for it
    assert [urls(key, None) for key in ["b", "c"]] == [first["b"], first["c"]]
    clock.now += 1
    assert urls("a", None) != first["a"]  # signed anew
    assert len(urls._urls) == 3


def test_rotated_credentials_sign_anew_at_once(clock: Clock, client: Any) -> None:
    urls = PresignedUrls(client, "media", "", TTL, clock=clock)
    signer = client._request_signer
    assert urls._credentials is signer._credentials  # what botocore signs with
    assert isinstance(signer._credentials, Credentials)
    before = urls("clip.mp4", None)
    assert urls("clip.mp4", None) == before
    # Changed in place, as a refresh changes them: the next URL is signed with the new ones.
    signer._credentials.access_key = "ROTATED"
    signer._credentials.secret_key = "new-secret"
    after = urls("clip.mp4", None)
    assert after != before and fields(after)["X-Amz-Credential"].startswith("ROTATED/")


def test_sts_session_credentials_refresh_and_never_sign_when_expired(
    clock: Clock, client: Any
) -> None:
    """botocore's ``RefreshableCredentials`` (an STS session): a refresh changes what signs,
    so the URL is signed anew; credentials that expire and cannot be renewed answer 503, never
    a URL from before (still within its reuse window)."""
    expiry = START + 3600
    renewals: list[str] = []
    failing = False

    def refresh() -> dict[str, str]:
        if failing:
            raise CredentialRetrievalError(provider="sts", error_msg="no route to STS")
        renewals.append(f"ASIA{len(renewals) + 1}")
        expires = clock.utc() + datetime.timedelta(seconds=900 + 300)
        return {
            "access_key": renewals[-1],
            "secret_key": f"secret-{len(renewals)}",
            "token": f"token-{len(renewals)}",
            "expiry_time": expires.isoformat(),
        }

    session = RefreshableCredentials(
        "ASIA0",
        "secret-0",
        "token-0",
        datetime.datetime.fromtimestamp(expiry, datetime.UTC),
        refresh,
        "sts-assume-role",
        time_fetcher=clock.utc,
    )
    client._request_signer._credentials = session
    urls = PresignedUrls(client, "media", "", TTL, clock=clock)

    def credential(url: str) -> str:
        query = fields(url)
        return query["X-Amz-Credential"].split("/")[0] + " " + query["X-Amz-Security-Token"]

    first = urls("clip.mp4", None)
    assert credential(first) == "ASIA0 token-0"
    clock.now += 10
    assert urls("clip.mp4", None) == first
    # 14 minutes before the expiry: botocore's advisory refresh; the new session signs.
    clock.now = expiry - 14 * 60
    renewed = urls("clip.mp4", None)
    assert credential(renewed) == "ASIA1 token-1" and renewals == ["ASIA1"]
    clock.now += 10
    assert urls("clip.mp4", None) == renewed
    # The next renewal fails: still used in botocore's advisory window (over 10 minutes left)...
    failing = True
    clock.now = START + 3600 - 14 * 60 + 1200 - 605  # ASIA1 expires at +1200 from its renewal
    kept = urls("clip.mp4", None)
    assert credential(kept) == "ASIA1 token-1"
    # ...and refused in its mandatory window, within the cached URL's 30 s all the same.
    clock.now += 10
    with pytest.raises(BackendUnavailable, match="cannot presign"):
        urls("clip.mp4", None)
    with pytest.raises(BackendUnavailable):
        urls("another.mp4", None)


def test_without_credentials_nothing_is_reused_and_a_get_is_503(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client, _ = boto3_client(options())
    try:
        urls = PresignedUrls(client, "media", "", TTL)
        assert urls._credentials is None
        with pytest.raises(BackendUnavailable, match="NoCredentialsError"):
            urls("clip.mp4", None)
        assert urls._urls == {}
    finally:
        client.close()


@pytest.mark.anyio
async def test_the_mounts_presigner_applies_its_prefix(aws_env: None, clock: Clock) -> None:
    async with AsyncExitStack() as stack:
        presign = presigner(options(prefix="/v/"), TTL, stack)
        assert isinstance(presign, PresignedUrls)
        url = presign("clip.mp4", None)
        assert unquote(urlsplit(url).path) == "/media/v/clip.mp4"
        assert presign("clip.mp4", None) == url


def test_reused_urls_are_accepted_by_s3_and_serve_the_object(
    moto: S3Server, media: MediaTree, serve: StartServer
) -> None:
    """Through a real proxy and moto: the second and third 307 for a key hand out the first's
    URL, another disposition gets its own, and each one fetches the object."""
    token = "presign-reuse-token"
    proxy = serve(
        mounts_settings(
            {"r": s3_mount(moto, "aiobotocore", mode="redirect")},
            api_keys=[{"name": "all", "sha256": hash_token(token)}],
        )
    )
    auth = {"authorization": f"Bearer {token}"}
    url = f"{proxy.url}/objects/r/{CLIP}"
    locations = [httpx.get(url, headers=auth).headers["location"] for _ in range(3)]
    assert locations[0] == locations[1] == locations[2]
    download = httpx.get(url, headers=auth, params={"download": "x.mp4"}).headers["location"]
    assert download != locations[0]
    for location in [locations[0], download]:
        fetched = httpx.get(location, timeout=10)
        assert fetched.status_code == 200
        assert sha256(fetched.content) == sha256(media.data(CLIP))
    assert "attachment" in httpx.get(download, timeout=10).headers["content-disposition"]
