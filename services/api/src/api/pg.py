"""The API's raw pool for its hot paths: the caller's key, the rate limit, a status read, the
opening of a live stream (`shared.db.raw`). The rest of the API keeps SQLAlchemy's engine:
writes, moves, pages. Its queries leave no session state, so releases skip the reset.
"""

from __future__ import annotations

import asyncpg
from shared.db.raw import open_pool as open_raw_pool
from shared.settings import Settings

POOL_SIZE = 10


async def open_pool(settings: Settings, *, size: int = POOL_SIZE) -> asyncpg.Pool:
    return await open_raw_pool(settings, size=size, reset_sessions=False)
