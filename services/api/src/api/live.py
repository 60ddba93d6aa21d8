"""The live feed: one broker queue per API instance, fanned out in-process to open streams.

Each instance declares `api.live.<instance id>` (exclusive, auto-delete), bound to every
lifecycle event and to conversation message notices, and consumes it without acks: a live
update that is lost costs nothing, because each stream knows the last version it sent and
catches up from the database (the outbox rows of the generation) whenever it sees a gap, falls
behind, or the broker connection comes back. No stream polls the database.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from shared.logging import get_logger
from shared.messages import (
    ConversationMessageCreated,
    LifecycleEvent,
    Message,
    UnknownMessage,
    parse_message,
)
from shared.topology import LiveQueue, declare, declare_live_queue

log = get_logger("LIVE")

# What a subscriber receives: a lifecycle event or a message notice.
Update: TypeAlias = LifecycleEvent | ConversationMessageCreated


class Direct(Protocol):
    """A stream that can take an update from the fan-out itself, its task left asleep."""

    async def prepare(self, update: Update) -> None:
        """Before the fan-out: make what `deliver` sends (once for all the streams)."""

    def deliver(self, update: Update) -> bool:
        """Send `update` now, or say no (False): then it is queued and the task woken."""
        ...


class Subscriber:
    """One open stream's inbox. Bounded: a stream that cannot keep up drops what is queued and
    is told to catch up from the database instead (`lagged`).

    Kept small and cheap to wake, since one process holds thousands: `wait` parks the stream's
    task on a bare future with a timer (no `wait_for`, which wraps every wait in a task of its
    own), and a push wakes exactly that task. Cheaper still, a stream parked with nothing
    queued may take the update directly (`direct`): one event then reaches thousands of
    streams in one pass of the fan-out, no task woken unless the stream ends."""

    __slots__ = (
        "_lagged",
        "_leave",
        "_max",
        "_pending",
        "_ready",
        "_timer",
        "_waiter",
        "_within",
        "direct",
        "ended",
    )

    def __init__(self, leave: Callable[[Subscriber], None], max_pending: int = 256) -> None:
        self._leave: Callable[[Subscriber], None] | None = leave
        self._pending: deque[Update] = deque()
        self._max = max_pending
        self._ready = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._within = 0.0
        self._lagged = False
        self.ended = False  # the stream should end (shutting down, or its client left)
        self.direct: Direct | None = None

    def _wake(self) -> None:
        self._ready = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def push(self, update: Update) -> None:
        waiter = self._waiter
        # Parked and not yet woken means nothing is queued and the stream's state is current
        # (a push or a resync would have woken it): the update may go straight out.
        if (
            self.direct is not None
            and waiter is not None
            and not waiter.done()
            and self.direct.deliver(update)
        ):
            if not self.ended and self._timer is not None:  # a heartbeat is due after silence
                self._timer.cancel()
                self._timer = waiter.get_loop().call_later(self._within, _expire, waiter)
            return
        if len(self._pending) >= self._max:
            self._pending.clear()
            self._lagged = True
        else:
            self._pending.append(update)
        self._wake()

    def resync(self) -> None:
        """Updates may have been missed (the broker connection dropped): catch up."""
        self._lagged = True
        self._wake()

    async def wait(self, within: float) -> list[Update] | None:
        """What arrived since the last call, or None when `within` seconds passed with nothing."""
        if not self._ready:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._within = within
            self._timer = loop.call_later(within, _expire, waiter)
            try:
                await waiter
            finally:
                self._timer.cancel()
                self._timer = self._waiter = None
            if not self._ready:
                return None
        self._ready = False
        batch = list(self._pending)
        self._pending.clear()
        return batch

    def take_lagged(self) -> bool:
        lagged, self._lagged = self._lagged, False
        return lagged

    def end(self) -> None:
        """Ask the stream to end (its client reconnects elsewhere, with Last-Event-ID; or its
        client is gone; or its last frame went out directly)."""
        self.ended = True
        self._wake()

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        self.direct = None
        if self._leave is not None:
            self._leave(self)
            self._leave = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LiveFeed:
    def __init__(self, amqp_url: str, instance_id: str | None = None) -> None:
        self._url = amqp_url
        self.queue = LiveQueue(instance_id or uuid.uuid4().hex)
        self._connection: AbstractRobustConnection | None = None
        self._by_generation: dict[uuid.UUID, set[Subscriber]] = defaultdict(set)
        self._by_conversation: dict[uuid.UUID, set[Subscriber]] = defaultdict(set)
        self.received = 0
        # Updates are handled one at a time, in the order received (the fan-out may wait for a
        # frame to be rendered, and a later update must not overtake it).
        self._order = asyncio.Lock()

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self._url)
        # The queue is exclusive to this connection: when it drops, the broker deletes the
        # queue, and the robust connection declares it again on reconnect. What was published
        # in between is gone, so every stream catches up from the database.
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        channel = await self._connection.channel()
        await declare(channel, queues=(), delays=())  # the exchanges we bind to
        queue = await declare_live_queue(channel, self.queue)
        await queue.consume(self._on_message, no_ack=True)
        log.info("Live feed started", queue=self.queue.name)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        for subscribers in (*self._by_generation.values(), *self._by_conversation.values()):
            for subscriber in subscribers:
                subscriber.resync()

    def end_streams(self) -> None:
        """Shutting down: end every open stream now, so the server need not wait for them
        (they would never finish by themselves) and their clients resume elsewhere."""
        for registry in (self._by_generation, self._by_conversation):
            for subscribers in registry.values():
                for subscriber in subscribers:
                    subscriber.end()

    @property
    def healthy(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._by_generation.values()) + sum(
            len(s) for s in self._by_conversation.values()
        )

    def generation(self, generation_id: uuid.UUID) -> Subscriber:
        """Updates of one generation, until the subscriber is closed."""
        return self._subscribe(self._by_generation, generation_id)

    def conversation(self, conversation_id: uuid.UUID) -> Subscriber:
        """Message notices and lifecycle events of one conversation, until closed."""
        return self._subscribe(self._by_conversation, conversation_id)

    @staticmethod
    def _subscribe(registry: dict[uuid.UUID, set[Subscriber]], key: uuid.UUID) -> Subscriber:
        def leave(subscriber: Subscriber) -> None:
            registry[key].discard(subscriber)
            if not registry[key]:
                del registry[key]

        subscriber = Subscriber(leave)
        registry[key].add(subscriber)
        return subscriber

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.received += 1
        try:
            update: Message = parse_message(message.type, message.body)
        except (UnknownMessage, ValueError) as exc:
            log.warning("Live update ignored", type=message.type, error=str(exc)[:200])
            return
        if not isinstance(update, LifecycleEvent | ConversationMessageCreated):
            log.warning("Live update ignored", type=message.type, error="not a live update")
            return
        async with self._order:
            await self.fan_out(update)

    async def fan_out(self, update: Update) -> None:
        """Hand one update to every stream it concerns."""
        if isinstance(update, LifecycleEvent):
            await self._fan_out(self._by_generation, update.generation_id, update)
            if update.conversation_id is not None:
                await self._fan_out(self._by_conversation, update.conversation_id, update)
        elif isinstance(update, ConversationMessageCreated):
            await self._fan_out(self._by_conversation, update.conversation_id, update)

    @staticmethod
    async def _fan_out(
        registry: dict[uuid.UUID, set[Subscriber]], key: uuid.UUID, update: Update
    ) -> None:
        subscribers = registry.get(key)
        if not subscribers:
            return
        # The streams of one key share the rendered frame: one stream prepares it for all.
        direct = next((s.direct for s in subscribers if s.direct is not None), None)
        if direct is not None:
            try:
                await direct.prepare(update)
            except Exception as exc:  # each stream's task renders it, and fails, on its own
                log.warning("Live update not prepared", error=str(exc)[:200])
        # No garbage collection during the pass: with thousands of streams open, a full one
        # takes up to a second, and every stream not yet written would wait for it. What the
        # pass allocates is mostly freed as it goes; the rest waits for the next collection.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for subscriber in tuple(subscribers):  # a copy: a stream that ends leaves the set
                subscriber.push(update)
        finally:
            if collecting:
                gc.enable()

    async def _on_reconnect(self, *_: Any) -> None:
        log.warning("Live feed reconnected; open streams catch up from the database")
        for registry in (self._by_generation, self._by_conversation):
            for subscribers in registry.values():
                for subscriber in subscribers:
                    subscriber.resync()
