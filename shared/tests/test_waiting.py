"""`shared.waiting.wait_set`: a timed wait on an event that a `cancel()` always ends."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

import pytest
from shared.waiting import wait_set

Wait = Callable[[asyncio.Event, float], Awaitable[object]]


async def _wait_for(event: asyncio.Event, limit: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), limit)


async def _stops_when_cancelled_as_woken(wait: Wait) -> bool:
    """A loop like the worker's claim loop, woken and cancelled in the same turn: whether the
    cancellation ended it."""
    event = asyncio.Event()

    async def loop() -> None:
        while True:
            await wait(event, 5.0)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)  # parked in its wait
    event.set()
    await asyncio.sleep(0)  # the inner wait finishes in this turn
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    if not done:  # the cancellation was swallowed: the loop runs on
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    return bool(done)


async def test_it_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_set(event, 5.0) is True


async def test_a_loop_cancelled_in_the_turn_it_is_woken_stops() -> None:
    assert all([await _stops_when_cancelled_as_woken(wait_set) for _ in range(5)])


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was fixed in Python 3.12")
async def test_the_same_loop_on_wait_for_runs_on() -> None:
    """Why `wait_set` exists: the same harness catches `asyncio.wait_for` swallowing it."""
    assert not await _stops_when_cancelled_as_woken(_wait_for)
