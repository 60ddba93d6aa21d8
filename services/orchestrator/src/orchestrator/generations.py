"""Loading a generation and applying the system's moves to it, on plain asyncpg.

Every write is a compare-and-set on `version` (`transition`, the same move as
`shared.domain.transitions.apply_transition`: `decide()`, the row's new values, its lifecycle
events in the outbox). Handlers that race each other on one generation (its render reports,
consumed concurrently) read it locked, so they run one after the other instead of failing
each other's compare-and-set. When someone else wrote between an unlocked read and its write
(the API applying a user's move while a request or confirmation is handled), the step is re-run
on a fresh read: the decision is always made on the row as it is now, so a retry cannot apply
a stale move.

The first read of a message also claims it in the inbox (one statement, `sql.CLAIM_AND_LOAD`);
a compare-and-set and the events it announces are one statement too (`sql.transition`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from shared.consumer import Transaction
from shared.domain.generation_rows import GenerationRow
from shared.domain.transitions import ConcurrentUpdate, plan, snapshot
from shared.logging import get_logger
from shared.messages import LifecycleEvent
from shared.metrics import ServiceMetrics
from shared.state_machine import Decision, Status, Trigger
from shared.telemetry import label

from orchestrator import sql
from shared import telemetry

log = get_logger("ORCHESTRATOR")

MAX_ATTEMPTS = 5

Step = Callable[[GenerationRow], Awaitable[None]]


async def with_generation(
    tx: Transaction, generation_id: uuid.UUID, step: Step, *, lock: bool = False
) -> None:
    """Claim the message and run `step` on the current row, re-reading and re-running it on
    `ConcurrentUpdate` (with `lock`, on the row locked until the transaction commits).

    Under READ COMMITTED each re-read sees what the competing writer committed, so no new
    transaction is needed. After `MAX_ATTEMPTS` the error propagates and the message is
    redelivered. A message already applied (the claim found it in the inbox) does nothing."""
    statement = sql.CLAIM_AND_LOAD_LOCKED if lock else sql.CLAIM_AND_LOAD
    record = await tx.conn.fetchrow(statement, tx.consumer, tx.message_id, generation_id)
    tx.fresh = bool(record["fresh"])
    if not tx.fresh:
        return
    gen = sql.row_of(record)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if gen is None:
            # Nothing to act on and retrying cannot create it: acknowledge and move on.
            log.warning("Generation not found, message ignored", generation_id=str(generation_id))
            return
        label(gen.id, gen.user_id)  # whose generation the message's span is about
        try:
            await step(gen)
            return
        except ConcurrentUpdate:
            if attempt == MAX_ATTEMPTS:
                raise
            log.info("Generation changed concurrently, re-reading", attempt=attempt)
        found = await tx.conn.fetchrow(sql.LOAD_LOCKED if lock else sql.LOAD, generation_id)
        gen = None if found is None else GenerationRow(*found)


async def transition(
    tx: Transaction,
    gen: GenerationRow,
    trigger: Trigger,
    *,
    event_headers: dict[str, Any] | None = None,
    **changes: Any,
) -> Decision:
    """Move `gen` by `trigger`, writing `changes` with it. Raises `IllegalTransition` or
    `ConcurrentUpdate`; on success `gen` holds the new values and its events are in the
    outbox (written by the same statement as the compare-and-set, with `event_headers`)."""
    before = Status(gen.status)
    decision, values, now = plan(gen, trigger, changes)
    telemetry.label(gen.id, gen.user_id)
    rows: list[dict[str, Any]] = []
    if decision.events:
        shot = snapshot(dataclasses.replace(gen, **values))  # the row as this move leaves it
        ids = {telemetry.GENERATION_ID: str(gen.id), telemetry.USER_ID: str(gen.user_id)}
        # The events are written in the generation's own trace (`telemetry.generation_span`).
        with telemetry.generation_span(f"generation {trigger.value}", gen.trace_context, **ids):
            rows = [
                tx.outgoing.stage(
                    LifecycleEvent(
                        generation_id=gen.id,
                        event=event,
                        user_id=gen.user_id,
                        conversation_id=gen.conversation_id,
                        snapshot=shot,
                        occurred_at=now,
                    ),
                    headers=event_headers,
                )
                for event in decision.events
            ]
    columns = tuple(values)
    result = await tx.conn.fetchrow(
        sql.transition(columns),
        gen.id,
        gen.version,
        *(sql.json_value(name, values[name]) for name in columns),
        *tx.outgoing.arrays(rows),
    )
    if result["updated"] != 1:
        raise ConcurrentUpdate(str(gen.id))
    tx.outgoing.written(rows, zip(result["ids"] or (), result["message_ids"] or (), strict=True))
    entered = gen.status_changed_at or gen.created_at
    for key, value in values.items():
        setattr(gen, key, value)
    if decision.changed(before) and tx.metrics is not None:
        seconds = (now - entered).total_seconds()
        tx.on_commit(_counted(tx.metrics, gen, before, decision.status, seconds))
    return decision


def _counted(
    metrics: ServiceMetrics, gen: GenerationRow, before: Status, after: Status, seconds: float
) -> Callable[[], None]:
    """The status change's metrics, counted once committed (as `shared.metrics`'s
    `note_transition` counts a session's)."""
    error = gen.error.get("code") if after == Status.FAILED and gen.error else None
    confirmed = after == Status.CONFIRMED
    spend = gen.estimated_cost_usd if confirmed else None
    model = (gen.spec or {}).get("model") if confirmed else None

    def count() -> None:
        metrics.transitions.labels(before.value, after.value, error or "").inc()
        metrics.time_in_status.labels(before.value).observe(max(0.0, seconds))
        if spend:
            metrics.spend.labels(model or "unknown").inc(float(spend))

    return count
