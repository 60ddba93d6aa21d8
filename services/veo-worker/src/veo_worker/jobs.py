"""The job's life in `render_jobs` (owned by the worker) and its reports, in short transactions.

The row is the worker's idempotency guard: a command for a job that already ended is a
duplicate. A job being rendered is guarded by a PostgreSQL session advisory lock held on a
connection of its own (not a transaction) for the whole render: a second delivery of the same
command, here or in another worker process, finds the lock taken and is dropped, because the
first delivery stays unacked until the job ends and is redelivered if its worker dies (which
also releases the lock). Each report is a row in the outbox, committed with the job's new state.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from shared.db.models import Generation, RenderJob, utcnow
from shared.logging import get_logger
from shared.messages import RenderReported, RenderReportKind, RenderRequested
from shared.outbox import OutboxRelay, enqueue
from shared.schemas import ErrorInfo, Progress, RenderResult
from shared.state_machine import Status
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

log = get_logger("JOB_MANAGER")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass(frozen=True)
class Job:
    generation_id: uuid.UUID
    user_id: uuid.UUID
    status: str
    attempts: int
    operation_name: str | None


def _lock_key(generation_id: uuid.UUID) -> int:
    # 64 random bits of the id: a collision between two jobs running at once is negligible.
    return int.from_bytes(generation_id.bytes[:8], "big", signed=True)


class JobStore:
    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        relay: OutboxRelay,
        provider: str,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.relay = relay
        self.provider = provider

    @asynccontextmanager
    async def exclusive(self, generation_id: uuid.UUID) -> AsyncIterator[bool]:
        """Yield True if this caller now owns the job until the block ends, False if another
        delivery is rendering it right now."""
        key = _lock_key(generation_id)
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            held = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
            try:
                yield held
            finally:
                if held:
                    try:
                        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    except BaseException:
                        await conn.invalidate()  # never pool a connection still holding it
                        raise

    async def generation_status(self, generation_id: uuid.UUID) -> Status | None:
        async with self.sessions() as session:
            return await _status(session, generation_id)

    async def open(self, command: RenderRequested) -> Job:
        """The job for this command, created (queued) on first sight."""
        async with self.sessions() as session, session.begin():
            inserted = await session.execute(
                insert(RenderJob)
                .values(
                    generation_id=command.generation_id,
                    user_id=command.user_id,
                    provider=self.provider,
                    status=QUEUED,
                    spec=command.spec.model_dump(mode="json"),
                    attempts=0,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["generation_id"])
            )
            row = (
                await session.execute(
                    select(RenderJob).where(col(RenderJob.generation_id) == command.generation_id)
                )
            ).scalar_one()
        if inserted.rowcount:  # type: ignore[attr-defined]
            log.info("Job created", provider=self.provider)
        return Job(row.generation_id, row.user_id, row.status, row.attempts, row.operation_name)

    async def start(self, job: Job) -> Job:
        """running, one more attempt, and the `started` report."""
        async with self.sessions() as session, session.begin():
            await self._set(session, job, status=RUNNING, attempts=job.attempts + 1)
            self._report(session, job, "started", progress=Progress(stage="generating"))
        self.relay.wake()
        log.info("Job running", attempt=job.attempts + 1)
        return Job(job.generation_id, job.user_id, RUNNING, job.attempts + 1, job.operation_name)

    async def progress(self, job: Job, progress: Progress) -> bool:
        """Report progress; False (and nothing reported) if the generation has ended."""
        async with self.sessions() as session, session.begin():
            status = await _status(session, job.generation_id)
            if status is None or status.is_terminal:
                return False
            await self._set(session, job)
            self._report(session, job, "progress", progress=progress)
        self.relay.wake()
        return True

    async def remember_operation(self, job: Job, operation_name: str) -> None:
        async with self.sessions() as session, session.begin():
            await self._set(session, job, operation_name=operation_name)

    async def succeed(self, job: Job, result: RenderResult) -> bool:
        """Record success and report it; False if the generation ended meanwhile."""
        return await self._finish(job, SUCCEEDED, result=result)

    async def fail(self, job: Job, error: ErrorInfo) -> bool:
        return await self._finish(job, FAILED, error=error)

    async def cancel(self, job: Job) -> None:
        async with self.sessions() as session, session.begin():
            await self._set(session, job, status=CANCELLED)
        log.info("Job cancelled")

    async def _finish(
        self,
        job: Job,
        status: str,
        *,
        result: RenderResult | None = None,
        error: ErrorInfo | None = None,
    ) -> bool:
        async with self.sessions() as session, session.begin():
            generation = await _status(session, job.generation_id)
            if generation is None or generation.is_terminal:  # cancelled meanwhile
                await self._set(session, job, status=CANCELLED)
                log.info("Job cancelled", instead_of=status)
                return False
            await self._set(
                session, job, status=status, error=error.model_dump() if error else None
            )
            if result is not None:
                self._report(session, job, "succeeded", result=result)
            else:
                self._report(session, job, "failed", error=error)
        self.relay.wake()
        log.info("Job finished", status=status)
        return True

    async def _set(self, session: AsyncSession, job: Job, **values: Any) -> None:
        await session.execute(
            update(RenderJob)
            .where(col(RenderJob.generation_id) == job.generation_id)
            .values(**values, updated_at=utcnow())
        )

    def _report(
        self, session: AsyncSession, job: Job, kind: RenderReportKind, **fields: Any
    ) -> None:
        enqueue(session, RenderReported(generation_id=job.generation_id, kind=kind, **fields))


async def _status(session: AsyncSession, generation_id: uuid.UUID) -> Status | None:
    value = await session.scalar(
        select(Generation.status).where(col(Generation.id) == generation_id)
    )
    return Status(value) if value is not None else None
