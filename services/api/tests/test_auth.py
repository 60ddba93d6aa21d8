"""API keys and the admin key: 401 with a Bearer challenge, admin routes off without a key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from api.app import create_app
from shared.settings import Settings

from .conftest import ADMIN_HEADERS, asgi_client

Problem = Callable[[httpx.Response, int], dict[str, Any]]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer rf_not-a-real-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "rf_no-scheme"},
        {"Authorization": "Bearer test-admin-key"},  # the admin key is not a user's key
    ],
)
async def test_user_routes_need_a_valid_key(
    client: httpx.AsyncClient, user: dict[str, Any], problem: Problem, headers: dict[str, str]
) -> None:
    for method, path, body in (
        ("POST", "/v1/generations", {"prompt": "a fox in the snow at dawn"}),
        ("GET", "/v1/generations", None),
        ("GET", "/v1/generations/00000000-0000-0000-0000-000000000000", None),
        ("POST", "/v1/generations/00000000-0000-0000-0000-000000000000/confirm", None),
        ("GET", "/api/generations/00000000-0000-0000-0000-000000000000/status", None),
    ):
        r = await client.request(method, path, json=body, headers=headers)
        problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)


async def test_admin_creates_users_whose_keys_work(
    client: httpx.AsyncClient, clean_db: None
) -> None:
    r = await client.post("/v1/admin/users", json={"name": "  bob  "}, headers=ADMIN_HEADERS)
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "name", "api_key"} and body["name"] == "bob"
    assert body["api_key"].startswith("rf_")
    me = {"Authorization": f"Bearer {body['api_key']}"}
    assert (await client.get("/v1/generations", headers=me)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer test-admin-keyX"}],
)
async def test_admin_route_needs_the_admin_key(
    client: httpx.AsyncClient, user: dict[str, Any], problem: Problem, headers: dict[str, str]
) -> None:
    r = await client.post("/v1/admin/users", json={"name": "eve"}, headers=headers)
    problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    # A user's own key is not the admin key either.
    problem(
        await client.post("/v1/admin/users", json={"name": "eve"}, headers=user["headers"]), 401
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 201},
        {"name": 7},
        {"name": "a\u0000b"},
        {"name": "ok", "extra": 1},
    ],
)
async def test_admin_refuses_bad_names(
    client: httpx.AsyncClient, clean_db: None, problem: Problem, body: dict[str, Any]
) -> None:
    r = await client.post("/v1/admin/users", json=body, headers=ADMIN_HEADERS)
    assert problem(r, 422)["errors"]


@pytest.fixture(scope="module")
async def no_admin_client(prepared: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(prepared.model_copy(update={"admin_api_key": None}))
    async with app.router.lifespan_context(app), asgi_client(app) as c:
        yield c


async def test_admin_routes_are_off_without_an_admin_key(
    no_admin_client: httpx.AsyncClient, problem: Problem
) -> None:
    no_key: dict[str, str] = {}
    for headers in (no_key, ADMIN_HEADERS):
        r = await no_admin_client.post("/v1/admin/users", json={"name": "x"}, headers=headers)
        problem(r, 404)
