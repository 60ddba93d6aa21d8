"""Delivering webhooks: retries on the schedule, failures that lose nothing, redirects, 410,
timeouts, and the SSRF guard, against real receivers on loopback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sized
from datetime import UTC, datetime, timedelta

from shared.db.models import ChatMessage, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.messages import WebhookDeliveryRequested
from shared.state_machine import Event, Status
from sqlalchemy import select
from sqlmodel import col
from standardwebhooks import Webhook

from tests.support import free_port

from .conftest import SendCommand, World, cancelled, eventually, lifecycle
from .test_events import NEXTJS_VERIFIER, completed

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def attempts(world: World, delivery_id: uuid.UUID) -> list[WebhookAttempt]:
    async with world.sessions() as session:
        rows = await session.scalars(
            select(WebhookAttempt)
            .where(col(WebhookAttempt.delivery_id) == delivery_id)
            .order_by(col(WebhookAttempt.id))
        )
        return list(rows)


async def deliveries(world: World, target: str | None = None) -> list[WebhookDelivery]:
    async with world.sessions() as session:
        query = select(WebhookDelivery).order_by(col(WebhookDelivery.created_at))
        if target is not None:
            query = query.where(col(WebhookDelivery.target) == target)
        return list(await session.scalars(query))


def finished(
    world: World, target: str | None = None, count: int = 1
) -> Callable[[], Awaitable[list[WebhookDelivery]]]:
    async def check() -> list[WebhookDelivery]:
        rows = await deliveries(world, target)
        done = len(rows) == count and all(d.status != "pending" for d in rows)
        return rows if done else []

    return check


async def settled(world: World) -> WebhookDelivery:
    """The one delivery, once it is no longer pending."""
    (delivery,) = await eventually(finished(world), within=30)
    return delivery


async def test_a_receiver_failing_twice_gets_the_same_webhook_id_three_times(
    world: World, notifier, receivers, publish
) -> None:
    nextjs = await receivers(script=[500, 503])
    await notifier(NEXTJS_URL=nextjs.base, WEBHOOK_RETRY_SCHEDULE="1,1")
    await publish(cancelled(world.generation), headers={"traceparent": TRACEPARENT})
    delivery = await settled(world)
    assert delivery.status == "succeeded" and delivery.next_attempt_at is None

    assert len(nextjs.hits) == 3
    assert {h.headers["webhook-id"] for h in nextjs.hits} == {delivery.webhook_id}
    assert {h.body for h in nextjs.hits} == {delivery.payload.encode()}
    for hit in nextjs.hits:  # every attempt is signed afresh and verifies
        NEXTJS_VERIFIER.verify(hit.body, hit.headers)
        # The event's trace goes on at the receiver, from this attempt's own (client) span.
        version, trace_id, parent, _ = hit.headers["traceparent"].split("-")
        assert (version, trace_id) == ("00", TRACEPARENT.split("-")[1])
        assert parent != TRACEPARENT.split("-")[2]
    parents = {h.headers["traceparent"].split("-")[2] for h in nextjs.hits}
    assert len(parents) == 3  # one span per attempt
    # At the scheduled spacing: 1 s ±20% between attempts (never sooner).
    gaps = [b.at - a.at for a, b in zip(nextjs.hits, nextjs.hits[1:], strict=False)]
    assert all(gap >= 0.8 for gap in gaps), gaps

    log = await attempts(world, delivery.id)
    assert [a.status_code for a in log] == [500, 503, 200]
    assert [a.response_excerpt for a in log] == ["answer 500", "answer 503", "answer 200"]
    assert all(a.latency_ms is not None and a.error is None for a in log)
    assert log[0].at < log[1].at < log[2].at


async def test_retry_after_longer_than_the_schedule_is_honoured(
    world: World, notifier, receivers, publish
) -> None:
    nextjs = await receivers(script=[(429, {"Retry-After": "3"})])
    await notifier(NEXTJS_URL=nextjs.base, WEBHOOK_RETRY_SCHEDULE="1")
    await publish(cancelled(world.generation))
    delivery = await settled(world)
    assert delivery.status == "succeeded"
    first, second = nextjs.hits
    assert second.at - first.at >= 3.0


async def test_an_unreachable_nextjs_loses_nothing_and_blocks_nothing(
    world: World, notifier, receivers, publish
) -> None:
    endpoint = await receivers()
    await world.endpoint(endpoint.url)
    closed = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    await notifier(NEXTJS_URL=closed, WEBHOOK_RETRY_SCHEDULE="1,1")
    gen = world.generation
    await publish(lifecycle(gen, Event.CONFIRMED, Status.CONFIRMED))
    await publish(completed(world))

    # The chat gets its messages, and the registered endpoint its webhooks, meanwhile.
    async def chat() -> list[ChatMessage]:
        async with world.sessions() as session:
            rows = list(await session.scalars(select(ChatMessage)))
        return rows if len(rows) == 2 else []

    texts = sorted(m.content for m in await eventually(chat))
    assert texts == ["Generating video…", "Your video is ready (8 seconds, 1280x720)."]
    await eventually(lambda: _count(endpoint.hits, 2))

    failed = await eventually(finished(world, "nextjs", count=2), within=30)
    assert [d.status for d in failed] == ["failed", "failed"]
    for delivery in failed:
        log = await attempts(world, delivery.id)
        assert len(log) == 3  # the first try plus one per step of "1,1"
        assert all(a.status_code is None and a.error for a in log)
        assert "Connect" in (log[0].error or ""), log[0].error
    others = await deliveries(world, str((await _endpoint_ids(world))[0]))
    assert [d.status for d in others] == ["succeeded", "succeeded"]

    # And events keep flowing after the failures.
    await publish(cancelled(await world.another_generation()))
    await eventually(lambda: _count(endpoint.hits, 3))


async def _count(items: Sized, n: int) -> bool:
    return len(items) >= n


async def _endpoint_ids(world: World) -> list[uuid.UUID]:
    async with world.sessions() as session:
        return list(await session.scalars(select(col(WebhookEndpoint.id))))


async def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    world: World, notifier, receivers, publish
) -> None:
    elsewhere = await receivers()
    nextjs = await receivers(status=302)
    nextjs.script = [(302, {"Location": elsewhere.url})] * 2
    await notifier(NEXTJS_URL=nextjs.base, WEBHOOK_RETRY_SCHEDULE="1")
    await publish(cancelled(world.generation))
    delivery = await settled(world)
    assert delivery.status == "failed"
    assert [a.status_code for a in await attempts(world, delivery.id)] == [302, 302]
    assert elsewhere.hits == []


async def test_410_disables_the_endpoint_and_ends_the_delivery(
    world: World, notifier, receivers, publish
) -> None:
    gone = await receivers(status=410)
    endpoint = await world.endpoint(gone.url)
    await notifier(WEBHOOK_RETRY_SCHEDULE="1,1")
    await publish(cancelled(world.generation))
    delivery = await settled(world)
    assert delivery.status == "failed"
    assert [a.status_code for a in await attempts(world, delivery.id)] == [410]
    row = await world.endpoint_row(endpoint.id)
    assert row.status == "disabled"
    assert "410" in (row.disabled_reason or "")

    # A disabled endpoint gets no more deliveries.
    marker = await receivers()
    await world.endpoint(marker.url)
    await publish(cancelled(await world.another_generation()))
    await eventually(lambda: _count(marker.hits, 1))
    assert len(gone.hits) == 1
    assert len(await deliveries(world, str(endpoint.id))) == 1


async def test_a_slow_receiver_is_cut_at_the_timeout_and_delays_no_one(
    world: World, notifier, receivers, publish
) -> None:
    slow = await receivers(hang=30)
    await world.endpoint(slow.url)
    fast = await receivers()
    await notifier(NEXTJS_URL=fast.base, WEBHOOK_TIMEOUT_SECONDS="1", WEBHOOK_RETRY_SCHEDULE="1")
    for _ in range(3):
        gen = await world.another_generation()
        await publish(cancelled(gen))

    await eventually(lambda: _count(fast.hits, 3))
    await eventually(lambda: _count(slow.cut, 3))
    # The fast receiver had all its webhooks before the slow one's first requests were cut.
    assert max(h.at for h in fast.hits) < min(slow.cut)

    endpoint_id = str((await _endpoint_ids(world))[0])
    slow_deliveries = await eventually(finished(world, endpoint_id, count=3), within=30)
    for delivery in slow_deliveries:
        log = await attempts(world, delivery.id)
        assert len(log) == 2 and delivery.status == "failed"
        for attempt in log:
            assert attempt.status_code is None
            assert attempt.error == "no answer within 1s"
            assert attempt.latency_ms is not None and 900 <= attempt.latency_ms < 10_000


async def test_endpoints_on_private_addresses_are_refused_unless_allowed(
    world: World, notifier, receivers, publish
) -> None:
    local = await receivers()
    urls = [
        local.url,
        f"http://localhost:{local.port}/hook",
        f"http://[::ffff:127.0.0.1]:{local.port}/hook",
        "http://169.254.169.254/latest/meta-data/",
    ]
    for url in urls:
        await world.endpoint(url)
    nextjs = await receivers()  # the operator's NEXTJS_URL is trusted, loopback or not
    await notifier(
        NEXTJS_URL=nextjs.base, WEBHOOK_ALLOW_PRIVATE_NETWORKS="false", WEBHOOK_RETRY_SCHEDULE="1"
    )
    await publish(cancelled(world.generation))
    rows = await eventually(finished(world, count=5), within=30)
    by_url = {d.url: d for d in rows}
    assert by_url[nextjs.base + "/api/webhooks/worker"].status == "succeeded"
    for url in urls:
        delivery = by_url[url]
        assert delivery.status == "failed"
        for attempt in await attempts(world, delivery.id):
            assert attempt.status_code is None
            assert "public address" in (attempt.error or ""), attempt.error
    assert local.hits == []
    assert len(nextjs.hits) == 1 and json.loads(nextjs.hits[0].body)["event"] == (
        "generation.cancelled"
    )


async def test_an_endpoint_with_a_rotated_secret_is_signed_with_the_current_one(
    world: World, notifier, receivers, publish
) -> None:
    receiver = await receivers(script=[500])
    endpoint = await world.endpoint(receiver.url)
    await notifier(WEBHOOK_RETRY_SCHEDULE="1")
    await publish(cancelled(world.generation))
    await eventually(lambda: _count(receiver.hits, 1))
    rotated = "whsec_" + "c2VjcmV0LXJvdGF0ZWQtZm9yLXRoZS10ZXN0"
    await world.set_endpoint(endpoint.id, secret=rotated)
    await eventually(finished(world), within=30)
    first, retry = receiver.hits
    Webhook(endpoint.secret).verify(first.body, first.headers)
    Webhook(rotated).verify(retry.body, retry.headers)
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]


async def test_a_restarted_notifier_still_makes_the_retry_once(
    world: World, notifier, receivers, publish
) -> None:
    nextjs = await receivers(script=[500])
    first = await notifier(NEXTJS_URL=nextjs.base, WEBHOOK_RETRY_SCHEDULE="2")
    await publish(cancelled(world.generation))
    await eventually(lambda: _count(nextjs.hits, 1))
    (pending,) = await deliveries(world)
    await eventually(lambda: _attempted(world, pending.id, 1))
    await first.stop()  # the retry now waits in a delay queue, with nobody running
    await notifier(NEXTJS_URL=nextjs.base, WEBHOOK_RETRY_SCHEDULE="2")
    delivery = await settled(world)
    assert delivery.status == "succeeded"
    assert [a.status_code for a in await attempts(world, delivery.id)] == [500, 200]
    assert len(nextjs.hits) == 2


async def _attempted(world: World, delivery_id: uuid.UUID, n: int) -> bool:
    return len(await attempts(world, delivery_id)) >= n


async def test_a_stale_copy_of_a_delivery_command_makes_no_extra_call(
    world: World, notifier, receivers, publish, send_command: SendCommand
) -> None:
    nextjs = await receivers(script=[500])
    await notifier(NEXTJS_URL=nextjs.base, WEBHOOK_RETRY_SCHEDULE="2")
    await publish(cancelled(world.generation))
    await eventually(lambda: _count(nextjs.hits, 1))
    (delivery,) = await deliveries(world)
    await eventually(lambda: _attempted(world, delivery.id, 1))
    # While the retry waits, a copy of the first attempt's command turns up again.
    await send_command(
        WebhookDeliveryRequested(
            generation_id=world.generation.id, delivery_id=delivery.id, attempt=1
        )
    )
    done = await settled(world)
    assert done.status == "succeeded"
    assert [a.status_code for a in await attempts(world, delivery.id)] == [500, 200]
    assert len(nextjs.hits) == 2


async def test_a_delivery_whose_lease_ran_out_is_taken_up_and_made_once(
    world: World, notifier, receivers
) -> None:
    """What a notifier killed -9 mid-delivery leaves behind: a pending row, leased to a process
    that is gone. The row is the record: another notifier's sweeper makes the attempt."""
    nextjs = await receivers()
    row = WebhookDelivery(
        webhook_id=f"msg_{uuid.uuid4().hex}",
        target="nextjs",
        url=nextjs.base + "/api/webhooks/worker",
        event="generation.cancelled",
        generation_id=world.generation.id,
        payload=json.dumps({"event": "generation.cancelled", "userId": str(world.user_id)}),
        status="pending",
        next_attempt_at=datetime.now(UTC) - timedelta(seconds=1),  # the lease ran out
    )
    async with world.sessions() as session, session.begin():
        session.add(row)
    await notifier(NEXTJS_URL=nextjs.base)
    delivery = await settled(world)
    assert delivery.status == "succeeded" and delivery.next_attempt_at is None
    assert [a.status_code for a in await attempts(world, row.id)] == [200]
    (hit,) = nextjs.hits
    assert hit.headers["webhook-id"] == row.webhook_id
    NEXTJS_VERIFIER.verify(hit.body, hit.headers)
