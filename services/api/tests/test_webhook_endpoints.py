"""`/v1/webhook-endpoints` and `/v1/webhook-deliveries`: registration and its checks, secrets
shown once, rotation, deletion, re-enabling, the delivery log, redeliver and resend-failed (what
they queue).
The notifier's side of redeliveries runs in tests/e2e/test_webhooks.py."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from notifier import sql as notifier_sql
from shared.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.messages import WebhookDeliveryRequested
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

Problem = Callable[[httpx.Response, int], dict[str, Any]]
User = dict[str, Any]
ROOT = "/v1/webhook-endpoints"
PUBLIC_URL = "https://hooks.example.com/reelflow"
ALL_BUT_PROGRESS = None


async def register(client: httpx.AsyncClient, user: User, **body: Any) -> dict[str, Any]:
    r = await client.post(ROOT, json={"url": PUBLIC_URL, **body}, headers=user["headers"])
    assert r.status_code == 201, r.text
    return dict(r.json())


Refusal = Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture
def refusal(client: httpx.AsyncClient, user: User, problem: Problem) -> Refusal:
    """`await refusal(url)`: the 422 problem that registering `url` is answered with, its first
    error on the url field."""

    async def register_refused(url: str) -> dict[str, Any]:
        r = await client.post(ROOT, json={"url": url}, headers=user["headers"])
        body = problem(r, 422)
        assert body["errors"][0]["field"] == "url", body
        return body

    return register_refused


# --- registration ---------------------------------------------------------------------------


async def test_a_new_endpoint_shows_its_secret_once(client: httpx.AsyncClient, user: User) -> None:
    made = await register(client, user, description="orders")
    assert made["url"] == PUBLIC_URL and made["description"] == "orders"
    assert made["status"] == "active" and made["events"] is ALL_BUT_PROGRESS
    assert made["secret"].startswith("whsec_")
    assert len(base64.b64decode(made["secret"].removeprefix("whsec_"))) == 32

    read = await client.get(f"{ROOT}/{made['id']}", headers=user["headers"])
    assert read.status_code == 200
    assert read.json() == {
        "id": made["id"],
        "url": PUBLIC_URL,
        "events": None,
        "description": "orders",
        "status": "active",
        "disabled_reason": None,
        "created_at": made["created_at"],
    }
    listed = (await client.get(ROOT, headers=user["headers"])).json()
    assert [e["id"] for e in listed["items"]] == [made["id"]]
    assert "secret" not in listed["items"][0] and listed["next_cursor"] is None
    other = await register(client, user)
    assert other["secret"] != made["secret"]


async def test_events_are_checked_against_the_event_names(
    client: httpx.AsyncClient, user: User, problem: Problem
) -> None:
    made = await register(
        client,
        user,
        events=["generation.completed", "generation.progress", "generation.completed"],
    )
    assert made["events"] == ["generation.completed", "generation.progress"]
    for events in (["generation.finished"], [], "generation.completed", [1]):
        r = await client.post(
            ROOT, json={"url": PUBLIC_URL, "events": events}, headers=user["headers"]
        )
        body = problem(r, 422)
        assert body["errors"][0]["field"].startswith("events"), body
    r = await client.post(
        ROOT, json={"url": PUBLIC_URL, "events": ["generation.nope"]}, headers=user["headers"]
    )
    assert "generation.completed" in problem(r, 422)["errors"][0]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "hooks.example.com/x",
        "https:///nohost",
        "https://hooks.example.com:99999/x",
        "https://hooks example.com/x",
        "javascript:alert(1)",
    ],
)
async def test_only_http_urls_are_accepted(refusal: Refusal, url: str) -> None:
    await refusal(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]:8080/hook",
        "http://[::ffff:a9fe:a9fe]/",
        "http://127.0.0.1:9000/hook",
        "http://10.0.0.7/hook",
        "http://172.16.3.4/hook",
        "http://192.168.1.10/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1%25eth0]/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "http://127.1/hook",
        "http://localhost:8000/hook",
        "http://LOCALHOST./hook",
        "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/hook",
        "http://api.localhost/hook",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://printer.local/hook",
        "http://rabbitmq:15672/api/definitions",
        "http://%6c%6fcalhost/hook",
    ],
)
async def test_obviously_internal_urls_are_refused(refusal: Refusal, url: str) -> None:
    assert "cannot be used" in (await refusal(url))["detail"]


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/x?token=a", "http://93.184.216.34/x", "https://[2606:4700::1]/"],
)
async def test_public_urls_are_accepted(client: httpx.AsyncClient, user: User, url: str) -> None:
    assert (await register(client, user, url=url))["url"] == url


async def test_bodies_are_validated(
    client: httpx.AsyncClient, user: User, problem: Problem
) -> None:
    for body in ({}, {"url": PUBLIC_URL, "secret": "mine"}, {"url": "x" * 2001}):
        problem(await client.post(ROOT, json=body, headers=user["headers"]), 422)
    problem(await client.post(ROOT, json={"url": PUBLIC_URL}), 401)


# --- reading, deleting, rotating ------------------------------------------------------------


async def test_another_users_endpoints_are_not_found(
    client: httpx.AsyncClient,
    user: User,
    make_user: Callable[[str], Awaitable[User]],
    problem: Problem,
) -> None:
    mine = await register(client, user)
    bob = await make_user("bob")
    since = {"since": "2026-01-01T00:00:00Z"}
    for method, path, body in [
        ("GET", f"{ROOT}/{mine['id']}", None),
        ("DELETE", f"{ROOT}/{mine['id']}", None),
        ("POST", f"{ROOT}/{mine['id']}/rotate-secret", None),
        ("POST", f"{ROOT}/{mine['id']}/enable", None),
        ("GET", f"{ROOT}/{mine['id']}/deliveries", None),
        ("POST", f"{ROOT}/{mine['id']}/resend-failed", since),
        ("GET", f"{ROOT}/{uuid.uuid4()}", None),
        ("POST", f"{ROOT}/{uuid.uuid4()}/enable", None),
        ("GET", f"{ROOT}/not-an-id", None),
        ("POST", f"/v1/webhook-deliveries/{uuid.uuid4()}/redeliver", None),
    ]:
        r = await client.request(method, path, json=body, headers=bob["headers"])
        problem(r, 404)
    assert (await client.get(ROOT, headers=bob["headers"])).json()["items"] == []
    assert (await client.get(f"{ROOT}/{mine['id']}", headers=user["headers"])).status_code == 200


async def test_pages_of_endpoints_newest_first(client: httpx.AsyncClient, user: User) -> None:
    made = [(await register(client, user))["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(ROOT, params=params, headers=user["headers"])).json()
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))


async def test_a_deleted_endpoint_is_gone_for_its_owner_and_kept_for_the_log(
    client: httpx.AsyncClient,
    user: User,
    problem: Problem,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    made = await register(client, user)
    r = await client.delete(f"{ROOT}/{made['id']}", headers=user["headers"])
    assert r.status_code == 204 and r.content == b""
    problem(await client.get(f"{ROOT}/{made['id']}", headers=user["headers"]), 404)
    problem(await client.delete(f"{ROOT}/{made['id']}", headers=user["headers"]), 404)
    assert (await client.get(ROOT, headers=user["headers"])).json()["items"] == []
    async with sessions() as s:
        row = await s.get(WebhookEndpoint, uuid.UUID(made["id"]))
    assert row is not None and row.status == "deleted"


async def test_rotation_shows_the_new_secret_once_and_keeps_the_old_one_for_the_grace(
    client: httpx.AsyncClient, user: User, sessions: async_sessionmaker[AsyncSession]
) -> None:
    made = await register(client, user)
    r = await client.post(f"{ROOT}/{made['id']}/rotate-secret", headers=user["headers"])
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["id"] == made["id"] and rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != made["secret"]
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    expected = datetime.now(UTC) + timedelta(hours=24)
    assert abs((expires - expected).total_seconds()) < 60
    async with sessions() as s:
        row = await s.get(WebhookEndpoint, uuid.UUID(made["id"]))
    assert row is not None
    assert (row.secret, row.previous_secret) == (rotated["secret"], made["secret"])
    read = (await client.get(f"{ROOT}/{made['id']}", headers=user["headers"])).json()
    assert "secret" not in json.dumps(read)


# --- the delivery log -----------------------------------------------------------------------


async def add_delivery(
    sessions: async_sessionmaker[AsyncSession],
    endpoint_id: str | None,
    status: str,
    codes: list[int | None],
    *,
    created_at: datetime | None = None,
) -> WebhookDelivery:
    """A delivery and its attempts, as the notifier would have written them."""
    key = uuid.uuid4().hex
    delivery = WebhookDelivery(
        webhook_id=f"msg_{key}",
        target=endpoint_id or "nextjs",
        endpoint_id=uuid.UUID(endpoint_id) if endpoint_id else None,
        url=PUBLIC_URL,
        event="generation.completed",
        generation_id=uuid.uuid4(),
        payload='{"event":"generation.completed"}',
        status=status,
        next_attempt_at=datetime.now(UTC) + timedelta(minutes=5) if status == "pending" else None,
        created_at=created_at or datetime.now(UTC),
    )
    start = datetime.now(UTC) - timedelta(minutes=10)
    async with sessions() as s, s.begin():
        s.add(delivery)
        await s.flush()
        for i, code in enumerate(codes):
            s.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    at=start + timedelta(seconds=i),
                    status_code=code,
                    latency_ms=12,
                    error=None if code else "no answer within 15s",
                )
            )
    return delivery


async def test_deliveries_list_every_attempt_newest_delivery_first(
    client: httpx.AsyncClient,
    user: User,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    endpoint = await register(client, user)
    old = await add_delivery(
        sessions,
        endpoint["id"],
        "succeeded",
        [500, None, 200],
        created_at=datetime.now(UTC) - timedelta(hours=1),
    )
    pending = await add_delivery(sessions, endpoint["id"], "pending", [503])
    other = await register(client, user)
    await add_delivery(sessions, other["id"], "failed", [500])

    path = f"{ROOT}/{endpoint['id']}/deliveries"
    body = (await client.get(path, headers=user["headers"])).json()
    assert [d["id"] for d in body["items"]] == [str(pending.id), str(old.id)]
    first, second = body["items"]
    assert first["status"] == "pending" and first["next_attempt_at"] is not None
    assert second == {
        "id": str(old.id),
        "webhook_id": old.webhook_id,
        "endpoint_id": endpoint["id"],
        "event": "generation.completed",
        "generation_id": str(old.generation_id),
        "status": "succeeded",
        "attempts": [
            {
                "at": a["at"],
                "status_code": code,
                "latency_ms": 12,
                "error": None if code else "no answer within 15s",
                "response_excerpt": None,
                "manual": False,
            }
            for a, code in zip(second["attempts"], [500, None, 200], strict=True)
        ],
        "next_attempt_at": None,
        "created_at": second["created_at"],
    }
    stamps = [a["at"] for a in second["attempts"]]
    assert stamps == sorted(stamps)

    page = (await client.get(path, params={"limit": 1}, headers=user["headers"])).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = await client.get(
        path, params={"limit": 1, "cursor": page["next_cursor"]}, headers=user["headers"]
    )
    assert [d["id"] for d in rest.json()["items"]] == [str(old.id)]
    only = await client.get(path, params={"status": "pending"}, headers=user["headers"])
    assert [d["id"] for d in only.json()["items"]] == [str(pending.id)]


async def queued_commands(
    sessions: async_sessionmaker[AsyncSession],
) -> list[WebhookDeliveryRequested]:
    from shared.db.models import OutboxMessage

    async with sessions() as s:
        rows = await s.scalars(
            select(OutboxMessage)
            .where(col(OutboxMessage.type) == WebhookDeliveryRequested.TYPE)
            .order_by(col(OutboxMessage.id))
        )
        return [WebhookDeliveryRequested.model_validate_json(r.body) for r in rows]


Redeliver = Callable[[WebhookDelivery], Awaitable[httpx.Response]]


@pytest.fixture
def redeliver(client: httpx.AsyncClient, user: User) -> Redeliver:
    """`await redeliver(delivery)`: the user's POST /v1/webhook-deliveries/{id}/redeliver."""

    async def post(delivery: WebhookDelivery) -> httpx.Response:
        return await client.post(
            f"/v1/webhook-deliveries/{delivery.id}/redeliver", headers=user["headers"]
        )

    return post


async def test_redeliver_reopens_a_finished_delivery_as_its_next_manual_attempt(
    client: httpx.AsyncClient,
    user: User,
    redeliver: Redeliver,
    problem: Problem,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    endpoint = await register(client, user)
    failed = await add_delivery(sessions, endpoint["id"], "failed", [500, 500, 500])
    r = await redeliver(failed)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending" and r.json()["webhook_id"] == failed.webhook_id
    assert len(r.json()["attempts"]) == 3
    (command,) = await queued_commands(sessions)
    assert (command.delivery_id, command.attempt, command.manual) == (failed.id, 4, True)

    # Twice in a row: the first is still under way.
    assert problem(await redeliver(failed), 409)["type"].endswith("delivery-pending")
    assert len(await queued_commands(sessions)) == 1

    succeeded = await add_delivery(sessions, endpoint["id"], "succeeded", [200])
    r = await redeliver(succeeded)
    assert r.status_code == 202
    assert (await queued_commands(sessions))[-1].attempt == 2

    # The operator's NEXTJS_URL deliveries belong to no user.
    nextjs = await add_delivery(sessions, None, "failed", [500])
    problem(await redeliver(nextjs), 404)


async def test_nothing_is_resent_to_a_disabled_endpoint(
    client: httpx.AsyncClient,
    user: User,
    redeliver: Redeliver,
    problem: Problem,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    endpoint = await register(client, user)
    failed = await add_delivery(sessions, endpoint["id"], "failed", [410])
    async with sessions() as s, s.begin():
        row = await s.get(WebhookEndpoint, uuid.UUID(endpoint["id"]))
        assert row is not None
        row.status, row.disabled_reason = "disabled", "The endpoint answered 410 Gone."
    read = (await client.get(f"{ROOT}/{endpoint['id']}", headers=user["headers"])).json()
    assert (read["status"], read["disabled_reason"]) == (
        "disabled",
        "The endpoint answered 410 Gone.",
    )
    assert "410" in problem(await redeliver(failed), 409)["detail"]
    r = await client.post(
        f"{ROOT}/{endpoint['id']}/resend-failed",
        json={"since": "2020-01-01T00:00:00Z"},
        headers=user["headers"],
    )
    problem(r, 409)
    assert await queued_commands(sessions) == []


async def test_a_disabled_endpoint_can_be_enabled_again(
    app: FastAPI,
    client: httpx.AsyncClient,
    user: User,
    make_user: Callable[[str], Awaitable[User]],
    redeliver: Redeliver,
    problem: Problem,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    endpoint = await register(client, user)
    endpoint_id = uuid.UUID(endpoint["id"])
    failed = await add_delivery(sessions, endpoint["id"], "failed", [500, 500])
    # Disabled as the notifier does it: a failure streak begun six days ago, then DISABLE.
    pg = app.state.pg
    began = datetime.now(UTC) - timedelta(days=6)
    assert await pg.fetchval(notifier_sql.STREAK_START, endpoint_id, began) == began
    reason = "Every attempt failed for six days."
    assert await pg.fetchval(notifier_sql.DISABLE, endpoint_id, reason) == endpoint_id
    path = f"{ROOT}/{endpoint['id']}"
    read = (await client.get(path, headers=user["headers"])).json()
    assert (read["status"], read["disabled_reason"]) == ("disabled", reason)
    assert await pg.fetch(notifier_sql.ENDPOINTS_OF_USERS, [uuid.UUID(user["id"])]) == []

    # Another user's endpoint is as unknown to them as a made-up id, and stays disabled.
    bob = await make_user("bob")
    problem(await client.post(f"{path}/enable", headers=bob["headers"]), 404)
    problem(await client.post(f"{ROOT}/{uuid.uuid4()}/enable", headers=user["headers"]), 404)
    assert (await client.get(path, headers=user["headers"])).json()["status"] == "disabled"

    r = await client.post(f"{path}/enable", headers=user["headers"])
    assert r.status_code == 200, r.text
    expected = {**read, "status": "active", "disabled_reason": None}
    assert r.json() == expected
    assert (await client.get(path, headers=user["headers"])).json() == expected
    # Enabling an active endpoint changes nothing.
    again = await client.post(f"{path}/enable", headers=user["headers"])
    assert again.status_code == 200 and again.json() == expected

    # The notifier picks it for new events again, and its next failure starts a new streak
    # (the old one is gone: one more failed attempt does not disable it at once).
    (found,) = await pg.fetch(notifier_sql.ENDPOINTS_OF_USERS, [uuid.UUID(user["id"])])
    assert found["id"] == endpoint_id
    now = datetime.now(UTC)
    assert await pg.fetchval(notifier_sql.STREAK_START, endpoint_id, now) == now
    # Nothing was resent by itself; the failed delivery is redelivered on request.
    assert await queued_commands(sessions) == []
    async with sessions() as s:
        assert (await s.get(WebhookDelivery, failed.id)).status == "failed"  # type: ignore[union-attr]
    r = await redeliver(failed)
    assert r.status_code == 202, r.text
    assert [(c.delivery_id, c.attempt) for c in await queued_commands(sessions)] == [(failed.id, 3)]


async def test_a_deleted_endpoint_cannot_be_enabled(
    client: httpx.AsyncClient, user: User, problem: Problem
) -> None:
    made = await register(client, user)
    assert (await client.delete(f"{ROOT}/{made['id']}", headers=user["headers"])).status_code == 204
    problem(await client.post(f"{ROOT}/{made['id']}/enable", headers=user["headers"]), 404)


async def test_resend_failed_since_queues_each_failed_delivery_once(
    client: httpx.AsyncClient,
    user: User,
    problem: Problem,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    endpoint = await register(client, user)
    now = datetime.now(UTC)
    before = await add_delivery(
        sessions, endpoint["id"], "failed", [500], created_at=now - timedelta(hours=2)
    )
    recent = [
        await add_delivery(
            sessions, endpoint["id"], "failed", [500, 502], created_at=now - timedelta(minutes=m)
        )
        for m in (30, 20)
    ]
    await add_delivery(sessions, endpoint["id"], "succeeded", [200])
    await add_delivery(sessions, endpoint["id"], "pending", [500])
    since = (now - timedelta(hours=1)).isoformat()
    path = f"{ROOT}/{endpoint['id']}/resend-failed"

    r = await client.post(path, json={"since": since}, headers=user["headers"])
    assert r.status_code == 202, r.text
    assert r.json() == {"queued": 2, "more": False}
    commands = await queued_commands(sessions)
    assert {(c.delivery_id, c.attempt, c.manual) for c in commands} == {
        (d.id, 3, True) for d in recent
    }
    async with sessions() as s:
        assert (await s.get(WebhookDelivery, before.id)).status == "failed"  # type: ignore[union-attr]
    # Those two are pending now: asking again queues nothing more.
    r = await client.post(path, json={"since": since}, headers=user["headers"])
    assert r.json() == {"queued": 0, "more": False}

    for bad in ({"since": "2026-01-01T00:00:00"}, {"since": "yesterday"}, {}):
        problem(await client.post(path, json=bad, headers=user["headers"]), 422)
