"""Idempotent message handling: parse, apply once (inbox), commit, then ack.

A handler gets an open transaction and the parsed message. Its effects, the inbox entry and any
outgoing messages (outbox) commit together; FastStream acks only after this returns. A message
that cannot be parsed, or a `PermanentError`, is rejected to the queue's DLQ at once; any other
error is nacked and redelivered until the queue's delivery limit dead-letters it.

`traced` wraps every subscribed handler (`ConsumerService` does it): a CONSUMER span
`process <queue>`, child of the publisher's span (the message's `traceparent`), and the
consumed-message metrics.

(No `from __future__ import annotations` here: FastStream resolves the handler's
annotations at runtime to inject the raw message.)
"""

import abc
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from faststream.message import AckStatus
from faststream.rabbit.annotations import RabbitMessage
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import telemetry
from shared.db.outage import outlast_outage
from shared.deadletter import copy_to_dlq, dead_letter
from shared.inbox import claim, claim_plain
from shared.logging import get_logger, log_context
from shared.messages import Message, UnknownMessage, parse_message
from shared.metrics import ServiceMetrics
from shared.outbox import RELAY_KEY, OutboxRelay, Outgoing
from shared.waiting import wait_set

log = get_logger("CONSUMER")

M = TypeVar("M", bound=Message)


class PermanentError(Exception):
    """Retrying cannot help: dead-letter the message now."""


class IdempotentConsumer(Generic[M]):
    def __init__(
        self,
        name: str,
        message_type: type[M],
        handler: Callable[[AsyncSession, M], Awaitable[None]],
        sessions: async_sessionmaker[AsyncSession],
        relay: OutboxRelay,
        *,
        after_commit: Callable[[M], None] | None = None,
    ) -> None:
        self.name = name
        self.message_type = message_type
        self.handler = handler
        self.sessions = sessions
        self.relay = relay
        # Told of each message applied, once its transaction committed (e.g. to wake a loop
        # that picks up what the handler wrote, instead of waiting for its next tick).
        self.after_commit = after_commit
        self.handled = 0
        self.duplicates = 0

    async def __call__(self, message: RabbitMessage) -> None:
        raw = message.raw_message
        with log_context(
            consumer=self.name, message_id=raw.message_id, generation_id=raw.correlation_id
        ):
            parsed = await self._parse(message)
            if parsed is None:
                return
            user_id = getattr(parsed, "user_id", None)
            try:
                with log_context(user_id=str(user_id) if user_id else None):
                    async with self.sessions() as session, session.begin():
                        if not await claim(session, self.name, str(raw.message_id)):
                            self.duplicates += 1
                            log.info("Duplicate ignored", type=raw.type)
                            return
                        await self.handler(session, parsed)
                    # The commit handed its outbox rows to the relay of the session's maker;
                    # any other relay is told to look (a maker without one, in tests).
                    handed = session.info.get(RELAY_KEY) is self.relay
            except PermanentError as exc:
                log.error("Message dead-lettered", type=raw.type, reason=str(exc))
                await dead_letter(message, self.name, f"permanent failure: {exc}")
                return
            self.handled += 1
            if not handed:
                self.relay.wake()
            if self.after_commit is not None:
                self.after_commit(parsed)

    async def _parse(self, message: RabbitMessage) -> M | None:
        return await read_or_reject(message, self.message_type, self.name)


class Transaction:
    """One message's transaction on a plain asyncpg connection (`PlainIdempotentConsumer`).

    The handler's first statement claims the message in the inbox: `claim()`, or its own
    statement with `shared.inbox.claim_cte` in it, after which it sets `fresh`. A handler that
    finds the message already applied (`fresh` False) returns without doing anything. Outgoing
    messages go to `outgoing` (written by the handler's statements, handed to the relay after
    the commit); `on_commit` callbacks run once the transaction committed (metrics)."""

    def __init__(
        self,
        conn: Any,
        consumer: str,
        message_id: str,
        relay: OutboxRelay | None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.conn = conn
        self.consumer = consumer
        self.message_id = message_id
        self.outgoing = Outgoing(relay)
        self.metrics = metrics
        self.fresh: bool | None = None
        self._on_commit: list[Callable[[], None]] = []

    async def claim(self) -> bool:
        self.fresh = await claim_plain(self.conn, self.consumer, self.message_id)
        return self.fresh

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._on_commit.append(callback)

    def committed(self) -> None:
        self.outgoing.committed()
        for callback in self._on_commit:
            callback()


class PlainIdempotentConsumer(Generic[M]):
    """`IdempotentConsumer` on plain asyncpg: the same contract (parse or dead-letter, claim
    in the inbox, apply, commit, then ack; `PermanentError` dead-letters), with the handler's
    statements run on a pooled asyncpg connection instead of an `AsyncSession` — no ORM
    session, no statement compilation, no greenlet per statement, and the claim and the
    outbox rows can share a round trip with the handler's own statements."""

    def __init__(
        self,
        name: str,
        message_type: type[M],
        handler: Callable[[Transaction, M], Awaitable[None]],
        pool: Callable[[], Any],
        relay: OutboxRelay,
        metrics: ServiceMetrics | None = None,
        *,
        needs_nothing: Callable[[AbstractIncomingMessage], bool] | None = None,
    ) -> None:
        self.name = name
        self.message_type = message_type
        self.handler = handler
        self.pool = pool  # the pool, once opened (the service opens it at start)
        self.relay = relay
        self.metrics = metrics
        # Messages it returns True for are acked with no transaction: their publisher marked
        # them as already acted upon (a header only services can set), so applying them would
        # be a no-op that still costs a claim and a commit.
        self.needs_nothing = needs_nothing
        self.handled = 0
        self.duplicates = 0
        self.needed_nothing = 0

    async def __call__(self, raw: AbstractIncomingMessage) -> None:
        """Handle one message taken from the queue by a `QueueConsumer` (which acks it after
        this returns, unless it was dead-lettered here)."""
        with log_context(
            consumer=self.name, message_id=raw.message_id, generation_id=raw.correlation_id
        ):
            if self.needs_nothing is not None and self.needs_nothing(raw):
                self.needed_nothing += 1
                return
            parsed = read_checked(raw, self.message_type, self.name)
            if isinstance(parsed, str):
                await dead_letter_raw(raw, self.name, parsed)
                return
            user_id = getattr(parsed, "user_id", None)
            try:
                with log_context(user_id=str(user_id) if user_id else None):
                    tx = await self.apply(parsed, str(raw.message_id))
            except PermanentError as exc:
                log.error("Message dead-lettered", type=raw.type, reason=str(exc))
                await dead_letter_raw(raw, self.name, f"permanent failure: {exc}")
                return
            if not tx.fresh:
                self.duplicates += 1
                log.info("Duplicate ignored", type=raw.type)
                return
            self.handled += 1

    async def apply(self, parsed: M, message_id: str) -> Transaction:
        """Run the handler in one transaction, committed when it returns; what it did."""
        async with self.pool().acquire() as conn:
            tx = Transaction(conn, self.name, message_id, self.relay, self.metrics)
            async with conn.transaction():
                await self.handler(tx, parsed)
                if tx.fresh is None:
                    raise RuntimeError(f"{self.name}: the handler did not claim its message")
        if tx.fresh:
            tx.committed()
        return tx


async def read_or_reject(message: RabbitMessage, message_type: type[M], consumer: str) -> M | None:
    """The parsed message, or None after rejecting it to the DLQ (no id, unknown type/version,
    invalid body). For consumers that run their own flow instead of `IdempotentConsumer`."""
    parsed = read_checked(message.raw_message, message_type, consumer)
    if isinstance(parsed, str):
        await dead_letter(message, consumer, parsed)
        return None
    return parsed


def read_checked(raw: AbstractIncomingMessage, message_type: type[M], consumer: str) -> M | str:
    """The parsed message, or why it must be dead-lettered (`unreadable: …`): no id, an unknown
    type or version, an invalid body, or a routing key it is not published under."""
    try:
        if not raw.message_id:
            raise UnknownMessage("message has no message_id")
        parsed = parse_message(raw.type, raw.body)
        if not isinstance(parsed, message_type):
            raise UnknownMessage(f"{consumer} does not handle {raw.type!r}")
        if not arrived_as_published(raw.exchange, raw.routing_key, parsed):
            raise UnknownMessage(
                f"{raw.type!r} arrived with routing key {raw.routing_key!r}, "
                f"not {parsed.routing_key!r} as it is published"
            )
    except (UnknownMessage, ValidationError, ValueError) as exc:
        log.error(
            "Unreadable message dead-lettered",
            consumer=consumer,
            type=raw.type,
            reason=str(exc)[:500],
        )
        return f"unreadable: {exc}"
    return parsed


def arrived_as_published(exchange: str | None, routing_key: str | None, message: Message) -> bool:
    """Bus input is checked like HTTP input: a message must come with the routing key its type
    is published under. Each service's RabbitMQ user may publish only its own keys, but any
    service may bind queues (they all declare the topology), so a body under another key (say,
    a lifecycle event under the worker's `render.*`) was routed by a binding nobody should have
    made. The default exchange (`reelflow dlq replay`, operators only) routes by queue name."""
    return not exchange or routing_key == message.routing_key


Handler = Callable[[RabbitMessage], Awaitable[None]]


# How long a handler waits out a database outage before its message is nacked (which counts
# towards the delivery limit): longer than a PostgreSQL restart or failover takes.
OUTAGE_PATIENCE_SECONDS = 120.0


def process_attributes(queue: str, raw: AbstractIncomingMessage) -> dict[str, str | int]:
    """A CONSUMER span's attributes (OpenTelemetry messaging conventions) for one message."""
    return {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": raw.exchange or "",
        "messaging.destination.subscription.name": queue,
        "messaging.rabbitmq.destination.routing_key": raw.routing_key or "",
        "messaging.message.id": str(raw.message_id or ""),
        "messaging.message.conversation_id": str(raw.correlation_id or ""),
        "messaging.message.body.size": len(raw.body),
    }


def traced(queue: str, handler: Handler, metrics: ServiceMetrics | None = None) -> Handler:
    """`handler` inside a CONSUMER span under the message's context, counted and timed; a
    database outage is waited out in place (`shared.db.outage`) instead of burning redeliveries."""

    async def on_message(message: RabbitMessage) -> None:
        raw = message.raw_message
        # An exception: FastStream nacks, the broker redelivers ("requeued").
        with consuming(queue, raw, metrics) as result:
            await handle_once(
                queue, lambda: handler(message), lambda: message.committed is not None
            )
            result.outcome = "dead_lettered" if message.committed == AckStatus.REJECTED else "acked"

    return on_message


class Consumed:
    """What became of a consumed message (`consuming`): its span, and the outcome counted."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.outcome = "requeued"


@contextlib.contextmanager
def consuming(
    queue: str, raw: AbstractIncomingMessage, metrics: ServiceMetrics | None
) -> Iterator[Consumed]:
    """A message's handling: a CONSUMER span `process <queue>` under the publisher's context,
    the generation in the log context, the outcome counted and the time observed."""
    started = time.perf_counter()
    with telemetry.tracer().start_as_current_span(
        f"process {queue}",
        context=telemetry.extract(raw.headers),
        kind=SpanKind.CONSUMER,
        attributes=process_attributes(queue, raw),
    ) as span:
        result = Consumed(span)
        try:
            with log_context(generation_id=raw.correlation_id or None):
                yield result
        finally:
            if span.is_recording():
                span.set_attribute("reelflow.outcome", result.outcome)
            if metrics is not None:
                metrics.consumed.labels(queue, result.outcome).inc()
                metrics.handling.labels(queue).observe(time.perf_counter() - started)


async def handle_once(
    queue: str, call: Callable[[], Awaitable[None]], settled: Callable[[], bool]
) -> None:
    """`call()`, again while the database is away (`shared.db.outage`); an error raised after
    the handler settled its message itself is only logged (there is nothing to redo), any
    other is logged and raised (the message goes back to the queue)."""

    async def once() -> None:
        try:
            await call()
        except Exception as error:
            if not settled():
                raise
            log.warning("Handling failed after settling", error=repr(error)[:500])

    try:
        await outlast_outage(once, patience=OUTAGE_PATIENCE_SECONDS, what=f"consume {queue}")
    except Exception as error:
        log.warning("Handling failed, message requeued", error=repr(error)[:500])
        raise


async def dead_letter_raw(raw: AbstractIncomingMessage, queue: str, reason: str) -> None:
    """`shared.deadletter.dead_letter` for an aio-pika message: the copy with its reason into
    the queue's DLQ, confirmed, then the original acked (rejected if the copy failed)."""
    if await copy_to_dlq(raw, queue, reason):
        await _settle(raw.ack(), "ack")
    else:
        await _settle(raw.reject(requeue=False), "reject")


async def _settle(settling: Awaitable[None], what: str) -> None:
    try:
        await settling
    except Exception as exc:  # the channel went away (broker restart): the broker redelivers
        log.warning("Could not settle a message", settle=what, error=str(exc)[:200])


class QueueSubscription(abc.ABC):
    """A work queue consumed with aio-pika itself: a channel of its own with `prefetch`
    unacked messages at most, each message handed to `on_message`. The channel comes from a
    robust connection, so the consumer is restored after a broker restart. `cancel` takes no
    more messages, `close` closes the channel (what is still unacked goes back to the queue).
    `QueueConsumer` (a message per handler call) and the notifier's batching consumer build on
    it."""

    def __init__(self, queue: str, *, prefetch: int) -> None:
        self.queue = queue
        self.prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self._amqp_queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def start(self, connection: AbstractRobustConnection) -> None:
        self._channel = await connection.channel()
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._amqp_queue = await self._channel.get_queue(self.queue)
        self._tag = await self._amqp_queue.consume(self.on_message)

    async def cancel(self) -> None:
        """Take no more messages (those received are still handled and settled)."""
        if self._amqp_queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._amqp_queue.cancel(self._tag)
            self._tag = None

    async def close(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    @abc.abstractmethod
    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """One message received (not yet acknowledged)."""


class QueueConsumer(QueueSubscription):
    """One work queue consumed with aio-pika itself, one message per handler call, each as
    `traced` and FastStream's NACK_ON_ERROR handle it: a CONSUMER span `process <queue>` under
    the publisher's context, a database outage waited out in place, acked once the handler
    returned (unless it dead-lettered the message itself), nacked back to the queue on an
    error (its delivery limit dead-letters one that keeps failing), counted and timed.

    FastStream's own per-message machinery (middleware stack, context scopes, its message
    wrapper and acknowledgement middleware) was ~10% of the orchestrator's CPU."""

    def __init__(
        self,
        queue: str,
        handler: Callable[[AbstractIncomingMessage], Awaitable[None]],
        *,
        prefetch: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        super().__init__(queue, prefetch=prefetch)
        self.handler = handler
        self.metrics = metrics
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, within: float) -> None:
        """Wait until the messages received so far are settled (or `within` seconds passed:
        what is still unacked then goes back to the queue when the channel closes)."""
        await wait_set(self._idle, within)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._handle(message)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        with consuming(self.queue, message, self.metrics) as result:
            try:
                await handle_once(
                    self.queue, lambda: self.handler(message), lambda: message.processed
                )
            except Exception as error:
                if result.span.is_recording():
                    result.span.record_exception(error)
                    result.span.set_status(Status(StatusCode.ERROR, repr(error)[:300]))
                await _settle(message.nack(requeue=True), "nack")
                return
            if message.processed:  # the handler dead-lettered it
                result.outcome = "dead_lettered"
            else:
                await _settle(message.ack(), "ack")
                result.outcome = "acked"
