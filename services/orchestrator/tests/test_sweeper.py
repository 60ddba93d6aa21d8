"""Deadlines: a generation held in a live status too long fails with `timeout`; old outbox and
inbox rows are pruned; the sweeper in a running orchestrator does this by itself."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from orchestrator.main import build
from orchestrator.sweeper import sweep_once
from shared.db.models import Generation, InboxEntry, OutboxMessage, User, utcnow
from shared.settings import Settings, load_settings
from sqlalchemy import func, select, text
from sqlmodel import col

pytestmark = pytest.mark.usefixtures("clean_db")

LIVE = ["pending_clarification", "pending_confirmation", "confirmed", "processing"]


def _settings(env: dict[str, str], **extra: str) -> Settings:
    return load_settings(
        **{
            **env,
            "CLARIFICATION_TTL_SECONDS": "60",
            "CONFIRMATION_TTL_SECONDS": "120",
            "DISPATCH_TIMEOUT_SECONDS": "180",
            "PROCESSING_TIMEOUT_SECONDS": "240",
            "OUTBOX_RETENTION_SECONDS": "3600",
            "INBOX_RETENTION_SECONDS": "3600",
            **extra,
        }
    )


async def _generations(sessions, ages: dict[str, float]) -> dict[str, uuid.UUID]:
    """One generation per status, last touched `age` seconds ago."""
    user = User(name="sweep", api_key_prefix="rf_x", api_key_sha256=uuid.uuid4().hex)
    ids = {}
    async with sessions() as session, session.begin():
        session.add(user)
        await session.flush()
        for status, age in ages.items():
            gen = Generation(
                user_id=user.id,
                status=status,
                prompt="a fox",
                params={},
                updated_at=utcnow() - timedelta(seconds=age),
            )
            session.add(gen)
            ids[status] = gen.id
    return ids


async def _status(sessions, gid: uuid.UUID) -> tuple[str, dict | None]:
    async with sessions() as session:
        gen = await session.get(Generation, gid)
        assert gen is not None
        return gen.status, gen.error


async def test_each_live_status_expires_at_its_own_deadline(env, sessions) -> None:
    settings = _settings(env)
    # Each just past its own deadline (60/120/180/240 s) ...
    stale = await _generations(sessions, dict(zip(LIVE, (61, 121, 181, 241), strict=True)))
    counts = await sweep_once(sessions, settings)
    assert [counts[s] for s in LIVE] == [1, 1, 1, 1]
    for status, gid in stale.items():
        new_status, error = await _status(sessions, gid)
        assert new_status == "failed", status
        assert error is not None and error["code"] == "timeout" and error["message"]
    # ... and each announced by a generation.failed event in the outbox.
    async with sessions() as session:
        failed = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(col(OutboxMessage.routing_key) == "generation.failed")
        )
    assert failed == 4


async def test_nothing_expires_before_its_deadline_and_terminal_rows_are_left_alone(
    env, sessions
) -> None:
    settings = _settings(env)
    fresh = await _generations(sessions, dict(zip(LIVE, (59, 119, 179, 239), strict=True)))
    done = await _generations(sessions, {"completed": 10**6, "cancelled": 10**6})
    counts = await sweep_once(sessions, settings)
    assert all(counts[s] == 0 for s in LIVE)
    for gid in [*fresh.values(), *done.values()]:
        status, _ = await _status(sessions, gid)
        assert status != "failed"


async def test_old_published_outbox_rows_and_inbox_entries_are_pruned(env, sessions) -> None:
    settings = _settings(env)
    old, recent = utcnow() - timedelta(hours=2), utcnow()
    async with sessions() as session, session.begin():
        for published_at in (old, recent, None):  # None: not yet published, never pruned
            session.add(
                OutboxMessage(
                    exchange="x",
                    routing_key="k",
                    type="t",
                    correlation_id="c",
                    body="{}",
                    published_at=published_at,
                    created_at=old,
                )
            )
        session.add(InboxEntry(consumer="c", message_id="old", handled_at=old))
        session.add(InboxEntry(consumer="c", message_id="new", handled_at=recent))
    counts = await sweep_once(sessions, settings)
    assert (counts["outbox_pruned"], counts["inbox_pruned"]) == (1, 1)
    async with sessions() as session:
        left = (
            (await session.execute(text("SELECT published_at IS NULL FROM outbox ORDER BY id")))
            .scalars()
            .all()
        )
        assert sorted(left) == [False, True]
        assert (await session.execute(text("SELECT message_id FROM inbox"))).scalars().all() == [
            "new"
        ]


async def test_the_running_orchestrator_sweeps_by_itself(env, sessions) -> None:
    settings = _settings(env, SWEEP_INTERVAL_SECONDS="0.2")
    ids = await _generations(sessions, {"pending_confirmation": 500})
    service = build(settings)
    await service.start()
    try:
        for _ in range(100):
            if (await _status(sessions, ids["pending_confirmation"]))[0] == "failed":
                break
            await asyncio.sleep(0.1)
    finally:
        await service.stop()
    status, error = await _status(sessions, ids["pending_confirmation"])
    assert status == "failed" and error is not None and "not confirmed" in error["message"]
