"""A customer's webhook receiver, as a real HTTP server on loopback: it verifies every request
with the `standardwebhooks` library and the secrets it holds (answering 400 when none verifies,
as a careful receiver does), then answers from a script: a status, or a status after hanging."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.support import free_port


@dataclass
class Hit:
    body: bytes
    headers: dict[str, str]
    at: float  # loop time on arrival
    verified_by: list[str]  # the held secrets that verified it
    status: int | None = None  # what the receiver answered (None: the client gave up first)

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class HookReceiver:
    secrets: list[str] = field(default_factory=list)
    # Each request takes the next entry: a status, or (status, seconds to hang first).
    script: list[int | tuple[int, float]] = field(default_factory=list)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    cut: list[float] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/reelflow"

    def verify(self, body: bytes, headers: dict[str, str]) -> list[str]:
        ok = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            ok.append(secret)
        return ok

    async def handle(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        hit = Hit(body, headers, loop.time(), self.verify(body, headers))
        self.hits.append(hit)
        if self.secrets and not hit.verified_by:
            hit.status = 400
            return web.Response(status=400, text="signature verification failed")
        answer = self.script.pop(0) if self.script else self.status
        status, hang = answer if isinstance(answer, tuple) else (answer, 0.0)
        if hang:
            try:
                await asyncio.sleep(hang)
            except asyncio.CancelledError:
                self.cut.append(loop.time())
                raise
        hit.status = status
        return web.Response(status=status, headers=self.headers, text=f"answer {status}")

    async def serve(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        self.port = free_port()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    def succeeded(self) -> list[Hit]:
        return [h for h in self.hits if h.status is not None and 200 <= h.status < 300]
