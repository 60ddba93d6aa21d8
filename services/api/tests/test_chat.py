"""The chat: conversations, messages that start, answer, confirm and cancel generations, helpful
replies, re-signed attachments, and bad input that stores nothing."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from shared.db.models import ChatMessage, Generation
from shared.domain.clarifier import ASPECT, DETAIL, DURATION
from shared.media import LinkSigner
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

Problem = Callable[[httpx.Response, int], dict[str, Any]]
SetRow = Callable[..., Awaitable[None]]
Outbox = Callable[[str], Awaitable[list[dict[str, Any]]]]
Sessions = async_sessionmaker[AsyncSession]

ALL_QUESTIONS = [q.model_dump(mode="json") for q in (ASPECT, DURATION, DETAIL)]
FOX = "make a vertical 8 second video of a fox in snow"


async def _conversation(client: httpx.AsyncClient, user: dict[str, Any], **body: Any) -> str:
    r = await client.post("/v1/conversations", json=body, headers=user["headers"])
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _say(
    client: httpx.AsyncClient, user: dict[str, Any], conversation_id: str, content: str
) -> dict[str, Any]:
    r = await client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"content": content},
        headers=user["headers"],
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _messages(
    client: httpx.AsyncClient, user: dict[str, Any], conversation_id: str
) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/conversations/{conversation_id}/messages", headers=user["headers"])
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def _count(sessions: Sessions, table: type) -> int:
    async with sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(table)) or 0)


async def test_conversations_are_created_listed_newest_first_and_private(
    client: httpx.AsyncClient, make_user: Callable[[str], Awaitable[dict[str, Any]]]
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    first = await _conversation(client, alice, title="Foxes")
    ids = [first] + [await _conversation(client, alice) for _ in range(4)]
    page = await client.get("/v1/conversations?limit=3", headers=alice["headers"])
    assert page.status_code == 200
    body = page.json()
    assert [c["id"] for c in body["items"]] == ids[::-1][:3]
    rest = await client.get(
        f"/v1/conversations?limit=3&cursor={body['next_cursor']}", headers=alice["headers"]
    )
    assert [c["id"] for c in rest.json()["items"]] == ids[::-1][3:]
    assert rest.json()["next_cursor"] is None
    one = await client.get(f"/v1/conversations/{first}", headers=alice["headers"])
    assert one.json()["title"] == "Foxes" and one.json()["created_at"]

    assert (await client.get("/v1/conversations", headers=bob["headers"])).json()["items"] == []
    for path in (f"/v1/conversations/{first}", f"/v1/conversations/{first}/messages"):
        assert (await client.get(path, headers=bob["headers"])).status_code == 404
    assert (await client.get("/v1/conversations")).status_code == 401


async def test_a_request_starts_a_generation_with_the_understood_params(
    client: httpx.AsyncClient, user: dict[str, Any], outbox: Outbox
) -> None:
    conversation_id = await _conversation(client, user)
    posted = await _say(client, user, conversation_id, FOX)

    gen = posted["generation"]
    assert gen["status"] == "pending_clarification"
    assert gen["prompt"] == FOX  # as written
    assert gen["params"]["aspect_ratio"] == "9:16"
    assert gen["params"]["duration_seconds"] == 8
    assert gen["conversation_id"] == conversation_id
    message = posted["message"]
    assert message["role"] == "user" and message["content"] == FOX
    assert message["generation_id"] == gen["id"]
    assert posted["reply"] is None  # the questions or the summary come from the notifier

    # The same path as POST /v1/generations: the row and generation.requested together, and
    # the message announced to live views.
    types = [row["type"] for row in await outbox(gen["id"])]
    assert types == ["generation.requested", "conversation.message_created"]
    listed = await client.get(
        f"/v1/generations?conversation_id={conversation_id}", headers=user["headers"]
    )
    assert [g["id"] for g in listed.json()["items"]] == [gen["id"]]
    # The first message names the conversation.
    convo = await client.get(f"/v1/conversations/{conversation_id}", headers=user["headers"])
    assert convo.json()["title"] == "make a vertical 8 second video of a fox in snow"


async def test_free_text_answers_one_question_at_a_time_then_yes_confirms(
    client: httpx.AsyncClient, user: dict[str, Any], set_row: SetRow
) -> None:
    conversation_id = await _conversation(client, user)
    gen_id = (await _say(client, user, conversation_id, "make a video of a fox"))["generation"][
        "id"
    ]
    await set_row(gen_id, questions=ALL_QUESTIONS, version=2)  # the orchestrator asked

    first = await _say(client, user, conversation_id, "vertical please")
    gen = first["generation"]
    assert gen["id"] == gen_id and gen["status"] == "pending_clarification"
    assert gen["answers"] == {"aspect_ratio": "9:16"}
    assert [q["id"] for q in gen["questions"]] == ["duration_seconds", "detail"]
    assert first["message"]["generation_id"] == gen_id

    second = await _say(
        client, user, conversation_id, "8 seconds, a red fox leaping into deep snow at dawn"
    )
    gen = second["generation"]
    assert gen["status"] == "pending_confirmation"
    assert gen["spec"]["aspect_ratio"] == "9:16" and gen["spec"]["duration_seconds"] == 8
    assert gen["spec"]["prompt"] == (
        "make a video of a fox. 8 seconds, a red fox leaping into deep snow at dawn"
    )
    assert gen["estimated_cost_usd"] == 0.0

    confirmed = await _say(client, user, conversation_id, "yes, go ahead")
    assert confirmed["generation"]["status"] == "confirmed"
    assert confirmed["reply"] is None
    roles = [(m["role"], m["content"]) for m in await _messages(client, user, conversation_id)]
    assert roles == [
        ("user", "make a video of a fox"),
        ("user", "vertical please"),
        ("user", "8 seconds, a red fox leaping into deep snow at dawn"),
        ("user", "yes, go ahead"),
    ]


async def test_no_cancels_the_generation_awaiting_confirmation(
    client: httpx.AsyncClient, user: dict[str, Any], set_row: SetRow
) -> None:
    conversation_id = await _conversation(client, user)
    gen_id = (await _say(client, user, conversation_id, FOX))["generation"]["id"]
    await set_row(gen_id, status="pending_confirmation", version=2)
    posted = await _say(client, user, conversation_id, "no, cancel it")
    assert posted["generation"]["status"] == "cancelled"
    # Nothing awaits now: a "yes" gets an explanation, not a move.
    after = await _say(client, user, conversation_id, "yes")
    assert after["generation"] is None
    assert "no video waiting for your go-ahead" in after["reply"]["content"]


async def test_a_request_the_provider_cannot_make_is_answered_in_words(
    client: httpx.AsyncClient, user: dict[str, Any], sessions: Sessions
) -> None:
    """Sound on the local renderer: not an error, a reply saying why (and no generation)."""
    conversation_id = await _conversation(client, user)
    posted = await _say(client, user, conversation_id, "make a video of a waterfall with sound")
    assert posted["generation"] is None
    assert posted["reply"]["content"].startswith("I can't make that video as asked:")
    assert "renders no audio" in posted["reply"]["content"]
    assert await _count(sessions, Generation) == 0
    assert [m["role"] for m in await _messages(client, user, conversation_id)] == [
        "user",
        "assistant",
    ]


async def test_a_message_that_is_neither_gets_a_helpful_reply(
    client: httpx.AsyncClient, user: dict[str, Any], set_row: SetRow, outbox: Outbox
) -> None:
    conversation_id = await _conversation(client, user)
    hello = await _say(client, user, conversation_id, "hello!")
    assert hello["generation"] is None
    reply = hello["reply"]
    assert reply["role"] == "assistant" and reply["content"].startswith("Hi!")
    assert "make a vertical 8 second video of a fox in snow" in reply["content"]

    gen_id = (await _say(client, user, conversation_id, "make a video of a fox"))["generation"][
        "id"
    ]
    await set_row(gen_id, questions=ALL_QUESTIONS, version=2)
    unclear = await _say(client, user, conversation_id, "hmm, not sure")
    assert unclear["generation"]["status"] == "pending_clarification"
    text_ = unclear["reply"]["content"]
    assert "didn't catch that" in text_ and "Landscape 16:9" in text_ and "cancel" in text_
    assert unclear["reply"]["generation_id"] == gen_id

    await set_row(gen_id, status="pending_confirmation", version=3)
    changed = await _say(client, user, conversation_id, "yes but make it landscape")
    assert "reply “no” and ask again" in changed["reply"]["content"]

    listed = await _messages(client, user, conversation_id)
    assert [m["role"] for m in listed] == [
        "user",  # hello!
        "assistant",
        "user",  # make a video of a fox
        "user",  # hmm, not sure
        "assistant",
        "user",  # yes but make it landscape
        "assistant",
    ]
    # Every stored message was announced to live views.
    notices = [
        row
        for row in await outbox(conversation_id)
        if row["type"] == "conversation.message_created"
    ]
    assert len(notices) == 2  # the two about no generation; the rest carry the generation id


async def test_attachments_are_re_signed_when_read(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    sessions: Sessions,
    set_row: SetRow,
    prepared: Any,
) -> None:
    conversation_id = await _conversation(client, user)
    gen_id = (await _say(client, user, conversation_id, FOX))["generation"]["id"]
    result = {
        "video_key": f"videos/{user['id']}/{gen_id}.mp4",
        "thumbnail_key": f"videos/{user['id']}/{gen_id}.jpg",
        "duration_seconds": 8.0,
        "file_size_bytes": 1000,
        "resolution": "720x1280",
        "format": "mp4",
        "processing_time_ms": 1200,
    }
    await set_row(gen_id, status="completed", result=result, version=6)
    stale = "http://old.example/media/x.mp4?exp=1&sig=expired"
    async with sessions() as s, s.begin():
        s.add(
            ChatMessage(
                conversation_id=uuid.UUID(conversation_id),
                role="assistant",
                content="Your video is ready (8 seconds, 720x1280).",
                generation_id=uuid.UUID(gen_id),
                attachments=[{"type": "video", "url": stale, "thumbnail_url": stale}],
            )
        )
    last = (await _messages(client, user, conversation_id))[-1]
    attachment = last["attachments"][0]
    assert attachment["type"] == "video" and attachment["url"] != stale
    signer = LinkSigner(prepared.media_signing_key.get_secret_value().encode(), 3600)
    for url, key in (
        (attachment["url"], result["video_key"]),
        (attachment["thumbnail_url"], result["thumbnail_key"]),
    ):
        parsed = urlparse(url)
        assert parsed.path == f"/media/{key}"
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        assert signer.verify(str(key), query["exp"], query["sig"])


async def test_bad_messages_are_clear_errors_and_store_nothing(
    client: httpx.AsyncClient,
    make_user: Callable[[str], Awaitable[dict[str, Any]]],
    sessions: Sessions,
    problem: Problem,
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    conversation_id = await _conversation(client, alice)
    path = f"/v1/conversations/{conversation_id}/messages"

    empty = problem(await client.post(path, json={"content": ""}, headers=alice["headers"]), 422)
    assert empty["errors"][0]["field"] == "content"
    blank = problem(
        await client.post(path, json={"content": "  \n"}, headers=alice["headers"]), 422
    )
    assert "blank" in blank["errors"][0]["message"]
    missing = problem(await client.post(path, json={}, headers=alice["headers"]), 422)
    assert missing["errors"][0]["field"] == "content"
    long = problem(
        await client.post(path, json={"content": "x" * 2001}, headers=alice["headers"]), 422
    )
    assert "2000" in long["errors"][0]["message"]
    huge = problem(
        await client.post(path, json={"content": "fox " * 25_000}, headers=alice["headers"]), 413
    )
    assert "larger than" in huge["detail"]
    nul = await client.post(path, json={"content": "a\x00b"}, headers=alice["headers"])
    problem(nul, 422)
    extra = await client.post(
        path, json={"content": "hi", "role": "assistant"}, headers=alice["headers"]
    )
    problem(extra, 422)
    theirs = await client.post(path, json={"content": FOX}, headers=bob["headers"])
    assert problem(theirs, 404)["detail"] == "conversation not found"
    unknown = await client.post(
        f"/v1/conversations/{uuid.uuid4()}/messages",
        json={"content": FOX},
        headers=alice["headers"],
    )
    problem(unknown, 404)
    problem(await client.post(path, json={"content": FOX}), 401)

    assert await _count(sessions, ChatMessage) == 0
    assert await _count(sessions, Generation) == 0
    async with sessions() as s:
        assert await s.scalar(text("SELECT count(*) FROM outbox")) == 0
        title = await s.scalar(
            text("SELECT title FROM conversations WHERE id = :i"), {"i": conversation_id}
        )
    assert title is None


async def test_a_move_refused_stores_no_message(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    set_row: SetRow,
    sessions: Sessions,
    row: Callable[[str], Awaitable[dict[str, Any]]],
    problem: Problem,
) -> None:
    """A message whose move is refused (a detail answer over the clarifier's 1000 characters)
    is a clear 422, and neither the message nor any change is stored."""
    conversation_id = await _conversation(client, user)
    gen_id = (await _say(client, user, conversation_id, "make a video of a fox"))["generation"][
        "id"
    ]
    detail_only = [q for q in ALL_QUESTIONS if q["id"] == "detail"]
    await set_row(gen_id, questions=detail_only, version=2)
    before = await _count(sessions, ChatMessage)
    r = await client.post(
        f"/v1/conversations/{conversation_id}/messages",
        json={"content": "a red fox in deep snow " * 60},  # 1380 characters of description
        headers=user["headers"],
    )
    body = problem(r, 422)
    assert body["errors"] == [
        {"field": "answers.detail", "location": "body", "message": "must be 1-1000 characters"}
    ]
    assert await _count(sessions, ChatMessage) == before
    assert (await row(gen_id))["version"] == 2


async def test_history_filters_by_status_and_conversation_with_queue_positions(
    client: httpx.AsyncClient, user: dict[str, Any], set_row: SetRow, problem: Problem
) -> None:
    one, two = await _conversation(client, user), await _conversation(client, user)
    a = (await _say(client, user, one, FOX))["generation"]["id"]
    b = (await _say(client, user, one, "make a landscape video of a harbour at dusk"))[
        "generation"
    ]["id"]
    c = (await _say(client, user, two, "make a video of rain on a window"))["generation"]["id"]
    await set_row(a, status="confirmed", version=4)
    await set_row(c, status="confirmed", version=4)
    await set_row(b, status="completed", version=6)

    def ids(r: httpx.Response) -> list[str]:
        assert r.status_code == 200, r.text
        return [g["id"] for g in r.json()["items"]]

    h = user["headers"]
    assert ids(await client.get(f"/v1/generations?conversation_id={one}", headers=h)) == [b, a]
    assert ids(
        await client.get(f"/v1/generations?conversation_id={one}&status=confirmed", headers=h)
    ) == [a]
    waiting = (await client.get("/v1/generations?status=confirmed", headers=h)).json()["items"]
    positions = {g["id"]: g["progress"] for g in waiting}
    assert positions[a] == {"stage": "queued", "percent": None, "queue_position": 1}
    assert positions[c] == {"stage": "queued", "percent": None, "queue_position": 2}
    done = (await client.get("/v1/generations?status=completed", headers=h)).json()["items"]
    assert done[0]["progress"] is None
    problem(await client.get(f"/v1/generations?conversation_id={uuid.uuid4()}", headers=h), 404)
    problem(await client.get("/v1/generations?conversation_id=nope", headers=h), 422)
