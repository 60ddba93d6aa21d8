"""What every job's flow shares: its context (lease, cancellation, stop), throttled progress
reports, and the last steps — probe, thumbnail, upload — that turn a file into a result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from shared.logging import get_logger
from shared.media import Storage, thumbnail_key, video_key
from shared.schemas import Progress, RenderResult
from shared.waiting import wait_set

from veo_worker.jobs import Job, JobStore, LeaseLost
from veo_worker.observe import storage_span
from veo_worker.probe import InvalidMedia, MediaInfo, probe_video
from veo_worker.providers.base import Interrupted, JobCancelled, ProviderError

log = get_logger("WORKER")

T = TypeVar("T")


class JobContext:
    """One held job. The scheduler's heartbeat flags it when its generation ended or its lease
    was lost, and a stopping worker flags them all; `check` and `sleep` turn flags into
    exceptions at the flow's safe points."""

    def __init__(self, job: Job, store: JobStore, stopping: asyncio.Event) -> None:
        self.job = job
        self.store = store
        self.stopping = stopping
        self.ended = False
        self.lost = False
        self.critical = False  # a submission is on the wire: let it finish when stopping
        self._wakeup = asyncio.Event()

    def end(self) -> None:
        self.ended = True
        self._wakeup.set()

    def lose(self) -> None:
        self.lost = True
        self._wakeup.set()

    def interrupt(self) -> None:
        self._wakeup.set()

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(str(self.job.generation_id))
        if self.ended:
            raise JobCancelled(str(self.job.generation_id))
        if self.stopping.is_set():
            raise Interrupted(str(self.job.generation_id))

    async def sleep(self, seconds: float) -> None:
        """Wait, but wake at once for a cancellation, a lost lease or a stop."""
        self.check()
        if seconds > 0:
            await wait_set(self._wakeup, seconds)
        self.check()


class Reporter:
    """Progress reports, at most one per `step` percent within a stage; each report also
    checks that the generation is still live (`JobCancelled` if not). A report the database
    refuses is skipped (logged), not fatal: the next one carries the news."""

    def __init__(self, ctx: JobContext, *, step: float = 20.0) -> None:
        self.ctx = ctx
        self.step = step
        self.last: Progress | None = None

    def due(self, progress: Progress) -> bool:
        last = self.last
        if last is None or last.stage != progress.stage:
            return True
        return (progress.percent or 0) - (last.percent or 0) >= self.step

    async def __call__(self, progress: Progress, **columns: Any) -> None:
        self.ctx.check()
        if not self.due(progress):
            return
        try:
            live = await self.ctx.store.progress(self.ctx.job, progress, **columns)
        except LeaseLost:
            raise
        except Exception as exc:  # progress is advisory: a lost report must not fail the job
            log.warning("Progress report failed", stage=progress.stage, error=str(exc)[:300])
            return
        if not live:
            raise JobCancelled(str(self.ctx.job.generation_id))
        self.last = progress
        log.info("Render progress", stage=progress.stage, percent=progress.percent)


@contextlib.asynccontextmanager
async def beside(report: Awaitable[None]) -> AsyncIterator[None]:
    """Make a progress report while the block works (the report is a database round trip the
    block need not wait for); its outcome (`JobCancelled`, say) is raised after the block.
    Ordered all the same: the report has committed before anything after the block is."""
    task = asyncio.ensure_future(report)
    try:
        yield
    except BaseException:
        # The block's failure wins; the report is let finish (never cut mid-statement).
        await asyncio.gather(task, return_exceptions=True)
        raise
    await task


async def step(name: str, work: Awaitable[T]) -> T:
    """Run one step; an unexpected failure of the step itself becomes `internal`."""
    try:
        return await work
    except (JobCancelled, Interrupted, LeaseLost, ProviderError):
        raise
    except InvalidMedia as exc:
        raise ProviderError("internal", f"the provider's video is not usable: {exc}") from exc
    except Exception as exc:
        log.exception("Render step failed", step=name)
        raise ProviderError(
            "internal", f"{name} failed: {type(exc).__name__}: {exc}"[:500]
        ) from exc


class Finisher:
    """Probe (what we report is the file's own duration and size, never the request's),
    thumbnail, upload. CPU work runs in threads, at most `cpu_slots` at once."""

    def __init__(self, storage: Callable[[], Awaitable[Storage]], cpu_slots: int) -> None:
        self._storage = storage
        self._cpu = asyncio.Semaphore(cpu_slots)

    async def store(
        self, job: Job, video: Path, report: Reporter, *, started_at: datetime
    ) -> RenderResult:
        thumbnail = video.with_name("thumbnail.jpg")
        async with self._cpu:  # the probe's decoded frame is the thumbnail: one pass for both
            info: MediaInfo = await step(
                "probe", asyncio.to_thread(probe_video, video, thumbnail=thumbnail)
            )
        keys = (
            video_key(job.user_id, job.generation_id),
            thumbnail_key(job.user_id, job.generation_id),
        )
        storage = await self._storage()

        async def upload(key: str, path: Path, content_type: str) -> None:
            with storage_span(storage, key, content_type):
                await step("upload", storage.put_file(key, path, content_type))

        # The two files at once, and the `uploading` report beside them.
        async with beside(report(Progress(stage="uploading"))):
            await _all(
                upload(keys[0], video, "video/mp4"), upload(keys[1], thumbnail, "image/jpeg")
            )
        return RenderResult(
            video_key=keys[0],
            thumbnail_key=keys[1],
            duration_seconds=info.duration_seconds,
            file_size_bytes=info.file_size_bytes,
            resolution=info.resolution,
            format=info.format,
            processing_time_ms=max(0, int((datetime.now(UTC) - started_at).total_seconds() * 1000)),
        )


async def _all(*works: Awaitable[None]) -> None:
    """Await every one, even when one fails (nothing left running behind); the first failure
    is raised."""
    outcomes = await asyncio.gather(*works, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
