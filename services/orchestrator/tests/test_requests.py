"""generation.requested: the clarifier's questions, or a priced spec (and auto-confirm)."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from orchestrator.handlers import RENDER_REQUESTED_WITH_IT
from orchestrator.main import build
from pydantic import SecretStr
from shared.messages import GenerationRequested, RenderRequested
from shared.settings import Settings
from shared.topology import COMMANDS

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Rows, Running

VAGUE = "a cat"


async def test_vague_prompt_gets_three_questions(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    events = await bus.lifecycle()
    gen = await rows.generation(prompt=VAGUE)
    await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))

    async def asked() -> bool:
        return bool((await rows.get(gen.id)).questions)

    await eventually(asked)
    after = await rows.get(gen.id)
    assert after.status == "pending_clarification"
    assert [q["id"] for q in after.questions] == ["aspect_ratio", "duration_seconds", "detail"]
    assert [c["value"] for c in after.questions[0]["choices"]] == ["16:9", "9:16"]
    assert after.spec is None
    assert after.version == 2
    await eventually(lambda: events.of(gen.id))
    assert events.routing_keys(gen.id) == ["generation.clarification_requested"]


async def test_complete_request_awaits_confirmation_with_spec_and_cost(
    prepared: Settings, clean_db: None, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    # Priced as the Veo provider would be (the orchestrator never calls Veo itself).
    veo = prepared.model_copy(
        update={"video_provider": "veo", "gemini_api_key": SecretStr("not-used")}
    )
    service = build(veo)
    await service.start()
    try:
        events = await bus.lifecycle()
        gen = await rows.generation(params={"aspect_ratio": "9:16", "duration_seconds": 8})
        await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))

        async def moved() -> bool:
            return (await rows.get(gen.id)).status == "pending_confirmation"

        await eventually(moved)
    finally:
        await service.stop()
    after = await rows.get(gen.id)
    assert after.spec == {
        "model": "veo-3.1-fast-generate-preview",
        "prompt": gen.prompt,  # as written, never rewritten
        "aspect_ratio": "9:16",
        "resolution": "720p",
        "duration_seconds": 8,
        "negative_prompt": None,
        "generate_audio": True,
        "seed": None,
    }
    assert after.estimated_cost_usd == Decimal("1.2000")  # 8 s x $0.15
    assert after.questions == []
    await eventually(lambda: events.of(gen.id))
    assert events.routing_keys(gen.id) == ["generation.awaiting_confirmation"]


async def test_answers_complete_the_spec_with_the_detail_appended(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.generation(
        prompt=VAGUE,
        answers={"aspect_ratio": "16:9", "duration_seconds": "4", "detail": "a tabby on a sofa"},
    )
    await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))

    async def moved() -> bool:
        return (await rows.get(gen.id)).status == "pending_confirmation"

    await eventually(moved)
    spec = (await rows.get(gen.id)).spec
    assert spec is not None
    assert spec["prompt"] == "a cat. a tabby on a sofa"
    assert (spec["model"], spec["aspect_ratio"], spec["duration_seconds"]) == ("local", "16:9", 4)


async def test_auto_confirm_dispatches_exactly_one_render(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    events = await bus.lifecycle()
    commands = await bus.tap(COMMANDS, "render.requested")
    gen = await rows.generation(
        auto_confirm=True, params={"aspect_ratio": "16:9", "duration_seconds": 4}
    )
    await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))

    await eventually(lambda: commands.of(gen.id))
    after = await rows.get(gen.id)
    assert after.status == "confirmed"
    assert after.estimated_cost_usd == Decimal(0)  # the local provider is free
    command = RenderRequested.model_validate_json(commands.of(gen.id)[0].body)
    assert command.spec.model_dump(mode="json") == after.spec
    assert command.user_id == gen.user_id
    # Its own confirmed event says the render went out with it: orchestrator.confirmations
    # acks it without a transaction (no claim, no second look at the dispatch guard).
    await eventually(lambda: events.of(gen.id))
    assert events.routing_keys(gen.id) == ["generation.confirmed"]
    assert events.of(gen.id)[0].headers[RENDER_REQUESTED_WITH_IT] == 1
    confirmations = orchestrator.consumer("orchestrator.confirmations")
    await eventually(lambda: confirmations.needed_nothing == 1)
    assert (confirmations.handled, confirmations.duplicates) == (0, 0)
    assert await rows.outbox(gen.id, "render.requested") == ["render.requested"]
    assert len(commands.of(gen.id)) == 1


async def test_request_for_a_generation_cancelled_meanwhile_does_nothing(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.generation(status="cancelled", prompt=VAGUE)
    await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))
    requests = orchestrator.consumer("orchestrator.requests")
    await eventually(lambda: requests.handled == 1)
    after = await rows.get(gen.id)
    assert (after.status, after.version, after.questions) == ("cancelled", 1, [])
    assert await rows.outbox(gen.id) == []


async def test_unsupported_model_fails_as_invalid_request(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.generation(
        params={"model": "veo-3.1-generate-preview", "aspect_ratio": "16:9", "duration_seconds": 4}
    )
    await bus.publish(GenerationRequested(generation_id=gen.id, user_id=gen.user_id))

    async def failed() -> bool:
        return (await rows.get(gen.id)).status == "failed"

    await eventually(failed)
    error = (await rows.get(gen.id)).error
    assert error is not None and error["code"] == "invalid_request"
    assert await rows.outbox(gen.id) == ["generation.failed"]
