"""shared.outbox's plain-asyncpg path: `Outgoing` rows staged as `enqueue` stages them (or in a
named trace and for a named user), written on their own and handed to the relay."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from shared.db.raw import dsn, open_pool
from shared.logging import log_context
from shared.messages import ConversationMessageCreated, WebhookDeliveryRequested
from shared.outbox import OutboxRelay, Outgoing
from shared.settings import Settings
from shared.topology import COMMANDS
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
FALLBACK = "00-11111111111111111111111111111111-2222222222222222-01"


def _command() -> WebhookDeliveryRequested:
    return WebhookDeliveryRequested(generation_id=uuid.uuid4(), delivery_id=uuid.uuid4(), attempt=2)


def test_a_row_staged_for_a_named_trace_and_user_carries_them() -> None:
    named = SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(1))
    context = trace.set_span_in_context(NonRecordingSpan(named))
    with log_context(user_id="someone-else"):
        row = Outgoing.stage(
            _command(),
            headers={"traceparent": FALLBACK},
            context=context,
            routing_key="webhook.delay.5s",
            user_id="the-user",
        )
    assert row["headers"]["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
    assert row["headers"]["reelflow.user_id"] == "the-user"
    assert (row["exchange"], row["routing_key"]) == (COMMANDS, "webhook.delay.5s")


def test_without_them_a_row_keeps_its_traceparent_and_takes_the_log_contexts_user() -> None:
    with log_context(user_id="from-the-log-context"):
        row = Outgoing.stage(_command(), headers={"traceparent": FALLBACK})
    assert row["headers"]["traceparent"] == FALLBACK  # no valid current span to replace it
    assert row["headers"]["reelflow.user_id"] == "from-the-log-context"


@pytest.mark.usefixtures("clean_db")
async def test_rows_written_on_their_own_are_handed_to_the_relay_and_published(
    prepared: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    pool = await open_pool(prepared, size=2)
    relay = OutboxRelay(sessions, prepared.amqp_url, dsn(prepared))
    relay.use_pool(lambda: pool)
    await relay.start()
    try:
        notices = [
            ConversationMessageCreated(
                conversation_id=uuid.uuid4(), message_id=uuid.uuid4(), user_id=uuid.uuid4()
            )
            for _ in range(3)
        ]
        outgoing = Outgoing(relay)
        rows = [Outgoing.stage(n) for n in notices]
        async with pool.acquire() as conn, conn.transaction():
            await outgoing.write(conn, rows)
            await outgoing.write(conn, [])  # nothing to write: no statement
        stored = {
            r["message_id"]: r
            for r in await pool.fetch(
                "SELECT id, message_id, type, headers FROM outbox WHERE message_id = ANY($1)",
                [r["message_id"] for r in rows],
            )
        }
        assert {r["message_id"]: r["id"] for r in rows} == {m: s["id"] for m, s in stored.items()}
        assert all(s["headers"].get("reelflow.handed_over") for s in stored.values())
        outgoing.committed()
        deadline = time.monotonic() + 30
        while await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE message_id = ANY($1) AND published_at IS NULL",
            list(stored),
        ):
            assert time.monotonic() < deadline, "the handed-over rows were never published"
            await asyncio.sleep(0.05)
        assert relay.published >= len(rows)
    finally:
        await relay.stop()
        await pool.close()
