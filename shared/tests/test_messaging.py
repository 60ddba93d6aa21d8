"""Outbox, inbox and the consumer wrapper against the real broker and database."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import cast

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, DeliveryMode, FieldValue
from shared.consumer import IdempotentConsumer, PermanentError
from shared.db.models import OutboxMessage
from shared.messages import GenerationRequested
from shared.outbox import enqueue
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import EVENTS, WorkQueue, declare
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

pytestmark = pytest.mark.usefixtures("clean_db")


@pytest.fixture
async def channel(prepared: Settings) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(prepared.amqp_url)
    async with connection:
        yield await connection.channel()


async def _tap(channel: AbstractChannel, key: str) -> aio_pika.abc.AbstractQueue:
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(await channel.get_exchange(EVENTS), routing_key=key)
    return queue


async def _get(
    queue: aio_pika.abc.AbstractQueue, within: float = 10
) -> aio_pika.abc.AbstractIncomingMessage:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        message = await queue.get(fail=False)
        if message is not None:
            await message.ack()
            return message
        assert asyncio.get_running_loop().time() < deadline, "no message arrived"
        await asyncio.sleep(0.05)


async def test_relay_publishes_committed_rows_persistent_and_marks_them(
    prepared: Settings, sessions, channel: AbstractChannel
) -> None:
    runtime = ServiceRuntime.build("test", prepared, pool_size=2)
    await runtime.start()
    try:
        tap = await _tap(channel, "generation.requested")
        message = GenerationRequested(generation_id=uuid.uuid4(), user_id=uuid.uuid4())
        async with sessions() as session, session.begin():
            enqueue(session, message)
        runtime.relay.wake()
        got = await _get(tap)
        assert got.type == "generation.requested"
        assert got.correlation_id == str(message.generation_id)
        assert got.delivery_mode == DeliveryMode.PERSISTENT
        assert GenerationRequested.model_validate_json(got.body) == message
        # Marked published right after the broker's confirm (which may be after delivery).
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            async with sessions() as session:
                row = (await session.execute(select(OutboxMessage))).scalars().one()
            if row.published_at is not None or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert row.published_at is not None
        assert str(row.message_id) == got.message_id
    finally:
        await runtime.close()


async def test_a_commit_through_the_services_sessions_hands_its_rows_to_the_relay(
    prepared: Settings, channel: AbstractChannel
) -> None:
    """No `wake()`: the commit itself hands the row over; it goes out and is marked, with
    nothing of the hand-over's bookkeeping in the message's headers."""
    runtime = ServiceRuntime.build("test", prepared, pool_size=2)
    await runtime.start()
    try:
        tap = await _tap(channel, "generation.requested")
        message = GenerationRequested(generation_id=uuid.uuid4(), user_id=uuid.uuid4())
        async with runtime.sessions() as session, session.begin():
            enqueue(session, message)
        got = await _get(tap, within=5)
        assert got.message_id is not None
        assert not any(k.startswith("reelflow.") for k in got.headers or {})
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            async with runtime.sessions() as session:
                row = (await session.execute(select(OutboxMessage))).scalars().one()
            if row.published_at is not None or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert row.published_at is not None and str(row.message_id) == got.message_id
        assert runtime.relay.published == 1  # once: the poll left the handed-over row alone
    finally:
        await runtime.close()


async def test_rolled_back_transaction_publishes_nothing(prepared: Settings, sessions) -> None:
    async def failing(session: AsyncSession) -> None:
        enqueue(session, GenerationRequested(generation_id=uuid.uuid4(), user_id=uuid.uuid4()))
        raise RuntimeError("the state change failed")

    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await failing(session)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


# Bound like a real consumer of generation.requested: a message must arrive under the routing
# key its type is published with (anything else is dead-lettered as misrouted).
TEST_QUEUE = WorkQueue("test.consumer", EVENTS, ("generation.requested",), delivery_limit=2)


async def _publish(channel: AbstractChannel, body: bytes, message_id: str, type_: str) -> None:
    await (await channel.get_exchange(EVENTS)).publish(
        aio_pika.Message(
            body, message_id=message_id, type=type_, delivery_mode=DeliveryMode.PERSISTENT
        ),
        routing_key="generation.requested",
    )


async def test_consumer_applies_once_dead_letters_poison_and_gives_up_on_failures(
    prepared: Settings, sessions, channel: AbstractChannel
) -> None:
    await channel.queue_delete(TEST_QUEUE.name)
    await channel.queue_delete(TEST_QUEUE.dlq)
    await declare(channel, (TEST_QUEUE,))
    seen: list[uuid.UUID] = []

    async def handler(session: AsyncSession, message: GenerationRequested) -> None:
        await session.execute(text("SELECT 1"))
        if message.user_id.int == 0:
            raise RuntimeError("always fails")  # transient-looking: redelivered, then DLQ
        if message.user_id.int == 1:
            raise PermanentError("cannot ever work")
        seen.append(message.generation_id)

    runtime = ServiceRuntime.build("test", prepared, pool_size=2)
    consumer = IdempotentConsumer(  # named after its queue, as every consumer is
        TEST_QUEUE.name, GenerationRequested, handler, runtime.sessions, runtime.relay
    )
    service = ConsumerService(runtime, [Subscription(TEST_QUEUE, consumer)])
    await service.start()
    try:
        good = GenerationRequested(generation_id=uuid.uuid4(), user_id=uuid.uuid4())
        await _publish(channel, good.model_dump_json().encode(), "m-good", good.TYPE)
        await _publish(channel, good.model_dump_json().encode(), "m-good", good.TYPE)
        await _publish(channel, b"not json at all", "m-garbage", good.TYPE)
        await _publish(channel, b"{}", "m-unknown", "no.such.type")
        fails = GenerationRequested(generation_id=uuid.uuid4(), user_id=uuid.UUID(int=0))
        await _publish(channel, fails.model_dump_json().encode(), "m-fails", fails.TYPE)
        never = GenerationRequested(generation_id=uuid.uuid4(), user_id=uuid.UUID(int=1))
        await _publish(channel, never.model_dump_json().encode(), "m-never", never.TYPE)
        after = GenerationRequested(generation_id=uuid.uuid4(), user_id=uuid.uuid4())
        await _publish(channel, after.model_dump_json().encode(), "m-after", after.TYPE)

        future = {**json.loads(after.model_dump_json()), "version": 2}
        await _publish(channel, json.dumps(future).encode(), "m-future", after.TYPE)

        dlq = await channel.get_queue(TEST_QUEUE.dlq)
        dead = {m.message_id: m for m in [await _get(dlq, within=20) for _ in range(5)]}
        assert set(dead) == {"m-garbage", "m-unknown", "m-fails", "m-never", "m-future"}
        # Each carries why: our reason header, or the broker's x-death for a spent limit.
        reasons = {k: (m.headers or {}).get("x-reelflow-reason", "") for k, m in dead.items()}
        assert str(reasons["m-garbage"]).startswith("unreadable: ")
        assert "unknown message type 'no.such.type'" in str(reasons["m-unknown"])
        assert "version" in str(reasons["m-future"])
        assert reasons["m-never"] == "permanent failure: cannot ever work"
        assert reasons["m-fails"] == ""
        # The broker's x-death is an array of tables; the header is typed as any AMQP value.
        x_death = cast("list[dict[str, FieldValue]]", dead["m-fails"].headers["x-death"])
        assert x_death[0]["reason"] == "delivery_limit"
        assert {(m.headers or {}).get("x-reelflow-queue") for k, m in dead.items()} == {
            TEST_QUEUE.name,
            None,  # m-fails, dead-lettered by the broker
        }
        # Messages are handled side by side: the last dead letter can be in before the last
        # good message's commit is. Wait for both commits (bounded), then check them.
        deadline = asyncio.get_running_loop().time() + 10
        while consumer.handled < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert seen == [good.generation_id, after.generation_id]  # once each, poison did not block
        assert consumer.duplicates == 1
        async with sessions() as session:
            ids = set(
                (
                    await session.execute(
                        text("SELECT message_id FROM inbox WHERE consumer = 'test.consumer'")
                    )
                ).scalars()
            )
        assert ids == {"m-good", "m-after"}  # failed handlers left no inbox entry
        ready = await service.ready()
        assert ready["ok"] and ready["consumers"] == {TEST_QUEUE.name: True}
    finally:
        await service.stop()
    await channel.queue_delete(TEST_QUEUE.name)
    await channel.queue_delete(TEST_QUEUE.dlq)
