"""Creating a generation: the row and its `generation.requested` message in one transaction,
with `Idempotency-Key` replays (the unique constraint settles two concurrent first requests)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shared.api_keys import Caller
from shared.db.models import Generation, utcnow
from shared.domain.pricing import UnsupportedParams, check_supported
from shared.domain.quotas import Limits
from shared.messages import GenerationRequested
from shared.metrics import note_transition
from shared.outbox import enqueue
from shared.settings import Settings
from shared.state_machine import INITIAL
from shared.telemetry import carrier, label
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from api.idempotency import WINDOW, request_hash
from api.moves import check_quotas
from api.problems import Problem, invalid
from api.queries import ensure_conversation
from api.schemas import CreateGeneration

IDEMPOTENCY_CONSTRAINT = "uq_generations_idempotency"


@dataclass(frozen=True)
class Created:
    generation: Generation
    replayed: bool


async def create_generation(
    db: AsyncSession,
    user: Caller,
    body: CreateGeneration,
    settings: Settings,
    idempotency_key: str | None,
    *,
    also: Callable[[Generation], Awaitable[None]] | None = None,
) -> Created:
    """Create the generation; `also` stages more rows (e.g. the chat message that asked for it)
    in the same transaction, after the generation's own."""
    user_id = user.id  # read now: a rollback below expires the loaded user
    params = body.generation_params()
    try:
        check_supported(
            params,
            provider=settings.provider,
            prices=settings.price_per_second_usd,
            default_model=settings.default_model,
        )
    except UnsupportedParams as exc:
        raise invalid(
            [{"field": f, "location": "body", "message": m} for f, m in exc.errors.items()],
            "a parameter cannot be honoured by the configured provider",
        ) from None
    if body.conversation_id is not None:
        await ensure_conversation(db, user_id, body.conversation_id)

    stored_params = params.model_dump(mode="json", exclude_none=True)
    canonical = {
        "prompt": body.prompt,
        "conversation_id": str(body.conversation_id) if body.conversation_id else None,
        "auto_confirm": body.auto_confirm,
        "params": stored_params,
    }
    digest = request_hash(canonical) if idempotency_key else None
    if idempotency_key:
        earlier = await _by_key(db, user_id, idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest)
        # A key older than the window may be used again: the old row lets go of it.
        await db.execute(
            update(Generation)
            .where(
                col(Generation.user_id) == user_id,
                col(Generation.idempotency_key) == idempotency_key,
                col(Generation.created_at) < utcnow() - WINDOW,
            )
            .values(idempotency_key=None)
        )

    if body.auto_confirm:
        # Confirmed by the orchestrator as soon as nothing is left to ask: refuse now what the
        # quotas would refuse then (which checks again, with the final duration).
        await check_quotas(
            db,
            user_id,
            Limits.from_settings(settings),
            extra_generations=1,
            extra_seconds=params.duration_seconds or 0,
        )

    now = utcnow()
    gen = Generation(
        user_id=user_id,
        conversation_id=body.conversation_id,
        status=INITIAL.value,
        version=1,
        prompt=body.prompt,
        auto_confirm=body.auto_confirm,
        params=stored_params,
        idempotency_key=idempotency_key,
        request_hash=digest,
        trace_context=carrier(),  # later moves announce their events in this trace
        created_at=now,
        updated_at=now,
    )
    label(gen.id, user_id)
    db.add(gen)
    note_transition(db, before=None, after=gen.status, seconds=None)  # counted at commit
    enqueue(db, GenerationRequested(generation_id=gen.id, user_id=user_id))
    if also is not None:
        await also(gen)
    try:
        await db.commit()
    except IntegrityError as exc:
        await db.rollback()
        if not idempotency_key or not _violates(exc, IDEMPOTENCY_CONSTRAINT):
            raise
        # A concurrent request with the same key committed first: answer with its generation.
        winner = await _by_key(db, user_id, idempotency_key)
        if winner is None:
            raise
        return _replay(winner, digest)
    return Created(gen, replayed=False)


async def _by_key(db: AsyncSession, user_id: uuid.UUID, key: str) -> Generation | None:
    """The generation made with this key within the window, if any."""
    return await db.scalar(
        select(Generation).where(
            col(Generation.user_id) == user_id,
            col(Generation.idempotency_key) == key,
            col(Generation.created_at) >= utcnow() - WINDOW,
        )
    )


def _replay(earlier: Generation, digest: str | None) -> Created:
    if earlier.request_hash != digest:
        raise Problem(
            409,
            "this Idempotency-Key was already used with a different request body",
            slug="idempotency-key-reused",
        )
    return Created(earlier, replayed=True)


def _violates(exc: IntegrityError, constraint: str) -> bool:
    cause = getattr(exc.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None)
    return name == constraint or constraint in str(exc.orig)
