"""`/v1/generations/{id}/timeline`: what happened to a generation, and when."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from shared.logging import get_logger

from api.chat_schemas import Timeline, TimelineEntry
from api.deps import CurrentUser, Session
from api.problems import responses
from api.queries import owned_generation
from api.schemas import ErrorOut, ProgressOut
from api.timeline import Recorded, recorded

router = APIRouter(prefix="/v1/generations", tags=["generations"])
log = get_logger("TIMELINE")


def _entry(record: Recorded) -> TimelineEntry:
    event = record.lifecycle
    snap = event.snapshot if event else None
    details: dict[str, object] = {}
    if snap is not None:
        if snap.questions and record.event == "generation.clarification_requested":
            details["questions"] = [q.id for q in snap.questions]
        if snap.answers:
            details["answers"] = dict(snap.answers)
        if snap.estimated_cost_usd is not None:
            details["estimated_cost_usd"] = float(snap.estimated_cost_usd)
    return TimelineEntry(
        event=record.event,
        status=record.status.value,
        version=record.version,
        at=record.at,
        published_at=record.published_at,
        progress=(
            ProgressOut.model_validate(snap.progress.model_dump())
            if snap and snap.progress
            else None
        ),
        error=ErrorOut(code=snap.error.code, message=snap.error.message)
        if snap and snap.error
        else None,
        details=details or None,
    )


@router.get(
    "/{generation_id}/timeline",
    response_model=Timeline,
    responses=responses(401, 404),
    summary="The generation's events in order: what happened, and when",
    description="Read from the record the events were published from (the outbox rows written "
    "in the same transaction as each change), so it is exactly what subscribers were told. "
    "`at` is when the change committed; `published_at` when the event reached the broker.",
)
async def timeline(generation_id: uuid.UUID, user: CurrentUser, db: Session) -> Timeline:
    gen = await owned_generation(db, user.id, generation_id)
    return Timeline(generation_id=gen.id, items=[_entry(r) for r in await recorded(db, gen.id)])
