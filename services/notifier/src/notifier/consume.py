"""Consuming a work queue in batches, with aio-pika itself.

The other services consume one message per handler call (through FastStream, or the
orchestrator with `shared.consumer.QueueConsumer`). The notifier takes its two queues in batches
instead: a batch of lifecycle events is one transaction, a batch of delivery commands another.
It does so with aio-pika directly (the channel, its prefetch and re-consuming after a broker
restart are `shared.consumer.QueueSubscription`'s) — on this machine FastStream's per-message
machinery cost ~340 µs of CPU against ~125 µs for a bare aio-pika consumer, which at a thousand
webhooks a second is a third of a core — while keeping what `shared.consumer.traced` gives
every message: a CONSUMER span `process <queue>` under the publisher's span, the
consumed-message metrics, and `read_or_reject`'s checks (unreadable messages go to the DLQ at
once).

`Batcher` gathers items and hands them to a coroutine in batches: as many as have arrived while
the previous batch was busy (up to `max_batch`), so a quiet queue is handled one message at a
time with no added wait, and a busy one in large batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.trace import Span, SpanKind
from shared.consumer import QueueSubscription, process_attributes, read_checked
from shared.deadletter import copy_to_dlq
from shared.logging import get_logger
from shared.messages import Message
from shared.metrics import ServiceMetrics
from shared.topology import WorkQueue
from shared.waiting import wait_set

from shared import telemetry

log = get_logger("CONSUMER")

T = TypeVar("T")
M = TypeVar("M", bound=Message)


class Batcher(Generic[T]):
    def __init__(
        self,
        name: str,
        handle: Callable[[list[T]], Awaitable[None]],
        *,
        max_batch: int,
        workers: int = 1,
        linger: float = 0.0,
    ) -> None:
        self.name = name
        self.handle = handle
        self.max_batch = max_batch
        self.workers = workers
        self.linger = linger
        self._items: list[T] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()
        self._idle.clear()

    def __len__(self) -> int:
        return len(self._items)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.name}-{i}") for i in range(self.workers)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def drain(self, within: float) -> None:
        """Wait until everything added so far was handled (or `within` seconds passed)."""
        await wait_set(self._idle, within)

    async def _work(self) -> None:
        while True:
            await self._ready.wait()
            if self.linger and len(self._items) < self.max_batch:
                await asyncio.sleep(self.linger)
            batch = self._items[: self.max_batch]
            del self._items[: self.max_batch]
            if not self._items:
                self._ready.clear()
            if not batch:
                continue
            self._busy += 1
            try:
                await self.handle(batch)
            except Exception:  # the handler settles its own items; this is a bug, keep going
                log.exception("Batch handler failed", batcher=self.name)
            finally:
                self._busy -= 1
                if not self._busy and not self._items:
                    self._idle.set()


@dataclass
class Received:
    """One message taken from a queue, inside its CONSUMER span until it is settled."""

    message: AbstractIncomingMessage
    span: Span
    channel: Any  # the (aiormq) channel it came on, and its tag there
    tag: int
    started: float = field(default_factory=time.perf_counter)


@dataclass
class _Tags:
    """One channel's delivery tags: received and not settled yet, and settled as acked but
    not yet acknowledged to the broker."""

    open: set[int] = field(default_factory=set)
    to_ack: set[int] = field(default_factory=set)


class QueueConsumer(QueueSubscription):
    """One work queue on a robust connection of its own (`shared.consumer.QueueSubscription`:
    it re-consumes after a broker restart), whose messages go to `batcher` in their spans and
    are settled by delivery tag once their batch is done."""

    def __init__(
        self,
        queue: WorkQueue,
        prefetch: int,
        batcher: Batcher[Received],
        metrics: ServiceMetrics | None,
    ) -> None:
        super().__init__(queue.name, prefetch=prefetch)
        self.batcher = batcher
        self.metrics = metrics
        self._tags: dict[int, tuple[Any, _Tags]] = {}
        self._acking = asyncio.Lock()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        span = telemetry.tracer().start_span(
            f"process {self.queue}",
            context=telemetry.extract(message.headers),
            kind=SpanKind.CONSUMER,
            attributes=process_attributes(self.queue, message),
        )
        channel, tag = message.channel, message.delivery_tag or 0
        entry = self._tags.get(id(channel))
        if entry is None or entry[0] is not channel:
            entry = self._tags[id(channel)] = (channel, _Tags())
            for key, (other, _) in list(self._tags.items()):
                if other.is_closed:  # a channel lost to a broker restart: its tags are void
                    del self._tags[key]
        entry[1].open.add(tag)
        self.batcher.add(Received(message, span, channel, tag))

    # -- settling -------------------------------------------------------------------------

    async def ack(self, items: list[Received], outcome: str = "acked") -> None:
        """Acknowledge `items`: as few `multiple` acks as the order of tags allows (one per
        channel, usually), each covering only tags settled already — never a message still
        being handled, nor one about to be requeued or dead-lettered."""
        for item in items:
            entry = self._tags.get(id(item.channel))
            if entry is not None and entry[0] is item.channel:
                entry[1].open.discard(item.tag)
                entry[1].to_ack.add(item.tag)
            self._done(item, outcome)
        async with self._acking:  # one ack frame at a time: each must be news to the broker
            for channel, tags in list(self._tags.values()):
                low = min(tags.open, default=None)
                ready = [t for t in tags.to_ack if low is None or t < low]
                if not ready:
                    continue
                tags.to_ack.difference_update(ready)
                try:
                    await channel.basic_ack(max(ready), multiple=True)
                except Exception as exc:  # channel gone (broker restart): redelivered
                    log.warning("Could not ack messages", error=str(exc)[:200])

    async def requeue(self, item: Received) -> None:
        """Back to the queue (the queue's delivery limit dead-letters a message that keeps
        failing)."""
        await self._settle(item, "requeued", lambda: item.channel.basic_nack(item.tag))

    async def dead_letter(self, item: Received, reason: str) -> None:
        """Into the queue's DLQ with the reason (`shared.deadletter`'s way: a copy published
        to the dead-letter exchange with `x-reelflow-reason` and `x-reelflow-queue`, confirmed,
        then the original acked; a plain reject if the copy cannot be made)."""
        if await copy_to_dlq(item.message, self.queue, reason):
            await self.ack([item], outcome="dead_lettered")
        else:
            await self._settle(
                item, "dead_lettered", lambda: item.channel.basic_reject(item.tag, requeue=False)
            )

    async def _settle(
        self, item: Received, outcome: str, how: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            await how()
        except Exception as exc:  # channel gone (broker restart): the broker redelivers it
            log.warning("Could not settle a message", outcome=outcome, error=str(exc)[:200])
        entry = self._tags.get(id(item.channel))
        if entry is not None and entry[0] is item.channel:
            entry[1].open.discard(item.tag)  # only once its frame is out
        self._done(item, outcome)

    def _done(self, item: Received, outcome: str) -> None:
        span = item.span
        if span.is_recording():
            span.set_attribute("reelflow.outcome", outcome)
        span.end()
        if self.metrics is not None:
            self.metrics.consumed.labels(self.queue, outcome).inc()
            self.metrics.handling.labels(self.queue).observe(time.perf_counter() - item.started)


def read(item: Received, message_type: type[M], consumer: str) -> M | str:
    """The parsed message, or why it must be dead-lettered (`shared.consumer.read_checked`)."""
    return read_checked(item.message, message_type, consumer)
