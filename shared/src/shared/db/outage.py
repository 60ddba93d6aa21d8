"""Telling a database outage from a bug, and waiting one out.

A message handled while PostgreSQL restarts fails on its connection. Nacking it would have the
broker redeliver it at once, fail again, and spend the queue's whole delivery limit in a second:
a message dead-lettered by an outage, not by anything wrong with it. So a handler that fails
because the database is unreachable is retried in place (the message stays unacked, its
transaction was rolled back, the inbox makes the retry safe), with a growing pause, for as long
as `patience` allows; a bug fails as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from sqlalchemy import exc as sa_exc

from shared.logging import get_logger

log = get_logger("DATABASE")

T = TypeVar("T")

# Server-side codes of a server going away or not yet taking connections
# (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now).
_GOING_AWAY = (
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)


def is_outage(error: BaseException) -> bool:
    """The database could not be reached or went away mid-statement (anywhere in the chain)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OSError) and _raised_by_the_driver(current):
            return True  # refused or reset on connect (a webhook's refused connection is not)
        if isinstance(
            current,
            (
                _GOING_AWAY,
                asyncpg.exceptions.ConnectionDoesNotExistError,
                asyncpg.exceptions.InterfaceError,
                sa_exc.InterfaceError,
            ),
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


def _raised_by_the_driver(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        tb = tb.tb_next
    return False


async def outlast_outage(
    call: Callable[[], Awaitable[T]],
    *,
    patience: float,
    what: str,
    first_pause: float = 0.2,
    longest_pause: float = 5.0,
) -> T:
    """`call()`, again after a pause while it fails on a database outage, for up to `patience`
    seconds of pauses in all; then, or on any other error, the error is raised."""
    waited = 0.0
    pause = first_pause
    while True:
        try:
            return await call()
        except Exception as error:
            if not is_outage(error) or waited >= patience:
                raise
            log.warning(
                "Database unavailable, retrying", what=what, error=repr(error)[:300], after=pause
            )
            await asyncio.sleep(pause)
            waited += pause
            pause = min(pause * 2, longest_pause)
