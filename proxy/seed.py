"""``python -m proxy.seed``: create the S3 bucket if missing and upload the sample media.

The one init step of both local stacks (compose's ``init`` service and ``python -m
proxy.devstack``). Configured like the proxy: ``PROXY_S3_BUCKET``, ``PROXY_S3_PREFIX``,
``PROXY_S3_ENDPOINT_URL``, ``PROXY_S3_REGION``, ``PROXY_S3_ADDRESSING_STYLE``; credentials come
from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, a role).
Idempotent: an object whose MD5 and ``Content-Type`` already match is left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
)

from proxy.config import Settings
from proxy.sample import write_sample
from proxy.settingsdoc import settings_or_exit
from proxy.storage.mediatypes import media_type_for
from proxy.storage.s3 import config_options

# SigV4 needs a region even when the server (SeaweedFS, MinIO) ignores it.
DEFAULT_REGION = "us-east-1"


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client built from the proxy's own ``PROXY_S3_*`` settings."""
    # The proxy's own client options (timeouts, retries, checksums, addressing), a little more
    # patient: the store may have only just started.
    options = config_options(settings.s3_options())
    options["retries"] = {
        "total_max_attempts": max(settings.s3_max_attempts, 5),
        "mode": "standard",
    }
    config = Config(**options)
    session = boto3.Session(profile_name=settings.s3_profile)
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region or session.region_name or DEFAULT_REGION,
        config=config,
    )


def ensure_bucket(client: Any, bucket: str) -> bool:
    """Create ``bucket`` unless it exists; True if it was created."""
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise
    region = client.meta.region_name
    if region == DEFAULT_REGION:  # us-east-1 refuses an explicit LocationConstraint
        client.create_bucket(Bucket=bucket)
    else:
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region}
        )
    return True


def _unchanged(client: Any, bucket: str, key: str, md5: str, media_type: str) -> bool:
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return bool(head.get("ETag") == f'"{md5}"' and head.get("ContentType") == media_type)


def object_key(prefix: str, key: str) -> str:
    """``key`` below ``prefix``, joined like the S3 backend: ``media`` or ``media/`` + ``k``
    give ``media/k``."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def upload_sample(client: Any, bucket: str, prefix: str) -> list[tuple[str, str, bool]]:
    """Write the sample into a temporary directory and upload each file under ``prefix``.

    Returns ``(object key, media type, uploaded)`` per file; ``uploaded`` is False when the
    object was already there with the same bytes and media type.
    """
    results: list[tuple[str, str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="proxy-seed-") as tmp:
        root = Path(tmp)
        for key in write_sample(root):
            data = (root / key).read_bytes()
            name = object_key(prefix, key)
            media_type = media_type_for(key)
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            uploaded = not _unchanged(client, bucket, name, md5, media_type)
            if uploaded:
                client.put_object(Bucket=bucket, Key=name, Body=data, ContentType=media_type)
            results.append((name, media_type, uploaded))
    return results


def seed(settings: Settings) -> list[tuple[str, str, bool]]:
    """Create the bucket if missing and upload the sample; see ``upload_sample``."""
    if not settings.s3_bucket:
        raise ValueError("PROXY_S3_BUCKET is required")
    client = s3_client(settings)
    if ensure_bucket(client, settings.s3_bucket):
        print(f"created bucket {settings.s3_bucket}", flush=True)
    return upload_sample(client, settings.s3_bucket, settings.s3_prefix)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.seed", description=__doc__)
    parser.parse_args(argv)
    try:
        results = seed(settings_or_exit())
    except (ValueError, BotoCoreError, ClientError) as exc:
        sys.exit(f"seed failed: {exc}")
    for key, media_type, uploaded in results:
        print(f"{'uploaded ' if uploaded else 'unchanged'} {key} ({media_type})", flush=True)


if __name__ == "__main__":
    main()
