"""`reelflow users create` and `reelflow keys create|revoke|list`, run as an operator runs them:
each key printed once (and nowhere else: not on stderr, not in the database), revocation by id
or by prefix, refusals in one line."""

from __future__ import annotations

import hashlib
import re

import pytest
from shared.api_keys import authenticate
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tests.support import reelflow

pytestmark = pytest.mark.usefixtures("clean_db")
KEY = re.compile(r"API key \(shown once\): (rf_live_[A-Za-z0-9_-]{43})$")


async def test_users_and_keys(
    env: dict[str, str], sessions: async_sessionmaker[AsyncSession]
) -> None:
    made = await reelflow(env, "users", "create", "ada")
    assert made.returncode == 0, made.stderr
    first = KEY.search(made.stdout.strip())
    assert first, made.stdout
    user_id = made.stdout.split()[1]

    second_run = await reelflow(env, "keys", "create", user_id, "--name", "laptop")
    assert second_run.returncode == 0, second_run.stderr
    second = KEY.search(second_run.stdout.strip())
    assert second
    keys = [first.group(1), second.group(1)]
    for out in (made, second_run):
        assert all(k not in out.stderr for k in keys)  # logs never carry it

    listed = await reelflow(env, "keys", "list", user_id)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(" live ") == 2 and "laptop" in listed.stdout
    assert all(k not in listed.stdout and k[:16] in listed.stdout for k in keys)

    async with sessions() as s:
        dump = str((await s.execute(text("SELECT * FROM api_keys"))).all())
        assert all(k not in dump and hashlib.sha256(k.encode()).hexdigest() in dump for k in keys)
        assert await authenticate(s, keys[1]) is not None

    revoked = await reelflow(env, "keys", "revoke", keys[1][:16])  # by its prefix
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    again = await reelflow(env, "keys", "revoke", keys[1][:16])
    assert again.returncode == 0 and "already revoked" in again.stdout
    async with sessions() as s:
        assert await authenticate(s, keys[1]) is None
        assert await authenticate(s, keys[0]) is not None
        key_id = (
            await s.execute(
                text("SELECT id FROM api_keys WHERE sha256 = :h"),
                {"h": hashlib.sha256(keys[0].encode()).hexdigest()},
            )
        ).scalar_one()
    by_id = await reelflow(env, "keys", "revoke", str(key_id))
    assert by_id.returncode == 0, by_id.stderr
    listed = await reelflow(env, "keys", "list", user_id)
    assert listed.stdout.count(" revoked ") == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("users", "create", "   "), "a name must be"),
        (("keys", "create", "not-a-uuid"), "is not a user id"),
        (("keys", "list", "00000000-0000-0000-0000-000000000000"), "no user"),
        (("keys", "revoke", "rf_live_nothing1"), "no key"),
    ],
)
async def test_refusals_are_one_line(env: dict[str, str], args: tuple[str, ...], says: str) -> None:
    done = await reelflow(env, *args)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("reelflow: ") and says in last, done.stderr
