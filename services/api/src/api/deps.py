"""Request dependencies: the database session, the caller (API key or admin key), app state."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from shared.api_keys import Caller, find_caller, record_use
from shared.auth import hash_api_key
from shared.logging import get_logger
from shared.media import Storage
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import State

from api.problems import Problem
from api.ratelimit import RateLimiter

log = get_logger("AUTH")

_bearer = HTTPBearer(auto_error=False, description="Your API key")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminKey", description="The ADMIN_API_KEY"
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="reelflow"'}
_INVALID = {"WWW-Authenticate": 'Bearer realm="reelflow", error="invalid_token"'}


# `async def`, all of them: FastAPI runs a plain `def` dependency in a worker thread.
async def runtime(request: Request) -> ServiceRuntime:
    return request.app.state.runtime


async def settings(request: Request) -> Settings:
    return request.app.state.settings


async def storage(request: Request) -> Storage:
    return request.app.state.storage


async def pg(request: Request) -> asyncpg.Pool:
    """The raw asyncpg pool of the hot paths (`api.pg`)."""
    return request.app.state.pg


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.runtime.sessions() as db:
        yield db


Session = Annotated[AsyncSession, Depends(session)]
Runtime = Annotated[ServiceRuntime, Depends(runtime)]
Pg = Annotated[asyncpg.Pool, Depends(pg)]
AppSettings = Annotated[Settings, Depends(settings)]
AppStorage = Annotated[Storage, Depends(storage)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Problem(401, "send your API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    return credentials.credentials


async def authorize(state: State, token: str) -> Caller:
    """The caller, by a live API key, within its key's rate limit: one indexed query on the raw
    pool (the key is looked up on every request, so a revoked key stops at once), then
    `admit`."""
    digest = hash_api_key(token)
    state.rate_limiter.check_local(digest)  # a flooding key stops here, before the database
    return await admit(state, digest, await find_caller(state.pg, token, digest))


async def admit(state: State, digest: str, caller: Caller | None) -> Caller:
    """401 for no live key; else a token spent from this instance's lease of the key's shared
    bucket (`api.ratelimit`: a database write per lease, not per request) or 429, and
    `last_used_at` written at most once a minute."""
    if caller is None:
        log.warning("Invalid API key")
        raise Problem(401, "the API key is not valid", headers=_INVALID)
    limiter: RateLimiter = state.rate_limiter
    await limiter.take(state.pg, digest, caller.key_id)
    await record_use(state.pg, caller)
    return caller


async def caller_of(request: Request, token: str) -> Caller:
    caller = await authorize(request.app.state, token)
    request.state.api_key_id = caller.key_id
    return caller


async def current_user(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    request: Request,
) -> Caller:
    return await caller_of(request, _token(credentials))


async def admin(
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


CurrentUser = Annotated[Caller, Depends(current_user)]
