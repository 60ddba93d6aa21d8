"""Request dependencies: the database session, the caller (API key or admin key), app state."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from shared.api_keys import authenticate, touch
from shared.auth import hash_api_key
from shared.db.models import User
from shared.logging import get_logger
from shared.media import Storage
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from sqlalchemy.ext.asyncio import AsyncSession

from api.problems import Problem
from api.ratelimit import RateLimiter

log = get_logger("AUTH")

_bearer = HTTPBearer(auto_error=False, description="Your API key")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminKey", description="The ADMIN_API_KEY"
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="reelflow"'}
_INVALID = {"WWW-Authenticate": 'Bearer realm="reelflow", error="invalid_token"'}


def runtime(request: Request) -> ServiceRuntime:
    return request.app.state.runtime


def settings(request: Request) -> Settings:
    return request.app.state.settings


def storage(request: Request) -> Storage:
    return request.app.state.storage


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    async with runtime(request).sessions() as db:
        yield db


Session = Annotated[AsyncSession, Depends(session)]
Runtime = Annotated[ServiceRuntime, Depends(runtime)]
AppSettings = Annotated[Settings, Depends(settings)]
AppStorage = Annotated[Storage, Depends(storage)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Problem(401, "send your API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    return credentials.credentials


async def current_user(
    db: Session,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    request: Request,
) -> User:
    """The caller, by a live API key (`shared.api_keys`), within its key's rate limit."""
    token = _token(credentials)
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.check_local(hash_api_key(token))  # a flooding key stops here, before the database
    found = await authenticate(db, token)
    if found is None:
        log.warning("Invalid API key")
        raise Problem(401, "the API key is not valid", headers=_INVALID)
    key, user = found
    await limiter.take_shared(db, key.id)
    await touch(db, key)
    await db.commit()  # short: the bucket's row lock ends here, not with the request
    request.state.api_key_id = key.id
    return user


def admin(
    cfg: AppSettings,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """Admin routes are off (404, as if absent) when ADMIN_API_KEY is unset."""
    if cfg.admin_api_key is None:
        raise Problem(404, "no such route")
    token = _token(credentials)
    expected = cfg.admin_api_key.get_secret_value().encode()
    if not hmac.compare_digest(token.encode("utf-8", "replace"), expected):
        log.warning("Invalid admin key")
        raise Problem(401, "the admin key is not valid", headers=_INVALID)


CurrentUser = Annotated[User, Depends(current_user)]
