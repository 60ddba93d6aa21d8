"""Request rate limits per API key: token buckets (RATE_LIMIT_PER_SECOND, RATE_LIMIT_BURST).

The limit itself is one bucket per key in PostgreSQL (a row of `rate_buckets`), shared by every
API instance. No request writes to it, though: an instance *leases* a few tokens at a time from
the shared bucket (one atomic UPDATE, committed at once) and spends them in memory, one per
request, so a busy key costs one database write per lease instead of one per request.

- Lease size: about `LEASE_SECONDS` of the key's rate, at most a tenth of its burst, at least
  one token (20/s with a burst of 100: 10 tokens, so a key at its full rate costs two writes a
  second per instance; a slow limit leases one token at a time and is exact).
- When the shared bucket is empty, the instance remembers until when (the time one token takes
  to refill) and refuses the key's requests in memory until then: a key that floods the API
  costs a hash and a dictionary lookup per request, no database work at all (not even the key
  lookup), and the other keys keep the connections and the event loop.
- A refusal is a 429 problem with `Retry-After` (whole seconds until a token is there again).

The trade-off: tokens are never created, only moved, so the limit across instances holds
(N instances never pass more than the shared bucket gives). But a lease is spent only where
it was taken: tokens leased by an instance that the key stops calling are lost to the key
until they expire (`LEASE_TTL_SECONDS`; they are not returned), so a key spread over several
instances may be refused slightly *before* its limit, by at most one lease per instance; and a
key may pass its burst by at most one lease per instance (leased tokens still held while the
shared bucket has refilled). With the defaults that is 10 requests either way.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import OrderedDict

from shared.api_keys import Queries
from shared.settings import Settings

from api.problems import Problem

MAX_LOCAL_KEYS = 10_000  # least recently used keys beyond this are forgotten (leases dropped)
LEASE_SECONDS = 0.5  # a lease is about this long at the key's full rate…
LEASE_SHARE_OF_BURST = 0.1  # …and at most this share of its burst
LEASE_TTL_SECONDS = 5.0  # leased tokens unspent after this are dropped

# Refill the key's bucket, take up to $4 whole tokens from it; the row is locked first (FOR
# UPDATE in the subquery), so concurrent leases from several instances serialise on it.
_LEASE = (
    "UPDATE rate_buckets AS b SET tokens = s.r - LEAST($4::float8, floor(s.r)), "
    "  updated_at = GREATEST(now(), b.updated_at) "
    "FROM (SELECT key_id, LEAST($3::float8, tokens + $2::float8 * "
    "        GREATEST(0, EXTRACT(EPOCH FROM now() - updated_at))::float8) AS r "
    "      FROM rate_buckets WHERE key_id = $1 FOR UPDATE) AS s "
    "WHERE b.key_id = s.key_id "
    "RETURNING LEAST($4::float8, floor(s.r))::int AS taken, s.r AS available"
)
# A key's first lease: a full bucket, less what is taken (nothing if another instance was first).
_FIRST_LEASE = (
    "INSERT INTO rate_buckets (key_id, tokens, updated_at) "
    "VALUES ($1, $2::float8 - LEAST($3::float8, floor($2::float8)), now()) "
    "ON CONFLICT (key_id) DO NOTHING RETURNING key_id"
)


def too_many(wait_seconds: float) -> Problem:
    retry_after = max(1, math.ceil(wait_seconds))
    return Problem(
        429,
        f"too many requests with this API key; retry after {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


class _Key:
    __slots__ = ("blocked_until", "expires", "lock", "tokens")

    def __init__(self) -> None:
        self.tokens = 0  # leased, not yet spent
        self.expires = 0.0  # monotonic time the leased tokens are dropped
        self.blocked_until = 0.0  # monotonic time before which the shared bucket is empty
        self.lock: asyncio.Lock | None = None  # one lease at a time per key and instance


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, max_keys: int = MAX_LOCAL_KEYS, lease: int | None = None
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.enabled = rate > 0
        self.lease = lease or max(
            1, min(math.ceil(rate * LEASE_SECONDS), int(burst * LEASE_SHARE_OF_BURST))
        )
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Key] = OrderedDict()  # by the key's SHA-256
        self.leases = 0  # database round trips taken, for tests and metrics

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(settings.rate_limit_per_second, settings.rate_limit_burst)

    def _key(self, digest: str) -> _Key:
        state = self._keys.get(digest)
        if state is None:
            state = self._keys[digest] = _Key()
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(digest)
        return state

    def check_local(self, digest: str) -> None:
        """Before any database work: 429 while this instance knows the key's bucket is empty."""
        if not self.enabled:
            return
        state = self._keys.get(digest)
        if state is not None and (wait := state.blocked_until - time.monotonic()) > 0:
            raise too_many(wait)

    def _spend(self, state: _Key, now: float) -> bool:
        if state.tokens >= 1 and now < state.expires:
            state.tokens -= 1
            return True
        if now < state.blocked_until:
            raise too_many(state.blocked_until - now)
        return False

    async def take(self, pg: Queries, digest: str, key_id: uuid.UUID) -> None:
        """Spend one of the key's tokens (leasing more from the shared bucket when this
        instance has none left), or 429."""
        if not self.enabled:
            return
        state = self._key(digest)
        if self._spend(state, time.monotonic()):
            return
        if state.lock is None:
            state.lock = asyncio.Lock()
        async with state.lock:
            if self._spend(state, time.monotonic()):  # another request's lease arrived
                return
            taken, available = await self._lease(pg, key_id)
            now = time.monotonic()
            if taken >= 1:
                state.tokens, state.expires = taken - 1, now + LEASE_TTL_SECONDS
                return
            state.tokens = 0
            state.blocked_until = now + (1 - available) / self.rate
            raise too_many(state.blocked_until - now)

    async def _lease(self, pg: Queries, key_id: uuid.UUID) -> tuple[int, float]:
        """(tokens taken, tokens the shared bucket held before)."""
        self.leases += 1
        for _ in range(2):
            row = await pg.fetchrow(_LEASE, key_id, self.rate, float(self.burst), self.lease)
            if row is not None:
                return int(row["taken"]), float(row["available"])
            if await pg.fetchrow(_FIRST_LEASE, key_id, float(self.burst), self.lease):
                return min(self.lease, self.burst), float(self.burst)
        raise RuntimeError(f"rate bucket of key {key_id} neither updated nor inserted")
