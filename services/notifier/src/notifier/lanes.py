"""Per-endpoint lanes: one slow endpoint never delays another's webhooks, nor the consumers.

Every target (a registered endpoint, or `NEXTJS_URL`) gets a lane: at most `limit` attempts in
flight (`WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT`), and behind them a queue in memory. The consumers
only offer jobs to lanes (never wait on HTTP); a lane's workers take its jobs in turn. A lane
whose queue is full refuses the job: nothing is lost, because the delivery row is the record —
its lease runs out and the sweeper offers it again later. So an endpoint that hangs for the
whole timeout holds `limit` connections and a bounded queue, and costs the others nothing more
than the refusals.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from opentelemetry.context import Context
from shared.logging import get_logger

from notifier.signing import Key

log = get_logger("WEBHOOK")

QUEUE_PER_LANE = 1000  # waiting jobs per target
QUEUE_TOTAL = 20_000  # waiting jobs in all lanes (each holds a reference to its body)


@dataclass(eq=False)
class Job:
    """One attempt of one delivery, with everything the HTTP step needs."""

    delivery_id: uuid.UUID
    attempt: int
    target: str  # the endpoint's id, or "nextjs": the lane it waits in
    url: str
    webhook_id: str
    body: str
    keys: tuple[Key, ...]
    bearer: str | None
    trusted: bool
    generation_id: uuid.UUID
    endpoint_id: uuid.UUID | None
    user_id: str | None  # whom the event is about (the payload's `userId`)
    created_at: datetime
    manual: bool = False
    # The trace the attempt's span joins (the consumer span that made or claimed the job), or
    # the event's `traceparent` when tracing is off.
    context: Context | None = None
    traceparent: str | None = None


@dataclass
class _Lane:
    queue: deque[Job] = field(default_factory=deque)
    running: int = 0


class Lanes:
    def __init__(
        self,
        limit: int,
        run: Callable[[Job], Awaitable[None]],
        *,
        queue_per_lane: int = QUEUE_PER_LANE,
        queue_total: int = QUEUE_TOTAL,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self.run = run
        self.queue_per_lane = queue_per_lane
        self.queue_total = queue_total
        self._lanes: dict[str, _Lane] = {}
        self._queued = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_wait = on_wait  # a job found its lane's slots taken (queued, or refused)

    def in_flight(self, target: str) -> int:
        lane = self._lanes.get(target)
        return 0 if lane is None else lane.running

    def has_room(self, target: str) -> bool:
        lane = self._lanes.get(target)
        return (
            lane is None
            or lane.running < self.limit
            or (len(lane.queue) < self.queue_per_lane and self._queued < self.queue_total)
        )

    def full(self) -> list[str]:
        """The targets whose lanes can take no more jobs."""
        return [target for target in self._lanes if not self.has_room(target)]

    def offer(self, job: Job) -> bool:
        """Start `job` now, or queue it behind its lane's attempts; False if the lane is full."""
        lane = self._lanes.get(job.target)
        if lane is None:
            lane = self._lanes[job.target] = _Lane()
        if lane.running < self.limit:
            lane.running += 1
            task = asyncio.create_task(self._work(job.target, lane, job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return True
        if self.on_wait is not None:
            self.on_wait()
        if len(lane.queue) >= self.queue_per_lane or self._queued >= self.queue_total:
            return False
        lane.queue.append(job)
        self._queued += 1
        return True

    async def _work(self, target: str, lane: _Lane, job: Job) -> None:
        try:
            while True:
                try:
                    await self.run(job)
                except Exception:  # `run` records its own failures; this is a bug
                    log.exception("Webhook attempt failed unexpectedly", target=target)
                if not lane.queue:
                    return
                job = lane.queue.popleft()
                self._queued -= 1
        finally:
            lane.running -= 1
            if lane.running == 0 and not lane.queue and self._lanes.get(target) is lane:
                del self._lanes[target]

    def take_queued(self) -> list[Job]:
        """Remove and return every job not started yet (at shutdown)."""
        jobs = [job for lane in self._lanes.values() for job in lane.queue]
        for lane in self._lanes.values():
            lane.queue.clear()
        self._queued = 0
        return jobs

    async def wait_running(self, within: float) -> None:
        """Let the attempts under way finish, for at most `within` seconds; then cut them."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=within)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
