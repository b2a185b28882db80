"""CPU per request of the mounts' paths, in one process, before/after figures side by side.

  python benchmarks/mount_cost.py [--requests 3000] [--rounds 3] [--access-log]

Calls the app as ASGI directly (no sockets, no client: only the proxy's own work), access log
and metrics off unless ``--access-log`` (then both on, as deployed; the lines to /dev/null),
each app's lifespan entered once; the apps take turns, ``--rounds`` times, so that a busy
machine weighs on all.
Process CPU time per request:

- ``307 signed each time``: a GET on a redirecting S3 mount whose presigner signs every URL
  (botocore's ``generate_presigned_url``, what every 307 cost before the reuse);
- ``307 reused``: the same mount as served, URLs reused for a tenth of the TTL
  (``proxy.mounts.PresignedUrls``), the same key every time (a player's ranges);
- ``307 reused, 1000 keys``: a thousand keys in turn (the hits of a busier mix);
- ``range, root``/``range, 3rd of 3 mounts``: a 64 KiB range of a local file (async flavour)
  from the single backend at the root and through the last of three mounts.

No S3 is needed: a redirect makes no S3 call (the endpoint is a closed port).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.app import create_app  # noqa: E402
from proxy.config import Settings  # noqa: E402
from proxy.mounts import PresignedUrls  # noqa: E402
from proxy.observability import LineHandler, access_logger  # noqa: E402

SIZE = 64 * 1024 * 1024
SPAN = 64 * 1024
S3 = {
    "backend": "s3",
    "s3_bucket": "media",
    "s3_endpoint_url": "http://127.0.0.1:9",
    "s3_region": "us-east-1",
    "s3_addressing_style": "path",
    "mode": "redirect",
}

Paths = Callable[[random.Random], tuple[str, list[tuple[bytes, bytes]]]]


def ranged(path: str) -> Paths:
    def make(rng: random.Random) -> tuple[str, list[tuple[bytes, bytes]]]:
        first = rng.randrange(0, SIZE - SPAN)
        return path, [(b"range", f"bytes={first}-{first + SPAN - 1}".encode())]

    return make


def keys(count: int) -> Paths:
    def make(rng: random.Random) -> tuple[str, list[tuple[bytes, bytes]]]:
        return f"/objects/r/clip-{rng.randrange(count)}.mp4", []

    return make


async def cpu_per_request(app: Any, paths: Paths, requests: int, seed: int) -> tuple[float, set]:
    rng = random.Random(seed)
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    started = time.process_time()
    for _ in range(requests):
        path, headers = paths(rng)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench"), *headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
            "state": {},
        }
        await app(scope, receive, send)
    return (time.process_time() - started) / requests * 1e6, statuses


async def main(requests: int, rounds: int, deployed: bool) -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    common = {"access_log": deployed, "metrics": deployed}
    if deployed:  # the lines are made and written, to /dev/null (the app keeps a handler set)
        access_logger.addHandler(LineHandler(open(os.devnull, "w")))  # noqa: SIM115
        access_logger.propagate = False
    with tempfile.TemporaryDirectory(prefix="mount-cost-") as tmp:
        root = Path(tmp)
        (root / "obj.bin").write_bytes(os.urandom(SIZE))
        local = {"backend": "local", "local_root": str(root)}
        redirect = Settings.model_validate({"mounts": {"r": S3}, **common})
        cases: list[tuple[str, Settings, Paths, bool]] = [
            ("307 signed each time", redirect, keys(1), False),
            ("307 reused", redirect, keys(1), True),
            ("307 reused, 1000 keys", redirect, keys(1000), True),
            ("range, root", Settings(local_root=root, **common), ranged("/objects/obj.bin"), True),
            (
                "range, 3rd of 3 mounts",
                Settings.model_validate({"mounts": {n: local for n in "abc"}, **common}),
                ranged("/objects/c/obj.bin"),
                True,
            ),
        ]
        apps = []
        for name, settings, paths, reuse in cases:
            app = create_app(settings)
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            if not reuse:
                served = app.state.mounts.mounts[0]
                assert isinstance(served.presign, PresignedUrls)
                served.presign = served.presign.sign
            apps.append((name, app, paths))
            await cpu_per_request(app, paths, min(300, requests), 0)  # warm
        figures: dict[str, list[float]] = {name: [] for name, _, _ in apps}
        for round_ in range(rounds):
            order = apps if round_ % 2 == 0 else apps[::-1]
            for name, app, paths in order:
                us, statuses = await cpu_per_request(app, paths, requests, round_ + 1)
                figures[name].append(us)
                print(f"round {round_ + 1} {name:24s} {us:7.1f} us/request {sorted(statuses)}")
        print(f"\n{'case':24s} CPU us per request, each round (median)")
        for name, values in figures.items():
            median = sorted(values)[len(values) // 2]
            print(f"{name:24s} {' '.join(f'{v:6.1f}' for v in values)}   ({median:.1f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--access-log", action="store_true", help="access log and metrics on")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds, args.access_log))
