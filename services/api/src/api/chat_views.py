"""Conversations and messages as the API shows them.

A finished video's message stores links that expire (they were signed when it was written), so
attachments are re-signed at read time from the generation's stored result: a conversation
opened tomorrow still plays.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from shared.db.models import ChatMessage, Conversation, Generation
from shared.media import Storage
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.chat_schemas import Attachment, ConversationOut, MessageOut


def conversation_out(conversation: Conversation) -> ConversationOut:
    return ConversationOut(
        id=conversation.id, title=conversation.title, created_at=conversation.created_at
    )


async def _results(
    db: AsyncSession, messages: Sequence[ChatMessage]
) -> dict[uuid.UUID, dict[str, Any]]:
    ids = {m.generation_id for m in messages if m.attachments and m.generation_id}
    if not ids:
        return {}
    rows = await db.execute(
        select(col(Generation.id), col(Generation.result)).where(col(Generation.id).in_(ids))
    )
    return {gen_id: result for gen_id, result in rows if result}


async def _attachment(
    raw: dict[str, Any], result: dict[str, Any] | None, storage: Storage
) -> Attachment:
    if raw.get("type") == "video" and result:
        return Attachment(
            type="video",
            url=await storage.url_for(result["video_key"]),
            thumbnail_url=await storage.url_for(result["thumbnail_key"]),
        )
    return Attachment(type="video", url=raw["url"], thumbnail_url=raw.get("thumbnail_url"))


async def messages_out(
    db: AsyncSession, storage: Storage, messages: Sequence[ChatMessage]
) -> list[MessageOut]:
    results = await _results(db, messages)
    out = []
    for m in messages:
        result = results.get(m.generation_id) if m.generation_id else None
        out.append(
            MessageOut(
                id=m.id,
                conversation_id=m.conversation_id,
                role="assistant" if m.role == "assistant" else "user",
                content=m.content,
                generation_id=m.generation_id,
                attachments=[await _attachment(a, result, storage) for a in m.attachments],
                created_at=m.created_at,
            )
        )
    return out
