"""Fixtures for the orchestrator's tests: the service running in the test's event loop, rows
written directly, and taps on the exchanges to see what it publishes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, DeliveryMode
from orchestrator.main import OrchestratorService, build
from shared.consumer import PlainIdempotentConsumer
from shared.db.models import Generation, OutboxMessage, User
from shared.messages import Message
from shared.runtime import ConsumerService
from shared.settings import Settings
from shared.topology import EVENTS, LIFECYCLE_KEYS, NOTIFIER_EVENTS, WORKER_RENDER
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from tests.support import eventually, record_bound


@dataclass
class Tap:
    """An exclusive queue bound to an exchange, recording every message routed to it."""

    messages: list[AbstractIncomingMessage] = field(default_factory=list)

    def of(self, generation_id: uuid.UUID, type_: str | None = None) -> list[Any]:
        return [
            m
            for m in self.messages
            if m.correlation_id == str(generation_id) and (type_ is None or m.type == type_)
        ]

    def routing_keys(self, generation_id: uuid.UUID) -> list[str | None]:
        return [m.routing_key for m in self.of(generation_id)]


@dataclass
class Bus:
    channel: AbstractChannel

    async def tap(self, exchange: str, *keys: str) -> Tap:
        return Tap(await record_bound(self.channel, exchange, *keys))

    async def lifecycle(self) -> Tap:
        """Every lifecycle event (generation.clarification_requested, …, generation.cancelled)."""
        return await self.tap(EVENTS, *LIFECYCLE_KEYS)

    async def publish(
        self, message: Message, *, message_id: str | None = None, exchange: str = EVENTS
    ) -> str:
        message_id = message_id or str(uuid.uuid4())
        await self.publish_raw(
            message.model_dump_json().encode(),
            type_=message.TYPE,
            routing_key=message.routing_key,
            message_id=message_id,
            correlation_id=str(message.generation_id),
            exchange=exchange,
        )
        return message_id

    async def publish_raw(
        self,
        body: bytes,
        *,
        type_: str | None,
        routing_key: str,
        message_id: str,
        correlation_id: str | None = None,
        exchange: str = EVENTS,
    ) -> None:
        await (await self.channel.get_exchange(exchange)).publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                type=type_,
                correlation_id=correlation_id,
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
            mandatory=True,
        )

    async def dead_letters(self, queue: str, count: int, *, within: float = 20.0) -> set[str]:
        """Take `count` messages from `queue` (a DLQ); their message ids."""
        dlq = await self.channel.get_queue(queue)
        ids: set[str] = set()

        async def take() -> bool:
            message = await dlq.get(fail=False)
            if message is not None:
                await message.ack()
                ids.add(str(message.message_id))
            return len(ids) >= count

        await eventually(take, within=within)
        return ids


@pytest.fixture
async def bus(prepared: Settings) -> AsyncIterator[Bus]:
    connection = await aio_pika.connect(prepared.amqp_url)
    async with connection:
        yield Bus(await connection.channel())


@dataclass
class Running:
    service: ConsumerService

    def consumer(self, queue: str) -> PlainIdempotentConsumer[Any]:
        assert isinstance(self.service, OrchestratorService)
        for consumer in self.service.consumers:
            if consumer.queue == queue:
                assert isinstance(consumer.handler, PlainIdempotentConsumer)
                return consumer.handler
        raise KeyError(queue)


@pytest.fixture
async def orchestrator(prepared: Settings, clean_db: None) -> AsyncIterator[Running]:
    service = build(prepared)
    await service.start()
    try:
        yield Running(service)
    finally:
        await service.stop()
        # Nobody consumes these here; leave no commands or events for later tests' services.
        connection = await aio_pika.connect(prepared.amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in (WORKER_RENDER.name, NOTIFIER_EVENTS.name):
                await (await channel.get_queue(name)).purge()


SPEC: dict[str, Any] = {
    "model": "local",
    "prompt": "A red fox trotting through fresh snow in a birch forest at dawn",
    "aspect_ratio": "16:9",
    "resolution": "720p",
    "duration_seconds": 4,
    "negative_prompt": None,
    "generate_audio": False,
    "seed": None,
}


@dataclass
class Rows:
    sessions: async_sessionmaker[AsyncSession]

    async def confirmed(self, status: str = "confirmed", **fields: Any) -> Generation:
        """A generation past confirmation, with a complete spec."""
        return await self.generation(status=status, spec=dict(SPEC), **fields)

    async def generation(self, **fields: Any) -> Generation:
        """A user and a generation owned by it (defaults: a fresh, clear request)."""
        user = User(name="test", api_key_prefix="rf_test", api_key_sha256=uuid.uuid4().hex)
        values: dict[str, Any] = {
            "status": "pending_clarification",
            "prompt": "A red fox trotting through fresh snow in a birch forest at dawn",
            "params": {},
            **fields,
        }
        gen = Generation(user_id=user.id, **values)
        async with self.sessions() as session, session.begin():
            session.add(user)
            await session.flush()
            session.add(gen)
        return gen

    async def get(self, generation_id: uuid.UUID) -> Generation:
        async with self.sessions() as session:
            gen = await session.get(Generation, generation_id)
            assert gen is not None
            return gen

    async def outbox(self, generation_id: uuid.UUID, type_: str | None = None) -> list[str]:
        """Routing keys of the outbox rows about this generation, in order."""
        query = select(col(OutboxMessage.routing_key)).where(
            col(OutboxMessage.correlation_id) == str(generation_id)
        )
        if type_ is not None:
            query = query.where(col(OutboxMessage.type) == type_)
        async with self.sessions() as session:
            return list((await session.execute(query.order_by(col(OutboxMessage.id)))).scalars())

    async def count_outbox(self) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(OutboxMessage)) or 0)


@pytest.fixture
def rows(sessions: async_sessionmaker[AsyncSession]) -> Rows:
    return Rows(sessions)


Eventually = Callable[..., Awaitable[Any]]


@pytest.fixture(name="eventually")
def eventually_fixture() -> Eventually:
    return eventually
