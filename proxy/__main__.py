"""``python -m proxy`` (or ``media-proxy``): serve with uvicorn, settings from ``PROXY_*``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from proxy.config import DEFAULT_LOCAL_ROOT, Settings
from proxy.sample import write_sample


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
    uvicorn.run(
        "proxy.app:create_app",
        factory=True,  # each worker builds its own app (and its own storage client)
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        loop=settings.loop,
        http=settings.http,
        server_header=False,
        timeout_graceful_shutdown=30,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="media-proxy", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    parser.parse_args(argv)
    serve(Settings())


if __name__ == "__main__":
    main()
