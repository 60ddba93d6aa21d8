"""The API under test: the real app with its lifespan (relay, storage) against the test database
and vhost, driven in-process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from api.app import create_app
from fastapi import FastAPI
from pydantic import SecretStr
from shared.media import thumbnail_key, video_key
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


@pytest.fixture(scope="module")
async def veo_client(prepared: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the Veo provider configured. It never calls Veo; it only checks requests
    against the configured provider (its models and prices)."""
    cfg = prepared.model_copy(
        update={"video_provider": "veo", "gemini_api_key": SecretStr("not-used")}
    )
    application = create_app(cfg)
    async with application.router.lifespan_context(application), asgi_client(application) as c:
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


CompleteWithMedia = Callable[[str, str, bytes, bytes], Awaitable[None]]


@pytest.fixture
def complete_with_media(
    set_row: Callable[..., Awaitable[None]], prepared: Settings
) -> CompleteWithMedia:
    """`await complete_with_media(user_id, generation_id, video, thumbnail)`: the generation
    completed as the worker would leave it, its video and thumbnail in local storage."""

    async def complete(user_id: str, generation_id: str, video: bytes, thumbnail: bytes) -> None:
        uid, gid = uuid.UUID(user_id), uuid.UUID(generation_id)
        root = Path(prepared.local_storage_dir)
        for key, data in ((video_key(uid, gid), video), (thumbnail_key(uid, gid), thumbnail)):
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)
        result = {
            "video_key": video_key(uid, gid),
            "thumbnail_key": thumbnail_key(uid, gid),
            "duration_seconds": 4.0,
            "file_size_bytes": len(video),
            "resolution": "1280x720",
            "format": "mp4",
            "processing_time_ms": 1000,
        }
        await set_row(generation_id, status="completed", result=result, version=6)

    return complete


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


async def _wait_ready(base: str, proc: asyncio.subprocess.Process, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient(base_url=base) as http:
        while asyncio.get_running_loop().time() < deadline:
            assert proc.returncode is None, "the API process exited"
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the API did not become ready")


ServeApi = Callable[..., Awaitable[tuple[asyncio.subprocess.Process, str]]]


@pytest.fixture
async def serve_api(
    env: dict[str, str], clean_db: None, reelflow_bin: str
) -> AsyncIterator[ServeApi]:
    """`proc, base = await serve_api(stderr=…)`: `reelflow api` as a process of its own on a free
    port, once it is ready; killed at the end of the test if it is still running."""
    started: list[asyncio.subprocess.Process] = []

    async def start(
        stderr: int = asyncio.subprocess.DEVNULL,
    ) -> tuple[asyncio.subprocess.Process, str]:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            reelflow_bin,
            "api",
            env={**os.environ, **env, "API_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
        started.append(proc)
        base = f"http://127.0.0.1:{port}"
        await _wait_ready(base, proc)
        return proc, base

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def problem() -> Callable[[httpx.Response, int], dict[str, Any]]:
    return assert_problem
