"""CPU per 64 KiB ranged GET from SeaweedFS: aiobotocore's get_object against plain GETs.

  python benchmarks/s3_request_cost.py [--requests 1000]

Starts SeaweedFS on loopback (benchmarks/seaweed.py), uploads a 256 MiB random object, then
times, in this one process, N ranged GETs each way: aiobotocore's get_object (configured as the
proxy configures it), aiohttp with botocore's own SigV4 signer per request, aiohttp with one
presigned URL (the proxy's presigned GETs until AsyncConnections), that URL over
``AsyncConnections`` (what the proxy's presigned GETs do now, proxy/storage/presigned.py), and
aiohttp unsigned (the bucket is public-read). The difference is what botocore's per-request pipeline
costs on the proxy's hot path. Process CPU time, so a busy machine matters less than for
throughput figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import aiobotocore.session
import aiohttp
import botocore.session
from aiobotocore.config import AioConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from seaweed import S3Site, seaweedfs_bucket

from proxy.config import Settings
from proxy.storage.connections import AsyncConnections
from proxy.storage.presigned import split_url
from proxy.storage.s3 import config_options

SIZE = 256 * 1024 * 1024
SPAN = 64 * 1024
KEY = "cost.bin"
REGION = "us-east-1"


def random_range() -> str:
    first = random.randrange(0, SIZE - SPAN)
    return f"bytes={first}-{first + SPAN - 1}"


async def cpu_per_call(call: Callable[[], Awaitable[None]], requests: int) -> float:
    for _ in range(min(50, requests)):  # connections and caches warm
        await call()
    started = time.process_time()
    for _ in range(requests):
        await call()
    return (time.process_time() - started) / requests


async def measure(site: S3Site, requests: int) -> dict[str, float]:
    results: dict[str, float] = {}
    settings = Settings(backend="s3", s3_bucket=site.bucket, s3_addressing_style="path")
    config = AioConfig(**config_options(settings.s3_options()))
    session = aiobotocore.session.AioSession()
    async with session.create_client(
        "s3", region_name=REGION, endpoint_url=site.endpoint_url, config=config
    ) as client:

        async def botocore_get() -> None:
            response = await client.get_object(Bucket=site.bucket, Key=KEY, Range=random_range())
            async with response["Body"] as body:
                assert len(await body.read()) == SPAN

        results["aiobotocore get_object"] = await cpu_per_call(botocore_get, requests)
        presigned = await client.generate_presigned_url(
            "get_object", Params={"Bucket": site.bucket, "Key": KEY}, ExpiresIn=900
        )

    url = f"{site.endpoint_url}/{site.bucket}/{KEY}"
    credentials = botocore.session.Session().get_credentials().get_frozen_credentials()
    async with aiohttp.ClientSession() as http:

        async def plain_get(target: str, signed: bool) -> None:
            headers = {"Range": random_range()}
            if signed:
                request = AWSRequest("GET", target, headers=headers)
                S3SigV4Auth(credentials, "s3", REGION).add_auth(request)
                headers = dict(request.headers.items())
            async with http.get(target, headers=headers) as response:
                assert response.status == 206, response.status
                assert len(await response.read()) == SPAN

        for label, target, signed in [
            ("aiohttp + botocore SigV4", url, True),
            ("aiohttp, presigned URL", presigned, False),
            ("aiohttp unsigned", url, False),
        ]:
            results[label] = await cpu_per_call(partial(plain_get, target, signed), requests)

    origin, target = split_url(presigned)
    pool = AsyncConnections(origin, keep=4, connect_timeout=5.0, read_timeout=30.0)

    async def own_get() -> None:
        reply = await pool.get(target, {"Range": random_range()})
        try:
            assert reply.status == 206, reply.status
            assert len(await reply.read(SPAN)) == SPAN
        finally:
            reply.close()

    results["AsyncConnections, presigned"] = await cpu_per_call(own_get, requests)
    pool.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3-cost-") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        path = data / KEY
        path.write_bytes(os.urandom(SIZE))
        with seaweedfs_bucket(work, [path]) as site:
            results = asyncio.run(measure(site, args.requests))
    for label, seconds in results.items():
        print(f"{label:28s} {seconds * 1e6:6.0f} us CPU per 64 KiB ranged GET")


if __name__ == "__main__":
    main()
