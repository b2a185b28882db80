"""SeaweedFS for the benchmark: the native `weed server`, a public-read bucket, the data.

Reuses proxy.testing.s3servers, as the tests do (free ports, static identities, stop by PID).
The bucket is made public-read so that wrk and curl can GET objects directly without signing.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from boto3.s3.transfer import TransferConfig

from proxy.testing.s3servers import aws_environment, ensure_bucket, s3_client, start_seaweedfs

BUCKET = "bench"
PART_SIZE = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class S3Site:
    endpoint_url: str
    port: int
    bucket: str


def _upload(site: S3Site, client: Any, files: Sequence[Path]) -> None:
    transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)
    for path in files:
        client.upload_file(str(path), site.bucket, path.name, Config=transfer)


def _check_anonymous_read(site: S3Site, key: str) -> None:
    url = f"{site.endpoint_url}/{site.bucket}/{key}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
    except OSError as error:
        raise RuntimeError(f"the bucket is not public-read ({url}: {error})") from error


@contextlib.contextmanager
def seaweedfs_bucket(work_dir: Path, files: Sequence[Path]) -> Iterator[S3Site]:
    """SeaweedFS on loopback with files uploaded (key = file name) into a public-read bucket.

    AWS_* credentials for the bucket are in os.environ while the context is open, so proxies
    started inside it inherit them.
    """
    with aws_environment(work_dir / "aws"), start_seaweedfs(work_dir / "weed") as server:
        port = urlsplit(server.endpoint_url).port
        assert port is not None
        site = S3Site(endpoint_url=server.endpoint_url, port=port, bucket=BUCKET)
        with contextlib.closing(s3_client(server)) as client:
            ensure_bucket(client, BUCKET)
            client.put_bucket_acl(Bucket=BUCKET, ACL="public-read")
            _upload(site, client, files)
        _check_anonymous_read(site, files[-1].name)
        yield site
