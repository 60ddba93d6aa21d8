"""Transactional outbox: messages are rows written with the state change, then relayed.

`enqueue` adds a row in the caller's transaction. `OutboxRelay` (one per process that writes)
publishes unpublished rows persistent and `mandatory` on a confirming channel, and marks them
published only after RabbitMQ confirmed them. A crash between confirm and mark republishes the
same `message_id`; consumers' inboxes make that harmless.

Tracing: a row keeps the W3C context it was written in (`traceparent`, `tracestate` in its
headers); the relay publishes it inside a PRODUCER span that is that context's child, and the
message carries the producer span's `traceparent` (FastStream's telemetry middleware would
inject the relay's own, unrelated context instead: the trace would break at the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection, DeliveryMode
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import telemetry
from shared.db.models import OutboxMessage
from shared.logging import current_context, get_logger
from shared.messages import Message
from shared.metrics import ServiceMetrics
from shared.topology import COMMANDS, EVENTS, LIVE, declare

log = get_logger("OUTBOX")

_COMMAND_TYPES = {"render.requested", "webhook.delivery_requested"}
# Live updates for open views: published without `mandatory`, since no view may be open.
_LIVE_TYPES = {"conversation.message_created"}


def enqueue(
    session: AsyncSession,
    message: Message,
    *,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
) -> None:
    """Stage `message` for publishing when the caller's transaction commits.

    `routing_key` overrides the message's own, e.g. to park a command in a delay queue. The
    current trace context is stored with the row (it replaces a `traceparent` in `headers`,
    which stays only when there is no current context)."""
    exchange = (
        COMMANDS
        if message.TYPE in _COMMAND_TYPES
        else LIVE
        if message.TYPE in _LIVE_TYPES
        else EVENTS
    )
    session.add(
        OutboxMessage(
            exchange=exchange,
            routing_key=routing_key or message.routing_key,
            type=message.TYPE,
            correlation_id=message.correlation_id,
            body=message.model_dump_json(),
            headers=_traced(headers, message),
        )
    )


# Kept with the row for the publish span's labels, never sent: a message without `user_id`
# (a webhook delivery command) is still about someone.
_USER = "reelflow.user_id"


def _traced(headers: dict[str, Any] | None, message: Message) -> dict[str, Any]:
    stored = telemetry.inject(dict(headers or {}))
    user_id = current_context().get("user_id")
    if user_id and getattr(message, "user_id", None) is None:
        stored[_USER] = str(user_id)
    return stored


_CLAIM = text(
    "SELECT id, message_id, exchange, routing_key, type, correlation_id, body, headers "
    "FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
)
_MARK = text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)")


class OutboxRelay:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        amqp_url: str,
        *,
        batch_size: int = 200,
        idle_poll_seconds: float = 0.5,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessionmaker
        self._metrics = metrics
        self._amqp_url = amqp_url
        self._batch = batch_size
        self._idle = idle_poll_seconds
        self._wake = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    def wake(self) -> None:
        """Call after committing outbox rows so they go out now, not at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self._amqp_url)
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        await declare(self._channel)
        self._exchanges = {
            name: await self._channel.get_exchange(name) for name in (EVENTS, COMMANDS, LIVE)
        }
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection:
            await self._connection.close()

    @property
    def healthy(self) -> bool:
        return bool(
            self._task
            and not self._task.done()
            and self._connection
            and not self._connection.is_closed
        )

    async def _run(self) -> None:
        while True:
            try:
                while await self.drain_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database away: keep rows, try again soon
                log.warning("Relay failed, will retry", error=str(exc))
                if self._metrics is not None:
                    self._metrics.publish_failures.inc()
                await asyncio.sleep(1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle)
            self._wake.clear()

    async def drain_once(self) -> int:
        """Publish one batch; the number published (0 when the outbox is empty)."""
        async with self._sessions() as session, session.begin():
            rows = (await session.execute(_CLAIM, {"n": self._batch})).mappings().all()
            if not rows:
                return 0
            await asyncio.gather(*(self._publish(row) for row in rows))
            await session.execute(_MARK, {"ids": [r["id"] for r in rows]})
        self.published += len(rows)
        if self._metrics is not None:
            for row in rows:
                self._metrics.published.labels(row["type"]).inc()
        return len(rows)

    async def _publish(self, row: Any) -> None:
        stored = dict(row["headers"] or {})
        user_id = stored.pop(_USER, None)
        with telemetry.tracer().start_as_current_span(
            f"publish {row['routing_key']}",
            context=telemetry.extract(stored),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": row["exchange"],
                "messaging.rabbitmq.destination.routing_key": row["routing_key"],
                "messaging.message.id": str(row["message_id"]),
                "messaging.message.conversation_id": row["correlation_id"],
                "messaging.message.body.size": len(row["body"]),
            },
        ) as span:
            if span.is_recording():
                _label(span, row, user_id)
            message = aio_pika.Message(
                body=row["body"].encode(),
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=str(row["message_id"]),
                type=row["type"],
                correlation_id=row["correlation_id"],
                headers=telemetry.inject(dict(stored)),  # this span's traceparent
            )
            await self._exchanges[row["exchange"]].publish(
                message, routing_key=row["routing_key"], mandatory=row["exchange"] != LIVE
            )


def _label(span: trace.Span, row: Any, user_id: str | None) -> None:
    """The generation and user a published message is about (read only when recording)."""
    try:
        body = json.loads(row["body"])
    except ValueError:
        return
    if user_id:
        body.setdefault("user_id", user_id)
    for key, attribute in (
        ("generation_id", telemetry.GENERATION_ID),
        ("user_id", telemetry.USER_ID),
    ):
        if body.get(key):
            span.set_attribute(attribute, str(body[key]))
