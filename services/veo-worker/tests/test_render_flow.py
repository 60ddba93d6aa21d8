"""A render command end to end (local provider): recorded, claimed, rendered, probed, stored,
with the reports in order."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image
from shared.settings import Settings
from veo_worker.probe import probe_video

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Rows, Running


@pytest.mark.parametrize(
    ("aspect_ratio", "seconds", "resolution"),
    [("16:9", 4, "1280x720"), ("9:16", 6, "720x1280"), ("16:9", 8, "1280x720")],
)
async def test_a_command_ends_with_a_stored_probed_mp4_and_ordered_reports(
    worker: Running,
    bus: Bus,
    rows: Rows,
    eventually: Eventually,
    prepared: Settings,
    aspect_ratio: str,
    seconds: int,
    resolution: str,
) -> None:
    reports = await bus.reports()
    command = await rows.command(rows.spec(aspect_ratio, seconds))
    began = time.monotonic()
    await bus.render(command)
    await eventually(lambda: "succeeded" in reports.kinds(command.generation_id))
    took = time.monotonic() - began

    kinds = reports.kinds(command.generation_id)
    assert kinds[0] == "started" and kinds[-1] == "succeeded"
    first = reports.of(command.generation_id)[0].progress
    assert first is not None and (first.stage, first.queue_position) == ("queued", 1)
    assert set(kinds[1:-1]) == {"progress"} and len(kinds) >= 4
    progress = [r.progress for r in reports.of(command.generation_id)[1:-1]]
    stages = [p.stage for p in progress if p]
    assert stages[-1] == "uploading" and set(stages[:-1]) == {"generating"}
    percents: list[float] = []
    for p in progress:
        if p and p.stage == "generating":
            assert p.percent is not None  # a generating report says how far it is
            percents.append(p.percent)
    assert percents == sorted(percents) and 2 <= len(percents) <= 6  # throttled to ~20 %

    result = reports.of(command.generation_id)[-1].result
    assert result is not None
    assert result.resolution == resolution and result.format == "mp4"
    assert result.duration_seconds == pytest.approx(seconds, abs=0.05)
    stored = Path(prepared.local_storage_dir) / result.video_key
    probed = probe_video(stored)  # the stored file itself, probed again here
    assert (probed.resolution, probed.codec) == (resolution, "h264")
    assert probed.duration_seconds == pytest.approx(seconds, abs=0.05)
    assert probed.file_size_bytes == result.file_size_bytes == stored.stat().st_size
    with Image.open(Path(prepared.local_storage_dir) / result.thumbnail_key) as thumbnail:
        assert thumbnail.format == "JPEG" and thumbnail.width <= 640
        assert abs(thumbnail.width / thumbnail.height - probed.width / probed.height) < 0.02
    assert result.video_key == f"videos/{command.user_id}/{command.generation_id}.mp4"
    assert 0 < result.processing_time_ms < took * 1000

    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.attempts) == ("succeeded", 1)
    await eventually(lambda: worker.scheduler.outcomes["succeeded"] == 1)  # counted after
    print(
        f"\n[measure] {aspect_ratio} {seconds}s local render end to end: {took:.2f}s "
        f"(processing_time_ms={result.processing_time_ms})"
    )


async def test_health_and_readiness(worker: Running) -> None:
    base = f"http://127.0.0.1:{worker.service.health_port}"
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["consumers"] == {"worker.render": True}
        assert ready.json()["scheduler"] is True
        assert "reelflow_worker_renders" in (await client.get("/metrics")).text
