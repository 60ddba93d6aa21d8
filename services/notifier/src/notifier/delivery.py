"""Webhook delivery as a chain of small typed steps (after Svix's worker):

    load (one short transaction) → Skip | Park | Attempt
    gate (per endpoint, in memory) → a turn, or Park for a second
    send (no transaction held)   → Outcome
    judge (pure)                 → Verdict
    record (one short transaction: attempt row, delivery state, the endpoint's failure streak,
            the next command) → ack

The command is acked only after `record` commits, so a crash anywhere before that redelivers
it and the attempt is made again (at least once); after that, the attempt counter makes every
other copy of the command stale. Commands are handled concurrently up to the consumer's
prefetch, each cut at the per-attempt timeout, and `EndpointGate` keeps one slow endpoint from
holding more than a few of those slots.

A manual redelivery (the API re-opened a finished delivery and sent `manual=True`) is one
attempt under the same `webhook-id`, with no retries of its own.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from faststream.rabbit.annotations import RabbitMessage
from prometheus_client import CollectorRegistry, Counter, Histogram
from shared.consumer import read_or_reject
from shared.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.logging import get_logger, log_context
from shared.messages import WebhookDeliveryRequested
from shared.outbox import OutboxRelay, enqueue
from shared.settings import Settings
from shared.telemetry import client_span, http_status, inject
from shared.topology import DELAY_QUEUES
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from notifier.gate import EndpointGate
from notifier.retry import Next, Outcome, Verdict, judge, rung
from notifier.sender import EXCERPT_CHARS, Sender
from notifier.signing import Key, request_headers
from notifier.targets import NEXTJS

log = get_logger("WEBHOOK")

CONSUMER = "notifier.deliveries"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Skip:
    reason: str


@dataclass(frozen=True)
class Park:
    """Not due yet: wait in `queue` (a delay queue), then look again."""

    queue: str


@dataclass(frozen=True)
class Attempt:
    """Everything the HTTP step needs, read in the load step."""

    target: str  # the endpoint's id, or "nextjs": the lane it waits in
    url: str
    webhook_id: str
    body: str
    keys: tuple[Key, ...]
    bearer: str | None
    trusted: bool
    user_id: str | None = None  # whom the event is about (the payload's `userId`)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "reelflow_webhook_attempts",
            "Webhook HTTP attempts by result",
            ["result"],
            registry=registry,
        )
        self.latency = Histogram(
            "reelflow_webhook_attempt_seconds",
            "Webhook attempt latency",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.finished = Counter(
            "reelflow_webhook_deliveries_finished",
            "Webhook deliveries by final status",
            ["status"],
            registry=registry,
        )
        self.delivered = Histogram(
            "reelflow_webhook_delivery_seconds",
            "From a lifecycle event to its webhook's successful delivery, retries included",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000),
            registry=registry,
        )
        self.deferred = Counter(
            "reelflow_webhook_attempts_deferred",
            "Attempts parked for a second because their endpoint had too many in flight",
            registry=registry,
        )


class Deliverer:
    """The `notifier.deliveries` consumer."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        relay: OutboxRelay,
        sender: Sender,
        metrics: Metrics,
        gate: EndpointGate | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.relay = relay
        self.sender = sender
        self.metrics = metrics
        self.gate = gate or EndpointGate(settings.webhook_max_in_flight_per_endpoint)
        # (delivery, attempt) pairs being attempted here: a copy of the command that arrives
        # meanwhile waits a second, then finds itself stale, instead of calling a second time.
        self.in_flight: set[tuple[uuid.UUID, int]] = set()

    async def on_message(self, message: RabbitMessage) -> None:
        # A bound method, not `__call__`: FastStream resolves the `RabbitMessage` annotation
        # through the function's globals, which a callable instance does not have.
        command = await read_or_reject(message, WebhookDeliveryRequested, CONSUMER)
        if command is None:
            return
        value = (message.headers or {}).get("traceparent")
        traceparent = str(value) if value else None
        with log_context(
            generation_id=str(command.generation_id),
            delivery_id=str(command.delivery_id),
            attempt=command.attempt,
        ):
            await self.deliver(command, traceparent)

    async def deliver(self, command: WebhookDeliveryRequested, traceparent: str | None) -> None:
        async with self.sessions() as session, session.begin():
            step = await self.load(session, command, traceparent)
        # The user the webhook is about labels this delivery's spans (and its log lines).
        with log_context(user_id=step.user_id if isinstance(step, Attempt) else None):
            await self._deliver(command, step, traceparent)

    async def _deliver(
        self,
        command: WebhookDeliveryRequested,
        step: Skip | Park | Attempt,
        traceparent: str | None,
    ) -> None:
        if isinstance(step, Skip):
            log.info("Delivery command skipped", reason=step.reason)
            return
        if isinstance(step, Park):
            self.relay.wake()
            return
        key = (command.delivery_id, command.attempt)
        if key in self.in_flight or not await self.attempt(command, step, key, traceparent):
            # This very attempt is under way here, or the endpoint has its fill of attempts in
            # flight: free this slot for others and look again in a second.
            async with self.sessions() as session, session.begin():
                park(session, command, DELAY_QUEUES[0].name, traceparent)
            self.metrics.deferred.inc()
        self.relay.wake()

    async def attempt(
        self,
        command: WebhookDeliveryRequested,
        step: Attempt,
        key: tuple[uuid.UUID, int],
        traceparent: str | None,
    ) -> bool:
        """Send and record, in the endpoint's lane; False if the lane had no room."""
        async with self.gate.turn(step.target) as mine:
            if not mine:
                return False
            self.in_flight.add(key)
            try:
                started, outcome = await self.send(step, traceparent)
                # A manual redelivery is one attempt: an empty schedule leaves no retry.
                schedule = [] if command.manual else self.settings.webhook_retry_schedule
                verdict = judge(outcome, command.attempt, schedule)
                async with self.sessions() as session, session.begin():
                    await self.record(session, command, started, outcome, verdict, traceparent)
            finally:
                self.in_flight.discard(key)
        return True

    async def send(self, step: Attempt, traceparent: str | None) -> tuple[datetime, Outcome]:
        started = utcnow()
        attributes = {
            "reelflow.webhook.id": step.webhook_id,
            "reelflow.webhook.target": step.target,
        }
        with client_span("POST", step.url, **attributes) as span:
            # The receiver continues from this attempt's own span (the event's context, or the
            # minted one, only when tracing is off).
            traceparent = inject({}).get("traceparent") or traceparent
            headers = request_headers(
                step.webhook_id,
                step.body,
                step.keys,
                started,
                bearer=step.bearer,
                traceparent=traceparent,
            )
            outcome = await self.sender.post(step.url, step.body, headers, trusted=step.trusted)
            http_status(span, outcome.status_code, outcome.error)
        self.metrics.attempts.labels("ok" if outcome.ok else "failed").inc()
        self.metrics.latency.observe(outcome.latency_ms / 1000)
        return started, outcome

    async def load(
        self, session: AsyncSession, command: WebhookDeliveryRequested, traceparent: str | None
    ) -> Skip | Park | Attempt:
        delivery = await session.get(WebhookDelivery, command.delivery_id)
        if delivery is None:
            return Skip("no such delivery")
        if delivery.status != "pending":
            return Skip(f"delivery already {delivery.status}")
        if command.attempt != await attempts_made(session, delivery.id) + 1:
            return Skip("stale command: that attempt was already made")
        if delivery.next_attempt_at is not None:
            queue = rung((delivery.next_attempt_at - utcnow()).total_seconds())
            if queue is not None:
                park(session, command, queue.name, traceparent)
                return Park(queue.name)
        if delivery.target == NEXTJS:
            key = self.settings.worker_api_key
            token = key.get_secret_value() if key else None
            return Attempt(
                NEXTJS,
                delivery.url,
                delivery.webhook_id,
                delivery.payload,
                (token.encode(),) if token else (),
                token,
                trusted=True,
                user_id=_user_of(delivery.payload),
            )
        endpoint = (
            await session.get(WebhookEndpoint, delivery.endpoint_id)
            if delivery.endpoint_id
            else None
        )
        if endpoint is None or endpoint.status != "active":
            await finish(session, delivery.id, "failed")
            self.metrics.finished.labels("failed").inc()
            return Skip("endpoint deleted or disabled: delivery failed")
        return Attempt(
            delivery.target,
            endpoint.url,
            delivery.webhook_id,
            delivery.payload,
            signing_keys(endpoint, utcnow()),
            None,
            trusted=False,
            user_id=str(endpoint.user_id) if endpoint.user_id else None,
        )

    async def record(
        self,
        session: AsyncSession,
        command: WebhookDeliveryRequested,
        started: datetime,
        outcome: Outcome,
        verdict: Verdict,
        traceparent: str | None,
    ) -> None:
        delivery = await session.get(
            WebhookDelivery, command.delivery_id, with_for_update=True, populate_existing=True
        )
        if delivery is None or delivery.status != "pending":
            return
        if command.attempt != await attempts_made(session, delivery.id) + 1:
            log.warning("Attempt raced with a copy of its command; keeping the first")
            return
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                at=started,
                status_code=outcome.status_code,
                latency_ms=outcome.latency_ms,
                response_excerpt=outcome.excerpt,
                error=outcome.error[:EXCERPT_CHARS] if outcome.error else None,
                manual=command.manual,
            )
        )
        context = {"status_code": outcome.status_code, "error": outcome.error}
        if delivery.endpoint_id is not None:
            await self.track_streak(session, delivery.endpoint_id, started, outcome.ok)
        if verdict.next == Next.SUCCEEDED:
            await finish(session, delivery.id, "succeeded")
            self.metrics.finished.labels("succeeded").inc()
            # From the event to its successful delivery, retries included.
            self.metrics.delivered.observe((utcnow() - delivery.created_at).total_seconds())
            log.info("Webhook delivered", latency_ms=outcome.latency_ms, target=delivery.target)
        elif verdict.next == Next.RETRY:
            assert verdict.wait_seconds is not None
            due = started + timedelta(milliseconds=outcome.latency_ms, seconds=verdict.wait_seconds)
            await session.execute(
                update(WebhookDelivery)
                .where(col(WebhookDelivery.id) == delivery.id)
                .values(next_attempt_at=due)
            )
            queue = rung(verdict.wait_seconds)
            retry = command.model_copy(update={"attempt": command.attempt + 1})
            park(session, retry, queue.name if queue else None, traceparent)
            wait = round(verdict.wait_seconds, 1)
            log.warning("Webhook failed, will retry", wait_seconds=wait, **context)
        else:
            await finish(session, delivery.id, "failed")
            self.metrics.finished.labels("failed").inc()
            if verdict.next == Next.GONE and delivery.endpoint_id is not None:
                reason = f"The endpoint answered 410 Gone on {started:%Y-%m-%d %H:%M:%S} UTC."
                await disable(session, delivery.endpoint_id, reason)
            log.error("Webhook delivery failed for good", outcome=verdict.next.value, **context)

    async def track_streak(
        self, session: AsyncSession, endpoint_id: uuid.UUID, at: datetime, ok: bool
    ) -> None:
        """Keep when the endpoint's current run of failures began; disable it once every
        attempt has failed for WEBHOOK_DISABLE_AFTER_SECONDS (five days by default)."""
        streak = col(WebhookEndpoint.failing_since)
        where = col(WebhookEndpoint.id) == endpoint_id
        if ok:
            await session.execute(
                update(WebhookEndpoint).where(where, streak.is_not(None)).values(failing_since=None)
            )
            return
        await session.execute(
            update(WebhookEndpoint).where(where, streak.is_(None)).values(failing_since=at)
        )
        since = await session.scalar(select(streak).where(where))
        period = self.settings.webhook_disable_after_seconds
        if since is not None and (at - since).total_seconds() >= period:
            reason = (
                f"Every attempt failed from {since:%Y-%m-%d %H:%M:%S} UTC to "
                f"{at:%Y-%m-%d %H:%M:%S} UTC."
            )
            await disable(session, endpoint_id, reason)


def _user_of(payload: str) -> str | None:
    try:
        value = json.loads(payload).get("userId")
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


async def attempts_made(session: AsyncSession, delivery_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(WebhookAttempt)
        .where(col(WebhookAttempt.delivery_id) == delivery_id)
    )
    return int(count or 0)


def park(
    session: AsyncSession,
    command: WebhookDeliveryRequested,
    queue: str | None,
    traceparent: str | None,
) -> None:
    """Send the command (through the outbox) to a delay queue, or straight back when due."""
    enqueue(
        session,
        command,
        headers={"traceparent": traceparent} if traceparent else None,
        routing_key=queue,
    )


async def finish(session: AsyncSession, delivery_id: uuid.UUID, status: str) -> None:
    await session.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.id) == delivery_id)
        .values(status=status, next_attempt_at=None)
    )


def signing_keys(endpoint: WebhookEndpoint, now: datetime) -> tuple[Key, ...]:
    """The current secret, and the one before it while its grace period after a rotation lasts
    (Standard Webhooks: several `v1,` signatures; a receiver holding either one verifies)."""
    keys: tuple[Key, ...] = (endpoint.secret,)
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        keys += (endpoint.previous_secret,)
    return keys


async def disable(session: AsyncSession, endpoint_id: uuid.UUID, reason: str) -> None:
    """Active → disabled (a deleted endpoint stays deleted)."""
    disabled = await session.scalar(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint_id, col(WebhookEndpoint.status) == "active")
        .values(status="disabled", disabled_reason=reason)
        .returning(col(WebhookEndpoint.id))
    )
    if disabled is not None:
        log.warning("Endpoint disabled", endpoint_id=str(endpoint_id), reason=reason)
