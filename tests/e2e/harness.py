"""Runs the four services in the test's event loop against the real broker and database, plus a
webhook receiver on loopback standing in for the Next.js app."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from shared.settings import Settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import eventually

__all__ = ["eventually"]  # re-exported: the e2e tests import it from here


@dataclass
class Receiver:
    """The Next.js app's `/api/webhooks/worker`, recording what it gets."""

    status_code: int = 200
    received: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            self.received.append(
                {"headers": dict(request.headers), "body": body, "json": json.loads(body)}
            )
            return Response(status_code=self.status_code)

        return Starlette(routes=[Route("/api/webhooks/worker", hook, methods=["POST"])])

    def events(self, generation_id: str) -> list[str]:
        return [
            r["json"]["event"]
            for r in self.received
            if r["json"].get("generationId") == generation_id
        ]


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running_pipeline(settings: Settings, *, worker: bool = True) -> AsyncIterator[None]:
    """API (over real HTTP on settings.api_port), orchestrator, worker and notifier
    (`worker=False`: the test runs its worker itself, e.g. as a process it can kill)."""
    from api.app import create_app
    from notifier.main import build as build_notifier
    from orchestrator.main import build as build_orchestrator
    from veo_worker.main import build as build_worker

    services = [build_orchestrator(settings), build_notifier(settings)]
    if worker:
        services.insert(1, build_worker(settings))
    started = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        async with serve_asgi(create_app(settings), settings.api_port):
            yield
    finally:
        for service in reversed(started):
            await service.stop()


class Api:
    """A thin client for one user."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {key}"}
        )

    async def create(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return await self.http.post("/v1/generations", json=body, headers=headers)

    async def get(self, generation_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/generations/{generation_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_status(
        self, generation_id: str, *statuses: str, within: float = 60
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            gen = await self.get(generation_id)
            return gen if gen["status"] in statuses else None

        return dict(await eventually(check, within=within))

    async def aclose(self) -> None:
        await self.http.aclose()
