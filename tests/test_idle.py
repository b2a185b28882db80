"""TrimWhenIdle: the heap goes back to the kernel once no request has run for a while."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
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


ARENA_PROBE = """
import ctypes, os, sys, threading
from proxy.idle import cap_malloc_arenas
capped = cap_malloc_arenas() if sys.argv[1] == "cap" else False
if sys.argv[1].startswith("app-"):  # the app decides, by its flavour
    from pathlib import Path
    from proxy.app import create_app
    from proxy.config import Settings
    create_app(Settings(local_root=Path(sys.argv[2]), flavor=sys.argv[1][4:]))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
started, go = threading.Barrier(8), threading.Event()
def allocate():
    started.wait()  # all eight at once: each would take an arena of its own
    for _ in range(200):
        block = libc.malloc(100_000)
        ctypes.memset(block, 1, 100_000)
        libc.free(block)
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
# glibc's malloc_info lists each arena as a <heap nr="N">, the main arena included.
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
path = os.path.join(os.environ["PROBE_DIR"], "malloc-info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
heaps = open(path).read().count("<heap nr=") - 1  # the thread arenas
print(capped, heaps)
"""


def probe_arenas(*args: str, **env: str) -> tuple[str, int]:
    """Eight threads allocating at once in a new process (``ARENA_PROBE``): whether it capped
    the arenas itself, and how many thread arenas there are then."""
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    environment["PROBE_DIR"] = tempfile.mkdtemp(prefix="arena-probe-")
    done = subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=environment,
    )
    shutil.rmtree(environment["PROBE_DIR"])
    capped, heaps = done.stdout.split()
    return capped, int(heaps)


@pytest.mark.skipif(malloc_trim() is None, reason="glibc only")
def test_capped_arenas_are_shared_by_threads() -> None:
    assert probe_arenas("cap") == ("True", 1)  # the main arena and one shared by all threads
    capped, heaps = probe_arenas("free")
    assert capped == "False" and heaps > 1  # a thread arena each (up to 8 per core)
    assert probe_arenas("cap", MALLOC_ARENA_MAX="4")[0] == "False"  # the operator's value stands


@pytest.mark.skipif(malloc_trim() is None, reason="glibc only")
def test_a_blocking_flavour_caps_the_arenas(tmp_path: Path) -> None:
    assert probe_arenas("app-sync", str(tmp_path))[1] == 1
    assert probe_arenas("app-async", str(tmp_path))[1] > 1
