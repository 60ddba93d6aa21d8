"""Fixtures for every test in the workspace: a real PostgreSQL database and a RabbitMQ vhost of
their own, so a developer's `make run` and the suite never see each other's messages."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import migrate
from shared.settings import Settings, load_settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.support import ADMIN_KEY, NO_LIMITS, free_port

# One database and one vhost per test run (by default named after the pytest process), so runs
# beside each other on one machine never drop each other's data; dropped again at the end.
RUN_NAME = f"reelflow_test_{os.getpid()}"
TEST_DB = os.environ.get("REELFLOW_TEST_DB", RUN_NAME)
TEST_VHOST = os.environ.get("REELFLOW_TEST_VHOST", RUN_NAME)
PG = os.environ.get("REELFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
AMQP = os.environ.get("REELFLOW_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=False, capture_output=True, timeout=60)


def fresh_vhost(name: str) -> None:
    """An empty vhost: no queues or messages left from an earlier run."""
    _rabbitmqctl("delete_vhost", name)
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")


# How long before pytest-timeout's limit the watchdog below prints what every task awaits.
TASKS_DUMPED_BEFORE_TIMEOUT = 15.0


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    out = io.StringIO()
    tasks = asyncio.all_tasks(loop)
    out.write(f"\n=== test about to time out: {len(tasks)} asyncio tasks ===\n")
    for task in tasks:
        task.print_stack(limit=12, file=out)
    sys.stderr.write(out.getvalue())
    # What the broker complained of lately (a refused connection says why only in its log).
    threading.Thread(target=_broker_complaints, daemon=True).start()


def _broker_complaints() -> None:
    try:
        tail = subprocess.run(
            ["rabbitmq-diagnostics", "-q", "log_tail", "--number", "500"],
            capture_output=True,
            text=True,
            timeout=12,
            check=False,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as exc:
        tail = [f"(rabbitmq-diagnostics log_tail failed: {exc})"]
    complaints = [line for line in tail if "[error]" in line or "[warning]" in line]
    sys.stderr.write("=== RabbitMQ's last warnings and errors ===\n" + "\n".join(complaints[-30:]))


@pytest.fixture(autouse=True)
async def _tasks_dumped_before_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """pytest-timeout shows only threads, and a hung async test sits in the event loop's
    `select`: just before the limit, print every task's stack (what each one awaits)."""
    marker = request.node.get_closest_marker("timeout")
    limit = (
        float(marker.args[0])
        if marker and marker.args
        else float(request.config.getini("timeout") or 0)
    )
    if limit <= TASKS_DUMPED_BEFORE_TIMEOUT:
        yield
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_later(limit - TASKS_DUMPED_BEFORE_TIMEOUT, _dump_tasks, loop)
    try:
        yield
    finally:
        handle.cancel()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def env(media_dir: Path) -> dict[str, str]:
    """The environment a test's services run with (also handed to subprocesses)."""
    return {
        "DATABASE_URL": f"{PG}/{TEST_DB}",
        "AMQP_URL": f"{AMQP}/{TEST_VHOST}",
        "ADMIN_API_KEY": ADMIN_KEY,
        "LOCAL_STORAGE_DIR": str(media_dir),
        "API_PORT": str(free_port()),
        "ORCHESTRATOR_METRICS_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
        "NOTIFIER_METRICS_PORT": str(free_port()),
        "VIDEO_PROVIDER": "local",
        "MEDIA_SIGNING_KEY": "test-media-signing-key",
        **NO_LIMITS,
    }


@pytest.fixture(scope="session")
def settings(env: dict[str, str]) -> Settings:
    return load_settings(**{k: v for k, v in env.items()})


@pytest.fixture(scope="session")
async def prepared(settings: Settings) -> AsyncIterator[Settings]:
    """A freshly migrated test database and an empty vhost, once per session."""
    await _drop_abandoned_runs()
    await _drop_database(TEST_DB)
    await migrate(settings)
    await asyncio.to_thread(fresh_vhost, TEST_VHOST)
    yield settings
    if TEST_DB == RUN_NAME:
        await _drop_database(TEST_DB)
    if TEST_VHOST == RUN_NAME:
        await asyncio.to_thread(_rabbitmqctl, "delete_vhost", TEST_VHOST)


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _drop_abandoned_runs() -> None:
    """Databases of earlier runs whose pytest process is gone (killed before its teardown)."""
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        names = [
            r["datname"]
            for r in await conn.fetch(
                "SELECT datname FROM pg_database "
                "WHERE datname ~ '^reelflow_test(_migrations)?_[0-9]+$'"
            )
        ]
    finally:
        await conn.close()
    for name in names:
        if not os.path.exists(f"/proc/{name.rsplit('_', 1)[1]}"):  # noqa: ASYNC240 (procfs)
            await _drop_database(name)


@pytest.fixture(scope="session")
async def sessions(prepared: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(prepared, pool_size=5)
    yield make_sessionmaker(engine)
    await engine.dispose()


TABLES = (
    "webhook_attempts, webhook_deliveries, webhook_endpoints, messages, render_jobs, "
    "generations, conversations, users, outbox, inbox"
)


async def purge_queues(amqp_url: str) -> None:
    """Empty every queue of the topology, so no test sees another's leftover messages."""
    from shared.topology import DELAY_QUEUES, WORK_QUEUES

    names = [n for q in WORK_QUEUES for n in (q.name, q.dlq)] + [q.name for q in DELAY_QUEUES]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in names:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                await queue.purge()
                await channel.close()
            except aio_pika.exceptions.ChannelClosed:
                pass  # not declared yet in this vhost


@pytest.fixture
async def clean_db(sessions: async_sessionmaker[AsyncSession], prepared: Settings) -> None:
    """A clean slate: empty tables and empty queues."""
    await purge_queues(prepared.amqp_url)
    async with sessions() as session, session.begin():
        await session.execute(text(f"TRUNCATE {TABLES} CASCADE"))


@pytest.fixture(scope="session")
def reelflow_bin() -> str:
    path = shutil.which("reelflow")
    assert path, "the reelflow command is not installed in this environment"
    return path
