"""`reelflow generations show ID` and `reelflow outbox status`: one place to debug."""

from __future__ import annotations

import json
import uuid
from typing import Any

from shared.db.engine import make_engine
from shared.settings import Settings
from shared.telemetry import trace_id_of
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_GENERATION = text(
    "SELECT id, user_id, conversation_id, status, version, prompt, params, spec, questions, "
    "answers, estimated_cost_usd, progress, result, error, created_at, updated_at, "
    "status_changed_at, trace_context FROM generations WHERE id = :id"
)
_TIMELINE = text(
    "SELECT created_at AS at, routing_key AS event, published_at, message_id, "
    "headers->>'traceparent' AS traceparent FROM outbox WHERE correlation_id = :id ORDER BY id"
)
_JOB = text("SELECT * FROM render_jobs WHERE generation_id = :id")
_DELIVERIES = text(
    "SELECT d.id, d.webhook_id, d.target, d.url, d.event, d.status, d.next_attempt_at, "
    "(SELECT json_agg(json_build_object('at', a.at, 'status_code', a.status_code, "
    "'latency_ms', a.latency_ms, 'error', a.error) ORDER BY a.id) "
    " FROM webhook_attempts a WHERE a.delivery_id = d.id) AS attempts "
    "FROM webhook_deliveries d WHERE d.generation_id = :id ORDER BY d.created_at"
)
_MESSAGES = text(
    "SELECT role, content, created_at FROM messages WHERE generation_id = :id ORDER BY created_at"
)
_OUTBOX = text(
    "SELECT count(*) FILTER (WHERE published_at IS NULL) AS unpublished, "
    "min(created_at) FILTER (WHERE published_at IS NULL) AS oldest_unpublished, "
    "count(*) FILTER (WHERE published_at > now() - interval '1 minute') AS published_last_minute, "
    "count(*) AS total FROM outbox"
)


async def _rows(engine: AsyncEngine, query: Any, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query, params)).mappings()]


async def generation_report(settings: Settings, generation_id: str) -> dict[str, Any] | None:
    try:
        gid = uuid.UUID(generation_id)
    except ValueError:
        return None
    engine = make_engine(settings, pool_size=1)
    try:
        found = await _rows(engine, _GENERATION, id=gid)
        if not found:
            return None
        jobs = await _rows(engine, _JOB, id=gid)
        timeline = await _rows(engine, _TIMELINE, id=str(gid))
        return {
            **trace_ids(timeline, found[0].get("trace_context")),
            "generation": found[0],
            "timeline": timeline,
            "render_job": jobs[0] if jobs else None,
            "deliveries": await _rows(engine, _DELIVERIES, id=gid),
            "messages": await _rows(engine, _MESSAGES, id=gid),
        }
    finally:
        await engine.dispose()


def trace_ids(timeline: list[dict[str, Any]], created_in: dict[str, Any] | None) -> dict[str, Any]:
    """The generation's trace id (what to search for in Jaeger/Tempo): from the `traceparent`
    its outbox rows were written with, else from the context it was created in. Rows in another
    trace (none, unless tracing was switched off for a while) show under `other_trace_ids`."""
    found: list[str] = []
    for row in timeline:
        trace_id = trace_id_of(row.get("traceparent"))
        if trace_id and trace_id not in found:
            found.append(trace_id)
    created = trace_id_of((created_in or {}).get("traceparent"))
    main = found[0] if found else created
    report: dict[str, Any] = {"trace_id": main}
    others = [t for t in found if t != main]
    if others:
        report["other_trace_ids"] = others
    return report


async def outbox_status(settings: Settings) -> dict[str, Any]:
    engine = make_engine(settings, pool_size=1)
    try:
        return (await _rows(engine, _OUTBOX))[0]
    finally:
        await engine.dispose()


def dump(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
