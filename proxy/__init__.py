"""Media object storage proxy: streams stored objects over HTTP with Range and conditionals."""

from __future__ import annotations

from proxy.app import create_app
from proxy.config import Settings
from proxy.version import __version__

__all__ = ["Settings", "__version__", "create_app"]
