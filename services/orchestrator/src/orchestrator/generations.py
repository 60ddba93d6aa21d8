"""Loading a generation and applying the system's moves to it, optimistically.

Every write goes through `apply_transition` (compare-and-set on `version`). When someone else
(the API applying a user's move, or another orchestrator handler for the same generation) got
there first, the step is re-run on a fresh read: the decision is always made on the row as it
is now, so a retry cannot apply a stale move.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from shared.db.models import Generation
from shared.domain.transitions import ConcurrentUpdate
from shared.logging import get_logger
from shared.telemetry import label
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

log = get_logger("ORCHESTRATOR")

MAX_ATTEMPTS = 5

Step = Callable[[Generation], Awaitable[None]]


async def load(session: AsyncSession, generation_id: uuid.UUID) -> Generation | None:
    """The committed row as it is now (not the session's cached copy)."""
    query = (
        select(Generation)
        .where(col(Generation.id) == generation_id)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalars().first()


async def with_generation(session: AsyncSession, generation_id: uuid.UUID, step: Step) -> None:
    """Run `step` on the current row, re-reading and re-running it on `ConcurrentUpdate`.

    Runs inside the consumer's transaction: under READ COMMITTED each re-read sees what the
    competing writer committed, so no new transaction is needed. After `MAX_ATTEMPTS` the
    error propagates and the message is redelivered.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        gen = await load(session, generation_id)
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
