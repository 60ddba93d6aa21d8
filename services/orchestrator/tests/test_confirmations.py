"""generation.confirmed: one render command per generation, whatever arrives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.domain.transitions import snapshot
from shared.messages import LifecycleEvent
from shared.state_machine import Event
from shared.topology import COMMANDS

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Rows, Running


def confirmed_event(gen: Any) -> LifecycleEvent:
    return LifecycleEvent(
        generation_id=gen.id,
        event=Event.CONFIRMED,
        user_id=gen.user_id,
        snapshot=snapshot(gen),
    )


async def test_two_confirmed_events_dispatch_one_render(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    commands = await bus.tap(COMMANDS, "render.requested")
    gen = await rows.confirmed()
    # The same event delivered twice, then a different confirmed event for the same generation.
    first = await bus.publish(confirmed_event(gen))
    await bus.publish(confirmed_event(gen), message_id=first)
    await bus.publish(confirmed_event(gen))
    consumer = orchestrator.consumer("orchestrator.confirmations")
    await eventually(lambda: consumer.handled == 2 and consumer.duplicates == 1)
    await eventually(lambda: commands.of(gen.id))
    assert await rows.outbox(gen.id) == ["render.requested"]
    assert (await rows.get(gen.id)).version == 1  # dispatching is not a status change
    assert len(commands.of(gen.id)) == 1


async def test_no_render_for_a_generation_cancelled_after_confirming(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.confirmed("cancelled")
    await bus.publish(confirmed_event(gen))
    consumer = orchestrator.consumer("orchestrator.confirmations")
    await eventually(lambda: consumer.handled == 1)
    assert await rows.outbox(gen.id) == []
