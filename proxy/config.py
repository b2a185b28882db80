"""Settings from the environment (prefix ``PROXY_``), built in ``create_app``, never at import."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Measured with benchmarks/chunk_size.py: see the README's "Chunk size" section.
DEFAULT_CHUNK_SIZE = 256 * 1024
DEFAULT_LOCAL_ROOT = Path("media")


class Settings(BaseSettings):
    """Every knob of the proxy; each field is read from ``PROXY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="PROXY_", extra="ignore")

    backend: Literal["local"] = "local"
    flavor: Literal["sync", "async"] = Field(
        default="async",
        description="sync: def endpoints in FastAPI's threadpool; async: async def endpoints",
    )
    local_root: Path = DEFAULT_LOCAL_ROOT
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=1024, le=16 * 1024 * 1024)
    cache_control: str = "no-cache"
    max_ranges: int = Field(default=16, ge=1, le=1000)
    threadpool_size: int = Field(default=40, ge=1, le=1000)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @field_validator("cache_control")
    @classmethod
    def _visible_ascii(cls, value: str) -> str:
        # A header value from the environment must not smuggle CR/LF into responses.
        if not re.fullmatch(r"[\x20-\x7e]*", value):
            raise ValueError("cache_control must be visible ASCII")
        return value.strip()
