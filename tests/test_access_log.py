"""The access log's own handler: lines written straight to its stream while nothing configured
on the logger could change them, through the logging module as soon as something could."""

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
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.observability import LineHandler, Observability, access_line, access_logger
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
    await request(Observability(tiny_app, metrics_on=False))
    assert len(no_records) == 1
    assert [json.loads(m)["path"] for m in records.messages] == ["/x"]
    assert [line["path"] for line in lines(stream)] == ["/x"]


@pytest.mark.anyio
async def test_levels_filters_and_formatters_are_honoured(stream: io.StringIO) -> None:
    handler = sole(stream)
    app = Observability(tiny_app, metrics_on=False)
    access_logger.setLevel(logging.WARNING)
    await request(app)
    access_logger.setLevel(logging.INFO)
    access_logger.addFilter(lambda record: False)
    await request(app)
    access_logger.filters = []
    handler.addFilter(lambda record: False)
    await request(app)
    handler.filters = []
    handler.setLevel(logging.ERROR)
    await request(app)
    handler.setLevel(logging.NOTSET)
    logging.disable(logging.INFO)
    try:
        await request(app)
    finally:
        logging.disable(logging.NOTSET)
    assert stream.getvalue() == ""
    handler.setFormatter(logging.Formatter("access %(message)s"))
    await request(app, "/formatted")
    assert stream.getvalue().startswith("access {")
    assert '"path": "/formatted"' in stream.getvalue()


class Flushes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []  # what had been written at each flush

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


@pytest.mark.anyio
async def test_lines_of_one_loop_pass_are_flushed_together_at_its_end(
    stream: io.StringIO,
) -> None:
    out = Flushes()
    access_logger.handlers = [LineHandler(out)]
    app = Observability(tiny_app, metrics_on=False)
    for path in ("/a", "/b", "/c"):
        await request(app, path)  # nothing here suspends: one pass of the loop
    assert out.flushed == []
    await asyncio.sleep(0)  # the loop's next pass
    assert len(out.flushed) == 1
    assert [json.loads(line)["path"] for line in out.flushed[0].splitlines()] == ["/a", "/b", "/c"]
    await request(app, "/d")
    await asyncio.sleep(0)
    assert len(out.flushed) == 2 and out.flushed[1].endswith('"aborted": false}\n')


def test_lines_written_off_any_loop_are_flushed_at_once() -> None:
    out = Flushes()
    LineHandler(out).write_line('{"x": 1}')
    assert out.flushed == ['{"x": 1}\n']


@pytest.mark.anyio
async def test_a_broken_stream_does_not_fail_the_request(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    sole(stream)
    stream.close()  # writes raise ValueError, as to a closed or broken stdout
    await request(Observability(tiny_app, metrics_on=False))  # no exception
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
    method=TEXT,
    path=OPTIONAL_TEXT,
    key=OPTIONAL_TEXT,
    byte_range=OPTIONAL_TEXT,
    status=st.integers(0, 999),
    bytes_sent=st.integers(0, 2**63),
    duration_ms=FLOATS,
    ttfb_ms=st.none() | FLOATS,
    client_aborted=st.booleans(),
    aborted=st.booleans(),
)
def test_a_line_is_what_json_dumps_makes_of_the_fields(**fields: Any) -> None:
    expected = {("range" if name == "byte_range" else name): v for name, v in fields.items()}
    line = access_line(**fields)
    assert line == json.dumps(expected)
    assert json.loads(line) == expected
