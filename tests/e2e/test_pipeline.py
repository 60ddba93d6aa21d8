"""The happy path of CONTRACT.md and the clarification path, all four services, real broker,
real database, real HTTP."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest
import standardwebhooks
from shared.db.models import ChatMessage, Generation
from sqlalchemy import select, text
from sqlmodel import col
from veo_worker.probe import probe_video

from tests.e2e.conftest import WORKER_API_KEY, Pipeline
from tests.e2e.harness import eventually

DETAILED = "A red fox running through fresh snow at dawn, cinematic tracking shot"
SEED_KEYS = {
    "event",
    "jobId",
    "generationId",
    "userId",
    "conversationId",
    "status",
    "result",
    "error",
    "progress",
    "timestamp",
}


async def _messages(p: Pipeline, conversation_id: str) -> list[ChatMessage]:
    async with p.sessions() as session:
        rows = await session.execute(
            select(ChatMessage)
            .where(col(ChatMessage.conversation_id) == conversation_id)
            .order_by(col(ChatMessage.created_at))
        )
        return list(rows.scalars())


async def test_auto_confirm_reaches_completed_with_a_real_probed_video(pipeline: Pipeline) -> None:
    p = pipeline
    conversation_id = await p.conversation()
    created = await p.api.create(
        {
            "prompt": DETAILED,
            "auto_confirm": True,
            "conversation_id": conversation_id,
            "params": {"aspect_ratio": "16:9", "duration_seconds": 4},
        }
    )
    assert created.status_code == 201, created.text
    gen_id = created.json()["id"]
    assert created.json()["status"] == "pending_clarification"

    done = await p.api.wait_status(gen_id, "completed", "failed", within=90)
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["resolution"] == "1280x720"
    assert result["format"] == "mp4"
    assert abs(result["duration_seconds"] - 4) < 0.1

    # The stored file is a real MP4 whose duration and size match the request: probed, not trusted.
    async with httpx.AsyncClient() as anon:  # media links need no key
        video = await anon.get(result["video_url"])
        thumb = await anon.get(result["thumbnail_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    assert len(video.content) == result["file_size_bytes"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        path.write_bytes(video.content)
        info = probe_video(path)
    assert (info.width, info.height, info.codec) == (1280, 720, "h264")
    assert abs(info.duration_seconds - 4) < 0.1

    # The Next.js receiver got the seed payload, authenticated and signed.
    async def webhooks_arrived() -> bool:
        return "generation.completed" in p.receiver.events(gen_id)

    await eventually(webhooks_arrived, within=30)
    assert p.receiver.events(gen_id)[:1] == ["generation.confirmed"]
    completed = next(r for r in p.receiver.received if r["json"]["event"] == "generation.completed")
    body = completed["json"]
    assert set(body) >= SEED_KEYS
    assert body["status"] == "completed" and body["generationId"] == gen_id
    assert body["userId"] == p.user_id and body["conversationId"] == conversation_id
    assert body["result"]["resolution"] == "1280x720" and body["result"]["format"] == "mp4"
    assert body["result"]["fileSize"] == result["file_size_bytes"]
    assert completed["headers"]["authorization"] == f"Bearer {WORKER_API_KEY}"
    import base64

    verifier = standardwebhooks.Webhook(
        "whsec_" + base64.b64encode(WORKER_API_KEY.encode()).decode()
    )
    verifier.verify(completed["body"], completed["headers"])

    # The conversation holds the assistant messages, the last one with the video attached.
    async def messages_written() -> list[ChatMessage] | None:
        rows = await _messages(p, conversation_id)
        return rows if any(m.attachments for m in rows) else None

    rows = await eventually(messages_written, within=30)
    assert all(m.role == "assistant" for m in rows)
    assert rows[-1].attachments[0]["type"] == "video"


async def test_clarification_answers_confirm_and_complete(pipeline: Pipeline) -> None:
    p = pipeline
    gen_id = (await p.api.create({"prompt": "a fox"})).json()["id"]

    async def asked() -> dict | None:
        gen = await p.api.get(gen_id)
        return gen if gen["questions"] else None

    gen = await eventually(asked, within=30)
    assert gen["status"] == "pending_clarification"
    ids = [q["id"] for q in gen["questions"]]
    assert ids == ["aspect_ratio", "duration_seconds", "detail"]

    answered = await p.api.http.post(
        f"/v1/generations/{gen_id}/answers",
        json={
            "answers": {
                "aspect_ratio": "9:16",
                "duration_seconds": "4",
                "detail": "in deep snow at dawn",
            }
        },
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "pending_confirmation"
    assert answered.json()["estimated_cost_usd"] is not None

    confirmed = await p.api.http.post(f"/v1/generations/{gen_id}/confirm")
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "confirmed"

    done = await p.api.wait_status(gen_id, "completed", "failed", within=90)
    assert done["status"] == "completed", done
    assert done["result"]["resolution"] == "720x1280"


@pytest.mark.parametrize("start", ["pending_clarification", "pending_confirmation", "confirmed"])
async def test_cancel_from_a_live_status_and_illegal_moves_change_nothing(
    pipeline: Pipeline, start: str
) -> None:
    p = pipeline
    body = {"prompt": DETAILED, "params": {"aspect_ratio": "16:9", "duration_seconds": 8}}
    if start == "pending_clarification":
        body = {"prompt": "a fox"}
    gen_id = (await p.api.create(body)).json()["id"]
    if start == "pending_clarification":
        await eventually(lambda: _has_questions(p, gen_id), within=30)
    else:
        await p.api.wait_status(gen_id, "pending_confirmation", within=30)
    if start == "confirmed":
        # Hold the worker back: a confirmed generation cancelled before it renders.
        await p.api.http.post(f"/v1/generations/{gen_id}/confirm")

    cancelled = await p.api.http.post(f"/v1/generations/{gen_id}/cancel")
    if cancelled.status_code == 409:  # the worker finished first: cancel of a terminal is 409
        assert (await p.api.get(gen_id))["status"] == "completed"
        return
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"

    async with p.sessions() as session:
        before = await session.scalar(
            text("SELECT version FROM generations WHERE id = :i"), {"i": gen_id}
        )
    for action in ("confirm", "cancel", "answers"):
        payload = {"answers": {"aspect_ratio": "16:9"}} if action == "answers" else None
        response = await p.api.http.post(f"/v1/generations/{gen_id}/{action}", json=payload)
        assert response.status_code == 409, (action, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    async with p.sessions() as session:
        gen = await session.get(Generation, gen_id)
        assert gen is not None and gen.status == "cancelled" and gen.version == before


async def _has_questions(p: Pipeline, gen_id: str) -> bool:
    return bool((await p.api.get(gen_id))["questions"])


async def test_seed_status_route_reads_what_the_seed_hook_reads(pipeline: Pipeline) -> None:
    p = pipeline
    gen_id = (
        await p.api.create(
            {
                "prompt": DETAILED,
                "auto_confirm": True,
                "params": {"aspect_ratio": "16:9", "duration_seconds": 4},
            }
        )
    ).json()["id"]
    await p.api.wait_status(gen_id, "completed", within=90)
    response = await p.api.http.get(f"/api/generations/{gen_id}/status")
    assert response.status_code == 200
    seed = response.json()["generation"]
    assert seed["id"] == gen_id and seed["status"] == "completed"
    assert seed["resultUrl"].startswith("http") and seed["thumbnailUrl"].startswith("http")
    assert seed["error"] is None and seed["updatedAt"]
