"""A generation read without the ORM, for hot paths (the orchestrator's handlers, the API's
status reads and streams).

Loading a `Generation` through the session costs an ORM load per message (entity construction,
identity map, `populate_existing`, instrumented attribute sets); a consumer that reads the row,
decides and writes one compare-and-set UPDATE (`apply_transition`) needs none of it. The row
is read with one cached Core statement and held in a plain object with the model's attributes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Generation

_TABLE: Table = Generation.__table__  # type: ignore[attr-defined]


@dataclass(slots=True)
class GenerationRow:
    """The `generations` row's columns, as `apply_transition`, `snapshot` and the API's views
    read them."""

    id: uuid.UUID
    user_id: uuid.UUID
    conversation_id: uuid.UUID | None
    status: str
    version: int
    prompt: str
    auto_confirm: bool
    params: dict[str, Any]
    spec: dict[str, Any] | None
    questions: list[dict[str, Any]]
    answers: dict[str, Any]
    estimated_cost_usd: Decimal | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    # Read from the table always; left None only in a row the API rebuilds from a lifecycle
    # event for its views, which do not show them.
    confirmed_at: datetime | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    trace_context: dict[str, Any] | None = None
    status_changed_at: datetime | None = None


_COLUMNS = [_TABLE.c[f.name] for f in fields(GenerationRow)]
_BY_ID = select(*_COLUMNS).where(_TABLE.c.id == bindparam("id", type_=_TABLE.c.id.type))
# FOR UPDATE: the caller's transaction holds the row until it commits, so handlers of the same
# generation run one after the other instead of failing each other's compare-and-set.
_BY_ID_LOCKED = _BY_ID.with_for_update()


async def load_generation(
    session: AsyncSession, generation_id: uuid.UUID, *, lock: bool = False
) -> GenerationRow | None:
    """The committed row as it is now (with `lock`, locked until the transaction ends)."""
    connection = await session.connection()
    result = await connection.execute(_BY_ID_LOCKED if lock else _BY_ID, {"id": generation_id})
    row = result.first()
    return None if row is None else GenerationRow(*row)
