"""The FastAPI application. `create_app(settings)` builds it; the lifespan wires the runtime
(engine, sessions, outbox relay), the storage and a broker probe. Nothing runs at import time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
from fastapi import FastAPI
from shared.db.raw import close_pool
from shared.logging import get_logger
from shared.media import build_storage
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from starlette.middleware import Middleware

from api import problems
from api.fastpath import StatusReads
from api.metrics import install_runtime_metrics
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from api.openapi_doc import complete_openapi
from api.pg import open_pool
from api.ratelimit import RateLimiter
from api.realtime import Realtime
from api.routes import (
    admin,
    conversations,
    events,
    generations,
    history,
    keys,
    media,
    ops,
    seed,
    web,
    webhooks,
)

log = get_logger("API")

DESCRIPTION = """Reelflow's HTTP API: from a prompt to a finished video.

Every `/v1` route and `/api/generations/{id}/status` need `Authorization: Bearer <api key>`
(admin routes: the ADMIN_API_KEY). Errors are RFC 9457 `application/problem+json`."""


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime.build("api", settings)
        probe: aio_pika.abc.AbstractRobustConnection | None = None
        realtime: Realtime | None = None
        pool: asyncpg.Pool | None = None
        try:
            await runtime.start()
            app.state.pg = pool = await open_pool(settings)  # the hot paths' raw pool (api.pg)
            async with runtime.sessions() as session:
                app.state.storage = await build_storage(session, settings)
            probe = await aio_pika.connect_robust(settings.amqp_url)
            app.state.runtime = runtime
            app.state.broker_probe = probe
            app.state.metrics = install_runtime_metrics(runtime)
            app.state.realtime = realtime = await Realtime.start(runtime)  # SSE feed, tokens
            log.info("API started", url=settings.public_url, provider=settings.provider)
            yield
        finally:
            if realtime is not None:
                await realtime.close()
            if probe is not None:
                await probe.close()
            if pool is not None:
                await close_pool(pool)
            await runtime.close()
            log.info("API stopped")

    app = FastAPI(
        title="Reelflow",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestContextMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
            Middleware(StatusReads),  # GET /v1/generations/{id} without FastAPI's machinery
        ],
    )
    app.state.settings = settings
    app.state.rate_limiter = RateLimiter.from_settings(settings)  # per API key (api.ratelimit)
    problems.install(app)
    complete_openapi(app)  # problem types, 422 and 429 on every operation
    for module in (generations, admin, seed, media, ops):
        app.include_router(module.router)
    app.include_router(webhooks.router)
    app.include_router(conversations.router)  # the chat
    app.include_router(events.router)  # live streams (SSE)
    app.include_router(history.router)  # generation timelines
    app.include_router(web.router)  # the web page at /
    app.include_router(keys.router)  # a user's own API keys
    return app
