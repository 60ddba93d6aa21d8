"""Deadlines and housekeeping, on a timer in the orchestrator.

A generation left in a live status past its deadline (questions never answered, a request
never confirmed, a confirmed render the worker never picked up, processing with no sign of life)
fails with `timeout` and a reason, through the state machine like any other move. Published
outbox rows and inbox entries past their retention are deleted in small batches.

Several orchestrators may sweep at once: rows are claimed with SKIP LOCKED and moved with the
usual compare-and-set, so each expiry happens once.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import timedelta

from shared.db.models import Generation, utcnow
from shared.domain.transitions import ConcurrentUpdate, apply_transition
from shared.logging import get_logger
from shared.outbox import OutboxRelay
from shared.settings import Settings
from shared.state_machine import Status, Trigger
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

log = get_logger("SWEEPER")

BATCH = 100
_PRUNE_OUTBOX = text(
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at < :before "
    "ORDER BY id LIMIT :n)"
)
_PRUNE_INBOX = text(
    "DELETE FROM inbox WHERE ctid IN (SELECT ctid FROM inbox WHERE handled_at < :before LIMIT :n)"
)


@dataclass(frozen=True)
class Deadline:
    status: Status
    seconds: float
    reason: str


def _span(seconds: float) -> str:
    return f"{seconds / 3600:g} hours" if seconds >= 3600 else f"{seconds:g} seconds"


def deadlines(settings: Settings) -> list[Deadline]:
    s = settings
    return [
        Deadline(
            Status.PENDING_CLARIFICATION,
            s.clarification_ttl_seconds,
            f"The questions were not answered within {_span(s.clarification_ttl_seconds)}.",
        ),
        Deadline(
            Status.PENDING_CONFIRMATION,
            s.confirmation_ttl_seconds,
            f"The request was not confirmed within {_span(s.confirmation_ttl_seconds)}.",
        ),
        Deadline(
            Status.CONFIRMED,
            s.dispatch_timeout_seconds,
            f"No worker started the render within {_span(s.dispatch_timeout_seconds)}.",
        ),
        Deadline(
            Status.PROCESSING,
            s.processing_timeout_seconds,
            f"The render showed no progress for {_span(s.processing_timeout_seconds)}.",
        ),
    ]


async def expire(session: AsyncSession, deadline: Deadline) -> int:
    """Fail up to BATCH generations past `deadline`; how many were failed."""
    cutoff = utcnow() - timedelta(seconds=deadline.seconds)
    rows = (
        (
            await session.execute(
                select(Generation)
                .where(
                    col(Generation.status) == deadline.status.value,
                    col(Generation.updated_at) < cutoff,
                )
                .order_by(col(Generation.updated_at))
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    failed = 0
    for gen in rows:
        try:
            await apply_transition(
                session,
                gen,
                Trigger.FAIL,
                progress=None,
                error={"code": "timeout", "message": deadline.reason},
            )
        except ConcurrentUpdate:
            continue  # it moved meanwhile: no longer stuck
        failed += 1
        log.warning("Generation expired", generation_id=str(gen.id), status=deadline.status.value)
    return failed


async def prune(session: AsyncSession, settings: Settings) -> tuple[int, int]:
    now = utcnow()
    outbox = await session.execute(
        _PRUNE_OUTBOX,
        {"before": now - timedelta(seconds=settings.outbox_retention_seconds), "n": 1000},
    )
    inbox = await session.execute(
        _PRUNE_INBOX,
        {"before": now - timedelta(seconds=settings.inbox_retention_seconds), "n": 1000},
    )
    return outbox.rowcount, inbox.rowcount  # type: ignore[attr-defined]


async def sweep_once(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for deadline in deadlines(settings):
        async with sessions() as session, session.begin():
            counts[deadline.status.value] = await expire(session, deadline)
    async with sessions() as session, session.begin():
        counts["outbox_pruned"], counts["inbox_pruned"] = await prune(session, settings)
    return counts


class Sweeper:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], relay: OutboxRelay, settings: Settings
    ) -> None:
        self.sessions, self.relay, self.settings = sessions, relay, settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                counts = await sweep_once(self.sessions, self.settings)
                if any(counts.values()):
                    self.relay.wake()
                    log.info("Swept", **counts)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: try again next round
                log.warning("Sweep failed, will retry", error=str(exc))
            await asyncio.sleep(self.settings.sweep_interval_seconds)
