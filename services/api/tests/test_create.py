"""Creating generations: validation, the outbox message and its delivery, idempotency."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import httpx
import pytest
from shared.settings import Settings
from shared.topology import EVENTS
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

Problem = Callable[[httpx.Response, int], dict[str, Any]]
PROMPT = "a red fox running through fresh snow at dawn"


async def test_creation_answers_201_with_the_contract_shape(
    client: httpx.AsyncClient, user: dict[str, Any]
) -> None:
    r = await client.post(
        "/v1/generations",
        json={"prompt": PROMPT, "params": {"aspect_ratio": "9:16", "duration_seconds": 4}},
        headers=user["headers"],
    )
    assert r.status_code == 201
    gen = r.json()
    assert {
        "id",
        "status",
        "prompt",
        "params",
        "conversation_id",
        "questions",
        "answers",
        "estimated_cost_usd",
        "progress",
        "result",
        "error",
        "created_at",
        "updated_at",
    } <= set(gen)
    assert gen["status"] == "pending_clarification" and gen["prompt"] == PROMPT
    assert gen["params"]["aspect_ratio"] == "9:16" and gen["params"]["duration_seconds"] == 4
    assert r.headers["location"] == f"/v1/generations/{gen['id']}"
    assert "idempotent-replayed" not in r.headers


async def test_creation_writes_one_requested_message_and_the_relay_publishes_it(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    prepared: Settings,
    outbox: Callable[[str], Awaitable[list[dict[str, Any]]]],
) -> None:
    connection = await aio_pika.connect(prepared.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(await channel.get_exchange(EVENTS), routing_key="generation.requested")

        r = await client.post("/v1/generations", json={"prompt": PROMPT}, headers=user["headers"])
        gen_id = r.json()["id"]
        rows = await outbox(gen_id)
        assert [row["type"] for row in rows] == ["generation.requested"]

        message = await _next_message(queue, gen_id)
        assert message.type == "generation.requested"
        assert message.message_id == str(rows[0]["message_id"])
        assert message.correlation_id == gen_id
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        body = json.loads(message.body)
        assert body["generation_id"] == gen_id and body["user_id"] == user["id"]
        assert body["version"] == 1


async def _next_message(
    queue: aio_pika.abc.AbstractQueue, gen_id: str, within: float = 15.0
) -> aio_pika.abc.AbstractIncomingMessage:
    """Poll the queue until the message about `gen_id` arrives (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        if message.correlation_id == gen_id:
            return message
    raise AssertionError(f"no message for {gen_id} within {within}s")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   \n"}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"prompt": "a\u0000b"}, "prompt"),
        ({"prompt": "bad \ud800 surrogate"}, "prompt"),
        ({"prompt": PROMPT, "colour": "red"}, "colour"),
        ({"prompt": PROMPT, "params": {"fps": 60}}, "params.fps"),
        ({"prompt": PROMPT, "params": {"aspect_ratio": "4:3"}}, "params.aspect_ratio"),
        ({"prompt": PROMPT, "params": {"resolution": "4k"}}, "params.resolution"),
        ({"prompt": PROMPT, "params": {"duration_seconds": 5}}, "params.duration_seconds"),
        ({"prompt": PROMPT, "params": {"seed": -1}}, "params.seed"),
        ({"prompt": PROMPT, "params": {"negative_prompt": "n" * 1001}}, "params.negative_prompt"),
        ({"prompt": PROMPT, "params": {"negative_prompt": "\u0000"}}, "params.negative_prompt"),
        ({"prompt": PROMPT, "params": {"model": "veo-3.1-generate-preview"}}, "params.model"),
        ({"prompt": PROMPT, "params": []}, "params"),
        ({"prompt": PROMPT, "conversation_id": "not-a-uuid"}, "conversation_id"),
        ({"prompt": PROMPT, "auto_confirm": "maybe"}, "auto_confirm"),
    ],
)
async def test_invalid_creation_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    problem: Problem,
    body: dict[str, Any],
    field: str,
) -> None:
    # Sent as ASCII JSON: httpx's own encoder refuses a lone surrogate.
    headers = {**user["headers"], "Content-Type": "application/json"}
    r = await client.post("/v1/generations", content=json.dumps(body), headers=headers)
    errors = problem(r, 422)["errors"]
    assert any(e["field"] == field and e["location"] == "body" for e in errors), errors
    assert all(e["message"] for e in errors)


async def test_prompt_of_2000_characters_is_accepted(
    client: httpx.AsyncClient, user: dict[str, Any]
) -> None:
    r = await client.post("/v1/generations", json={"prompt": "x" * 2000}, headers=user["headers"])
    assert r.status_code == 201


async def test_malformed_json_is_a_422(
    client: httpx.AsyncClient, user: dict[str, Any], problem: Problem
) -> None:
    headers = {**user["headers"], "Content-Type": "application/json"}
    r = await client.post("/v1/generations", content=b'{"prompt": "a fox', headers=headers)
    assert "malformed JSON" in problem(r, 422)["errors"][0]["message"]


async def test_conversation_must_exist_and_be_the_users(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    make_user: Callable[[str], Awaitable[dict[str, Any]]],
    sessions: async_sessionmaker[AsyncSession],
    problem: Problem,
) -> None:
    other = await make_user("mallory")
    theirs, mine = uuid.uuid4(), uuid.uuid4()
    async with sessions() as s, s.begin():
        for cid, owner in ((theirs, other["id"]), (mine, user["id"])):
            await s.execute(
                text("INSERT INTO conversations (id, user_id, created_at) VALUES (:i, :u, now())"),
                {"i": cid, "u": uuid.UUID(owner)},
            )
    for cid in (uuid.uuid4(), theirs):
        body = {"prompt": PROMPT, "conversation_id": str(cid)}
        problem(await client.post("/v1/generations", json=body, headers=user["headers"]), 404)
    body = {"prompt": PROMPT, "conversation_id": str(mine)}
    r = await client.post("/v1/generations", json=body, headers=user["headers"])
    assert r.status_code == 201 and r.json()["conversation_id"] == str(mine)


# --- Idempotency-Key ---------------------------------------------------------------------


async def _count(sessions: async_sessionmaker[AsyncSession], sql: str, **params: Any) -> int:
    async with sessions() as s:
        return int(await s.scalar(text(sql), params) or 0)


async def test_same_key_and_body_replays_the_same_generation(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    headers = {**user["headers"], "Idempotency-Key": "order-1"}
    first = await client.post("/v1/generations", json={"prompt": PROMPT}, headers=headers)
    # The same request, spelled differently (an explicit default, keys in another order).
    again = await client.post(
        "/v1/generations",
        json={"auto_confirm": False, "prompt": PROMPT, "params": {}},
        headers=headers,
    )
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    n = await _count(sessions, "SELECT count(*) FROM outbox WHERE type = 'generation.requested'")
    assert n == 1


async def test_same_key_with_another_body_is_a_409(
    client: httpx.AsyncClient, user: dict[str, Any], problem: Problem
) -> None:
    headers = {**user["headers"], "Idempotency-Key": "order-2"}
    assert (
        await client.post("/v1/generations", json={"prompt": PROMPT}, headers=headers)
    ).status_code == 201
    other = {"prompt": PROMPT, "auto_confirm": True}
    body = problem(await client.post("/v1/generations", json=other, headers=headers), 409)
    assert body["type"].endswith("idempotency-key-reused")


async def test_keys_belong_to_one_user(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    make_user: Callable[[str], Awaitable[dict[str, Any]]],
) -> None:
    other = await make_user("bob")
    ids = set()
    for who in (user, other):
        headers = {**who["headers"], "Idempotency-Key": "shared-key"}
        r = await client.post("/v1/generations", json={"prompt": PROMPT}, headers=headers)
        assert r.status_code == 201
        ids.add(r.json()["id"])
    assert len(ids) == 2


async def test_concurrent_identical_requests_make_one_generation(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    headers = {**user["headers"], "Idempotency-Key": "race-1"}
    responses = await asyncio.gather(
        *(
            client.post("/v1/generations", json={"prompt": PROMPT}, headers=headers)
            for _ in range(8)
        )
    )
    assert [r.status_code for r in responses] == [201] * 8
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 7
    assert await _count(sessions, "SELECT count(*) FROM generations") == 1
    n = await _count(sessions, "SELECT count(*) FROM outbox WHERE type = 'generation.requested'")
    assert n == 1


async def test_a_key_older_than_24_hours_starts_a_new_generation(
    client: httpx.AsyncClient,
    user: dict[str, Any],
    set_row: Callable[..., Awaitable[None]],
    row: Callable[[str], Awaitable[dict[str, Any]]],
) -> None:
    headers = {**user["headers"], "Idempotency-Key": "old-key"}
    old = (await client.post("/v1/generations", json={"prompt": PROMPT}, headers=headers)).json()
    async with asyncio.timeout(5):
        await set_row(old["id"], created_at=_hours_ago(25))
    # Even with another body: the old use is forgotten.
    r = await client.post("/v1/generations", json={"prompt": PROMPT + "!"}, headers=headers)
    assert r.status_code == 201 and r.json()["id"] != old["id"]
    assert "idempotent-replayed" not in r.headers
    assert (await row(old["id"]))["idempotency_key"] is None
    again = await client.post("/v1/generations", json={"prompt": PROMPT + "!"}, headers=headers)
    assert again.json()["id"] == r.json()["id"]


def _hours_ago(hours: int) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(hours=hours)


@pytest.mark.parametrize("key", ["", "k" * 256, "has space", "tab\tkey", "ключ"])
async def test_bad_idempotency_keys_are_a_422(
    client: httpx.AsyncClient, user: dict[str, Any], problem: Problem, key: str
) -> None:
    headers = {**user["headers"], "Idempotency-Key": key.encode()}  # bytes: sent as UTF-8
    r = await client.post("/v1/generations", json={"prompt": PROMPT}, headers=headers)
    errors = problem(r, 422)["errors"]
    assert errors[0]["location"] == "header"


async def test_a_255_character_key_is_accepted(
    client: httpx.AsyncClient, user: dict[str, Any]
) -> None:
    headers = {**user["headers"], "Idempotency-Key": "k" * 255}
    r = await client.post("/v1/generations", json={"prompt": PROMPT}, headers=headers)
    assert r.status_code == 201


# --- with the Veo provider configured: models and prices ---------------------------------


async def test_unknown_model_is_a_422_with_veo(
    veo_client: httpx.AsyncClient, user: dict[str, Any], problem: Problem
) -> None:
    body = {"prompt": PROMPT, "params": {"model": "veo-9-imaginary"}}
    errors = problem(
        await veo_client.post("/v1/generations", json=body, headers=user["headers"]), 422
    )
    assert errors["errors"][0]["field"] == "params.model"
    body = {"prompt": PROMPT, "params": {"model": "veo-3.1-generate-preview"}}
    r = await veo_client.post("/v1/generations", json=body, headers=user["headers"])
    assert r.status_code == 201


async def test_params_naming_no_model_are_checked_against_veo_model(
    veo_client: httpx.AsyncClient, user: dict[str, Any], problem: Problem
) -> None:
    """VEO_MODEL (a Veo 3.x model by default) renders 1080p only at 8 s: refused at creation,
    not late in the worker."""
    body = {"prompt": PROMPT, "params": {"resolution": "1080p", "duration_seconds": 4}}
    errors = problem(
        await veo_client.post("/v1/generations", json=body, headers=user["headers"]), 422
    )
    assert errors["errors"][0]["field"] == "params.duration_seconds"
