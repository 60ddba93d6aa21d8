"""`/v1/admin/*`: needs `Bearer <ADMIN_API_KEY>`; answers 404 while ADMIN_API_KEY is unset."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from shared.auth import new_api_key
from shared.db.models import User
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
    key, prefix, digest = new_api_key()
    user = User(name=body.name.strip(), api_key_prefix=prefix, api_key_sha256=digest)
    db.add(user)
    await db.commit()
    log.info("User created", user_id=str(user.id), prefix=prefix)
    return UserCreated(id=user.id, name=user.name, api_key=key)
