"""Generations through the `veo` provider, end to end: API, orchestrator, worker and notifier on
the real broker and database, the fake Gemini API (tests/fakes) and S3 (moto, over HTTP).

- the stored object in S3 is the fake's video, probed, and every progress stage is seen;
- a worker killed with SIGKILL while it waits on operations is replaced, and the fake counts
  exactly one submission per generation;
- the same with the broker (a private RabbitMQ node) restarted while operations are pending.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from shared.messages import LifecycleEvent
from shared.settings import Settings, load_settings
from shared.topology import EVENTS, declare
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from veo_worker.probe import probe_video

from tests.e2e.harness import Api, eventually, running_pipeline
from tests.fake_s3 import moto_endpoint, s3_client
from tests.fakes.fake_veo import FakeVeo, FakeVeoProcess
from tests.infra import PrivateRabbit
from tests.support import ADMIN_KEY, free_port

KEY = "fake-gemini-key"
MODEL = "veo-3.1-fast-generate-preview"
BUCKET = "reelflow-e2e"
PROMPT = "A red fox running through fresh snow at dawn, cinematic, low angle"

VEO_ENV = {
    "VIDEO_PROVIDER": "veo",
    "GEMINI_API_KEY": KEY,
    "VEO_POLL_INTERVAL_SECONDS": "0.1",
    "VEO_POLL_MAX_INTERVAL_SECONDS": "0.4",
    "VEO_SUBMISSIONS_PER_MINUTE": "1000",
    "WORKER_LEASE_SECONDS": "2",
}


def body(prompt: str = PROMPT) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "auto_confirm": True,
        "params": {"model": MODEL, "aspect_ratio": "16:9", "duration_seconds": 4},
    }


@pytest.fixture
async def fresh(
    clean_db: None, sessions: async_sessionmaker[AsyncSession]
) -> async_sessionmaker[AsyncSession]:
    """Clean tables and queues, and an empty submissions window."""
    async with sessions() as session, session.begin():
        await session.execute(text("DELETE FROM submit_windows"))
    return sessions


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


async def _user(settings: Settings) -> Api:
    async with httpx.AsyncClient(base_url=settings.public_url) as admin:
        response = await admin.post(
            "/v1/admin/users",
            json={"name": "veo-e2e"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert response.status_code == 201, response.text
    return Api(settings.public_url, response.json()["api_key"])


class Stages:
    """The progress stages the orchestrator applied, from its lifecycle events."""

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = {}

    async def listen(self, channel: aio_pika.abc.AbstractChannel) -> None:
        await declare(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in ("generation.processing", "generation.progress"):
            await queue.bind(EVENTS, routing_key=key)

        async def record(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            event = LifecycleEvent.model_validate_json(message.body)
            if event.snapshot.progress is not None:
                stages = self.seen.setdefault(str(event.generation_id), [])
                stages.append(event.snapshot.progress.stage)

        await queue.consume(record, no_ack=True)


async def test_a_veo_generation_completes_into_s3_with_the_fakes_video_probed(
    env: dict[str, str], fresh: Any, s3_endpoint: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(s3_client(s3_endpoint).create_bucket, Bucket=BUCKET)
    async with FakeVeo(api_key=KEY, scenario="slow seconds=1.5") as veo:
        settings = load_settings(
            **{
                **env,
                **VEO_ENV,
                # Nothing is taken over here: a 2 s lease renewed late on a loaded machine let
                # the job be taken over mid-download (a second download, no second submission).
                "WORKER_LEASE_SECONDS": "30",
                "GOOGLE_GEMINI_BASE_URL": veo.base_url,
                "STORAGE_BACKEND": "s3",
                "S3_ENDPOINT_URL": s3_endpoint,
                "S3_BUCKET": BUCKET,
                "S3_REGION": "us-east-1",
                "S3_ACCESS_KEY_ID": "test",
                "S3_SECRET_ACCESS_KEY": "test",
            }
        )
        stages = Stages()
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection, running_pipeline(settings):
            await stages.listen(await connection.channel())
            api = await _user(settings)
            try:
                created = await api.create(body())
                assert created.status_code == 201, created.text
                gen_id = created.json()["id"]
                seen: list[tuple[str, float | None]] = []

                async def finished() -> dict[str, Any] | None:
                    gen = await api.get(gen_id)
                    if gen["progress"]:
                        seen.append((gen["progress"]["stage"], gen["progress"]["percent"]))
                    return gen if gen["status"] in ("completed", "failed") else None

                done = await eventually(finished, within=60, every=0.05)
                assert done["status"] == "completed", done
                result = done["result"]
                async with httpx.AsyncClient() as http:  # the presigned link, as a browser would
                    served = await http.get(result["video_url"])
            finally:
                await api.aclose()
        expected = await veo.video(1280, 720, 4)
        assert veo.submissions == 1 and veo.downloads == 1

    assert served.status_code == 200 and served.content == expected
    objects = await asyncio.to_thread(
        s3_client(s3_endpoint).list_objects_v2, Bucket=BUCKET, Prefix="videos/"
    )
    keys = sorted(o["Key"] for o in objects.get("Contents", []))
    assert len(keys) == 2 and keys[0].endswith(f"/{gen_id}.jpg") and keys[1].endswith(".mp4")
    key = keys[1]
    stored = await asyncio.to_thread(s3_client(s3_endpoint).get_object, Bucket=BUCKET, Key=key)
    data = await asyncio.to_thread(stored["Body"].read)
    assert data == expected and stored["ContentType"] == "video/mp4"
    path = tmp_path / "stored.mp4"
    path.write_bytes(data)
    probed = probe_video(path)
    assert probed.resolution == result["resolution"] == "1280x720"
    assert probed.duration_seconds == pytest.approx(4, abs=0.05)
    assert result["duration_seconds"] == pytest.approx(probed.duration_seconds)
    assert result["file_size_bytes"] == len(expected)

    order = ["queued", "submitted", "generating", "downloading", "uploading"]
    applied = stages.seen[gen_id]
    assert applied == sorted(applied, key=order.index) and set(applied) == set(order), applied
    polled = [stage for stage, _ in seen]
    assert "generating" in polled, polled  # visible in GET /v1/generations/{id}
    percents = [p for stage, p in seen if stage == "generating"]
    assert all(p is not None and 0 <= p <= 95 for p in percents)


# -- kill -9 and broker restarts ------------------------------------------------------------


async def _submitted_jobs(sessions: async_sessionmaker[AsyncSession], count: int) -> bool:
    async with sessions() as session:
        stored = await session.scalar(
            text("SELECT count(*) FROM render_jobs WHERE operation_name IS NOT NULL")
        )
    return stored == count


def _worker(reelflow: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [reelflow, "worker"],
        env={**os.environ, **env, "WORKER_METRICS_PORT": str(free_port())},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
async def fake_veo_process() -> AsyncIterator[FakeVeoProcess]:
    async with FakeVeoProcess(api_key=KEY, scenario="slow seconds=5") as veo:
        yield veo


async def test_a_worker_killed_while_waiting_is_replaced_and_nothing_is_submitted_twice(
    env: dict[str, str],
    fresh: async_sessionmaker[AsyncSession],
    fake_veo_process: FakeVeoProcess,
    reelflow_bin: str,
    tmp_path: Path,
) -> None:
    worker_env = {**env, **VEO_ENV, "GOOGLE_GEMINI_BASE_URL": fake_veo_process.base_url}
    settings = load_settings(**worker_env)
    log = tmp_path / "worker.log"
    async with running_pipeline(settings, worker=False):
        api = await _user(settings)
        first = _worker(reelflow_bin, worker_env, log)
        second = None
        try:
            ids = [(await api.create(body(f"{PROMPT}, take {n}"))).json()["id"] for n in range(3)]
            await eventually(lambda: _submitted_jobs(fresh, 3), within=30)
            first.send_signal(signal.SIGKILL)  # mid-wait: every operation still pending
            await asyncio.to_thread(first.wait, 10)
            stats = await fake_veo_process.stats()
            assert stats["operations_done"] == 0 and stats["submissions"] == 3
            second = _worker(reelflow_bin, worker_env, log)
            for gen_id in ids:
                done = await api.wait_status(gen_id, "completed", "failed", within=60)
                assert done["status"] == "completed", (done, log.read_text()[-3000:])
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.terminate()
                    await asyncio.to_thread(process.wait, 30)
            await api.aclose()
    stats = await fake_veo_process.stats()
    assert (stats["submit_attempts"], stats["submissions"]) == (3, 3)  # one per generation
    assert stats["downloads"] == 3
    async with fresh() as session:
        attempts = (await session.execute(text("SELECT attempts FROM render_jobs"))).scalars()
        assert sorted(attempts) == [2, 2, 2]  # each taken over once, after the kill


async def test_a_broker_restart_while_operations_are_pending_loses_and_doubles_nothing(
    env: dict[str, str],
    fresh: async_sessionmaker[AsyncSession],
    fake_veo_process: FakeVeoProcess,
) -> None:
    rabbit = PrivateRabbit()
    await asyncio.to_thread(rabbit.start)
    try:
        settings = load_settings(
            **{
                **env,
                **VEO_ENV,
                "GOOGLE_GEMINI_BASE_URL": fake_veo_process.base_url,
                "AMQP_URL": rabbit.url,
            }
        )
        async with running_pipeline(settings):
            api = await _user(settings)
            try:
                ids = [
                    (await api.create(body(f"{PROMPT}, cut {n}"))).json()["id"] for n in range(3)
                ]
                await eventually(lambda: _submitted_jobs(fresh, 3), within=30)
                assert (await fake_veo_process.stats())["operations_done"] == 0
                # Stopped while the operations are pending; they finish while it is down (the
                # worker's reports wait in its outbox) or after it is back.
                await asyncio.to_thread(rabbit.restart)
                for gen_id in ids:
                    done = await api.wait_status(gen_id, "completed", "failed", within=90)
                    assert done["status"] == "completed", done
            finally:
                await api.aclose()
    finally:
        await asyncio.to_thread(rabbit.close)
    stats = await fake_veo_process.stats()
    assert (stats["submit_attempts"], stats["submissions"]) == (3, 3)
