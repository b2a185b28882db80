"""Turns: at most a few stream steps start per event-loop pass, in order, none starved."""

from __future__ import annotations

import asyncio

import pytest

from proxy.turns import Turns, take_turn

pytestmark = pytest.mark.anyio


async def _count_passes(done: asyncio.Event, passes: list[int]) -> None:
    """Counts the loop's passes until done (one call_soon chain link per pass)."""
    while not done.is_set():
        passes[0] += 1
        await asyncio.sleep(0)


async def _run_streams(turns: Turns, streams: int, steps: int) -> tuple[list[list[int]], int]:
    passes = [0]
    done = asyncio.Event()
    seen: list[list[int]] = [[] for _ in range(streams)]

    async def stream(index: int) -> None:
        for _ in range(steps):
            await turns.take()
            seen[index].append(passes[0])

    counter = asyncio.create_task(_count_passes(done, passes))
    await asyncio.gather(*(stream(i) for i in range(streams)))
    done.set()
    await counter
    return seen, passes[0]


async def test_many_streams_take_a_few_steps_per_pass_and_all_finish() -> None:
    turns = Turns(asyncio.get_running_loop(), steps_per_pass=4)
    seen, passes = await _run_streams(turns, streams=32, steps=10)
    assert all(len(s) == 10 for s in seen)
    per_pass: dict[int, int] = {}
    for steps in seen:
        for at in steps:
            per_pass[at] = per_pass.get(at, 0) + 1
    # Without turns all 32 step in every pass (~10 passes); here the 320 steps spread out.
    assert max(per_pass.values()) <= 2 * 4
    assert passes >= 320 // 8


async def test_without_a_limit_every_stream_steps_each_pass() -> None:
    turns = Turns(asyncio.get_running_loop(), steps_per_pass=1000)
    seen, passes = await _run_streams(turns, streams=32, steps=10)
    assert all(len(s) == 10 for s in seen)
    assert passes <= 15


async def test_a_stream_alone_yields_once_per_step() -> None:
    turns = Turns(asyncio.get_running_loop(), steps_per_pass=4)
    seen, _ = await _run_streams(turns, streams=1, steps=50)
    assert seen[0] == sorted(set(seen[0]))  # one step per pass, never parked for longer
    assert seen[0][-1] - seen[0][0] <= 50


async def test_turns_are_taken_in_arrival_order() -> None:
    turns = Turns(asyncio.get_running_loop(), steps_per_pass=1)
    order: list[int] = []

    async def stream(index: int) -> None:
        await turns.take()
        order.append(index)

    await asyncio.gather(*(stream(i) for i in range(8)))
    assert order == list(range(8))


async def test_a_cancelled_waiter_does_not_hold_up_the_others() -> None:
    turns = Turns(asyncio.get_running_loop(), steps_per_pass=1)
    finished: list[int] = []

    async def stream(index: int) -> None:
        for _ in range(3):
            await turns.take()
        finished.append(index)

    tasks = [asyncio.create_task(stream(i)) for i in range(6)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    tasks[2].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert isinstance(results[2], asyncio.CancelledError)
    assert sorted(finished) == [0, 1, 3, 4, 5]


async def test_take_turn_keeps_one_turns_per_loop() -> None:
    await take_turn()
    from proxy import turns as module

    first = module._BY_LOOP[asyncio.get_running_loop()]
    await take_turn()
    assert module._BY_LOOP[asyncio.get_running_loop()] is first


@pytest.mark.parametrize("steps_per_pass", [0, -3])
async def test_at_least_one_step_per_pass(steps_per_pass: int) -> None:
    turns = Turns(asyncio.get_running_loop(), steps_per_pass=steps_per_pass)
    assert turns.steps_per_pass == 1
    seen, _ = await _run_streams(turns, streams=3, steps=2)
    assert all(len(s) == 2 for s in seen)
