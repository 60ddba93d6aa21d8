"""`/healthz`, `/readyz`, `/metrics`: for probes and Prometheus, without an API key."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from api.deps import Runtime

router = APIRouter(tags=["operations"])

PROBE_TIMEOUT_SECONDS = 3.0


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _within(check: Any) -> bool:
    try:
        return bool(await asyncio.wait_for(check, PROBE_TIMEOUT_SECONDS))
    except Exception:
        return False


async def _broker_ok(request: Request) -> bool:
    probe = request.app.state.broker_probe
    channel = await probe.channel()
    await channel.close()
    return True


@router.get(
    "/readyz",
    summary="Database and broker reachable, outbox relay and live feed running (503 otherwise)",
    responses={503: {"description": "Not ready; the body says which check failed"}},
)
async def readyz(request: Request, runtime: Runtime) -> JSONResponse:
    checks: dict[str, bool] = {
        "database": await _within(runtime.database_ok()),
        "broker": await _within(_broker_ok(request)),
        "outbox_relay": runtime.relay.healthy,
        "live_feed": request.app.state.realtime.feed.healthy,  # what the SSE streams hear
    }
    ok = all(checks.values())
    return JSONResponse({"ok": ok, **checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(runtime: Runtime) -> Response:
    await runtime.refresh_metrics(None, [])  # the outbox's lag, read now
    return Response(runtime.metrics_text(), media_type=CONTENT_TYPE_LATEST)
