"""`/v1/admin/*`: needs `Bearer <ADMIN_API_KEY>`; answers 404 while ADMIN_API_KEY is unset."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from shared.api_keys import create_user as new_user
from shared.logging import get_logger

from api.deps import Session, admin
from api.problems import responses
from api.schemas import CreateUser, UserCreated

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(admin)])
log = get_logger("ADMIN")


@router.post(
    "/users",
    status_code=201,
    response_model=UserCreated,
    responses=responses(401, 404, 413, 422),
    summary="Create a user; its API key is shown once",
)
async def create_user(body: CreateUser, db: Session) -> UserCreated:
    user, row, key = await new_user(db, body.name.strip())
    await db.commit()
    log.info("User created", user_id=str(user.id), prefix=row.prefix)
    return UserCreated(id=user.id, name=user.name, api_key=key)
