"""Transactional outbox: messages are rows written with the state change, then relayed.

`enqueue` adds a row in the caller's transaction. `OutboxRelay` (one per process that writes)
publishes unpublished rows persistent and `mandatory` on a confirming channel, and marks them
published only after RabbitMQ confirmed them. A crash between confirm and mark republishes the
same `message_id`; consumers' inboxes make that harmless.

The fast path: `enqueue` stages the row on the session; the session's commit writes it (one
INSERT for all of a transaction's rows, just before the commit) and, once committed, hands it
to the relay of the session's maker (`ServiceRuntime` puts it in the maker's `info`), which
publishes it at once — no polling between a commit and its messages going out. Polling is only
the safety net: every `idle_poll_seconds` (and on `wake()`) a relay claims unpublished rows
with `FOR UPDATE SKIP LOCKED`, leaving a row that a running relay took over alone for
`HANDOVER_GRACE_SECONDS` (its own relay is publishing it), and longer while that relay is
alive: a handed-over row names its relay (`_HANDED`: the key of a PostgreSQL advisory lock the
relay's own connection holds for as long as it lives), and no other relay takes it while the
lock is held, up to `OWNED_CAP_SECONDS` (a relay alive but wedged). A relay that dies (its
connection closes, the lock goes with it) leaves its rows to the others after the grace, as
before; a live one under overload (an event loop saturated for seconds by a burst of requests)
is no longer presumed dead, and its rows no longer go out twice. A live relay retries what it
failed to publish itself. Rows committed by a session without a relay (tests, tools) are
claimed at the next poll, or at once on `wake()`.

A handed-over row is published in one of two ways, by its age (since its INSERT returned):
- fresh (under `FRESH_SECONDS`, far inside the grace: the usual case): published at once, no
  statement first, and marked published afterwards with the others confirmed meanwhile — one
  UPDATE per `MARK_EVERY_SECONDS` for all of them. No other relay takes such a row before the
  grace, and the marks land long before it: a service's relay writes them on a connection of
  its own (`database_dsn`), never queued behind the service's work for a pooled one (waiting
  seconds for one at 300 and 1,000 in flight, marks let safety nets publish 192 rows again in
  a bench run). Should they lag all the same (a mark `MARKS_LATE_SECONDS` overdue: the
  database overloaded), or while the relay is behind (more rows handed over than one batch:
  a burst, in which a saturated event loop could hold the marks back), every row takes the
  locked path below until it catches up. (A lock
  and mark transaction per batch had been 4 of the ~45 statements of each generation's every
  message: ~10 transactions per generation.)
- older (a busy process's relay held it for a while: under overload, handed-over rows wait
  seconds for their turn): under its row lock (`FOR UPDATE SKIP LOCKED`, still unpublished),
  and marked in that transaction after the confirm. The lock is what keeps such a row
  published once when it has passed the grace — whichever relay locks it first publishes and
  marks it, the other skips it or finds it marked.

Tracing: a row keeps the W3C context it was written in (`traceparent`, `tracestate` in its
headers); the relay publishes it inside a PRODUCER span that is that context's child, and the
message carries the producer span's `traceparent` (FastStream's telemetry middleware would
inject the relay's own, unrelated context instead: the trace would break at the outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractRobustConnection, DeliveryMode
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from shared import telemetry
from shared.logging import current_context, get_logger
from shared.messages import Message
from shared.metrics import ServiceMetrics
from shared.topology import COMMANDS, EVENTS, LIVE, declare
from shared.waiting import wait_set

log = get_logger("OUTBOX")

_COMMAND_TYPES = {"render.requested", "webhook.delivery_requested"}
# Live updates for open views: published without `mandatory`, since no view may be open.
_LIVE_TYPES = {"conversation.message_created"}


def enqueue(
    session: AsyncSession,
    message: Message,
    *,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
) -> None:
    """Stage `message` for publishing when the caller's transaction commits.

    `routing_key` overrides the message's own, e.g. to park a command in a delay queue. The
    current trace context is stored with the row (it replaces a `traceparent` in `headers`,
    which stays only when there is no current context). The row is written by the commit
    (just before it), in the same transaction; a rollback drops it."""
    session.info.setdefault(_STAGED, []).append(
        _row(message, headers=headers, routing_key=routing_key)
    )


def _row(
    message: Message,
    *,
    headers: dict[str, Any] | None,
    routing_key: str | None,
    context: Context | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """The row `message` is staged as (its trace context and user in its headers)."""
    exchange = (
        COMMANDS
        if message.TYPE in _COMMAND_TYPES
        else LIVE
        if message.TYPE in _LIVE_TYPES
        else EVENTS
    )
    return {
        "message_id": uuid.uuid4(),
        "exchange": exchange,
        "routing_key": routing_key or message.routing_key,
        "type": message.TYPE,
        "correlation_id": message.correlation_id,
        "body": message.model_dump_json(),
        "headers": _traced(headers, message, context, user_id),
    }


# Kept with the row for the publish span's labels, never sent: a message without `user_id`
# (a webhook delivery command) is still about someone.
_USER = "reelflow.user_id"


def _traced(
    headers: dict[str, Any] | None,
    message: Message,
    context: Context | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """`headers` with the trace context (the current one unless `context` is given) and, for
    a message without a `user_id` of its own, the user (the log context's unless given)."""
    stored = telemetry.inject(dict(headers or {}), context)
    user_id = user_id or current_context().get("user_id")
    if user_id and getattr(message, "user_id", None) is None:
        stored[_USER] = str(user_id)
    return stored


RELAY_KEY = "reelflow.outbox_relay"  # in a session maker's `info`: the relay to hand rows to
_STAGED = "reelflow.outbox.staged"  # rows enqueued in the session's current transaction
_WRITTEN = "reelflow.outbox.written"  # rows the commit under way wrote, for the hand-over
# In a stored row's headers (never sent): a relay has it; the value is that relay's owner key
# (1 for none known: the grace alone protects the row).
_HANDED = "reelflow.handed_over"
HANDOVER_GRACE_SECONDS = 5.0
OWNED_CAP_SECONDS = 60.0  # a live relay's rows are left to it this long at most
# The advisory locks `pg_advisory_lock(OWNER_LOCK_CLASS, key)` by which relays say they live.
OWNER_LOCK_CLASS = 7_340_101
_NO_OWNER = 1  # never a lock key (keys are drawn from 2 up)
_TAKE_OWNER_LOCK = "SELECT pg_try_advisory_lock($1::int, $2::int)"
MAX_RETRIES = 3  # a handed-over row that failed this often is left to the safety nets
_RETRIES = "retries"  # in a handed-over row: the attempts that failed
# A handed-over row younger than this is published without its lock, and marked in a batch
# within MARK_EVERY_SECONDS: both far inside the grace, before which no other relay takes it.
FRESH_SECONDS = 1.0
MARK_EVERY_SECONDS = 0.05
MARKS_LATE_SECONDS = 0.5  # a mark still unwritten this long after its publish: marks lag
_WRITTEN_AT = "written_at"  # in a handed-over row: the monotonic time its INSERT returned

_COLUMNS = "message_id, exchange, routing_key, type, correlation_id, body, headers"
# A row's `created_at`: when the INSERT wrote it, not when its transaction began (`now()`): the
# hand-over grace counts from there. A statement that waited seconds for a lock before writing
# its row would otherwise hand over a row already near the grace, which a safety net could take
# while the owner publishes it as fresh (88 duplicates in a bench run at 300 in flight).
_WRITTEN_NOW = "clock_timestamp()"
# Rows no relay has in hand: never handed over, or handed over past the grace to a relay that
# is gone (its owner lock free), or past the cap.
_CLAIM = text(
    f"SELECT id, {_COLUMNS} "
    "FROM outbox WHERE published_at IS NULL AND (headers -> 'reelflow.handed_over' IS NULL "
    "OR (created_at < now() - make_interval(secs => :grace) "
    "AND (created_at < now() - make_interval(secs => :cap) "
    "OR headers ->> 'reelflow.handed_over' NOT IN ("
    "SELECT objid::bigint::text FROM pg_locks WHERE locktype = 'advisory' "
    "AND classid = CAST(:owners AS oid) AND objsubid = 2 AND granted)))) "
    "ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
)
_MARK = text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)")
_MARK_PLAIN = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
# A batch of handed-over rows, locked before they are published: those no other relay has
# claimed (locked, or published and marked) meanwhile.
_LOCK_HANDED = text(
    "SELECT id FROM outbox WHERE id = ANY(:ids) AND published_at IS NULL FOR UPDATE SKIP LOCKED"
)
_LOCK_HANDED_PLAIN = (
    "SELECT id FROM outbox WHERE id = ANY($1::bigint[]) AND published_at IS NULL "
    "FOR UPDATE SKIP LOCKED"
)
_INSERTS: dict[int, Any] = {}


def _insert(n: int) -> Any:
    """One INSERT of `n` rows, returning their ids (statements cached by row count)."""
    statement = _INSERTS.get(n)
    if statement is None:
        values = ", ".join(
            f"(:m{i}, :e{i}, :r{i}, :t{i}, :c{i}, :b{i}, CAST(:h{i} AS jsonb), {_WRITTEN_NOW})"
            for i in range(n)
        )
        statement = _INSERTS[n] = text(
            f"INSERT INTO outbox ({_COLUMNS}, created_at) VALUES {values} RETURNING id"
        )
    return statement


def _write_staged(session: Session) -> None:
    """`before_commit`: write the transaction's staged rows (one statement), in it."""
    staged = session.info.pop(_STAGED, None)
    if not staged:
        return
    relay = session.info.get(RELAY_KEY)
    owner = relay.owner_mark if isinstance(relay, OutboxRelay) and relay.running else None
    handing = owner is not None
    params: dict[str, Any] = {}
    for i, row in enumerate(staged):
        headers = dict(row["headers"])
        if handing:
            headers[_HANDED] = owner
        params.update(
            {
                f"m{i}": row["message_id"],
                f"e{i}": row["exchange"],
                f"r{i}": row["routing_key"],
                f"t{i}": row["type"],
                f"c{i}": row["correlation_id"],
                f"b{i}": row["body"],
                f"h{i}": json.dumps(headers),
            }
        )
    ids = session.execute(_insert(len(staged)), params).scalars().all()
    if handing:
        written_at = time.monotonic()
        for row, row_id in zip(staged, ids, strict=True):
            row["id"] = row_id
            row[_WRITTEN_AT] = written_at
        session.info.setdefault(_WRITTEN, []).extend(staged)


def _hand_over(session: Session) -> None:
    """`after_commit`: the committed rows go to the relay, to be published now."""
    written = session.info.pop(_WRITTEN, None)
    relay = session.info.get(RELAY_KEY)
    if written and isinstance(relay, OutboxRelay):
        relay.hand_over(written)


def _drop_staged(session: Session, *_: Any) -> None:
    """Rolled back (or ended without a commit): nothing staged or written goes out."""
    session.info.pop(_STAGED, None)
    session.info.pop(_WRITTEN, None)


def install_outbox_hooks() -> None:
    """Once per process (`enqueue` needs them: without them staged rows are never written)."""
    if not event.contains(Session, "before_commit", _write_staged):
        event.listen(Session, "before_commit", _write_staged)
        event.listen(Session, "after_commit", _hand_over)
        event.listen(Session, "after_soft_rollback", _drop_staged)


# -- plain asyncpg transactions ------------------------------------------------------------------


def plain_insert(first: int, *, where: str | None = None, body: str = "b") -> str:
    """The INSERT of an `Outgoing`'s rows (its `arrays()` bound to `$first` … `$first+6`), one
    statement for all of them, returning each row's `id` and `message_id`: on its own, or as a
    CTE of the caller's statement (one round trip for a state change and its messages), then
    perhaps only `where` a condition on the statement's other CTEs holds. `body`: the SQL of
    the body written, from the staged one (`b`), for a value only the statement computes (the
    caller puts the same body in its row before `written()`)."""
    p = [f"${first + i}" for i in range(7)]
    return (
        f"INSERT INTO outbox ({_COLUMNS}, created_at) "
        f"SELECT m, e, r, t, c, {body}, h::jsonb, {_WRITTEN_NOW} "
        f"FROM unnest({p[0]}::uuid[], {p[1]}::text[], {p[2]}::text[], "
        f"{p[3]}::text[], {p[4]}::text[], {p[5]}::text[], {p[6]}::text[]) "
        f"AS u(m, e, r, t, c, b, h) {f'WHERE {where} ' if where else ''}RETURNING id, message_id"
    )


_PLAIN_INSERT = plain_insert(1)


class Outgoing:
    """The outbox rows of one transaction on a plain asyncpg connection: what `enqueue` stages
    on a session. The caller writes them in its transaction (`plain_insert` with `arrays()`,
    then `written()` with what it returned), and calls `committed()` after the commit, which
    hands them to the relay to be published now, as a session's commit hands its rows over."""

    def __init__(self, relay: OutboxRelay | None) -> None:
        self.relay = relay
        self.rows: list[dict[str, Any]] = []  # written in this transaction

    @staticmethod
    def stage(
        message: Message,
        *,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
        context: Context | None = None,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """`message` as a row to write (as `enqueue` stages it: the current trace context and
        user kept with it). A caller handling several messages at once names each one's trace
        `context` and `user_id` instead (the current ones are not that message's)."""
        return _row(
            message, headers=headers, routing_key=routing_key, context=context, user_id=user_id
        )

    @property
    def _handing(self) -> bool:
        return self.relay is not None and self.relay.running

    def arrays(self, rows: list[dict[str, Any]]) -> list[list[Any]]:
        """The seven arrays `plain_insert` takes, for `rows`."""
        handing = self._handing
        headers = []
        for row in rows:
            stored = row["headers"]
            if handing:
                assert self.relay is not None
                stored = {**stored, _HANDED: self.relay.owner_mark}
            headers.append(json.dumps(stored))
        return [
            [r["message_id"] for r in rows],
            [r["exchange"] for r in rows],
            [r["routing_key"] for r in rows],
            [r["type"] for r in rows],
            [r["correlation_id"] for r in rows],
            [r["body"] for r in rows],
            headers,
        ]

    def written(self, rows: list[dict[str, Any]], returned: Any) -> None:
        """`rows` were inserted (`returned`: the INSERT's `(id, message_id)` pairs)."""
        ids = {message_id: row_id for row_id, message_id in returned}
        written_at = time.monotonic()
        for row in rows:
            row["id"] = ids[row["message_id"]]
            row[_WRITTEN_AT] = written_at
        self.rows.extend(rows)

    async def write(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        """Insert `rows` on their own (`plain_insert`, one statement) in `conn`'s transaction;
        for a caller with no statement of its own to make it a CTE of."""
        if rows:
            self.written(rows, await conn.fetch(_PLAIN_INSERT, *self.arrays(rows)))

    def committed(self) -> None:
        """After the commit: the written rows go to the relay, to be published now (with no
        running relay, a relay's next round claims them)."""
        rows, self.rows = self.rows, []
        if rows and self.relay is not None:
            if self._handing:
                self.relay.hand_over(rows)
            else:
                self.relay.wake()


class OutboxRelay:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        amqp_url: str,
        database_dsn: str,
        *,
        batch_size: int = 200,
        idle_poll_seconds: float = 0.5,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessionmaker
        self._dsn = database_dsn  # the relay's own connection: its owner lock, its marks
        self._mark_conn: asyncpg.Connection | None = None
        # The key of the owner lock the own connection holds (None while it has none).
        self.owner: int | None = None
        self._owner_key = random.randint(2, 2**31 - 1)
        self._metrics = metrics
        self._amqp_url = amqp_url
        self._batch = batch_size
        self._idle = idle_poll_seconds
        self._wake = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: list[dict[str, Any]] = []  # committed rows handed over, not yet sent
        self._handed = False  # rows were handed over since the last `wake()`
        self._claim = True  # claim waiting rows at the next round (poll, or `wake()`)
        # A plain asyncpg pool (a callable returning it) to lock and mark handed-over rows
        # with, when the process has one (`use_pool`), instead of a session.
        self._pool: Callable[[], Any] | None = None
        self._unmarked: list[int] = []  # fresh rows published, their marks not yet written
        self._unmarked_since: float | None = None  # when the oldest of them was published
        self._writing_since: float | None = None  # the same for the marks being written
        self._marks_due = asyncio.Event()
        self._marker: asyncio.Task[None] | None = None
        self.published = 0
        self.published_fresh = 0  # of which fresh, published with no statement before

    def wake(self) -> None:
        """Call after committing outbox rows so they go out now, not at the next poll.

        Rows committed through a session of this relay's maker are handed over by the commit
        itself (and go out at once without this); otherwise the relay claims them now."""
        if self._handed:
            self._handed = False
        else:
            self._claim = True
        self._wake.set()

    def use_pool(self, pool: Callable[[], Any]) -> None:
        """Lock and mark handed-over rows through this asyncpg pool (`pool()` returns it)."""
        self._pool = pool

    def hand_over(self, rows: list[dict[str, Any]]) -> None:
        """Committed rows (with their ids), to publish now (the commit hook calls this)."""
        self._pending.extend(rows)
        self._handed = True
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def owner_mark(self) -> int:
        """What a row handed over now says of its relay (`_HANDED`)."""
        return self.owner if self.owner is not None else _NO_OWNER

    async def start(self) -> None:
        try:
            await self._own_connection()
        except Exception as exc:  # rows are protected by the grace alone until it is back
            log.warning("Relay's own database connection failed, will retry", error=str(exc))
        self._connection = await aio_pika.connect_robust(self._amqp_url)
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        await declare(self._channel)
        self._exchanges = {
            name: await self._channel.get_exchange(name) for name in (EVENTS, COMMANDS, LIVE)
        }
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        self._marker = asyncio.create_task(self._mark_loop(), name="outbox-marks")

    async def stop(self) -> None:
        for task in (self._task, self._marker):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):  # what is left is republished after the grace
            await self._write_marks()
        if self._mark_conn is not None:
            self.owner = None  # what is left in hand goes to the others after the grace
            with contextlib.suppress(Exception):
                await self._mark_conn.close(timeout=5)
        if self._connection:
            await self._connection.close()

    @property
    def healthy(self) -> bool:
        return bool(
            self._task
            and not self._task.done()
            and self._connection
            and not self._connection.is_closed
        )

    async def _run(self) -> None:
        while True:
            try:
                while self._pending:
                    await self._publish_handed()
                if self._claim:
                    self._claim = False
                    while await self.drain_once():
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database away: keep rows, try again soon
                log.warning("Relay failed, will retry", error=str(exc))
                if self._metrics is not None:
                    self._metrics.publish_failures.inc()
                self._claim = True
                await asyncio.sleep(1.0)
            if self._pending:
                continue
            if not await wait_set(self._wake, self._idle):
                self._claim = True  # the safety net: rows no running relay has in hand
            self._wake.clear()

    async def _publish_handed(self) -> None:
        """Publish handed-over rows (a batch): the fresh ones at once, marked later in a batch
        (`_mark_loop`); the others under their locks, those still unpublished, marked in the
        same transaction. Without the lock, a row this relay held past the grace (a busy
        process) went out twice: the safety net of another relay (or this one) claimed and
        published it, then this relay published it again. Rows whose publishing failed are
        tried again (below)."""
        batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
        out: set[int] = set()  # ids of the batch's rows published
        try:
            await self._publish_batch(batch, out)
        except Exception:
            # Still this relay's (no other takes them while it lives): tried again, on the
            # locked path, behind the others; after MAX_RETRIES left to the safety nets (past
            # OWNED_CAP_SECONDS), so that a row that cannot go out holds up no other.
            self._pending += [
                _retried(row)
                for row in batch
                if row["id"] not in out and _retries(row) < MAX_RETRIES
            ]
            raise

    async def _publish_batch(self, batch: list[dict[str, Any]], out: set[int]) -> None:
        now = time.monotonic()
        old = now - FRESH_SECONDS
        fresh = [row for row in batch if row.get(_WRITTEN_AT, old) > old]
        if fresh and (self._pending or self._marks_lag(now)):
            # Behind (more handed over than a batch: a burst, its event loop likely saturated
            # and its marks about to be late) or the marks lag: the locked path, exact whatever
            # the delays, until the relay catches up.
            fresh = []
        if fresh:
            outcomes = await asyncio.gather(
                *(self._publish(row) for row in fresh), return_exceptions=True
            )
            sent = [row for row, error in zip(fresh, outcomes, strict=True) if error is None]
            out.update(row["id"] for row in sent)
            self._count(sent)
            self.published_fresh += len(sent)
            if sent and not self._unmarked:
                self._unmarked_since = time.monotonic()
            self._unmarked.extend(row["id"] for row in sent)
            self._marks_due.set()
            for error in outcomes:
                if isinstance(error, BaseException):
                    raise error
            if len(fresh) == len(batch):
                return
            batch = [row for row in batch if row.get(_WRITTEN_AT, old) <= old]
        ids = [row["id"] for row in batch]
        if self._pool is not None:
            async with self._pool().acquire() as conn, conn.transaction():
                rows = await self._publish_locked(
                    conn.fetch(_LOCK_HANDED_PLAIN, ids),
                    lambda marked: conn.execute(_MARK_PLAIN, marked),
                    batch,
                )
        else:
            async with self._sessions() as session, session.begin():
                rows = await self._publish_locked(
                    _fetch(session, _LOCK_HANDED, {"ids": ids}), _marker(session), batch
                )
        self._count(rows)

    async def _mark_loop(self) -> None:
        """Mark the fresh rows published, those confirmed within `MARK_EVERY_SECONDS` in one
        UPDATE. A failed mark is tried again next round (a row still unmarked at the grace is
        published once more by a safety net: a duplicate the consumers' inboxes ignore)."""
        while True:
            await self._marks_due.wait()
            await asyncio.sleep(MARK_EVERY_SECONDS)
            self._marks_due.clear()
            try:
                await self._write_marks()
            except Exception as exc:  # the database is away: keep the ids, try again soon
                log.warning("Marking published rows failed, will retry", error=str(exc)[:300])
                self._marks_due.set()
                await asyncio.sleep(1.0)

    def _marks_lag(self, now: float) -> bool:
        """A mark is overdue: written (or being written) `MARKS_LATE_SECONDS` after its publish."""
        since = [t for t in (self._unmarked_since, self._writing_since) if t is not None]
        return bool(since) and now - min(since) > MARKS_LATE_SECONDS

    async def _write_marks(self) -> None:
        ids, self._unmarked = self._unmarked, []
        if not ids:
            return
        self._writing_since, self._unmarked_since = self._unmarked_since, None
        try:
            await self._marked_on_own_connection(ids)
        except BaseException:
            self._unmarked[:0] = ids
            self._unmarked_since = self._writing_since
            raise
        finally:
            self._writing_since = None

    async def _own_connection(self) -> asyncpg.Connection:
        """The relay's own connection, holding its owner lock (taken again on a new one: the
        same key when it is free, as it is once the old session ended)."""
        conn = self._mark_conn
        if conn is not None and not conn.is_closed():
            return conn
        self.owner = None
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            while not await conn.fetchval(_TAKE_OWNER_LOCK, OWNER_LOCK_CLASS, self._owner_key):
                self._owner_key = random.randint(2, 2**31 - 1)  # another relay's: draw again
        except BaseException:
            conn.terminate()
            raise
        self._mark_conn, self.owner = conn, self._owner_key
        return conn

    async def _marked_on_own_connection(self, ids: list[int]) -> None:
        conn = self._mark_conn
        try:
            conn = await self._own_connection()
            await conn.execute(_MARK_PLAIN, ids, timeout=30)
        except BaseException:
            # A new connection next time (the database restarted, say); the owner lock is gone
            # with this one: the rows handed over under it are left to the grace alone.
            self._mark_conn, self.owner = None, None
            if conn is not None:
                conn.terminate()
            raise

    async def drain_once(self) -> int:
        """Publish one batch of claimed rows; the number published (0 when none is waiting)."""
        async with self._sessions() as session, session.begin():
            args = {
                "n": self._batch,
                "grace": HANDOVER_GRACE_SECONDS,
                "cap": OWNED_CAP_SECONDS,
                "owners": OWNER_LOCK_CLASS,
            }
            rows = await self._publish_locked(_fetch(session, _CLAIM, args), _marker(session))
        self._count(rows)
        return len(rows)

    async def _publish_locked(
        self,
        locking: Awaitable[Sequence[Any]],
        mark: Callable[[list[int]], Awaitable[Any]],
        handed: list[dict[str, Any]] | None = None,
    ) -> Sequence[Any]:
        """Publish the rows `locking` locks in the caller's transaction, in its order, then mark
        them published through `mark` in that transaction (no statement when none was locked).
        With `handed` (handed-over rows, `locking` the lock of their ids), those of them it
        locked go out instead, in `handed`'s order. The rows published, for the caller to count
        once its transaction committed."""
        rows = await locking
        if handed is not None:
            mine = {row["id"] for row in rows}
            rows = [row for row in handed if row["id"] in mine]
        await asyncio.gather(*(self._publish(row) for row in rows))
        if rows:
            await mark([row["id"] for row in rows])
        return rows

    def _count(self, rows: Any) -> None:
        self.published += len(rows)
        if self._metrics is not None:
            for row in rows:
                self._metrics.published.labels(row["type"]).inc()

    async def _publish(self, row: Any) -> None:
        stored = dict(row["headers"] or {})
        user_id = stored.pop(_USER, None)
        stored.pop(_HANDED, None)
        with telemetry.tracer().start_as_current_span(
            f"publish {row['routing_key']}",
            context=telemetry.extract(stored),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": row["exchange"],
                "messaging.rabbitmq.destination.routing_key": row["routing_key"],
                "messaging.message.id": str(row["message_id"]),
                "messaging.message.conversation_id": row["correlation_id"],
                "messaging.message.body.size": len(row["body"]),
            },
        ) as span:
            if span.is_recording():
                _label(span, row, user_id)
            message = aio_pika.Message(
                body=row["body"].encode(),
                content_type="application/json",
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=str(row["message_id"]),
                type=row["type"],
                correlation_id=row["correlation_id"],
                headers=telemetry.inject(dict(stored)),  # this span's traceparent
            )
            await self._exchanges[row["exchange"]].publish(
                message, routing_key=row["routing_key"], mandatory=row["exchange"] != LIVE
            )


def _retries(row: dict[str, Any]) -> int:
    return int(row.get(_RETRIES, 0))


def _retried(row: dict[str, Any]) -> dict[str, Any]:
    """A handed-over row that failed to go out, to try again: no longer fresh (the locked path
    takes it), one more failure counted."""
    again = {k: v for k, v in row.items() if k != _WRITTEN_AT}
    again[_RETRIES] = _retries(row) + 1
    return again


async def _fetch(session: AsyncSession, statement: Any, params: dict[str, Any]) -> Sequence[Any]:
    """`statement`'s rows in `session`'s transaction (by column name: `row["id"]`)."""
    return (await session.execute(statement, params)).mappings().all()


def _marker(session: AsyncSession) -> Callable[[list[int]], Awaitable[Any]]:
    """Marks rows (by id) published in `session`'s transaction."""
    return lambda ids: session.execute(_MARK, {"ids": ids})


def _label(span: trace.Span, row: Any, user_id: str | None) -> None:
    """The generation and user a published message is about (read only when recording)."""
    try:
        body = json.loads(row["body"])
    except ValueError:
        return
    if user_id:
        body.setdefault("user_id", user_id)
    for key, attribute in (
        ("generation_id", telemetry.GENERATION_ID),
        ("user_id", telemetry.USER_ID),
    ):
        if body.get(key):
            span.set_attribute(attribute, str(body[key]))


install_outbox_hooks()
