"""`reelflow users create NAME` and `reelflow keys create|revoke|list`: the operator's side of
users and their API keys (`shared.api_keys`). A key is printed once, when it is made."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.api_keys import AmbiguousKey, create_key, create_user, find_key, keys_of, revoke
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import User
from shared.settings import Settings
from sqlalchemy.ext.asyncio import AsyncSession

NAME_CHARS = 200


class CliError(Exception):
    """A one-line reason the command could not do what was asked (exit status 1)."""


@asynccontextmanager
async def _session(settings: Settings) -> AsyncIterator[AsyncSession]:
    engine = make_engine(settings, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            yield session
    finally:
        await engine.dispose()


def _name(name: str | None) -> str | None:
    if name is None:
        return None
    clean = name.strip()
    if not clean or len(clean) > NAME_CHARS or "\x00" in clean:
        raise CliError(f"a name must be 1-{NAME_CHARS} characters")
    return clean


def _user_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise CliError(f"{text!r} is not a user id") from None


async def new_user(settings: Settings, name: str) -> tuple[uuid.UUID, str]:
    clean = _name(name)
    assert clean is not None
    async with _session(settings) as session:
        user, _, key = await create_user(session, clean)
        return user.id, key


async def new_key(settings: Settings, user_id: str, name: str | None) -> tuple[str, str, str]:
    """(key id, prefix, the key)."""
    uid, clean = _user_id(user_id), _name(name)
    async with _session(settings) as session:
        if await session.get(User, uid) is None:
            raise CliError(f"no user {uid}")
        row, key = await create_key(session, uid, clean)
        return str(row.id), row.prefix, key


async def revoke_key(settings: Settings, id_or_prefix: str) -> str:
    async with _session(settings) as session:
        try:
            row = await find_key(session, id_or_prefix.strip())
        except AmbiguousKey:
            raise CliError(f"{id_or_prefix!r} names several keys; give the key's id") from None
        if row is None:
            raise CliError(f"no key {id_or_prefix!r}")
        if not await revoke(session, row):
            return f"key {row.id} ({row.prefix}…) was already revoked"
        return f"key {row.id} ({row.prefix}…) revoked"


async def list_keys(settings: Settings, user_id: str) -> list[str]:
    uid = _user_id(user_id)
    async with _session(settings) as session:
        if await session.get(User, uid) is None:
            raise CliError(f"no user {uid}")
        rows = await keys_of(session, uid)
    lines = [f"{'id':36}  {'prefix':17}  {'state':7}  {'last used':25}  name"]
    for k in rows:
        state = "revoked" if k.revoked_at else "live"
        used = k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "never"
        lines.append(f"{k.id!s:36}  {k.prefix + '…':17}  {state:7}  {used:25}  {k.name or ''}")
    return lines


async def run(settings: Settings, command: str, args: argparse.Namespace) -> int:
    """`users create` and `keys …`; prints the result, or one line on stderr (exit 1)."""
    try:
        if command == "users":
            user_id, key = await new_user(settings, args.name)
            print(f"user {user_id} created; API key (shown once): {key}")
        elif args.keys_command == "create":
            key_id, _, key = await new_key(settings, args.user_id, args.name)
            print(f"key {key_id} created; API key (shown once): {key}")
        elif args.keys_command == "revoke":
            print(await revoke_key(settings, args.key))
        else:
            print("\n".join(await list_keys(settings, args.user_id)))
    except CliError as exc:
        print(f"reelflow: {exc}", file=sys.stderr)
        return 1
    return 0
