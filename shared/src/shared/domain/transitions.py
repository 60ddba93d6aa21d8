"""Applying a transition: `decide()`, a compare-and-set on the row's version, and the lifecycle
events to the outbox, all in the caller's transaction.

Also where a generation is observed: its status-change metrics (counted at commit) and its
trace. The events are written in the generation's own trace, whichever trace the move was made
in (`telemetry.generation_span`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from shared import telemetry
from shared.db.models import Generation, utcnow
from shared.domain.generation_rows import GenerationRow
from shared.messages import GenerationSnapshot, LifecycleEvent
from shared.metrics import note_transition
from shared.outbox import enqueue
from shared.state_machine import Decision, Status, Trigger, decide


class ConcurrentUpdate(Exception):
    """Someone else changed the generation since it was read; re-read and decide again."""


def snapshot(gen: Generation | GenerationRow) -> GenerationSnapshot:
    return GenerationSnapshot.model_validate(
        {
            "status": gen.status,
            "prompt": gen.prompt,
            "params": gen.params,
            "spec": gen.spec,
            "questions": gen.questions,
            "answers": gen.answers,
            "estimated_cost_usd": gen.estimated_cost_usd,
            "progress": gen.progress,
            "result": gen.result,
            "error": gen.error,
            "job_id": str(gen.id),
            "version": gen.version,
            "created_at": gen.created_at,
            "updated_at": gen.updated_at,
        }
    )


def plan(
    gen: Generation | GenerationRow, trigger: Trigger, changes: dict[str, Any]
) -> tuple[Decision, dict[str, Any], datetime]:
    """The move of `gen` by `trigger` (or `IllegalTransition`): the decision, the row's new
    values (`changes` with the status, the next version and the times it dates) and when."""
    before = Status(gen.status)
    decision = decide(before, trigger)
    now = utcnow()
    values = {
        **changes,
        "status": decision.status.value,
        "version": gen.version + 1,
        "updated_at": now,
    }
    if decision.changed(before):
        values["status_changed_at"] = now
    if decision.status == Status.CONFIRMED and gen.status != Status.CONFIRMED:
        values["confirmed_at"] = now  # dates the video seconds spent (the daily quota)
    return decision, values, now


async def apply_transition(
    session: AsyncSession, gen: Generation | GenerationRow, trigger: Trigger, **changes: Any
) -> Decision:
    """Move `gen` by `trigger`, writing `changes` with it. Raises `IllegalTransition` or
    `ConcurrentUpdate`; on success `gen` holds the new values and its events are in the outbox.

    `gen` is an ORM entity (the API) or a `GenerationRow` read without the ORM (the
    orchestrator); either way the write is the same compare-and-set UPDATE."""
    before = Status(gen.status)
    decision, values, now = plan(gen, trigger, changes)
    statement = _update(tuple(values))
    params = {**_params(values), "_id": gen.id, "_version": gen.version}
    orm = isinstance(gen, Generation)
    if orm:  # through the session: its autoflush writes whatever the caller staged first
        result: Any = await session.execute(statement, params)
    else:  # a plain row, nothing staged in the ORM: the connection, without the session's path
        result = await (await session.connection()).execute(statement, params)
    if result.rowcount != 1:
        raise ConcurrentUpdate(str(gen.id))
    entered = gen.status_changed_at or gen.created_at
    for key, value in values.items():
        if orm:
            # As loaded, not as changed: the row already has them, so the session's flush at
            # commit has nothing to write again.
            set_committed_value(gen, key, value)
        else:
            setattr(gen, key, value)
    if decision.changed(before):
        _observe(session, gen, before, decision.status, (now - entered).total_seconds())
    telemetry.label(gen.id, gen.user_id)
    ids = {telemetry.GENERATION_ID: str(gen.id), telemetry.USER_ID: str(gen.user_id)}
    name = f"generation {trigger.value}"
    with telemetry.generation_span(name, gen.trace_context, **ids):
        for event in decision.events:
            enqueue(
                session,
                LifecycleEvent(
                    generation_id=gen.id,
                    event=event,
                    user_id=gen.user_id,
                    conversation_id=gen.conversation_id,
                    snapshot=snapshot(gen),
                    occurred_at=now,
                ),
            )
    return decision


_UPDATES: dict[tuple[str, ...], Any] = {}


def _update(columns: tuple[str, ...]) -> Any:
    """The compare-and-set UPDATE writing `columns`, built once per set of columns (a plain
    table statement with bound parameters: no ORM bulk-update path, nothing rebuilt per call)."""
    statement = _UPDATES.get(columns)
    if statement is None:
        table: Table = Generation.__table__  # type: ignore[attr-defined]
        statement = _UPDATES[columns] = (
            update(table)
            .where(
                table.c.id == bindparam("_id", type_=table.c.id.type),
                table.c.version == bindparam("_version", type_=table.c.version.type),
            )
            .values({name: bindparam(f"v_{name}", type_=table.c[name].type) for name in columns})
        )
    return statement


def _params(values: dict[str, Any]) -> dict[str, Any]:
    return {f"v_{name}": value for name, value in values.items()}


def _observe(
    session: AsyncSession,
    gen: Generation | GenerationRow,
    before: Status,
    after: Status,
    seconds: float,
) -> None:
    error = gen.error.get("code") if after == Status.FAILED and gen.error else None
    confirmed = after == Status.CONFIRMED
    note_transition(
        session,
        before=before.value,
        after=after.value,
        seconds=seconds,
        error_code=error,
        spend=gen.estimated_cost_usd if confirmed else None,
        model=(gen.spec or {}).get("model") if confirmed else None,
    )
