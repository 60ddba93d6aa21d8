"""Quotas that protect the bill, per user: generations confirmed or processing at once, and
video seconds confirmed in any 24 hours (a rolling window over `generations.confirmed_at`).

Checked when a generation is confirmed: by the API for the user's own confirmation (a 429 with
`Retry-After`, nothing changed), by the orchestrator when it auto-confirms (the generation fails
with `quota_exceeded`). `check` runs inside the confirming transaction, after the generation
became `confirmed`, so it counts itself; it first locks the user's row, so two confirmations of
one user cannot both pass on the same numbers. Every confirmation counts, whatever its end:
cancelling after confirming gives no seconds back (the provider may already have been paid).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import utcnow
from shared.settings import Settings

WINDOW = timedelta(hours=24)
# No one can say when a running generation ends: a client over the concurrency limit is told
# to try again after this long.
CONCURRENCY_RETRY_AFTER_SECONDS = 30


@dataclass(frozen=True)
class Limits:
    max_concurrent: int  # 0: no limit
    seconds_per_day: int  # 0: no limit

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.quota_max_concurrent_generations, settings.quota_video_seconds_per_day)


class QuotaExceeded(Exception):
    def __init__(self, detail: str, retry_after: int, limit: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = max(1, retry_after)
        self.limit = limit  # "concurrent_generations" or "video_seconds_per_day"


# Plain asyncpg statements: the orchestrator runs them on its own connections, the API on its
# session's (`check`). The lock is a statement of its own, before the usage is read: in READ
# COMMITTED each statement takes its snapshot when it starts, so the read that follows the lock
# sees what the user's last confirmation committed (one statement would read an older one).
LOCK_USER = "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE"
_LOCK_USER = text("SELECT 1 FROM users WHERE id = :u FOR NO KEY UPDATE")  # the same, on a session
USAGE = (
    "SELECT (SELECT count(*) FROM generations WHERE user_id = $1 "
    "AND status IN ('confirmed', 'processing')) AS running, "
    "(SELECT COALESCE(sum(COALESCE((spec->>'duration_seconds')::numeric, 0)), 0) "
    "FROM generations WHERE user_id = $1 AND confirmed_at > $2) AS seconds"
)
# Only when over the daily limit: when enough of it frees up.
SPENT = (
    "SELECT confirmed_at, COALESCE((spec->>'duration_seconds')::numeric, 0) AS seconds "
    "FROM generations WHERE user_id = $1 AND confirmed_at > $2 ORDER BY confirmed_at"
)


async def check(
    session: AsyncSession,
    user_id: uuid.UUID,
    limits: Limits,
    *,
    extra_generations: int = 0,
    extra_seconds: float = 0,
    now: datetime | None = None,
) -> None:
    """`check_on` the session's connection, inside its transaction. The lock goes through the
    session: that writes what it holds unwritten first (the transaction's own confirmation
    counts) and begins the transaction on the connection if nothing has yet (a lock taken
    outside one would be let go at once)."""
    if not limits.max_concurrent and not limits.seconds_per_day:
        return
    await session.execute(_LOCK_USER, {"u": user_id})
    raw = await (await session.connection()).get_raw_connection()
    await check_on(
        raw.driver_connection,
        user_id,
        limits,
        extra_generations=extra_generations,
        extra_seconds=extra_seconds,
        now=now,
        locked=True,
    )


async def check_on(
    conn: Any,
    user_id: uuid.UUID,
    limits: Limits,
    *,
    extra_generations: int = 0,
    extra_seconds: float = 0,
    now: datetime | None = None,
    locked: bool = False,
) -> None:
    """Raise `QuotaExceeded` if the user is over a limit, counting what the transaction on
    `conn` (an asyncpg connection, in a transaction) has confirmed so far plus `extra_*` (a
    check before the generation exists). Two round trips when under the limits (one when the
    caller has `locked` the user's row)."""
    if not limits.max_concurrent and not limits.seconds_per_day:
        return
    now = now or utcnow()
    # One quota check per user at a time. NO KEY UPDATE, not UPDATE: the confirming transaction
    # may already hold a KEY SHARE on this row (the foreign-key check of its own second write
    # to the generation), and two of them upgrading to FOR UPDATE would deadlock.
    if not locked:
        await conn.execute(LOCK_USER, user_id)
    since = now - WINDOW
    usage = await conn.fetchrow(USAGE, user_id, since)
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
                for row in await conn.fetch(SPENT, user_id, since)
            ]
            raise QuotaExceeded(
                f"at most {limits.seconds_per_day} seconds of video may be confirmed in 24 hours",
                _until_freed(spent, over, now),
                "video_seconds_per_day",
            )


def _until_freed(spent: list[tuple[datetime, float]], over: float, now: datetime) -> int:
    """Seconds until enough of the window's oldest confirmations age out of it."""
    freed = 0.0
    for at, seconds in spent:
        freed += seconds
        if freed >= over:
            return math.ceil((at + WINDOW - now).total_seconds())
    return math.ceil(WINDOW.total_seconds())  # the request alone is over the limit
