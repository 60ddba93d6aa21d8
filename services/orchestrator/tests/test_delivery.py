"""At-least-once delivery: duplicates change nothing, poison dead-letters without blocking."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from shared.messages import GenerationRequested, RenderReported
from shared.schemas import Progress
from shared.settings import Settings

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Rows, Running


async def test_generation_requested_twice_changes_nothing_the_second_time(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.generation(prompt="a dog")
    message = GenerationRequested(generation_id=gen.id, user_id=gen.user_id)
    message_id = await bus.publish(message)
    consumer = orchestrator.consumer("orchestrator.requests")
    await eventually(lambda: consumer.handled == 1)
    first = await rows.get(gen.id)

    await bus.publish(message, message_id=message_id)  # the identical AMQP message again
    await eventually(lambda: consumer.duplicates == 1)
    second = await rows.get(gen.id)
    assert (
        (second.version, second.updated_at)
        == (first.version, first.updated_at)
        == (
            2,
            first.updated_at,
        )
    )
    assert await rows.outbox(gen.id) == ["generation.clarification_requested"]


async def test_a_re_sent_request_does_not_ask_again(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    """A second generation.requested (another message id) finds the same questions open."""
    gen = await rows.generation(prompt="a dog")
    message = GenerationRequested(generation_id=gen.id, user_id=gen.user_id)
    await bus.publish(message)
    await bus.publish(message)
    consumer = orchestrator.consumer("orchestrator.requests")
    await eventually(lambda: consumer.handled == 2)
    assert (await rows.get(gen.id)).version == 2
    assert await rows.outbox(gen.id) == ["generation.clarification_requested"]


async def test_render_report_twice_changes_nothing_the_second_time(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.confirmed()
    report = RenderReported(
        generation_id=gen.id, kind="progress", progress=Progress(stage="generating", percent=20)
    )
    message_id = await bus.publish(report)
    consumer = orchestrator.consumer("orchestrator.reports")
    await eventually(lambda: consumer.handled == 1)
    await bus.publish(report, message_id=message_id)
    await eventually(lambda: consumer.duplicates == 1)
    assert (await rows.get(gen.id)).version == 2
    assert await rows.outbox(gen.id) == ["generation.processing"]


async def test_poison_messages_dead_letter_and_do_not_block_the_queue(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    key = "generation.requested"
    await bus.publish_raw(b"{not json", type_=key, routing_key=key, message_id="poison-garbage")
    await bus.publish_raw(b"{}", type_="no.such.type", routing_key=key, message_id="poison-type")
    await bus.publish_raw(
        b'{"version": 2, "generation_id": "00000000-0000-0000-0000-000000000000"}',
        type_=key,
        routing_key=key,
        message_id="poison-version",
    )
    gen = await rows.generation(prompt="a dog")
    await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))

    async def asked() -> bool:
        return (await rows.get(gen.id)).version == 2

    await eventually(asked)
    dead = await bus.dead_letters("orchestrator.requests.dlq", 3)
    assert dead == {"poison-garbage", "poison-type", "poison-version"}


async def test_health_and_readiness(orchestrator: Running, prepared: Settings) -> None:
    base = f"http://127.0.0.1:{prepared.metrics_port_orchestrator}"
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["consumers"] == {
            "orchestrator.requests": True,
            "orchestrator.confirmations": True,
            "orchestrator.reports": True,
        }
        assert "reelflow_up" in (await client.get("/metrics")).text
