"""Who may call what: every operation of the OpenAPI document × every kind of caller.

The operations come from `app.openapi()`, so a route added later without a row in `ROUTES`
fails `test_every_operation_has_a_row`. Path parameters are filled with the real ids of
alice's objects (a generation with its video, a conversation, a webhook endpoint and a delivery,
a spare API key); the callers are: no key, a made-up key, alice's revoked key, the admin key,
mallory's key (another user: alice's ids must be 404, never 403, and nothing of alice's may
show in any answer), and alice herself (the objects exist, so mallory's 404s mean something).
Stream routes are also opened with mallory's and with forged stream tokens.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from shared.db.models import ApiKey, Generation, WebhookDelivery, WebhookEndpoint
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .conftest import ADMIN_HEADERS, CompleteWithMedia

USER, ADMIN, OPEN, MEDIA = "user", "admin", "open", "media"
PUBLIC_HOOK = "https://hooks.example.com/alice"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


@dataclass
class World:
    """Alice's objects and every caller's credentials."""

    alice: dict[str, Any]
    mallory: dict[str, Any]
    revoked_key: str
    spare_key_id: str
    generation: str
    conversation: str
    endpoint: str
    endpoint_secret: str
    delivery: str
    media_path: str  # a signed link to alice's video (path and query)
    alice_token: str
    mallory_token: str
    secrets_of_alice: list[str] = field(default_factory=list)

    def path_value(self, name: str) -> str:
        return {
            "generation_id": self.generation,
            "conversation_id": self.conversation,
            "endpoint_id": self.endpoint,
            "delivery_id": self.delivery,
            "key_id": self.spare_key_id,
        }[name]


@dataclass(frozen=True)
class Route:
    kind: str
    owner: int | None  # alice's expected status (None: not called, e.g. an endless stream)
    other: int | None = 404  # mallory's (user routes)
    body: Callable[[World], Any] | None = None
    query: Callable[[World], dict[str, str]] | None = None
    stream: bool = False  # also takes ?token= (EventSource)


def _prompt(w: World) -> dict[str, Any]:
    return {"prompt": "a lighthouse at night", "conversation_id": w.conversation}


ROUTES: dict[tuple[str, str], Route] = {
    # Creating in alice's conversation, or listing it, is as unknown to mallory as reading it.
    ("POST", "/v1/generations"): Route(USER, 201, 404, body=_prompt),
    ("GET", "/v1/generations"): Route(
        USER, 200, 404, query=lambda w: {"conversation_id": w.conversation}
    ),
    ("GET", "/v1/generations/{generation_id}"): Route(USER, 200),
    # 404 before 409 and 422: the status of a stranger's generation must not leak either.
    ("POST", "/v1/generations/{generation_id}/answers"): Route(
        USER, 409, body=lambda w: {"answers": {"duration": "8"}}
    ),
    ("POST", "/v1/generations/{generation_id}/confirm"): Route(USER, 409),
    ("POST", "/v1/generations/{generation_id}/cancel"): Route(USER, 409),
    ("GET", "/v1/generations/{generation_id}/events"): Route(USER, 200, stream=True),
    ("GET", "/v1/generations/{generation_id}/timeline"): Route(USER, 200),
    ("GET", "/api/generations/{generation_id}/status"): Route(USER, 200),
    ("POST", "/v1/conversations"): Route(USER, 201, 201, body=lambda w: {"title": "mine"}),
    ("GET", "/v1/conversations"): Route(USER, 200, 200),
    ("GET", "/v1/conversations/{conversation_id}"): Route(USER, 200),
    ("GET", "/v1/conversations/{conversation_id}/messages"): Route(USER, 200),
    ("POST", "/v1/conversations/{conversation_id}/messages"): Route(
        USER, 201, body=lambda w: {"content": "hello there"}
    ),
    # Endless for its owner (a live conversation): only the refusals are checked.
    ("GET", "/v1/conversations/{conversation_id}/events"): Route(USER, None, stream=True),
    ("POST", "/v1/stream-tokens"): Route(USER, 201, 201),
    ("POST", "/v1/webhook-endpoints"): Route(USER, 201, 201, body=lambda w: {"url": PUBLIC_HOOK}),
    ("GET", "/v1/webhook-endpoints"): Route(USER, 200, 200),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}"): Route(USER, 200),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): Route(USER, 200),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/enable"): Route(USER, 200),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}/deliveries"): Route(USER, 200),
    ("POST", "/v1/webhook-deliveries/{delivery_id}/redeliver"): Route(USER, 202),
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/resend-failed"): Route(
        USER, 202, body=lambda w: {"since": (datetime.now(UTC) - timedelta(days=1)).isoformat()}
    ),
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"): Route(USER, 204),
    ("GET", "/v1/api-keys"): Route(USER, 200, 200),
    ("POST", "/v1/api-keys"): Route(USER, 201, 201, body=lambda w: {"name": "ci"}),
    ("DELETE", "/v1/api-keys/{key_id}"): Route(USER, 204),
    ("POST", "/v1/admin/users"): Route(ADMIN, 201, body=lambda w: {"name": "newcomer"}),
    ("GET", "/media/{key}"): Route(MEDIA, 200),
    ("GET", "/healthz"): Route(OPEN, 200),
    ("GET", "/readyz"): Route(OPEN, 200),
    ("GET", "/metrics"): Route(OPEN, 200),
}

# Routes the OpenAPI document leaves out on purpose, each checked below.
HIDDEN = {("HEAD", "/media/{key:path}"), ("GET", "/"), ("GET", "/web/{name}")}


def operations(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, through included routers (FastAPI keeps them as branches)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_every_operation_has_a_row(app: FastAPI) -> None:
    ops = operations(app)
    assert ops - ROUTES.keys() == set(), "new operations need a row in ROUTES"
    assert ROUTES.keys() - ops == set(), "rows for operations that are gone"
    hidden = {
        (m, r.path)
        for r in api_routes(app.routes)
        if not r.include_in_schema
        for m in r.methods or ()
    }
    assert hidden == HIDDEN, "a route hidden from the OpenAPI document needs checking here"


# --- the world -----------------------------------------------------------------------------


async def _key(client: httpx.AsyncClient, owner: dict[str, Any], name: str) -> dict[str, Any]:
    r = await client.post("/v1/api-keys", json={"name": name}, headers=owner["headers"])
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _token(client: httpx.AsyncClient, owner: dict[str, Any]) -> str:
    r = await client.post("/v1/stream-tokens", headers=owner["headers"])
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@pytest.fixture
async def world(
    client: httpx.AsyncClient,
    make_user: Callable[[str], Awaitable[dict[str, Any]]],
    complete_with_media: CompleteWithMedia,
    sessions: async_sessionmaker[AsyncSession],
) -> World:
    alice, mallory = await make_user("alice"), await make_user("mallory")
    revoked = await _key(client, alice, "old laptop")
    r = await client.delete(f"/v1/api-keys/{revoked['id']}", headers=alice["headers"])
    assert r.status_code == 204
    spare = await _key(client, alice, "spare")

    conv = (await client.post("/v1/conversations", json={}, headers=alice["headers"])).json()
    said = await client.post(
        f"/v1/conversations/{conv['id']}/messages",
        json={"content": "hello"},
        headers=alice["headers"],
    )
    assert said.status_code == 201, said.text
    gen = await client.post(
        "/v1/generations",
        json={"prompt": "a fox in the snow", "conversation_id": conv["id"]},
        headers=alice["headers"],
    )
    assert gen.status_code == 201, gen.text
    gid = gen.json()["id"]
    await complete_with_media(alice["id"], gid, VIDEO, JPEG)
    read = (await client.get(f"/v1/generations/{gid}", headers=alice["headers"])).json()
    video = urlsplit(read["result"]["video_url"])

    hook = await client.post(
        "/v1/webhook-endpoints", json={"url": PUBLIC_HOOK}, headers=alice["headers"]
    )
    assert hook.status_code == 201, hook.text
    delivery = WebhookDelivery(
        webhook_id=f"msg_{uuid.uuid4().hex}",
        target=hook.json()["id"],
        endpoint_id=uuid.UUID(hook.json()["id"]),
        url=PUBLIC_HOOK,
        event="generation.completed",
        generation_id=uuid.UUID(gid),
        payload=json.dumps({"event": "generation.completed", "generationId": gid}),
        status="failed",
    )
    async with sessions() as s, s.begin():
        s.add(delivery)
    return World(
        alice=alice,
        mallory=mallory,
        revoked_key=revoked["api_key"],
        spare_key_id=spare["id"],
        generation=gid,
        conversation=conv["id"],
        endpoint=hook.json()["id"],
        endpoint_secret=hook.json()["secret"],
        delivery=str(delivery.id),
        media_path=f"{video.path}?{video.query}",
        alice_token=await _token(client, alice),
        mallory_token=await _token(client, mallory),
        secrets_of_alice=[alice["api_key"], revoked["api_key"], spare["api_key"]],
    )


# --- the matrix ----------------------------------------------------------------------------


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def callers(w: World) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """name -> (headers, extra query)."""
    return {
        "no key": ({}, {}),
        "bad key": (_bearer("rf_live_" + secrets.token_urlsafe(32)), {}),
        "old-style bad key": (_bearer("rf_" + secrets.token_urlsafe(32)), {}),
        "revoked key": (_bearer(w.revoked_key), {}),
        "admin key": (ADMIN_HEADERS, {}),
        "other user": (w.mallory["headers"], {}),
        "other user's stream token": ({}, {"token": w.mallory_token}),
        "forged stream token": ({}, {"token": w.alice_token[:-4] + "AAAA"}),
    }


def expected(route: Route, caller: str) -> int | None:
    """The status a caller must get (None: this caller does not apply to this route)."""
    by_token = caller.endswith("stream token")
    if route.kind == OPEN:
        return None if by_token else 200
    if route.kind == MEDIA:
        return None if by_token else 200  # the signed link is the permission, whoever sends it
    if route.kind == ADMIN:
        if by_token:
            return None
        return 201 if caller == "admin key" else 401
    if by_token and not route.stream:
        return None
    if caller in ("other user", "other user's stream token"):
        return route.other
    return 401


async def call(
    client: httpx.AsyncClient,
    w: World,
    method: str,
    template: str,
    route: Route,
    headers: dict[str, str],
    query: dict[str, str],
) -> httpx.Response:
    if route.kind == MEDIA:
        return await client.request(method, w.media_path, headers=headers)
    path = template
    for name in ("generation_id", "conversation_id", "endpoint_id", "delivery_id", "key_id"):
        path = path.replace("{" + name + "}", w.path_value(name))
    params = {**(route.query(w) if route.query else {}), **query}
    body = route.body(w) if route.body else None
    return await client.request(method, path, headers=headers, params=params, json=body)


def assert_nothing_of_alice(w: World, response: httpx.Response, where: str) -> None:
    text = response.text
    for value in (
        w.generation,
        w.conversation,
        w.endpoint,
        w.delivery,
        w.spare_key_id,
        w.alice["id"],
        w.endpoint_secret,
        *w.secrets_of_alice,
    ):
        assert value not in text, f"{where}: alice's {value[:12]}… shows"


async def test_the_matrix(client: httpx.AsyncClient, world: World) -> None:
    w = world
    checked = 0
    # Strangers first: none of this may change anything of alice's.
    for (method, template), route in ROUTES.items():
        for caller, (headers, query) in callers(w).items():
            want = expected(route, caller)
            if want is None:
                continue
            r = await call(client, w, method, template, route, headers, query)
            where = f"{method} {template} as {caller}"
            assert r.status_code == want, f"{where}: {r.status_code} {r.text[:300]}"
            checked += 1
            if want == 401:
                assert r.headers["www-authenticate"].startswith("Bearer"), where
                assert r.headers["content-type"].startswith("application/problem+json"), where
            if route.kind == USER:
                assert_nothing_of_alice(w, r, where)
    await _alice_untouched(client, w)

    # Then alice: her objects are there (so the 404s above were about ownership), with the
    # destructive calls last.
    order = sorted(ROUTES.items(), key=lambda item: item[0][0] == "DELETE")
    for (method, template), route in order:
        if route.owner is None or route.kind in (ADMIN, OPEN):
            continue
        r = await call(client, w, method, template, route, w.alice["headers"], {})
        assert r.status_code == route.owner, f"{method} {template} as alice: {r.text[:300]}"
        checked += 1
    assert checked >= 200


async def _alice_untouched(client: httpx.AsyncClient, w: World) -> None:
    gen = (await client.get(f"/v1/generations/{w.generation}", headers=w.alice["headers"])).json()
    assert gen["status"] == "completed"
    hook = await client.get(f"/v1/webhook-endpoints/{w.endpoint}", headers=w.alice["headers"])
    assert hook.status_code == 200 and hook.json()["status"] == "active"
    keys = (await client.get("/v1/api-keys", headers=w.alice["headers"])).json()["items"]
    spare = next(k for k in keys if k["id"] == w.spare_key_id)
    assert spare["revoked_at"] is None
    deliveries = await client.get(
        f"/v1/webhook-endpoints/{w.endpoint}/deliveries", headers=w.alice["headers"]
    )
    assert [a for d in deliveries.json()["items"] for a in d["attempts"]] == []


async def test_secrets_never_come_back_after_creation(
    client: httpx.AsyncClient, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Every read of alice's things, by alice: neither her keys nor her webhook secret."""
    w = world
    for (method, template), route in ROUTES.items():
        if method != "GET" or route.kind != USER or route.owner is None:
            continue
        r = await call(client, w, method, template, route, w.alice["headers"], {})
        for secret in (w.endpoint_secret, *w.secrets_of_alice):
            assert secret not in r.text, f"GET {template} shows a secret"
    async with sessions() as s:
        rows = (await s.execute(ApiKey.metadata.tables["api_keys"].select())).mappings().all()
        stored = json.dumps([dict(r) for r in rows], default=str)
        assert rows and all(key not in stored for key in w.secrets_of_alice)
        gen = await s.get(Generation, uuid.UUID(w.generation))
        endpoint = await s.get(WebhookEndpoint, uuid.UUID(w.endpoint))
        assert gen is not None and endpoint is not None


async def test_hidden_routes(client: httpx.AsyncClient, world: World) -> None:
    assert (await client.get("/")).status_code == 200
    assert (await client.get("/web/app.js")).status_code == 200
    assert (await client.get("/web/..%2F..%2Fapp.py")).status_code == 404
    head = await client.head(world.media_path)
    assert head.status_code == 200
    unsigned = world.media_path.split("?")[0]
    assert (await client.head(unsigned)).status_code == 403
