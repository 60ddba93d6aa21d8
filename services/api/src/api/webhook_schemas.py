"""Request and response bodies of the webhook routes (CONTRACT.md's shapes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field
from pydantic_core import PydanticCustomError
from shared.state_machine import Event

from api.schemas import Body, Text

EVENT_NAMES = tuple(e.value for e in Event)


def _known_events(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in EVENT_NAMES]
    if unknown:
        raise PydanticCustomError(
            "unknown_event",
            "unknown event {unknown}; the events are: {known}",
            {"unknown": ", ".join(unknown), "known": ", ".join(EVENT_NAMES)},
        )
    return list(dict.fromkeys(names))  # duplicates dropped, order kept


EventList = Annotated[
    list[Annotated[Text, Field(max_length=64)]],
    Field(min_length=1, max_length=len(EVENT_NAMES) * 2),
    AfterValidator(_known_events),
]
Url = Annotated[Text, Field(min_length=1, max_length=2000)]
Description = Annotated[Text, Field(max_length=500)]


class CreateEndpoint(Body):
    url: Url = Field(description="http(s) URL that receives the webhooks")
    events: EventList | None = Field(
        None,
        description=(
            "The events to send. Absent or null: every event except `generation.progress`, "
            "which is sent only to endpoints that name it."
        ),
    )
    description: Description | None = None


class ResendFailed(Body):
    since: AwareDatetime = Field(description="RFC 3339; failed deliveries created since then")


class EndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str] | None = Field(description="null: every event except `generation.progress`")
    description: str | None
    status: Literal["active", "disabled"]
    disabled_reason: str | None = None
    created_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="`whsec_…`; shown only here, once")
    previous_secret_expires_at: datetime | None = Field(
        None, description="After a rotation: the old secret also signs until then"
    )


class EndpointPage(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    response_excerpt: str | None = Field(None, description="The first 1000 characters answered")
    manual: bool = Field(False, description="Made on request (redeliver, resend-failed)")


class DeliveryOut(BaseModel):
    id: uuid.UUID
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt")
    endpoint_id: uuid.UUID
    event: str
    generation_id: uuid.UUID
    status: Literal["pending", "succeeded", "failed"]
    attempts: list[AttemptOut]
    next_attempt_at: datetime | None = None
    created_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class Resent(BaseModel):
    queued: int = Field(description="Failed deliveries queued for a new attempt")
    more: bool = Field(description="More remain: call again to queue the next batch")
