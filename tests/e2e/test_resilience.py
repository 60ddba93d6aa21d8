"""A failing webhook receiver loses nothing, and every message delivered twice changes nothing."""

from __future__ import annotations

import aio_pika
import pytest
from aio_pika.abc import DeliveryMode
from sqlalchemy import text

from tests.e2e.conftest import Pipeline
from tests.e2e.harness import eventually
from tests.faults.chaos import CHAT_EVENTS
from tests.support import free_port

DETAILED = "A lighthouse on a cliff in a storm, waves crashing, dramatic light"
BODY = {
    "prompt": DETAILED,
    "auto_confirm": True,
    "params": {"aspect_ratio": "16:9", "duration_seconds": 4},
}


async def _count(p: Pipeline, sql: str, **params: object) -> int:
    async with p.sessions() as session:
        return int(await session.scalar(text(sql), params) or 0)


async def _state(p: Pipeline) -> dict[str, int]:
    """Everything a duplicate could change."""
    return {
        "versions": await _count(p, "SELECT coalesce(sum(version), 0) FROM generations"),
        "messages": await _count(p, "SELECT count(*) FROM messages"),
        "deliveries": await _count(p, "SELECT count(*) FROM webhook_deliveries"),
        "jobs": await _count(p, "SELECT count(*) FROM render_jobs"),
        "outbox": await _count(p, "SELECT count(*) FROM outbox"),
    }


@pytest.mark.parametrize("pipeline_overrides", [{"NEXTJS_URL": f"http://127.0.0.1:{free_port()}"}])
async def test_unreachable_nextjs_loses_no_generation_and_no_message(pipeline: Pipeline) -> None:
    p = pipeline
    conversation_id = await p.conversation()
    ids = [
        (await p.api.create({**BODY, "conversation_id": conversation_id})).json()["id"]
        for _ in range(2)
    ]
    for gen_id in ids:
        assert (await p.api.wait_status(gen_id, "completed", "failed", within=120))[
            "status"
        ] == "completed"

    async def all_failed() -> bool:
        pending = await _count(
            p, "SELECT count(*) FROM webhook_deliveries WHERE status <> 'failed'"
        )
        total = await _count(p, "SELECT count(*) FROM webhook_deliveries")
        return total > 0 and pending == 0

    await eventually(all_failed, within=60)
    # Every attempt is on record: one first try plus one per step of the schedule "1,1".
    attempts = await _count(p, "SELECT count(*) FROM webhook_attempts")
    deliveries = await _count(p, "SELECT count(*) FROM webhook_deliveries")
    assert attempts == deliveries * 3
    # The chat got its messages even though the webhook never arrived.
    with_video = await _count(
        p,
        "SELECT count(*) FROM messages WHERE conversation_id = :c AND attachments <> '[]'",
        c=conversation_id,
    )
    assert with_video == 2
    # Nothing is stuck in a queue: every consumer drained its work.
    assert await _count(p, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0


# Retries spread over ~30 s: the receiver is down for the whole render, then recovers.
@pytest.mark.parametrize("pipeline_overrides", [{"WEBHOOK_RETRY_SCHEDULE": "1,2,4,8,16"}])
async def test_failing_receiver_does_not_block_the_pipeline(pipeline: Pipeline) -> None:
    p = pipeline
    p.receiver.status_code = 500
    gen_id = (await p.api.create(BODY)).json()["id"]
    assert (await p.api.wait_status(gen_id, "completed", within=90))["status"] == "completed"
    p.receiver.status_code = 200  # it recovers: the retries deliver what it missed

    async def delivered() -> bool:
        return (
            await _count(p, "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            >= 3
        )

    await eventually(delivered, within=60)
    assert "generation.completed" in p.receiver.events(gen_id)


async def test_every_message_delivered_twice_changes_nothing(pipeline: Pipeline) -> None:
    p = pipeline
    conversation_id = await p.conversation()
    gen_id = (await p.api.create({**BODY, "conversation_id": conversation_id})).json()["id"]
    await p.api.wait_status(gen_id, "completed", within=90)

    seen: list[dict[str, int]] = []

    async def settled() -> dict[str, int] | None:
        # Webhooks delivered and the chat's messages written: the notifier writes them apart,
        # so no pending delivery alone does not mean the last assistant message is in. The
        # snapshot is read after both held, and taken once two reads in a row agree: a single
        # read could miss a row written in between.
        pending = await _count(
            p, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
        )
        expected = await _count(
            p, "SELECT count(*) FROM outbox WHERE routing_key = ANY(:k)", k=list(CHAT_EVENTS)
        )
        written = await _count(p, "SELECT count(*) FROM messages WHERE role = 'assistant'")
        if pending or written != expected:
            return None
        seen.append(await _state(p))
        return seen[-1] if seen[-2:-1] == seen[-1:] else None

    before = await eventually(settled, within=30)
    received_before = len(p.receiver.received)

    # Publish every message this generation produced again, with its original message id.
    async with p.sessions() as session:
        rows = (
            (
                await session.execute(
                    text(
                        "SELECT message_id, exchange, routing_key, type, correlation_id, body "
                        "FROM outbox ORDER BY id"
                    )
                )
            )
            .mappings()
            .all()
        )
    connection = await aio_pika.connect(p.settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for row in rows:
            exchange = await channel.get_exchange(row["exchange"])
            await exchange.publish(
                aio_pika.Message(
                    row["body"].encode(),
                    message_id=str(row["message_id"]),
                    type=row["type"],
                    correlation_id=row["correlation_id"],
                    delivery_mode=DeliveryMode.PERSISTENT,
                ),
                routing_key=row["routing_key"],
            )

    async def duplicates_seen() -> bool:
        # Each consumer recorded nothing new: the inbox already had every id.
        return await _count(p, "SELECT count(*) FROM inbox") > 0

    await eventually(duplicates_seen)
    import asyncio

    await asyncio.sleep(3)  # give every consumer time to (not) act on the duplicates
    assert await _state(p) == before
    assert len(p.receiver.received) == received_before
    assert (await p.api.get(gen_id))["status"] == "completed"
