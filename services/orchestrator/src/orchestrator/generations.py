"""Loading a generation and applying the system's moves to it.

Every write goes through `apply_transition` (compare-and-set on `version`). Handlers that race
each other on one generation (its render reports, consumed concurrently) read it locked, so
they run one after the other instead of failing each other's compare-and-set. When someone
else wrote between an unlocked read and its write (the API applying a user's move while a
request or confirmation is handled), the step is re-run on a fresh read: the decision is
always made on the row as it is now, so a retry cannot apply a stale move.

The row is read without the ORM (`GenerationRow`): one Core statement per message.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from shared.domain.generation_rows import GenerationRow, load_generation
from shared.domain.transitions import ConcurrentUpdate
from shared.logging import get_logger
from shared.telemetry import label
from sqlalchemy.ext.asyncio import AsyncSession

log = get_logger("ORCHESTRATOR")

MAX_ATTEMPTS = 5

Step = Callable[[GenerationRow], Awaitable[None]]


async def with_generation(
    session: AsyncSession, generation_id: uuid.UUID, step: Step, *, lock: bool = False
) -> None:
    """Run `step` on the current row, re-reading and re-running it on `ConcurrentUpdate`
    (with `lock`, on the row locked until the consumer's transaction commits).

    Runs inside the consumer's transaction: under READ COMMITTED each re-read sees what the
    competing writer committed, so no new transaction is needed. After `MAX_ATTEMPTS` the
    error propagates and the message is redelivered.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        gen = await load_generation(session, generation_id, lock=lock)
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
