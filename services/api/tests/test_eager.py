"""`api.eager.start`: a coroutine run at once in the caller's frame, the rest (if it waits) in a
task, with its outcome kept as a task would keep it."""

from __future__ import annotations

import asyncio

import pytest
from api import eager


async def test_a_coroutine_that_never_waits_runs_to_its_end_at_once() -> None:
    ran: list[str] = []

    async def write() -> None:
        ran.append("written")

    assert eager.start(write()) is None
    assert ran == ["written"]


async def test_one_that_raises_at_once_raises_in_the_caller() -> None:
    async def refuse() -> None:
        raise RuntimeError("gone")

    with pytest.raises(RuntimeError, match="gone"):
        eager.start(refuse())


async def test_one_that_waits_finishes_in_a_task_with_its_outcome() -> None:
    ran: list[str] = []
    go = asyncio.get_running_loop().create_future()

    async def write() -> None:
        ran.append("started")
        ran.append(await go)
        await asyncio.sleep(0)
        raise ValueError("late")

    rest = eager.start(write())
    assert ran == ["started"] and rest is not None and not rest.done()
    go.set_result("resumed")
    with pytest.raises(ValueError, match="late"):
        await rest
    assert ran == ["started", "resumed"]


async def test_cancelling_the_rest_runs_the_coroutines_cleanup() -> None:
    cleaned = asyncio.Event()

    async def write() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    rest = eager.start(write())
    assert rest is not None
    rest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rest
    assert cleaned.is_set()


async def test_two_started_on_one_pending_future_both_wait_for_it() -> None:
    """The second `start` awaits the future the first left waiting, before the first's task
    ran: asyncio's C future refuses a second awaiter while the first's await still marks it."""
    drain = asyncio.get_running_loop().create_future()
    order: list[int] = []

    async def write(n: int) -> None:
        await drain
        order.append(n)

    first, second = eager.start(write(1)), eager.start(write(2))
    assert first is not None and second is not None
    drain.set_result(None)
    await asyncio.gather(first, second)
    assert sorted(order) == [1, 2]
