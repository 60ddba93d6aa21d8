"""The `veo` provider against the fake Gemini API (a real HTTP server, tests/fakes), with the
worker on the real broker and database: stages, failure classes counted at the fake, the
global submissions cap, cancellation, hand-back and takeover, and the crash-window rule."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import SecretStr
from shared.db.models import utcnow
from shared.messages import RenderRequested
from shared.settings import Settings
from veo_worker.flows import CRASH_WINDOW
from veo_worker.probe import probe_video

from tests.fakes.fake_veo import FakeVeo

if TYPE_CHECKING:
    from conftest import Bus, Eventually, Reports, Rows, Running, RunWorker

KEY = "test-key"
MODEL = "veo-3.1-fast-generate-preview"
PROMPT = 'A paper boat drifting down a rain-soaked city street — neon, "night", 35mm'


@pytest.fixture
async def fake_veo() -> AsyncIterator[FakeVeo]:
    async with FakeVeo(api_key=KEY, scenario="succeed polls=2") as veo:
        yield veo


@pytest.fixture
async def veo_settings(worker_settings: Settings, fake_veo: FakeVeo, rows: Rows) -> Settings:
    await rows.reset_window()
    return worker_settings.model_copy(
        update={
            "video_provider": "veo",
            "gemini_api_key": SecretStr(KEY),
            "google_gemini_base_url": fake_veo.base_url,
            "veo_poll_interval_seconds": 0.1,
            "veo_poll_max_interval_seconds": 0.3,
            "veo_max_retries": 2,
            "veo_operation_deadline_seconds": 30.0,
            "veo_submissions_per_minute": 1000,
        }
    )


def scenario_prompt(scenario: str) -> str:
    """A prompt that has the fake play `scenario` (tests/fakes/fake_veo.py)."""
    return f"{PROMPT} [scenario:{scenario}]"


async def _done(rows: Rows, command: RenderRequested) -> bool:
    return await rows.job_status(command.generation_id) in ("succeeded", "failed", "cancelled")


def _stages(reports: Reports, generation_id: uuid.UUID) -> list[str]:
    return [r.progress.stage for r in reports.of(generation_id) if r.progress]


@dataclass
class Veo:
    """Workers on the fake Veo's settings, the commands they are sent and the waits on them."""

    settings: Settings
    running_worker: RunWorker
    bus: Bus
    rows: Rows
    reports: Reports
    eventually: Eventually

    async def command(self, prompt: str = PROMPT, **fields: Any) -> RenderRequested:
        """A confirmed generation for the Veo model (audio asked for), and its render command."""
        spec = self.rows.spec(model=MODEL, prompt=prompt, generate_audio=True, **fields)
        return await self.rows.command(spec)

    async def left_by_dead_worker(self, status: str, **fields: Any) -> RenderRequested:
        """A generation whose job was left in `status` by a worker that died holding it (its
        first attempt, the lease expired); the job's command, which is never sent."""
        command = await self.command()
        await self.rows.add_job(
            command, provider="veo", status=status, attempts=1, crashed=True, **fields
        )
        return command

    def worker(self, **changes: Any) -> contextlib.AbstractAsyncContextManager[Running]:
        """`async with veo.worker(**changes) as worker:` a worker on the fake's settings."""
        return self.running_worker(self.settings.model_copy(update=changes))

    async def send(self, command: RenderRequested) -> None:
        await self.bus.render(command)

    async def reported(self, command: RenderRequested, kind: str) -> None:
        """Wait for a report of `kind` ("succeeded", "failed", …) on the command."""
        await self.eventually(lambda: kind in self.reports.kinds(command.generation_id))

    async def reached(self, command: RenderRequested, stage: str) -> None:
        """Wait for a progress report at `stage` ("generating", …) on the command."""
        await self.eventually(lambda: stage in _stages(self.reports, command.generation_id))


@pytest.fixture
def veo(
    veo_settings: Settings,
    running_worker: RunWorker,
    bus: Bus,
    rows: Rows,
    reports: Reports,
    eventually: Eventually,
) -> Veo:
    return Veo(veo_settings, running_worker, bus, rows, reports, eventually)


async def test_a_veo_render_goes_through_every_stage_and_stores_the_fakes_video(
    veo: Veo, fake_veo: FakeVeo, reports: Reports, rows: Rows, eventually: Eventually
) -> None:
    command = await veo.command(negative_prompt="blurry", seed=7)
    async with veo.worker() as worker:
        await veo.send(command)
        await veo.reported(command, "succeeded")
        await eventually(lambda: worker.scheduler.outcomes == {"succeeded": 1})  # counted after

    kinds = reports.kinds(command.generation_id)
    assert kinds[0] == "started" and kinds[-1] == "succeeded"
    stages = _stages(reports, command.generation_id)
    assert stages[0] == "queued" and stages[1] == "submitted"
    assert stages[-2:] == ["downloading", "uploading"]
    assert set(stages[2:-2]) == {"generating"} and len(stages[2:-2]) >= 1
    generating = [r.progress for r in reports.of(command.generation_id) if r.progress]
    assert all(p.elapsed_ms is not None for p in generating if p.stage == "generating")

    assert fake_veo.submissions == 1 and fake_veo.downloads == 1
    [request] = fake_veo.requests
    instance, parameters = request["body"]["instances"][0], request["body"]["parameters"]
    assert instance == {"prompt": PROMPT}  # as written
    assert "generateAudio" not in parameters
    assert parameters["durationSeconds"] == 4 and parameters["seed"] == 7
    assert parameters["negativePrompt"] == "blurry" and parameters["aspectRatio"] == "16:9"

    result = reports.of(command.generation_id)[-1].result
    assert result is not None
    stored = Path(veo.settings.local_storage_dir) / result.video_key
    assert stored.read_bytes() == await fake_veo.video(1280, 720, 4)  # the fake's very bytes
    probed = probe_video(stored)
    assert (probed.resolution, probed.has_audio) == ("1280x720", True)
    assert probed.duration_seconds == pytest.approx(4, abs=0.05)
    assert (result.resolution, result.file_size_bytes) == ("1280x720", probed.file_size_bytes)
    job = await rows.job(command.generation_id)
    assert job is not None and job.status == "succeeded" and job.attempts == 1
    assert job.operation_name == next(iter(fake_veo.operations))
    assert job.poll_count >= 1 and job.submitted_at is not None and job.lease_owner is None


# scenario tag → (job status, error code or None, text in the message, submit attempts, ok
# submissions). With VEO_MAX_RETRIES=2 a transient error is tried 3 times in all.
CLASSES: dict[str, tuple[str, str | None, str, int, int]] = {
    "filtered message=celebrity_likeness": ("failed", "content_policy", "celebrity likeness", 1, 1),
    "error code=3 message=bad_prompt": ("failed", "invalid_request", "bad prompt", 1, 1),
    "error code=13 message=boom": ("failed", "internal", "boom", 1, 1),
    "rate_limited times=2 retry_after=1": ("succeeded", None, "", 3, 1),
    "rate_limited times=9 retry_after=1": ("failed", "quota_exceeded", "429", 3, 0),
    "unavailable times=2": ("succeeded", None, "", 3, 1),
    "unavailable times=9 status=500": ("failed", "provider_unavailable", "500", 3, 0),
    "succeed poll_errors=2": ("succeeded", None, "", 1, 1),
    "succeed poll_errors=9": ("failed", "provider_unavailable", "polling", 1, 1),
    "malformed times=1": ("succeeded", None, "", 1, 1),
    "malformed": ("failed", "provider_unavailable", "malformed JSON", 1, 1),
    "video_404": ("failed", "internal", "HTTP 404", 1, 1),
    "empty_video": ("failed", "internal", "empty", 1, 1),
    "never": ("failed", "timeout", "did not finish", 1, 1),
}


async def test_every_failure_class_ends_as_the_contract_says(
    veo: Veo, fake_veo: FakeVeo, bus: Bus, reports: Reports, rows: Rows, eventually: Eventually
) -> None:
    """All scenarios at once, side by side; each counted at the fake by its own prompt."""
    commands = {scenario: await veo.command(scenario_prompt(scenario)) for scenario in CLASSES}
    async with veo.worker(veo_operation_deadline_seconds=4.0):
        for command in commands.values():
            await veo.send(command)
        for command in commands.values():
            await eventually(lambda c=command: _done(rows, c), within=40)
    await asyncio.sleep(0.3)  # let the last reports arrive

    requests = fake_veo.requests
    for scenario, (status, code, text, attempts, submissions) in CLASSES.items():
        command = commands[scenario]
        prompt = command.spec.prompt
        assert await rows.job_status(command.generation_id) == status, scenario
        sent = [r for r in requests if r["body"]["instances"][0]["prompt"] == prompt]
        assert len(sent) == attempts, (scenario, [r["status"] for r in sent])
        accepted = [op for op in fake_veo.operations.values() if op.request.prompt == prompt]
        assert len(accepted) == submissions, scenario
        last = reports.of(command.generation_id)[-1]
        if status == "succeeded":
            assert last.kind == "succeeded" and last.result is not None, scenario
            continue
        assert last.kind == "failed" and last.error is not None, scenario
        assert (last.error.code, text in last.error.message) == (code, True), (
            scenario,
            last.error,
        )
        assert "succeeded" not in reports.kinds(command.generation_id), scenario
    # A refusal is final: the filtered operation was polled to its end and never again.
    filtered = commands["filtered message=celebrity_likeness"].spec.prompt
    [op] = [op for op in fake_veo.operations.values() if op.request.prompt == filtered]
    polls = op.polls
    await asyncio.sleep(0.5)
    assert op.polls == polls and op.downloads == 0
    assert await bus.queue_depth("worker.render.dlq") == 0


async def test_a_burst_queues_behind_the_global_cap_shared_by_two_workers(
    veo: Veo, fake_veo: FakeVeo, reports: Reports, rows: Rows, eventually: Eventually
) -> None:
    commands = [await veo.command(f"{PROMPT} #{n}") for n in range(5)]
    capped = {"veo_submissions_per_minute": 2}
    async with veo.worker(**capped), veo.worker(**capped):  # each on a port of its own
        for command in commands:
            await veo.send(command)
        await eventually(lambda: fake_veo.submissions == 2)
        await asyncio.sleep(1.0)  # both workers keep claiming: still only two
        assert fake_veo.submissions == 2
        statuses = [await rows.job_status(c.generation_id) for c in commands]
        assert statuses.count("queued") == 3, statuses
        positions = sorted(
            r.progress.queue_position or 0
            for c in commands
            for r in reports.of(c.generation_id)
            if r.kind == "started" and r.progress
        )
        # A burst sees its place. Two workers record at once, each transaction counting only
        # the queued jobs already committed, so the last one in sees at least one job ahead
        # (how many more depends on how the two interleave).
        assert len(positions) == 5 and min(positions) >= 1 and positions[-1] >= 2

        async def all_done() -> bool:
            await rows.reset_window()  # a minute passes, again and again
            statuses = [await rows.job_status(c.generation_id) for c in commands]
            return statuses == ["succeeded"] * 5

        await eventually(all_done)
    assert fake_veo.submissions == 5


async def test_cancel_while_waiting_stops_polling_and_marks_the_job_cancelled(
    veo: Veo, fake_veo: FakeVeo, reports: Reports, rows: Rows, eventually: Eventually
) -> None:
    command = await veo.command(scenario_prompt("never"))
    async with veo.worker() as worker:
        await veo.send(command)
        await veo.reached(command, "generating")
        await rows.set_status(command.generation_id, "cancelled")
        await eventually(lambda: worker.scheduler.outcomes["cancelled"] == 1)
        polls = fake_veo.polls
        await asyncio.sleep(1.0)
        assert fake_veo.polls == polls  # Veo has no cancel: we only stop waiting
    assert await rows.job_status(command.generation_id) == "cancelled"
    assert fake_veo.submissions == 1
    kinds = reports.kinds(command.generation_id)
    assert "succeeded" not in kinds and "failed" not in kinds


async def test_a_stopped_worker_hands_its_operations_back_and_the_next_one_finishes_them(
    veo: Veo, fake_veo: FakeVeo, rows: Rows, eventually: Eventually
) -> None:
    command = await veo.command(scenario_prompt("slow seconds=3"))
    async with veo.worker():
        await veo.send(command)
        await veo.reached(command, "generating")
    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.lease_owner) == ("running", None)
    async with veo.worker() as worker:
        await veo.reported(command, "succeeded")
        # The report goes out at its commit, which can be before the job's task has counted it.
        await eventually(lambda: worker.scheduler.outcomes == {"succeeded": 1})
    assert fake_veo.submissions == 1
    job = await rows.job(command.generation_id)
    assert job is not None and job.attempts == 1  # a hand-back is not an interruption


async def test_a_job_taken_over_polls_its_stored_operation_and_never_submits(
    veo: Veo, fake_veo: FakeVeo, rows: Rows
) -> None:
    """What a worker killed mid-wait leaves behind: `running`, the operation name, an expired
    lease. The next worker polls that operation; the fake sees one submission in all."""
    async with httpx.AsyncClient(base_url=fake_veo.base_url) as client:
        submitted = await client.post(
            f"/v1beta/models/{MODEL}:predictLongRunning",
            json={"instances": [{"prompt": PROMPT}], "parameters": {"durationSeconds": 4}},
            headers={"x-goog-api-key": KEY},
        )
    name = submitted.json()["name"]
    now = utcnow()
    command = await veo.left_by_dead_worker(
        "running", operation_name=name, submitted_at=now, deadline_at=now + timedelta(minutes=5)
    )
    async with veo.worker():
        await veo.reported(command, "succeeded")
    assert fake_veo.submissions == 1
    job = await rows.job(command.generation_id)
    assert job is not None and (job.status, job.attempts, job.operation_name) == (
        "succeeded",
        2,
        name,
    )


async def test_a_job_claimed_but_not_yet_sent_by_a_dead_worker_is_submitted_by_the_next(
    veo: Veo, fake_veo: FakeVeo, rows: Rows
) -> None:
    """`queued` under an expired lease: the dead worker never marked it `submitting`, so it
    never sent it; the next worker submits it, once."""
    command = await veo.left_by_dead_worker("queued")
    async with veo.worker():
        await veo.reported(command, "succeeded")
    assert fake_veo.submissions == 1
    job = await rows.job(command.generation_id)
    assert job is not None and job.attempts == 2  # the dead worker's claim, then this one


async def test_a_job_found_submitting_after_a_crash_fails_and_is_never_resubmitted(
    veo: Veo, fake_veo: FakeVeo, reports: Reports
) -> None:
    command = await veo.left_by_dead_worker("submitting")
    async with veo.worker():
        await veo.reported(command, "failed")
    error = reports.of(command.generation_id)[-1].error
    assert error is not None and (error.code, error.message) == ("internal", CRASH_WINDOW)
    assert fake_veo.stats()["submit_attempts"] == 0


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP server that reads a request and hangs up without answering."""
    seen: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", seen


async def test_a_submission_sent_but_never_answered_is_not_sent_again(
    veo: Veo, reports: Reports
) -> None:
    command = await veo.command()
    async with _silent_server() as (url, seen):
        async with veo.worker(google_gemini_base_url=url):
            await veo.send(command)
            await veo.reported(command, "failed")
            await asyncio.sleep(0.5)
        assert len(seen) == 1 and b"predictLongRunning" in seen[0]
    error = reports.of(command.generation_id)[-1].error
    assert error is not None and error.code == "provider_unavailable"
    assert "not submitted again" in error.message
