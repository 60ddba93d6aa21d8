"""The API under test: the real app with its lifespan (relay, storage) against the test database
and vhost, driven in-process through httpx's ASGI transport."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from api.app import create_app
from fastapi import FastAPI
from shared.settings import Settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.support import free_port

__all__ = ["free_port"]  # the API tests import it from conftest


ADMIN_HEADERS = {"Authorization": "Bearer test-admin-key"}
PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="session")
async def app(prepared: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(prepared)
    async with application.router.lifespan_context(application):
        yield application


def asgi_client(application: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://api.test"
    )


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
def make_user(
    client: httpx.AsyncClient, clean_db: None
) -> Callable[[str], Awaitable[dict[str, Any]]]:
    async def make(name: str = "alice") -> dict[str, Any]:
        r = await client.post("/v1/admin/users", json={"name": name}, headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text
        user = r.json()
        user["headers"] = {"Authorization": f"Bearer {user['api_key']}"}
        return user

    return make


@pytest.fixture
async def user(make_user: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    return await make_user("alice")


@pytest.fixture
def create(
    client: httpx.AsyncClient, user: dict[str, Any]
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Create a generation as `user` and return its body (asserting the 201)."""

    async def make(prompt: str = "a red fox running through fresh snow at dawn", **body: Any):
        r = await client.post(
            "/v1/generations", json={"prompt": prompt, **body}, headers=user["headers"]
        )
        assert r.status_code == 201, r.text
        return r.json()

    return make


@pytest.fixture
def set_row(
    sessions: async_sessionmaker[AsyncSession],
) -> Callable[..., Awaitable[None]]:
    """Put a generation row in a given state, as the orchestrator or worker would have."""

    async def update(generation_id: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in values)
        params = {**values, "id": uuid.UUID(generation_id)}
        for k, v in values.items():
            if isinstance(v, (dict, list)):
                sets = sets.replace(f":{k}", f"CAST(:{k} AS JSONB)")
                params[k] = json.dumps(v)
        async with sessions() as s, s.begin():
            await s.execute(text(f"UPDATE generations SET {sets} WHERE id = :id"), params)

    return update


@pytest.fixture
def row(sessions: async_sessionmaker[AsyncSession]) -> Callable[[str], Awaitable[dict[str, Any]]]:
    async def read(generation_id: str) -> dict[str, Any]:
        async with sessions() as s:
            result = await s.execute(
                text("SELECT * FROM generations WHERE id = :id"), {"id": uuid.UUID(generation_id)}
            )
            return dict(result.mappings().one())

    return read


@pytest.fixture
def outbox(
    sessions: async_sessionmaker[AsyncSession],
) -> Callable[[str], Awaitable[list[dict[str, Any]]]]:
    async def read(generation_id: str) -> list[dict[str, Any]]:
        async with sessions() as s:
            result = await s.execute(
                text("SELECT * FROM outbox WHERE correlation_id = :c ORDER BY id"),
                {"c": generation_id},
            )
            return [dict(r) for r in result.mappings().all()]

    return read


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem document with the given status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("tag:reelflow")
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture
def problem() -> Callable[[httpx.Response, int], dict[str, Any]]:
    return assert_problem
