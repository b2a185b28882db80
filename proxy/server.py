"""How uvicorn serves the app: the options ``python -m proxy`` and the tests' servers share."""

from __future__ import annotations

from typing import Any

from proxy.config import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments for the connection layer (event loop, HTTP
    protocol and its limits), the same for ``python -m proxy`` and the tests' servers."""
    return {
        "loop": settings.loop,
        "http": settings.http,
        "ws": "none",  # no WebSockets here: uvicorn would import a WebSocket library (~1 MB)
        "server_header": False,
    }
