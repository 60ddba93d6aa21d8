"""render.*: the worker's reports move a generation through processing to its end."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from typing import TYPE_CHECKING

import pytest
from orchestrator.handlers import Handlers
from orchestrator.reports import is_newer
from orchestrator.sql import open_pool
from shared.consumer import Transaction
from shared.db.models import Generation
from shared.messages import RenderReported
from shared.schemas import ErrorInfo, Progress, RenderResult
from shared.settings import Settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Rows, Running


def result(gen: Generation) -> RenderResult:
    return RenderResult(
        video_key=f"videos/{gen.user_id}/{gen.id}.mp4",
        thumbnail_key=f"videos/{gen.user_id}/{gen.id}.jpg",
        duration_seconds=4.0,
        file_size_bytes=600_000,
        resolution="1280x720",
        format="mp4",
        processing_time_ms=3100,
    )


def started(gen_id: uuid.UUID) -> RenderReported:
    return RenderReported(
        generation_id=gen_id, kind="started", progress=Progress(stage="generating")
    )


def progress(gen_id: uuid.UUID, percent: float, stage: str = "generating") -> RenderReported:
    return RenderReported(
        generation_id=gen_id,
        kind="progress",
        progress=Progress(stage=stage, percent=percent),
    )


def succeeded(gen: Generation) -> RenderReported:
    return RenderReported(generation_id=gen.id, kind="succeeded", result=result(gen))


async def test_reports_move_processing_to_completed(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    events = await bus.lifecycle()
    gen = await rows.confirmed()

    async def status_is(status: str, **fields: object) -> bool:
        row = await rows.get(gen.id)
        return row.status == status and all(getattr(row, k) == v for k, v in fields.items())

    await bus.publish(started(gen.id))
    await eventually(lambda: status_is("processing"))
    assert (await rows.get(gen.id)).progress == {
        "stage": "generating",
        "percent": None,
        "queue_position": None,
        "elapsed_ms": None,
    }
    await bus.publish(progress(gen.id, 40))
    await eventually(lambda: status_is("processing", version=3))
    progress_now = (await rows.get(gen.id)).progress
    assert progress_now is not None and progress_now["percent"] == 40
    await bus.publish(succeeded(gen))
    await eventually(lambda: status_is("completed"))
    done = await rows.get(gen.id)
    assert done.result == result(gen).model_dump(mode="json")
    assert done.progress is None and done.error is None
    await eventually(lambda: len(events.of(gen.id)) == 3)
    assert events.routing_keys(gen.id) == [
        "generation.processing",
        "generation.progress",
        "generation.completed",
    ]


async def test_failed_report_fails_the_generation(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.confirmed("processing", progress={"stage": "generating"})
    error = ErrorInfo(code="internal", message="the encoder crashed")
    await bus.publish(RenderReported(generation_id=gen.id, kind="failed", error=error))

    async def failed() -> bool:
        return (await rows.get(gen.id)).status == "failed"

    await eventually(failed)
    row = await rows.get(gen.id)
    assert row.error == error.model_dump() and row.progress is None
    assert await rows.outbox(gen.id) == ["generation.failed"]


async def test_a_refused_spec_fails_straight_from_confirmed(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.confirmed()
    error = ErrorInfo(code="invalid_request", message="the local provider renders only 'local'")
    await bus.publish(RenderReported(generation_id=gen.id, kind="failed", error=error))

    async def failed() -> bool:
        return (await rows.get(gen.id)).status == "failed"

    await eventually(failed)
    assert await rows.outbox(gen.id) == ["generation.failed"]


async def test_report_for_a_cancelled_generation_is_ignored(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    gen = await rows.confirmed("cancelled")
    for report in (started(gen.id), progress(gen.id, 60), succeeded(gen)):
        await bus.publish(report)
    consumer = orchestrator.consumer("orchestrator.reports")
    await eventually(lambda: consumer.handled == 3)
    row = await rows.get(gen.id)
    assert (row.status, row.version, row.result) == ("cancelled", 1, None)
    assert await rows.outbox(gen.id) == []


async def test_reordered_reports_still_end_completed(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    """Progress before started moves to processing; late progress never goes backwards."""
    gen = await rows.confirmed()
    await bus.publish(progress(gen.id, 60))

    async def processing() -> bool:
        return (await rows.get(gen.id)).status == "processing"

    await eventually(processing)
    await bus.publish(started(gen.id))
    await bus.publish(progress(gen.id, 20))
    consumer = orchestrator.consumer("orchestrator.reports")
    await eventually(lambda: consumer.handled == 3)
    row = await rows.get(gen.id)
    assert row.progress is not None and row.progress["percent"] == 60
    assert row.version == 2  # only the move to processing
    await bus.publish(succeeded(gen))
    await eventually(lambda: consumer.handled == 4)
    assert (await rows.get(gen.id)).status == "completed"


def queued(gen_id: uuid.UUID, place: int | None, kind: str = "progress") -> RenderReported:
    return RenderReported(
        generation_id=gen_id, kind=kind, progress=Progress(stage="queued", queue_position=place)
    )


@pytest.mark.parametrize(
    ("current", "reported", "newer"),
    [
        (
            Progress(stage="queued", queue_position=3),
            Progress(stage="queued", queue_position=2),
            True,
        ),
        (
            Progress(stage="queued", queue_position=2),
            Progress(stage="queued", queue_position=3),
            False,
        ),
        (
            Progress(stage="queued", queue_position=2),
            Progress(stage="queued", queue_position=2),
            False,
        ),
        (Progress(stage="queued"), Progress(stage="queued", queue_position=40), True),
        (Progress(stage="queued", queue_position=40), Progress(stage="queued"), False),
        (Progress(stage="queued", queue_position=1), Progress(stage="submitted"), True),
        (Progress(stage="submitted"), Progress(stage="queued", queue_position=1), False),
        (Progress(stage="generating", percent=40), Progress(stage="generating", percent=30), False),
    ],
)
def test_progress_moves_forward_through_stages_percent_and_queue_places(
    current: Progress, reported: Progress, newer: bool
) -> None:
    assert is_newer(current.model_dump(mode="json"), reported) is newer


async def test_a_queued_generation_shows_its_place_moving_up_and_never_back(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    events = await bus.lifecycle()
    gen = await rows.confirmed()
    consumer = orchestrator.consumer("orchestrator.reports")
    await bus.publish(queued(gen.id, 3, kind="started"))
    await eventually(lambda: consumer.handled == 1)
    await bus.publish(queued(gen.id, 2))
    await eventually(lambda: consumer.handled == 2)
    await bus.publish(queued(gen.id, 3))  # a late, older report
    await eventually(lambda: consumer.handled == 3)
    row = await rows.get(gen.id)
    assert row.progress is not None and row.progress["queue_position"] == 2
    assert row.version == 3  # processing, then one move up
    await eventually(lambda: len(events.of(gen.id)) == 2)
    assert events.routing_keys(gen.id) == ["generation.processing", "generation.progress"]


async def test_a_burst_of_reports_in_any_order_is_applied_consistently(
    orchestrator: Running, bus: Bus, rows: Rows, eventually: Eventually
) -> None:
    """Handled concurrently (prefetch), competing writes to one row retry on a fresh read."""
    gens = [await rows.confirmed() for _ in range(3)]
    reports = [
        report
        for gen in gens
        for report in (
            started(gen.id),
            *(progress(gen.id, p) for p in (20, 40, 60, 80)),
            progress(gen.id, 0, stage="uploading"),
        )
    ]
    random.Random(7).shuffle(reports)
    await asyncio.gather(*(bus.publish(r) for r in reports))
    consumer = orchestrator.consumer("orchestrator.reports")
    await eventually(lambda: consumer.handled == len(reports))
    for gen in gens:
        row = await rows.get(gen.id)
        assert row.status == "processing"
        assert row.progress is not None and row.progress["stage"] == "uploading"
    await asyncio.gather(*(bus.publish(succeeded(gen)) for gen in gens))
    await eventually(lambda: consumer.handled == len(reports) + len(gens))
    assert {(await rows.get(gen.id)).status for gen in gens} == {"completed"}


async def test_concurrent_reports_of_one_generation_wait_for_each_other(
    prepared: Settings,
    clean_db: None,
    sessions: async_sessionmaker[AsyncSession],
    rows: Rows,
    eventually: Eventually,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A report handled while another one of the same generation is uncommitted waits for it
    (the row is read locked), then decides on what it committed: no lost compare-and-set, no
    re-read and re-run."""
    handlers = Handlers(prepared)
    gen = await rows.confirmed()
    pool = await open_pool(prepared, size=2)

    async def second() -> None:
        async with pool.acquire() as conn, conn.transaction():
            tx = Transaction(conn, "orchestrator.reports", str(uuid.uuid4()), None)
            await handlers.reported(tx, progress(gen.id, 40))

    async def waiting_on_a_lock() -> bool:
        async with sessions() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            return bool(waiting)

    caplog.set_level(logging.INFO, logger="reelflow.orchestrator")
    try:
        async with pool.acquire() as conn, conn.transaction():
            tx = Transaction(conn, "orchestrator.reports", str(uuid.uuid4()), None)
            await handlers.reported(tx, started(gen.id))
            task = asyncio.create_task(second())
            await eventually(waiting_on_a_lock)
        await task
    finally:
        await pool.close()

    assert not [r for r in caplog.records if "concurrently" in r.getMessage()]
    row = await rows.get(gen.id)
    assert (row.status, row.version) == ("processing", gen.version + 2)
    assert row.progress is not None and row.progress["percent"] == 40
