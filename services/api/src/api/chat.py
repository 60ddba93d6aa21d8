"""A user's chat message: understood, stored, and acted on in one transaction.

The message is read in the light of the conversation's current generation (the newest one
waiting for the user): it may ask for a new video (created exactly as `POST /v1/generations`
creates one), answer the open questions, confirm or cancel (the same moves as the generation
routes), or be none of these, which gets a helpful reply from the API. The user's message, any
reply and the move commit together, or not at all; each stored message is announced to open
conversation streams through the outbox.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.api_keys import Caller
from shared.db.models import ChatMessage, Conversation, Generation, utcnow
from shared.domain.quotas import Limits
from shared.domain.understanding import Awaiting, Context, Intent, Understander, Understanding
from shared.messages import ConversationMessageCreated
from shared.outbox import enqueue
from shared.schemas import Question
from shared.settings import Settings
from shared.state_machine import Status
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api import replies
from api.conversations import awaiting_generation, live_generations, owned_conversation
from api.creation import create_generation
from api.moves import Plan, cancel_plan, confirm_plan, move, some_answers_plan
from api.problems import Problem
from api.schemas import CreateGeneration, ParamsIn

TITLE_CHARS = 60


@dataclass(frozen=True)
class Posted:
    message: ChatMessage
    generation: Generation | None
    reply: ChatMessage | None
    intent: Intent


def context_for(gen: Generation | None) -> Context:
    if gen is None:
        return Context()
    if gen.status == Status.PENDING_CONFIRMATION.value:
        return Context(Awaiting.CONFIRMATION)
    if not gen.questions:
        return Context(Awaiting.ANALYSIS)
    return Context(Awaiting.ANSWERS, tuple(Question.model_validate(q) for q in gen.questions))


def title_for(content: str) -> str:
    text = " ".join(content.split())
    if len(text) <= TITLE_CHARS:
        return text
    cut = text[:TITLE_CHARS].rsplit(" ", 1)[0] or text[:TITLE_CHARS]
    return cut + "…"


@dataclass
class _Writer:
    """Stages the user's message (and a reply) in the caller's transaction."""

    db: AsyncSession
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    content: str
    at: datetime
    needs_title: bool

    async def stage(
        self, generation_id: uuid.UUID | None, reply: str | None = None
    ) -> tuple[ChatMessage, ChatMessage | None]:
        if self.needs_title:
            await self.db.execute(
                update(Conversation)
                .where(col(Conversation.id) == self.conversation_id)
                .where(col(Conversation.title).is_(None))
                .values(title=title_for(self.content))
            )
        message = self._add("user", self.content, generation_id, self.at)
        answer = None
        if reply is not None:
            # A moment later, so the pair reads in order however the clock ties.
            answer = self._add(
                "assistant", reply, generation_id, self.at + timedelta(microseconds=1)
            )
        return message, answer

    def _add(
        self, role: str, content: str, generation_id: uuid.UUID | None, at: datetime
    ) -> ChatMessage:
        message = ChatMessage(
            conversation_id=self.conversation_id,
            role=role,
            content=content,
            generation_id=generation_id,
            created_at=at,
        )
        self.db.add(message)
        enqueue(
            self.db,
            ConversationMessageCreated(
                generation_id=generation_id,
                conversation_id=self.conversation_id,
                message_id=message.id,
                user_id=self.user_id,
            ),
        )
        return message


class Chat:
    def __init__(self, understander: Understander) -> None:
        self.understander = understander

    async def post(
        self,
        db: AsyncSession,
        user: Caller,
        conversation_id: uuid.UUID,
        content: str,
        settings: Settings,
    ) -> Posted:
        user_id = user.id
        conversation = await owned_conversation(db, user_id, conversation_id)
        current = await awaiting_generation(db, conversation_id)
        context = context_for(current)
        understood = await self.understander.understand(content, context)
        writer = _Writer(
            db, conversation.id, user_id, content, utcnow(), needs_title=conversation.title is None
        )
        match understood.intent:
            case Intent.REQUEST:
                return await self._request(db, user, writer, understood, settings)
            case Intent.ANSWER if current is not None:
                plan = some_answers_plan(understood.answers, settings)
            case Intent.CONFIRM if current is not None:
                plan = confirm_plan
            case Intent.CANCEL if current is not None:
                plan = cancel_plan
            case _:
                return await self._reply(db, writer, current, context, understood)
        limits = Limits.from_settings(settings)
        return await self._move(db, writer, current, plan, understood.intent, limits)

    async def _request(
        self,
        db: AsyncSession,
        user: Caller,
        writer: _Writer,
        understood: Understanding,
        settings: Settings,
    ) -> Posted:
        staged: list[ChatMessage | None] = []
        note = replies.request_notes(understood.notes) if understood.notes else None

        async def with_message(gen: Generation) -> None:
            await db.flush()  # the generation's row first: the message refers to it
            staged.extend(await writer.stage(gen.id, note))

        body = CreateGeneration(
            prompt=writer.content,  # as written: the prompt reaches the provider unchanged
            conversation_id=writer.conversation_id,
            params=ParamsIn.model_validate(understood.params.model_dump(exclude_none=True)),
        )
        try:
            created = await create_generation(db, user, body, settings, None, also=with_message)
        except Problem as exc:
            if exc.status != 422:
                raise
            # The provider cannot make it as asked (e.g. sound on the local renderer): say so
            # in the chat rather than refuse the message.
            await db.rollback()
            reasons = [e.get("message", "") for e in exc.errors or ()]
            said, reply = await writer.stage(None, replies.cannot_make(reasons))
            await db.commit()
            return Posted(said, None, reply, Intent.OTHER)
        message, note_reply = staged
        assert message is not None
        return Posted(message, created.generation, note_reply, Intent.REQUEST)

    async def _move(
        self,
        db: AsyncSession,
        writer: _Writer,
        current: Generation,
        plan: Plan,
        intent: Intent,
        limits: Limits,
    ) -> Posted:
        staged: list[ChatMessage | None] = []

        async def with_message(gen: Generation) -> None:
            staged.extend(await writer.stage(gen.id))

        gen, _ = await move(db, writer.user_id, current.id, plan, limits=limits, also=with_message)
        message, reply = staged
        assert message is not None
        return Posted(message, gen, reply, intent)

    async def _reply(
        self,
        db: AsyncSession,
        writer: _Writer,
        current: Generation | None,
        context: Context,
        understood: Understanding,
    ) -> Posted:
        busy = False
        if current is None:
            busy = any(
                g.status in (Status.CONFIRMED.value, Status.PROCESSING.value)
                for g in await live_generations(db, writer.conversation_id)
            )
        text = replies.not_understood(writer.content, context, busy=busy, notes=understood.notes)
        message, reply = await writer.stage(current.id if current else None, text)
        await db.commit()
        return Posted(message, current, reply, Intent.OTHER)
