"""Waiting for an `asyncio.Event` with a time limit, so that a `cancel()` always ends the wait.

Not `asyncio.wait_for(event.wait(), limit)`: on Python 3.11, a cancellation that arrives in the
turn the event is set is swallowed (the inner wait is done, so `wait_for` returns its result
instead of raising; gh-86296, fixed in 3.12). A loop stopped by `task.cancel()` then runs on for
ever, and whatever awaits it after cancelling waits for ever too: the worker's claim loop did,
and the worker's stop hung until CI's test timed out. `asyncio.timeout` has no such race.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, limit: float) -> bool:
    """Wait until `event` is set or `limit` seconds pass; whether it is set."""
    try:
        async with asyncio.timeout(limit):
            await event.wait()
    except TimeoutError:
        return False
    return True
