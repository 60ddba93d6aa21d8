"""The user's quotas checked when the orchestrator auto-confirms: `shared.domain.quotas.check`
on plain asyncpg (the same lock, limits, errors and `Retry-After`), two round trips when under
the limits: the user's row locked, then the usage read in one statement."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.db.models import utcnow
from shared.domain import quotas
from shared.domain.quotas import CONCURRENCY_RETRY_AFTER_SECONDS, WINDOW, Limits, QuotaExceeded

from orchestrator import sql


async def check_quotas(
    conn: Any,
    user_id: uuid.UUID,
    limits: Limits,
    *,
    extra_generations: int = 0,
    extra_seconds: float = 0,
    now: datetime | None = None,
) -> None:
    """Raise `QuotaExceeded` if the user is over a limit, counting what is confirmed so far
    plus `extra_*` (the generation about to be confirmed)."""
    if not limits.max_concurrent and not limits.seconds_per_day:
        return
    now = now or utcnow()
    # One quota check per user at a time (NO KEY UPDATE: see `shared.domain.quotas.check`);
    # the usage is read by the next statement, whose snapshot is taken once the lock is held.
    await conn.execute(sql.LOCK_USER, user_id)
    since = now - WINDOW
    usage = await conn.fetchrow(sql.USAGE, user_id, since)
    if limits.max_concurrent:
        running = int(usage["running"]) + extra_generations
        if running > limits.max_concurrent:
            raise QuotaExceeded(
                f"at most {limits.max_concurrent} generations may be confirmed or processing at "
                "once; try again when one has finished",
                CONCURRENCY_RETRY_AFTER_SECONDS,
                "concurrent_generations",
            )
    if limits.seconds_per_day:
        over = float(usage["seconds"]) + extra_seconds - limits.seconds_per_day
        if over > 0:
            spent = [
                (row["confirmed_at"], float(row["seconds"]))
                for row in await conn.fetch(sql.SPENT, user_id, since)
            ]
            raise QuotaExceeded(
                f"at most {limits.seconds_per_day} seconds of video may be confirmed in 24 hours",
                quotas._until_freed(spent, over, now),
                "video_seconds_per_day",
            )
