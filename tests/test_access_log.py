"""The access log's own handler: lines written straight to its stream while nothing configured
on the logger could change them, through the logging module as soon as something could; lines
and metrics recorded in batches."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from proxy import observability
from proxy.app import create_app
from proxy.config import Settings
from proxy.observability import (
    BATCH_SECONDS,
    BATCH_SIZE,
    OUTCOMES,
    DropReported,
    LineHandler,
    Observability,
    access_line,
    access_logger,
    record_waiting,
)
from proxy.storage.errors import BodyTruncated
from proxy.storage.notes import note_resume
from tests.conftest import MediaTree, free_port, wait_healthy


async def tiny_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def request(app: Observability, path: str = "/x") -> None:
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        pass

    await app(scope, receive, send)


async def recorded(app: Observability) -> None:
    """Record the requests that wait for their batch, and let the handler write their lines
    (at the end of the loop's pass)."""
    app.record_finished()
    await asyncio.sleep(0)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """proxy.access as the app sets it up by default, writing to a string, restored after.
    Its handler is installed by ``sole`` in the test itself: pytest attaches its capturing
    handlers to non-propagating loggers between a fixture's setup and the test."""
    saved = (access_logger.handlers[:], access_logger.filters[:], access_logger.level)
    saved_propagate = access_logger.propagate
    out = io.StringIO()
    access_logger.filters = []
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    yield out
    access_logger.handlers, access_logger.filters, level = saved
    access_logger.setLevel(level)
    access_logger.propagate = saved_propagate


@pytest.fixture
def no_records(monkeypatch: pytest.MonkeyPatch) -> list[logging.LogRecord]:
    """Records the logging module made for proxy.access (none on the direct path)."""
    made: list[logging.LogRecord] = []
    original = access_logger.makeRecord

    def spy(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        made.append(record)
        return record

    monkeypatch.setattr(access_logger, "makeRecord", spy)
    return made


def sole(out: io.StringIO) -> LineHandler:
    """The access log's own handler on ``out``, as the only one (as ``create_app`` leaves it)."""
    handler = LineHandler(out)
    access_logger.handlers = [handler]
    return handler


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.anyio
async def test_lines_go_straight_to_the_stream(
    stream: io.StringIO, no_records: list[logging.LogRecord]
) -> None:
    sole(stream)
    app = Observability(tiny_app, metrics_on=False)
    await request(app, "/a")
    await request(app, "/b")
    await recorded(app)
    assert [(line["path"], line["status"], line["bytes_sent"]) for line in lines(stream)] == [
        ("/a", 200, 5),
        ("/b", 200, 5),
    ]
    assert stream.getvalue().endswith("}\n")
    assert no_records == []  # no LogRecord, filter or formatter on the way


@pytest.mark.anyio
async def test_another_handler_gets_every_line_too(
    stream: io.StringIO, no_records: list[logging.LogRecord]
) -> None:
    sole(stream)
    records = Records()
    access_logger.addHandler(records)
    app = Observability(tiny_app, metrics_on=False)
    await request(app)
    await recorded(app)
    assert len(no_records) == 1
    assert [json.loads(m)["path"] for m in records.messages] == ["/x"]
    assert [line["path"] for line in lines(stream)] == ["/x"]


@pytest.mark.anyio
async def test_levels_filters_and_formatters_are_honoured(stream: io.StringIO) -> None:
    handler = sole(stream)
    app = Observability(tiny_app, metrics_on=False)

    async def one(path: str = "/x") -> None:
        await request(app, path)
        await recorded(app)

    access_logger.setLevel(logging.WARNING)
    await one()
    access_logger.setLevel(logging.INFO)
    access_logger.addFilter(lambda record: False)
    await one()
    access_logger.filters = []
    handler.addFilter(lambda record: False)
    await one()
    handler.filters = []
    handler.setLevel(logging.ERROR)
    await one()
    handler.setLevel(logging.NOTSET)
    logging.disable(logging.INFO)
    try:
        await one()
    finally:
        logging.disable(logging.NOTSET)
    assert stream.getvalue() == ""
    handler.setFormatter(logging.Formatter("access %(message)s"))
    await one("/formatted")
    assert stream.getvalue().startswith("access {")
    assert '"path": "/formatted"' in stream.getvalue()


class Flushes(io.StringIO):
    """A stream that notes each write and what had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushed: list[str] = []

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


async def flushed(out: Flushes, count: int) -> None:
    """Wait until ``out`` was flushed ``count`` times (the batch's timer, BATCH_SECONDS, may run
    late on a loaded machine), for at most 2 s, then a little longer for any extra flush."""
    for _ in range(400):
        if len(out.flushed) >= count:
            break
        await asyncio.sleep(BATCH_SECONDS)
    await asyncio.sleep(BATCH_SECONDS * 2)


def paths(text: str) -> list[str]:
    return [json.loads(line)["path"] for line in text.splitlines()]


@pytest.mark.anyio
async def test_lines_wait_for_their_batch_and_are_written_together(stream: io.StringIO) -> None:
    out = Flushes()
    access_logger.handlers = [LineHandler(out)]
    app = Observability(tiny_app, metrics_on=False)
    for path in ("/a", "/b", "/c"):
        await request(app, path)
    await asyncio.sleep(0)
    assert out.flushed == []  # the batch waits
    await flushed(out, 1)
    assert (out.writes, len(out.flushed)) == (1, 1)  # one write, one flush for the batch
    assert paths(out.flushed[0]) == ["/a", "/b", "/c"]
    await request(app, "/d")
    await flushed(out, 2)
    assert (out.writes, len(out.flushed)) == (2, 2)
    assert out.flushed[1].endswith('"aborted": false, "outcome": "complete", "s3_resumes": 0}\n')
    assert paths(out.flushed[1]) == ["/a", "/b", "/c", "/d"]


@pytest.mark.anyio
async def test_a_full_batch_is_recorded_at_once(stream: io.StringIO) -> None:
    out = Flushes()
    access_logger.handlers = [LineHandler(out)]
    app = Observability(tiny_app, metrics_on=False)
    for number in range(BATCH_SIZE + 1):
        await request(app, f"/{number}")
    await asyncio.sleep(0)  # one pass: no time for the batch's timer
    assert len(out.flushed) == 1
    assert paths(out.flushed[0]) == [f"/{number}" for number in range(BATCH_SIZE)]
    await asyncio.sleep(BATCH_SECONDS * 4)
    assert paths(out.getvalue())[-1] == f"/{BATCH_SIZE}"


@pytest.mark.anyio
async def test_metrics_are_counted_with_the_batch() -> None:
    app = Observability(tiny_app, access_log=False)
    route = {"route": "unmatched", "method": "GET", "status": "299"}

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    app.app = answer

    def count() -> float:
        return REGISTRY.get_sample_value("proxy_requests_total", route) or 0.0

    before = count()
    await request(app)
    await request(app)
    assert count() == before
    await asyncio.sleep(BATCH_SECONDS * 4)
    assert count() == before + 2


@pytest.mark.anyio
async def test_record_waiting_records_what_every_app_keeps(stream: io.StringIO) -> None:
    sole(stream)
    first, second = (Observability(tiny_app, metrics_on=False) for _ in range(2))
    await request(first, "/first")
    await request(second, "/second")
    record_waiting()  # as the app's shutdown does, before the loop ends
    await asyncio.sleep(0)
    assert sorted(paths(stream.getvalue())) == ["/first", "/second"]  # apps in any order


@pytest.mark.anyio
async def test_the_app_records_what_waits_when_it_shuts_down(
    tmp_path: Path, stream: io.StringIO
) -> None:
    sole(stream)
    app = create_app(Settings(local_root=tmp_path, metrics=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            assert (await client.get("/healthz")).status_code == 200
        assert stream.getvalue() == ""  # waiting for its batch
    await asyncio.sleep(0)  # the handler writes at the end of the loop's pass
    assert paths(stream.getvalue()) == ["/healthz"]  # recorded at shutdown


def test_a_batch_left_by_an_ended_loop_is_recorded_by_the_next_request(
    stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    sole(stream)
    # A timer that cannot fire before the loop ends: with 5 ms, a loaded machine (the suite's
    # other workers) sometimes ran it during asyncio.run's own shutdown steps.
    monkeypatch.setattr(observability, "BATCH_SECONDS", 60.0)
    app = Observability(tiny_app, metrics_on=False)
    asyncio.run(request(app, "/first"))  # its loop ends before the batch's timer
    assert stream.getvalue() == ""
    asyncio.run(request(app, "/second"))  # another loop: what waits is recorded at once
    assert paths(stream.getvalue()) == ["/first", "/second"]


EXIT_PROBE = """
import asyncio, sys
from proxy.observability import LineHandler, Observability, access_logger
access_logger.addHandler(LineHandler(sys.stdout))
access_logger.setLevel("INFO")
access_logger.propagate = False
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})
async def ignore(message):
    pass
async def main():
    scope = {"type": "http", "method": "GET", "path": "/exit", "headers": [], "query_string": b""}
    await Observability(app, metrics_on=False)(scope, None, ignore)
asyncio.run(main())
"""


def test_what_waits_is_recorded_at_exit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXIT_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert paths(done.stdout) == ["/exit"]


def test_lines_written_off_any_loop_are_flushed_at_once() -> None:
    out = Flushes()
    LineHandler(out).write_line('{"x": 1}')
    assert out.flushed == ['{"x": 1}\n']


@pytest.mark.anyio
async def test_flush_writes_the_lines_kept(stream: io.StringIO) -> None:
    out = Flushes()
    handler = LineHandler(out)
    handler.write_line('{"x": 1}')
    assert out.flushed == []
    handler.flush()  # what logging.shutdown calls at exit
    assert out.flushed == ['{"x": 1}\n']


@pytest.mark.anyio
async def test_a_broken_stream_does_not_fail_the_request(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    sole(stream)
    stream.close()  # writes raise ValueError, as to a closed or broken stdout
    app = Observability(tiny_app, metrics_on=False)
    await request(app)  # no exception
    await recorded(app)
    assert "Logging error" in capsys.readouterr().err  # reported like logging reports it


def test_the_default_process_writes_one_json_line_per_request(media: MediaTree) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env.update(PROXY_LOCAL_ROOT=str(media.root), PROXY_PORT=str(port), PROXY_LOG_LEVEL="warning")
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy"], env=env, cwd=media.root, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        wait_healthy(f"http://127.0.0.1:{port}", process)
        ids = [
            httpx.get(
                f"http://127.0.0.1:{port}/objects/hello.txt", headers={"Range": "bytes=0-1"}
            ).headers["x-request-id"]
            for _ in range(3)
        ]
        found: list[dict[str, Any]] = []
        received = b""
        fd = process.stdout.fileno()  # unbuffered: select sees all that is not read yet
        while len(found) < 3 and select.select([fd], [], [], 10)[0]:
            received += os.read(fd, 65536)
            *complete, received = received.split(b"\n")
            parsed = (json.loads(line) for line in complete)
            found += [line for line in parsed if line["key"] == "hello.txt"]
        assert [line["request_id"] for line in found] == ids
        assert {(line["status"], line["bytes_sent"], line["range"]) for line in found} == {
            (206, 2, "bytes=0-1")
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


TEXT = st.text()
OPTIONAL_TEXT = st.none() | st.text()
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=500, deadline=None)
@given(
    request_id=TEXT,
    method=OPTIONAL_TEXT,
    path=OPTIONAL_TEXT,
    key=OPTIONAL_TEXT,
    byte_range=OPTIONAL_TEXT,
    status=st.integers(0, 999),
    bytes_sent=st.integers(0, 2**63),
    duration_ms=FLOATS,
    ttfb_ms=st.none() | FLOATS,
    client_aborted=st.booleans(),
    aborted=st.booleans(),
    outcome=st.sampled_from(OUTCOMES) | TEXT,
    s3_resumes=st.integers(0, 2**31),
)
def test_a_line_is_what_json_dumps_makes_of_the_fields(**fields: Any) -> None:
    expected = {("range" if name == "byte_range" else name): v for name, v in fields.items()}
    line = access_line(**fields)
    assert line == json.dumps(expected)
    assert json.loads(line) == expected


# -- how a transfer ended, what storage noted ---------------------------------------------------


def started_then(action: Any) -> Any:
    """An app that starts a response, sends a first chunk, then does ``action``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await action()

    return app


async def nothing() -> None:
    return None


async def cut_by_storage() -> None:
    """What reaches the middleware when a body fails mid-stream: Starlette wraps the storage
    error (which has a handler, but the response started) in a RuntimeError."""
    try:
        raise BodyTruncated("the S3 body was cut: connection reset")
    except BodyTruncated as exc:
        raise RuntimeError("Caught handled exception, but response already started.") from exc


async def bug() -> None:
    raise ValueError("a bug")


async def cancelled() -> None:
    raise asyncio.CancelledError


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("action", "expected", "raises"),
    [
        (nothing, "client_closed", None),
        (cut_by_storage, "backend_error", RuntimeError),
        (bug, "error", ValueError),
        (cancelled, "cancelled", asyncio.CancelledError),
    ],
)
async def test_the_line_says_how_the_transfer_ended(
    stream: io.StringIO,
    caplog: pytest.LogCaptureFixture,
    action: Any,
    expected: str,
    raises: type[BaseException] | None,
) -> None:
    sole(stream)
    app = Observability(started_then(action), metrics_on=False)
    caught: BaseException | None = None
    with caplog.at_level(logging.WARNING, logger="proxy"):
        try:
            await request(app, "/objects/cut.bin")
        except BaseException as exc:  # noqa: BLE001  # the server's part: it sees the error
            caught = exc
    await recorded(app)
    (line,) = lines(stream)
    assert (line["outcome"], line["bytes_sent"], line["aborted"]) == (expected, 3, True)
    assert line["client_aborted"] is (expected == "client_closed")
    assert type(caught) is raises if raises else caught is None
    # The server's record of the error: dropped for a cut already reported, kept for the rest.
    record = logging.makeLogRecord({"msg": "Exception in ASGI application", "levelno": 40})
    if caught is not None:
        record.exc_info = (type(caught), caught, caught.__traceback__)
    assert DropReported().filter(record) is (expected != "backend_error")
    warnings = [r.getMessage() for r in caplog.records if r.name == "proxy"]
    if expected == "backend_error":
        (warning,) = warnings
        assert line["request_id"] in warning
        assert "after 3 bytes" in warning
        assert "BodyTruncated: the S3 body was cut: connection reset" in warning
    else:
        assert warnings == []


def test_the_servers_error_log_drops_what_the_proxy_reported() -> None:
    """The filter sits on uvicorn's error logger, and uvicorn's own logging setup keeps it."""
    import uvicorn.config

    uvicorn.config.Config(tiny_app, log_level="info")  # configures logging, as uvicorn.run
    assert any(isinstance(f, DropReported) for f in logging.getLogger("uvicorn.error").filters)


@pytest.mark.anyio
async def test_a_line_counts_the_resumes_storage_noted(stream: io.StringIO) -> None:
    """Storage calls ``note_resume`` on the request's task or in a worker thread (the boto3
    flavour's reads): both count, for that response only."""

    async def resuming(scope: Any, receive: Any, send: Any) -> None:
        note_resume()
        await anyio.to_thread.run_sync(note_resume)
        await tiny_app(scope, receive, send)

    sole(stream)
    app = Observability(resuming, metrics_on=False)
    await request(app, "/resumed")
    note_resume()  # outside any request: noted nowhere
    app.app = tiny_app
    await request(app, "/plain")
    await recorded(app)
    assert [(line["path"], line["s3_resumes"]) for line in lines(stream)] == [
        ("/resumed", 2),
        ("/plain", 0),
    ]
    assert [line["outcome"] for line in lines(stream)] == ["complete", "complete"]
