"""Registered endpoints over time: secret rotation, the five-day rule (in seconds here), deletion,
manual redeliveries, per-endpoint isolation, and the SSRF guard on every path an attempt takes."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import Any

from notifier.main import NotifierService
from shared.db.models import WebhookDelivery, WebhookEndpoint
from shared.messages import WebhookDeliveryRequested
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from .conftest import Receiver, SendCommand, World, cancelled, eventually
from .test_delivery import attempts, deliveries, finished, settled

OLD = "whsec_" + "b2xkLXNlY3JldC1mb3ItdGhlLWdyYWNlLXRlc3Q="


def verifies(secret: str, hit: object) -> bool:
    try:
        Webhook(secret).verify(hit.body, hit.headers)  # type: ignore[attr-defined]
    except WebhookVerificationError:
        return False
    return True


async def test_during_the_grace_period_the_old_and_new_secrets_both_verify(
    world: World, notifier, receivers, publish
) -> None:
    receiver = await receivers()
    endpoint = await world.endpoint(receiver.url)
    await world.set_endpoint(
        endpoint.id,
        previous_secret=OLD,
        previous_secret_expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    await notifier()
    await publish(cancelled(world.generation))
    (hit,) = await eventually(lambda: _hits(receiver, 1))
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert verifies(endpoint.secret, hit) and verifies(OLD, hit)

    # Once the grace period is over, only the new secret signs.
    await world.set_endpoint(endpoint.id, previous_secret_expires_at=datetime.now(UTC))
    await publish(cancelled(await world.another_generation()))
    _, later = await eventually(lambda: _hits(receiver, 2))
    assert len(later.headers["webhook-signature"].split(" ")) == 1
    assert verifies(endpoint.secret, later) and not verifies(OLD, later)


async def _hits(receiver: Receiver, n: int) -> list[Any]:
    return receiver.hits if len(receiver.hits) >= n else []


async def test_an_endpoint_failing_for_the_whole_period_is_disabled(
    world: World, notifier, receivers, publish
) -> None:
    failing = await receivers(status=500)
    endpoint = await world.endpoint(failing.url)
    await notifier(WEBHOOK_RETRY_SCHEDULE="1,1,1,1,1", WEBHOOK_DISABLE_AFTER_SECONDS="2")
    await publish(cancelled(world.generation))

    async def disabled() -> WebhookEndpoint | None:
        row = await world.endpoint_row(endpoint.id)
        return row if row.status == "disabled" else None

    row = await eventually(disabled, within=30)
    assert row.disabled_reason and row.disabled_reason.startswith("Every attempt failed from")
    # The attempt that found the streak two seconds long disabled it; the retry after it
    # finds the endpoint disabled and ends the delivery.
    delivery = await settled(world)
    assert delivery.status == "failed"
    log = await attempts(world, delivery.id)
    assert 3 <= len(log) < 6 and all(a.status_code == 500 for a in log)
    assert (log[-1].at - log[0].at).total_seconds() >= 2


async def test_a_success_ends_the_failure_streak(
    world: World, notifier, receivers, publish
) -> None:
    receiver = await receivers(script=[500])
    endpoint = await world.endpoint(receiver.url)
    await notifier(WEBHOOK_RETRY_SCHEDULE="1")
    await publish(cancelled(world.generation))

    async def streak_started() -> bool:
        return (await world.endpoint_row(endpoint.id)).failing_since is not None

    await eventually(streak_started)
    delivery = await settled(world)
    assert delivery.status == "succeeded"
    row = await world.endpoint_row(endpoint.id)
    assert row.failing_since is None and row.status == "active"


async def test_a_deleted_endpoint_gets_no_more_attempts(
    world: World, notifier, receivers, publish
) -> None:
    receiver = await receivers(status=500)
    endpoint = await world.endpoint(receiver.url)
    await notifier(WEBHOOK_RETRY_SCHEDULE="2")
    await publish(cancelled(world.generation))
    await eventually(lambda: _hits(receiver, 1))
    await world.set_endpoint(endpoint.id, status="deleted")
    delivery = await settled(world)
    assert delivery.status == "failed"
    assert len(await attempts(world, delivery.id)) == 1 and len(receiver.hits) == 1


async def reopen(world: World, delivery: WebhookDelivery) -> WebhookDeliveryRequested:
    """What the API's redeliver does: pending again, and a manual command for the next try."""
    async with world.sessions() as session, session.begin():
        row = await session.get(WebhookDelivery, delivery.id)
        assert row is not None
        row.status = "pending"
    made = len(await attempts(world, delivery.id))
    return WebhookDeliveryRequested(
        generation_id=delivery.generation_id, delivery_id=delivery.id, attempt=made + 1, manual=True
    )


async def test_a_manual_redelivery_is_one_attempt_of_the_same_message(
    world: World, notifier, receivers, publish, send_command: SendCommand
) -> None:
    receiver = await receivers(script=[500, 500, 503])
    endpoint = await world.endpoint(receiver.url)
    await notifier(WEBHOOK_RETRY_SCHEDULE="1")
    await publish(cancelled(world.generation))
    delivery = await settled(world)
    assert delivery.status == "failed"

    command = await reopen(world, delivery)
    await send_command(command)
    await send_command(command)  # a copy of it at the same time: no second call
    again = await settled(world)
    await send_command(command)  # and a late one: stale
    # 503 once more: the manual attempt fails, and is not retried on the schedule.
    assert again.status == "failed"
    log = await attempts(world, delivery.id)
    assert [(a.status_code, a.manual) for a in log] == [(500, False), (500, False), (503, True)]
    assert len(receiver.hits) == 3
    assert {h.headers["webhook-id"] for h in receiver.hits} == {delivery.webhook_id}
    for hit in receiver.hits:
        Webhook(endpoint.secret).verify(hit.body, hit.headers)

    await send_command(await reopen(world, again))
    done = await settled(world)
    assert done.status == "succeeded" and len(receiver.hits) == 4


async def test_a_slow_endpoint_holds_at_most_its_share_and_delays_no_one(
    world: World, notifier, receivers, publish
) -> None:
    slow = await receivers(hang=30)
    fast = await receivers()
    await world.endpoint(slow.url)
    await world.endpoint(fast.url)
    service: NotifierService = await notifier(
        WEBHOOK_TIMEOUT_SECONDS="3",
        WEBHOOK_RETRY_SCHEDULE="1",
        WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT="2",
    )
    for _ in range(8):
        gen = await world.another_generation()
        await publish(cancelled(gen))

    await eventually(lambda: _hits(fast, 8), within=10)
    await eventually(lambda: _cut(slow, 1), within=10)
    assert max(h.at for h in fast.hits) < min(slow.cut)
    # The waiting ones get their turn: more than the first two of the slow deliveries are tried.
    await eventually(lambda: _hits(slow, 5), within=30)
    assert max_in_flight(slow) <= 2, max_in_flight(slow)
    deferred = service.runtime.registry.get_sample_value("reelflow_webhook_attempts_deferred_total")
    assert deferred and deferred > 0


async def _cut(receiver: Receiver, n: int) -> bool:
    return len(receiver.cut) >= n


def max_in_flight(receiver: Receiver) -> int:
    """Most requests open at once at the receiver (arrivals minus cuts, over time)."""
    changes = sorted([(h.at, 1) for h in receiver.hits] + [(t, -1) for t in receiver.cut])
    open_now = peak = 0
    for _, step in changes:
        open_now += step
        peak = max(peak, open_now)
    return peak


def loopback_name() -> str:
    """A host name (not an IP literal) this machine resolves to loopback: its own name if
    /etc/hosts says so, else localhost."""
    name = socket.gethostname()
    try:
        found = {str(a[4][0]) for a in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        return "localhost"
    return name if found and all(a.startswith("127.") or a == "::1" for a in found) else "localhost"


def refused(error: str | None) -> bool:
    return bool(error) and ("public address" in error or "canonical IPv4" in error)  # type: ignore[operator]


async def test_every_path_to_an_internal_address_is_refused(
    world: World, notifier, receivers, publish, send_command: SendCommand
) -> None:
    """Private networks not allowed: first attempts, retries and manual redeliveries all
    connect through the guard, whatever the URL looks like."""
    local = await receivers()
    urls = [
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::ffff:127.0.0.1]:{local.port}/hook",
        f"http://{loopback_name()}:{local.port}/hook",
        f"http://127.1:{local.port}/hook",
    ]
    for url in urls:
        await world.endpoint(url)
    await notifier(WEBHOOK_ALLOW_PRIVATE_NETWORKS="false", WEBHOOK_RETRY_SCHEDULE="1")
    await publish(cancelled(world.generation))
    rows = await eventually(finished(world, count=len(urls)), within=30)
    for delivery in rows:
        log = await attempts(world, delivery.id)
        assert len(log) == 2, delivery.url
        # aiohttp itself refuses the legacy `127.1` form; the guard refuses the rest.
        assert all(a.status_code is None and refused(a.error) for a in log), log
        await send_command(await reopen(world, delivery))
    rows = await eventually(finished(world, count=len(urls)), within=30)
    for delivery in rows:
        log = await attempts(world, delivery.id)
        assert len(log) == 3 and log[-1].manual and refused(log[-1].error)
    assert local.hits == []


async def test_a_redirect_to_an_internal_address_is_never_followed(
    world: World, notifier, receivers, publish
) -> None:
    internal = await receivers()
    redirecting = await receivers(status=302)
    redirecting.script = [
        (302, {"Location": "http://169.254.169.254/latest/meta-data/"}),
        (307, {"Location": internal.url}),
    ]
    await world.endpoint(redirecting.url)
    # Private networks allowed only so the test can reach its loopback receiver at all.
    await notifier(WEBHOOK_RETRY_SCHEDULE="1")
    await publish(cancelled(world.generation))
    delivery = await settled(world)
    assert delivery.status == "failed"
    assert [a.status_code for a in await attempts(world, delivery.id)] == [302, 307]
    assert internal.hits == []
    assert [d.status for d in await deliveries(world)] == ["failed"]
