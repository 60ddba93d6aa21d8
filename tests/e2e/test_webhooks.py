"""Webhooks end to end: endpoints registered through the API (over real HTTP), lifecycle events
from real moves, the notifier on the real broker, customer receivers on loopback that verify
every request with `standardwebhooks`, and the delivery log read back through the API.

Receivers live on 127.0.0.1, so these run with WEBHOOK_ALLOW_PRIVATE_NETWORKS on, except where
the refusal itself is the point."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from notifier.main import NotifierService
from notifier.main import build as build_notifier
from shared.settings import Settings, load_settings
from standardwebhooks import Webhook

from tests.e2e.harness import eventually, serve_asgi
from tests.e2e.webhook_receiver import HookReceiver
from tests.infra import PrivateRabbit
from tests.support import ADMIN_KEY, free_port

FAST = {
    "WEBHOOK_RETRY_SCHEDULE": "2,2",
    "WEBHOOK_TIMEOUT_SECONDS": "2",
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
}


@dataclass
class Hooks:
    """The API and the notifier running, and one user's client."""

    settings: Settings
    http: httpx.AsyncClient
    notifier: NotifierService

    async def endpoint(self, receiver: HookReceiver | None, **body: Any) -> dict[str, Any]:
        url = body.pop("url", None) or (receiver.url if receiver else None)
        r = await self.http.post("/v1/webhook-endpoints", json={"url": url, **body})
        assert r.status_code == 201, r.text
        made = dict(r.json())
        if receiver is not None:
            receiver.secrets.append(made["secret"])
        return made

    async def event(self) -> str:
        """A generation.cancelled event: a generation made and cancelled by the user."""
        r = await self.http.post("/v1/generations", json={"prompt": "a fox in the snow"})
        assert r.status_code == 201, r.text
        generation_id = str(r.json()["id"])
        r = await self.http.post(f"/v1/generations/{generation_id}/cancel")
        assert r.status_code == 200, r.text
        return generation_id

    async def deliveries(self, endpoint_id: str) -> list[dict[str, Any]]:
        r = await self.http.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries")
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    async def settled(self, endpoint_id: str, count: int = 1) -> list[dict[str, Any]]:
        """The endpoint's deliveries once there are `count` and none is pending."""

        async def check() -> list[dict[str, Any]]:
            items = await self.deliveries(endpoint_id)
            done = len(items) == count and all(d["status"] != "pending" for d in items)
            return items if done else []

        return list(await eventually(check, within=60))

    async def read(self, endpoint_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/webhook-endpoints/{endpoint_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


StartHooks = Callable[..., Awaitable[Hooks]]
Start = Callable[..., Awaitable[HookReceiver]]


@pytest.fixture
async def hook_receivers() -> AsyncIterator[Start]:
    """`await hook_receivers(script=[500, 503])` starts a verifying receiver on loopback."""
    runners = []

    async def start(**kwargs: Any) -> HookReceiver:
        receiver = HookReceiver(**kwargs)
        runners.append(await receiver.serve())
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def start_hooks(
    env: dict[str, str], prepared: Settings, clean_db: None
) -> AsyncIterator[StartHooks]:
    stack = contextlib.AsyncExitStack()

    async def start(*, api_overrides: dict[str, str] | None = None, **overrides: str) -> Hooks:
        ports = {"API_PORT": str(free_port()), "NOTIFIER_METRICS_PORT": str(free_port())}
        values = {**env, **FAST, **ports, **overrides}
        settings = load_settings(**values)
        api_settings = load_settings(**{**values, **(api_overrides or {})})
        notifier = await start_notifier(settings)
        stack.push_async_callback(stop_quietly, notifier)
        from api.app import create_app

        await stack.enter_async_context(serve_asgi(create_app(api_settings), settings.api_port))
        base = f"http://127.0.0.1:{settings.api_port}"
        async with httpx.AsyncClient(base_url=base) as admin:
            r = await admin.post(
                "/v1/admin/users",
                json={"name": "hooks"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert r.status_code == 201, r.text
        http = httpx.AsyncClient(
            base_url=base, timeout=30, headers={"Authorization": f"Bearer {r.json()['api_key']}"}
        )
        stack.push_async_callback(http.aclose)
        return Hooks(settings, http, notifier)

    yield start
    await stack.aclose()


async def start_notifier(settings: Settings) -> NotifierService:
    service = build_notifier(settings)
    await service.start()
    return service


async def stop_quietly(service: NotifierService) -> None:
    with contextlib.suppress(Exception):
        await service.stop()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def stamps(delivery: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(a["at"]) for a in delivery["attempts"]]


# --- signatures --------------------------------------------------------------------------------


async def test_every_delivery_verifies_and_a_tampered_or_stale_one_does_not(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks()
    receiver = await hook_receivers()
    endpoint = await hooks.endpoint(receiver)
    generation_ids = [await hooks.event() for _ in range(3)]
    await hooks.settled(endpoint["id"], count=3)

    assert sorted(h.json["generationId"] for h in receiver.hits) == sorted(generation_ids)
    secret = endpoint["secret"]
    for hit in receiver.hits:
        assert hit.verified_by == [secret] and hit.status == 200
        assert hit.json["event"] == "generation.cancelled"
        assert hit.headers["webhook-signature"].startswith("v1,")
        assert hit.headers["traceparent"].startswith("00-")

    # The receiver's side: the same request with one byte changed, or signed long ago.
    original = receiver.hits[0]
    tampered = original.body.replace(b'"status":"cancelled"', b'"status":"completed"')
    assert tampered != original.body
    stale_at = datetime.now(UTC) - timedelta(minutes=10)
    stale_headers = {
        "webhook-id": original.webhook_id,
        "webhook-timestamp": str(int(stale_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(
            original.webhook_id, stale_at, original.body.decode()
        ),
        "content-type": "application/json",
    }
    async with httpx.AsyncClient() as client:
        r = await client.post(receiver.url, content=tampered, headers=original.headers)
        assert r.status_code == 400
        r = await client.post(receiver.url, content=original.body, headers=stale_headers)
        assert r.status_code == 400
        r = await client.post(receiver.url, content=original.body, headers=original.headers)
        assert r.status_code == 200  # the untouched request, within five minutes, still verifies
    assert [h.verified_by for h in receiver.hits[-3:]] == [[], [], [secret]]


async def test_rotation_old_and_new_secrets_both_verify_during_the_grace_period(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks(api_overrides={"WEBHOOK_SECRET_ROTATION_GRACE_SECONDS": "4"})
    holds_old = await hook_receivers()
    endpoint = await hooks.endpoint(holds_old)
    old = endpoint["secret"]
    r = await hooks.http.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret")
    assert r.status_code == 200, r.text
    new, until = r.json()["secret"], datetime.fromisoformat(r.json()["previous_secret_expires_at"])
    assert new != old

    await hooks.event()
    (delivery,) = await hooks.settled(endpoint["id"])
    (hit,) = holds_old.hits
    assert delivery["status"] == "succeeded" and hit.status == 200
    # One request, two signatures: a receiver holding either secret verifies it.
    assert Webhook(old).verify(hit.body, hit.headers) and Webhook(new).verify(hit.body, hit.headers)

    # After the grace period only the new secret signs: the old holder refuses (400), the
    # delivery is retried, and a receiver that switched to the new secret accepts the retry.
    await eventually(lambda: _after(until), within=30)
    await hooks.event()
    await eventually(lambda: _count(holds_old.hits, 2), within=30)
    assert holds_old.hits[1].verified_by == [] and holds_old.hits[1].status == 400
    holds_old.secrets = [new]
    items = await hooks.settled(endpoint["id"], count=2)
    assert [d["status"] for d in items] == ["succeeded", "succeeded"]
    assert [a["status_code"] for a in items[0]["attempts"]] == [400, 200]


async def _after(moment: datetime) -> bool:
    return datetime.now(UTC) > moment


async def _count(items: list[Any], n: int) -> bool:
    return len(items) >= n


# --- retries and the attempts log -------------------------------------------------------------


async def test_fails_twice_then_succeeds_same_webhook_id_at_the_scheduled_spacing(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks()  # WEBHOOK_RETRY_SCHEDULE=2,2: 1.6 to 2.4 s between attempts
    receiver = await hook_receivers(script=[500, 503])
    endpoint = await hooks.endpoint(receiver)
    await hooks.event()
    (delivery,) = await hooks.settled(endpoint["id"])

    assert delivery["status"] == "succeeded" and delivery["next_attempt_at"] is None
    assert [h.status for h in receiver.hits] == [500, 503, 200]
    assert {h.webhook_id for h in receiver.hits} == {delivery["webhook_id"]}
    assert all(h.verified_by for h in receiver.hits)
    assert len({h.headers["webhook-timestamp"] for h in receiver.hits}) >= 2  # signed afresh
    # Scheduled 1.6-2.4 s apart; measured where each request lands (the receiver's clock, the
    # API's log), where a loaded machine can stamp one attempt a few hundred ms late.
    for gap in gaps([h.at for h in receiver.hits]):
        assert 1.3 <= gap <= 4.0, gap
    # The log, as the API shows it: the same three attempts, at the same spacing.
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert [a["manual"] for a in delivery["attempts"]] == [False] * 3
    for gap in gaps([t.timestamp() for t in stamps(delivery)]):
        assert 1.3 <= gap <= 4.0, gap


async def test_a_hang_is_cut_at_the_timeout_and_retried(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks()  # WEBHOOK_TIMEOUT_SECONDS=2
    receiver = await hook_receivers(script=[(200, 30.0)])
    endpoint = await hooks.endpoint(receiver)
    await hooks.event()
    (delivery,) = await hooks.settled(endpoint["id"])
    assert delivery["status"] == "succeeded"
    first, second = delivery["attempts"]
    assert first["status_code"] is None and first["error"] == "no answer within 2s"
    assert 1900 <= first["latency_ms"] < 10_000
    assert second["status_code"] == 200
    assert len(receiver.cut) == 1 and receiver.cut[0] - receiver.hits[0].at < 10


async def test_410_disables_the_endpoint(start_hooks: StartHooks, hook_receivers: Start) -> None:
    hooks = await start_hooks()
    receiver = await hook_receivers(status=410)
    endpoint = await hooks.endpoint(receiver)
    await hooks.event()
    (delivery,) = await hooks.settled(endpoint["id"])
    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [410]
    read = await hooks.read(endpoint["id"])
    assert read["status"] == "disabled" and "410" in read["disabled_reason"]
    await hooks.event()  # nothing more is sent to it
    r = await hooks.http.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver")
    assert r.status_code == 409
    assert len(await hooks.deliveries(endpoint["id"])) == 1 and len(receiver.hits) == 1


async def test_a_302_is_not_followed_and_counts_as_a_failure(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks()
    elsewhere = await hook_receivers()
    receiver = await hook_receivers(status=302, headers={"Location": elsewhere.url})
    endpoint = await hooks.endpoint(receiver)
    await hooks.event()
    (delivery,) = await hooks.settled(endpoint["id"])
    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 302, 302]
    assert elsewhere.hits == []


async def test_a_slow_endpoint_does_not_delay_a_fast_one(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks(WEBHOOK_TIMEOUT_SECONDS="5", WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT="2")
    slow = await hook_receivers(status=200, script=[(200, 30.0)] * 20)
    fast = await hook_receivers()
    await hooks.endpoint(slow)
    fast_endpoint = await hooks.endpoint(fast)
    started = asyncio.get_running_loop().time()
    for _ in range(6):
        await hooks.event()
    items = await hooks.settled(fast_endpoint["id"], count=6)
    assert all(d["status"] == "succeeded" for d in items)
    # All six reached the fast receiver before the slow one's first request was cut (at 5 s).
    await eventually(lambda: _count(slow.cut, 1), within=30)
    assert max(h.at for h in fast.hits) < min(slow.cut)
    assert min(h.at for h in slow.hits) - started < 5  # the slow one was being called meanwhile


# --- restarts -----------------------------------------------------------------------------------


async def test_restarting_the_notifier_and_the_broker_between_attempts_loses_nothing(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    rabbit = PrivateRabbit()
    await asyncio.to_thread(rabbit.start)
    try:
        hooks = await start_hooks(AMQP_URL=rabbit.url, WEBHOOK_RETRY_SCHEDULE="3")
        receiver = await hook_receivers(script=[500])
        endpoint = await hooks.endpoint(receiver)
        await hooks.event()

        async def first_attempt_logged() -> bool:
            items = await hooks.deliveries(endpoint["id"])
            return bool(items) and len(items[0]["attempts"]) == 1

        await eventually(first_attempt_logged, within=30)
        # Stop the notifier once its retry command is on the broker (relayed from its outbox).
        await eventually(lambda: _relayed(hooks.notifier), within=30)
        await hooks.notifier.stop()
        await asyncio.to_thread(rabbit.restart)  # the retry waits out the restart in its queue
        hooks.notifier = await start_notifier(hooks.settings)
        try:
            (delivery,) = await hooks.settled(endpoint["id"])
        finally:
            await stop_quietly(hooks.notifier)
        assert delivery["status"] == "succeeded"
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
        assert [h.status for h in receiver.hits] == [500, 200]
        assert len(receiver.succeeded()) == 1
        assert {h.webhook_id for h in receiver.hits} == {delivery["webhook_id"]}
    finally:
        await asyncio.to_thread(rabbit.close)


async def _relayed(service: NotifierService) -> bool:
    async with service.runtime.sessions() as session:
        from sqlalchemy import text

        left = await session.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
    return left == 0


# --- SSRF ---------------------------------------------------------------------------------------


def loopback_name() -> str:
    """A host name this machine resolves to loopback (its own, from /etc/hosts), or localhost."""
    name = socket.gethostname()
    try:
        found = {str(a[4][0]) for a in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        return "localhost"
    return name if found and all(a.startswith("127.") or a == "::1" for a in found) else "localhost"


async def test_internal_addresses_are_refused_at_registration_and_at_connect_time(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    """With private networks not allowed, the API refuses obviously internal URLs; a URL that
    got past registration (here: registered while they were allowed) is refused by the notifier
    on the address it would connect to."""
    local = await hook_receivers()
    urls = [
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::ffff:127.0.0.1]:{local.port}/hooks",
        f"http://{loopback_name()}:{local.port}/hooks",
    ]
    # (Two notifiers on one broker from here on, as two instances would run: same schedule.)
    strict = await start_hooks(WEBHOOK_ALLOW_PRIVATE_NETWORKS="false", WEBHOOK_RETRY_SCHEDULE="1")
    for url in [*urls, local.url]:
        r = await strict.http.post("/v1/webhook-endpoints", json={"url": url})
        assert r.status_code == 422, (url, r.text)
        assert r.json()["errors"][0]["field"] == "url"

    hooks = await start_hooks(
        WEBHOOK_ALLOW_PRIVATE_NETWORKS="false",
        WEBHOOK_RETRY_SCHEDULE="1",
        api_overrides={"WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"},
    )
    endpoints = [await hooks.endpoint(None, url=url) for url in urls]
    await hooks.event()
    for endpoint in endpoints:
        (delivery,) = await hooks.settled(endpoint["id"])
        assert delivery["status"] == "failed"
        for attempt in delivery["attempts"]:
            assert attempt["status_code"] is None
            assert "public address" in attempt["error"], attempt
        # A manual redelivery connects through the same guard.
        r = await hooks.http.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver")
        assert r.status_code == 202, r.text
        (again,) = await hooks.settled(endpoint["id"])
        assert len(again["attempts"]) == 3 and again["attempts"][-1]["manual"]
        assert "public address" in again["attempts"][-1]["error"]
    assert local.hits == []


# --- redeliver and resend ------------------------------------------------------------------------


async def test_redeliver_sends_the_same_message_again_as_a_new_attempt(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks(WEBHOOK_RETRY_SCHEDULE="1")
    receiver = await hook_receivers(script=[500, 500])
    endpoint = await hooks.endpoint(receiver)
    await hooks.event()
    (failed,) = await hooks.settled(endpoint["id"])
    assert failed["status"] == "failed" and len(failed["attempts"]) == 2

    r = await hooks.http.post(f"/v1/webhook-deliveries/{failed['id']}/redeliver")
    assert r.status_code == 202 and r.json()["status"] == "pending"
    (redelivered,) = await hooks.settled(endpoint["id"])
    assert redelivered["status"] == "succeeded"
    assert [(a["status_code"], a["manual"]) for a in redelivered["attempts"]] == [
        (500, False),
        (500, False),
        (200, True),
    ]
    # Succeeded deliveries can be sent again too: one more attempt of the same message.
    r = await hooks.http.post(f"/v1/webhook-deliveries/{failed['id']}/redeliver")
    assert r.status_code == 202
    (again,) = await hooks.settled(endpoint["id"])
    assert len(again["attempts"]) == 4 and again["attempts"][-1]["status_code"] == 200
    assert [h.status for h in receiver.hits] == [500, 500, 200, 200]
    assert {h.webhook_id for h in receiver.hits} == {failed["webhook_id"]}
    assert len({h.body for h in receiver.hits}) == 1
    assert all(h.verified_by for h in receiver.hits)


async def test_resend_failed_since_a_time_sends_each_again_once(
    start_hooks: StartHooks, hook_receivers: Start
) -> None:
    hooks = await start_hooks(WEBHOOK_RETRY_SCHEDULE="1")
    receiver = await hook_receivers(status=503)
    endpoint = await hooks.endpoint(receiver)
    await hooks.event()
    await hooks.settled(endpoint["id"])
    since = datetime.now(UTC)
    await hooks.event()
    await hooks.event()
    failed = await hooks.settled(endpoint["id"], count=3)
    assert [d["status"] for d in failed] == ["failed"] * 3

    receiver.status = 200  # the receiver is fixed
    r = await hooks.http.post(
        f"/v1/webhook-endpoints/{endpoint['id']}/resend-failed", json={"since": since.isoformat()}
    )
    assert r.status_code == 202 and r.json() == {"queued": 2, "more": False}
    items = await hooks.settled(endpoint["id"], count=3)
    recent, oldest = items[:2], items[2]
    for delivery in recent:
        assert delivery["status"] == "succeeded"
        assert [(a["status_code"], a["manual"]) for a in delivery["attempts"]] == [
            (503, False),
            (503, False),
            (200, True),
        ]
    assert oldest["status"] == "failed" and len(oldest["attempts"]) == 2
    delivered = [h.webhook_id for h in receiver.succeeded()]
    assert sorted(delivered) == sorted(d["webhook_id"] for d in recent)
