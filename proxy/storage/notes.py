"""What a backend did for one response that the response's access-log line reports.

The HTTP layer puts a fresh ``ResponseNotes`` in ``CURRENT`` for each request; storage code
running for that request (on its task, in a task it started, or in a worker thread, which all
copy the context) records into it. Storage never imports the HTTP layer: this is the seam.
"""

from __future__ import annotations

from contextvars import ContextVar


class ResponseNotes:
    """Counts for one response."""

    __slots__ = ("client_gone", "received", "resumes")

    def __init__(self) -> None:
        self.resumes = 0  # times the rest of an S3 body was asked for again after a cut
        self.received: int | None = None  # request body bytes a write received (None: no write)
        self.client_gone = False  # the client left before the request body ended (a write)


CURRENT: ContextVar[ResponseNotes | None] = ContextVar("response_notes", default=None)


def note_resume() -> None:
    """One more re-request of a body's rest, for the current response (if any is recorded)."""
    notes = CURRENT.get()
    if notes is not None:
        notes.resumes += 1
