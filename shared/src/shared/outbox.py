"""Transactional outbox: messages are rows written with the state change, then relayed.

`enqueue` adds a row in the caller's transaction. `OutboxRelay` (one per process that writes)
publishes unpublished rows persistent and `mandatory` on a confirming channel, and marks them
published only after RabbitMQ confirmed them. A crash between confirm and mark republishes the
same `message_id`; consumers' inboxes make that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection, DeliveryMode
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import OutboxMessage
from shared.logging import get_logger
from shared.messages import Message
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

    `routing_key` overrides the message's own, e.g. to park a command in a delay queue."""
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
            headers=headers or {},
        )
    )


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
    ) -> None:
        self._sessions = sessionmaker
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
        return len(rows)

    async def _publish(self, row: Any) -> None:
        message = aio_pika.Message(
            body=row["body"].encode(),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=str(row["message_id"]),
            type=row["type"],
            correlation_id=row["correlation_id"],
            headers=row["headers"] or {},
        )
        await self._exchanges[row["exchange"]].publish(
            message, routing_key=row["routing_key"], mandatory=row["exchange"] != LIVE
        )
