"""Clients of the listing scenario; each prints one JSON line. Run as a subprocess of run.py, so
that the proxy and the paginator both compete with one client process for the CPU.

  listing.py proxy PORT PATH            # stream a JSON Lines listing: keys, seconds, first line
  listing.py paginator ENDPOINT BUCKET PREFIX   # boto3's paginator, the same keys, directly
  listing.py upload ENDPOINT BUCKET PREFIX COUNT  # the scenario's empty objects (once)

The paginator lists without a delimiter (what ``?recursive`` asks for), 1,000 keys per page,
with the client configured as the proxy configures its own (SigV4, checksums when required).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

LOOPBACK = "127.0.0.1"
TIMEOUT_S = 300.0
UPLOAD_THREADS = 32


def key_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:07d}.bin"


def proxy(port: int, path: str) -> dict[str, Any]:
    """GET path (a JSON Lines listing) and read it to the end: the keys it listed, the seconds
    from sending the request to the first line and to the last, whether it ended complete."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT_S)
    started = time.perf_counter()
    connection.request("GET", path, headers={"Accept": "application/jsonl"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"listing: HTTP {response.status}")
    first_line = None
    keys = 0
    last = b""
    while line := response.readline():
        if first_line is None:
            first_line = time.perf_counter() - started
        keys += line.startswith(b'{"key"')
        last = line
    seconds = time.perf_counter() - started
    connection.close()
    end = json.loads(last) if last.startswith(b'{"complete"') else {}
    return {
        "keys": keys,
        "seconds": seconds,
        "first_line_s": first_line if first_line is not None else seconds,
        "complete": float(end.get("complete") is True and end.get("count") == keys),
    }


def client(endpoint: str) -> Any:
    import boto3.session
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=UPLOAD_THREADS,
    )
    session = boto3.session.Session(region_name="us-east-1")
    return session.client("s3", endpoint_url=endpoint, config=config)


def paginator(endpoint: str, bucket: str, prefix: str) -> dict[str, Any]:
    s3 = client(endpoint)
    started = time.perf_counter()
    keys = 0
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys += len(page.get("Contents", ()))
    return {"keys": keys, "seconds": time.perf_counter() - started}


def upload(endpoint: str, bucket: str, prefix: str, count: int) -> dict[str, Any]:
    s3 = client(endpoint)
    started = time.perf_counter()

    def put(index: int) -> None:
        s3.put_object(Bucket=bucket, Key=key_name(prefix, index), Body=b"")

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(put, range(count)))
    return {"keys": count, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    on_proxy = commands.add_parser("proxy")
    on_proxy.add_argument("port", type=int)
    on_proxy.add_argument("path")
    direct = commands.add_parser("paginator")
    for command in (direct, commands.add_parser("upload")):
        command.add_argument("endpoint")
        command.add_argument("bucket")
        command.add_argument("prefix")
    commands.choices["upload"].add_argument("count", type=int)
    args = parser.parse_args(argv)
    if args.command == "proxy":
        result = proxy(args.port, args.path)
    elif args.command == "paginator":
        result = paginator(args.endpoint, args.bucket, args.prefix)
    else:
        result = upload(args.endpoint, args.bucket, args.prefix, args.count)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
