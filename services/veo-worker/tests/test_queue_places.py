"""A queued job's place in the queue: reported when the job is recorded, and again as the queue
moves (the progress a user watches while Veo's quota or the worker's capacity holds it)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr
from shared.db.models import utcnow
from shared.db.raw import dsn
from shared.messages import RenderReported
from shared.outbox import OutboxRelay
from shared.settings import Settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from veo_worker.jobs import QUEUE_NEAR, JobStore

from tests.fakes.fake_veo import FakeVeo

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Rows, RunWorker

KEY = "test-key"


async def _places(
    sessions: async_sessionmaker[AsyncSession], ids: list[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """The places reported in the outbox since the last call (and then forgotten)."""
    async with sessions() as session, session.begin():
        rows = (
            await session.execute(
                text("DELETE FROM outbox WHERE type = 'render.reported' RETURNING body")
            )
        ).all()
    places = {}
    for row in rows:
        report = RenderReported.model_validate_json(row.body)
        assert report.kind == "progress" and report.progress is not None
        assert report.progress.stage == "queued" and report.progress.queue_position is not None
        places[report.generation_id] = report.progress.queue_position
    assert set(places) <= set(ids)
    return places


async def _take(sessions: async_sessionmaker[AsyncSession], ids: list[uuid.UUID]) -> None:
    """What a claim does to these jobs, as far as the queue can see."""
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE render_jobs SET status = 'running' WHERE generation_id = ANY(:ids)"),
            {"ids": ids},
        )


@pytest.fixture
async def store(
    sessions: async_sessionmaker[AsyncSession], prepared: Settings
) -> AsyncIterator[JobStore]:
    """Veo jobs' store, on its own pool (no worker running)."""
    store = JobStore(
        OutboxRelay(sessions, prepared.amqp_url, dsn(prepared)), "veo", owner="t", lease_seconds=30
    )
    await store.open(prepared)
    yield store
    await store.close()


async def test_a_long_queue_reports_each_move_near_the_front_and_further_back_by_a_tenth(
    store: JobStore, sessions: async_sessionmaker[AsyncSession], rows: Rows, clean_db: None
) -> None:
    start = utcnow()
    ids = []
    for n in range(60):
        command = await rows.command()
        await rows.add_job(
            command, provider="veo", status="queued", created_at=start + timedelta(seconds=n)
        )
        ids.append(command.generation_id)

    # Never reported (recorded before places were kept): every job gets its place.
    assert await store.report_queue_moves() == 60
    assert await _places(sessions, ids) == {gid: n + 1 for n, gid in enumerate(ids)}
    assert await store.report_queue_moves() == 0  # nothing moved: nothing sent

    # One taken: a move of one is under a tenth from the 11th place on, but the ten now at the
    # front (the 11th included, now 10th) are told at every move.
    await _take(sessions, ids[:1])
    assert await store.report_queue_moves() == QUEUE_NEAR
    assert await _places(sessions, ids) == {ids[n]: n for n in range(1, 1 + QUEUE_NEAR)}

    # Five taken in all: the front again, and further back those that moved by a tenth or more
    # of the place they were last told (up to the 50th); the last ten, not (5 is under a tenth).
    await _take(sessions, ids[1:5])
    assert await store.report_queue_moves() == 45
    assert await _places(sessions, ids) == {ids[n]: n - 4 for n in range(5, 50)}

    # Ten more taken: every place moved by a tenth or more of the last one told.
    await _take(sessions, ids[5:15])
    assert await store.report_queue_moves() == 45
    assert await _places(sessions, ids) == {ids[n]: n - 14 for n in range(15, 60)}

    kept_places = text(
        "SELECT generation_id, queue_position FROM render_jobs WHERE status = 'queued'"
    )
    async with sessions() as session:
        kept: dict[uuid.UUID, int] = dict((await session.execute(kept_places)).all())
    assert kept == {ids[n]: n - 14 for n in range(15, 60)}


@pytest.fixture
async def slow_veo() -> AsyncIterator[FakeVeo]:
    async with FakeVeo(api_key=KEY, scenario="succeed polls=4") as veo:
        yield veo


async def test_jobs_waiting_for_the_worker_see_their_place_move_up_to_the_front(
    worker_settings: Settings,
    running_worker: RunWorker,
    slow_veo: FakeVeo,
    bus: Bus,
    rows: Rows,
    eventually: Eventually,
) -> None:
    """One operation at a time (VEO_MAX_IN_FLIGHT=1): the later jobs wait in the queue, and
    each is told its place as the ones ahead of it are taken."""
    await rows.reset_window()
    settings = worker_settings.model_copy(
        update={
            "video_provider": "veo",
            "gemini_api_key": SecretStr(KEY),
            "google_gemini_base_url": slow_veo.base_url,
            "veo_poll_interval_seconds": 0.2,
            "veo_poll_max_interval_seconds": 0.2,
            "veo_max_in_flight": 1,
            "veo_submissions_per_minute": 1000,
        }
    )
    reports = await bus.reports()
    commands = [
        await rows.command(rows.spec(model="veo-3.1-fast-generate-preview", generate_audio=True))
        for _ in range(4)
    ]
    async with running_worker(settings):
        await bus.render(commands[0])
        await eventually(lambda: slow_veo.submissions == 1)  # taken: the worker is full
        for command in commands[1:]:  # one at a time: each recorded after the one before
            await bus.render(command)
            await eventually(lambda c=command: "started" in reports.kinds(c.generation_id))
        for command in commands:
            await eventually(
                lambda c=command: "succeeded" in reports.kinds(c.generation_id), within=30
            )

    def places(gid: uuid.UUID) -> list[int]:
        return [
            r.progress.queue_position or 0
            for r in reports.of(gid)
            if r.progress is not None and r.progress.stage == "queued"
        ]

    # The first is taken at once; the second waits first in line behind it, the third second,
    # the fourth third (the job being rendered is not in the queue).
    assert [places(c.generation_id)[0] for c in commands] == [1, 1, 2, 3]
    for command in commands[2:]:
        seen = places(command.generation_id)
        assert len(seen) >= 2 and seen[-1] == 1, seen  # told it moved, and reached the front
        assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen), seen
        stages = [r.progress.stage for r in reports.of(command.generation_id) if r.progress]
        assert stages.index("submitted") == len(seen)  # every place told before it was taken
