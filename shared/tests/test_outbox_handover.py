"""shared.outbox's hand-over. A relay that holds handed-over rows past the hand-over grace (its
process too busy to publish them for a while) is not presumed dead while it lives (its owner
lock held): another relay's safety net leaves its rows alone, and takes them once it is gone,
or past the cap. Rows taken over are published once all the same — the relay that had them in
hand publishes only those still unpublished, under their row locks. Fresh rows (the usual case)
go out with no statement first and are marked in batches, each published once beside another
relay's safety net. What a live relay failed to publish, it publishes itself later."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from prometheus_client import CollectorRegistry
from shared.db.raw import dsn, open_pool
from shared.messages import WebhookDeliveryRequested
from shared.metrics import ServiceMetrics
from shared.outbox import (
    FRESH_SECONDS,
    OWNED_CAP_SECONDS,
    OutboxRelay,
    Outgoing,
    plain_insert,
)
from shared.settings import Settings
from shared.topology import COMMANDS, NOTIFIER_DELIVERIES
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


def _command() -> WebhookDeliveryRequested:
    return WebhookDeliveryRequested(generation_id=uuid.uuid4(), delivery_id=uuid.uuid4(), attempt=1)


async def _published(pool: Any, message_ids: list[uuid.UUID], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while await pool.fetchval(
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


@pytest.fixture
async def pool(prepared: Settings) -> AsyncIterator[Any]:
    opened = await open_pool(prepared, size=2)
    yield opened
    await opened.close()


Relays = Callable[..., OutboxRelay]


@pytest.fixture
async def relays(
    prepared: Settings, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Relays]:
    """Makes relays (`OutboxRelay`'s options as keywords), each stopped at the end."""
    made: list[OutboxRelay] = []

    def make(**options: Any) -> OutboxRelay:
        made.append(OutboxRelay(sessions, prepared.amqp_url, dsn(prepared), **options))
        return made[-1]

    yield make
    for relay in reversed(made):
        await relay.stop()


async def _backdate(pool: Any, rows: list[dict[str, Any]], seconds: float) -> None:
    await pool.execute(
        "UPDATE outbox SET created_at = now() - make_interval(secs => $2) "
        "WHERE message_id = ANY($1)",
        [r["message_id"] for r in rows],
        seconds,
    )


async def _unpublished(pool: Any, rows: list[dict[str, Any]]) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE message_id = ANY($1) AND published_at IS NULL",
            [r["message_id"] for r in rows],
        )
    )


# The owner locks and marks its handed-over rows on a plain asyncpg pool (`use_pool`, as the
# orchestrator's and the notifier's relays do) or in a session (every other service's).
@pytest.mark.parametrize("through_pool", [True, False], ids=["pool", "session"])
@pytest.mark.usefixtures("clean_db")
async def test_rows_a_busy_relay_held_past_the_grace_are_published_once(
    prepared: Settings, pool: Any, relays: Relays, through_pool: bool
) -> None:
    owner = relays()  # the committing process's
    if through_pool:
        owner.use_pool(lambda: pool)
    other = relays()  # another's: the safety net
    await owner.start()
    outgoing = Outgoing(owner)
    late = [Outgoing.stage(_command()) for _ in range(3)]
    fresh = [Outgoing.stage(_command())]
    async with pool.acquire() as conn, conn.transaction():
        rows = late + fresh
        outgoing.written(rows, await conn.fetch(plain_insert(1), *outgoing.arrays(rows)))
    # As the rows of a process whose relay was too busy to get to them for longer than a live
    # relay's rows are left to it.
    await _backdate(pool, late, OWNED_CAP_SECONDS + 30)
    # The other relay finds them past the cap and publishes them (the owner is slow).
    await other.start()
    await _published(pool, [r["message_id"] for r in late])
    # Then the owner gets to its hand-over, the rows no longer fresh (it held them): the late
    # rows are not its to publish any more.
    await asyncio.sleep(FRESH_SECONDS)
    outgoing.committed()
    await _published(pool, [r["message_id"] for r in fresh])
    assert await _depth(prepared.amqp_url, NOTIFIER_DELIVERIES.name) == len(late + fresh)
    assert owner.published + other.published == len(late + fresh)


@pytest.mark.usefixtures("clean_db")
async def test_fresh_rows_go_out_at_once_and_are_marked_in_batches_each_published_once(
    prepared: Settings, pool: Any, relays: Relays
) -> None:
    owner = relays(idle_poll_seconds=0.05)
    other = relays(idle_poll_seconds=0.05)
    await owner.start()
    await other.start()
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


@pytest.mark.usefixtures("clean_db")
async def test_a_live_relays_rows_are_left_to_it_past_the_grace_and_taken_once_it_is_gone(
    prepared: Settings, pool: Any, relays: Relays
) -> None:
    owner = relays()
    other = relays(idle_poll_seconds=0.05)
    await owner.start()
    assert owner.owner is not None  # its own connection holds its owner lock
    # Rows the owner has in hand but has not got to (its event loop saturated, say), and a row
    # of a relay that named no owner: both well past the grace, within the cap.
    owned = [Outgoing.stage(_command()) for _ in range(3)]
    await Outgoing(owner).write(pool, owned)
    unowned = [Outgoing.stage(_command())]
    await Outgoing(None).write(pool, unowned)
    await pool.execute(
        "UPDATE outbox SET headers = headers || jsonb_build_object('reelflow.handed_over', 1) "
        "WHERE message_id = ANY($1)",
        [r["message_id"] for r in unowned],
    )
    await _backdate(pool, owned + unowned, 30)
    await other.start()
    # The other relay's safety net runs (it takes the row with no owner) ...
    await _published(pool, [r["message_id"] for r in unowned])
    await asyncio.sleep(0.3)  # ... several rounds of it ...
    # ... and leaves the live owner's rows alone.
    assert await _unpublished(pool, owned) == len(owned)
    # The owner stops without publishing them (as a process killed would): its lock goes with
    # its connection, and the safety net takes them, each once.
    await owner.stop()
    await _published(pool, [r["message_id"] for r in owned])
    assert other.published == len(owned + unowned)
    assert await _depth(prepared.amqp_url, NOTIFIER_DELIVERIES.name) == len(owned + unowned)


@pytest.mark.usefixtures("clean_db")
async def test_a_live_relay_publishes_what_it_failed_to_publish_itself(
    prepared: Settings, pool: Any, relays: Relays
) -> None:
    metrics = ServiceMetrics(CollectorRegistry())
    owner = relays(metrics=metrics)
    await owner.start()
    routing_key = f"test.unroutable.{uuid.uuid4().hex}"
    # No queue takes this routing key yet: the broker returns the message (mandatory), and the
    # publish fails.
    outgoing = Outgoing(owner)
    rows = [Outgoing.stage(_command(), routing_key=routing_key)]
    await outgoing.write(pool, rows)
    outgoing.committed()
    deadline = time.monotonic() + 10
    while not metrics.registry.get_sample_value("reelflow_outbox_publish_failures_total"):
        assert time.monotonic() < deadline, "the publish never failed"
        await asyncio.sleep(0.02)
    assert await _unpublished(pool, rows) == 1
    # A queue appears for it: the owner tries again and publishes it (no other relay runs, and
    # the owner's own safety net leaves its live rows alone until the cap, a minute).
    connection = await aio_pika.connect(prepared.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(COMMANDS, routing_key)
        await _published(pool, [r["message_id"] for r in rows], within=15)
        assert owner.published == 1
        message = await queue.get(timeout=5)
        assert message.message_id == str(rows[0]["message_id"])
