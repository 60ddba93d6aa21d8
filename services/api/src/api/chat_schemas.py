"""Request and response bodies of the chat, the live streams and the history (CONTRACT.md)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from api.schemas import Body, ErrorOut, GenerationOut, ProgressOut, Prompt, Text

# A message may become a prompt as written, so it has the prompt's limits (1-2000, not blank).
Content = Prompt
Title = Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class CreateConversation(Body):
    title: Title | None = None


class ConversationOut(BaseModel):
    id: uuid.UUID
    title: str | None
    created_at: datetime


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None


class PostMessage(Body):
    content: Content


class Attachment(BaseModel):
    type: Literal["video"]
    url: str = Field(description="Signed, expiring link to the video (re-signed on every read)")
    thumbnail_url: str | None


class MessageOut(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    role: Literal["user", "assistant"]
    content: str
    generation_id: uuid.UUID | None
    attachments: list[Attachment]
    created_at: datetime


class MessagePosted(BaseModel):
    message: MessageOut = Field(description="The message you sent, as stored")
    generation: GenerationOut | None = Field(
        description="The generation the message started, answered, confirmed or cancelled"
    )
    reply: MessageOut | None = Field(
        description="The API's own reply when the message was not a move on a generation "
        "(help, what is still needed); replies about a generation's lifecycle follow as "
        "assistant messages"
    )


class MessageList(BaseModel):
    items: list[MessageOut]


class StreamToken(BaseModel):
    token: str = Field(description="Pass as `?token=` to an `/events` route (EventSource)")
    expires_at: datetime


class TimelineEntry(BaseModel):
    event: str = Field(description="`generation.requested` or a lifecycle event name")
    status: str
    version: int | None
    at: datetime = Field(description="When it happened (committed with the change)")
    published_at: datetime | None = Field(description="When it reached the broker")
    progress: ProgressOut | None = None
    error: ErrorOut | None = None
    details: dict[str, Any] | None = Field(
        None, description="What the event decided: questions asked, answers, estimated cost"
    )


class Timeline(BaseModel):
    generation_id: uuid.UUID
    items: list[TimelineEntry]
