"""Fixtures for the storage tests: async tests run on asyncio through anyio's pytest plugin;
``storage`` is local storage over the ``root`` each module defines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.storage.local import LocalStorage


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def storage(root: Path) -> Iterator[LocalStorage]:
    """A local storage over the test module's own ``root`` fixture, closed after the test."""
    storage = LocalStorage(root)
    yield storage
    storage.close()
