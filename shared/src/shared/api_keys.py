"""Users and their API keys, for the API (admin and `/v1/api-keys` routes) and the CLI.

A key is shown once, when it is made; afterwards only its prefix, name and dates are. A
revoked key stays listed (with `revoked_at`) and never authenticates again. `last_used_at` is
refreshed at most once per `LAST_USED_EVERY` per key, by a conditional UPDATE, so a busy key
costs no write per request, however many API instances serve it.

The API's per-request path (`find_caller`, `record_use`) is plain asyncpg, one indexed SELECT
and no ORM: it runs on every request, and building ORM objects costs more than the query. A
key is looked up on every request (no cache), so a revocation takes effect at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.auth import could_be_api_key, hash_api_key, new_api_key
from shared.db.models import ApiKey, User, utcnow

LAST_USED_EVERY = timedelta(minutes=1)
NAME_CHARS = 200


class AmbiguousKey(Exception):
    """A prefix names more than one key: give the key's id instead."""


async def create_user(
    session: AsyncSession, name: str, key_name: str | None = "first key"
) -> tuple[User, ApiKey, str]:
    """A user and its first key, staged in the caller's transaction: (user, key row, key)."""
    user = User(name=name)
    session.add(user)
    await session.flush()
    row, key = await create_key(session, user.id, key_name)
    return user, row, key


async def create_key(
    session: AsyncSession, user_id: uuid.UUID, name: str | None = None
) -> tuple[ApiKey, str]:
    """A new key for the user, staged in the caller's transaction: (row, the key, shown once)."""
    key, prefix, digest = new_api_key()
    row = ApiKey(user_id=user_id, prefix=prefix, sha256=digest, name=name)
    session.add(row)
    await session.flush()
    return row, key


async def keys_of(session: AsyncSession, user_id: uuid.UUID) -> list[ApiKey]:
    """Every key of the user, revoked ones too, newest first."""
    query = (
        select(ApiKey)
        .where(col(ApiKey.user_id) == user_id)
        .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id).desc())
    )
    return list((await session.scalars(query)).all())


async def find_key(
    session: AsyncSession, id_or_prefix: str, user_id: uuid.UUID | None = None
) -> ApiKey | None:
    """A key by its id or its visible prefix (optionally only among one user's keys)."""
    try:
        clause = col(ApiKey.id) == uuid.UUID(id_or_prefix)
    except ValueError:
        clause = col(ApiKey.prefix) == id_or_prefix
    query = select(ApiKey).where(clause)
    if user_id is not None:
        query = query.where(col(ApiKey.user_id) == user_id)
    found = list((await session.scalars(query.limit(2))).all())
    if len(found) > 1:
        raise AmbiguousKey(id_or_prefix)
    return found[0] if found else None


async def revoke(session: AsyncSession, key: ApiKey, now: datetime | None = None) -> bool:
    """Revoke the key (staged); False if it already was."""
    if key.revoked_at is not None:
        return False
    key.revoked_at = now or utcnow()
    session.add(key)
    await session.flush()
    return True


async def authenticate(session: AsyncSession, token: str) -> tuple[ApiKey, User] | None:
    """The live key this token is, and its user; None for anything else (unknown, revoked,
    malformed). Found by the SHA-256 through a unique index: the key itself is never compared."""
    if not could_be_api_key(token):
        return None
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, col(User.id) == col(ApiKey.user_id))
            .where(col(ApiKey.sha256) == hash_api_key(token), col(ApiKey.revoked_at).is_(None))
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


async def touch(session: AsyncSession, key: ApiKey, now: datetime | None = None) -> bool:
    """Record the key's use if the last record is older than `LAST_USED_EVERY` (staged).
    The condition is in the UPDATE too, so concurrent requests write it once between them."""
    now = now or utcnow()
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_EVERY:
        return False
    result = await session.execute(
        update(ApiKey)
        .where(
            col(ApiKey.id) == key.id,
            or_(
                col(ApiKey.last_used_at).is_(None),
                col(ApiKey.last_used_at) < now - LAST_USED_EVERY,
            ),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    key.last_used_at = now
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- the per-request path: plain asyncpg --------------------------------------------------------


class Queries(Protocol):
    """An asyncpg pool or connection."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...

    async def fetch(self, query: str, *args: Any) -> Any: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request is: the user (`id`, as `User.id`) and the live key it presented."""

    id: uuid.UUID
    key_id: uuid.UUID
    last_used_at: datetime | None = None


_FIND_CALLER = (
    "SELECT id, user_id, last_used_at FROM api_keys WHERE sha256 = $1 AND revoked_at IS NULL"
)
_RECORD_USE = (
    "UPDATE api_keys SET last_used_at = $2 "
    "WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)"
)


async def find_caller(pg: Queries, token: str, digest: str | None = None) -> Caller | None:
    """As `authenticate`, in one indexed query (the key's user exists: the foreign key cascades
    deletes). `digest`: `hash_api_key(token)` when the caller has it already."""
    if not could_be_api_key(token):
        return None
    row = await pg.fetchrow(_FIND_CALLER, digest or hash_api_key(token))
    return Caller(row["user_id"], row["id"], row["last_used_at"]) if row is not None else None


async def record_use(pg: Queries, caller: Caller, now: datetime | None = None) -> bool:
    """As `touch` (committed at once): a write at most once per `LAST_USED_EVERY` per key."""
    now = now or utcnow()
    if caller.last_used_at is not None and now - caller.last_used_at < LAST_USED_EVERY:
        return False
    return await pg.execute(_RECORD_USE, caller.key_id, now, now - LAST_USED_EVERY) == "UPDATE 1"
