"""The render command's record (`JobStore.record`, one statement with the inbox claim and the
report): whatever copies arrive, and in whatever order, one job and one `started` report; the
report written with the place the statement counted is the one published; a command with no
generation is acked and leaves nothing behind."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from shared.db.models import utcnow
from shared.messages import RenderRequested
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from veo_worker.jobs import QUEUED

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Reports, Rows, Running

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def _stored_reports(
    sessions: async_sessionmaker[AsyncSession], generation_id: uuid.UUID, kind: str
) -> list[str]:
    """The bodies of the generation's reports of `kind` in the outbox."""
    async with sessions() as session:
        found = await session.execute(
            text(
                "SELECT body FROM outbox WHERE correlation_id = :id AND routing_key = :key "
                "ORDER BY id"
            ),
            {"id": str(generation_id), "key": f"render.{kind}"},
        )
        return [row.body for row in found]


async def test_copies_arriving_together_make_one_job_and_one_started_report(
    worker: Running,
    reports: Reports,
    bus: Bus,
    rows: Rows,
    sessions: async_sessionmaker[AsyncSession],
    eventually: Eventually,
) -> None:
    ahead = await rows.command()  # a job waiting to be retried: in the queue, not taken now
    await rows.add_job(ahead, status="queued", due_at=utcnow() + timedelta(hours=1))
    command = await rows.command()
    first = str(uuid.uuid4())
    trace = {"traceparent": TRACEPARENT}
    # Published together (the worker takes up to its prefetch at once): two deliveries of one
    # message (the inbox drops the second) and four copies with ids of their own (the job row
    # drops them), all racing for the same row.
    await asyncio.gather(
        bus.render(command, message_id=first, headers=trace),
        bus.render(command, message_id=first, headers=trace),
        *(bus.render(command, headers=trace) for _ in range(4)),
    )
    await eventually(lambda: sum(worker.commands.outcomes.values()) == 5)
    await eventually(lambda: worker.service.recorder.duplicates == 1)
    assert worker.commands.outcomes == {QUEUED: 1, "duplicate": 4}
    registry = worker.service.runtime.registry
    counted = registry.get_sample_value("reelflow_worker_commands_total", {"outcome": QUEUED})
    assert counted == 1
    await eventually(lambda: "started" in reports.kinds(command.generation_id))
    await asyncio.sleep(0.5)  # let any (wrong) extra report arrive

    started = [m for m in reports.messages if m.correlation_id == str(command.generation_id)]
    started = [m for m in started if m.routing_key == "render.started"]
    assert len(started) == 1
    report = reports.of(command.generation_id)[0]
    assert report.kind == "started" and report.progress is not None
    # Second in line, behind the job waiting for its retry.
    assert (report.progress.stage, report.progress.queue_position) == ("queued", 2)
    # The row the statement wrote, place filled in, is what was published (the relay's safety
    # net, which publishes from the table, would send the same).
    assert await _stored_reports(sessions, command.generation_id, "started") == [
        started[0].body.decode()
    ]
    async with sessions() as session:
        jobs = await session.scalar(
            text("SELECT count(*) FROM render_jobs WHERE generation_id = :id"),
            {"id": command.generation_id},
        )
    assert jobs == 1
    job = await rows.job(command.generation_id)
    assert job is not None and job.trace_context is not None
    # The consumer span's context, under the command's trace: the job's spans join it.
    assert job.trace_context["traceparent"].split("-")[1] == TRACE_ID
    assert await bus.queue_depth("worker.render") == 0
    assert await bus.queue_depth("worker.render.dlq") == 0


async def test_a_command_without_its_generation_is_acked_and_leaves_nothing(
    worker: Running,
    reports: Reports,
    bus: Bus,
    rows: Rows,
    sessions: async_sessionmaker[AsyncSession],
    eventually: Eventually,
) -> None:
    real = await rows.command()
    orphan = RenderRequested(generation_id=uuid.uuid4(), user_id=real.user_id, spec=real.spec)
    await bus.render(orphan)
    await eventually(lambda: worker.commands.outcomes["missing"] == 1)
    await bus.render(orphan)  # another copy: nothing was created the first time either
    await eventually(lambda: worker.commands.outcomes["missing"] == 2)
    assert await rows.job(orphan.generation_id) is None
    await asyncio.sleep(0.3)
    assert reports.kinds(orphan.generation_id) == []
    assert await _stored_reports(sessions, orphan.generation_id, "started") == []
    assert await bus.queue_depth("worker.render") == 0
    assert await bus.queue_depth("worker.render.dlq") == 0
    assert worker.scheduler.outcomes == {}


async def test_a_generation_ended_while_its_command_travelled_is_told_nothing(
    worker: Running,
    reports: Reports,
    bus: Bus,
    rows: Rows,
    sessions: async_sessionmaker[AsyncSession],
    eventually: Eventually,
) -> None:
    """Refused and ended at once: the ended generation wins (`cancelled`, no `failed` report)."""
    command = await rows.command(
        rows.spec(model="veo-3.1-fast-generate-preview"), status="cancelled"
    )
    await bus.render(command)
    await eventually(lambda: worker.commands.outcomes["cancelled"] == 1)
    await asyncio.sleep(0.3)  # let any (wrong) report arrive
    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.error, job.queue_position) == (
        "cancelled",
        None,
        None,
    )
    assert reports.kinds(command.generation_id) == []
    assert await _stored_reports(sessions, command.generation_id, "failed") == []
