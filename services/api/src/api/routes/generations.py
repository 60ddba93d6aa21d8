"""`/v1/generations`: create, read, list, and the user's moves."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from shared.api_keys import Caller
from shared.domain.quotas import Limits
from shared.logging import get_logger, log_context
from shared.media import Storage
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from shared.state_machine import Status
from sqlalchemy.ext.asyncio import AsyncSession

from api.creation import create_generation
from api.deps import AppSettings, AppStorage, CurrentUser, Pg, Runtime, Session
from api.idempotency import check_key
from api.moves import Plan, answers_plan, cancel_plan, confirm_plan, move
from api.pagination import Cursor, Limit, after, next_cursor
from api.problems import responses
from api.queries import (
    GenerationRow,
    ensure_conversation,
    owned_generation_row,
    page_of_generations,
    queue_positions,
)
from api.schemas import CreateGeneration, GenerationOut, GenerationPage, SubmitAnswers
from api.views import etag, etag_matches, generation_out

router = APIRouter(prefix="/v1/generations", tags=["generations"])

log_create = get_logger("GENERATION_CREATE")
log_status = get_logger("GENERATION_STATUS")
log_move = get_logger("GENERATION_MOVE")

_MOVE_ERRORS = responses(401, 404, 409, 413, 422)
JSON = "application/json"


@router.post(
    "",
    status_code=201,
    response_model=GenerationOut,
    responses=responses(401, 404, 409, 413, 422),
    summary="Start a generation",
)
async def create(
    body: CreateGeneration,
    user: CurrentUser,
    db: Session,
    cfg: AppSettings,
    runtime: Runtime,
    storage: AppStorage,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Same key and body within 24 h: the same generation; another body: 409",
        ),
    ] = None,
) -> GenerationOut:
    key = check_key(idempotency_key)
    log_create.info(
        "Request received",
        user_id=str(user.id),
        prompt_chars=len(body.prompt),
        auto_confirm=body.auto_confirm,
        conversation_id=str(body.conversation_id) if body.conversation_id else None,
        idempotent=key is not None,
    )
    created = await create_generation(db, user, body, cfg, key)
    gen = created.generation
    with log_context(generation_id=str(gen.id)):
        if created.replayed:
            response.headers["Idempotent-Replayed"] = "true"
            log_create.info("Idempotent replay", status=gen.status)
        else:
            runtime.relay.wake()
            log_create.info("Generation created", status=gen.status)
    response.headers["Location"] = f"/v1/generations/{gen.id}"
    response.headers["ETag"] = etag(gen)
    return await generation_out(gen, storage)


@router.get(
    "",
    response_model=GenerationPage,
    responses=responses(401, 404, 422),
    summary="List your generations, newest first (by status and/or conversation)",
    description="Confirmed generations waiting for a renderer show `progress.stage` `queued` "
    "and their `progress.queue_position` (1 = next).",
)
async def list_generations(
    user: CurrentUser,
    db: Session,
    storage: AppStorage,
    status: Status | None = None,
    conversation_id: Annotated[
        uuid.UUID | None, Query(description="Only the generations of this conversation")
    ] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> GenerationPage:
    start = after(cursor)  # a bad cursor is a 422 before anything is looked up
    if conversation_id is not None:
        await ensure_conversation(db, user.id, conversation_id)
    rows, more = await page_of_generations(
        db, user.id, status=status, limit=limit, after=start, conversation_id=conversation_id
    )
    waiting = await queue_positions(db, rows)
    return GenerationPage(
        items=[await generation_out(g, storage, queue_position=waiting.get(g.id)) for g in rows],
        next_cursor=next_cursor(rows, more),
    )


@router.get(
    "/{generation_id}",
    response_model=GenerationOut,
    responses={304: {"description": "Not modified (If-None-Match)"}, **responses(401, 404)},
    summary="Read a generation",
)
async def read(
    generation_id: uuid.UUID,
    user: CurrentUser,
    pg: Pg,
    storage: AppStorage,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    # Served by `api.fastpath.StatusReads` in the plain case (a bearer key, a canonical id),
    # with the same functions; here for the rest, and for the OpenAPI document.
    gen = await owned_generation_row(pg, user.id, generation_id)
    return await status_response(gen, if_none_match, storage)


async def status_response(
    gen: GenerationRow, if_none_match: str | None, storage: Storage
) -> Response:
    """One query on the raw pool read `gen` (`api.pg`); the body is serialised once, as FastAPI
    would have for the response model (`model_dump_json(by_alias=True)`)."""
    tag = etag(gen)
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    with log_context(generation_id=str(gen.id)):
        log_status.debug("Status read", status=gen.status, version=gen.version)
    if etag_matches(if_none_match, tag):
        return Response(status_code=304, headers=headers)
    body = await generation_out(gen, storage)
    return Response(body.model_dump_json(by_alias=True), headers=headers, media_type=JSON)


@dataclass(frozen=True)
class Mover:
    """What the move routes share: the caller, the session and the app's parts; called with a
    move's name, its plan and the generation, it applies the move and answers the generation."""

    user: Caller
    db: AsyncSession
    cfg: Settings
    runtime: ServiceRuntime
    storage: Storage
    response: Response

    async def __call__(self, action: str, plan: Plan, generation_id: uuid.UUID) -> GenerationOut:
        limits = Limits.from_settings(self.cfg)
        with log_context(generation_id=str(generation_id)):
            log_move.info("Request received", move=action, user_id=str(self.user.id))
            gen, before = await move(self.db, self.user.id, generation_id, plan, limits=limits)
            self.runtime.relay.wake()
            log_move.info("Move applied", move=action, **{"from": before.value, "to": gen.status})
        self.response.headers["ETag"] = etag(gen)
        return await generation_out(gen, self.storage)


async def mover(
    user: CurrentUser,
    db: Session,
    cfg: AppSettings,
    runtime: Runtime,
    storage: AppStorage,
    response: Response,
) -> Mover:
    return Mover(user, db, cfg, runtime, storage, response)


Move = Annotated[Mover, Depends(mover)]


@router.post(
    "/{generation_id}/answers",
    response_model=GenerationOut,
    responses=_MOVE_ERRORS,
    summary="Answer the clarifying questions (409 unless pending_clarification)",
)
async def answer(generation_id: uuid.UUID, body: SubmitAnswers, apply: Move) -> GenerationOut:
    return await apply("answers", answers_plan(body.answers, apply.cfg), generation_id)


@router.post(
    "/{generation_id}/confirm",
    response_model=GenerationOut,
    responses=responses(401, 404, 409, 429),
    summary="Confirm the spec and cost (409 unless pending_confirmation; 429 over a quota)",
)
async def confirm(generation_id: uuid.UUID, apply: Move) -> GenerationOut:
    return await apply("confirm", confirm_plan, generation_id)


@router.post(
    "/{generation_id}/cancel",
    response_model=GenerationOut,
    responses=responses(401, 404, 409),
    summary="Cancel (409 if already completed, failed or cancelled)",
)
async def cancel(generation_id: uuid.UUID, apply: Move) -> GenerationOut:
    return await apply("cancel", cancel_plan, generation_id)
