"""How uvicorn serves the app: the options ``python -m proxy`` and the tests' servers share."""

from __future__ import annotations

from functools import partial
from typing import Any

from proxy.config import Settings
from proxy.connection import Limits, protocol_factory
from proxy.observability import report_refusal


def limits(settings: Settings) -> Limits:
    """The connection layer's limits (``proxy.connection``) from the settings, and its refusals
    reported to the access log and metrics as the app's requests are."""
    return Limits(
        max_head=int(settings.max_request_head),
        header_timeout=settings.header_timeout,
        max_connections=settings.max_connections,
        refused=partial(
            report_refusal, access_log=settings.access_log, metrics_on=settings.metrics
        ),
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments for the connection layer (event loop, HTTP
    protocol and its limits), the same for ``python -m proxy`` and the tests' servers.

    The protocol is uvicorn's own, for the parser ``settings.http`` names, subclassed in
    ``proxy.connection`` for the request-head limits, the connection cap, strict parsing and
    half-closed clients, and (``settings.zero_copy``) the ASGI zero-copy send. What uvicorn
    offers does not do these jobs: ``limit_concurrency`` answers 503 per request on a
    connection it accepted and keeps open, counts running tasks with the connections, and
    answers in plain text; ``timeout_keep_alive`` (kept at its 5 s)
    closes a kept connection idle after a response, but the first byte of a new head cancels
    it, and nothing bounds a new connection's first head; ``h11_max_incomplete_event_size``
    (below) bounds only a head h11 holds incomplete, and httptools has no bound at all.
    """
    return {
        "loop": settings.loop,
        "http": protocol_factory(settings.http, limits(settings), settings.zero_copy),
        "ws": "none",  # no WebSockets here: uvicorn would import a WebSocket library (~1 MB)
        "server_header": False,
        # h11's own bound on a head it buffers (one that came in a read after a pipelined
        # request, which proxy.connection leaves to the parser); raw UTF-8 bytes of a request
        # line take three once percent-encoded.
        "h11_max_incomplete_event_size": 3 * int(settings.max_request_head),
    }
