"""The upload scenario (issue 25): the big object PUT through the proxy, against boto3's own
``upload_file`` straight to SeaweedFS, and the proxy's RSS under concurrent uploads.

upload  one client PUTs the whole big object (--size-mib) with Content-Length, the body sent
        from the file by sendfile (never held in memory): MB/s until the 201, and the
        proxy's peak RSS meanwhile. On s3-direct the same file goes up with boto3's
        ``upload_file`` (its default TransferConfig: 8 MiB parts, 10 threads), the client
        configured as the proxy configures its own. Then, S3 proxies only, UPLOAD_CLIENTS
        clients PUT min(256 MiB, the big object) each at once: the proxy's peak RSS, how many
        got their 201, MB/s in all. Every object is deleted afterwards (through the proxy: its
        DELETE) and SeaweedFS is asked to reclaim the space (its master's /vol/vacuum).

The proxies (``*-upload`` targets) serve one mount, ``w``, with writes on: public for reads
(run.py's readiness check GETs a tiny object without credentials), writes with a bearer key
whose token is made when this module is imported (no secret in the repository); clients get it
in the environment, never on a command line. As a script, this module is those clients:

  uploads.py put PORT PATH FILE LENGTH [--clients N]   # N PUTs of FILE's first LENGTH bytes
  uploads.py direct ENDPOINT BUCKET KEY FILE           # boto3 upload_file, then delete
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from procs import LOOPBACK, Sampler, rss_bytes, tree_pids
from scenarios import Config, Measurement, NoData, Scenario
from servers import (
    BASELINE,
    BIG,
    BUCKET,
    DATA_DIR,
    PROXY_LOCAL,
    PROXY_S3_AIO,
    PROXY_S3_BOTO3,
    Server,
    Site,
    Target,
    variant,
)

HERE = Path(__file__).resolve().parent
MB = 1e6
MIB = 1024 * 1024
UPLOAD_CLIENTS = 20
CONCURRENT_SIZE = 256 * MIB  # each concurrent upload (at most the big object)
TOKEN_ENV = "BENCH_UPLOAD_TOKEN"
TOKEN = secrets.token_urlsafe(32)  # this run's write key (PROXY_API_KEYS holds its sha256)
MOUNT = "w"
KEY_PREFIX = "uploads/"
MIN_RATE = 10 * MB  # bytes/s: an upload slower than this times out
VACUUM_TIMEOUT_S = 300.0


def _mount_env(options: dict[str, object]) -> tuple[tuple[str, str], ...]:
    # PROXY_WRITES, which the mount inherits: a mount's own "writes": true is refused as long
    # as its options are validated without the global PROXY_API_KEYS.
    mount = {**options, "public": True}
    key = {"name": "bench-writer", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    return (
        ("PROXY_WRITES", "true"),
        ("PROXY_MOUNTS", json.dumps({MOUNT: mount})),
        ("PROXY_API_KEYS", json.dumps([{**key, "access": "write"}])),
    )


def _upload_target(target: Target, options: dict[str, object]) -> Target:
    return replace(
        variant(target, "-upload", env=_mount_env(options)),
        prefix=f"/objects/{MOUNT}/",
        scenarios=("upload",),
    )


PROXY_LOCAL_UPLOAD = _upload_target(PROXY_LOCAL, {"backend": "local", "local_root": DATA_DIR})
PROXY_S3_AIO_UPLOAD = _upload_target(PROXY_S3_AIO, {"backend": "s3", "s3_bucket": BUCKET})
PROXY_S3_BOTO3_UPLOAD = _upload_target(PROXY_S3_BOTO3, {"backend": "s3", "s3_bucket": BUCKET})
UPLOAD_TARGETS = [PROXY_LOCAL_UPLOAD, PROXY_S3_AIO_UPLOAD, PROXY_S3_BOTO3_UPLOAD]
_NAMES = {target.name for target in UPLOAD_TARGETS}


@dataclass
class _Place:
    """Where this run's data is (set by ``prepare``)."""

    source: Path | None = None  # the big object's file: what every upload sends
    seaweed_log: Path | None = None  # names the SeaweedFS master's port


PLACE = _Place()


def prepare(site: Site) -> None:
    """Called by run.py once the data and SeaweedFS are there."""
    PLACE.source = site.data_dir / BIG
    PLACE.seaweed_log = site.work_dir / "weed" / "weed.log" if site.s3 is not None else None


def _client(*args: object, timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "uploads.py"), *map(str, args)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, TOKEN_ENV: TOKEN},
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise NoData(f"upload client timed out after {timeout_s:.0f} s") from error
    if done.returncode != 0:
        raise NoData(f"upload client exited {done.returncode}: {done.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _vacuum() -> str:
    """Ask SeaweedFS's master to compact the volumes now (deleted objects keep their disk space
    until then; the master would do it only every 15 minutes): what it said, in short."""
    log = PLACE.seaweed_log
    ports = re.findall(r"-master\.port=(\d+)", log.read_text(errors="replace")) if log else []
    if not ports:
        return "no master port in the SeaweedFS log: space not reclaimed"
    url = f"http://{LOOPBACK}:{ports[-1]}/vol/vacuum?garbageThreshold=0.0001"
    try:
        with urllib.request.urlopen(url, timeout=VACUUM_TIMEOUT_S) as response:
            response.read()
    except OSError as error:
        return f"vacuum failed: {error}"
    return "vacuumed"


def _delete(server: Server, keys: list[str]) -> None:
    """DELETE each key through the proxy (bounded; a key not stored is not an error here)."""
    for key in keys:
        request = urllib.request.Request(
            server.url(server.target.prefix + key),
            method="DELETE",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
        except OSError as error:
            print(f"    (deleting {key}: {error})", flush=True)


def measure_upload(config: Config, server: Server, run_index: int) -> Measurement:
    source = PLACE.source
    if source is None or not source.exists():
        raise NoData("upload: run.py did not call uploads.prepare")
    timeout_s = config.size / MIN_RATE + 60
    key = f"{KEY_PREFIX}big-{run_index}-{secrets.token_hex(4)}.bin"
    if server.target.name == "s3-direct":
        result = _client(
            "direct", config.s3_endpoint_url, config.s3_bucket, key, source, timeout_s=timeout_s
        )
        _vacuum()
        return {"upload_mbps": config.size / result["seconds"] / MB}
    if server.pid is None or not _upload_proxy(server.target):
        raise NoData("upload: not an upload proxy started by the benchmark")
    pids = tree_pids(server.pid)
    measured: Measurement = {}
    try:
        with Sampler(lambda: rss_bytes(pids)) as sampler:
            result = _client(
                "put", server.port, server.target.prefix + key, source, config.size,
                "--timeout", timeout_s, timeout_s=timeout_s + 30,
            )  # fmt: skip
        _check(result, 1, config.size)
        measured["upload_mbps"] = config.size / result["seconds"] / MB
        measured["upload_peak_mb"] = sampler.peak() / MB
    finally:
        _delete(server, [key])
    if server.target.backend != "s3":
        return measured
    _vacuum()
    measured |= _concurrent(config, server, pids, source, run_index)
    return measured


def _concurrent(
    config: Config, server: Server, pids: list[int], source: Path, run_index: int
) -> Measurement:
    """UPLOAD_CLIENTS uploads at once: the proxy's RSS before and at its peak, how many were
    stored, MB/s in all."""
    size = min(CONCURRENT_SIZE, config.size)
    stem = f"{KEY_PREFIX}many-{run_index}-{secrets.token_hex(4)}-"
    keys = [f"{stem}{n}.bin" for n in range(UPLOAD_CLIENTS)]
    timeout_s = UPLOAD_CLIENTS * size / MIN_RATE + 60
    before = rss_bytes(pids)
    try:
        with Sampler(lambda: rss_bytes(pids)) as sampler:
            result = _client(
                "put", server.port, server.target.prefix + stem + "{n}.bin", source, size,
                "--clients", UPLOAD_CLIENTS, "--timeout", timeout_s, timeout_s=timeout_s + 30,
            )  # fmt: skip
    finally:
        _delete(server, keys)
        print(f"    ({_vacuum()})", flush=True)
    return {
        "upload20_before_mb": before / MB,
        "upload20_peak_mb": sampler.peak() / MB,
        "upload20_stored": result["stored"],
        "upload20_mbps": UPLOAD_CLIENTS * size / result["seconds"] / MB,
    }


def _check(result: dict[str, Any], clients: int, size: int) -> None:
    if result["stored"] != clients:
        raise NoData(f"upload: {result['stored']:.0f} of {clients} stored: {result['errors']}")
    if result["sizes"] != [size] * clients:
        raise NoData(f"upload: stored sizes {result['sizes']}, sent {size}")


def _upload_proxy(target: Target) -> bool:
    """One of UPLOAD_TARGETS, today's build or --baseline's."""
    return target.name.removesuffix(BASELINE) in _NAMES


def _applies(target: Target) -> bool:
    return _upload_proxy(target) or target.name == "s3-direct"


UPLOAD_SCENARIOS = [
    Scenario(
        "upload",
        (
            "upload_mbps",
            "upload_peak_mb",
            "upload20_before_mb",
            "upload20_peak_mb",
            "upload20_stored",
            "upload20_mbps",
        ),
        _applies,
        measure_upload,
    )
]


# -- the clients (run as a script) -------------------------------------------------------------


async def _put_one(port: int, path: str, source: Path, length: int, token: str) -> dict[str, Any]:
    """One PUT with Content-Length, the body sent from the file by sendfile; its answer."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("ascii"))
        await writer.drain()
        with source.open("rb") as file:
            await asyncio.get_running_loop().sendfile(writer.transport, file, 0, length)
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 else 0
    answer = json.loads(body) if status in (200, 201) else {}
    return {
        "status": status,
        "size": answer.get("size"),
        "body": body[:200].decode(errors="replace"),
    }


async def _put_many(
    port: int, path: str, source: Path, length: int, clients: int, timeout_s: float
) -> dict[str, Any]:
    token = os.environ[TOKEN_ENV]
    started = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        answers = await asyncio.gather(
            *(
                _put_one(port, path.replace("{n}", str(n)), source, length, token)
                for n in range(clients)
            ),
            return_exceptions=True,
        )
    seconds = time.perf_counter() - started
    stored = [a for a in answers if isinstance(a, dict) and a["status"] in (200, 201)]
    errors = [a if isinstance(a, dict) else repr(a) for a in answers if a not in stored]
    return {
        "seconds": seconds,
        "stored": len(stored),
        "sizes": [a["size"] for a in stored],
        "errors": errors[:3],
    }


def _direct(endpoint: str, bucket: str, key: str, source: Path) -> dict[str, Any]:
    """boto3's upload_file with its default TransferConfig; the size S3 then has; deleted."""
    from listing import client

    s3 = client(endpoint)
    started = time.perf_counter()
    s3.upload_file(str(source), bucket, key)
    seconds = time.perf_counter() - started
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    if size != source.stat().st_size:
        raise SystemExit(f"upload_file stored {size} bytes of {source.stat().st_size}")
    return {"seconds": seconds, "size": size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("put")
    put.add_argument("port", type=int)
    put.add_argument("path", help="the URL path; {n} becomes the client's number")
    put.add_argument("file", type=Path)
    put.add_argument("length", type=int)
    put.add_argument("--clients", type=int, default=1)
    put.add_argument("--timeout", type=float, default=3600.0)
    direct = commands.add_parser("direct")
    for name in ("endpoint", "bucket", "key"):
        direct.add_argument(name)
    direct.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "put":
        result = asyncio.run(
            _put_many(args.port, args.path, args.file, args.length, args.clients, args.timeout)
        )
    else:
        result = _direct(args.endpoint, args.bucket, args.key, args.file)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
