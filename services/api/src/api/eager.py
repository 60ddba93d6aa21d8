"""Start a coroutine now, in the caller's frame, rather than in a task of its own.

The live feed writes one event to thousands of streams in one pass (`api.live`): each write is
an ASGI `send`, a coroutine that almost never suspends (it hands the bytes to the socket). Run
at once, it costs a function call; run in a task, a task per stream and a turn of the event loop
each. Python 3.12 has eager tasks for this; this is the same idea for 3.11, for one coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any


def start(awaitable: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run `awaitable` (a coroutine) until it finishes or first suspends. None when it finished
    (an exception it raised propagates, as from a call); otherwise a future that runs the rest
    in a task and holds its outcome."""
    coro = awaitable if isinstance(awaitable, Coroutine) else _coroutine(awaitable)
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    _released(waiting)
    rest = asyncio.ensure_future(_rest(coro, waiting))
    # Its cleanup runs even if the rest is cancelled before it starts (a no-op once finished).
    rest.add_done_callback(lambda _: coro.close())
    return rest


async def _coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


async def _rest(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    try:
        while True:
            # The coroutine yielded what it awaits (a future, or None for a bare yield): wait
            # for it without taking its outcome, which the coroutine reads itself when resumed.
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting])
            waiting = _released(coro.send(None))
    except StopIteration:
        return


def _released(waiting: Any) -> Any:
    """Clear the mark a future's `__await__` sets on it, as a task does at once with what it
    awaits: the C future refuses any other awaiter of a pending future still marked ("await
    wasn't used with future"), so it is cleared here, not only when `_rest` first runs."""
    if waiting is not None:
        waiting._asyncio_future_blocking = False
    return waiting
