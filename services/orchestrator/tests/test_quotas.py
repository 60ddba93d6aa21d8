"""An auto-confirmed generation is held to its user's quotas like a confirmation by hand: over
one, it fails with `quota_exceeded` instead of being confirmed (and nothing is rendered)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from orchestrator.main import build
from shared.db.models import Generation
from shared.messages import GenerationRequested
from shared.settings import Settings

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Rows

CLEAR = {"aspect_ratio": "16:9", "duration_seconds": 8}


async def test_auto_confirm_over_a_quota_fails_with_quota_exceeded(
    prepared: Settings, clean_db: None, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    limited = prepared.model_copy(
        update={"quota_max_concurrent_generations": 1, "quota_video_seconds_per_day": 100}
    )
    service = build(limited)
    await service.start()
    try:
        running = await rows.confirmed("processing", confirmed_at=datetime.now(UTC))
        gen = Generation(
            user_id=running.user_id,
            status="pending_clarification",
            prompt="A red fox trotting through fresh snow in a birch forest at dawn",
            params=CLEAR,
            auto_confirm=True,
        )
        async with rows.sessions() as s, s.begin():
            s.add(gen)
        events = await bus.lifecycle()
        await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))

        async def failed() -> bool:
            return (await rows.get(gen.id)).status == "failed"

        await eventually(failed)
        after = await rows.get(gen.id)
        assert after.error is not None and after.error["code"] == "quota_exceeded"
        assert after.confirmed_at is None
        await eventually(lambda: events.of(gen.id))
        assert events.routing_keys(gen.id) == ["generation.failed"]

        # Room again (the other one finished): the next auto-confirmed request goes through.
        async with rows.sessions() as s, s.begin():
            other = await s.get(Generation, running.id)
            assert other is not None
            other.status = "completed"
        second = Generation(
            user_id=running.user_id,
            status="pending_clarification",
            prompt="A red fox trotting through fresh snow in a birch forest at dawn",
            params=CLEAR,
            auto_confirm=True,
        )
        async with rows.sessions() as s, s.begin():
            s.add(second)
        await bus.publish(GenerationRequested(generation_id=second.id, user_id=second.user_id))

        async def confirmed() -> bool:
            return (await rows.get(second.id)).status == "confirmed"

        await eventually(confirmed)
        assert (await rows.get(second.id)).confirmed_at is not None
    finally:
        await service.stop()
