"""Health, readiness and metrics; and `serve()` as a real process (chunked upload over a socket,
graceful exit on SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api.app import create_app
from shared.settings import Settings

from .conftest import ADMIN_HEADERS, ServeApi, asgi_client


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "ok": True,
        "database": True,
        "broker": True,
        "outbox_relay": True,
        "live_feed": True,
    }


@pytest.fixture(scope="module")
async def no_database_client(prepared: Settings) -> AsyncIterator[httpx.AsyncClient]:
    # Nothing listens on port 1; MEDIA_SIGNING_KEY is set, so starting needs no database.
    cfg = prepared.model_copy(update={"database_url": "postgresql://postgres@127.0.0.1:1/x"})
    app = create_app(cfg)
    async with app.router.lifespan_context(app), asgi_client(app) as c:
        yield c


async def test_readyz_is_503_without_the_database(no_database_client: httpx.AsyncClient) -> None:
    r = await no_database_client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["database"] is False and r.json()["broker"] is True


async def test_metrics_count_requests_by_route_template(
    client: httpx.AsyncClient, user: dict[str, Any]
) -> None:
    gid = "00000000-0000-0000-0000-000000000000"
    await client.get(f"/v1/generations/{gid}", headers=user["headers"])
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        'reelflow_http_requests_total{method="GET",route="/v1/generations/{generation_id}",'
        'status="404"}' in text
    )
    assert "reelflow_http_request_duration_seconds_bucket" in text
    assert gid not in text  # templates, not raw paths
    assert "reelflow_outbox_published" in text


async def test_serve_runs_uvicorn_and_stops_cleanly_on_sigterm(
    prepared: Settings, serve_api: ServeApi
) -> None:
    proc, base = await serve_api(stderr=asyncio.subprocess.PIPE)
    async with httpx.AsyncClient(base_url=base) as http:

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"name": "'
            for _ in range(prepared.max_body_bytes // 1000 + 1):
                yield b"x" * 1000
            yield b'"}'

        r = await http.post("/v1/admin/users", content=chunks(), headers=ADMIN_HEADERS)
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await http.post("/v1/admin/users", json={"name": "sam"}, headers=ADMIN_HEADERS)
        assert r.status_code == 201
        key = {"Authorization": f"Bearer {r.json()['api_key']}", "X-Request-ID": "it-req-1"}
        r = await http.post("/v1/generations", json={"prompt": "a fox"}, headers=key)
        assert r.status_code == 201 and r.headers["x-request-id"] == "it-req-1"
        gen_id = r.json()["id"]
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code_ = await proc.wait()
    assert code_ == 0
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert "[API] API stopped" in log, log
    # The seed's `[COMPONENT] Action {context}` lines, carrying the request's ids.
    created = next(line for line in log.splitlines() if "Generation created" in line)
    assert created.startswith("[GENERATION_CREATE] Generation created {")
    context = json.loads(created.split(" ", 3)[3])
    assert context["request_id"] == "it-req-1" and context["generation_id"] == gen_id
