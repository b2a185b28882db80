"""The four cache settings: parsed from the environment, checked, and handed to storage."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.config import Settings
from proxy.storage.options import CacheOptions


def settings(monkeypatch: pytest.MonkeyPatch, **environment: str) -> Settings:
    for name, value in {"PROXY_BACKEND": "s3", "PROXY_S3_BUCKET": "media", **environment}.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_cache_is_off_unless_a_directory_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch).s3_options().cache is None


def test_sizes_take_units_and_the_options_reach_storage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chosen = settings(
        monkeypatch,
        PROXY_CACHE_DIR=str(tmp_path),
        PROXY_CACHE_MAX_SIZE="10GiB",
        PROXY_CACHE_SLICE_SIZE="2MiB",
        PROXY_CACHE_VALIDITY="5",
    )
    assert chosen.s3_options().cache == CacheOptions(tmp_path, 10 * 1024**3, 2 * 1024**2, 5.0)
    for name in ("PROXY_CACHE_MAX_SIZE", "PROXY_CACHE_SLICE_SIZE", "PROXY_CACHE_VALIDITY"):
        monkeypatch.delenv(name)
    defaults = settings(monkeypatch, PROXY_CACHE_DIR=str(tmp_path))
    assert defaults.s3_options().cache == CacheOptions(tmp_path, 10 * 1024**3, 1024**2, 60.0)


@pytest.mark.parametrize(
    "environment",
    [
        {"PROXY_BACKEND": "local"},  # the cache is for S3
        {"PROXY_CACHE_MAX_SIZE": "1MiB"},  # below 16 MiB
        {"PROXY_CACHE_SLICE_SIZE": "1KiB"},  # below 64 KiB
        {"PROXY_CACHE_SLICE_SIZE": "128MiB"},  # above 64 MiB
        {"PROXY_CACHE_MAX_SIZE": "20MiB", "PROXY_CACHE_SLICE_SIZE": "16MiB"},  # < 2 slices
        {"PROXY_CACHE_MAX_SIZE": "lots"},
        {"PROXY_CACHE_VALIDITY": "-1"},
    ],
)
def test_bad_cache_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: dict[str, str]
) -> None:
    with pytest.raises(ValidationError):
        settings(monkeypatch, PROXY_CACHE_DIR=str(tmp_path), **environment)
