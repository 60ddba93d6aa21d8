"""Reading a user's generations: one by id (optionally locked), a page newest first."""

from __future__ import annotations

import uuid

from shared.api_keys import Caller, Queries
from shared.auth import could_be_api_key
from shared.db.models import Conversation, Generation
from shared.domain.generation_rows import GenerationRow
from shared.state_machine import Status
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.pagination import Position, keyset_page
from api.problems import not_found


async def owned_generation(
    db: AsyncSession, user_id: uuid.UUID, generation_id: uuid.UUID, *, lock: bool = False
) -> Generation:
    """The user's generation, or 404 (another user's id is as unknown as a made-up one)."""
    query = select(Generation).where(
        col(Generation.id) == generation_id,
        col(Generation.user_id) == user_id,
    )
    if lock:
        query = query.with_for_update()
    # populate_existing: a re-read after a lost race must see the row as it is now.
    gen = await db.scalar(query.execution_options(populate_existing=True))
    if gen is None:
        raise not_found("generation")
    return gen


# `GenerationRow` (shared): the plain row the orchestrator also reads, here by raw asyncpg.
_ROW_COLUMNS = ", ".join(GenerationRow.__dataclass_fields__)
_OWNED_ROW = f"SELECT {_ROW_COLUMNS} FROM generations WHERE id = $1 AND user_id = $2"


async def owned_generation_row(
    pg: Queries, user_id: uuid.UUID, generation_id: uuid.UUID
) -> GenerationRow:
    """As `owned_generation`, in one query on the raw pool (`api.pg`), for the hot reads."""
    record = await pg.fetchrow(_OWNED_ROW, generation_id, user_id)
    if record is None:
        raise not_found("generation")
    return GenerationRow(*record)


_CALLER_AND_ROW = (
    "SELECT k.id, k.user_id, k.last_used_at, "
    + ", ".join(f"g.{c}" for c in GenerationRow.__dataclass_fields__)
    + " FROM api_keys k LEFT JOIN generations g ON g.id = $2 AND g.user_id = k.user_id"
    " WHERE k.sha256 = $1 AND k.revoked_at IS NULL"
)


async def caller_and_generation(
    pg: Queries, token: str, digest: str, generation_id: uuid.UUID
) -> tuple[Caller | None, GenerationRow | None]:
    """`find_caller` and `owned_generation_row` in one round trip (the status read's only
    query): (None, None) for no live key; (caller, None) when the generation is not theirs."""
    if not could_be_api_key(token):
        return None, None
    record = await pg.fetchrow(_CALLER_AND_ROW, digest, generation_id)
    if record is None:
        return None, None
    caller = Caller(record[1], record[0], record[2])
    return caller, GenerationRow(*record[3:]) if record[3] is not None else None


async def ensure_conversation(
    db: AsyncSession, user_id: uuid.UUID, conversation_id: uuid.UUID
) -> None:
    found = await db.scalar(
        select(col(Conversation.id)).where(
            col(Conversation.id) == conversation_id,
            col(Conversation.user_id) == user_id,
        )
    )
    if found is None:
        raise not_found("conversation")


async def page_of_generations(
    db: AsyncSession,
    user_id: uuid.UUID,
    *,
    status: Status | None,
    limit: int,
    after: Position | None,
    conversation_id: uuid.UUID | None = None,
) -> tuple[list[Generation], bool]:
    """Up to `limit` generations older than `after`, newest first, and whether more follow."""
    query = select(Generation).where(col(Generation.user_id) == user_id)
    if status is not None:
        query = query.where(col(Generation.status) == status.value)
    if conversation_id is not None:
        query = query.where(col(Generation.conversation_id) == conversation_id)
    return await keyset_page(db, query, Generation, limit=limit, after=after)


_QUEUE = text(
    "SELECT id, position FROM ("
    "  SELECT id, row_number() OVER (ORDER BY updated_at, id) AS position"
    "  FROM generations WHERE status = 'confirmed'"
    ") waiting WHERE id = ANY(:ids)"
)


async def queue_positions(db: AsyncSession, generations: list[Generation]) -> dict[uuid.UUID, int]:
    """Each confirmed generation's place among all confirmed ones (everyone's), in the order
    they were confirmed: how many renders are ahead of it, plus one."""
    ids = [g.id for g in generations if g.status == Status.CONFIRMED.value]
    if not ids:
        return {}
    rows = await db.execute(_QUEUE, {"ids": ids})
    return {row.id: int(row.position) for row in rows}
