"""Smoke tests for the S3 test infrastructure: real servers (moto, SeaweedFS) and the fakes."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.client
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from proxy.testing.s3servers import (
    ACCESS_KEY,
    BUCKET,
    LIMITED_ACCESS_KEY,
    LIMITED_PROFILE,
    OTHER_BUCKET,
    REGION,
    S3Server,
    aws_environment,
    put_object,
    s3_client,
    start_moto,
    start_seaweedfs,
    upload_tree,
)
from tests import fake_s3

ONE_REQUEST = {"total_max_attempts": 1}
# moto's state is process-wide: a session fixture's moto of the same xdist worker serves BUCKET
# with the suite's media tree, so what these tests write goes to a bucket of their own.
OWN_BUCKET = "s3servers-tests"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def error_status(error: ClientError) -> int:
    return int(error.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.fixture(scope="module")
def aws_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with aws_environment(tmp_path_factory.mktemp("aws")):
        yield


@pytest.fixture(scope="module")
def moto_s3(aws_credentials: None) -> Iterator[S3Server]:
    with start_moto() as server:
        yield server


@pytest.fixture(scope="module")
def seaweedfs_s3(
    aws_credentials: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def s3(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(f"{request.param}_s3")
    return server


@pytest.fixture
def client(s3: S3Server) -> Iterator[Any]:
    with contextlib.closing(s3_client(s3)) as s3client:
        yield s3client


# --------------------------------------------------------------------------------------------
# Real servers


def test_server_listens_on_loopback(s3: S3Server, client: Any) -> None:
    assert s3.endpoint_url.startswith("http://127.0.0.1:")
    assert s3.supports_auth is (s3.name == "seaweedfs")
    assert isinstance(client.list_buckets()["Buckets"], list)


def make_tree(base: Path) -> dict[str, bytes]:
    """Files under base/root (returned by key), plus symlinks that upload_tree must skip."""
    rng = random.Random(20261121)
    files = {
        "video/clip.mp4": rng.randbytes(300_000),
        "dir/deeper/inner.mp3": rng.randbytes(10_000),
        "empty.bin": b"",
        "name with spaces & (parens) \u00fc.webm": rng.randbytes(5_000),
        "reserved/plus+percent%20semi;colon:=.bin": rng.randbytes(1_000),
    }
    root = base / "root"
    outside = base / "outside"
    outside.mkdir(parents=True)
    (outside / "secret.txt").write_bytes(b"TOP SECRET\n")
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink(outside / "secret.txt", root / "escape.txt")
    os.symlink(outside, root / "escape-dir")
    os.symlink(root / "video" / "clip.mp4", root / "linked.mp4")
    return files


def test_upload_tree_then_ranged_reads(s3: S3Server, client: Any, tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    keys = upload_tree(
        s3, tmp_path / "root", OWN_BUCKET, content_type={"video/clip.mp4": "video/mp4"}.get
    )
    assert keys == sorted(files)

    for key, data in files.items():
        whole = client.get_object(Bucket=OWN_BUCKET, Key=key)
        with contextlib.closing(whole["Body"]) as body:
            assert sha256(body.read()) == sha256(data), key
        assert whole["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'

    clip = files["video/clip.mp4"]
    for spec, first, last in [
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=299000-", 299000, 299999),
        ("bytes=-500", 299500, 299999),
        ("bytes=0-999999", 0, 299999),
    ]:
        part = client.get_object(Bucket=OWN_BUCKET, Key="video/clip.mp4", Range=spec)
        with contextlib.closing(part["Body"]) as body:
            assert sha256(body.read()) == sha256(clip[first : last + 1]), spec
        assert part["ContentRange"] == f"bytes {first}-{last}/300000"
        assert part["ContentLength"] == last - first + 1
        assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert part["ContentType"] == "video/mp4"

    for skipped in ["escape.txt", "escape-dir/secret.txt", "linked.mp4"]:
        with pytest.raises(ClientError) as caught:
            client.head_object(Bucket=OWN_BUCKET, Key=skipped)
        assert error_status(caught.value) == 404


# What a server stores when PutObject comes without a ContentType.
DEFAULT_CONTENT_TYPE = {
    "moto": {"blob": "binary/octet-stream", "blob.mp4": "binary/octet-stream"},
    # SeaweedFS guesses from the key's extension, else sniffs the content.
    "seaweedfs": {"blob": "application/octet-stream", "blob.mp4": "video/mp4"},
}


def test_put_object_content_type(s3: S3Server, client: Any) -> None:
    data = bytes(range(256)) * 4
    etag = put_object(s3, "typed/no-extension", data, "video/mp4", bucket=OWN_BUCKET)
    head = client.head_object(Bucket=OWN_BUCKET, Key="typed/no-extension")
    assert head["ContentType"] == "video/mp4"
    assert head["ETag"] == etag == f'"{hashlib.md5(data).hexdigest()}"'
    assert head["ContentLength"] == 1024

    for key, expected in DEFAULT_CONTENT_TYPE[s3.name].items():
        put_object(s3, f"untyped/{key}", data, None, bucket=OWN_BUCKET)
        head = client.head_object(Bucket=OWN_BUCKET, Key=f"untyped/{key}")
        assert head["ContentType"] == expected, key


def test_limited_profile_is_denied_on_seaweedfs(seaweedfs_s3: S3Server) -> None:
    put_object(seaweedfs_s3, "limited/probe.bin", b"probe", None)
    put_object(seaweedfs_s3, "probe.bin", b"other", None, bucket=OTHER_BUCKET)
    limited = s3_client(seaweedfs_s3, LIMITED_PROFILE, retries=ONE_REQUEST)
    with contextlib.closing(limited):
        with pytest.raises(ClientError) as caught:
            limited.get_object(Bucket=BUCKET, Key="limited/probe.bin")
        assert (error_code(caught.value), error_status(caught.value)) == ("AccessDenied", 403)
        with pytest.raises(ClientError) as caught:
            limited.head_object(Bucket=BUCKET, Key="limited/probe.bin")
        assert error_status(caught.value) == 403
        # The identity itself is valid: it may read the other bucket.
        other = limited.get_object(Bucket=OTHER_BUCKET, Key="probe.bin")
        with contextlib.closing(other["Body"]) as body:
            assert body.read() == b"other"


def test_moto_accepts_any_credentials(moto_s3: S3Server) -> None:
    put_object(moto_s3, "limited/probe.bin", b"probe", None, bucket=OWN_BUCKET)
    with contextlib.closing(s3_client(moto_s3, LIMITED_PROFILE)) as limited:
        response = limited.get_object(Bucket=OWN_BUCKET, Key="limited/probe.bin")
        with contextlib.closing(response["Body"]) as body:
            assert body.read() == b"probe"


def test_aws_environment_sets_and_restores(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_PROFILE", "elsewhere")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://192.0.2.1")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not-a-token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outer")
    monkeypatch.delenv("AWS_CONFIG_FILE", raising=False)
    before = dict(os.environ)

    with aws_environment(tmp_path / "aws"):
        assert "AWS_PROFILE" not in os.environ
        assert "AWS_ENDPOINT_URL_S3" not in os.environ
        assert "AWS_SESSION_TOKEN" not in os.environ
        assert os.environ["AWS_DEFAULT_REGION"] == REGION
        assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
        assert Path(os.environ["AWS_CONFIG_FILE"]).read_text() == ""
        default = boto3.session.Session().get_credentials()
        limited = boto3.session.Session(profile_name=LIMITED_PROFILE).get_credentials()
        assert default.access_key == ACCESS_KEY
        assert limited.access_key == LIMITED_ACCESS_KEY

    assert dict(os.environ) == before


# --------------------------------------------------------------------------------------------
# Fakes


def fake_client(endpoint_url: str, read_timeout: float = 2.0) -> Any:
    server = S3Server(name="fake", endpoint_url=endpoint_url, supports_auth=False)
    return s3_client(server, connect_timeout=1, read_timeout=read_timeout, retries=ONE_REQUEST)


def test_slow_down(aws_credentials: None) -> None:
    with fake_s3.slow_down() as fake, contextlib.closing(fake_client(fake.endpoint_url)) as c:
        with pytest.raises(ClientError) as caught:
            c.get_object(Bucket=BUCKET, Key="video/clip.mp4")
        assert (error_code(caught.value), error_status(caught.value)) == ("SlowDown", 503)
        assert caught.value.response["Error"]["Message"] == "Please reduce your request rate."
        with pytest.raises(ClientError) as caught:
            c.head_bucket(Bucket=BUCKET)
        assert error_status(caught.value) == 503
        assert fake.requests == 2


def test_slow_down_keeps_the_connection() -> None:
    with fake_s3.slow_down() as fake:
        connection = http.client.HTTPConnection(fake.endpoint_url[len("http://") :], timeout=5)
        with contextlib.closing(connection):
            for _ in range(2):
                connection.request("GET", "/media/a.mp4")
                response = connection.getresponse()
                body = response.read()
                assert response.status == 503
                assert response.getheader("Content-Type") == "application/xml"
                assert response.getheader("Content-Length") == str(len(body))
                assert b"<Code>SlowDown</Code>" in body
                assert not response.will_close
        assert fake.requests == 2


def test_black_hole_times_out(aws_credentials: None) -> None:
    with fake_s3.black_hole() as fake:
        with contextlib.closing(fake_client(fake.endpoint_url, read_timeout=0.3)) as c:
            started = time.monotonic()
            with pytest.raises(ReadTimeoutError):
                c.get_object(Bucket=BUCKET, Key="video/clip.mp4")
            assert time.monotonic() - started < 2
        assert fake.requests == 1
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2


def test_truncating_with_boto3(aws_credentials: None) -> None:
    with fake_s3.truncating(size=100_000, send=1000) as fake:
        with contextlib.closing(fake_client(fake.endpoint_url)) as c:
            head = c.head_object(Bucket=BUCKET, Key="video/clip.mp4")
            assert head["ContentLength"] == 100_000
            assert head["ContentType"] == "video/mp4"
            assert head["ETag"] == '"0123456789abcdef0123456789abcdef"'
            assert head["LastModified"] == datetime.datetime(2026, 11, 21, tzinfo=datetime.UTC)
            assert head["AcceptRanges"] == "bytes"

            part = c.get_object(Bucket=BUCKET, Key="video/clip.mp4", Range="bytes=10-20009")
            assert part["ContentRange"] == "bytes 10-20009/100000"
            assert part["ContentLength"] == 20_000
            with contextlib.closing(part["Body"]) as body, pytest.raises(ResponseStreamingError):
                body.read()

            whole = c.get_object(Bucket=BUCKET, Key="video/clip.mp4")
            received = b""
            with contextlib.closing(whole["Body"]) as body, pytest.raises(IncompleteReadError):
                for chunk in body.iter_chunks(64 * 1024):
                    received += chunk
            assert received == fake_s3.pattern(0, 1000)

            c.head_bucket(Bucket=BUCKET)
        assert fake.requests == 4


def test_truncating_reset_with_boto3(aws_credentials: None) -> None:
    with fake_s3.truncating(size=100_000, send=1000, reset=True) as fake:
        with contextlib.closing(fake_client(fake.endpoint_url)) as c:
            with pytest.raises((ResponseStreamingError, ConnectionClosedError), match="reset"):
                response = c.get_object(Bucket=BUCKET, Key="video/clip.mp4")
                with contextlib.closing(response["Body"]) as body:
                    body.read()
        assert fake.requests == 1


@pytest.mark.parametrize(
    ("range_header", "status", "content_range", "content_length"),
    [
        (None, 200, None, "1000"),
        ("bytes=0-99", 206, "bytes 0-99/1000", "100"),
        ("bytes=900-", 206, "bytes 900-999/1000", "100"),
        ("bytes=-10", 206, "bytes 990-999/1000", "10"),
        ("bytes=-5000", 206, "bytes 0-999/1000", "1000"),
        ("bytes=990-5000", 206, "bytes 990-999/1000", "10"),
        ("bytes=1000-", 416, "bytes */1000", None),
        ("bytes=-0", 416, "bytes */1000", None),
        ("bytes=5-4", 200, None, "1000"),
        ("items=0-1", 200, None, "1000"),
        ("bytes=0-1,5-6", 200, None, "1000"),
    ],
)
def test_truncating_head_ranges(
    range_header: str | None, status: int, content_range: str | None, content_length: str | None
) -> None:
    with fake_s3.truncating(size=1000, send=10, content_type="audio/mpeg") as fake:
        connection = http.client.HTTPConnection(fake.endpoint_url[len("http://") :], timeout=5)
        with contextlib.closing(connection):
            headers = {} if range_header is None else {"Range": range_header}
            connection.request("HEAD", "/media/dir/inner.mp3", headers=headers)
            response = connection.getresponse()
            assert response.read() == b""
            assert response.status == status
            assert response.getheader("Content-Range") == content_range
            if content_length is not None:
                assert response.getheader("Content-Length") == content_length
                assert response.getheader("Content-Type") == "audio/mpeg"
                assert response.getheader("Accept-Ranges") == "bytes"
                assert response.getheader("ETag") == '"0123456789abcdef0123456789abcdef"'
                assert response.getheader("Last-Modified") == "Sat, 21 Nov 2026 00:00:00 GMT"
            # HEAD keeps the connection: HeadBucket on the same one.
            connection.request("HEAD", "/media")
            bucket = connection.getresponse()
            assert (bucket.status, bucket.read()) == (200, b"")
        assert fake.requests == 2


def test_truncating_get_sends_a_prefix_then_closes() -> None:
    with fake_s3.truncating(size=1000, send=100) as fake:
        port = int(fake.endpoint_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /media/a.mp4 HTTP/1.1\r\nHost: x\r\nRange: bytes=500-\r\n\r\n")
            received = b""
            for _ in range(100):  # until EOF
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 206 ")
        assert b"\r\nContent-Range: bytes 500-999/1000\r\n" in head
        assert b"\r\nContent-Length: 500\r\n" in head
        assert body == fake_s3.pattern(500, 600)
        assert fake.requests == 1


def test_pattern_is_consistent() -> None:
    whole = fake_s3.pattern(0, 2000)
    assert len(whole) == 2000
    assert fake_s3.pattern(250, 1999) == whole[250:1999]
    assert fake_s3.pattern(7, 7) == b""


def test_closed_port(aws_credentials: None) -> None:
    endpoint_url = fake_s3.closed_port()
    assert endpoint_url.startswith("http://127.0.0.1:")
    with contextlib.closing(fake_client(endpoint_url)) as c:
        with pytest.raises(EndpointConnectionError):
            c.get_object(Bucket=BUCKET, Key="video/clip.mp4")


def test_fakes_stop_listening() -> None:
    for make in (fake_s3.slow_down, fake_s3.black_hole):
        with make() as fake:
            port = int(fake.endpoint_url.rsplit(":", 1)[1])
            held = socket.create_connection(("127.0.0.1", port), timeout=5)
        with contextlib.closing(held):  # the server went away under an open connection
            held.settimeout(5)
            assert held.recv(1) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
