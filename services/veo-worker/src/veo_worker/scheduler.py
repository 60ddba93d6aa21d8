"""The worker's scheduler: claims jobs from the database, runs each as an asyncio task, and
keeps their leases alive.

- Claim loop (every `TICK` or when woken): takes jobs left mid-way (expired or handed-back
  leases) first, then queued ones — for Veo only as many as the global submissions window
  allows — up to this process's capacity (`VEO_MAX_IN_FLIGHT`, or `WORKER_CONCURRENCY` for
  local renders). No thread and no broker delivery is held per job. When jobs left the queue,
  the jobs still queued are told their new places (`JobStore.report_queue_moves`).
- Heartbeat (every 2 s, or a third of the lease if shorter): one statement reads the
  generations' statuses of every job held here, and every third of the lease it also renews
  their leases: an ended generation stops its job (Veo has no cancel: we stop waiting and mark
  the job cancelled), a lost lease drops it silently.
- Stop: flows stop at their next safe point; a submission on the wire is let finish and
  recorded; every job still held is handed back (lease cleared) for another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from dataclasses import dataclass

from prometheus_client import Counter as PromCounter
from shared.logging import get_logger, log_context
from shared.waiting import wait_set

from veo_worker.flows import Flow
from veo_worker.jobs import Job, JobStore, LeaseLost
from veo_worker.observe import job_span
from veo_worker.providers.base import Interrupted, JobCancelled, ProviderError
from veo_worker.steps import JobContext

log = get_logger("SCHEDULER")

TICK = 0.25  # seconds between claims when nothing wakes the loop
PLACES_EVERY = 1.0  # seconds: a moved queue's places are reported at most this often
STOP_GRACE = 5.0  # seconds flows get to reach a safe point when the worker stops
SUBMIT_GRACE = 40.0  # and a submission on the wire (its HTTP timeout is 30 s)


@dataclass
class Held:
    ctx: JobContext
    task: asyncio.Task[None]


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        flow: Flow,
        *,
        capacity: int,
        per_minute: int | None,
        claim_status: str,
        lease_seconds: float,
        metric: PromCounter | None = None,
    ) -> None:
        self.store = store
        self.flow = flow
        self.capacity = capacity
        self.per_minute = per_minute
        self.claim_status = claim_status
        self.renew_every = lease_seconds / 3
        self.heartbeat_every = min(self.renew_every, 2.0)
        self.held: dict[uuid.UUID, Held] = {}
        self.outcomes: Counter[str] = Counter()
        self._metric = metric
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self.last_claim_ok = True
        self._next_sweep = 0.0
        self._queue_moved = False  # jobs left the queue here since its places were reported
        self._next_places = 0.0

    @property
    def healthy(self) -> bool:
        return bool(self._loops) and all(not t.done() for t in self._loops)

    async def start(self) -> None:
        await self.store.ensure_window()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="worker-claims"),
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
        ]
        log.info("Scheduler started", capacity=self.capacity, per_minute=self.per_minute)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        for loop in self._loops:
            loop.cancel()
        if self._loops:
            # Bounded like the jobs below (and a cancel of `stop` itself is not swallowed).
            _, running = await asyncio.wait(self._loops, timeout=STOP_GRACE)
            if running:
                log.error("Scheduler loops did not stop when cancelled", loops=len(running))
        held = list(self.held.values())
        for entry in held:
            entry.ctx.interrupt()
        tasks = [h.task for h in held]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
            critical = [h.task for h in held if h.ctx.critical and not h.task.done()]
            for entry in held:
                if not entry.ctx.critical:
                    entry.task.cancel()
            if critical:
                await asyncio.wait(critical, timeout=SUBMIT_GRACE)
            for task in tasks:
                task.cancel()
            # A stop that never ends is worse than a job left to its lease: bounded too.
            _, stuck = await asyncio.wait(tasks, timeout=STOP_GRACE)
            if stuck:
                log.error("Jobs did not stop when cancelled", jobs=len(stuck))
        try:
            await asyncio.wait_for(
                self.store.release([h.ctx.job.generation_id for h in held]), STOP_GRACE
            )
        except Exception as exc:  # the leases expire by themselves
            log.warning("Handing jobs back failed", error=str(exc)[:300])
        log.info("Scheduler stopped", handed_back=len(held))

    # -- claiming --------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            try:
                claimed = await self.claim_once()
                self.last_claim_ok = True
            except Exception as exc:  # database away: keep what we hold, try again soon
                self.last_claim_ok = False
                log.warning("Claiming jobs failed, will retry", error=str(exc)[:300])
                claimed = 0
                await asyncio.sleep(1.0)
            if claimed and len(self.held) < self.capacity:
                continue  # more may be waiting
            await wait_set(self._wake, TICK)
            self._wake.clear()

    async def claim_once(self) -> int:
        claimed = await self._claim()
        await self._report_places()
        return claimed

    async def _claim(self) -> int:
        room = self.capacity - len(self.held)
        if room <= 0 or self._stopping.is_set():
            return 0
        jobs: list[Job] = []
        now = asyncio.get_running_loop().time()
        if now >= self._next_sweep:
            # Leases expire on the lease's timescale: looking for jobs to take over, and for
            # queued jobs whose generation ended, every couple of seconds is enough (and
            # spares the database a scan of every held row at each claim).
            self._next_sweep = now + self.heartbeat_every
            jobs = await self.store.claim_started(room)
            if await self.store.drop_ended():
                self._queue_moved = True
        queued = await self.store.claim_queued(
            room - len(jobs), per_minute=self.per_minute, status=self.claim_status
        )
        if queued:
            self._queue_moved = True
        jobs += queued
        for job in jobs:
            self._spawn(job)
        return len(jobs)

    async def _report_places(self) -> None:
        """Once jobs left the queue, tell the jobs still waiting their new places (the
        progress a user watches while Veo's quota holds the queue), at most every
        `PLACES_EVERY` seconds."""
        now = asyncio.get_running_loop().time()
        if not self._queue_moved or now < self._next_places or self._stopping.is_set():
            return
        self._next_places = now + PLACES_EVERY
        moved = await self.store.report_queue_moves()
        self._queue_moved = False
        if moved:
            log.info("Queue places reported", jobs=moved)

    def _spawn(self, job: Job) -> None:
        ctx = JobContext(job, self.store, self._stopping)
        task = asyncio.create_task(self._run(ctx), name=f"job-{job.generation_id}")
        self.held[job.generation_id] = Held(ctx, task)

    async def _run(self, ctx: JobContext) -> None:
        job = ctx.job
        try:
            with (
                log_context(generation_id=str(job.generation_id), user_id=str(job.user_id)),
                job_span(job) as span,
            ):
                if job.resumed:
                    log.info("Job taken up again", status=job.status, attempts=job.attempts)
                outcome = await self._outcome(ctx)
                span.set_attribute("reelflow.job.outcome", outcome)
                self._count(outcome)
        finally:
            self.held.pop(job.generation_id, None)
            self._wake.set()  # room for another job

    async def _outcome(self, ctx: JobContext) -> str:
        job = ctx.job
        try:
            return await self.flow.run(ctx)
        except ProviderError as exc:
            try:
                if await self.store.fail(job, exc.info):
                    log.warning("Render failed", code=exc.info.code, message=exc.info.message)
                    return "failed"
                return "cancelled"
            except LeaseLost:
                return "lost"
        except JobCancelled:
            with contextlib.suppress(LeaseLost):
                await self.store.cancel(job)
            log.info("Render cancelled")
            return "cancelled"
        except LeaseLost:
            log.warning("Lease lost: another worker has the job")
            return "lost"
        except (Interrupted, asyncio.CancelledError):
            return "interrupted"  # handed back by `stop`
        except Exception:
            # Our own failure (a bug, the database away): the lease expires and the job is
            # taken up again, at most MAX_INTERRUPTIONS times.
            log.exception("Job step failed; the job will be taken up again")
            return "error"

    # -- leases and cancellation -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while True:
            await asyncio.sleep(self.heartbeat_every)
            ids = list(self.held)
            renew = loop.time() - renewed >= self.renew_every - self.heartbeat_every / 2
            try:
                statuses = await self.store.heartbeat(ids, renew=renew)
            except Exception as exc:
                log.warning("Heartbeat failed", error=str(exc)[:300])
                continue
            if renew:
                renewed = loop.time()
            for generation_id in ids:
                entry = self.held.get(generation_id)
                if entry is None:
                    continue
                status = statuses.get(generation_id)
                if status is None:
                    entry.ctx.lose()
                elif status.is_terminal:
                    entry.ctx.end()

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if self._metric is not None:
            self._metric.labels(outcome=outcome).inc()
