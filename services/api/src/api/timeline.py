"""A generation's events, in order, read back from the outbox.

Every state change writes its lifecycle event to the outbox in the same transaction (and the
creation writes `generation.requested`), so the outbox rows of a generation (correlation id =
generation id) are an exact, ordered record of what happened to it and when. The timeline route
shows them; the SSE streams replay them to a client that missed some.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError
from shared.api_keys import Queries
from shared.db.models import Generation, OutboxMessage
from shared.domain.generation_rows import GenerationRow
from shared.logging import get_logger
from shared.messages import GenerationRequested, LifecycleEvent
from shared.state_machine import INITIAL, Event, Status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

log = get_logger("TIMELINE")

REQUESTED = GenerationRequested.TYPE


@dataclass(frozen=True)
class Recorded:
    event: str  # `generation.requested` or a lifecycle event name
    version: int | None
    at: datetime
    published_at: datetime | None
    lifecycle: LifecycleEvent | None  # None for `generation.requested`

    @property
    def status(self) -> Status:
        return self.lifecycle.snapshot.status if self.lifecycle else INITIAL


async def recorded(db: AsyncSession, generation_id: uuid.UUID) -> list[Recorded]:
    rows = await db.scalars(
        select(OutboxMessage)
        .where(
            col(OutboxMessage.correlation_id) == str(generation_id),
            col(OutboxMessage.type).in_((REQUESTED, LifecycleEvent.TYPE)),
        )
        .order_by(col(OutboxMessage.id))
    )
    out = []
    for row in rows:
        if row.type == REQUESTED:
            out.append(Recorded(REQUESTED, 1, row.created_at, row.published_at, None))
            continue
        try:
            event = LifecycleEvent.model_validate_json(row.body)
        except ValidationError:  # a version of the event this code does not know
            log.warning("Unreadable lifecycle event skipped", outbox_id=row.id)
            continue
        out.append(
            Recorded(
                event.event.value,
                event.snapshot.version,
                event.occurred_at,
                row.published_at,
                event,
            )
        )
    return out


_NEWEST = (
    "SELECT type, body FROM outbox WHERE correlation_id = $1 AND type = ANY($2::text[]) "
    "ORDER BY id DESC LIMIT 50"
)


async def event_at(pg: Queries, gen: Generation | GenerationRow) -> str:
    """The name of the event that led to the generation's current version (as `recorded` would
    give it, newest first), read on the raw pool; `status_event` when the record has none."""
    rows = await pg.fetch(_NEWEST, str(gen.id), [REQUESTED, LifecycleEvent.TYPE])
    for row in rows:
        if row["type"] == REQUESTED:
            name, version = REQUESTED, 1
        else:
            try:
                body = json.loads(row["body"])
                name, version = Event(body["event"]).value, body["snapshot"].get("version")
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a version of the event this code does not know
        if version == gen.version:
            return name
    return status_event(gen)


def status_event(gen: Generation | GenerationRow) -> str:
    """The event that announces a generation's current state, when its record is not at hand."""
    match Status(gen.status):
        case Status.PENDING_CLARIFICATION:
            return Event.CLARIFICATION_REQUESTED.value if gen.questions else REQUESTED
        case Status.PENDING_CONFIRMATION:
            return Event.AWAITING_CONFIRMATION.value
        case Status.CONFIRMED:
            return Event.CONFIRMED.value
        case Status.PROCESSING:
            return Event.PROGRESS.value if gen.progress else Event.PROCESSING.value
        case Status.COMPLETED:
            return Event.COMPLETED.value
        case Status.FAILED:
            return Event.FAILED.value
    return Event.CANCELLED.value


def as_generation(event: LifecycleEvent, auto_confirm: bool) -> GenerationRow:
    """The generation as the event saw it, in the row's shape (the API's views read rows)."""
    snap = event.snapshot
    return GenerationRow(
        id=event.generation_id,
        user_id=event.user_id,
        conversation_id=event.conversation_id,
        status=snap.status.value,
        version=snap.version or 0,
        prompt=snap.prompt,
        auto_confirm=auto_confirm,
        params=snap.params.model_dump(mode="json", exclude_none=True),
        spec=snap.spec.model_dump(mode="json") if snap.spec else None,
        questions=[q.model_dump(mode="json") for q in snap.questions],
        answers=dict(snap.answers),
        estimated_cost_usd=snap.estimated_cost_usd,
        progress=snap.progress.model_dump(mode="json") if snap.progress else None,
        result=snap.result.model_dump(mode="json") if snap.result else None,
        error=snap.error.model_dump(mode="json") if snap.error else None,
        created_at=snap.created_at,
        updated_at=snap.updated_at,
    )
