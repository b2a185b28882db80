"""``python -m proxy`` (or ``media-proxy``): serve with uvicorn, settings from ``PROXY_*``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from proxy.auth import hash_token, signed_url
from proxy.config import DEFAULT_LOCAL_ROOT, Settings
from proxy.sample import write_sample


def _lean_log_records() -> None:
    """Skip what no formatter of this process prints (caller, thread, process names): a
    quarter of each access-log line's cost. Module level, so uvicorn's workers do it too."""
    logging._srcfile = None  # the logging HOWTO's "Optimization" switches
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


_lean_log_records()


def serve(settings: Settings) -> None:
    """Run uvicorn; on the local backend's default root, create the sample on first run."""
    root = settings.local_root
    if settings.backend == "local" and not root.exists():
        if root != DEFAULT_LOCAL_ROOT:
            sys.exit(f"PROXY_LOCAL_ROOT {root} does not exist")
        keys = write_sample(root)
        print(f"created a sample in ./{root}/", flush=True)
        for key in keys:
            print(f"  http://{settings.host}:{settings.port}/objects/{key}", flush=True)
    if settings.workers > 1 and settings.metrics:
        _share_metrics_between_workers()
    uvicorn.run(
        "proxy.app:create_app",
        factory=True,  # each worker builds its own app (and its own storage client)
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        loop=settings.loop,
        http=settings.http,
        ws="none",  # no WebSockets here: uvicorn would import a WebSocket library (~1 MB)
        server_header=False,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        access_log=not settings.access_log,  # ours is one JSON line per request
    )


def _share_metrics_between_workers() -> None:
    """prometheus-client's multiprocess mode: each worker writes its samples to one directory."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        for stale in directory.glob("*.db"):  # from an earlier run: would be counted again
            stale.unlink()
    else:
        directory = Path(tempfile.mkdtemp(prefix="media-proxy-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="media-proxy", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the proxy (the default)")
    sign = commands.add_parser("sign", help="print a signed URL for one object")
    sign.add_argument("key", help="the object key, e.g. video/clip.mp4")
    sign.add_argument("--ttl", type=int, default=3600, help="seconds the URL stays valid")
    sign.add_argument("--base-url", help="default: http://PROXY_HOST:PROXY_PORT")
    commands.add_parser(
        "hash-key", help="read an API token on stdin, print its PROXY_API_KEYS sha256"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "sign":
        base_url = args.base_url or f"http://{settings.host}:{settings.port}"
        try:
            print(signed_url(settings, base_url, args.key, args.ttl))
        except ValueError as exc:
            sys.exit(str(exc))
    elif args.command == "hash-key":
        print(hash_token(sys.stdin.readline().strip()))
    else:
        serve(settings)


if __name__ == "__main__":
    main()
