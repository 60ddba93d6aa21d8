"""The built-in `local` provider: a real H.264 MP4 rendered on the CPU, showing the prompt."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.domain.pricing import LOCAL_MODEL
from shared.schemas import Progress, RenderSpec

from veo_worker.local_render import render_video
from veo_worker.providers.base import InvalidRequest, ProgressCallback, ProviderJob

MAX_SECONDS = 60
# The longest a render thread waits for the event loop to take a progress report (the loop is
# only slow to answer while shutting down).
PROGRESS_WAIT_SECONDS = 30.0


class LocalProvider:
    name = "local"

    def check(self, spec: RenderSpec) -> None:
        if spec.model != LOCAL_MODEL:
            raise InvalidRequest(f"the local provider renders only model '{LOCAL_MODEL}'")
        if not 1 <= spec.duration_seconds <= MAX_SECONDS:
            raise InvalidRequest(f"duration must be 1-{MAX_SECONDS} seconds")
        if spec.generate_audio:
            raise InvalidRequest("the local provider renders no audio")

    async def generate(self, job: ProviderJob, out_path: Path, progress: ProgressCallback) -> None:
        loop = asyncio.get_running_loop()

        def on_progress(fraction: float) -> None:
            # Runs in the render thread: hand the report to the loop and wait for it, so a
            # `JobCancelled` raised there aborts the render here.
            report = progress(Progress(stage="generating", percent=round(fraction * 100, 1)))
            asyncio.run_coroutine_threadsafe(report, loop).result(PROGRESS_WAIT_SECONDS)

        width, height = job.spec.frame_size
        # A local render is cheap and leaves nothing to resume: every attempt renders afresh.
        await asyncio.to_thread(
            render_video,
            job.spec.prompt,
            width=width,
            height=height,
            duration_seconds=job.spec.duration_seconds,
            out_path=out_path,
            seed=job.spec.seed,
            on_progress=on_progress,
        )
