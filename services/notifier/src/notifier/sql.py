"""Plain asyncpg for every statement the notifier runs per event or per attempt.

Through the ORM each of them cost several times the query (compilation — a multi-row VALUES
insert is compiled afresh on every call —, identity map, instrumented objects, a greenlet per
call). Here each is one prepared statement (asyncpg caches them per connection), and each takes
whole batches through `unnest` arrays: one round trip for a batch of events or of attempts.
Outbox rows are `shared.outbox.Outgoing`'s (written with `Outgoing.write`, handed to the relay
after the commit). SQLAlchemy's engine stays for what runs once (the media key at start) and
for the outbox relay's claims.
"""

from __future__ import annotations

import asyncpg
from shared.db.raw import open_pool as open_raw_pool
from shared.settings import Settings

POOL_SIZE = 8

# Errors after which the same statements may well succeed a moment later: the database
# restarting or unreachable, a connection dropped, a deadlock or serialization failure.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


async def open_pool(settings: Settings, *, size: int = POOL_SIZE) -> asyncpg.Pool:
    # No session state on these connections (no SET, LISTEN, cursor or session lock): no reset
    # round trip on every release (it was ~8 a generation, the RESET ALL batch each).
    return await open_raw_pool(settings, size=size, min_size=1, reset_sessions=False)


# -- events: assistant messages, targets, deliveries (their inbox claim: shared.inbox) ------------

# JSON goes in as text and is cast: asyncpg does not quote the elements of a `jsonb[]`.
REPLIES_INSERT = (
    "INSERT INTO messages "
    "(id, conversation_id, role, content, generation_id, attachments, source_event_id, created_at) "
    "SELECT i, c, 'assistant', t, g, a::jsonb, s, w FROM unnest("
    "$1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::timestamptz[]"
    ") AS u(i, c, t, g, a, s, w) "
    "ON CONFLICT (source_event_id) DO NOTHING RETURNING id"
)

ENDPOINTS_OF_USERS = (
    "SELECT id, user_id, url, events, secret, previous_secret, previous_secret_expires_at "
    "FROM webhook_endpoints WHERE user_id = ANY($1::uuid[]) AND status = 'active'"
)

# A new delivery is leased at once (`next_attempt_at` = now + lease): it is attempted from
# memory, and if this process dies first the sweeper finds the lease run out.
DELIVERIES_INSERT = (
    "INSERT INTO webhook_deliveries (id, webhook_id, target, endpoint_id, url, event, "
    "generation_id, payload, status, next_attempt_at, created_at) "
    "SELECT i, w, t, e, u, v, g, p, 'pending', now() + $10 * interval '1 second', c "
    "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::text[], "
    "$7::uuid[], $8::text[], $9::timestamptz[]) AS x(i, w, t, e, u, v, g, p, c) "
    "ON CONFLICT ON CONSTRAINT uq_webhook_deliveries_target DO NOTHING RETURNING id"
)

# -- deliveries: claims, leases, the sweeper -------------------------------------------------------

# What an attempt needs, and whether it is due: the delivery (locked), its endpoint and the
# number of attempts already made.
LOAD_FOR_UPDATE = (
    "SELECT d.id, d.webhook_id, d.target, d.endpoint_id, d.url, d.payload, d.status, "
    "d.next_attempt_at, d.generation_id, d.created_at, "
    "(SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) AS made, "
    "e.url AS endpoint_url, e.status AS endpoint_status, e.user_id, e.secret, "
    "e.previous_secret, e.previous_secret_expires_at "
    "FROM webhook_deliveries d LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id "
    "WHERE d.id = ANY($1::uuid[]) ORDER BY d.id FOR UPDATE OF d"
)

LEASE = (
    "UPDATE webhook_deliveries SET next_attempt_at = now() + $2 * interval '1 second' "
    "WHERE id = ANY($1::uuid[]) AND status = 'pending'"
)

FINISH = (
    "UPDATE webhook_deliveries SET status = $2, next_attempt_at = NULL WHERE id = ANY($1::uuid[])"
)

# Pending deliveries nobody is working on: a lease that ran out (its process died, or its lane
# was full), or a retry whose command is this late. At most `$2` per target, oldest first, so
# one endpoint's backlog cannot crowd out the others', and none for the targets in `$5` (whose
# lanes are full here). A first attempt has no command that could still come, so it is taken as
# soon as its lease ran out; a retry gets `$1` seconds of grace for its command from the delay
# queue. Locked rows are skipped: another sweeper has them.
SWEEP = (
    "WITH overdue AS ("
    " SELECT d.id, row_number() OVER (PARTITION BY d.target ORDER BY d.next_attempt_at) AS n"
    " FROM webhook_deliveries d"
    " WHERE d.status = 'pending' AND d.next_attempt_at < now() AND d.target <> ALL($5::text[])"
    " AND (d.next_attempt_at < now() - $1 * interval '1 second'"
    " OR NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.delivery_id = d.id))"
    "), picked AS ("
    " SELECT d.id FROM webhook_deliveries d JOIN overdue o ON o.id = d.id"
    " WHERE o.n <= $2 ORDER BY d.id LIMIT $3 FOR UPDATE OF d SKIP LOCKED"
    ") "
    "UPDATE webhook_deliveries d SET next_attempt_at = now() + $4 * interval '1 second' "
    "FROM picked WHERE d.id = picked.id AND d.status = 'pending' AND d.next_attempt_at < now() "
    "RETURNING d.id"
)

# -- recording attempts ---------------------------------------------------------------------------

LOCK_FOR_RECORD = (
    "SELECT d.id, d.status, "
    "(SELECT count(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) AS made "
    "FROM webhook_deliveries d WHERE d.id = ANY($1::uuid[]) ORDER BY d.id FOR UPDATE OF d"
)

ATTEMPTS_INSERT = (
    "INSERT INTO webhook_attempts "
    "(delivery_id, at, status_code, latency_ms, response_excerpt, error, manual) "
    "SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::int[], $4::int[], $5::text[], "
    "$6::text[], $7::bool[])"
)

DUE = (
    "UPDATE webhook_deliveries AS d SET next_attempt_at = v.due "
    "FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, due) WHERE d.id = v.id"
)

# Any success ends an endpoint's failure streak; a failure starts one if none is running.
STREAK_CLEAR = (
    "UPDATE webhook_endpoints SET failing_since = NULL "
    "WHERE id = ANY($1::uuid[]) AND failing_since IS NOT NULL"
)
STREAK_SET = "UPDATE webhook_endpoints SET failing_since = $2 WHERE id = $1"
STREAK_START = (
    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) "
    "WHERE id = $1 RETURNING failing_since"
)
DISABLE = (
    "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2 "
    "WHERE id = $1 AND status = 'active' RETURNING id"
)
