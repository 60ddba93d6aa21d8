"""The message catalogue: every event and command on RabbitMQ, as versioned pydantic models.

The AMQP `type` property carries `TYPE`; the body carries `version`. A consumer refuses a
version it does not know (the message dead-letters instead of being misread).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import (
    ErrorInfo,
    GenerationParams,
    Progress,
    Question,
    RenderResult,
    RenderSpec,
)
from shared.state_machine import Event, Status


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    TYPE: ClassVar[str]
    version: Literal[1] = 1
    generation_id: uuid.UUID

    @property
    def routing_key(self) -> str:
        return self.TYPE

    @property
    def correlation_id(self) -> str:
        """The AMQP `correlation_id`: the generation the message is about."""
        return str(self.generation_id)


class GenerationRequested(Message):
    """API → orchestrator: a new generation row exists; read and analyse it."""

    TYPE: ClassVar[str] = "generation.requested"
    user_id: uuid.UUID


class GenerationSnapshot(BaseModel):
    """The generation as it was when the event happened (events are read out of order)."""

    model_config = ConfigDict(frozen=True)

    status: Status
    prompt: str
    params: GenerationParams
    spec: RenderSpec | None = None
    questions: list[Question] = Field(default_factory=list)
    answers: dict[str, str] = Field(default_factory=dict)
    estimated_cost_usd: Decimal | None = None
    progress: Progress | None = None
    result: RenderResult | None = None
    error: ErrorInfo | None = None
    job_id: str | None = None
    # The row's version after the event: increases by one per transition, so live views use it
    # to order events, spot a gap and resume (`Last-Event-ID`). None in events from before it.
    version: int | None = None
    created_at: datetime
    updated_at: datetime


class LifecycleEvent(Message):
    """Orchestrator/API → notifier, live views: a status or progress change happened."""

    TYPE: ClassVar[str] = "generation.lifecycle"
    event: Event
    user_id: uuid.UUID
    conversation_id: uuid.UUID | None = None
    snapshot: GenerationSnapshot
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def routing_key(self) -> str:
        return self.event.value


class ConversationMessageCreated(Message):
    """API/notifier → live views: a message was added to a conversation (read it by id).

    Published on the `reelflow.live` exchange, which nobody may be listening to: a live update,
    not work. `generation_id` is the generation the message is about, if any."""

    TYPE: ClassVar[str] = "conversation.message_created"
    generation_id: uuid.UUID | None = None  # type: ignore[assignment]
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    user_id: uuid.UUID

    @property
    def correlation_id(self) -> str:
        return str(self.generation_id or self.conversation_id)


class RenderRequested(Message):
    """Orchestrator → worker: render this spec and store it."""

    TYPE: ClassVar[str] = "render.requested"
    user_id: uuid.UUID
    spec: RenderSpec


RenderReportKind = Literal["started", "progress", "succeeded", "failed"]


class RenderReported(Message):
    """Worker → orchestrator: what happened to a render."""

    TYPE: ClassVar[str] = "render.reported"
    kind: RenderReportKind
    progress: Progress | None = None
    result: RenderResult | None = None
    error: ErrorInfo | None = None
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def routing_key(self) -> str:
        return f"render.{self.kind}"


class WebhookDeliveryRequested(Message):
    """Notifier → notifier: make attempt number `attempt` of one webhook delivery (a row).

    A copy whose `attempt` is not the delivery's next one is stale and is dropped. `manual`: a
    redelivery someone asked for through the API, one attempt with no retries of its own."""

    TYPE: ClassVar[str] = "webhook.delivery_requested"
    delivery_id: uuid.UUID
    attempt: int = Field(ge=1)
    manual: bool = False


CATALOGUE: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        GenerationRequested,
        LifecycleEvent,
        ConversationMessageCreated,
        RenderRequested,
        RenderReported,
        WebhookDeliveryRequested,
    )
}


class UnknownMessage(Exception):
    """A type or version this code does not know: dead-letter it, never guess."""


def parse_message(type_: str | None, body: bytes | str | dict[str, Any]) -> Message:
    cls = CATALOGUE.get(type_ or "")
    if cls is None:
        raise UnknownMessage(f"unknown message type {type_!r}")
    if isinstance(body, dict):
        return cls.model_validate(body)
    return cls.model_validate_json(body)
