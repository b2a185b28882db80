"""Settings from the environment (prefix ``PROXY_``), built in ``create_app``, never at import."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from proxy.storage.options import (
    DEFAULT_OPEN_FILES,
    CacheOptions,
    LocalOptions,
    S3Options,
    StorageOptions,
)

# Measured with benchmarks/chunk_size.py and benchmarks/run.py: see docs/design.md, "The pacer".
DEFAULT_CHUNK_SIZE = 1024 * 1024  # the largest read, for clients that keep up
DEFAULT_MIN_CHUNK_SIZE = 64 * 1024  # the first read, and slow clients' reads
DEFAULT_LOCAL_ROOT = Path("media")


class ApiKey(BaseModel):
    """A bearer key for internal services, stored as the SHA-256 of the token (hex)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    prefix: str = ""  # the key may only read objects whose key starts with this


class Settings(BaseSettings):
    """Every knob of the proxy; each field is read from ``PROXY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="PROXY_", extra="ignore")

    backend: Literal["local", "s3"] = "local"
    flavor: Literal["sync", "async"] = Field(
        default="async",
        description="local backend: sync = def endpoints (threadpool), async = async def",
    )
    local_root: Path = DEFAULT_LOCAL_ROOT
    # Descriptors of recently served files kept open, checked by a stat on each use (0: none).
    local_open_files: int = Field(default=DEFAULT_OPEN_FILES, ge=0, le=4096)

    # S3: credentials come only from the standard AWS chain (env, profile, container/instance role).
    s3_client: Literal["aiobotocore", "boto3"] = "aiobotocore"
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_profile: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_pool_size: int = Field(default=128, ge=1, le=4096)
    s3_connect_timeout: float = Field(default=5.0, gt=0)
    s3_read_timeout: float = Field(default=30.0, gt=0)
    s3_max_attempts: int = Field(default=3, ge=1, le=20)
    # GetObject as a presigned GET (a fifth of botocore's CPU per call); botocore still answers
    # what that cannot (errors it must retry, expired credentials) and every other call.
    s3_presigned_gets: bool = True
    # The slice cache in front of S3 (off unless a directory is set); sizes accept "10GiB".
    cache_dir: Path | None = None
    cache_max_size: ByteSize = Field(default=ByteSize(10 * 1024**3), ge=16 * 1024 * 1024)
    cache_slice_size: ByteSize = Field(
        default=ByteSize(1024 * 1024), ge=64 * 1024, le=64 * 1024 * 1024
    )
    cache_validity: float = Field(default=60.0, ge=0)

    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024, le=16 * 1024 * 1024)
    min_chunk_size: int = Field(default=DEFAULT_MIN_CHUNK_SIZE, ge=1024, le=16 * 1024 * 1024)
    cache_control: str = "no-cache"
    max_ranges: int = Field(default=16, ge=1, le=1000)
    threadpool_size: int = Field(default=64, ge=1, le=1000)
    readiness_cache_seconds: float = Field(default=5.0, ge=0)
    # Origins whose pages may use the objects (players on other sites): none by default.
    cors_allow_origins: Annotated[list[str], NoDecode] = []
    cors_max_age: int = Field(default=600, ge=0)

    # Access control: on as soon as any API key or signing key is configured.
    api_keys: list[ApiKey] = []
    signing_keys: dict[str, SecretStr] = {}  # key id -> HMAC secret; several for rotation
    signing_key_id: str | None = None  # the id `python -m proxy sign` uses (default: the last)
    max_signed_ttl: int = Field(default=7 * 24 * 3600, ge=1)

    # Operations.
    access_log: bool = True
    metrics: bool = True
    shutdown_timeout: int = Field(default=30, ge=0)  # seconds in-flight streams may finish in
    # Stored HTML, SVG and XML are sent as attachments in a CSP sandbox unless this is true.
    inline_active_content: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"  # auto: uvloop when installed
    http: Literal["auto", "h11", "httptools"] = "auto"  # auto: httptools when installed

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: object) -> object:
        # PROXY_CORS_ALLOW_ORIGINS="https://a.example, https://b.example" or a JSON list.
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("cache_control")
    @classmethod
    def _visible_ascii(cls, value: str) -> str:
        # A header value from the environment must not smuggle CR/LF into responses.
        if not re.fullmatch(r"[\x20-\x7e]*", value):
            raise ValueError("cache_control must be visible ASCII")
        return value.strip()

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.backend == "s3" and not self.s3_bucket:
            raise ValueError("PROXY_S3_BUCKET is required with PROXY_BACKEND=s3")
        if self.cache_dir is not None and self.backend != "s3":
            raise ValueError("PROXY_CACHE_DIR caches S3 objects: it needs PROXY_BACKEND=s3")
        if self.cache_slice_size * 2 > self.cache_max_size:
            raise ValueError("PROXY_CACHE_MAX_SIZE must hold at least two slices")
        return self

    @property
    def auth_enabled(self) -> bool:
        """Whether object requests need a bearer key or a signed URL."""
        return bool(self.api_keys or self.signing_keys)

    @property
    def sync(self) -> bool:
        """Whether the blocking flavour serves requests (``def`` endpoints, threadpool)."""
        return self.storage_options().sync

    def storage_options(self) -> StorageOptions:
        """The backend's own options, taken from these settings (storage never reads them)."""
        if self.backend == "s3":
            return self.s3_options()
        return LocalOptions(self.local_root, self.local_open_files, sync=self.flavor == "sync")

    def s3_options(self) -> S3Options:
        """The ``PROXY_S3_*`` settings as the S3 backend's options."""
        return S3Options(
            bucket=self.s3_bucket,
            prefix=self.s3_prefix,
            client=self.s3_client,
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            profile=self.s3_profile,
            addressing_style=self.s3_addressing_style,
            pool_size=self.s3_pool_size,
            connect_timeout=self.s3_connect_timeout,
            read_timeout=self.s3_read_timeout,
            max_attempts=self.s3_max_attempts,
            presigned_gets=self.s3_presigned_gets,
            cache=self.cache_options(),
        )

    def cache_options(self) -> CacheOptions | None:
        """The ``PROXY_CACHE_*`` settings, or None when the cache is off."""
        if self.cache_dir is None:
            return None
        return CacheOptions(
            directory=self.cache_dir,
            max_size=int(self.cache_max_size),
            slice_size=int(self.cache_slice_size),
            validity=self.cache_validity,
        )
