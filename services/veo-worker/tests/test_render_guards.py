"""Duplicates, cancellation, refusals, failures, crashes (local provider): each job ends once
and cleanly, and no command is held on the broker while it renders."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from shared.messages import RenderRequested
from shared.settings import Settings

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Reports, Rows, Running, RunWorker

LeftJob = Callable[..., Awaitable[RenderRequested]]


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The worker's temp dirs go here, so a test can see that none is left behind."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def left_job(worker: Running, reports: Reports, rows: Rows, eventually: Eventually) -> LeftJob:
    """`await left_job(**fields)`: a job row as an earlier attempt left it (`rows.add_job`),
    taken up by the running worker with no command sent; its command once it has ended."""

    async def taken_up(**job_fields: Any) -> RenderRequested:
        command = await rows.command()
        await rows.add_job(command, **job_fields)
        ends = {"succeeded", "failed"}
        await eventually(lambda: ends.intersection(reports.kinds(command.generation_id)))
        return command

    return taken_up


async def test_the_same_command_delivered_twice_renders_once(
    worker: Running, reports: Reports, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    command = await rows.command()
    message_id = await bus.render(command)
    await bus.render(command, message_id=message_id)  # a redelivery: the inbox drops it
    await bus.render(command)  # and a copy with another id: the job row drops it
    await eventually(lambda: worker.scheduler.outcomes["succeeded"] == 1)
    await eventually(lambda: sum(worker.commands.outcomes.values()) == 2)
    assert worker.commands.outcomes == {"queued": 1, "duplicate": 1}
    await asyncio.sleep(0.5)  # let any (wrong) extra report arrive
    kinds = reports.kinds(command.generation_id)
    assert kinds.count("started") == 1 and kinds.count("succeeded") == 1
    assert worker.scheduler.outcomes == {"succeeded": 1}
    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.attempts) == ("succeeded", 1)
    assert job.lease_owner is None and job.lease_until is None


async def test_a_cancelled_generation_is_not_rendered(
    worker: Running,
    reports: Reports,
    bus: Bus,
    rows: Rows,
    eventually: Eventually,
    prepared: Settings,
) -> None:
    command = await rows.command(status="cancelled")
    await bus.render(command)
    await eventually(lambda: worker.commands.outcomes["cancelled"] == 1)
    assert await rows.job_status(command.generation_id) == "cancelled"
    await asyncio.sleep(0.5)
    assert reports.kinds(command.generation_id) == []
    assert worker.scheduler.outcomes == {}
    assert not (Path(prepared.local_storage_dir) / "videos" / str(command.user_id)).exists()


async def test_cancel_during_the_render_stops_it(
    worker: Running,
    reports: Reports,
    bus: Bus,
    rows: Rows,
    eventually: Eventually,
    scratch: Path,
    prepared: Settings,
) -> None:
    command = await rows.command(rows.spec(duration_seconds=8, resolution="1080p"))
    await bus.render(command)
    await eventually(lambda: "progress" in reports.kinds(command.generation_id))
    await rows.set_status(command.generation_id, "cancelled")
    await eventually(lambda: worker.scheduler.outcomes["cancelled"] == 1)
    assert await rows.job_status(command.generation_id) == "cancelled"
    await asyncio.sleep(0.5)
    kinds = reports.kinds(command.generation_id)
    assert "succeeded" not in kinds and "failed" not in kinds
    generating = [r.progress.percent for r in reports.of(command.generation_id) if r.progress]
    assert max(p or 0 for p in generating) < 100  # stopped mid-render, not after it
    assert os.listdir(scratch) == []  # temp files removed
    assert not (Path(prepared.local_storage_dir) / "videos" / str(command.user_id)).exists()


async def test_a_spec_the_provider_refuses_fails_as_invalid_request_at_once(
    worker: Running, reports: Reports, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    command = await rows.command(rows.spec(model="veo-3.1-fast-generate-preview"))
    await bus.render(command)
    await eventually(lambda: reports.kinds(command.generation_id))
    assert reports.kinds(command.generation_id) == ["failed"]  # refused before starting
    error = reports.of(command.generation_id)[0].error
    assert error is not None and error.code == "invalid_request"
    assert await rows.job_status(command.generation_id) == "failed"
    assert worker.commands.outcomes == {"failed": 1}


async def test_a_render_failure_is_reported_failed_not_retried(
    worker_settings: Settings,
    running_worker: RunWorker,
    reports: Reports,
    bus: Bus,
    rows: Rows,
    eventually: Eventually,
    tmp_path: Path,
    scratch: Path,
) -> None:
    not_a_folder = tmp_path / "media-is-a-file"
    not_a_folder.write_text("storing under this path fails")
    broken = worker_settings.model_copy(update={"local_storage_dir": not_a_folder})
    async with running_worker(broken) as worker:
        command = await rows.command()
        await bus.render(command)
        await eventually(lambda: "failed" in reports.kinds(command.generation_id))
        await asyncio.sleep(0.5)
        assert worker.scheduler.outcomes == {"failed": 1}  # once: no retry loop
        assert await bus.queue_depth("worker.render") == 0
        assert await bus.queue_depth("worker.render.dlq") == 0
    kinds = reports.kinds(command.generation_id)
    assert kinds[0] == "started" and kinds[-1] == "failed" and "succeeded" not in kinds
    error = reports.of(command.generation_id)[-1].error
    assert error is not None and error.code == "internal" and "upload failed" in error.message
    job = await rows.job(command.generation_id)
    assert job is not None and job.status == "failed" and job.error == error.model_dump()
    assert os.listdir(scratch) == [not_a_folder.name]


async def test_a_job_left_running_by_a_dead_worker_is_rendered_again(
    left_job: LeftJob, rows: Rows
) -> None:
    """No command needed: the scheduler finds the job whose lease expired and takes it up."""
    command = await left_job(status="running", attempts=1, crashed=True)
    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.attempts) == ("succeeded", 2)


async def test_a_job_handed_back_by_a_stopping_worker_is_not_counted_as_interrupted(
    left_job: LeftJob, rows: Rows
) -> None:
    command = await left_job(status="running", attempts=3)  # no lease: handed back
    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.attempts) == ("succeeded", 3)


async def test_a_job_interrupted_too_often_fails_instead_of_looping(
    left_job: LeftJob, reports: Reports
) -> None:
    command = await left_job(status="running", attempts=3, crashed=True)
    assert reports.kinds(command.generation_id) == ["failed"]
    error = reports.of(command.generation_id)[0].error
    assert error is not None and error.code == "internal" and "interrupted 3 times" in error.message


async def test_an_unreadable_command_is_dead_lettered_and_does_not_block(
    worker: Running, reports: Reports, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    await bus.publish_raw(b"\x00garbage", type_="render.requested", message_id="poison-1")
    await bus.publish_raw(b"{}", type_="render.requested", message_id="poison-2")
    command = await rows.command()
    await bus.render(command)
    await eventually(lambda: "succeeded" in reports.kinds(command.generation_id))
    await eventually(lambda: bus.queue_depth("worker.render.dlq"), within=10)
    assert await bus.queue_depth("worker.render.dlq") == 2
    dlq = await bus.channel.get_queue("worker.render.dlq")
    await dlq.purge()


async def test_a_worker_killed_mid_render_is_replaced_once_its_lease_expires(
    worker_settings: Settings,
    env: dict[str, str],
    running_worker: RunWorker,
    reelflow_bin: str,
    reports: Reports,
    bus: Bus,
    rows: Rows,
    eventually: Eventually,
) -> None:
    """kill -9 a worker process mid-render: its command was acked long ago; the job's lease
    expires and the next worker takes the job up from the database and renders it."""
    command = await rows.command(rows.spec(duration_seconds=8, resolution="1080p"))
    process = subprocess.Popen(
        [reelflow_bin, "worker"],
        env={**os.environ, **env, "WORKER_METRICS_PORT": "0", "WORKER_LEASE_SECONDS": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await bus.render(command)
        await eventually(lambda: "progress" in reports.kinds(command.generation_id))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert "succeeded" not in reports.kinds(command.generation_id)
    assert await bus.queue_depth("worker.render") == 0  # nothing held on the broker
    async with running_worker(worker_settings) as worker:
        await eventually(lambda: "succeeded" in reports.kinds(command.generation_id))
        await eventually(lambda: worker.scheduler.outcomes == {"succeeded": 1})  # counted after
    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.attempts) == ("succeeded", 2)
    assert reports.kinds(command.generation_id).count("started") == 1


async def test_a_worker_woken_in_the_turn_it_stops_still_stops(worker: Running) -> None:
    """A job's end wakes the claim loop. A stop in that same turn once left the loop running
    (Python 3.11's `wait_for` swallowed the cancellation) and the worker's stop waiting on it
    for ever: CI's hung test."""
    await asyncio.sleep(0.3)  # the claim loop parked between ticks
    worker.scheduler.wake()
    await asyncio.sleep(0)  # the wake lands in this turn
    stopping = asyncio.ensure_future(worker.scheduler.stop())
    done, _ = await asyncio.wait([stopping], timeout=15)  # a stop takes milliseconds
    if not done:  # hung: a second cancel ends the loop, so the fixture can stop the worker
        stopping.cancel()
    assert done, "the scheduler's stop hung: its claim loop ran on after being cancelled"
    assert not worker.scheduler.healthy  # its loops ended
