"""Opaque keyset cursors over (created_at, id), newest first."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Query
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from api.problems import invalid

Position = tuple[datetime, uuid.UUID]  # (created_at, id): a page starts after it
Row = TypeVar("Row")

# A list route's paging parameters.
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(max_length=500)]


class Keyed(Protocol):
    @property
    def created_at(self) -> datetime: ...
    @property
    def id(self) -> uuid.UUID: ...


def encode_cursor(created_at: datetime, id_: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(id_)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position after which the next page starts; 422 for anything we did not issue."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, id_ = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(id_)
    except (ValueError, TypeError, AttributeError, RecursionError, binascii.Error):
        raise invalid(
            [{"field": "cursor", "location": "query", "message": "not a cursor this API issued"}]
        ) from None


def after(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """Where the requested page starts: None for the first page."""
    return decode_cursor(cursor) if cursor else None


def next_cursor(rows: Sequence[Keyed], more: bool) -> str | None:
    """The cursor of the page after `rows`, when there is one."""
    return encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None


async def keyset_page(
    db: AsyncSession, query: Select[Any], model: type[Row], *, limit: int, after: Position | None
) -> tuple[list[Row], bool]:
    """Up to `limit` rows of `query` after `after`, newest first (by `model`'s created_at, then
    id), and whether more follow."""
    table: Any = model  # its attributes are columns here, not the values they type
    created_at, id_ = table.created_at, table.id
    if after is not None:
        query = query.where(tuple_(created_at, id_) < tuple_(*after))
    query = query.order_by(created_at.desc(), id_.desc()).limit(limit + 1)
    rows: list[Row] = list((await db.scalars(query)).all())
    return rows[:limit], len(rows) > limit
