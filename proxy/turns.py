"""Turns: streams share the event loop's passes, a few chunk steps per pass, in arrival order.

Every stream yields once per chunk. When many have chunks ready at once (64 new readers whose
socket buffers each take ~10 MB at full speed), every one of them took a step in each pass of
the event loop, and a pass grew to 20-30 ms of work; a new request needs about three passes
(accept, read, respond), so ``/healthz`` waited up to 30 ms behind them. With turns, about
``STEPS_PER_PASS`` steps start per pass (never more than twice that: a pass may see a refill
and a new budget); the other streams wait in order, so passes stay short and newcomers get
in. The total work and each stream's share stay the same; a stream alone yields as before.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque

import anyio.lowlevel

# Measured with 64 slow readers on the aiobotocore flavour (/healthz p99, medians of 4-8
# alternated runs): every stream each pass 14.6 ms, 16 per pass ~11, 8 per pass ~8, 4 per pass
# 6.7. Eight parallel 1 GiB downloads (local backend) ran at the same rate and CPU with 4.
STEPS_PER_PASS = 4


class Turns:
    """The turns of one event loop: ``await turns.take()`` wherever a stream would yield."""

    __slots__ = ("_left", "_loop", "_refill_due", "_waiting", "steps_per_pass")

    def __init__(self, loop: asyncio.AbstractEventLoop, steps_per_pass: int = STEPS_PER_PASS):
        self._loop = loop
        self.steps_per_pass = max(1, steps_per_pass)
        self._left = self.steps_per_pass
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._refill_due = False  # a refill is scheduled for the next pass

    async def take(self) -> None:
        """Yield to the loop, then go on in this stream's turn."""
        if not self._refill_due:  # the first step since the last refill: a new budget
            self._left = self.steps_per_pass
            self._schedule_refill()
        if self._left > 0 and not self._waiting:
            self._left -= 1
            await asyncio.sleep(0)  # exactly what a plain checkpoint does
            return
        turn = self._loop.create_future()
        self._waiting.append(turn)
        self._schedule_refill()
        await turn  # a cancelled waiter is skipped by the refill

    def _schedule_refill(self) -> None:
        if not self._refill_due:
            self._refill_due = True
            self._loop.call_soon(self._refill)

    def _refill(self) -> None:
        """Runs once per pass while streams are stepping: wakes the next waiters in order."""
        self._refill_due = False
        self._left = self.steps_per_pass
        while self._waiting and self._left > 0:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                self._left -= 1
        if self._waiting:
            self._schedule_refill()


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Turns] = weakref.WeakKeyDictionary()


async def take_turn() -> None:
    """The running loop's turn for one stream step (a plain checkpoint off asyncio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another async library: no shared passes to guard
        await anyio.lowlevel.checkpoint()
        return
    turns = _BY_LOOP.get(loop)
    if turns is None:
        turns = _BY_LOOP[loop] = Turns(loop)
    await turns.take()
