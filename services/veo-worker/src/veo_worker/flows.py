"""A held job's flow, from where its row says it stands to its end.

`LocalFlow` renders inline (a local render is cheap and leaves nothing to resume: a job taken
over renders afresh). `VeoFlow` submits, waits and fetches in short steps whose state is in the
row, so a process killed at any point is replaced without a second submission:

- `queued` → claimed (leased, still `queued`: never sent) → given a submission slot, marked
  `submitting` in a commit made before the HTTP submit → the operation name is stored with
  `running` in the commit that follows the answer;
- `running` → polled until done (a taken-over job polls its stored operation at once);
- done → downloaded, probed, thumbnailed, uploaded → `succeeded`.

The crash window: a job found `submitting` by a process that takes it over may or may not have
reached Veo, which has neither an idempotency key nor a way to list our operations. It is never
submitted again (Veo would charge twice); it fails `internal` with that explanation.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from shared.domain import veo_models
from shared.logging import get_logger
from shared.schemas import ErrorCode, Progress
from shared.settings import Settings
from shared.telemetry import tracer

from veo_worker import backoff
from veo_worker.jobs import QUEUED, RUNNING, SUBMITTING, JobStore, LeaseLost
from veo_worker.observe import ProviderMetrics
from veo_worker.providers.base import (
    Interrupted,
    JobCancelled,
    ProviderError,
    ProviderJob,
)
from veo_worker.providers.local import LocalProvider
from veo_worker.providers.veo import SubmitOutcomeUnknown, VeoClient
from veo_worker.providers.veo_wire import TransientError
from veo_worker.steps import Finisher, JobContext, Reporter, beside, step

log = get_logger("WORKER")

MAX_INTERRUPTIONS = 3  # takeovers after a worker died holding the job, before it fails
CRASH_WINDOW = (
    "the worker stopped between sending the submission to Veo and storing its answer; "
    "it was not submitted again, because Veo may have accepted it and would charge twice"
)
RECORD_RETRY_SECONDS = 120.0  # how long a submitted operation's name is retried into the DB
GENERATING_STEP = 20.0  # percent between two `generating` reports (about every 10 s)
DEFAULT_TYPICAL_SECONDS = 75.0


class Flow(Protocol):
    async def run(self, ctx: JobContext) -> str:
        """Take the job to its end (or hand it back); the outcome, for logs and metrics."""


def _now() -> datetime:
    return datetime.now(UTC)


def _interrupted_too_often(ctx: JobContext) -> ProviderError | None:
    interruptions = ctx.job.attempts - 1
    if ctx.job.resumed and interruptions >= MAX_INTERRUPTIONS:
        return ProviderError("internal", f"the render was interrupted {interruptions} times")
    return None


class LocalFlow:
    def __init__(
        self,
        provider: LocalProvider,
        finisher: Finisher,
        store: JobStore,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        self.provider = provider
        self.finisher = finisher
        self.store = store
        self.metrics = metrics

    async def run(self, ctx: JobContext) -> str:
        if (error := _interrupted_too_often(ctx)) is not None:
            raise error
        job, started = ctx.job, _now()
        report = Reporter(ctx)
        workdir = Path(tempfile.mkdtemp(prefix="reelflow-render-"))
        try:
            video = workdir / "video.mp4"
            work = ProviderJob(job.generation_id, job.spec, job.attempts)
            log.info("Render started", provider="local", attempt=job.attempts)
            timing = self.metrics.call("local", "render") if self.metrics else nullcontext()
            with timing, tracer().start_as_current_span("render local video"):
                await step("render", self.provider.generate(work, video, report))
            if self.metrics:
                elapsed = (_now() - started).total_seconds()
                self.metrics.operations.labels("local", job.spec.model).observe(elapsed)
            result = await self.finisher.store(job, video, report, started_at=started)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
        return "succeeded" if await self.store.succeed(job, result) else "cancelled"


class VeoFlow:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        client: VeoClient,
        finisher: Finisher,
        *,
        requests: asyncio.Semaphore,
        submits: asyncio.Semaphore,
        downloads: asyncio.Semaphore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.finisher = finisher
        self.requests = requests  # polls and downloads in flight, all jobs together
        self.submits = submits  # submissions on the wire (each job `submitting` meanwhile)
        self.downloads = downloads  # videos being fetched and stored at once (disk, bandwidth)

    async def run(self, ctx: JobContext) -> str:
        job = ctx.job
        if job.status == QUEUED:  # claimed: never sent
            if not await self._submit(ctx):
                return "requeued"
        elif job.status == SUBMITTING and job.operation_name is None:
            raise ProviderError("internal", CRASH_WINDOW)  # maybe sent: never send again
        elif job.operation_name is None:
            raise ProviderError("internal", f"job is {job.status} without an operation name")
        if (error := _interrupted_too_often(ctx)) is not None:
            raise error
        report = Reporter(ctx, step=GENERATING_STEP)
        uri = await self._wait(ctx, report)
        return await self._fetch(ctx, uri, report)

    # -- submit --------------------------------------------------------------------------------

    async def _submit(self, ctx: JobContext) -> bool:
        """Submit once. True with the operation recorded; False when requeued for a retry."""
        job = ctx.job
        async with self.submits:
            ctx.check()  # cancelled or stopping while it waited for a slot: still unsent
            # The marker, committed before the request: from here on the job may have reached
            # Veo, and a process that takes it over will not send it again.
            await self.store.mark_submitting(job)
            job.status = SUBMITTING
            ctx.critical = True
            try:
                return await self._send(ctx)
            finally:
                ctx.critical = False

    async def _send(self, ctx: JobContext) -> bool:
        job, settings = ctx.job, self.settings
        try:
            name = await self.client.submit(job.spec)
        except TransientError as exc:
            errors = job.transient_errors + 1
            if errors > settings.veo_max_retries:
                # A 429 that outlasts every retry is the project's quota, not an outage.
                code: ErrorCode = "quota_exceeded" if exc.rate_limited else "provider_unavailable"
                raise ProviderError(
                    code, f"Veo refused the submission {errors} times; last: {exc}"
                ) from exc
            delay = backoff.retry_delay(
                errors,
                settings.veo_poll_interval_seconds,
                settings.veo_poll_max_interval_seconds,
                exc.retry_after,
            )
            if exc.rate_limited:
                await self.store.pause_submissions(exc.retry_after or delay)
            await self.store.requeue(job, after_seconds=delay, transient_errors=errors)
            log.warning(
                "Submission retried later",
                error=str(exc)[:300],
                retry=errors,
                after_seconds=round(delay, 2),
            )
            return False
        except SubmitOutcomeUnknown as exc:
            raise ProviderError(
                "provider_unavailable",
                f"Veo did not answer the submission ({exc}); it was not submitted again, "
                "because Veo may have accepted it and would charge twice",
            ) from exc
        # Logged first: should the database refuse the name, an operator still has it.
        log.info("Operation submitted", operation=name, model=job.spec.model)
        await self._record(ctx, name)
        return True

    async def _record(self, ctx: JobContext, name: str) -> None:
        job, settings = ctx.job, self.settings
        give_up = asyncio.get_running_loop().time() + RECORD_RETRY_SECONDS
        while True:
            try:
                submitted, deadline = await self.store.record_operation(
                    job,
                    name,
                    deadline_seconds=settings.veo_operation_deadline_seconds,
                    first_poll_seconds=settings.veo_poll_interval_seconds,
                )
                break
            except LeaseLost:
                log.error("Operation submitted but the job was taken over", operation=name)
                raise
            except Exception as exc:  # the database is away: the name is precious, keep trying
                if asyncio.get_running_loop().time() > give_up:
                    log.error("Operation name not stored", operation=name, error=str(exc))
                    raise
                log.warning("Storing the operation name failed, retrying", error=str(exc)[:300])
                await asyncio.sleep(1.0)
        job.status, job.operation_name = RUNNING, name
        job.submitted_at, job.deadline_at = submitted, deadline
        job.transient_errors, job.poll_count = 0, 0

    # -- wait ----------------------------------------------------------------------------------

    async def _wait(self, ctx: JobContext, report: Reporter) -> str:
        job, settings = ctx.job, self.settings
        assert job.operation_name is not None
        submitted = job.submitted_at or job.created_at
        deadline = job.deadline_at or submitted + timedelta(
            seconds=settings.veo_operation_deadline_seconds
        )
        typical = getattr(
            veo_models.MODELS.get(job.spec.model), "typical_seconds", DEFAULT_TYPICAL_SECONDS
        )
        # A fresh operation is not done at once; a taken-over one may have finished meanwhile.
        delay = 0.0 if job.resumed else settings.veo_poll_interval_seconds
        errors = 0
        while True:
            left = (deadline - _now()).total_seconds()
            if left <= 0:
                raise ProviderError(
                    "timeout",
                    f"Veo's operation did not finish within "
                    f"{settings.veo_operation_deadline_seconds:g} s",
                )
            await ctx.sleep(min(delay, left))
            if _now() >= deadline:
                continue
            try:
                async with self.requests:
                    state = await self.client.poll(job.operation_name)
            except TransientError as exc:
                errors += 1
                if errors > settings.veo_max_retries:
                    raise ProviderError(
                        "provider_unavailable",
                        f"polling Veo failed {errors} times in a row; last: {exc}",
                    ) from exc
                delay = backoff.retry_delay(
                    errors,
                    settings.veo_poll_interval_seconds,
                    settings.veo_poll_max_interval_seconds,
                    exc.retry_after,
                )
                log.warning("Poll failed, retrying", error=str(exc)[:300], retry=errors)
                continue
            errors = 0
            job.poll_count += 1
            if state.done:
                assert state.video_uri is not None
                log.info("Operation done", polls=job.poll_count)
                if self.client.metrics is not None:
                    took = (_now() - submitted).total_seconds()
                    self.client.metrics.operations.labels("veo", job.spec.model).observe(took)
                return state.video_uri
            delay = backoff.poll_delay(
                job.poll_count,
                settings.veo_poll_interval_seconds,
                settings.veo_poll_max_interval_seconds,
            )
            elapsed = (_now() - submitted).total_seconds()
            progress = Progress(
                stage="generating",
                percent=round(min(95.0, 100.0 * elapsed / typical), 1),
                elapsed_ms=int(elapsed * 1000),
            )
            if report.due(progress):
                await report(
                    progress,
                    poll_count=job.poll_count,
                    next_poll_at=_now() + timedelta(seconds=delay),
                )

    # -- fetch and store -------------------------------------------------------------------------

    async def _fetch(self, ctx: JobContext, uri: str, report: Reporter) -> str:
        job = ctx.job
        async with self.downloads:
            workdir = Path(tempfile.mkdtemp(prefix="reelflow-veo-"))
            try:
                video = workdir / "video.mp4"
                # The `downloading` report is written while the download runs.
                async with beside(report(Progress(stage="downloading"))):
                    size = await self._download(ctx, uri, video)
                log.info("Video downloaded", file_size_bytes=size)
                started = job.submitted_at or job.created_at
                result = await self.finisher.store(job, video, report, started_at=started)
                # Recorded before the temp folder goes: the end is on the latency path, the
                # cleanup is not.
                outcome = "succeeded" if await self.store.succeed(job, result) else "cancelled"
            finally:
                await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
        return outcome

    async def _download(self, ctx: JobContext, uri: str, video: Path) -> int:
        settings = self.settings
        errors = 0
        while True:
            ctx.check()
            try:
                async with self.requests:
                    return await self.client.download(uri, video)
            except TransientError as exc:
                errors += 1
                if errors > settings.veo_max_retries:
                    raise ProviderError(
                        "provider_unavailable",
                        f"downloading the video failed {errors} times; last: {exc}",
                    ) from exc
                log.warning("Download failed, retrying", error=str(exc)[:300])
                await ctx.sleep(
                    backoff.retry_delay(
                        errors,
                        settings.veo_poll_interval_seconds,
                        settings.veo_poll_max_interval_seconds,
                        exc.retry_after,
                    )
                )


__all__ = ["Flow", "Interrupted", "JobCancelled", "LocalFlow", "VeoFlow"]
