"""The inbox: a consumer records each message id in the same transaction as its effect."""

from __future__ import annotations

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
