"""Plain asyncpg pools, beside SQLAlchemy's engine, for the statements a service runs per
request or per message: through the ORM each costs several times the query itself (statement
compilation, identity map, instrumented objects, a greenlet per call); here each is a prepared
statement (asyncpg caches them per connection). JSON columns come back decoded, as the ORM's do.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg

from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("DATABASE")

CLOSE_GRACE_SECONDS = 10.0  # for connections still in use when the pool closes


async def _json_codecs(conn: Any) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: Any) -> None:
    """On release, asyncpg by default resets the session (`RESET ALL`, `CLOSE ALL`, `UNLISTEN`,
    advisory unlocks): a round trip per release. A pool whose statements leave no session
    state (no SET, LISTEN, cursor or session lock) needs none; an open transaction is still
    rolled back (asyncpg does that before calling this)."""


def dsn(settings: Settings) -> str:
    """DATABASE_URL as libpq spells it (asyncpg does not take SQLAlchemy's dialect prefix)."""
    url = settings.database_url
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


async def open_pool(
    settings: Settings, *, size: int, min_size: int = 0, reset_sessions: bool = True
) -> asyncpg.Pool:
    """With `min_size=0` connections are made when first needed, so a service starts (and says
    it is not ready) while the database is down. `reset_sessions=False`: see `_keep_session`."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn(settings),
        min_size=min_size,
        max_size=size,
        init=_json_codecs,
        **({} if reset_sessions else {"reset": _keep_session}),
    )
    return pool


async def close_pool(pool: asyncpg.Pool, *, within: float | None = None) -> None:
    """Close `pool`, waiting for connections still in use up to `within` seconds (default
    `CLOSE_GRACE_SECONDS`); those left then are closed by force. asyncpg's `close` waits for
    every connection to come back: one never released (a stuck query, a leaked acquire) would
    hold a stopping service for ever."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_SECONDS if within is None else within):
            await pool.close()
    except TimeoutError:
        log.warning("Database connections still in use at shutdown: closed by force")
        pool.terminate()
