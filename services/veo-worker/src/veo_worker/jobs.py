"""The job's life in `render_jobs` (owned by the worker), in short transactions.

A job row is created `queued` by the command handler (which then acks: no delivery is held).
A worker process works on a job only while it holds the row's lease (`lease_owner`,
`lease_until`); it claims jobs with `FOR UPDATE SKIP LOCKED`, renews the leases of all it holds
with one heartbeat statement, and every write of a job's progress is fenced by the lease (a
process that lost it writes nothing). A killed process's jobs are claimed again by any process
once their lease has expired; a stopping process hands its jobs back at once.

Each report to the orchestrator is an outbox row committed with the job's new state.

Everything here runs on a plain asyncpg pool (`open`), the render command's record included
(in the consumer's transaction, `shared.consumer.PlainIdempotentConsumer`): each write and its
report is one statement where it can be (a data-modifying CTE: one round trip, atomic by
itself), its outbox row handed to the relay after the commit as a session's commit would.
Through SQLAlchemy's session each cost a transaction of three to five round trips plus the
session's own work (an ORM round trip measured ~5x an asyncpg one here).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from shared.consumer import Transaction
from shared.db.raw import close_pool, open_pool
from shared.inbox import claim_cte
from shared.logging import get_logger
from shared.messages import RenderReported, RenderReportKind, RenderRequested
from shared.outbox import OutboxRelay, Outgoing, plain_insert
from shared.schemas import ErrorInfo, Progress, RenderResult, RenderSpec
from shared.settings import Settings
from shared.state_machine import Status
from shared.telemetry import carrier

log = get_logger("JOB_MANAGER")

QUEUED, SUBMITTING, RUNNING = "queued", "submitting", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})
TERMINAL_GENERATION = tuple(s.value for s in Status if s.is_terminal)
WINDOW_SECONDS = 60.0


class LeaseLost(Exception):
    """Another process owns the job now (this one stalled past its lease): write nothing."""


@dataclass
class Job:
    generation_id: uuid.UUID
    user_id: uuid.UUID
    provider: str
    status: str
    spec: RenderSpec
    operation_name: str | None
    attempts: int
    transient_errors: int
    poll_count: int
    submitted_at: datetime | None
    deadline_at: datetime | None
    created_at: datetime
    resumed: bool  # taken over from an earlier holder (not a fresh start)
    trace_context: dict[str, Any] | None = None  # the render command's (telemetry)


_COLUMNS = (
    "generation_id, user_id, provider, status, spec, operation_name, attempts, "
    "transient_errors, poll_count, submitted_at, deadline_at, created_at, trace_context"
)


def _job_record(row: asyncpg.Record, *, resumed: bool) -> Job:
    spec, trace = row["spec"], row["trace_context"]
    return Job(
        generation_id=row["generation_id"],
        user_id=row["user_id"],
        provider=row["provider"],
        status=row["status"],
        spec=RenderSpec.model_validate(spec),
        operation_name=row["operation_name"],
        attempts=row["attempts"],
        transient_errors=row["transient_errors"],
        poll_count=row["poll_count"],
        submitted_at=row["submitted_at"],
        deadline_at=row["deadline_at"],
        created_at=row["created_at"],
        resumed=resumed,
        trace_context=trace,
    )


def _free(alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return f"({prefix}lease_until IS NULL OR {prefix}lease_until < now())"


_RETURNED = ", ".join("j." + c.strip() for c in _COLUMNS.split(","))

# Jobs a process takes up again: left mid-way by a holder that died (lease expired) or handed
# back by one that stopped (lease cleared). `attempts` counts only the takeovers after a death.
_CLAIM_STARTED_RAW = f"""
    UPDATE render_jobs j SET lease_owner = $1,
        lease_until = now() + make_interval(secs => $2::float8),
        attempts = j.attempts + CASE WHEN j.lease_until IS NULL THEN 0 ELSE 1 END,
        updated_at = now()
    FROM (SELECT generation_id FROM render_jobs
          WHERE provider = $3 AND status IN ('submitting', 'running') AND {_free()}
          ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED) c
    WHERE j.generation_id = c.generation_id
    RETURNING {_RETURNED}
    """

# Queued jobs whose generation ended (cancelled while waiting for a submission slot).
_DROP_ENDED_RAW = f"""
    UPDATE render_jobs j SET status = 'cancelled', updated_at = now()
    FROM generations g
    WHERE g.id = j.generation_id AND j.provider = $1 AND j.status = 'queued'
      AND {_free("j")} AND g.status = ANY($2::text[])
    RETURNING j.generation_id
    """

_HEARTBEAT_RAW = """
    UPDATE render_jobs j SET lease_until = now() + make_interval(secs => $3::float8)
    FROM generations g
    WHERE j.generation_id = ANY($1::uuid[]) AND j.lease_owner = $2 AND g.id = j.generation_id
    RETURNING j.generation_id, g.status
    """
# Between renewals only read: thousands of held rows are not rewritten every two seconds.
_LOOK_RAW = """
    SELECT j.generation_id, g.status FROM render_jobs j JOIN generations g ON g.id = j.generation_id
    WHERE j.generation_id = ANY($1::uuid[]) AND j.lease_owner = $2
    """
_RELEASE_RAW = """UPDATE render_jobs SET lease_owner = NULL, lease_until = NULL
    WHERE generation_id = ANY($1::uuid[]) AND lease_owner = $2"""
_PAUSE_RAW = """UPDATE submit_windows SET paused_until = GREATEST(
        COALESCE(paused_until, now()), now() + make_interval(secs => $1::float8))
    WHERE name = $2"""

# A render command's job, once (one statement, in the consumer's transaction): the message's
# inbox claim ($1 consumer, $2 message id; `shared.inbox.claim_cte`), then — only if the claim
# is new — the job: `cancelled` if its generation ended, `failed` if refused ($7, the refusal),
# else `queued`, with its place in the queue (the queued jobs ahead of it in the statement's
# snapshot, plus one), kept as the place last reported; and its report (an `Outgoing`'s arrays
# from $11) when the job was created with the status it reports ($10). The `started` report is
# staged with `_PLACE_MARK` for its place, which the statement fills in. `found`: the
# generation exists (no job created: `missing`, else `duplicate`).
_PLACE_MARK = 0  # never a real place (those count from 1)
_PLACE_TEXT = '"queue_position":'
_RECORD_REPORT = plain_insert(
    11,
    where="EXISTS (SELECT 1 FROM j WHERE j.status = $10::text)",
    body=f"COALESCE((SELECT replace(b, '{_PLACE_TEXT}{_PLACE_MARK}', '{_PLACE_TEXT}' || "
    "j.queue_position) FROM j WHERE j.queue_position IS NOT NULL), b)",
)
_RECORD_RAW = f"""
    WITH {claim_cte(1, 2)},
    g AS (
        SELECT status = ANY($8::text[]) AS ended,
            CASE WHEN status = ANY($8::text[]) THEN 'cancelled'
                 WHEN $7::jsonb IS NOT NULL THEN 'failed' ELSE 'queued' END AS job
        FROM generations WHERE id = $3),
    j AS (
        INSERT INTO render_jobs (generation_id, user_id, provider, status, spec, error,
            attempts, poll_count, transient_errors, trace_context, queue_position,
            created_at, updated_at)
        SELECT $3, $4, $5::text, g.job, $6::jsonb,
            CASE WHEN g.ended THEN NULL ELSE $7::jsonb END,
            0, 0, 0, $9::jsonb,
            CASE WHEN g.job = 'queued' THEN 1 + (SELECT count(*) FROM render_jobs
                WHERE provider = $5::text AND status = 'queued' AND {_free()})
            END,
            now(), now()
        FROM g WHERE EXISTS (SELECT 1 FROM claimed)
        ON CONFLICT (generation_id) DO NOTHING
        RETURNING status, queue_position),
    o AS ({_RECORD_REPORT})
    SELECT (SELECT count(*) FROM claimed) AS fresh, EXISTS (SELECT 1 FROM g) AS found,
        j.status, j.queue_position, (SELECT id FROM o) AS outbox_id
    FROM (SELECT 1) AS one LEFT JOIN j ON true
    """

# Queued jobs (not yet taken up by a process) whose place moved up since it was last
# reported, with their new place (the claim's order: oldest first). Near the front ($2)
# every step is reported; further back only a move by a tenth or more, so a long queue does not
# send a report per job at every submission. Two processes refreshing at once report a move
# once (the row's lock, then the condition checked again on the row as the other left it).
_QUEUE_MOVES_RAW = f"""
    WITH ranked AS (
        SELECT generation_id,
            row_number() OVER (ORDER BY created_at, generation_id) AS place
        FROM render_jobs WHERE provider = $1 AND status = 'queued' AND {_free()})
    UPDATE render_jobs j SET queue_position = r.place
    FROM ranked r
    WHERE j.generation_id = r.generation_id AND j.status = 'queued'
      AND (j.queue_position IS NULL
           OR r.place < j.queue_position
              AND (r.place <= $2 OR r.place <= j.queue_position * 0.9))
    RETURNING j.generation_id, r.place
    """
QUEUE_NEAR = 10  # places at the front of the queue reported at every move


# -- plain asyncpg: a job's own steps ---------------------------------------------------------

# Queued jobs, oldest first (a local render starts `running`; a Veo job stays `queued` until
# its flow marks it `submitting`). A retry after a transient error is not a new attempt.
_CLAIM_QUEUED_RAW = f"""
    UPDATE render_jobs j SET lease_owner = $1,
        lease_until = now() + make_interval(secs => $2::float8),
        status = $3,
        attempts = j.attempts + CASE WHEN j.transient_errors = 0 THEN 1 ELSE 0 END,
        updated_at = now()
    FROM (SELECT generation_id FROM render_jobs
          WHERE provider = $4 AND status = 'queued' AND {_free()}
            AND (due_at IS NULL OR due_at <= now())
          ORDER BY created_at LIMIT $5 FOR UPDATE SKIP LOCKED) c
    WHERE j.generation_id = c.generation_id
    RETURNING {", ".join("j." + c.strip() for c in _COLUMNS.split(","))}
    """
_ANY_QUEUED_RAW = f"""SELECT EXISTS (SELECT 1 FROM render_jobs WHERE provider = $1
    AND status = 'queued' AND {_free()} AND (due_at IS NULL OR due_at <= now()))"""
_WINDOW_RAW = (
    "SELECT now() AS now, stamps, paused_until FROM submit_windows WHERE name = $1 FOR UPDATE"
)
_NEW_WINDOW_RAW = "INSERT INTO submit_windows (name) VALUES ($1) ON CONFLICT DO NOTHING"
_SET_WINDOW_RAW = "UPDATE submit_windows SET stamps = $1 WHERE name = $2"
_REQUEUE_RAW = """UPDATE render_jobs SET status = 'queued', transient_errors = $3,
        due_at = now() + make_interval(secs => $4::float8),
        lease_owner = NULL, lease_until = NULL, updated_at = now()
    WHERE generation_id = $1 AND lease_owner = $2"""
_CANCEL_RAW = """UPDATE render_jobs SET status = 'cancelled', lease_owner = NULL,
        lease_until = NULL, updated_at = now()
    WHERE generation_id = $1 AND lease_owner = $2"""
_MARK_SUBMITTING_RAW = (
    "UPDATE render_jobs SET status = 'submitting', updated_at = now() "
    "WHERE generation_id = $1 AND lease_owner = $2"
)


def _reporting(update: str, *, first: int, when: str = "TRUE") -> str:
    """`update` (a fenced UPDATE … RETURNING, as `j`) and, in the same statement, the outbox
    row of its report (`shared.outbox.plain_insert`: an `Outgoing`'s arrays as parameters
    `$first` to `$first + 6`) when `when` holds. One round trip, atomic; no row back when the
    lease is not ours."""
    written = plain_insert(first, where=f"EXISTS (SELECT 1 FROM j WHERE {when})")
    return (
        f"WITH j AS ({update}), o AS ({written}) SELECT j.*, (SELECT id FROM o) AS outbox_id FROM j"
    )


_RECORD_OPERATION_RAW = _reporting(
    """UPDATE render_jobs SET status = 'running', operation_name = $3,
        submitted_at = now(), deadline_at = now() + make_interval(secs => $4::float8),
        next_poll_at = now() + make_interval(secs => $5::float8),
        transient_errors = 0, due_at = NULL, updated_at = now()
    WHERE generation_id = $1 AND lease_owner = $2
    RETURNING submitted_at, deadline_at""",
    first=6,
)
# A job's end: its status, or `cancelled` when its generation ended meanwhile (then no report
# and `error` left as it was), with the lease given up.
_FINISH_RAW = _reporting(
    """UPDATE render_jobs j SET
        status = CASE WHEN g.status = ANY($3::text[]) THEN 'cancelled' ELSE $4 END,
        error = CASE WHEN g.status = ANY($3::text[]) THEN j.error ELSE $5::jsonb END,
        lease_owner = NULL, lease_until = NULL, next_poll_at = NULL, updated_at = now()
    FROM generations g
    WHERE j.generation_id = $1 AND j.lease_owner = $2 AND g.id = j.generation_id
    RETURNING g.status AS generation_status""",
    first=6,
    when="j.generation_status <> ALL($3::text[])",
)
_PROGRESS_RAW: dict[tuple[str, ...], str] = {}


def _progress_statement(columns: tuple[str, ...]) -> str:
    """Progress with these columns set ($11 on); the report only for a live generation."""
    statement = _PROGRESS_RAW.get(columns)
    if statement is None:
        assignments = ["updated_at = now()"] + [
            f"{column} = ${11 + i}" + ("::jsonb" if column == "error" else "")
            for i, column in enumerate(columns)
        ]
        statement = _PROGRESS_RAW[columns] = _reporting(
            f"""UPDATE render_jobs j SET {", ".join(assignments)} FROM generations g
            WHERE j.generation_id = $1 AND j.lease_owner = $2 AND g.id = j.generation_id
            RETURNING g.status AS generation_status""",
            first=4,
            when="j.generation_status <> ALL($3::text[])",
        )
    return statement


class JobStore:
    def __init__(
        self,
        relay: OutboxRelay,
        provider: str,
        *,
        owner: str,
        lease_seconds: float,
        step_slots: int = 8,
        record_slots: int = 8,
        command_slots: int = 0,
    ) -> None:
        # Thousands of held jobs may write at once; they queue here, not in the connection
        # pool (whose checkout times out), leaving connections for claims and the heartbeat.
        self._slots = asyncio.Semaphore(step_slots)
        # A submitted operation's name never queues behind progress reports.
        self._records = asyncio.Semaphore(record_slots)
        self.relay = relay
        self.provider = provider
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.window_name = f"{provider}:submissions"
        # One more each for the claim loop, the heartbeat and the outbox relay, and one per
        # render command being recorded (`command_slots`: the consumer's prefetch), so that
        # none of them waits for a connection behind another.
        self._pool_size = step_slots + record_slots + 3 + command_slots
        self._pool: asyncpg.Pool | None = None  # every statement's (`open`)

    async def open(self, settings: Settings) -> None:
        """The plain pool (connections made as they are first needed)."""
        if self._pool is None:
            self._pool = await open_pool(settings, size=self._pool_size, reset_sessions=False)

    async def close(self) -> None:
        if self._pool is not None:
            await close_pool(self._pool)
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("JobStore.open() was not called")
        return self._pool

    # -- the command handler's side (inside the consumer's transaction) ------------------------

    async def record(
        self, tx: Transaction, command: RenderRequested, refusal: ErrorInfo | None
    ) -> str | None:
        """Create the job for a render command, once; the outcome, for logs and metrics (None:
        this message was applied before, nothing done).

        One statement (`_RECORD_RAW`): the message's inbox claim, the generation's status
        read, the row inserted (`cancelled` if the generation ended, `failed` if refused, else
        `queued`), the queued jobs ahead of it counted, and its report written."""
        gid = command.generation_id
        if refusal is not None:  # reported if the job is created `failed`
            reported = FAILED
            message = RenderReported(generation_id=gid, kind="failed", error=refusal)
        else:  # reported, with its place, if the job is created `queued`
            reported = QUEUED
            marked = Progress(stage="queued", queue_position=_PLACE_MARK)
            message = RenderReported(generation_id=gid, kind="started", progress=marked)
        rows = [tx.outgoing.stage(message)]
        row = await tx.conn.fetchrow(
            _RECORD_RAW,
            tx.consumer,
            tx.message_id,
            gid,
            command.user_id,
            self.provider,
            command.spec.model_dump(mode="json"),
            refusal.model_dump(mode="json") if refusal is not None else None,
            list(TERMINAL_GENERATION),
            # The consumer span's context: the scheduler's spans for this job join it.
            carrier() or None,
            reported,
            *tx.outgoing.arrays(rows),
        )
        tx.fresh = bool(row["fresh"])
        if not tx.fresh:
            return None
        if row["status"] is None:  # not inserted: no such generation, or an earlier command's
            return "duplicate" if row["found"] else "missing"
        if row["outbox_id"] is not None:
            if row["queue_position"] is not None:  # the place, as the statement wrote it
                rows[0]["body"] = _placed(rows[0]["body"], row["queue_position"])
            tx.outgoing.written(rows, [(row["outbox_id"], rows[0]["message_id"])])
        return str(row["status"])

    async def report_queue_moves(self) -> int:
        """Report the new place of each queued job the queue moved (see `_QUEUE_MOVES_RAW`);
        how many were reported."""
        outgoing = Outgoing(self.relay)
        async with self.pool.acquire() as conn, conn.transaction():
            moved = await conn.fetch(_QUEUE_MOVES_RAW, self.provider, QUEUE_NEAR)
            await outgoing.write(
                conn,
                [
                    Outgoing.stage(
                        RenderReported(
                            generation_id=row["generation_id"],
                            kind="progress",
                            progress=Progress(stage="queued", queue_position=int(row["place"])),
                        )
                    )
                    for row in moved
                ],
            )
        outgoing.committed()
        return len(moved)

    # -- the scheduler's side --------------------------------------------------------------------

    async def ensure_window(self) -> None:
        await self.pool.execute(_NEW_WINDOW_RAW, self.window_name)

    async def claim_started(self, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        rows = await self.pool.fetch(
            _CLAIM_STARTED_RAW, self.owner, float(self.lease_seconds), self.provider, limit
        )
        return [_job_record(row, resumed=True) for row in rows]

    async def drop_ended(self) -> int:
        """Cancel queued jobs whose generation ended while they waited (never submitted)."""
        rows = await self.pool.fetch(_DROP_ENDED_RAW, self.provider, list(TERMINAL_GENERATION))
        return len(rows)

    async def claim_queued(self, limit: int, *, per_minute: int | None, status: str) -> list[Job]:
        """Queued jobs, set to `status`; with `per_minute`, only as many as the global window
        of submissions allows (taken under the window row's lock, shared by all processes)."""
        if limit <= 0:
            return []
        # Nothing queued (most ticks): one statement, no transaction opened.
        if not await self.pool.fetchval(_ANY_QUEUED_RAW, self.provider):
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            stamps: list[datetime] = []
            now = None
            if per_minute is not None:
                window = await conn.fetchrow(_WINDOW_RAW, self.window_name)
                if window is None:  # created at start; recreated if someone deleted it
                    await conn.execute(_NEW_WINDOW_RAW, self.window_name)
                    window = await conn.fetchrow(_WINDOW_RAW, self.window_name)
                    assert window is not None
                now = window["now"]
                if window["paused_until"] is not None and window["paused_until"] > now:
                    return []
                since = now - timedelta(seconds=WINDOW_SECONDS)
                stamps = [t for t in window["stamps"] if t > since]
                limit = min(limit, per_minute - len(stamps))
                if limit <= 0:
                    return []
            rows = await conn.fetch(
                _CLAIM_QUEUED_RAW,
                self.owner,
                float(self.lease_seconds),
                status,
                self.provider,
                limit,
            )
            jobs = [_job_record(row, resumed=False) for row in rows]
            if per_minute is not None and jobs:
                await conn.execute(_SET_WINDOW_RAW, stamps + [now] * len(jobs), self.window_name)
            return jobs

    async def pause_submissions(self, seconds: float) -> None:
        """Nobody submits for a while (the provider said 429): the window is shared."""
        async with self._slots:
            await self.pool.execute(_PAUSE_RAW, float(seconds), self.window_name)

    async def heartbeat(self, ids: list[uuid.UUID], *, renew: bool) -> dict[uuid.UUID, Status]:
        """The generation status of each job still held here (leases renewed if `renew`)."""
        if not ids:
            return {}
        if renew:
            rows = await self.pool.fetch(_HEARTBEAT_RAW, ids, self.owner, float(self.lease_seconds))
        else:
            rows = await self.pool.fetch(_LOOK_RAW, ids, self.owner)
        return {row["generation_id"]: Status(row["status"]) for row in rows}

    async def release(self, ids: list[uuid.UUID]) -> None:
        """Hand jobs back (a stopping process): any process may take them up at once."""
        if not ids:
            return
        await self.pool.execute(_RELEASE_RAW, ids, self.owner)

    # -- one job's steps (fenced by the lease) -----------------------------------------------------

    async def requeue(self, job: Job, *, after_seconds: float, transient_errors: int) -> None:
        """Back to the queue after a definite (not ambiguous) submission failure."""
        async with self._slots:
            done = await self.pool.execute(
                _REQUEUE_RAW,
                job.generation_id,
                self.owner,
                transient_errors,
                float(after_seconds),
            )
        if done != "UPDATE 1":
            raise LeaseLost(str(job.generation_id))

    async def mark_submitting(self, job: Job) -> None:
        """The crash-window marker, committed just before the submission is sent."""
        async with self._records:
            done = await self.pool.execute(_MARK_SUBMITTING_RAW, job.generation_id, self.owner)
        if done != "UPDATE 1":
            raise LeaseLost(str(job.generation_id))

    async def record_operation(
        self, job: Job, name: str, *, deadline_seconds: float, first_poll_seconds: float
    ) -> tuple[datetime, datetime]:
        """The operation name, stored with `running` and the `submitted` report in one commit,
        before any waiting. Its submission and deadline times."""
        outgoing, report = self._report(job, "progress", progress=Progress(stage="submitted"))
        async with self._records:
            row = await self.pool.fetchrow(
                _RECORD_OPERATION_RAW,
                job.generation_id,
                self.owner,
                name,
                float(deadline_seconds),
                float(first_poll_seconds),
                *outgoing.arrays([report]),
            )
        if row is None:
            raise LeaseLost(str(job.generation_id))
        _sent(outgoing, report, row["outbox_id"])
        return row["submitted_at"], row["deadline_at"]

    async def progress(self, job: Job, progress: Progress, **values: Any) -> bool:
        """Report progress (with any column changes); False if the generation has ended."""
        outgoing, report = self._report(job, "progress", progress=progress)
        columns = tuple(values)
        async with self._slots:
            # One statement: the job's columns, the generation's status read with them, and
            # the report, unless the generation ended (its job is cancelled by the caller).
            row = await self.pool.fetchrow(
                _progress_statement(columns),
                job.generation_id,
                self.owner,
                list(TERMINAL_GENERATION),
                *outgoing.arrays([report]),
                *values.values(),
            )
        if row is None:
            raise LeaseLost(str(job.generation_id))
        if row["generation_status"] in TERMINAL_GENERATION:
            return False
        _sent(outgoing, report, row["outbox_id"])
        return True

    async def succeed(self, job: Job, result: RenderResult) -> bool:
        """Record success and report it; False if the generation ended meanwhile."""
        return await self._finish(job, SUCCEEDED, result=result)

    async def fail(self, job: Job, error: ErrorInfo) -> bool:
        return await self._finish(job, FAILED, error=error)

    async def cancel(self, job: Job) -> None:
        async with self._slots:
            done = await self.pool.execute(_CANCEL_RAW, job.generation_id, self.owner)
        if done != "UPDATE 1":
            raise LeaseLost(str(job.generation_id))
        log.info("Job cancelled")

    async def _finish(
        self,
        job: Job,
        status: str,
        *,
        result: RenderResult | None = None,
        error: ErrorInfo | None = None,
    ) -> bool:
        if result is not None:
            outgoing, report = self._report(job, "succeeded", result=result)
        else:
            outgoing, report = self._report(job, "failed", error=error)
        async with self._slots:
            # One statement: `status`, or `cancelled` if the generation ended meanwhile, and
            # the report unless it did.
            row = await self.pool.fetchrow(
                _FINISH_RAW,
                job.generation_id,
                self.owner,
                list(TERMINAL_GENERATION),
                status,
                error.model_dump(mode="json") if error else None,
                *outgoing.arrays([report]),
            )
        if row is None:
            raise LeaseLost(str(job.generation_id))
        if row["generation_status"] in TERMINAL_GENERATION:  # cancelled meanwhile
            log.info("Job cancelled", instead_of=status)
            return False
        _sent(outgoing, report, row["outbox_id"])
        log.info("Job finished", status=status)
        return True

    def _report(
        self, job: Job, kind: RenderReportKind, **fields: Any
    ) -> tuple[Outgoing, dict[str, Any]]:
        """A report's outbox row, staged as `shared.outbox` stages one (the current trace
        context, the user for the publish span), with what hands it to the relay."""
        message = RenderReported(generation_id=job.generation_id, kind=kind, **fields)
        return Outgoing(self.relay), Outgoing.stage(message)


def _placed(body: str, place: int) -> str:
    """A `started` report's body staged with `_PLACE_MARK`, with its place, as `_RECORD_RAW`
    writes it."""
    return body.replace(f"{_PLACE_TEXT}{_PLACE_MARK}", f"{_PLACE_TEXT}{place}", 1)


def _sent(outgoing: Outgoing, report: dict[str, Any], outbox_id: int | None) -> None:
    """The report's statement has committed (autocommit): its row goes to the relay now (or,
    with no running relay, at the relay's next claim). No row: the report was not due."""
    if outbox_id is not None:
        outgoing.written([report], [(outbox_id, report["message_id"])])
        outgoing.committed()
