"""API keys: `rf_live_` keys shown once and stored as a SHA-256 only, several per user, each
revocable, last use recorded at most once a minute; keys made before (`rf_…`, on the users row)
keep working through the migration that moves them into `api_keys`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from shared.api_keys import authenticate
from shared.auth import PREFIX_CHARS
from shared.db.engine import ensure_database, make_engine, make_sessionmaker
from shared.db.migrate import alembic_config
from shared.db.models import ApiKey, utcnow
from shared.settings import Settings
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

Sessions = async_sessionmaker[AsyncSession]
MakeUser = Callable[[str], Awaitable[dict[str, Any]]]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def keys_in_db(sessions: Sessions, user_id: str) -> list[ApiKey]:
    async with sessions() as s:
        query = select(ApiKey).where(col(ApiKey.user_id) == uuid.UUID(user_id))
        return list((await s.scalars(query.order_by(col(ApiKey.created_at)))).all())


async def test_a_key_is_shown_once_and_only_its_sha256_is_kept(
    client: httpx.AsyncClient, make_user: MakeUser, sessions: Sessions
) -> None:
    alice = await make_user("alice")
    key = alice["api_key"]
    assert key.startswith("rf_live_") and len(key) >= 48
    [row] = await keys_in_db(sessions, alice["id"])
    assert row.sha256 == hashlib.sha256(key.encode()).hexdigest()
    assert row.prefix == key[:PREFIX_CHARS] and row.revoked_at is None
    async with sessions() as s:
        dump = json.dumps(
            [dict(r) for r in (await s.execute(text("SELECT * FROM api_keys"))).mappings()]
            + [dict(r) for r in (await s.execute(text("SELECT * FROM users"))).mappings()],
            default=str,
        )
    assert key not in dump and key[PREFIX_CHARS:] not in dump
    listed = (await client.get("/v1/api-keys", headers=alice["headers"])).json()["items"]
    assert [k["prefix"] for k in listed] == [row.prefix]
    assert key not in json.dumps(listed) and listed[0]["current"] is True


async def test_several_keys_each_revocable(
    client: httpx.AsyncClient, make_user: MakeUser, problem: Any
) -> None:
    alice = await make_user("alice")
    made = await client.post("/v1/api-keys", json={"name": " ci "}, headers=alice["headers"])
    assert made.status_code == 201, made.text
    second = made.json()
    assert second["name"] == "ci" and second["api_key"].startswith("rf_live_")
    assert made.headers["location"] == f"/v1/api-keys/{second['id']}"
    for key in (alice["api_key"], second["api_key"]):
        assert (await client.get("/v1/generations", headers=bearer(key))).status_code == 200

    listed = (await client.get("/v1/api-keys", headers=bearer(second["api_key"]))).json()
    assert {k["id"]: k["current"] for k in listed["items"]} == {
        second["id"]: True,
        **{k["id"]: False for k in listed["items"] if k["id"] != second["id"]},
    }
    assert len(listed["items"]) == 2 and "api_key" not in json.dumps(listed)

    r = await client.delete(f"/v1/api-keys/{second['id']}", headers=alice["headers"])
    assert r.status_code == 204
    problem(await client.get("/v1/generations", headers=bearer(second["api_key"])), 401)
    assert (await client.get("/v1/generations", headers=alice["headers"])).status_code == 200
    again = await client.delete(f"/v1/api-keys/{second['id']}", headers=alice["headers"])
    assert again.status_code == 204  # revoking twice changes nothing
    items = (await client.get("/v1/api-keys", headers=alice["headers"])).json()["items"]
    revoked = next(k for k in items if k["id"] == second["id"])
    assert revoked["revoked_at"] is not None

    # A key may revoke itself: the request that does it is the last one it makes.
    own = next(k for k in items if k["current"])
    r = await client.delete(f"/v1/api-keys/{own['id']}", headers=alice["headers"])
    assert r.status_code == 204
    problem(await client.get("/v1/api-keys", headers=alice["headers"]), 401)


async def test_bad_bodies_and_unknown_keys(
    client: httpx.AsyncClient, make_user: MakeUser, problem: Any
) -> None:
    alice = await make_user("alice")
    for body in ({"name": ""}, {"name": "x" * 201}, {"name": 3}, {"extra": 1}):
        problem(await client.post("/v1/api-keys", json=body, headers=alice["headers"]), 422)
    for key_id in (str(uuid.uuid4()), "not-a-uuid"):
        problem(await client.delete(f"/v1/api-keys/{key_id}", headers=alice["headers"]), 404)


async def test_the_last_use_is_written_at_most_once_a_minute(
    client: httpx.AsyncClient, make_user: MakeUser, sessions: Sessions
) -> None:
    alice = await make_user("alice")
    assert (await keys_in_db(sessions, alice["id"]))[0].last_used_at is None  # not used yet
    assert (await client.get("/v1/generations", headers=alice["headers"])).status_code == 200
    [row] = await keys_in_db(sessions, alice["id"])
    assert row.last_used_at is not None
    first = row.last_used_at
    for _ in range(20):
        assert (await client.get("/v1/generations", headers=alice["headers"])).status_code == 200
    assert (await keys_in_db(sessions, alice["id"]))[0].last_used_at == first  # no write

    earlier = utcnow() - timedelta(seconds=61)
    async with sessions() as s, s.begin():
        await s.execute(update(ApiKey).where(col(ApiKey.id) == row.id).values(last_used_at=earlier))
    await asyncio.gather(
        *(client.get("/v1/generations", headers=alice["headers"]) for _ in range(10))
    )
    [after] = await keys_in_db(sessions, alice["id"])
    assert after.last_used_at is not None and after.last_used_at > earlier + timedelta(seconds=60)
    listed = (await client.get("/v1/api-keys", headers=alice["headers"])).json()["items"]
    assert listed[0]["last_used_at"] is not None


async def test_a_key_of_the_old_form_still_works(
    client: httpx.AsyncClient, make_user: MakeUser, sessions: Sessions
) -> None:
    alice = await make_user("alice")
    old = "rf_" + secrets.token_urlsafe(32)
    async with sessions() as s, s.begin():
        s.add(
            ApiKey(
                user_id=uuid.UUID(alice["id"]),
                prefix=old[:10],
                sha256=hashlib.sha256(old.encode()).hexdigest(),
                name="first key",
            )
        )
    r = await client.get("/v1/generations", headers=bearer(old))
    assert r.status_code == 200


@pytest.fixture
async def migration_db(prepared: Settings) -> Any:
    """A database of its own, for the migration's own test."""
    name = f"{prepared.asyncpg_dsn.rsplit('/', 1)[1]}_migration"
    settings = prepared.model_copy(
        update={"database_url": prepared.database_url.rsplit("/", 1)[0] + f"/{name}"}
    )
    admin = prepared.database_url.rsplit("/", 1)[0].replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(f"{admin}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    await ensure_database(settings)
    yield settings
    conn = await asyncpg.connect(f"{admin}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_the_migration_moves_existing_keys(migration_db: Settings) -> None:
    """Users made before 0005 keep their keys: moved into api_keys, cleared from users."""
    config = alembic_config(migration_db)
    await asyncio.to_thread(command.upgrade, config, "0001")
    old = "rf_" + secrets.token_urlsafe(32)
    user_id = uuid.uuid4()
    engine = make_engine(migration_db, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO users (id, name, api_key_prefix, api_key_sha256, created_at) "
                    "VALUES (:i, 'before', :p, :h, now())"
                ),
                {"i": user_id, "p": old[:10], "h": hashlib.sha256(old.encode()).hexdigest()},
            )
        await asyncio.to_thread(command.upgrade, config, "heads")
        async with make_sessionmaker(engine)() as session:
            found = await authenticate(session, old)
            assert found is not None and found[1].id == user_id
            assert found[0].prefix == old[:10] and found[0].name == "first key"
            row = (
                await session.execute(
                    text("SELECT api_key_prefix, api_key_sha256 FROM users WHERE id = :i"),
                    {"i": user_id},
                )
            ).one()
            assert tuple(row) == (None, None)
    finally:
        await engine.dispose()
