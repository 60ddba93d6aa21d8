"""The inbox: a consumer records each message id in the same transaction as its effect."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_CLAIM = text(
    "INSERT INTO inbox (consumer, message_id, handled_at) VALUES (:c, :m, now()) "
    "ON CONFLICT DO NOTHING"
)


async def claim(session: AsyncSession, consumer: str, message_id: str) -> bool:
    """True the first time; False if this consumer already applied the message."""
    result = await session.execute(_CLAIM, {"c": consumer, "m": message_id})
    return bool(result.rowcount)  # type: ignore[attr-defined]


# Plain asyncpg: the same claim, on its own or as a CTE (`claimed`, one row when new) of the
# statement that first reads what the message is about (one round trip for both).
CLAIM_PLAIN = (
    "INSERT INTO inbox (consumer, message_id, handled_at) VALUES ($1, $2, now()) "
    "ON CONFLICT DO NOTHING"
)


def claim_cte(consumer: int, message_id: int) -> str:
    """`claimed AS (…)`: the claim with its two values bound to `$consumer`, `$message_id`."""
    return (
        f"claimed AS (INSERT INTO inbox (consumer, message_id, handled_at) "
        f"VALUES (${consumer}, ${message_id}, now()) ON CONFLICT DO NOTHING RETURNING 1)"
    )


async def claim_plain(conn: Any, consumer: str, message_id: str) -> bool:
    """`claim` on an asyncpg connection, in its transaction."""
    status: str = await conn.execute(CLAIM_PLAIN, consumer, message_id)
    return status.endswith(" 1")


# A batch's claim in one statement (the notifier's batched event intake): each id listed is
# recorded once, and those recorded now come back.
CLAIM_MANY_PLAIN = (
    "INSERT INTO inbox (consumer, message_id, handled_at) "
    "SELECT $1, m, now() FROM unnest($2::text[]) AS m "
    "ON CONFLICT DO NOTHING RETURNING message_id"
)


async def claim_many_plain(conn: Any, consumer: str, message_ids: Sequence[str]) -> set[str]:
    """`claim_plain` for a batch: the ids claimed now (not applied before by this consumer).
    An id listed twice is claimed once; telling its copies apart is the caller's."""
    return {r[0] for r in await conn.fetch(CLAIM_MANY_PLAIN, consumer, list(message_ids))}
