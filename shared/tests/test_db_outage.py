"""A database outage is told from a bug, and waited out for a bounded time."""

from __future__ import annotations

import asyncpg
import pytest
from shared.db.outage import is_outage, outlast_outage
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import free_port


async def refused_by_the_driver() -> BaseException:
    try:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout=5)
    except Exception as error:
        return error
    raise AssertionError("nothing listens there")


async def test_a_refused_database_connection_is_an_outage_and_a_bug_is_not() -> None:
    assert is_outage(await refused_by_the_driver())
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    try:
        async with engine.connect():
            raise AssertionError("nothing listens there")
    except Exception as error:
        assert is_outage(error)  # through SQLAlchemy's pool, as the services meet it
    finally:
        await engine.dispose()
    pool = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/x", min_size=0, timeout=5
    )
    try:
        async with pool.acquire():
            raise AssertionError("nothing listens there")
    except Exception as error:
        assert is_outage(error)  # through a plain asyncpg pool (the orchestrator's consumers)
    finally:
        await pool.close()
    # A refused connection elsewhere (say, a webhook receiver) and plain bugs are not.
    assert not is_outage(ConnectionRefusedError(111, "refused"))
    assert not is_outage(ValueError("bug"))
    assert not is_outage(asyncpg.exceptions.UniqueViolationError("duplicate"))


async def test_an_outage_is_retried_until_it_ends_and_then_given_up() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise await refused_by_the_driver()
        return "done"

    assert await outlast_outage(flaky, patience=5, what="test", first_pause=0.01) == "done"
    assert len(calls) == 3

    async def down() -> None:
        calls.append(1)
        raise await refused_by_the_driver()

    calls.clear()
    with pytest.raises(OSError):
        await outlast_outage(down, patience=0.05, what="test", first_pause=0.01)
    assert 3 <= len(calls) <= 6  # paused 0.01, 0.02, 0.04 (>= 0.05 in all), then gave up

    async def bug() -> None:
        calls.append(1)
        raise ValueError("bug")

    calls.clear()
    with pytest.raises(ValueError):
        await outlast_outage(bug, patience=5, what="test")
    assert len(calls) == 1
