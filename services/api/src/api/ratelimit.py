"""Request rate limits per API key: token buckets (RATE_LIMIT_PER_SECOND, RATE_LIMIT_BURST).

Two buckets per key, refilled at the same rate:
- the shared one, a row of `rate_buckets` in PostgreSQL updated by one atomic statement, is
  the limit itself: it holds across every API instance;
- a local one in this process, keyed by the presented token's SHA-256, is a pre-filter: once a
  key has spent it, its requests are refused without touching the database at all, so a key
  that floods the API costs a hash and a dictionary lookup per request, and the other keys'
  requests keep the connections and the event loop.
With N instances a key may pass N local buckets, but never the shared one. A refusal is a 429
problem with `Retry-After` (whole seconds until the bucket holds a token again).
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict

from shared.settings import Settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from api.problems import Problem

MAX_LOCAL_KEYS = 10_000  # least recently used buckets beyond this are forgotten (they refill)

_TAKE = text(
    "INSERT INTO rate_buckets AS b (key_id, tokens, updated_at) "
    "VALUES (:k, :burst - 1, now()) "
    "ON CONFLICT (key_id) DO UPDATE SET "
    "  tokens = LEAST(:burst, b.tokens + :rate * GREATEST(0, EXTRACT(EPOCH FROM now() - "
    "b.updated_at))) - 1, updated_at = GREATEST(now(), b.updated_at) "
    "WHERE LEAST(:burst, b.tokens + :rate * GREATEST(0, EXTRACT(EPOCH FROM now() - "
    "b.updated_at))) >= 1 "
    "RETURNING tokens"
)
_LEFT = text(
    "SELECT LEAST(:burst, tokens + :rate * GREATEST(0, EXTRACT(EPOCH FROM now() - updated_at))) "
    "FROM rate_buckets WHERE key_id = :k"
)


def too_many(wait_seconds: float) -> Problem:
    retry_after = max(1, math.ceil(wait_seconds))
    return Problem(
        429,
        f"too many requests with this API key; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


class LocalBuckets:
    """Token buckets in this process, by key, the least recently used forgotten past a cap."""

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_LOCAL_KEYS) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: str, now: float | None = None) -> float:
        """0 if a token was taken, else the seconds until one is there."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.local = LocalBuckets(rate, burst) if rate > 0 else None

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(settings.rate_limit_per_second, settings.rate_limit_burst)

    def check_local(self, token_digest: str) -> None:
        """Before any database work: 429 once this process has seen the key spend its bucket."""
        if self.local is not None and (wait := self.local.take(token_digest)) > 0:
            raise too_many(wait)

    async def take_shared(self, session: AsyncSession, key_id: uuid.UUID) -> None:
        """Take a token from the key's shared bucket (in the caller's transaction; commit soon,
        the statement holds the bucket's row lock until then), or 429."""
        if self.local is None:
            return
        params = {"k": key_id, "rate": self.rate, "burst": float(self.burst)}
        if await session.scalar(_TAKE, params) is not None:
            return
        left = float(await session.scalar(_LEFT, params) or 0.0)
        raise too_many((1 - left) / self.rate)
