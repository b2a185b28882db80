"""TrimWhenIdle: the heap goes back to the kernel once no request has run for a while."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.types import Message, Receive, Scope, Send

from proxy.app import create_app
from proxy.config import Settings
from proxy.idle import TrimWhenIdle, malloc_trim

pytestmark = pytest.mark.anyio

IDLE = 0.05


class Inner:
    """An ASGI app whose requests end when told to (all at once by default)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.release.wait()


def middleware() -> tuple[TrimWhenIdle, Inner, list[int]]:
    calls: list[int] = []
    inner = Inner()
    return TrimWhenIdle(inner, trim=calls.append, idle_seconds=IDLE), inner, calls


async def request(app: TrimWhenIdle, kind: str = "http") -> None:
    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    await app({"type": kind}, receive, send)


async def test_one_trim_after_a_busy_spell_and_none_while_idle() -> None:
    app, _, calls = middleware()
    for _ in range(3):
        await request(app)
    assert calls == []
    await asyncio.sleep(IDLE * 4)
    assert calls == [0]
    await asyncio.sleep(IDLE * 4)
    assert calls == [0]  # idle: no second trim
    await request(app)  # a new spell, a new trim
    await asyncio.sleep(IDLE * 4)
    assert calls == [0, 0]


async def test_no_trim_while_a_request_is_in_progress() -> None:
    app, inner, calls = middleware()
    await request(app)
    inner.release.clear()
    slow = asyncio.create_task(request(app))
    await asyncio.sleep(IDLE * 5)
    assert calls == []
    inner.release.set()
    await slow
    await asyncio.sleep(IDLE / 2)
    assert calls == []  # idle for less than IDLE so far
    await asyncio.sleep(IDLE * 3)
    assert calls == [0]


async def test_requests_within_the_idle_time_postpone_the_trim() -> None:
    app, _, calls = middleware()
    for _ in range(8):
        await request(app)
        await asyncio.sleep(IDLE / 3)
    assert calls == []
    await asyncio.sleep(IDLE * 3)
    assert calls == [0]


async def test_other_scopes_are_not_requests() -> None:
    app, _, calls = middleware()
    await request(app, "lifespan")
    await asyncio.sleep(IDLE * 3)
    assert calls == []


@pytest.mark.skipif(malloc_trim() is None, reason="glibc only")
def test_the_app_trims_when_idle(tmp_path: Path) -> None:
    app = create_app(Settings(local_root=tmp_path))
    classes: list[object] = [m.cls for m in app.user_middleware]
    assert classes.count(TrimWhenIdle) == 1


RSS_PROBE = """
import ctypes
from proxy.idle import malloc_trim
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
SIZE = 100_000  # under glibc's mmap threshold: from the heap
freed, kept = [], []
for _ in range(600):  # freed and kept blocks in turn: the heap cannot shrink at its top
    for blocks in (freed, kept):
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        blocks.append(block)
for block in freed:
    libc.free(block)
before = rss()
malloc_trim()(0)
print(before, rss())
"""


@pytest.mark.skipif(malloc_trim() is None, reason="glibc only")
def test_malloc_trim_gives_freed_heap_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    before, after = map(int, done.stdout.split())
    assert before - after > 40  # of the 60 MB freed
