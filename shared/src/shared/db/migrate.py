"""`reelflow migrate`: create the database if missing, then upgrade to the newest revision."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db.engine import ensure_database
from shared.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", settings.asyncpg_dsn.replace("%", "%%"))
    return config


def _upgrade(settings: Settings) -> None:
    # "heads": parallel branches of revisions (merged later) all apply.
    command.upgrade(alembic_config(settings), "heads")


async def migrate(settings: Settings) -> None:
    await ensure_database(settings)
    # Alembic's env runs its own event loop; keep it off ours.
    await asyncio.to_thread(_upgrade, settings)
