"""The migrations build exactly the schema the models describe, and go down and up again."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import shared.db.models  # noqa: F401  (registers the tables)
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from shared.db.migrate import alembic_config, migrate
from shared.settings import load_settings
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import SQLModel

DB = f"reelflow_test_migrations_{os.getpid()}"  # this run's own, like conftest.py's


async def test_migrations_match_the_models_and_reverse(env: dict[str, str]) -> None:
    admin = await asyncpg.connect(env["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await admin.close()
    settings = load_settings(
        **{**env, "DATABASE_URL": env["DATABASE_URL"].rsplit("/", 1)[0] + f"/{DB}"}
    )
    await migrate(settings)
    engine = create_async_engine(settings.asyncpg_dsn)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), SQLModel.metadata)
        )
    await engine.dispose()
    assert diff == [], diff
    config = alembic_config(settings)
    await asyncio.to_thread(command.downgrade, config, "base")
    await migrate(settings)  # and back up, from nothing
    admin = await asyncpg.connect(env["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await admin.close()
