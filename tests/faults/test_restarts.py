"""Reconnection: services survive a RabbitMQ restart and a PostgreSQL restart without being
restarted themselves; consumers come back; what is published during the outage waits in the
outbox. Each test runs on private servers (tests/infra.py) so restarting them disturbs no one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import migrate
from shared.db.models import Generation, User
from shared.settings import Settings, load_settings
from sqlalchemy import text

from tests.e2e.harness import eventually
from tests.infra import PrivatePostgres, PrivateRabbit

DETAILED = "A red fox running through fresh snow at dawn, cinematic tracking shot"


@pytest.fixture
async def rabbit() -> AsyncIterator[PrivateRabbit]:
    node = PrivateRabbit()
    await asyncio.to_thread(node.start)
    yield node
    await asyncio.to_thread(node.close)


@pytest.fixture
async def postgres() -> AsyncIterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    await asyncio.to_thread(cluster.start)
    yield cluster
    await asyncio.to_thread(cluster.close)


async def _seed_generation(settings: Settings) -> uuid.UUID:
    engine = make_engine(settings, pool_size=1)
    try:
        user = User(name="faults", api_key_prefix="rf_x", api_key_sha256=uuid.uuid4().hex)
        gen = Generation(
            user_id=user.id,
            status="pending_clarification",
            prompt=DETAILED,
            params={"aspect_ratio": "16:9", "duration_seconds": 4},
        )
        async with make_sessionmaker(engine)() as session, session.begin():
            session.add(user)
            await session.flush()
            session.add(gen)
        return gen.id
    finally:
        await engine.dispose()


async def _status(settings: Settings, gid: uuid.UUID) -> str:
    engine = make_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            return str(
                await conn.scalar(text("SELECT status FROM generations WHERE id = :i"), {"i": gid})
            )
    finally:
        await engine.dispose()


async def _request(settings: Settings, gid: uuid.UUID) -> None:
    """What the API does: the generation.requested message, through the outbox."""
    from shared.messages import GenerationRequested
    from shared.outbox import enqueue

    engine = make_engine(settings, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            user_id = await session.scalar(
                text("SELECT user_id FROM generations WHERE id = :i"), {"i": gid}
            )
            enqueue(session, GenerationRequested(generation_id=gid, user_id=user_id))
    finally:
        await engine.dispose()


async def test_broker_restart_consumers_come_back_and_outbox_waits(
    rabbit: PrivateRabbit, env: dict[str, str], prepared: Settings, clean_db: None
) -> None:
    from orchestrator.main import build

    settings = load_settings(**{**env, "AMQP_URL": rabbit.url})
    service = build(settings)
    await service.start()
    try:
        assert (await service.ready())["ok"]
        await asyncio.to_thread(rabbit.stop)
        assert not (await service.ready())["ok"]  # readiness tells the truth during the outage

        # A request made while the broker is down waits in the outbox ...
        gid = await _seed_generation(settings)
        await _request(settings, gid)
        service.runtime.relay.wake()
        await asyncio.sleep(1)
        assert await _status(settings, gid) == "pending_clarification"

        await asyncio.to_thread(rabbit.start)

        async def consumers_back() -> bool:
            checks = await service.ready()
            return bool(checks["ok"])

        await eventually(consumers_back, within=60, every=0.5)

        # ... and is applied once the broker is back, by the same, never-restarted process.
        async def applied() -> bool:
            return await _status(settings, gid) == "pending_confirmation"

        await eventually(applied, within=30)
    finally:
        await service.stop()


async def test_database_restart_service_keeps_going(
    postgres: PrivatePostgres, env: dict[str, str]
) -> None:
    from orchestrator.main import build

    settings = load_settings(**{**env, "DATABASE_URL": f"{postgres.url}/reelflow"})
    await migrate(settings)
    service = build(settings)
    await service.start()
    try:
        first = await _seed_generation(settings)
        await _request(settings, first)
        await eventually(lambda: _is(settings, first, "pending_confirmation"), within=30)

        await asyncio.to_thread(postgres.restart)
        assert (await service.ready())["database"] in (True, False)  # it answers, not crashes

        second = await _seed_generation(settings)
        await _request(settings, second)
        service.runtime.relay.wake()
        await eventually(lambda: _is(settings, second, "pending_confirmation"), within=60)
        assert (await service.ready())["ok"]
    finally:
        await service.stop()


async def _is(settings: Settings, gid: uuid.UUID, status: str) -> bool:
    return await _status(settings, gid) == status
