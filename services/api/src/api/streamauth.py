"""Who may open a live stream.

A browser's `EventSource` cannot send an `Authorization` header, and an API key in a URL would
end up in proxy logs and browser history. So a client trades its key for a short-lived stream
token (`POST /v1/stream-tokens`, with the key in the header) and opens the stream with
`?token=…`. The token is an HMAC-signed (user id, expiry) pair, good only for reading streams,
for `STREAM_TOKEN_TTL_SECONDS`. Clients that can send headers (curl, httpx) just send the key.
Neither the key nor the token is logged: the access log records the route template, not the URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from shared.api_keys import Caller
from shared.logging import get_logger

from api.deps import caller_of
from api.problems import Problem

log = get_logger("AUTH")

STREAM_TOKEN_TTL_SECONDS = 15 * 60
_PREFIX = "st_"
_PURPOSE = b"reelflow stream token v1"
_bearer = HTTPBearer(auto_error=False, description="Your API key")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    def __init__(self, secret: bytes, ttl_seconds: int = STREAM_TOKEN_TTL_SECONDS) -> None:
        # A key of its own, derived from the shared signing secret: a media link's signature
        # can never pass as a token, nor the other way round.
        self._key = hmac.new(secret, _PURPOSE, hashlib.sha256).digest()
        self.ttl = ttl_seconds

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def issue(self, user_id: uuid.UUID, now: float | None = None) -> tuple[str, datetime]:
        expires = int((now if now is not None else time.time()) + self.ttl)
        body = user_id.bytes + struct.pack(">Q", expires)
        token = f"{_PREFIX}{_b64(body)}.{_b64(self._mac(body))}"
        return token, datetime.fromtimestamp(expires, UTC)

    def verify(self, token: str, now: float | None = None) -> uuid.UUID | None:
        """The user the token was issued to, or None (forged, malformed or expired)."""
        if not token.isascii() or not token.startswith(_PREFIX) or token.count(".") != 1:
            return None
        encoded, mac = token[len(_PREFIX) :].split(".")
        try:
            body, signature = _unb64(encoded), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if len(body) != 24 or not hmac.compare_digest(self._mac(body), signature):
            return None
        (expires,) = struct.unpack(">Q", body[16:])
        if expires < (now if now is not None else time.time()):
            return None
        return uuid.UUID(bytes=body[:16])


_USER_EXISTS = "SELECT 1 FROM users WHERE id = $1"


async def stream_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[
        str | None,
        Query(
            max_length=200,
            description="A stream token from `POST /v1/stream-tokens`, for clients that cannot "
            "send headers (EventSource); never an API key",
        ),
    ] = None,
) -> Caller | StreamCaller:
    """The caller of a stream route, by API key header or stream token: plain asyncpg on the
    raw pool, so opening a stream holds no ORM session (and an open stream no connection)."""
    if credentials is not None and credentials.credentials:
        return await caller_of(request, credentials.credentials)
    if token:
        tokens: StreamTokens = request.app.state.realtime.tokens
        user_id = tokens.verify(token)
        if user_id is not None and await request.app.state.pg.fetchval(_USER_EXISTS, user_id):
            return StreamCaller(user_id)
        log.warning("Invalid stream token")
        raise Problem(
            401,
            "the stream token is not valid or has expired; get a new one from "
            "POST /v1/stream-tokens",
            headers={"WWW-Authenticate": 'Bearer realm="reelflow", error="invalid_token"'},
        )
    raise Problem(
        401,
        "send your API key as 'Authorization: Bearer <key>', or a stream token as ?token=",
        headers={"WWW-Authenticate": 'Bearer realm="reelflow"'},
    )


@dataclass(frozen=True, slots=True)
class StreamCaller:
    """A stream's caller by stream token: the user only (no key)."""

    id: uuid.UUID


StreamUser = Annotated[Caller | StreamCaller, Depends(stream_user)]
