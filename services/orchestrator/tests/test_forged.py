"""Messages from the bus are validated like HTTP input: a forged report changes nothing and is
dead-lettered."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from shared.messages import RenderReported
from shared.schemas import RenderResult

if TYPE_CHECKING:
    from conftest import Bus, Rows, Running


def forged_result(video: str, thumb: str) -> RenderResult:
    return RenderResult(
        video_key=video,
        thumbnail_key=thumb,
        duration_seconds=8,
        file_size_bytes=1,
        resolution="1280x720",
        format="mp4",
        processing_time_ms=1,
    )


@pytest.mark.parametrize("status", ["pending_clarification", "pending_confirmation"])
async def test_a_completion_for_a_generation_never_dispatched_is_dead_lettered(
    orchestrator: Running, bus: Bus, rows: Rows, status: str
) -> None:
    gen = await rows.generation(status=status)
    report = RenderReported(
        generation_id=gen.id,
        kind="succeeded",
        result=forged_result(
            f"videos/{gen.user_id}/{gen.id}.mp4", f"videos/{gen.user_id}/{gen.id}.jpg"
        ),
    )
    message_id = await bus.publish(report)
    assert await bus.dead_letters("orchestrator.reports.dlq", 1) == {message_id}
    after = await rows.get(gen.id)
    assert (after.status, after.version, after.result) == (status, gen.version, None)
    assert await rows.outbox(gen.id) == []


async def test_a_completion_naming_another_generations_video_is_dead_lettered(
    orchestrator: Running, bus: Bus, rows: Rows
) -> None:
    victim = await rows.confirmed("completed")
    gen = await rows.confirmed("processing")
    report = RenderReported(
        generation_id=gen.id,
        kind="succeeded",
        result=forged_result(
            f"videos/{victim.user_id}/{victim.id}.mp4", f"videos/{victim.user_id}/{victim.id}.jpg"
        ),
    )
    message_id = await bus.publish(report)
    assert await bus.dead_letters("orchestrator.reports.dlq", 1) == {message_id}
    after = await rows.get(gen.id)
    assert (after.status, after.result) == ("processing", None)
