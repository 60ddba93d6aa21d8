"""Lifecycle event → assistant message + webhook deliveries + their first attempts, in the one
transaction `IdempotentConsumer` opens (with the inbox entry); acked after it commits."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from faststream.rabbit.annotations import RabbitMessage
from shared.db.models import ChatMessage, WebhookDelivery
from shared.logging import get_logger
from shared.media import Storage
from shared.messages import ConversationMessageCreated, LifecycleEvent, WebhookDeliveryRequested
from shared.outbox import enqueue
from shared.settings import Settings
from shared.telemetry import tracer
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from notifier.ids import event_key, traceparent_for, webhook_id
from notifier.messages import Reply, compose
from notifier.payload import Links, serialise
from notifier.targets import Target, targets_for

log = get_logger("NOTIFIER")

# The `traceparent` of the event being handled, read from its AMQP headers by
# `with_traceparent` (the inbox wrapper hands handlers only the parsed message). Used only when
# tracing is off (OTEL_SDK_DISABLED): otherwise the outbox stores the consumer span's context.
TRACEPARENT: ContextVar[str | None] = ContextVar("notifier_traceparent", default=None)


def with_traceparent(
    consumer: Callable[[RabbitMessage], Awaitable[None]],
) -> Callable[[RabbitMessage], Awaitable[None]]:
    async def on_message(message: RabbitMessage) -> None:
        value = (message.headers or {}).get("traceparent")
        token = TRACEPARENT.set(str(value) if value else None)
        try:
            await consumer(message)
        finally:
            TRACEPARENT.reset(token)

    return on_message


class LifecycleHandler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage: Storage | None = None  # built at start: its signing key is in the database

    async def __call__(self, session: AsyncSession, event: LifecycleEvent) -> None:
        key = event_key(event)
        links = await self.links(event)
        if event.conversation_id is not None:
            reply = compose(event, links)
            if reply is not None:
                await add_reply(session, event, key, reply)
        targets = await targets_for(session, event, self.settings.nextjs_url)
        if targets:
            traceparent = TRACEPARENT.get() or traceparent_for(key)
            await add_deliveries(session, event, key, targets, serialise(event, links), traceparent)

    async def links(self, event: LifecycleEvent) -> Links | None:
        result = event.snapshot.result
        if result is None:
            return None
        assert self.storage is not None, "the notifier's storage is built at start"
        return Links(
            video_url=await self.storage.url_for(result.video_key),
            thumbnail_url=await self.storage.url_for(result.thumbnail_key),
        )


async def add_reply(
    session: AsyncSession, event: LifecycleEvent, key: uuid.UUID, reply: Reply
) -> None:
    """At most one assistant message per event, however often the event arrives."""
    with tracer().start_as_current_span(
        "assistant message",
        attributes={
            "reelflow.conversation_id": str(event.conversation_id),
            "reelflow.lifecycle_event": event.event.value,
        },
    ) as span:
        inserted = await session.scalar(
            insert(ChatMessage)
            .values(
                id=uuid.uuid4(),
                conversation_id=event.conversation_id,
                role="assistant",
                content=reply.content,
                generation_id=event.generation_id,
                attachments=reply.attachments,
                source_event_id=str(key),
                # Event time, not handling time: events handled concurrently still read in order.
                created_at=event.occurred_at,
            )
            .on_conflict_do_nothing(index_elements=["source_event_id"])
            .returning(col(ChatMessage.id))
        )
        span.set_attribute("reelflow.message.created", inserted is not None)
    if inserted is not None:
        log.info(
            "Assistant message added", lifecycle_event=event.event.value, message=str(inserted)
        )
        # Open views of the conversation (the API's SSE streams) learn of it through the outbox.
        notice = ConversationMessageCreated(
            generation_id=event.generation_id,
            conversation_id=event.conversation_id,
            message_id=inserted,
            user_id=event.user_id,
        )
        enqueue(session, notice)


async def add_deliveries(
    session: AsyncSession,
    event: LifecycleEvent,
    key: uuid.UUID,
    targets: list[Target],
    payload: str,
    traceparent: str | None,
) -> None:
    """One delivery per target (unique on webhook-id and target) and its first attempt, now."""
    wid = webhook_id(key)
    rows = [
        {
            "id": uuid.uuid4(),
            "webhook_id": wid,
            "target": t.name,
            "endpoint_id": t.endpoint_id,
            "url": t.url,
            "event": event.event.value,
            "generation_id": event.generation_id,
            "payload": payload,
            "status": "pending",
            "created_at": event.occurred_at,
        }
        for t in targets
    ]
    created = (
        await session.scalars(
            insert(WebhookDelivery)
            .values(rows)
            .on_conflict_do_nothing(constraint="uq_webhook_deliveries_target")
            .returning(col(WebhookDelivery.id))
        )
    ).all()
    headers = {"traceparent": traceparent} if traceparent else None
    for delivery_id in created:
        enqueue(
            session,
            WebhookDeliveryRequested(
                generation_id=event.generation_id, delivery_id=delivery_id, attempt=1
            ),
            headers=headers,
        )
    if created:
        log.info(
            "Webhooks queued", lifecycle_event=event.event.value, webhook_id=wid, count=len(created)
        )
