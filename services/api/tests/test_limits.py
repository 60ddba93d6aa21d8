"""Abuse limits: request rate per API key (shared by API instances; a flood from one key does
not starve another), per-user quotas at confirmation (concurrent generations, video seconds per
day), all answered 429 problem+json with Retry-After, nothing changed. Each test runs an app
with its own limits (the suite's default environment turns them off)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from api.app import create_app
from api.problems import Problem
from api.ratelimit import RateLimiter
from shared.auth import hash_api_key
from shared.settings import Settings

from .conftest import ADMIN_HEADERS, asgi_client, assert_problem

SPEC = {
    "model": "local",
    "prompt": "a fox",
    "aspect_ratio": "16:9",
    "resolution": "720p",
    "duration_seconds": 8,
    "negative_prompt": None,
    "generate_audio": False,
    "seed": None,
}


@contextlib.asynccontextmanager
async def api(settings: Settings, **limits: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update=limits))
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        yield client


async def new_user(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    r = await client.post("/v1/admin/users", json={"name": name}, headers=ADMIN_HEADERS)
    assert r.status_code == 201, r.text
    return {"id": r.json()["id"], "Authorization": f"Bearer {r.json()['api_key']}"}


def auth(user: dict[str, str]) -> dict[str, str]:
    return {"Authorization": user["Authorization"]}


def retry_after(response: httpx.Response) -> int:
    body = assert_problem(response, 429)
    assert body["type"].endswith(("/rate-limited", "/quota-exceeded"))
    value = int(response.headers["retry-after"])
    assert value >= 1
    return value


# --- rate limits --------------------------------------------------------------------------

# One token per 100 s: within a test, only the burst counts (no timing in the assertions).
SLOW = {"rate_limit_per_second": 0.01, "rate_limit_burst": 10}


async def test_a_key_past_its_burst_gets_429_with_retry_after(
    prepared: Settings, clean_db: None
) -> None:
    async with api(prepared, **SLOW) as client:
        a, b = await new_user(client, "a"), await new_user(client, "b")
        statuses = [
            (await client.get("/v1/generations", headers=auth(a))).status_code for _ in range(12)
        ]
        assert statuses == [200] * 10 + [429] * 2
        limited = await client.get("/v1/conversations", headers=auth(a))
        assert 1 <= retry_after(limited) <= 100
        # Another key of its own bucket; keys are limited, not users' other keys' buckets.
        assert (await client.get("/v1/generations", headers=auth(b))).status_code == 200
        made = await client.post("/v1/api-keys", json={}, headers=auth(b))
        assert made.status_code == 201
        second = {"Authorization": f"Bearer {made.json()['api_key']}"}
        assert (await client.get("/v1/generations", headers=second)).status_code == 200


async def test_the_limit_holds_across_api_instances(prepared: Settings, clean_db: None) -> None:
    """The bucket lives in PostgreSQL: two instances share it (each has its own pre-filter)."""
    async with api(prepared, **SLOW) as one, api(prepared, **SLOW) as two:
        user = await new_user(one, "shared")
        statuses = []
        for i in range(20):
            client = (one, two)[i % 2]
            statuses.append((await client.get("/v1/generations", headers=auth(user))).status_code)
        assert statuses.count(200) == 10 and statuses.count(429) == 10


async def test_a_flood_from_one_key_does_not_starve_another(
    prepared: Settings, clean_db: None
) -> None:
    """10,000 requests from one key, 50 at a time, while another key keeps working."""
    async with api(prepared, rate_limit_per_second=1.0, rate_limit_burst=50) as client:
        flooder, other = await new_user(client, "flood"), await new_user(client, "calm")
        flood_statuses: list[int] = []
        gate = asyncio.Semaphore(50)

        async def one() -> None:
            async with gate:
                r = await client.get("/v1/generations", headers=auth(flooder))
                flood_statuses.append(r.status_code)

        flood = asyncio.gather(*(one() for _ in range(10_000)))
        calm: list[int] = []
        while not flood.done() and len(calm) < 40:
            r = await client.get(f"/v1/generations?limit={len(calm) % 5 + 1}", headers=auth(other))
            calm.append(r.status_code)
            await asyncio.sleep(0)
        await flood
        assert len(flood_statuses) == 10_000
        assert set(flood_statuses) == {200, 429}
        # The burst, plus whatever refilled during the flood: a small share of 10,000.
        assert flood_statuses.count(200) < 50 + 1000
        assert len(calm) >= 10 and calm == [200] * len(calm), calm


async def test_leases_cost_one_write_per_batch_and_the_shared_bucket_still_holds(
    prepared: Settings, clean_db: None
) -> None:
    """Two instances lease 4 tokens at a time from one shared bucket of 10: between them they
    never pass more than 10, with a database round trip per lease, not per request."""
    app = create_app(prepared)
    async with app.router.lifespan_context(app), asgi_client(app) as client:
        user = await new_user(client, "leases")
        key = user["Authorization"].removeprefix("Bearer ")
        pool = app.state.pg
        key_id = await pool.fetchval("SELECT id FROM api_keys WHERE sha256 = $1", hash_api_key(key))
        one, two = (RateLimiter(0.001, 10, lease=4) for _ in range(2))
        passed = 0
        for i in range(30):
            try:
                await (one, two)[i % 2].take(pool, hash_api_key(key), key_id)
                passed += 1
            except Problem as exc:
                assert exc.status == 429 and int(exc.headers["Retry-After"]) >= 1
        assert passed == 10
        # 4 + 4 + 2 (what was left), then one refusal each (remembered: no more round trips).
        assert one.leases + two.leases == 5


# --- quotas ------------------------------------------------------------------------------

QUOTAS = {"quota_max_concurrent_generations": 2, "quota_video_seconds_per_day": 20}


async def awaiting_confirmation(
    client: httpx.AsyncClient,
    user: dict[str, str],
    set_row: Callable[..., Awaitable[None]],
    **body: Any,
) -> str:
    r = await client.post("/v1/generations", json={"prompt": "a fox", **body}, headers=auth(user))
    assert r.status_code == 201, r.text
    gid = str(r.json()["id"])
    await set_row(gid, status="pending_confirmation", spec=SPEC, version=3)
    return gid


async def test_concurrent_generations_are_capped_at_confirmation(
    prepared: Settings,
    clean_db: None,
    set_row: Callable[..., Awaitable[None]],
    row: Callable[[str], Awaitable[dict[str, Any]]],
) -> None:
    async with api(prepared, quota_max_concurrent_generations=2) as client:
        user = await new_user(client, "busy")
        ids = [await awaiting_confirmation(client, user, set_row) for _ in range(3)]
        for gid in ids[:2]:
            r = await client.post(f"/v1/generations/{gid}/confirm", headers=auth(user))
            assert r.status_code == 200, r.text
        refused = await client.post(f"/v1/generations/{ids[2]}/confirm", headers=auth(user))
        assert retry_after(refused) == 30
        assert refused.json()["limit"] == "concurrent_generations"
        third = await row(ids[2])
        assert (third["status"], third["version"], third["confirmed_at"]) == (
            "pending_confirmation",
            3,
            None,
        )
        # Creating is free; starting one more at once (auto_confirm) is not.
        assert (
            await client.post("/v1/generations", json={"prompt": "x"}, headers=auth(user))
        ).status_code == 201
        retry_after(
            await client.post(
                "/v1/generations", json={"prompt": "x", "auto_confirm": True}, headers=auth(user)
            )
        )
        # One finishes: there is room again.
        await set_row(ids[0], status="completed")
        r = await client.post(f"/v1/generations/{ids[2]}/confirm", headers=auth(user))
        assert r.status_code == 200, r.text


async def test_confirmations_racing_each_other_pass_the_cap_only_once(
    prepared: Settings, clean_db: None, set_row: Callable[..., Awaitable[None]]
) -> None:
    async with api(prepared, quota_max_concurrent_generations=2) as client:
        user = await new_user(client, "racer")
        ids = [await awaiting_confirmation(client, user, set_row) for _ in range(6)]
        answers = await asyncio.gather(
            *(client.post(f"/v1/generations/{g}/confirm", headers=auth(user)) for g in ids)
        )
        assert sorted(r.status_code for r in answers) == [200, 200, 429, 429, 429, 429]


async def test_video_seconds_per_day(
    prepared: Settings,
    clean_db: None,
    set_row: Callable[..., Awaitable[None]],
    sessions: Any,
) -> None:
    async with api(prepared, quota_video_seconds_per_day=20) as client:
        user = await new_user(client, "prolific")
        ids = [await awaiting_confirmation(client, user, set_row) for _ in range(3)]
        for gid in ids[:2]:  # 8 + 8 seconds
            assert (
                await client.post(f"/v1/generations/{gid}/confirm", headers=auth(user))
            ).status_code == 200
            await set_row(gid, status="completed")  # finished: only the seconds still count
        refused = await client.post(f"/v1/generations/{ids[2]}/confirm", headers=auth(user))
        wait = retry_after(refused)  # until the first confirmation leaves the 24 h window
        assert 86_000 < wait <= 86_400 and refused.json()["limit"] == "video_seconds_per_day"
        # An auto_confirm request that says its duration is refused before it exists.
        retry_after(
            await client.post(
                "/v1/generations",
                json={"prompt": "x", "auto_confirm": True, "params": {"duration_seconds": 6}},
                headers=auth(user),
            )
        )
        # A day later the window has moved on.
        from sqlalchemy import text

        async with sessions() as s, s.begin():
            await s.execute(
                text("UPDATE generations SET confirmed_at = confirmed_at - interval '1 day'")
            )
        r = await client.post(f"/v1/generations/{ids[2]}/confirm", headers=auth(user))
        assert r.status_code == 200, r.text


async def test_yes_in_the_chat_is_held_to_the_quotas(
    prepared: Settings, clean_db: None, set_row: Callable[..., Awaitable[None]]
) -> None:
    async with api(prepared, quota_max_concurrent_generations=1) as client:
        user = await new_user(client, "chatty")
        running = await awaiting_confirmation(client, user, set_row)
        assert (
            await client.post(f"/v1/generations/{running}/confirm", headers=auth(user))
        ).status_code == 200
        conv = (await client.post("/v1/conversations", json={}, headers=auth(user))).json()
        await awaiting_confirmation(client, user, set_row, conversation_id=conv["id"])
        said = await client.post(
            f"/v1/conversations/{conv['id']}/messages", json={"content": "yes"}, headers=auth(user)
        )
        retry_after(said)
        messages = await client.get(f"/v1/conversations/{conv['id']}/messages", headers=auth(user))
        assert messages.json()["items"] == []  # the refused message changed nothing


# --- sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/generations", {"prompt": "x" * 2001}),
        ("/v1/conversations/{conversation}/messages", {"content": "x" * 2001}),
        ("/v1/api-keys", {"name": "x" * 201}),
    ],
)
async def test_text_is_capped(
    client: httpx.AsyncClient, user: dict[str, Any], path: str, body: dict[str, Any]
) -> None:
    conv = (await client.post("/v1/conversations", json={}, headers=user["headers"])).json()
    r = await client.post(path.format(conversation=conv["id"]), json=body, headers=user["headers"])
    assert_problem(r, 422)


async def test_bodies_are_capped(client: httpx.AsyncClient, user: dict[str, Any]) -> None:
    big = json.dumps({"prompt": "x" * 100_000})
    r = await client.post(
        "/v1/generations",
        content=big,
        headers={**user["headers"], "Content-Type": "application/json"},
    )
    assert_problem(r, 413)
    assert uuid.UUID(user["id"])
