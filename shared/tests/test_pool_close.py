"""`shared.db.raw.close_pool`: a stopping service is not held for ever by a connection that was
never given back (asyncpg's `Pool.close` waits for every one)."""

from __future__ import annotations

import asyncpg
import pytest
from shared.db.raw import close_pool, open_pool
from shared.settings import Settings


async def test_a_pool_with_a_connection_never_released_closes_within_the_grace(
    prepared: Settings,
) -> None:
    pool = await open_pool(prepared, size=2)
    leaked = await pool.acquire()  # a stuck request's, never released
    await leaked.fetchval("SELECT 1")
    await close_pool(pool, within=0.5)  # with asyncpg's close alone: waits for ever
    # Ended by the grace, not by the connection: it was closed by force.
    assert pool.is_closing()
    with pytest.raises(asyncpg.InterfaceError):  # the leaked connection is gone with it
        await leaked.fetchval("SELECT 1")


async def test_a_pool_whose_connections_came_back_closes_at_once(prepared: Settings) -> None:
    pool = await open_pool(prepared, size=2)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    await close_pool(pool, within=30)
    assert pool.is_closing()
