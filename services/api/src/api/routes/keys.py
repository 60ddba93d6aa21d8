"""`/v1/api-keys`: a user's own keys. Several at once (one per app or machine), each revocable;
a key is shown whole only in the answer that made it. Another user's key id is a 404."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from shared.api_keys import create_key, find_key, keys_of, revoke
from shared.db.models import ApiKey
from shared.logging import get_logger

from api.deps import CurrentUser, Session
from api.key_schemas import CreateKey, KeyCreated, KeyList, KeyOut
from api.problems import Problem, not_found, responses

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])
log = get_logger("API_KEYS")

MAX_LIVE_KEYS = 50


def _out(row: ApiKey, request: Request) -> KeyOut:
    return KeyOut(
        id=row.id,
        prefix=row.prefix,
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        current=row.id == getattr(request.state, "api_key_id", None),
    )


@router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    responses=responses(401, 409, 413, 422),
    summary="Make another API key; it is shown once",
)
async def create(
    body: CreateKey, user: CurrentUser, db: Session, request: Request, response: Response
) -> KeyCreated:
    live = [k for k in await keys_of(db, user.id) if k.revoked_at is None]
    if len(live) >= MAX_LIVE_KEYS:
        raise Problem(409, f"at most {MAX_LIVE_KEYS} keys may be live at once; revoke one first")
    row, key = await create_key(db, user.id, body.name)
    await db.commit()
    log.info("API key created", credential=str(row.id), prefix=row.prefix)
    response.headers["Location"] = f"/v1/api-keys/{row.id}"
    return KeyCreated(**_out(row, request).model_dump(), api_key=key)


@router.get(
    "",
    response_model=KeyList,
    responses=responses(401),
    summary="Your API keys, revoked ones too, newest first (never the keys themselves)",
)
async def list_keys(user: CurrentUser, db: Session, request: Request) -> KeyList:
    return KeyList(items=[_out(k, request) for k in await keys_of(db, user.id)])


@router.delete(
    "/{key_id}",
    status_code=204,
    responses=responses(401, 404),
    summary="Revoke an API key (this one too, if you ask): it never works again",
)
async def revoke_key(key_id: uuid.UUID, user: CurrentUser, db: Session) -> Response:
    row = await find_key(db, str(key_id), user_id=user.id)
    if row is None:
        raise not_found("API key")
    if await revoke(db, row):
        await db.commit()
        log.info("API key revoked", credential=str(row.id), prefix=row.prefix)
    return Response(status_code=204)
