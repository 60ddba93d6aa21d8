"""Webhook delivery: the row is the record, memory does the work.

    event intake (intake.py) ─┐ rows committed, leased
    delivery command ─ claim ─┼─▶ Lanes (per endpoint, in memory) ─▶ attempt: sign, POST, judge
    sweeper ─ expired lease ──┘                                          │
                                  Recorder (batched): attempt rows, delivery state, the
                                  endpoint's failure streak, the retry's command ◀──┘

A delivery row is written, pending, before anything is sent, and while this process works on it
its `next_attempt_at` is a lease (now + `LEASE_SECONDS`, renewed while the job is in memory).
The message that brought the work (a lifecycle event, a delivery command) is acked once the
row is committed — never after HTTP, so no consumer waits on an endpoint. If the process dies
(kill -9) anywhere after that, the row is still pending and its lease runs out; every
notifier's sweeper takes up pending rows whose lease ran out and attempts them again: at least
once, never lost. A failed attempt writes its row, the delivery's due time (`next_attempt_at`)
and the retry's command (through the outbox, to the TTL delay ladder) in one transaction;
a restart between attempts loses nothing either.

One call per attempt number: the attempt is recorded only if it is the delivery's next one (a
copy of it that raced ahead in another process keeps the first record); a command whose attempt
number is not the next one is stale and dropped, as is one for a delivery already in this
process's memory. A manual redelivery (the API re-opened a finished delivery and sent
`manual=True`) is one attempt under the same `webhook-id`, with no retries of its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from shared.logging import get_logger, log_context
from shared.messages import WebhookDeliveryRequested
from shared.outbox import OutboxRelay, Outgoing
from shared.settings import Settings
from shared.telemetry import GENERATION_ID, USER_ID, extract, http_status, inject, safe_url
from shared.telemetry import tracer as _tracer
from shared.topology import DELAY_QUEUES, NOTIFIER_DELIVERIES

from notifier import sql
from notifier.consume import Batcher, QueueConsumer, Received, read
from notifier.ids import traceparent_for
from notifier.lanes import Job, Lanes
from notifier.retry import Next, Outcome, Verdict, judge, rung
from notifier.sender import EXCERPT_CHARS, Sender
from notifier.signing import Key, request_headers
from notifier.targets import NEXTJS

log = get_logger("WEBHOOK")

CONSUMER = "notifier.deliveries"

# A job in memory holds its row's lease; renewed every third of it. A lease that ran out means
# nobody is working on the delivery (or its process died): the sweeper takes it up.
LEASE_SECONDS = 30.0
# A retry waiting in the delay ladder is due at `next_attempt_at`; its command gets this long
# past it before the sweeper assumes it is lost (the ladder is durable: it rarely is).
GRACE_SECONDS = 30.0
SWEEP_SECONDS = 5.0
SWEEP_LIMIT = 2000  # rows taken up per sweep
SWEEP_PER_TARGET = 500  # of them for one target (whose lane has room)
# How long a batch waits for the database to come back before its messages are requeued
# (consumers), or before its attempts are given up to the sweeper (the recorder).
DATABASE_PATIENCE_SECONDS = 300.0
RECORDER_PATIENCE_SECONDS = 600.0
RECORD_BATCH = 500
RECORD_LINGER_SECONDS = 0.005  # a few ms of outcomes per transaction
COMMAND_PREFETCH = 100

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Record:
    """One attempt as made: waiting to be written."""

    job: Job
    started: datetime
    outcome: Outcome
    verdict: Verdict


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "reelflow_webhook_attempts",
            "Webhook HTTP attempts by result",
            ["result"],
            registry=registry,
        )
        self.latency = Histogram(
            "reelflow_webhook_attempt_seconds",
            "Webhook attempt latency",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.finished = Counter(
            "reelflow_webhook_deliveries_finished",
            "Webhook deliveries by final status",
            ["status"],
            registry=registry,
        )
        self.delivered = Histogram(
            "reelflow_webhook_delivery_seconds",
            "From a lifecycle event to its webhook's successful delivery, retries included",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000),
            registry=registry,
        )
        self.deferred = Counter(
            "reelflow_webhook_attempts_deferred",
            "Attempts that could not start at once because their endpoint had its fill in "
            "flight (queued in its lane, or left to the sweeper when the lane was full)",
            registry=registry,
        )
        self.held = Gauge(
            "reelflow_webhook_deliveries_in_memory",
            "Deliveries this process holds (queued in a lane, in flight, or being recorded)",
            registry=registry,
        )
        self.recovered = Counter(
            "reelflow_webhook_deliveries_recovered",
            "Pending deliveries the sweeper took up after their lease ran out",
            registry=registry,
        )


async def retrying(what: str, fn: Callable[[], Awaitable[T]], *, within: float = 30.0) -> T:
    """`fn()`, tried again (with backoff) while the database is away, for up to `within` s."""
    deadline = time.monotonic() + within
    delay = 0.2
    while True:
        try:
            return await fn()
        except sql.TRANSIENT as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning(f"{what} failed, will retry", error=str(exc)[:300] or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Deliverer:
    """Lanes, the recorder, the `notifier.deliveries` consumer, the sweeper and the leases."""

    def __init__(
        self,
        settings: Settings,
        relay: OutboxRelay,
        sender: Sender,
        metrics: Metrics,
        consumer_metrics: Any = None,
    ) -> None:
        self.settings = settings
        self.relay = relay
        self.sender = sender
        self.metrics = metrics
        self.pool: asyncpg.Pool | None = None  # opened at start
        self.lanes = Lanes(
            settings.webhook_max_in_flight_per_endpoint, self.attempt, on_wait=metrics.deferred.inc
        )
        # Deliveries in this process's memory, from the moment a lane took them until their
        # attempt is recorded: their leases are renewed, and commands for them are dropped.
        self.held: dict[uuid.UUID, Job] = {}
        self.recorder: Batcher[Record] = Batcher(
            "webhook-recorder", self.record, max_batch=RECORD_BATCH, linger=RECORD_LINGER_SECONDS
        )
        self.commands = QueueConsumer(
            NOTIFIER_DELIVERIES,
            COMMAND_PREFETCH,
            Batcher("webhook-commands", self.on_commands, max_batch=COMMAND_PREFETCH),
            consumer_metrics,
        )
        # Recording and lease renewal never interleave: a renewal cannot overwrite the due time
        # (or the end) a flush just wrote.
        self._lock = asyncio.Lock()
        self._loops: list[asyncio.Task[None]] = []
        self._release: list[uuid.UUID] = []  # never started, at shutdown
        metrics.held.set_function(lambda: len(self.held))
        self._ok = metrics.attempts.labels("ok")
        self._failed = metrics.attempts.labels("failed")
        self._succeeded = metrics.finished.labels("succeeded")
        self._given_up = metrics.finished.labels("failed")

    def db(self) -> asyncpg.Pool:
        assert self.pool is not None, "the notifier's pool is opened at start"
        return self.pool

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        self.recorder.start()
        self.commands.batcher.start()
        self._loops = [
            asyncio.create_task(self._every(LEASE_SECONDS / 3, self.renew), name="lease-renewal"),
            asyncio.create_task(self._every(SWEEP_SECONDS, self.sweep, first=1.0), name="sweeper"),
        ]

    async def stop(self, within: float) -> None:
        """After the consumers stopped: let attempts under way finish (for up to `within` s),
        record them, and hand back the leases of what was never started, so the next process's
        sweeper takes those up at once."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for job in self.lanes.take_queued():
            self.held.pop(job.delivery_id, None)
            self._release.append(job.delivery_id)
        await self.lanes.wait_running(within)
        await self.recorder.drain(within=10)
        await self.recorder.stop()
        await self.commands.batcher.stop()
        released = self._release + list(self.held)
        self.held.clear()
        if released and self.pool is not None:
            try:
                # Overdue at once: the next sweep (here or in another process) takes them up.
                await self.pool.execute(sql.LEASE, released, -(GRACE_SECONDS + 1))
            except Exception as exc:  # the leases run out by themselves
                log.warning("Could not hand back leases", error=str(exc)[:300])

    async def _every(
        self, seconds: float, fn: Callable[[], Awaitable[Any]], first: float = 0
    ) -> None:
        await asyncio.sleep(first or seconds)
        while True:
            try:
                await fn()
            except Exception as exc:  # database away: next round
                log.warning("Background round failed", task=fn.__name__, error=str(exc)[:300])
            await asyncio.sleep(seconds * random.uniform(0.8, 1.2))

    # -- handing work to lanes ------------------------------------------------------------------

    def offer(self, job: Job) -> bool:
        """Into its lane; False when the lane is full (its lease brings it back later)."""
        if job.delivery_id in self.held:
            return True
        if self.lanes.offer(job):
            self.held[job.delivery_id] = job
            return True
        return False

    def job(
        self,
        row: Any,
        attempt: int,
        *,
        manual: bool = False,
        context: Context | None = None,
        traceparent: str | None = None,
    ) -> Job:
        """The job for a delivery row as `sql.LOAD_FOR_UPDATE` reads it."""
        if row["target"] == NEXTJS:
            return self.nextjs_job(
                row["id"],
                attempt,
                row["url"],
                row["webhook_id"],
                row["payload"],
                row["generation_id"],
                row["created_at"],
                _user_of(row["payload"]),
                manual=manual,
                context=context,
                traceparent=traceparent,
            )
        return Job(
            row["id"],
            attempt,
            row["target"],
            row["endpoint_url"],
            row["webhook_id"],
            row["payload"],
            signing_keys(
                row["secret"], row["previous_secret"], row["previous_secret_expires_at"], utcnow()
            ),
            None,
            False,
            row["generation_id"],
            row["endpoint_id"],
            str(row["user_id"]) if row["user_id"] else None,
            row["created_at"],
            manual,
            context,
            traceparent,
        )

    def nextjs_job(
        self,
        delivery_id: uuid.UUID,
        attempt: int,
        url: str,
        wid: str,
        body: str,
        generation_id: uuid.UUID,
        created_at: datetime,
        user_id: str | None,
        *,
        manual: bool = False,
        context: Context | None = None,
        traceparent: str | None = None,
    ) -> Job:
        key = self.settings.worker_api_key
        token = key.get_secret_value() if key else None
        return Job(
            delivery_id,
            attempt,
            NEXTJS,
            url,
            wid,
            body,
            (token.encode(),) if token else (),
            token,
            True,
            generation_id,
            None,
            user_id,
            created_at,
            manual,
            context,
            traceparent,
        )

    # -- the attempt (in a lane) ------------------------------------------------------------------

    async def attempt(self, job: Job) -> None:
        token = otel_context.attach(job.context) if job.context is not None else None
        try:
            record = await self._send(job)
        finally:
            if token is not None:
                otel_context.detach(token)
        (self._ok if record.outcome.ok else self._failed).inc()
        self.metrics.latency.observe(record.outcome.latency_ms / 1000)
        self.recorder.add(record)

    async def _send(self, job: Job) -> Record:
        started = utcnow()
        attributes = {
            "reelflow.webhook.id": job.webhook_id,
            "reelflow.webhook.target": job.target,
            GENERATION_ID: str(job.generation_id),
        }
        if job.user_id:
            attributes[USER_ID] = job.user_id
        with _tracer().start_as_current_span(
            "POST", kind=SpanKind.CLIENT, attributes={**_url_attributes(job.url), **attributes}
        ) as span:
            # The receiver continues from this attempt's own span (the event's context, or the
            # minted one, only when tracing is off).
            traceparent = inject({}).get("traceparent") or job.traceparent
            headers = request_headers(
                job.webhook_id,
                job.body,
                job.keys,
                started,
                bearer=job.bearer,
                traceparent=traceparent,
            )
            outcome = await self.sender.post(job.url, job.body, headers, trusted=job.trusted)
            http_status(span, outcome.status_code, outcome.error)
            # A manual redelivery is one attempt: an empty schedule leaves no retry.
            schedule = [] if job.manual else self.settings.webhook_retry_schedule
            verdict = judge(outcome, job.attempt, schedule)
            if verdict.next == Next.SUCCEEDED:
                # At INFO, as the seed's "[WEBHOOK] Webhook sent successfully" was: operators
                # follow a delivery by its log (the masking that made the line cost a fifth of
                # the CPU at 1,000/s now skips lines holding no secret-looking text).
                ids = _ids(job)
                log.info(
                    "Webhook delivered", latency_ms=outcome.latency_ms, target=job.target, **ids
                )
            else:
                ids = _ids(job, status_code=outcome.status_code, error=outcome.error)
                if verdict.next == Next.RETRY:
                    assert verdict.wait_seconds is not None
                    wait = round(verdict.wait_seconds, 1)
                    log.warning("Webhook failed, will retry", wait_seconds=wait, **ids)
                else:
                    log.error("Webhook delivery failed for good", outcome=verdict.next.value, **ids)
        return Record(job, started, outcome, verdict)

    # -- recording (batched) -----------------------------------------------------------------------

    async def record(self, batch: list[Record]) -> None:
        try:
            await retrying(
                "Recording attempts",
                lambda: self._record_locked(batch),
                within=RECORDER_PATIENCE_SECONDS,
            )
            return
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, sql.TRANSIENT):
                log.exception("Attempt could not be recorded", error=str(exc)[:300])
                self._forget(batch)  # its lease runs out: the sweeper makes the attempt again
                return
        for one in batch:  # find the one that fails; the others are recorded
            await self.record([one])

    async def _record_locked(self, batch: list[Record]) -> None:
        async with self._lock:
            kept, disabled, retries = await self._record(batch)
            self._forget(batch)
        retries.committed()
        for rec in kept:
            if rec.verdict.next == Next.SUCCEEDED:
                self._succeeded.inc()
                # From the event to its successful delivery, retries included.
                self.metrics.delivered.observe((utcnow() - rec.job.created_at).total_seconds())
            elif rec.verdict.next != Next.RETRY:
                self._given_up.inc()
        for endpoint_id, reason in disabled:
            log.warning("Endpoint disabled", endpoint_id=str(endpoint_id), reason=reason)

    def _forget(self, batch: Iterable[Record]) -> None:
        for rec in batch:
            if self.held.get(rec.job.delivery_id) is rec.job:
                del self.held[rec.job.delivery_id]

    async def _record(
        self, batch: list[Record]
    ) -> tuple[list[Record], list[tuple[uuid.UUID, str]], Outgoing]:
        """The attempts kept, the endpoints disabled, and the retries' commands written."""
        ids = sorted({rec.job.delivery_id for rec in batch})
        outgoing = Outgoing(self.relay)
        async with self.db().acquire() as conn, conn.transaction():
            state = {
                r["id"]: [r["status"], r["made"]]
                for r in await conn.fetch(sql.LOCK_FOR_RECORD, ids)
            }
            kept: list[Record] = []
            for rec in sorted(batch, key=lambda r: r.started):
                found = state.get(rec.job.delivery_id)
                if found is None or found[0] != "pending":
                    continue  # finished meanwhile (a copy of it, elsewhere)
                if rec.job.attempt != found[1] + 1:
                    with log_context(delivery_id=str(rec.job.delivery_id)):
                        log.warning("Attempt raced with a copy of its command; keeping the first")
                    continue
                found[1] += 1
                if rec.verdict.next != Next.RETRY:
                    found[0] = "finished"
                kept.append(rec)
            if not kept:
                return kept, [], outgoing
            await conn.execute(
                sql.ATTEMPTS_INSERT,
                [r.job.delivery_id for r in kept],
                [r.started for r in kept],
                [r.outcome.status_code for r in kept],
                [r.outcome.latency_ms for r in kept],
                [_text(r.outcome.excerpt) for r in kept],
                [_text(r.outcome.error[:EXCERPT_CHARS]) if r.outcome.error else None for r in kept],
                [r.job.manual for r in kept],
            )
            succeeded = [r.job.delivery_id for r in kept if r.verdict.next == Next.SUCCEEDED]
            failed = [r.job.delivery_id for r in kept if r.verdict.next in (Next.FAILED, Next.GONE)]
            retries = [r for r in kept if r.verdict.next == Next.RETRY]
            if succeeded:
                await conn.execute(sql.FINISH, succeeded, "succeeded")
            if failed:
                await conn.execute(sql.FINISH, failed, "failed")
            if retries:
                dues = [
                    r.started
                    + timedelta(
                        milliseconds=r.outcome.latency_ms, seconds=r.verdict.wait_seconds or 0
                    )
                    for r in retries
                ]
                await conn.execute(sql.DUE, [r.job.delivery_id for r in retries], dues)
                await outgoing.write(conn, [self._retry_row(r) for r in retries])
            disabled = await self._streaks(conn, kept)
        return kept, disabled, outgoing

    def _retry_row(self, rec: Record) -> dict[str, Any]:
        assert rec.verdict.wait_seconds is not None
        queue = rung(rec.verdict.wait_seconds)
        job = rec.job
        command = WebhookDeliveryRequested(
            generation_id=job.generation_id, delivery_id=job.delivery_id, attempt=job.attempt + 1
        )
        return Outgoing.stage(
            command,
            headers=_parent_headers(job.traceparent),
            context=job.context,
            routing_key=queue.name if queue else None,
            user_id=job.user_id,
        )

    async def _streaks(self, conn: Any, kept: list[Record]) -> list[tuple[uuid.UUID, str]]:
        """Keep when each endpoint's current run of failures began; disable an endpoint once
        every attempt has failed for WEBHOOK_DISABLE_AFTER_SECONDS (five days by default), or
        at once when it answered 410 Gone."""
        by_endpoint: dict[uuid.UUID, list[Record]] = {}
        for rec in kept:  # in the order the attempts were made
            if rec.job.endpoint_id is not None:
                by_endpoint.setdefault(rec.job.endpoint_id, []).append(rec)
        cleared: list[uuid.UUID] = []
        disabled: list[tuple[uuid.UUID, str]] = []
        period = self.settings.webhook_disable_after_seconds
        for endpoint_id in sorted(by_endpoint):
            recs = by_endpoint[endpoint_id]
            last_ok = max((i for i, r in enumerate(recs) if r.outcome.ok), default=-1)
            failures = recs[last_ok + 1 :]
            if last_ok >= 0 and not failures:
                cleared.append(endpoint_id)
            elif last_ok >= 0:
                await conn.execute(sql.STREAK_SET, endpoint_id, failures[0].started)
            else:
                since = await conn.fetchval(sql.STREAK_START, endpoint_id, failures[0].started)
                at = failures[-1].started
                if since is not None and (at - since).total_seconds() >= period:
                    reason = (
                        f"Every attempt failed from {since:%Y-%m-%d %H:%M:%S} UTC to "
                        f"{at:%Y-%m-%d %H:%M:%S} UTC."
                    )
                    if await conn.fetchval(sql.DISABLE, endpoint_id, reason):
                        disabled.append((endpoint_id, reason))
            gone = [r for r in recs if r.verdict.next == Next.GONE]
            if gone:
                when = gone[0].started
                reason = f"The endpoint answered 410 Gone on {when:%Y-%m-%d %H:%M:%S} UTC."
                if await conn.fetchval(sql.DISABLE, endpoint_id, reason):
                    disabled.append((endpoint_id, reason))
        if cleared:
            await conn.execute(sql.STREAK_CLEAR, cleared)
        return disabled

    # -- delivery commands: retries, manual redeliveries -----------------------------------------

    async def on_commands(self, batch: list[Received]) -> None:
        items: list[tuple[Received, WebhookDeliveryRequested]] = []
        for item in batch:
            command = read(item, WebhookDeliveryRequested, CONSUMER)
            if isinstance(command, str):
                await self.commands.dead_letter(item, command)
            else:
                items.append((item, command))
        if not items:
            return
        try:
            jobs, parked = await retrying(
                "Claiming deliveries", lambda: self._claim(items), within=DATABASE_PATIENCE_SECONDS
            )
        except Exception as exc:
            log.error("Delivery commands requeued", error=str(exc)[:300], count=len(items))
            for item, _ in items:
                await self.commands.requeue(item)
            return
        for job in jobs:
            self.offer(job)
        parked.committed()
        await self.commands.ack([item for item, _ in items])

    async def _claim(
        self, items: list[tuple[Received, WebhookDeliveryRequested]]
    ) -> tuple[list[Job], Outgoing]:
        """In one transaction: what each command finds, and the leases of those it takes; the
        jobs taken and the commands parked on the delay ladder."""
        ids = sorted({command.delivery_id for _, command in items})
        now = utcnow()
        jobs: list[Job] = []
        parks: list[dict[str, Any]] = []
        outgoing = Outgoing(self.relay)
        gone: list[uuid.UUID] = []
        taken: set[uuid.UUID] = set()
        async with self.db().acquire() as conn, conn.transaction():
            rows = {r["id"]: r for r in await conn.fetch(sql.LOAD_FOR_UPDATE, ids)}
            for item, command in items:
                row = rows.get(command.delivery_id)
                header = (item.message.headers or {}).get("traceparent")
                traceparent = (
                    header.decode()
                    if isinstance(header, bytes)
                    else str(header)
                    if header
                    else None
                )
                context = trace.set_span_in_context(item.span)
                skip = None
                if command.delivery_id in self.held or command.delivery_id in taken:
                    skip = "that attempt is already under way here"
                elif row is None:
                    skip = "no such delivery"
                elif row["status"] != "pending":
                    skip = f"delivery already {row['status']}"
                elif command.attempt != row["made"] + 1:
                    skip = "stale command: that attempt was already made"
                if skip is not None or row is None:
                    with log_context(delivery_id=str(command.delivery_id), attempt=command.attempt):
                        log.info("Delivery command skipped", reason=skip)
                    continue
                taken.add(command.delivery_id)
                due = row["next_attempt_at"]
                wait = rung((due - now).total_seconds()) if due is not None else None
                if wait is not None:  # not due yet (woke early on the ladder, or leased)
                    parks.append(
                        Outgoing.stage(
                            command,
                            headers=_parent_headers(traceparent),
                            context=context,
                            routing_key=wait.name,
                            user_id=str(row["user_id"]) if row["user_id"] else None,
                        )
                    )
                    continue
                if row["target"] != NEXTJS and row["endpoint_status"] != "active":
                    gone.append(command.delivery_id)
                    with log_context(delivery_id=str(command.delivery_id)):
                        log.info(
                            "Delivery command skipped",
                            reason="endpoint deleted or disabled: delivery failed",
                        )
                    continue
                if command.manual and not self.lanes.has_room(row["target"]):
                    # One attempt asked for by someone: it waits its turn on the ladder (a
                    # retry would be left to the sweeper, and lose its manual mark).
                    self.metrics.deferred.inc()
                    parks.append(
                        Outgoing.stage(
                            command,
                            headers=_parent_headers(traceparent),
                            context=context,
                            routing_key=DELAY_QUEUES[0].name,
                        )
                    )
                    continue
                jobs.append(
                    self.job(
                        row,
                        command.attempt,
                        manual=command.manual,
                        context=context,
                        traceparent=traceparent,
                    )
                )
            if jobs:
                await conn.execute(sql.LEASE, [j.delivery_id for j in jobs], LEASE_SECONDS)
            if gone:
                await conn.execute(sql.FINISH, gone, "failed")
            await outgoing.write(conn, parks)
        for _ in gone:
            self.metrics.finished.labels("failed").inc()
        return jobs, outgoing

    # -- leases and the sweeper ------------------------------------------------------------------

    async def renew(self) -> None:
        async with self._lock:
            ids = list(self.held)
            if ids:
                await self.db().execute(sql.LEASE, ids, LEASE_SECONDS)

    async def sweep(self) -> int:
        """Take up pending deliveries nobody is working on; the number offered to lanes."""
        full = self.lanes.full()

        async def claim() -> tuple[list[Any], list[uuid.UUID]]:
            async with self.db().acquire() as conn, conn.transaction():
                ids = [
                    r["id"]
                    for r in await conn.fetch(
                        sql.SWEEP,
                        GRACE_SECONDS,
                        SWEEP_PER_TARGET,
                        SWEEP_LIMIT,
                        LEASE_SECONDS,
                        full,
                    )
                ]
                if not ids:
                    return [], []
                rows = await conn.fetch(sql.LOAD_FOR_UPDATE, ids)
                gone = [
                    r["id"]
                    for r in rows
                    if r["target"] != NEXTJS and r["endpoint_status"] != "active"
                ]
                if gone:
                    await conn.execute(sql.FINISH, gone, "failed")
                return rows, gone

        rows, gone = await claim()
        for _ in gone:
            self.metrics.finished.labels("failed").inc()
        offered = 0
        skip = set(gone)
        for row in rows:
            if row["id"] in skip or row["id"] in self.held:
                continue
            traceparent = _traceparent_of(row["webhook_id"])
            context = extract({"traceparent": traceparent}) if traceparent else None
            offered += self.offer(
                self.job(row, row["made"] + 1, context=context, traceparent=traceparent)
            )
        if rows:
            self.metrics.recovered.inc(len(rows) - len(gone))
            log.info("Pending deliveries taken up", count=len(rows) - len(gone), offered=offered)
        return offered


_URL_ATTRIBUTES: dict[str, dict[str, Any]] = {}


def _url_attributes(url: str) -> dict[str, Any]:
    """`shared.telemetry.client_span`'s attributes for a POST to `url`, made once per URL."""
    found = _URL_ATTRIBUTES.get(url)
    if found is None:
        if len(_URL_ATTRIBUTES) >= 10_000:
            _URL_ATTRIBUTES.clear()
        parts = urlsplit(url)
        found = {
            "http.request.method": "POST",
            "url.full": safe_url(url),
            "server.address": parts.hostname or "",
        }
        if parts.port or parts.scheme:
            found["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
        _URL_ATTRIBUTES[url] = found
    return found


def _ids(job: Job, **more: Any) -> dict[str, Any]:
    """What every line about an attempt carries (as `log_context` would add it)."""
    return {
        "generation_id": str(job.generation_id),
        "delivery_id": str(job.delivery_id),
        "attempt": job.attempt,
        "user_id": job.user_id,
        **more,
    }


def _parent_headers(traceparent: str | None) -> dict[str, Any] | None:
    """A command's outbox headers: the event's `traceparent`, which stays only when tracing is
    off (a valid trace context replaces it: `Outgoing.stage`)."""
    return {"traceparent": traceparent} if traceparent else None


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters; a receiver's answer may."""
    return value.replace("\x00", "\ufffd") if value else value


def _traceparent_of(wid: str) -> str | None:
    """The event's minted `traceparent` (ids.traceparent_for), from its `webhook-id`."""
    try:
        return traceparent_for(uuid.UUID(hex=wid.removeprefix("msg_")))
    except ValueError:
        return None


def _user_of(payload: str) -> str | None:
    try:
        value = json.loads(payload).get("userId")
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


def signing_keys(
    secret: str, previous: str | None, previous_expires: datetime | None, now: datetime
) -> tuple[Key, ...]:
    """The current secret, and the one before it while its grace period after a rotation lasts
    (Standard Webhooks: several `v1,` signatures; a receiver holding either one verifies)."""
    keys: tuple[Key, ...] = (secret,)
    if previous and previous_expires is not None and previous_expires > now:
        keys += (previous,)
    return keys
