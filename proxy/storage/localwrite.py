"""Writes to local disk (``proxy.storage.writes``): being built."""

from __future__ import annotations

from proxy.storage.base import AsyncStorage, Storage
from proxy.storage.options import StorageOptions
from proxy.storage.writes import AsyncWriter, Writer


def open_writer(options: StorageOptions, storage: Storage | AsyncStorage) -> Writer | AsyncWriter:
    raise NotImplementedError
