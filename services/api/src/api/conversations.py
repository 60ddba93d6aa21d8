"""Reading a user's conversations, their messages and the generations in them."""

from __future__ import annotations

import uuid
from datetime import datetime

from shared.db.models import ChatMessage, Conversation, Generation
from shared.state_machine import TERMINAL, Status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.pagination import Position, keyset_page
from api.problems import not_found

MAX_MESSAGES = 1000  # a conversation's read returns at most this many (the newest)
AWAITING_USER = (Status.PENDING_CLARIFICATION.value, Status.PENDING_CONFIRMATION.value)
LIVE = tuple(s.value for s in Status if s not in TERMINAL)


async def owned_conversation(
    db: AsyncSession, user_id: uuid.UUID, conversation_id: uuid.UUID, *, lock: bool = False
) -> Conversation:
    """The user's conversation, or 404 (another user's is as unknown as a made-up id)."""
    query = select(Conversation).where(
        col(Conversation.id) == conversation_id, col(Conversation.user_id) == user_id
    )
    if lock:
        query = query.with_for_update()
    found = await db.scalar(query)
    if found is None:
        raise not_found("conversation")
    return found


async def page_of_conversations(
    db: AsyncSession, user_id: uuid.UUID, *, limit: int, after: Position | None
) -> tuple[list[Conversation], bool]:
    query = select(Conversation).where(col(Conversation.user_id) == user_id)
    return await keyset_page(db, query, Conversation, limit=limit, after=after)


async def messages_of(
    db: AsyncSession, conversation_id: uuid.UUID, *, since: datetime | None = None
) -> list[ChatMessage]:
    """Oldest first (the newest `MAX_MESSAGES`), optionally only those created after `since`."""
    query = select(ChatMessage).where(col(ChatMessage.conversation_id) == conversation_id)
    if since is not None:
        query = query.where(col(ChatMessage.created_at) > since)
    query = query.order_by(col(ChatMessage.created_at).desc(), col(ChatMessage.id).desc())
    rows = list((await db.scalars(query.limit(MAX_MESSAGES))).all())
    return rows[::-1]


async def awaiting_generation(db: AsyncSession, conversation_id: uuid.UUID) -> Generation | None:
    """The newest generation of the conversation that waits for the user (answers or a go-ahead):
    the one the next message speaks to."""
    return await db.scalar(
        select(Generation)
        .where(
            col(Generation.conversation_id) == conversation_id,
            col(Generation.status).in_(AWAITING_USER),
        )
        .order_by(col(Generation.created_at).desc())
        .limit(1)
        .execution_options(populate_existing=True)
    )


async def live_generations(db: AsyncSession, conversation_id: uuid.UUID) -> list[Generation]:
    """The conversation's generations that have not finished, oldest first."""
    rows = await db.scalars(
        select(Generation)
        .where(
            col(Generation.conversation_id) == conversation_id,
            col(Generation.status).in_(LIVE),
        )
        .order_by(col(Generation.created_at))
    )
    return list(rows.all())
