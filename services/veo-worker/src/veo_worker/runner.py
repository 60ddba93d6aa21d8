"""One render command, start to end, in short steps (no transaction is held across the render).

1. Guard: own the job (advisory lock), skip a finished job, a missing or ended generation, and a
   spec the provider refuses (`failed`, `invalid_request`).
2. `running` + `started` report; the provider renders into a temp dir, reporting `generating`
   progress about every 20% (each report also checks for cancellation).
3. Probe the file (its duration, size and resolution are what we report, never the request's);
   make the thumbnail.
4. `uploading`; store video and thumbnail.
5. `succeeded` with the result, or `failed` with an error code.

A cancelled generation stops the job at the next check (`cancelled`, nothing more reported).
A crash leaves the job `running` and the command unacked: it is redelivered and rendered again,
up to `MAX_ATTEMPTS` tries. Errors of our own infrastructure (database) propagate, so the
command is redelivered rather than failed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from prometheus_client import Counter as PromCounter
from shared.logging import get_logger
from shared.media import Storage, build_storage, thumbnail_key, video_key
from shared.messages import RenderRequested
from shared.schemas import ErrorInfo, Progress, RenderResult
from shared.settings import Settings

from veo_worker.jobs import FINISHED, Job, JobStore
from veo_worker.local_render import render_thumbnail
from veo_worker.probe import MediaInfo, probe_video
from veo_worker.providers.base import (
    JobCancelled,
    ProviderError,
    ProviderJob,
    VideoProvider,
)

log = get_logger("WORKER")

MAX_ATTEMPTS = 3  # renders interrupted by crashes before the job is failed
PROGRESS_STEP = 20.0  # percent between two progress reports within a stage

T = TypeVar("T")


class Reporter:
    """The provider's progress callback: throttled reports that double as cancellation checks."""

    def __init__(self, jobs: JobStore, job: Job, started: float) -> None:
        self.jobs = jobs
        self.job = job
        self.started = started
        self.last: Progress | None = None

    def _due(self, progress: Progress) -> bool:
        last = self.last
        if last is None or last.stage != progress.stage:
            return True
        return (progress.percent or 0) - (last.percent or 0) >= PROGRESS_STEP

    async def __call__(self, progress: Progress) -> None:
        if not self._due(progress):
            return
        elapsed = int((time.monotonic() - self.started) * 1000)
        progress = progress.model_copy(update={"elapsed_ms": elapsed})
        self.last = progress
        try:
            live = await self.jobs.progress(self.job, progress)
        except Exception as exc:  # progress is advisory: a lost report must not fail the render
            log.warning("Progress report failed", error=str(exc)[:300])
            return
        if not live:
            raise JobCancelled(str(self.job.generation_id))
        log.info("Render progress", stage=progress.stage, percent=progress.percent)


async def _step(name: str, work: Awaitable[T]) -> T:
    """Run one stage of the render; a failure of the render itself becomes `internal`."""
    try:
        return await work
    except (JobCancelled, ProviderError):
        raise
    except Exception as exc:
        log.exception("Render stage failed", stage=name)
        raise ProviderError(
            "internal", f"{name} failed: {type(exc).__name__}: {exc}"[:500]
        ) from exc


class RenderRunner:
    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        provider: VideoProvider,
        metric: PromCounter | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.provider = provider
        self.outcomes: Counter[str] = Counter()
        self._metric = metric
        self._storage: Storage | None = None

    async def run(self, command: RenderRequested) -> None:
        spec = command.spec
        log.info("Render requested", model=spec.model, duration_seconds=spec.duration_seconds)
        async with self.jobs.exclusive(command.generation_id) as owned:
            if not owned:
                log.info("Render already in progress, duplicate command dropped")
                return self._count("in_progress")
            await self._run_owned(command)

    async def _run_owned(self, command: RenderRequested) -> None:
        status = await self.jobs.generation_status(command.generation_id)
        if status is None:
            log.warning("Generation not found, command dropped")
            return self._count("missing")
        job = await self.jobs.open(command)
        if job.status in FINISHED:
            log.info("Job already finished, duplicate command dropped", status=job.status)
            return self._count("duplicate")
        if status.is_terminal:
            await self.jobs.cancel(job)
            return self._count("cancelled")
        try:
            self.provider.check(command.spec)
        except ProviderError as exc:
            return await self._failed(job, exc.info)
        if job.attempts >= MAX_ATTEMPTS:
            message = f"the render was interrupted {job.attempts} times"
            return await self._failed(job, ErrorInfo(code="internal", message=message))
        job = await self.jobs.start(job)
        log.info("Render started", provider=self.provider.name, attempt=job.attempts)
        workdir = Path(tempfile.mkdtemp(prefix="reelflow-render-"))
        try:
            result = await self._render(command, job, workdir)
        except JobCancelled:
            await self.jobs.cancel(job)
            log.info("Render cancelled")
            return self._count("cancelled")
        except ProviderError as exc:
            return await self._failed(job, exc.info)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
        if await self.jobs.succeed(job, result):
            log.info(
                "Render succeeded",
                resolution=result.resolution,
                duration_seconds=result.duration_seconds,
                file_size_bytes=result.file_size_bytes,
                processing_time_ms=result.processing_time_ms,
            )
            return self._count("succeeded")
        self._count("cancelled")

    async def _render(self, command: RenderRequested, job: Job, workdir: Path) -> RenderResult:
        started = time.monotonic()
        report = Reporter(self.jobs, job, started)
        video, thumbnail = workdir / "video.mp4", workdir / "thumbnail.jpg"
        provider_job = ProviderJob(
            generation_id=job.generation_id,
            spec=command.spec,
            attempt=job.attempts,
            operation_name=job.operation_name,
            remember_operation=lambda name: self.jobs.remember_operation(job, name),
        )
        await _step("render", self.provider.generate(provider_job, video, report))
        info: MediaInfo = await _step("probe", asyncio.to_thread(probe_video, video))
        await _step("thumbnail", asyncio.to_thread(render_thumbnail, video, thumbnail))
        await report(Progress(stage="uploading"))
        keys = (
            video_key(job.user_id, job.generation_id),
            thumbnail_key(job.user_id, job.generation_id),
        )
        storage = await self._get_storage()
        await _step("upload", storage.put_file(keys[0], video, "video/mp4"))
        await _step("upload", storage.put_file(keys[1], thumbnail, "image/jpeg"))
        return RenderResult(
            video_key=keys[0],
            thumbnail_key=keys[1],
            duration_seconds=info.duration_seconds,
            file_size_bytes=info.file_size_bytes,
            resolution=info.resolution,
            format=info.format,
            processing_time_ms=int((time.monotonic() - started) * 1000),
        )

    async def _failed(self, job: Job, error: ErrorInfo) -> None:
        if await self.jobs.fail(job, error):
            log.warning("Render failed", code=error.code, message=error.message)
            self._count("failed")
        else:
            self._count("cancelled")

    async def _get_storage(self) -> Storage:
        if self._storage is None:
            async with self.jobs.sessions() as session:
                self._storage = await build_storage(session, self.settings)
        return self._storage

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        if self._metric is not None:
            self._metric.labels(outcome=outcome).inc()
