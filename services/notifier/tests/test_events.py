"""Lifecycle events become assistant messages and webhook deliveries, exactly once each."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import pytest
from notifier.intake import CONSUMER
from notifier.main import NotifierService
from shared.db.models import ChatMessage, Generation, WebhookDelivery
from shared.media import LinkSigner, thumbnail_key, video_key
from shared.messages import LifecycleEvent
from shared.schemas import Choice, ErrorInfo, Progress, Question, RenderResult, RenderSpec
from shared.state_machine import Event, Status
from shared.topology import NOTIFIER_EVENTS
from sqlalchemy import select, text
from sqlmodel import col
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from .conftest import WORKER_API_KEY, World, eventually, lifecycle

T = TypeVar("T")

NEXTJS_VERIFIER = Webhook("whsec_" + base64.b64encode(WORKER_API_KEY.encode()).decode())


async def messages(world: World) -> list[ChatMessage]:
    async with world.sessions() as session:
        rows = await session.scalars(
            select(ChatMessage)
            .where(col(ChatMessage.conversation_id) == world.conversation_id)
            .order_by(col(ChatMessage.created_at))
        )
        return list(rows)


async def deliveries(world: World) -> list[WebhookDelivery]:
    async with world.sessions() as session:
        rows = await session.scalars(
            select(WebhookDelivery).order_by(col(WebhookDelivery.created_at))
        )
        return list(rows)


def completed(world: World, gen: Generation | None = None) -> LifecycleEvent:
    gen = gen or world.generation
    result = RenderResult(
        video_key=video_key(world.user_id, gen.id),
        thumbnail_key=thumbnail_key(world.user_id, gen.id),
        duration_seconds=8.0,
        file_size_bytes=1234567,
        resolution="1280x720",
        format="mp4",
        processing_time_ms=41234,
    )
    return lifecycle(gen, Event.COMPLETED, Status.COMPLETED, result=result)


async def test_completed_event_gives_a_video_message_and_a_signed_seed_webhook(
    world: World, notifier, receivers, publish, env
) -> None:
    nextjs = await receivers()
    await notifier(NEXTJS_URL=nextjs.base)
    event = completed(world)
    await publish(event, headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})

    hit = await eventually(lambda: _first(nextjs.hits))
    assert hit.path == "/api/webhooks/worker"
    assert hit.headers["Authorization"] == f"Bearer {WORKER_API_KEY}"
    # The event's trace continues at the receiver, under the attempt's own span.
    assert hit.headers["traceparent"].split("-")[:2] == ["00", "a" * 32]
    assert hit.headers["traceparent"].split("-")[2] != "b" * 16
    assert hit.headers["Content-Type"] == "application/json"
    body = NEXTJS_VERIFIER.verify(hit.body, hit.headers)

    # The seed's payload, key for key, from the event's snapshot.
    assert list(body) == [
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
    ]
    gen = world.generation
    assert body["event"] == "generation.completed" and body["status"] == "completed"
    assert body["jobId"] == body["generationId"] == str(gen.id)
    assert body["userId"] == str(world.user_id)
    assert body["conversationId"] == str(world.conversation_id)
    assert body["error"] is None and body["progress"] is None
    assert body["timestamp"].endswith("Z")
    assert datetime.fromisoformat(body["timestamp"]) == event.occurred_at.replace(
        microsecond=event.occurred_at.microsecond // 1000 * 1000
    )
    result = body["result"]
    assert {k: result[k] for k in ("duration", "fileSize", "resolution", "format")} == {
        "duration": 8,
        "fileSize": 1234567,
        "resolution": "1280x720",
        "format": "mp4",
    }
    assert result["processingTime"] == 41234
    # Links are signed and verifiable with the media key the API serves them with.
    signer = LinkSigner(env["MEDIA_SIGNING_KEY"].encode(), 3600)
    for url, key in (
        (result["videoUrl"], video_key(world.user_id, gen.id)),
        (result["thumbnailUrl"], thumbnail_key(world.user_id, gen.id)),
    ):
        assert f"/media/{key}?" in url
        query = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
        assert signer.verify(key, query["exp"], query["sig"])

    # The receiver's side: a tampered body or a stale timestamp fails verification.
    with pytest.raises(WebhookVerificationError):
        NEXTJS_VERIFIER.verify(hit.body.replace(b"completed", b"cancelled"), hit.headers)
    stale = datetime.now(UTC) - timedelta(minutes=10)
    resigned = {
        **hit.headers,
        "webhook-timestamp": str(int(stale.timestamp())),
        "webhook-signature": NEXTJS_VERIFIER.sign(
            hit.headers["webhook-id"], stale, hit.body.decode()
        ),
    }
    with pytest.raises(WebhookVerificationError, match="too old"):
        NEXTJS_VERIFIER.verify(hit.body, resigned)

    # One assistant message with the video attached.
    rows = await eventually(lambda: messages(world))
    assert len(rows) == 1
    (message,) = rows
    assert message.role == "assistant" and message.generation_id == gen.id
    assert message.content == "Your video is ready (8 seconds, 1280x720)."
    (attachment,) = message.attachments
    assert attachment["type"] == "video"
    assert attachment["url"].split("?")[0] == result["videoUrl"].split("?")[0]
    assert attachment["thumbnail_url"].split("?")[0] == result["thumbnailUrl"].split("?")[0]

    async def succeeded() -> list[WebhookDelivery]:
        rows = await deliveries(world)
        return rows if rows and rows[0].status == "succeeded" else []

    (delivery,) = await eventually(succeeded)
    assert delivery.target == "nextjs" and delivery.url == nextjs.base + "/api/webhooks/worker"
    assert delivery.webhook_id == hit.headers["webhook-id"]
    assert delivery.payload.encode() == hit.body


async def _first(items: Sequence[T]) -> T | None:
    return items[0] if items else None


async def test_the_same_event_twice_makes_one_message_and_one_delivery(
    world: World, notifier, receivers, publish
) -> None:
    nextjs = await receivers()
    await notifier(NEXTJS_URL=nextjs.base)
    event = lifecycle(world.generation, Event.CANCELLED, Status.CANCELLED)
    message_id = await publish(event)
    await publish(event, message_id=message_id)  # redelivered: the inbox catches it
    await publish(event)  # published again under a new id: the event's own key catches it
    marker = await world.another_generation()  # handled after the copies: then they are done
    await publish(lifecycle(marker, Event.CANCELLED, Status.CANCELLED))

    async def both() -> bool:
        return {h.event for h in nextjs.hits} == {"generation.cancelled"} and len(
            {json.loads(h.body)["generationId"] for h in nextjs.hits}
        ) == 2

    await eventually(both)
    await eventually(lambda: _settled(world))
    rows = [m for m in await messages(world) if m.generation_id == world.generation.id]
    assert len(rows) == 1
    gen_deliveries = [d for d in await deliveries(world) if d.generation_id == world.generation.id]
    assert len(gen_deliveries) == 1
    assert [json.loads(h.body)["generationId"] for h in nextjs.hits].count(
        str(world.generation.id)
    ) == 1


async def _settled(world: World) -> bool:
    rows = await deliveries(world)
    return bool(rows) and all(d.status != "pending" for d in rows)


QUESTIONS = [
    Question(
        id="aspect_ratio",
        text="Should the video be landscape (16:9) or vertical (9:16)?",
        choices=[
            Choice(value="16:9", label="Landscape 16:9"),
            Choice(value="9:16", label="Vertical 9:16"),
        ],
    ),
    Question(id="detail", text="Could you describe it in a bit more detail?"),
]
SPEC = RenderSpec(
    model="veo-3.1-fast-generate-preview",
    prompt="A red fox running through fresh snow at dawn, cinematic",
    aspect_ratio="9:16",
    resolution="1080p",
    duration_seconds=8,
)


async def test_each_lifecycle_event_reads_like_a_person_wrote_it(
    world: World, notifier, publish
) -> None:
    await notifier()
    gen = world.generation
    events = [
        lifecycle(
            gen, Event.CLARIFICATION_REQUESTED, Status.PENDING_CLARIFICATION, questions=QUESTIONS
        ),
        lifecycle(
            gen,
            Event.AWAITING_CONFIRMATION,
            Status.PENDING_CONFIRMATION,
            spec=SPEC,
            estimated_cost_usd=Decimal("1.2000"),
        ),
        lifecycle(gen, Event.CONFIRMED, Status.CONFIRMED, spec=SPEC),
        lifecycle(gen, Event.PROCESSING, Status.PROCESSING, progress=Progress(stage="queued")),
        lifecycle(
            gen,
            Event.PROGRESS,
            Status.PROCESSING,
            progress=Progress(stage="generating", percent=40),
        ),
        lifecycle(
            gen,
            Event.FAILED,
            Status.FAILED,
            error=ErrorInfo(code="content_policy", message="raiMediaFilteredReasons: x"),
        ),
    ]
    for event in events:
        await publish(event)
    other = await world.another_generation()
    await publish(lifecycle(other, Event.CANCELLED, Status.CANCELLED))

    async def all_written() -> list[ChatMessage]:
        rows = await messages(world)
        return rows if len(rows) == 5 else []

    rows = await eventually(all_written)
    texts = [m.content for m in rows]
    # Ordered by when each event happened, whatever order they were handled in.
    asking, summary, generating, failed, cancelled = texts
    assert asking.startswith("Before I make your video, I need a few details:")
    assert "1. Should the video be landscape (16:9) or vertical (9:16)?" in asking
    assert "Options: Landscape 16:9, Vertical 9:16." in asking
    assert "2. Could you describe it in a bit more detail?" in asking
    assert "• Aspect ratio: 9:16 (vertical)" in summary
    assert "• Duration: 8 seconds" in summary
    assert "• Resolution: 1080p" in summary
    assert "• Model: veo-3.1-fast-generate-preview" in summary
    assert "Estimated cost: $1.20." in summary
    assert summary.endswith("Shall I go ahead? Reply “yes” to start, or “no” to cancel.")
    assert generating == "Generating video…"  # once: processing and progress add nothing
    assert "content policy" in failed and "haven't been charged" in failed
    assert "raiMediaFilteredReasons" not in failed  # no provider jargon in the chat
    assert cancelled == "Okay, I've cancelled this video. Nothing was generated."
    assert [m.generation_id for m in rows] == [gen.id] * 4 + [other.id]


async def test_no_conversation_means_no_message_but_still_a_webhook(
    world: World, notifier, receivers, publish
) -> None:
    nextjs = await receivers()
    await notifier(NEXTJS_URL=nextjs.base)
    loner = await world.another_generation(conversation=False)
    await publish(lifecycle(loner, Event.CANCELLED, Status.CANCELLED))
    hit = await eventually(lambda: _first(nextjs.hits))
    assert json.loads(hit.body)["conversationId"] is None
    await eventually(lambda: _settled(world))
    assert await messages(world) == []


async def test_progress_goes_only_to_endpoints_that_ask_for_it_by_name(
    world: World, notifier, receivers, publish
) -> None:
    nextjs, everything, progress_only, strangers = [await receivers() for _ in range(4)]
    await world.endpoint(everything.url)  # no filter: everything but progress
    await world.endpoint(progress_only.url, events=["generation.progress"])
    async with world.sessions() as session, session.begin():
        from shared.db.models import User

        stranger = User(name="eve", api_key_prefix="rf_eve", api_key_sha256="e" * 64)
        session.add(stranger)
    await world.endpoint(strangers.url, user_id=stranger.id)  # someone else's endpoint
    await notifier(NEXTJS_URL=nextjs.base)
    gen = world.generation
    await publish(
        lifecycle(
            gen,
            Event.PROGRESS,
            Status.PROCESSING,
            progress=Progress(stage="generating", percent=40),
        )
    )
    await publish(
        lifecycle(
            gen,
            Event.FAILED,
            Status.FAILED,
            error=ErrorInfo(code="timeout", message="deadline passed"),
        )
    )

    async def delivered() -> bool:
        return len(nextjs.hits) == 1 and len(everything.hits) == 1 and len(progress_only.hits) == 1

    await eventually(delivered)
    await eventually(lambda: _settled(world))
    assert [h.event for h in nextjs.hits] == ["generation.failed"]
    assert [h.event for h in everything.hits] == ["generation.failed"]
    (progress,) = progress_only.hits
    body = json.loads(progress.body)
    assert body["event"] == "generation.progress"
    assert body["progress"] == {"stage": "generating", "percent": 40.0, "queuePosition": None}
    failed = json.loads(nextjs.hits[0].body)
    assert failed["error"] == "deadline passed" and failed["result"] is None
    assert strangers.hits == []
    assert len(await deliveries(world)) == 3


async def test_a_registered_endpoint_verifies_with_its_own_secret(
    world: World, notifier, receivers, publish
) -> None:
    receiver = await receivers()
    endpoint = await world.endpoint(receiver.url)
    await notifier()
    await publish(lifecycle(world.generation, Event.CANCELLED, Status.CANCELLED))
    hit = await eventually(lambda: _first(receiver.hits))
    assert Webhook(endpoint.secret).verify(hit.body, hit.headers)["event"] == "generation.cancelled"
    assert "Authorization" not in hit.headers  # the bearer token is NEXTJS_URL's alone
    with pytest.raises(WebhookVerificationError):
        NEXTJS_VERIFIER.verify(hit.body, hit.headers)
    assert time.time() - int(hit.headers["webhook-timestamp"]) < 60


async def inbox_rows(world: World, message_id: str) -> int:
    async with world.sessions() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM inbox WHERE consumer = :c AND message_id = :m"),
            {"c": CONSUMER, "m": message_id},
        )
    return int(count or 0)


def acked(service: NotifierService) -> float:
    value = service.runtime.registry.get_sample_value(
        "reelflow_messages_consumed_total", {"queue": NOTIFIER_EVENTS.name, "outcome": "acked"}
    )
    return value or 0.0


def progress(gen: Generation) -> LifecycleEvent:
    return lifecycle(
        gen, Event.PROGRESS, Status.PROCESSING, progress=Progress(stage="generating", percent=40)
    )


async def test_progress_nobody_asked_for_is_acked_without_an_inbox_row(
    world: World, notifier, receivers, publish
) -> None:
    nextjs, everything = await receivers(), await receivers()
    await world.endpoint(everything.url)  # no filter: everything but progress
    service = await notifier(NEXTJS_URL=nextjs.base)  # NEXTJS_URL never gets progress either
    message_id = await publish(progress(world.generation))

    await eventually(lambda: _true(service.intake.needed_nothing == 1 and acked(service) == 1))
    assert (service.intake.handled, service.intake.duplicates) == (0, 0)
    assert await inbox_rows(world, message_id) == 0
    assert await deliveries(world) == []
    assert await messages(world) == []
    assert nextjs.hits == [] and everything.hits == []


async def test_progress_an_endpoint_asked_for_is_delivered_once_whatever_the_redeliveries(
    world: World, notifier, receivers, publish
) -> None:
    receiver = await receivers()
    await world.endpoint(receiver.url, events=["generation.progress"])
    service = await notifier()
    event = progress(world.generation)
    message_id = await publish(event)

    (hit,) = await eventually(lambda: _true(receiver.hits))
    assert hit.event == "generation.progress"
    await eventually(lambda: _settled(world))
    assert service.intake.handled == 1 and service.intake.needed_nothing == 0
    assert await inbox_rows(world, message_id) == 1

    await publish(event, message_id=message_id)  # redelivered: the inbox catches it
    await eventually(lambda: _true(service.intake.duplicates == 1 and acked(service) == 2))
    assert (service.intake.handled, service.intake.needed_nothing) == (1, 0)
    (delivery,) = await deliveries(world)
    assert delivery.event == "generation.progress" and delivery.status == "succeeded"
    assert len(receiver.hits) == 1
    assert await inbox_rows(world, message_id) == 1


async def _true(value: T) -> T:
    return value
