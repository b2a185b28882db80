"""Uploads and deletes (issue 25) through real proxies on local disk (both flavours), moto and
SeaweedFS (boto3 and aiobotocore, and a slice-cached mount): bodies read back by sha256, curl
uploads (``-T``, chunked ``--data-binary @-``), clients that leave mid-body, digests, limits,
conditional writes with racing writers, credentials."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from proxy.auth import hash_token, signed_url
from proxy.config import Settings
from proxy.testing.s3servers import BUCKET, S3Server, s3_client
from tests.conftest import (
    MediaTree,
    RunningServer,
    StartServer,
    s3_settings,
    settings_for,
    sha256,
)

WRITER = "writer-token-0123456789"
READER = "reader-token-0123456789"
SCOPED = "scoped-token-0123456789"
API_KEYS = [
    {"name": "writer", "sha256": hash_token(WRITER), "access": "write"},
    {"name": "reader", "sha256": hash_token(READER)},
    {"name": "scoped", "sha256": hash_token(SCOPED), "prefix": "drop/", "access": "write"},
]
SIGNING_KEYS = {"k1": "upload-secret-0123456789"}
PART = 5 * 1024 * 1024  # the smallest multipart part S3 takes
WRITE_BACKENDS = [
    "local-sync",
    "local-async",
    "moto-boto3",
    "moto-aiobotocore",
    "seaweedfs-boto3",
    "seaweedfs-aiobotocore",
    "seaweedfs-boto3-cache",
]


def write_settings(base: Settings) -> Settings:
    values = base.model_dump()
    values.update(
        writes=True,
        api_keys=API_KEYS,
        signing_keys=SIGNING_KEYS,
        multipart_threshold=PART,
        multipart_part_size=PART,
        max_upload_size=256 * 1024 * 1024,
        writes_keep_headers=["content-disposition", "cache-control"],
        cache_control="no-cache",
    )
    return Settings.model_validate(values)


class Writable:
    """A proxy with writes on, and how to look behind it (the directory or the bucket)."""

    def __init__(self, server: RunningServer, backend: str, s3: S3Server | None, where: str):
        self.server = server
        self.backend = backend
        self.s3 = s3
        self.where = where  # the local root, or the key prefix in the bucket

    @property
    def url(self) -> str:
        return self.server.url

    def object_url(self, key: str) -> str:
        return f"{self.server.url}/objects/{quote(key)}"

    def pending_uploads(self) -> list[str]:
        """Multipart uploads left in the bucket below this proxy's prefix (S3), or files that
        are not objects the test wrote (local: temporaries)."""
        if self.s3 is None:
            return []
        with contextlib.closing(s3_client(self.s3)) as client:
            answer = client.list_multipart_uploads(Bucket=BUCKET, Prefix=self.where + "/")
        return [upload["Key"] for upload in answer.get("Uploads", [])]


@pytest.fixture(scope="module", params=WRITE_BACKENDS)
def writable(
    request: pytest.FixtureRequest,
    media: MediaTree,
    serve: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Writable:
    backend: str = request.param
    kind, flavor, *cache = backend.split("-")
    if kind == "local":
        root = tmp_path_factory.mktemp(f"writes-{flavor}")
        base = settings_for(media, flavor, local_root=root)
        return Writable(serve(write_settings(base)), backend, None, str(root))
    s3: S3Server = request.getfixturevalue(kind)
    prefix = f"writes-{backend}"
    extra: dict[str, object] = {"s3_prefix": prefix}
    if cache:
        extra.update(cache_dir=tmp_path_factory.mktemp("cache"), cache_slice_size=65536)
    base = s3_settings(s3, flavor, **extra)
    return Writable(serve(write_settings(base)), backend, s3, prefix)


def as_writer() -> dict[str, str]:
    return {"Authorization": f"Bearer {WRITER}"}


def put(target: Writable, key: str, data: bytes, **headers: str) -> httpx.Response:
    return httpx.put(
        target.object_url(key), content=data, headers=as_writer() | headers, timeout=60
    )


def get(target: Writable, key: str) -> httpx.Response:
    return httpx.get(target.object_url(key), headers=as_writer(), timeout=60)


def unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns():x}"


@pytest.mark.parametrize("size", [0, 1, 1024 * 1024, 2 * PART + 12345])
def test_put_then_get_by_sha256(writable: Writable, size: int) -> None:
    data = os.urandom(size)
    key = unique("put") + ".bin"
    created = put(writable, key, data)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert answer["size"] == size and answer["key"] == key
    assert created.headers["location"] == f"/objects/{quote(key)}"
    read = get(writable, key)
    assert read.status_code == 200
    assert sha256(read.content) == sha256(data)
    assert read.headers["etag"] == created.headers["etag"] == answer["etag"]
    # A second PUT replaces it: 200, and a GET serves the new bytes at once.
    again = os.urandom(size + 7)
    replaced = put(writable, key, again)
    assert replaced.status_code == 200, replaced.text
    assert sha256(get(writable, key).content) == sha256(again)
    assert writable.pending_uploads() == []


def test_range_of_an_uploaded_object(writable: Writable) -> None:
    data = os.urandom(3 * 1024 * 1024)
    key = unique("ranged") + ".mp4"
    assert put(writable, key, data).status_code == 201
    response = httpx.get(
        writable.object_url(key), headers=as_writer() | {"Range": "bytes=1000-1999999"}
    )
    assert response.status_code == 206
    assert sha256(response.content) == sha256(data[1000:2000000])


def test_stored_media_type(writable: Writable) -> None:
    key = unique("typed") + ".bin"
    assert put(writable, key, b"\x00" * 100, **{"Content-Type": "video/mp4"}).status_code == 201
    assert get(writable, key).headers["content-type"] == "video/mp4"
    key = unique("typed") + ".mp3"  # no Content-Type: the extension's
    assert put(writable, key, b"\x00" * 100).status_code == 201
    assert get(writable, key).headers["content-type"] == "audio/mpeg"


KEPT = {
    "content-disposition": 'inline; filename="clip.mp4"',
    "cache-control": "public, max-age=600",
}


def kept_fields(response: httpx.Response) -> dict[str, list[str]]:
    return {name: response.headers.get_list(name) for name in KEPT}


@pytest.mark.parametrize("size", [200_000, PART + 4321])  # one PutObject, a multipart upload
def test_stored_header_fields_are_sent_back(writable: Writable, size: int) -> None:
    data = os.urandom(size)
    key = unique("kept") + ".mp4"
    created = put(writable, key, data, **KEPT)
    assert created.status_code == 201, created.text
    url, etag, auth = writable.object_url(key), created.headers["etag"], as_writer()
    stored = {name: [value] for name, value in KEPT.items()}
    for _ in range(2):  # the second read from the slice cache's index, on the cached mount
        full = httpx.get(url, headers=auth)
        assert full.status_code == 200 and sha256(full.content) == sha256(data)
        assert kept_fields(full) == stored  # the object's Cache-Control, not the no-cache set
        head = httpx.head(url, headers=auth)
        assert head.status_code == 200 and kept_fields(head) == stored
        ranged = httpx.get(url, headers=auth | {"Range": "bytes=10-99999"})
        assert ranged.status_code == 206 and sha256(ranged.content) == sha256(data[10:100000])
        assert kept_fields(ranged) == stored
        parts = httpx.get(url, headers=auth | {"Range": "bytes=0-9,1000-1099"})
        assert parts.status_code == 206 and kept_fields(parts) == stored
        assert parts.headers["content-type"].startswith("multipart/byteranges")
        assert b"Content-Disposition" not in parts.content  # parts: Content-Type and -Range
        assert b"Cache-Control" not in parts.content
        same = httpx.get(url, headers=auth | {"If-None-Match": etag})
        assert same.status_code == 304
        assert kept_fields(same) == {
            "content-disposition": [],
            "cache-control": [KEPT["cache-control"]],
        }
    download = httpx.get(url, params={"download": "mine.mp4"}, headers=auth)
    assert download.status_code == 200 and sha256(download.content) == sha256(data)
    assert download.headers.get_list("content-disposition") == ['attachment; filename="mine.mp4"']
    # Replaced without the fields: the configured Cache-Control again, and no disposition.
    assert put(writable, key, data[:1000]).status_code == 200
    plain = httpx.get(url, headers=auth)
    assert sha256(plain.content) == sha256(data[:1000])
    assert kept_fields(plain) == {"content-disposition": [], "cache-control": ["no-cache"]}


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("Cache-Control", b"max-age=60\tno-transform", "invalid_request"),  # HTAB: a control
        ("Cache-Control", b"max-age=60, " + b"x" * 1024, "invalid_request"),  # over 1024
        ("Content-Disposition", b'attachment; filename="\xe9t\xe9.mp4"', "invalid_request"),
        ("Content-Disposition", b"inline\x7f", "bad_request"),  # the HTTP parser's refusal
    ],
)
def test_fields_no_response_could_send_are_refused(
    writable: Writable, name: str, value: bytes, error: str
) -> None:
    key = unique("refused") + ".mp4"
    answer = httpx.put(
        writable.object_url(key),
        content=b"x" * 10,
        headers=[(b"Authorization", f"Bearer {WRITER}".encode()), (name.encode(), value)],
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == error
    assert error == "bad_request" or name.lower() in answer.json()["detail"]
    assert get(writable, key).status_code == 404


def curl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "120", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=150,
    )


def test_curl_uploads_a_file_and_a_chunked_stream(writable: Writable, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    size = (
        100 * 1024 * 1024
        if writable.backend in ("local-async", "seaweedfs-aiobotocore")
        else 12 * 1024 * 1024
    )
    with big.open("wb") as file:
        for _ in range(size // (1024 * 1024)):
            file.write(os.urandom(1024 * 1024))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    key = unique("curl") + ".bin"
    auth = f"Authorization: Bearer {WRITER}"
    out = curl(
        "-H",
        auth,
        "-T",
        str(big),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        writable.object_url(key),
    )
    assert out.stdout == b"201"
    back = curl("-H", auth, writable.object_url(key)).stdout
    assert hashlib.sha256(back).hexdigest() == digest
    # From a pipe: no Content-Length, Transfer-Encoding: chunked.
    data = os.urandom(3 * 1024 * 1024 + 5)
    key = unique("chunked") + ".bin"
    out = curl(
        "-H",
        auth,
        "-H",
        "Content-Type: application/x-test",
        "-X",
        "PUT",
        "--data-binary",
        "@-",
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        writable.object_url(key),
        stdin=data,
    )
    assert out.stdout == b"201"
    response = get(writable, key)
    assert sha256(response.content) == sha256(data)
    assert response.headers["content-type"] == "application/x-test"


def send_part_and_leave(target: Writable, key: str, declared: int, sent: int) -> None:
    """A client that declares ``declared`` bytes, sends ``sent`` and closes the connection."""
    head = (
        f"PUT /objects/{quote(key)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {WRITER}\r\nContent-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", target.server.port), timeout=30) as sock:
        sock.sendall(head.encode())
        block = os.urandom(256 * 1024)
        for _ in range(sent // len(block)):
            sock.sendall(block)
        time.sleep(0.2)


def eventually(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            assert check()  # type: ignore[operator]
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_client_leaving_mid_body_stores_nothing(
    writable: Writable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="proxy.access")
    key = unique("left") + ".bin"
    old = os.urandom(200_000)
    assert put(writable, key, old).status_code == 201
    # Past the multipart threshold: S3 has parts by the time the client leaves.
    send_part_and_leave(writable, key, declared=4 * PART, sent=2 * PART + PART // 2)
    eventually(lambda: writable.pending_uploads() == [])
    response = get(writable, key)
    assert response.status_code == 200 and sha256(response.content) == sha256(old)

    def left() -> list[dict[str, object]]:
        lines = [json.loads(record.getMessage()) for record in caplog.records]
        return [line for line in lines if line.get("key") == key and line["method"] == "PUT"]

    eventually(lambda: len(left()) == 2)
    line = left()[-1]
    assert line["outcome"] == "client_closed", line
    assert 2 * PART <= int(str(line["bytes_received"])) <= 2 * PART + PART // 2
    # A new key that a leaving client never completed does not exist.
    fresh = unique("never") + ".bin"
    send_part_and_leave(writable, fresh, declared=3 * 1024 * 1024, sent=1024 * 1024)
    eventually(lambda: writable.pending_uploads() == [])
    assert get(writable, fresh).status_code == 404
    if writable.s3 is None:  # no temporary left beside the objects
        names = {path.name for path in Path(writable.where).rglob("*")}
        assert not [name for name in names if name.startswith(".")], names


def test_digests_are_verified(writable: Writable) -> None:
    data = os.urandom(300_000)
    key = unique("digest") + ".bin"
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    refused = put(writable, key, data, **{"Content-MD5": wrong})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_digest"
    assert get(writable, key).status_code == 404
    ok = put(writable, key, data, **{"Content-MD5": md5, "x-amz-checksum-sha256": sha})
    assert ok.status_code == 201
    bad_sha = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    refused = put(writable, key, os.urandom(10), **{"x-amz-checksum-sha256": bad_sha})
    assert refused.status_code == 400 and refused.json()["error"] == "bad_digest"
    assert sha256(get(writable, key).content) == sha256(data)  # the old version stays
    malformed = put(writable, key, data, **{"Content-MD5": "not base64!"})
    assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_digest"
    assert writable.pending_uploads() == []


def test_conditional_writes_and_deletes(writable: Writable) -> None:
    key = unique("cond") + ".bin"
    first, second = os.urandom(1000), os.urandom(2000)
    created = put(writable, key, first, **{"If-None-Match": "*"})
    assert created.status_code == 201
    etag = created.headers["etag"]
    assert put(writable, key, second, **{"If-None-Match": "*"}).status_code == 412
    assert put(writable, key, second, **{"If-Match": '"not-it"'}).status_code == 412
    assert sha256(get(writable, key).content) == sha256(first)
    replaced = put(writable, key, second, **{"If-Match": etag})
    assert replaced.status_code == 200
    assert put(writable, unique("absent"), first, **{"If-Match": "*"}).status_code == 412
    delete = httpx.delete(writable.object_url(key), headers=as_writer() | {"If-Match": etag})
    assert delete.status_code == 412  # the old version's tag
    new_etag = replaced.headers["etag"]
    delete = httpx.delete(writable.object_url(key), headers=as_writer() | {"If-Match": new_etag})
    assert delete.status_code == 204 and delete.content == b""
    assert get(writable, key).status_code == 404
    assert httpx.delete(writable.object_url(key), headers=as_writer()).status_code == 404


def read_head(sock: socket.socket) -> bytes:
    """One response head from ``sock`` (a 100 Continue's or the final answer's)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    return head


@pytest.mark.parametrize("size", [1000, PART + 4096])
def test_if_match_any_holds_until_the_commit(writable: Writable, size: int) -> None:
    # If-Match: * is checked again when the body is in: an object deleted while the body
    # streamed is not written back (S3: PutObject / CompleteMultipartUpload with the tag
    # then stored; local disk: under the folder's lock).
    key = unique("any") + ".bin"
    old = os.urandom(2000)
    assert put(writable, key, old).status_code == 201
    body = os.urandom(size)
    head = (
        f"PUT /objects/{quote(key)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {WRITER}\r\nIf-Match: *\r\nExpect: 100-continue\r\n"
        f"Content-Length: {size}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", writable.server.port), timeout=60) as sock:
        sock.sendall(head.encode())
        # 100 Continue: the first look found the object (the body is read only then).
        assert read_head(sock).startswith(b"HTTP/1.1 100 "), "no 100 Continue"
        sock.sendall(body[: size // 2])
        assert httpx.delete(writable.object_url(key), headers=as_writer()).status_code == 204
        sock.sendall(body[size // 2 :])
        answer = read_head(sock)
    assert answer.startswith(b"HTTP/1.1 412 "), answer[:200]
    assert get(writable, key).status_code == 404
    assert writable.pending_uploads() == []
    # With the object there, the same write replaces it; on a missing key, it is refused
    # before the body, and so is a delete (If-Match is evaluated before the method: 412).
    assert put(writable, key, old).status_code == 201
    assert put(writable, key, body, **{"If-Match": "*"}).status_code == 200
    assert sha256(get(writable, key).content) == sha256(body)
    gone = unique("gone") + ".bin"
    assert put(writable, gone, body, **{"If-Match": "*"}).status_code == 412
    for tag in ["*", '"abc"']:
        missing = httpx.delete(writable.object_url(gone), headers=as_writer() | {"If-Match": tag})
        assert missing.status_code == 412, (tag, missing.text)
    deleted = httpx.delete(writable.object_url(key), headers=as_writer() | {"If-Match": "*"})
    assert deleted.status_code == 204


def test_racing_creates_have_one_winner(writable: Writable) -> None:
    for round_ in range(3):
        key = unique(f"race{round_}") + ".bin"
        bodies = [os.urandom(1024 * 1024 + n) for n in range(2)]
        statuses: list[int] = [0, 0]

        def write(
            n: int, key: str = key, bodies: list[bytes] = bodies, statuses: list[int] = statuses
        ) -> None:
            statuses[n] = put(writable, key, bodies[n], **{"If-None-Match": "*"}).status_code

        threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(statuses) == [201, 412], statuses
        winner = bodies[statuses.index(201)]
        assert sha256(get(writable, key).content) == sha256(winner)


def test_credentials_are_always_needed(writable: Writable) -> None:
    key = unique("auth") + ".txt"
    url = writable.object_url(key)
    none = httpx.put(url, content=b"x")
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert none.headers.get("connection") == "close"  # the body is not read
    reader = httpx.put(url, content=b"x", headers={"Authorization": f"Bearer {READER}"})
    assert reader.status_code == 403
    scoped = httpx.put(url, content=b"x", headers={"Authorization": f"Bearer {SCOPED}"})
    assert scoped.status_code == 403
    inside = writable.object_url("drop/" + key)
    assert (
        httpx.put(inside, content=b"x", headers={"Authorization": f"Bearer {SCOPED}"}).status_code
        == 201
    )
    assert httpx.delete(url, headers={"Authorization": f"Bearer {READER}"}).status_code == 403
    # A URL signed for PUT writes; one signed for GET does not; a signed PUT cannot delete.
    settings = writable.server.settings
    signed_put = signed_url(settings, writable.url, key, 600, method="PUT")
    assert httpx.put(signed_put, content=b"signed").status_code == 201
    assert httpx.get(signed_url(settings, writable.url, key, 600)).content == b"signed"
    signed_get = signed_url(settings, writable.url, key, 600)
    assert httpx.put(signed_get, content=b"no").status_code == 403
    assert httpx.delete(signed_put).status_code == 403
    signed_delete = signed_url(settings, writable.url, key, 600, method="DELETE")
    assert httpx.delete(signed_delete).status_code == 204


def test_refused_keys(writable: Writable) -> None:
    for key in ["%2E%2E/escape.txt", "a//b.txt", "folder/", "a/%2E/b.txt"]:
        target = f"{writable.url}/objects/{key}"
        response = httpx.put(target, content=b"x", headers=as_writer())
        assert response.status_code == 400, (key, response.text)


def test_too_large_is_refused(writable: Writable) -> None:
    key = unique("big") + ".bin"
    limit = int(writable.server.settings.max_upload_size)
    # Declared: refused before a byte is read, and the connection closes.
    head = (
        f"PUT /objects/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\n"
        f"Content-Length: {limit + 1}\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", writable.server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer
    assert get(writable, key).status_code == 404


def test_writes_show_in_the_access_log_and_metrics(
    writable: Writable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="proxy.access")
    key = unique("logged") + ".bin"
    assert put(writable, key, b"y" * 12345).status_code == 201
    assert httpx.delete(writable.object_url(key), headers=as_writer()).status_code == 204

    def logged() -> list[dict[str, object]]:
        lines = [json.loads(record.getMessage()) for record in caplog.records]
        return [line for line in lines if line.get("key") == key]

    eventually(lambda: len(logged()) == 2)
    put_line, delete_line = sorted(logged(), key=lambda line: str(line["method"]), reverse=True)
    assert put_line["method"] == "PUT" and put_line["status"] == 201
    assert put_line["bytes_received"] == 12345 and put_line["outcome"] == "complete"
    assert delete_line["method"] == "DELETE" and "bytes_received" not in delete_line
    metrics = httpx.get(f"{writable.url}/metrics").text
    assert 'proxy_uploads_total{outcome="stored"}' in metrics
    assert "proxy_upload_bytes_total" in metrics


@pytest.fixture(scope="module")
def small_limit(
    media: MediaTree, serve: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> RunningServer:
    root = tmp_path_factory.mktemp("small-limit")
    base = settings_for(media, "async", local_root=root)
    settings = write_settings(base).model_copy(update={"max_upload_size": 1024 * 1024})
    return serve(settings)


def test_a_chunked_body_past_the_limit_is_aborted(small_limit: RunningServer) -> None:
    def stream() -> Iterator[bytes]:
        for _ in range(8):
            yield os.urandom(256 * 1024)

    url = f"{small_limit.url}/objects/chunked-big.bin"
    response = httpx.put(url, content=stream(), headers=as_writer())
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert httpx.get(url, headers=as_writer()).status_code == 404
    assert sorted(os.listdir(small_limit.settings.local_root)) == []


@pytest.fixture(scope="module")
def read_only(media: MediaTree, serve: StartServer) -> RunningServer:
    return serve(settings_for(media, "async", api_keys=API_KEYS))


def test_writes_are_off_by_default(read_only: RunningServer) -> None:
    url = f"{read_only.url}/objects/hello.txt"
    for method in ["PUT", "DELETE"]:
        response = httpx.request(
            method, url, content=b"x" if method == "PUT" else None, headers=as_writer()
        )
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
    assert "put" not in json.dumps(
        httpx.get(f"{read_only.url}/openapi.json").json()["paths"]["/objects/{key}"]
    )


MOUNTED = "mounted-token-0123456789"


@pytest.fixture(scope="module")
def mounted(serve: StartServer, tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    """Two mounts: ``w`` public for reading and writable, ``r`` not writable."""
    writable_root = tmp_path_factory.mktemp("w-mount")
    other_root = tmp_path_factory.mktemp("r-mount")
    keys = [
        *API_KEYS,
        {"name": "r-only", "sha256": hash_token(MOUNTED), "access": "write", "mounts": ["r"]},
    ]
    settings = Settings.model_validate(
        {
            "mounts": {
                "w": {
                    "backend": "local",
                    "local_root": writable_root,
                    "writes": True,
                    "public": True,
                },
                "r": {"backend": "local", "local_root": other_root, "flavor": "sync"},
            },
            "api_keys": keys,
        }
    )
    return serve(settings)


def test_writes_per_mount(mounted: RunningServer) -> None:
    url = f"{mounted.url}/objects/w/clip.bin"
    data = os.urandom(70_000)
    assert httpx.put(url, content=data).status_code == 401  # public for reading only
    other = {"Authorization": f"Bearer {MOUNTED}"}
    assert httpx.put(url, content=data, headers=other).status_code == 403  # its mounts: r
    assert httpx.put(url, content=data, headers=as_writer()).status_code == 201
    assert sha256(httpx.get(url).content) == sha256(data)  # read without credentials
    refused = httpx.put(f"{mounted.url}/objects/r/clip.bin", content=data, headers=other)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
    other_method = httpx.post(url, content=data, headers=as_writer())
    assert other_method.status_code == 405
    assert other_method.headers["allow"] == "GET, HEAD, PUT, DELETE"
    operations = httpx.get(f"{mounted.url}/openapi.json").json()["paths"]
    assert {"put", "delete"} <= set(operations["/objects/{mount}/{key}"])
    assert httpx.delete(url, headers=as_writer()).status_code == 204
    assert httpx.get(url).status_code == 404
