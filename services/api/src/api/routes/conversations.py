"""`/v1/conversations`: the chat. A message may start, answer, confirm or cancel a generation."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from shared.db.models import Conversation
from shared.domain.understanding import RuleBasedUnderstander, Understander
from shared.logging import get_logger, log_context

from api.chat import Chat
from api.chat_schemas import (
    ConversationOut,
    ConversationPage,
    CreateConversation,
    MessageList,
    MessagePosted,
    PostMessage,
)
from api.chat_views import conversation_out, messages_out
from api.conversations import messages_of, owned_conversation, page_of_conversations
from api.deps import AppSettings, AppStorage, CurrentUser, Runtime, Session
from api.pagination import Cursor, Limit, after, next_cursor
from api.problems import responses
from api.views import generation_out

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])
log = get_logger("CHAT")


def understander(request: Request) -> Understander:
    """The rule-based understander unless the app was given another (`app.state.understander`,
    e.g. a language-model one)."""
    given: Understander | None = getattr(request.app.state, "understander", None)
    return given or RuleBasedUnderstander()


@router.post(
    "",
    status_code=201,
    response_model=ConversationOut,
    responses=responses(401, 413, 422),
    summary="Start a conversation",
)
async def create(
    body: CreateConversation, user: CurrentUser, db: Session, response: Response
) -> ConversationOut:
    conversation = Conversation(user_id=user.id, title=body.title)
    db.add(conversation)
    await db.commit()
    log.info("Conversation created", conversation_id=str(conversation.id))
    response.headers["Location"] = f"/v1/conversations/{conversation.id}"
    return conversation_out(conversation)


@router.get(
    "",
    response_model=ConversationPage,
    responses=responses(401, 422),
    summary="List your conversations, newest first",
)
async def list_conversations(
    user: CurrentUser,
    db: Session,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> ConversationPage:
    rows, more = await page_of_conversations(db, user.id, limit=limit, after=after(cursor))
    return ConversationPage(
        items=[conversation_out(c) for c in rows], next_cursor=next_cursor(rows, more)
    )


@router.get(
    "/{conversation_id}",
    response_model=ConversationOut,
    responses=responses(401, 404),
    summary="Read a conversation",
)
async def read(conversation_id: uuid.UUID, user: CurrentUser, db: Session) -> ConversationOut:
    return conversation_out(await owned_conversation(db, user.id, conversation_id))


@router.get(
    "/{conversation_id}/messages",
    response_model=MessageList,
    responses=responses(401, 404),
    summary="The conversation's messages, oldest first (media links freshly signed)",
)
async def list_messages(
    conversation_id: uuid.UUID, user: CurrentUser, db: Session, storage: AppStorage
) -> MessageList:
    await owned_conversation(db, user.id, conversation_id)
    rows = await messages_of(db, conversation_id)
    return MessageList(items=await messages_out(db, storage, rows))


@router.post(
    "/{conversation_id}/messages",
    status_code=201,
    response_model=MessagePosted,
    responses=responses(401, 404, 409, 413, 422),
    summary="Say something: ask for a video, answer its questions, confirm or cancel it",
)
async def post_message(
    conversation_id: uuid.UUID,
    body: PostMessage,
    request: Request,
    user: CurrentUser,
    db: Session,
    cfg: AppSettings,
    runtime: Runtime,
    storage: AppStorage,
) -> MessagePosted:
    with log_context(conversation_id=str(conversation_id)):
        chat = Chat(understander(request))
        posted = await chat.post(db, user, conversation_id, body.content, cfg)
        runtime.relay.wake()
        gen = posted.generation
        log.info(
            "Message handled",
            intent=posted.intent.value,
            chars=len(body.content),
            generation_id=str(gen.id) if gen else None,
            status=gen.status if gen else None,
        )
    views = await messages_out(db, storage, [m for m in (posted.message, posted.reply) if m])
    return MessagePosted(
        message=views[0],
        generation=await generation_out(gen, storage) if gen else None,
        reply=views[1] if len(views) > 1 else None,
    )
