"""Each backend's options: a small frozen dataclass, filled from the application's settings at
the edge (``Settings.storage_options``), so that storage never reads those settings itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_OPEN_FILES = 64  # PROXY_LOCAL_OPEN_FILES


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """Files under ``root``; ``sync``: the blocking flavour (``def`` endpoints)."""

    root: Path
    open_files: int = DEFAULT_OPEN_FILES  # descriptors of recently served files kept (0: none)
    sync: bool = False


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """A read-through cache of object slices on local disk (``proxy.storage.cache``)."""

    directory: Path
    max_size: int = 10 * 1024**3  # bytes on disk; least recently used slices go first
    slice_size: int = 1024 * 1024  # slices are aligned on multiples of it
    validity: float = 60.0  # seconds cached metadata is trusted before it is revalidated


@dataclass(frozen=True, slots=True)
class S3Options:
    """A bucket (and key prefix) read with boto3 (``client="boto3"``, the blocking flavour) or
    aiobotocore. Credentials come only from the standard AWS chain (``profile`` picks one)."""

    bucket: str
    prefix: str = ""
    client: Literal["aiobotocore", "boto3"] = "aiobotocore"
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    pool_size: int = 128
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 3
    deadline: float = 60.0  # seconds for one exchange before its response starts, retries included
    resume_attempts: int = 2  # re-requests of a body's rest after S3 ended it early
    presigned_gets: bool = True  # GetObject as a presigned GET over the proxy's connections
    cache: CacheOptions | None = None  # a slice cache in front of the bucket
    # Writes (``proxy.storage.writes``): a body up to the threshold is one PutObject, a longer
    # one a multipart upload of parts this size.
    multipart_threshold: int = 16 * 1024 * 1024
    multipart_part_size: int = 16 * 1024 * 1024
    spool_dir: Path | None = None  # where parts are spooled; None: the system's temporary directory

    @property
    def sync(self) -> bool:
        return self.client == "boto3"


StorageOptions = LocalOptions | S3Options
