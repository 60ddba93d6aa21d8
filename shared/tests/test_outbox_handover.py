"""shared.outbox's hand-over. Under overload, a relay that holds handed-over rows past the
hand-over grace (its process too busy to publish them for a while) is not presumed dead twice
over: another relay's safety net may take such rows over, but each is published once — the
relay that had them in hand publishes only those still unpublished, under their row locks.
Fresh rows (the usual case) go out with no statement first and are marked in batches, each
published once beside another relay's safety net."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import pytest
from shared.db.raw import dsn, open_pool
from shared.messages import WebhookDeliveryRequested
from shared.outbox import FRESH_SECONDS, OutboxRelay, Outgoing, plain_insert
from shared.settings import Settings
from shared.topology import NOTIFIER_DELIVERIES
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


def _command() -> WebhookDeliveryRequested:
    return WebhookDeliveryRequested(generation_id=uuid.uuid4(), delivery_id=uuid.uuid4(), attempt=1)


async def _published(pool: object, message_ids: list[uuid.UUID], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while await pool.fetchval(  # type: ignore[attr-defined]
        "SELECT count(*) FROM outbox WHERE message_id = ANY($1) AND published_at IS NULL",
        message_ids,
    ):
        assert time.monotonic() < deadline, "rows were never published"
        await asyncio.sleep(0.05)


async def _depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


# The owner locks and marks its handed-over rows on a plain asyncpg pool (`use_pool`, as the
# orchestrator's and the notifier's relays do) or in a session (every other service's).
@pytest.mark.parametrize("through_pool", [True, False], ids=["pool", "session"])
@pytest.mark.usefixtures("clean_db")
async def test_rows_a_busy_relay_held_past_the_grace_are_published_once(
    prepared: Settings, sessions: async_sessionmaker[AsyncSession], through_pool: bool
) -> None:
    pool = await open_pool(prepared, size=2)
    owner = OutboxRelay(sessions, prepared.amqp_url, dsn(prepared))  # the committing process's
    if through_pool:
        owner.use_pool(lambda: pool)
    other = OutboxRelay(sessions, prepared.amqp_url, dsn(prepared))  # another's: the safety net
    await owner.start()
    try:
        outgoing = Outgoing(owner)
        late = [Outgoing.stage(_command()) for _ in range(3)]
        fresh = [Outgoing.stage(_command())]
        async with pool.acquire() as conn, conn.transaction():
            rows = late + fresh
            outgoing.written(rows, await conn.fetch(plain_insert(1), *outgoing.arrays(rows)))
            # As the rows of a process whose relay was too busy to get to them for a minute.
            await conn.execute(
                "UPDATE outbox SET created_at = now() - interval '1 minute' "
                "WHERE message_id = ANY($1)",
                [r["message_id"] for r in late],
            )
        # The other relay finds them past the grace and publishes them (the owner is slow).
        await other.start()
        await _published(pool, [r["message_id"] for r in late])
        # Then the owner gets to its hand-over, the rows no longer fresh (it held them): the
        # late rows are not its to publish any more.
        await asyncio.sleep(FRESH_SECONDS)
        outgoing.committed()
        await _published(pool, [r["message_id"] for r in fresh])
        assert await _depth(prepared.amqp_url, NOTIFIER_DELIVERIES.name) == len(late + fresh)
        assert owner.published + other.published == len(late + fresh)
    finally:
        await other.stop()
        await owner.stop()
        await pool.close()


@pytest.mark.usefixtures("clean_db")
async def test_fresh_rows_go_out_at_once_and_are_marked_in_batches_each_published_once(
    prepared: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    pool = await open_pool(prepared, size=2)
    owner = OutboxRelay(sessions, prepared.amqp_url, dsn(prepared), idle_poll_seconds=0.05)
    other = OutboxRelay(sessions, prepared.amqp_url, dsn(prepared), idle_poll_seconds=0.05)
    await owner.start()
    await other.start()
    try:
        # Ten transactions' rows, committed together (as a busy service's commits arrive).
        written: list[Outgoing] = []
        for _ in range(10):
            outgoing = Outgoing(owner)
            await outgoing.write(pool, [Outgoing.stage(_command()) for _ in range(5)])
            written.append(outgoing)
        ids = [r["message_id"] for outgoing in written for r in outgoing.rows]
        for outgoing in written:
            outgoing.committed()
        await _published(pool, ids)
        assert (owner.published, owner.published_fresh, other.published) == (50, 50, 0)
        assert await _depth(prepared.amqp_url, NOTIFIER_DELIVERIES.name) == 50
        # Published together, marked together: one UPDATE for the fifty.
        marks = await pool.fetchval(
            "SELECT count(DISTINCT published_at) FROM outbox WHERE message_id = ANY($1)", ids
        )
        assert marks == 1
    finally:
        await other.stop()
        await owner.stop()
        await pool.close()
