"""Plain asyncpg for the API's hot paths: the caller's key, the rate limit, a status read, the
opening of a live stream. They run on every request, and through the ORM they cost several
times the query itself (statement compilation, identity map, instrumented objects); here each
is one prepared statement on a pool of its own, beside SQLAlchemy's engine (which the rest of
the API keeps using: writes, moves, pages). JSON columns come back decoded, as the ORM's do.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from shared.settings import Settings

POOL_SIZE = 10


async def _setup(conn: Any) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: Any) -> None:
    """On release, asyncpg by default resets the session (`RESET ALL`, `CLOSE ALL`, `UNLISTEN`,
    advisory unlocks): a round trip per query on this pool. Its queries leave no session state
    (no SET, LISTEN, cursor or lock), so nothing needs resetting; an open transaction is still
    rolled back (asyncpg does that before calling this)."""


def dsn(settings: Settings) -> str:
    url = settings.database_url
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


async def open_pool(settings: Settings, *, size: int = POOL_SIZE) -> asyncpg.Pool:
    """Connections are made when first needed: the API starts (and says it is not ready)
    while the database is down."""
    return await asyncpg.create_pool(
        dsn(settings), min_size=0, max_size=size, init=_setup, reset=_keep_session
    )
