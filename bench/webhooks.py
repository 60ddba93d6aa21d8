"""Webhooks: deliveries/s to a fast receiver, alone and beside an endpoint that hangs.

Lifecycle events are published straight onto the events exchange (as the orchestrator's outbox
would), for one user with registered endpoints, so the notifier is measured on its own: inbox,
targets, delivery rows, first attempts, HTTP, attempt records. Every event goes to `NEXTJS_URL`
and to each of the user's endpoints; both fast targets are served by the same fast receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiohttp
import asyncpg
from aio_pika.abc import DeliveryMode
from shared.messages import LifecycleEvent
from shared.schemas import GenerationParams
from shared.state_machine import Event, Status
from shared.topology import EVENTS

from bench.receiver import FastReceiver


def lifecycle_events(user_id: uuid.UUID, count: int) -> list[LifecycleEvent]:
    """`generation.processing` for `count` distinct generations (no conversation: no assistant
    message, only webhooks), each a distinct fact (its own generation and time)."""
    now = datetime.now(UTC)
    events = []
    for i in range(count):
        at = now + timedelta(microseconds=i)
        events.append(
            LifecycleEvent(
                generation_id=uuid.uuid4(),
                user_id=user_id,
                event=Event.PROCESSING,
                snapshot={
                    "status": Status.PROCESSING,
                    "prompt": "A red fox running through fresh snow at dawn",
                    "params": GenerationParams(),
                    "version": 4,
                    "created_at": at,
                    "updated_at": at,
                },
            )
        )
    return events


async def publish(amqp_url: str, events: list[LifecycleEvent]) -> float:
    """Publish persistent, with confirms; returns when the first one was sent."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EVENTS)
        started = time.monotonic()
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body=event.model_dump_json().encode(),
                        content_type="application/json",
                        delivery_mode=DeliveryMode.PERSISTENT,
                        message_id=str(uuid.uuid4()),
                        type=event.TYPE,
                        correlation_id=event.correlation_id,
                    ),
                    routing_key=event.routing_key,
                )
                for event in events
            )
        )
    return started


class Endpoints:
    """The webhook-endpoints routes, for one user."""

    def __init__(self, api_url: str, api_key: str) -> None:
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def available(self) -> bool:
        async with aiohttp.ClientSession() as http, http.get(f"{self.api_url}/openapi.json") as r:
            paths = (await r.json()).get("paths", {})
        return "/v1/webhook-endpoints" in paths

    async def register(self, url: str) -> str:
        async with (
            aiohttp.ClientSession(headers=self.headers) as http,
            http.post(f"{self.api_url}/v1/webhook-endpoints", json={"url": url}) as r,
        ):
            body: dict[str, Any] = await r.json()
            if r.status != 201:
                raise RuntimeError(f"registering {url}: {r.status} {body}")
            return str(body["id"])

    async def delete(self, endpoint_id: str) -> None:
        async with (
            aiohttp.ClientSession(headers=self.headers) as http,
            http.delete(f"{self.api_url}/v1/webhook-endpoints/{endpoint_id}") as r,
        ):
            if r.status >= 300:
                raise RuntimeError(f"deleting endpoint: {r.status} {await r.text()}")


async def delivery_rate(
    receiver: FastReceiver,
    amqp_url: str,
    user_id: uuid.UUID,
    events: int,
    per_event: int,
    *,
    limit: float = 60.0,
) -> dict[str, Any]:
    """Publish `events` lifecycle events and time the `events * per_event` fast deliveries."""
    arrivals: list[float] = []
    expected = events * per_event
    complete = asyncio.Event()

    def arrived(path: bytes, body: bytes, at: float) -> None:
        arrivals.append(at)
        if len(arrivals) >= expected:
            complete.set()

    previous = receiver.on_request
    receiver.on_request = arrived
    try:
        started = await publish(amqp_url, lifecycle_events(user_id, events))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(complete.wait(), limit)
    finally:
        receiver.on_request = previous
    arrivals.sort()
    got = len(arrivals)
    steady = None
    if got >= 20:
        # The middle 80% of the deliveries: the notifier at full stretch, without the ramp.
        low, high = arrivals[got // 10], arrivals[(got * 9) // 10]
        if high > low:
            steady = round(((got * 9) // 10 - got // 10) / (high - low), 1)
    return {
        "events": events,
        "expected": expected,
        "delivered": got,
        "complete": got >= expected,
        "deliveries_per_s": steady,
        "overall_per_s": round(got / (arrivals[-1] - started), 1) if got else None,
        "first_after_s": round(arrivals[0] - started, 3) if got else None,
        "last_after_s": round(arrivals[-1] - started, 3) if got else None,
    }


HELD_METRIC = "reelflow_webhook_deliveries_in_memory"


async def notifier_held(metrics_url: str) -> int | None:
    """Deliveries the notifier holds in memory (queued in a lane, in flight, being recorded),
    from its `/metrics`; None when the gauge is not there."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(metrics_url, timeout=aiohttp.ClientTimeout(total=5)) as r,
    ):
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(HELD_METRIC + " "):
            return int(float(line.split()[1]))
    return None


async def wait_unheld(metrics_url: str, within: float) -> dict[str, Any]:
    """Wait until the notifier holds no delivery in memory (for at most `within` s)."""
    started = time.monotonic()
    held = await notifier_held(metrics_url)
    while held and time.monotonic() - started < within:
        await asyncio.sleep(0.2)
        held = await notifier_held(metrics_url)
    return {"held": held, "waited_s": round(time.monotonic() - started, 2)}


# A deleted endpoint's deliveries, by how far they got.
ENDPOINT_DELIVERIES_SQL = """
SELECT count(*) AS deliveries,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM webhook_attempts a
                                      WHERE a.delivery_id = d.id)) AS attempted
FROM webhook_deliveries d WHERE endpoint_id = $1
"""

# What the sweeper does to a deleted endpoint's pending delivery once its lease has run out
# (`sql.FINISH` with 'failed'), done at once. Only rows nobody holds: called when the notifier
# holds nothing in memory.
FAIL_PENDING_SQL = """
UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL
WHERE endpoint_id = $1 AND status = 'pending'
  AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = $1 AND e.status = 'deleted')
"""


async def fail_leftovers(database: str, endpoint_id: str) -> dict[str, Any]:
    """A deleted endpoint's deliveries (counts), its pending ones marked failed."""
    db = await asyncpg.connect(database)
    try:
        eid = uuid.UUID(endpoint_id)
        before = dict(await db.fetchrow(ENDPOINT_DELIVERIES_SQL, eid))
        done = await db.execute(FAIL_PENDING_SQL, eid)
    finally:
        await db.close()
    return {
        "deliveries": int(before["deliveries"]),
        "attempted": int(before["attempted"]),
        "pending_failed_by_the_bench": int(done.split()[-1]),
    }
