"""Plain asyncpg for the orchestrator's three consumers (requests, confirmations, reports).

Through an `AsyncSession` each message cost about as much again in SQLAlchemy as in everything
else (the session and its transaction, statement compilation and result set-up per statement,
a greenlet per call). Here every statement is a fixed string, prepared once per connection
(asyncpg's cache), and the round trips per message are as few as the logic allows: the inbox
claim rides on the read of the generation, and a compare-and-set UPDATE on the INSERT of the
events it announces. SQLAlchemy's engine stays for the sweeper and the outbox relay.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

import asyncpg
from shared.db import raw
from shared.db.models import Generation
from shared.domain.generation_rows import GenerationRow
from shared.inbox import claim_cte
from shared.outbox import plain_insert
from shared.settings import Settings
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import JSONB

POOL_SIZE = 10

_TABLE: Table = Generation.metadata.tables["generations"]
_COLUMNS = ", ".join(f.name for f in fields(GenerationRow))
_JSONB = frozenset(c.name for c in _TABLE.c if isinstance(c.type, JSONB))


async def open_pool(settings: Settings, *, size: int = POOL_SIZE) -> asyncpg.Pool:
    """Connections are made when first needed (a database that is down at start is waited out
    by the handlers, `shared.db.outage`); no session reset on release (none is left)."""
    return await raw.open_pool(settings, size=size, reset_sessions=False)


class PoolHolder:
    """The consumers' pool, opened when the service starts."""

    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None

    async def open(self, settings: Settings) -> None:
        if self.pool is None:
            self.pool = await open_pool(settings)

    def get(self) -> asyncpg.Pool:
        assert self.pool is not None, "the orchestrator's pool is not open (not started)"
        return self.pool

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await raw.close_pool(pool)


# -- reading the generation ---------------------------------------------------------------------

# The row as it is now; with the claim of the message ($1 consumer, $2 message id) in the same
# statement: `fresh` is 1 when the message is new. The generation is read in a sub-select so
# that a missing one still returns the claim's outcome; FOR UPDATE (reports) holds it until the
# transaction ends, so a generation's reports are applied one after the other.
_SELECT = f"SELECT {_COLUMNS} FROM generations WHERE id = $3"
CLAIM_AND_LOAD = (
    f"WITH {claim_cte(1, 2)} SELECT (SELECT count(*) FROM claimed) AS fresh, g.* "
    f"FROM (SELECT 1) AS one LEFT JOIN ({_SELECT}) AS g ON true"
)
CLAIM_AND_LOAD_LOCKED = (
    f"WITH {claim_cte(1, 2)} SELECT (SELECT count(*) FROM claimed) AS fresh, g.* "
    f"FROM (SELECT 1) AS one LEFT JOIN ({_SELECT} FOR UPDATE) AS g ON true"
)
LOAD = f"SELECT {_COLUMNS} FROM generations WHERE id = $1"
LOAD_LOCKED = LOAD + " FOR UPDATE"


def row_of(record: Any) -> GenerationRow | None:
    """The `GenerationRow` in a record of the statements above (None: no such generation)."""
    if record["id"] is None:
        return None
    return GenerationRow(*(record[f.name] for f in fields(GenerationRow)))


# -- writing it ---------------------------------------------------------------------------------

_TRANSITIONS: dict[tuple[str, ...], str] = {}


def transition(columns: tuple[str, ...]) -> str:
    """The compare-and-set UPDATE of `columns` ($1 id, $2 the version read, then one value per
    column) and, only if it matched, the INSERT of the outbox rows announcing it (seven arrays
    after the values, `shared.outbox.Outgoing.arrays`): one statement, one round trip.
    Returns `updated` (0 or 1) and the outbox rows' ids and message ids."""
    statement = _TRANSITIONS.get(columns)
    if statement is None:
        sets = ", ".join(
            f"{name} = ${i}::text::jsonb" if name in _JSONB else f"{name} = ${i}"
            for i, name in enumerate(columns, start=3)
        )
        first = 3 + len(columns)
        statement = _TRANSITIONS[columns] = (
            f"WITH updated AS (UPDATE generations SET {sets} WHERE id = $1 AND version = $2 "
            f"RETURNING 1), written AS ({plain_insert(first, where=_IF_UPDATED)}) "
            "SELECT (SELECT count(*) FROM updated) AS updated, "
            "(SELECT array_agg(id ORDER BY id) FROM written) AS ids, "
            "(SELECT array_agg(message_id ORDER BY id) FROM written) AS message_ids"
        )
    return statement


_IF_UPDATED = "EXISTS (SELECT 1 FROM updated)"


def json_value(name: str, value: Any) -> Any:
    """A value for `transition`'s column `name`: JSONB columns take JSON text (None is JSON
    `null`, as SQLAlchemy's JSONB type writes it)."""
    return json.dumps(value) if name in _JSONB else value


# The render dispatch's guard ($1 guard consumer, $2 generation id) and, only when it is new,
# the render command (seven arrays from $3): at most one RenderRequested per generation.
DISPATCH = (
    f"WITH {claim_cte(1, 2)}, written AS "
    f"({plain_insert(3, where='EXISTS (SELECT 1 FROM claimed)')}) "
    "SELECT (SELECT count(*) FROM claimed) AS fresh, "
    "(SELECT array_agg(id ORDER BY id) FROM written) AS ids, "
    "(SELECT array_agg(message_id ORDER BY id) FROM written) AS message_ids"
)
