"""A compromised service's RabbitMQ user cannot put forged facts in front of another service.

The worker's user may publish only `render.*` on `reelflow.events`, so it cannot publish a
`generation.completed` (test_rabbitmq_users.py). Since every service declares the whole
topology at start, its user may also bind: here the worker binds the notifier's queue to its own
`render.*` key and publishes a lifecycle event under it. The broker lets that through; what
stops it is the consumer, which checks that a message came with the routing key its type is
published under (`shared.consumer.read_or_reject`): the forgery goes to `notifier.events.dlq`.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid

import aio_pika
import pytest
import shared.topology as topology
from shared.messages import GenerationSnapshot, LifecycleEvent
from shared.state_machine import Event

from tests.infra import PrivateRabbit

from .test_rabbitmq_users import connect, loaded, rabbit  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmq-server") is None,
    reason="needs a local RabbitMQ installation",
)


async def _first(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage | None:
    """The queue's first message, waiting up to 5 s for one (None if none came)."""
    for _ in range(50):
        message = await queue.get(fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.1)
    return None


def forged_completion() -> LifecycleEvent:
    gid = uuid.uuid4()
    return LifecycleEvent(
        generation_id=gid,
        event=Event.COMPLETED,
        user_id=uuid.uuid4(),
        conversation_id=None,
        snapshot=GenerationSnapshot.model_validate(
            {
                "status": "completed",
                "prompt": "forged",
                "params": {},
                "job_id": str(gid),
                "version": 9,
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
            }
        ),
    )


async def test_a_worker_can_route_a_forgery_to_the_notifier_only_under_its_own_key(
    loaded: PrivateRabbit,  # noqa: F811
) -> None:
    forged = forged_completion()
    async with connect(loaded, "worker") as worker:
        channel = await worker.channel(publisher_confirms=True)
        await topology.declare(channel)
        events = await channel.get_exchange(topology.EVENTS)
        queue = await channel.get_queue(topology.NOTIFIER_EVENTS.name)
        await queue.bind(events, routing_key="render.*")  # what the broker allows
        await events.publish(
            aio_pika.Message(
                forged.model_dump_json().encode(),
                message_id=str(uuid.uuid4()),
                type=forged.TYPE,
                correlation_id=str(forged.generation_id),
            ),
            routing_key="render.started",
        )
        await queue.unbind(events, routing_key="render.*")
    # It reached the notifier's queue, under a key no lifecycle event is published with.
    guest = await aio_pika.connect(loaded.url)
    async with guest:
        reader = await guest.channel()
        queue = await reader.get_queue(topology.NOTIFIER_EVENTS.name)
        message = await _first(queue)
        assert message is not None
        assert message.routing_key == "render.started" and message.type == forged.TYPE
        # The notifier's consumer reads it as it reads every message: refused, dead-lettered.
        from faststream.rabbit.message import RabbitMessage
        from shared.consumer import read_or_reject

        assert isinstance(message, aio_pika.IncomingMessage)
        wrapped = RabbitMessage(raw_message=message, body=message.body)
        assert await read_or_reject(wrapped, LifecycleEvent, "notifier.events") is None
        dlq = await reader.get_queue(topology.NOTIFIER_EVENTS.dlq)
        dead = await _first(dlq)
        assert dead is not None and dead.message_id == message.message_id
        reason = str(dead.headers["x-reelflow-reason"])
        assert reason.startswith("unreadable: ") and "routing key 'render.started'" in reason
        assert dead.headers["x-reelflow-queue"] == "notifier.events"
        await dead.ack()


async def test_lifecycle_events_under_their_own_key_still_pass(
    loaded: PrivateRabbit,  # noqa: F811
) -> None:
    """The orchestrator's genuine event, under its own key, is read as before."""
    event = forged_completion()
    async with connect(loaded, "orchestrator") as orchestrator:
        channel = await orchestrator.channel(publisher_confirms=True)
        await topology.declare(channel)
        events = await channel.get_exchange(topology.EVENTS)
        await events.publish(
            aio_pika.Message(
                event.model_dump_json().encode(), message_id=str(uuid.uuid4()), type=event.TYPE
            ),
            routing_key=event.routing_key,
        )
    guest = await aio_pika.connect(loaded.url)
    async with guest:
        reader = await guest.channel()
        queue = await reader.get_queue(topology.NOTIFIER_EVENTS.name)
        message = await _first(queue)
        assert isinstance(message, aio_pika.IncomingMessage)
        from faststream.rabbit.message import RabbitMessage
        from shared.consumer import read_or_reject

        parsed = await read_or_reject(
            RabbitMessage(raw_message=message, body=message.body), LifecycleEvent, "notifier"
        )
        assert parsed is not None and parsed.generation_id == event.generation_id
        await message.ack()
