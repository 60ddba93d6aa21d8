"""shared.inbox's batched claim on plain asyncpg (`claim_many_plain`)."""

from __future__ import annotations

import uuid

import pytest
from shared.db.raw import open_pool
from shared.inbox import claim_many_plain, claim_plain
from shared.settings import Settings

pytestmark = pytest.mark.usefixtures("clean_db")


async def test_a_batch_claims_each_new_id_once_and_none_applied_before(prepared: Settings) -> None:
    pool = await open_pool(prepared, size=1)
    try:
        before, new, twice = (str(uuid.uuid4()) for _ in range(3))
        async with pool.acquire() as conn:
            async with conn.transaction():
                assert await claim_plain(conn, "test.batch", before)
            async with conn.transaction():
                claimed = await claim_many_plain(conn, "test.batch", [before, new, twice, twice])
            assert claimed == {new, twice}
            # Another consumer's inbox is its own.
            async with conn.transaction():
                assert await claim_many_plain(conn, "test.other", [before]) == {before}
            rows = await conn.fetchval(
                "SELECT count(*) FROM inbox WHERE consumer = 'test.batch' AND message_id = $1",
                twice,
            )
            assert rows == 1
            async with conn.transaction():
                assert await claim_many_plain(conn, "test.batch", [new, twice]) == set()
    finally:
        await pool.close()
