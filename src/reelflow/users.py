"""`reelflow users create NAME`."""

from __future__ import annotations

import uuid

from shared.auth import new_api_key
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import User
from shared.settings import Settings


async def create_user(settings: Settings, name: str) -> tuple[uuid.UUID, str]:
    if not name.strip() or len(name) > 200:
        raise SystemExit("reelflow: a user name must be 1-200 characters")
    engine = make_engine(settings, pool_size=1)
    try:
        key, prefix, digest = new_api_key()
        user = User(name=name.strip(), api_key_prefix=prefix, api_key_sha256=digest)
        async with make_sessionmaker(engine)() as session, session.begin():
            session.add(user)
        return user.id, key
    finally:
        await engine.dispose()
