"""Per-endpoint isolation inside one notifier process.

Every delivery command holds one of the consumer's prefetch slots while it is handled. Without a
limit, a slow endpoint with many deliveries would take all of them (each for up to the
per-attempt timeout) and everyone else's webhooks would wait behind it. So each endpoint gets a
lane: at most `limit` attempts in flight, at most `queue` more waiting (each for at most
`max_wait` seconds); a command that finds the lane full, or waits too long, is parked for a
second on the delay ladder and its prefetch slot goes to someone else. A fast endpoint's lane
empties in milliseconds, so its commands rarely wait and almost never park.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class _Lane:
    slots: asyncio.Semaphore
    waiting: int = 0
    users: int = 0  # in flight + waiting: the lane is dropped when it falls to 0


class EndpointGate:
    def __init__(self, limit: int, *, queue: int | None = None, max_wait: float = 1.0) -> None:
        self.limit = limit
        self.queue = limit if queue is None else queue
        self.max_wait = max_wait
        self._lanes: dict[str, _Lane] = {}

    def in_flight(self, key: str) -> int:
        lane = self._lanes.get(key)
        return 0 if lane is None else lane.users - lane.waiting

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[bool]:
        """Yields True while holding one of `key`'s slots, or False: park and come back later."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(asyncio.Semaphore(self.limit))
        if lane.slots.locked() and lane.waiting >= self.queue:
            yield False
            return
        lane.users += 1
        try:
            lane.waiting += 1
            try:
                async with asyncio.timeout(self.max_wait):
                    await lane.slots.acquire()
                got = True
            except TimeoutError:
                got = False
            finally:
                lane.waiting -= 1
            if not got:
                yield False
                return
            try:
                yield True
            finally:
                lane.slots.release()
        finally:
            lane.users -= 1
            if lane.users == 0 and self._lanes.get(key) is lane:
                del self._lanes[key]
