"""Fixtures for the worker's tests: the service running in the test's event loop, generation
rows written directly, render commands published and reports observed on the real broker."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, DeliveryMode
from shared.db.models import Generation, RenderJob, User, utcnow
from shared.messages import RenderReported, RenderRequested
from shared.schemas import RenderSpec
from shared.settings import Settings
from shared.topology import COMMANDS, EVENTS, NOTIFIER_EVENTS, ORCHESTRATOR_REPORTS, declare
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from veo_worker.handlers import RenderCommands
from veo_worker.main import WorkerService, build
from veo_worker.scheduler import Scheduler

from tests.support import eventually, free_port, record_bound

PROMPT = "A paper boat drifting down a rain-soaked city street, neon reflections"

Eventually = Callable[..., Awaitable[Any]]


@pytest.fixture(name="eventually")
def eventually_fixture() -> Eventually:
    return eventually


@dataclass
class Reports:
    """Every render report published, in arrival order."""

    messages: list[AbstractIncomingMessage] = field(default_factory=list)

    def of(self, generation_id: uuid.UUID) -> list[RenderReported]:
        return [
            RenderReported.model_validate_json(m.body)
            for m in self.messages
            if m.correlation_id == str(generation_id)
        ]

    def kinds(self, generation_id: uuid.UUID) -> list[str]:
        return [r.kind for r in self.of(generation_id)]


@dataclass
class Bus:
    channel: AbstractChannel

    async def reports(self) -> Reports:
        return Reports(await record_bound(self.channel, EVENTS, "render.*"))

    async def render(
        self,
        command: RenderRequested,
        *,
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Publish the command as the orchestrator's relay would; its message id."""
        message_id = message_id or str(uuid.uuid4())
        await self.publish_raw(
            command.model_dump_json().encode(),
            type_=command.TYPE,
            message_id=message_id,
            correlation_id=str(command.generation_id),
            headers=headers,
        )
        return message_id

    async def publish_raw(
        self,
        body: bytes,
        *,
        type_: str,
        message_id: str,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        await (await self.channel.get_exchange(COMMANDS)).publish(
            aio_pika.Message(
                body,
                message_id=message_id,
                type=type_,
                correlation_id=correlation_id,
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                headers=headers,
            ),
            routing_key="render.requested",
            mandatory=True,
        )

    async def queue_depth(self, name: str) -> int:
        queue = await self.channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


@pytest.fixture
async def bus(prepared: Settings) -> AsyncIterator[Bus]:
    connection = await aio_pika.connect(prepared.amqp_url)
    async with connection:
        channel = await connection.channel()
        await declare(channel)  # reports can be observed before any service has started
        yield Bus(channel)


@pytest.fixture
async def reports(bus: Bus) -> Reports:
    """The render reports published during the test (the tap is bound before it renders)."""
    return await bus.reports()


@dataclass
class Running:
    service: WorkerService

    @property
    def scheduler(self) -> Scheduler:
        """Outcomes of the jobs this worker held (`scheduler.outcomes`)."""
        return self.service.scheduler

    @property
    def commands(self) -> RenderCommands:
        """Outcomes of the render commands it recorded (`commands.outcomes`)."""
        return self.service.commands


async def _purge_unconsumed(settings: Settings) -> None:
    """Nobody consumes the reports and events here; leave none for later tests' services."""
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (ORCHESTRATOR_REPORTS.name, NOTIFIER_EVENTS.name):
            await (await channel.get_queue(name)).purge()


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[Running]:
    # A port of its own: a worker left running by a test that timed out must not keep every
    # later test's worker from starting (uvicorn exits when its port is taken).
    service = build(settings.model_copy(update={"metrics_port_worker": free_port()}))
    await service.start()
    try:
        yield Running(service)
    finally:
        await service.stop()
        await _purge_unconsumed(settings)


RunWorker = Callable[[Settings], contextlib.AbstractAsyncContextManager[Running]]


@pytest.fixture(name="running_worker")
def running_worker_fixture(clean_db: None) -> RunWorker:
    """Start a worker with other settings: `async with running_worker(settings) as w:`."""
    return running_worker


@pytest.fixture
def worker_settings(prepared: Settings) -> Settings:
    """The suite's settings with a short lease: a dead worker's jobs are taken over in ~2 s."""
    return prepared.model_copy(update={"worker_lease_seconds": 2.0})


@pytest.fixture
async def worker(worker_settings: Settings, clean_db: None) -> AsyncIterator[Running]:
    async with running_worker(worker_settings) as running:
        yield running


def spec(aspect_ratio: str = "16:9", duration_seconds: int = 4, **fields: Any) -> RenderSpec:
    values: dict[str, Any] = {
        "model": "local",
        "prompt": PROMPT,
        "aspect_ratio": aspect_ratio,
        "resolution": "720p",
        "duration_seconds": duration_seconds,
        **fields,
    }
    return RenderSpec.model_validate(values)


@dataclass
class Rows:
    sessions: async_sessionmaker[AsyncSession]
    spec = staticmethod(spec)

    async def command(
        self, render_spec: RenderSpec | None = None, *, status: str = "confirmed"
    ) -> RenderRequested:
        """A user, a generation in `status`, and the render command the orchestrator would send."""
        render_spec = render_spec or spec()
        user = User(name="test", api_key_prefix="rf_test", api_key_sha256=uuid.uuid4().hex)
        gen = Generation(
            user_id=user.id,
            status=status,
            prompt=render_spec.prompt,
            params={},
            spec=render_spec.model_dump(mode="json"),
        )
        async with self.sessions() as session, session.begin():
            session.add(user)
            await session.flush()
            session.add(gen)
        return RenderRequested(generation_id=gen.id, user_id=user.id, spec=render_spec)

    async def job(self, generation_id: uuid.UUID) -> RenderJob | None:
        async with self.sessions() as session:
            return await session.get(RenderJob, generation_id)

    async def job_status(self, generation_id: uuid.UUID) -> str | None:
        job = await self.job(generation_id)
        return job.status if job else None

    async def set_status(self, generation_id: uuid.UUID, status: str) -> None:
        """What the API's cancel does, as far as the worker can see."""
        async with self.sessions() as session, session.begin():
            gen = await session.get(Generation, generation_id)
            assert gen is not None
            gen.status = status
            gen.version += 1

    async def add_job(self, command: RenderRequested, **fields: Any) -> None:
        """A job row as an earlier attempt would have left it; `crashed=True` gives it the
        expired lease of a worker that died holding it."""
        if fields.pop("crashed", False):
            fields.update(lease_owner="dead-worker", lease_until=utcnow() - timedelta(seconds=5))
        fields.setdefault("provider", "local")
        async with self.sessions() as session, session.begin():
            session.add(
                RenderJob(
                    generation_id=command.generation_id,
                    user_id=command.user_id,
                    spec=command.spec.model_dump(mode="json"),
                    **fields,
                )
            )

    async def reset_window(self) -> None:
        """An empty submissions window (no test inherits another's submissions)."""
        async with self.sessions() as session, session.begin():
            await session.execute(text("DELETE FROM submit_windows"))


@pytest.fixture
def rows(sessions: async_sessionmaker[AsyncSession]) -> Rows:
    return Rows(sessions)
