"""Webhook delivery as a chain of small typed steps (after Svix's worker):

    load (one short transaction) → Skip | Park | Attempt
    send (no transaction held)   → Outcome
    judge (pure)                 → Verdict
    record (one short transaction: attempt row, delivery state, the next command) → ack

The command is acked only after `record` commits, so a crash anywhere before that redelivers
it and the attempt is made again (at least once); after that, the attempt counter makes every
other copy of the command stale. A slow receiver holds only its own command: commands are
handled concurrently up to the consumer's prefetch, each cut at the per-attempt timeout.
"""

from __future__ import annotations

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
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

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

    url: str
    webhook_id: str
    body: str
    keys: tuple[Key, ...]
    bearer: str | None
    trusted: bool


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


class Deliverer:
    """The `notifier.deliveries` consumer."""

    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        relay: OutboxRelay,
        sender: Sender,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.relay = relay
        self.sender = sender
        self.metrics = metrics

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
        if isinstance(step, Skip):
            log.info("Delivery command skipped", reason=step.reason)
            return
        if isinstance(step, Park):
            self.relay.wake()
            return
        started = utcnow()
        headers = request_headers(
            step.webhook_id,
            step.body,
            step.keys,
            started,
            bearer=step.bearer,
            traceparent=traceparent,
        )
        outcome = await self.sender.post(step.url, step.body, headers, trusted=step.trusted)
        self.metrics.attempts.labels("ok" if outcome.ok else "failed").inc()
        self.metrics.latency.observe(outcome.latency_ms / 1000)
        verdict = judge(outcome, command.attempt, self.settings.webhook_retry_schedule)
        async with self.sessions() as session, session.begin():
            await self.record(session, command, started, outcome, verdict, traceparent)
        self.relay.wake()

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
                delivery.url,
                delivery.webhook_id,
                delivery.payload,
                (token.encode(),) if token else (),
                token,
                trusted=True,
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
            endpoint.url,
            delivery.webhook_id,
            delivery.payload,
            (endpoint.secret,),
            None,
            trusted=False,
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
            )
        )
        context = {"status_code": outcome.status_code, "error": outcome.error}
        if verdict.next == Next.SUCCEEDED:
            await finish(session, delivery.id, "succeeded")
            self.metrics.finished.labels("succeeded").inc()
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
                await disable(session, delivery.endpoint_id, started)
            log.error("Webhook delivery failed for good", outcome=verdict.next.value, **context)


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


async def disable(session: AsyncSession, endpoint_id: uuid.UUID, at: datetime) -> None:
    await session.execute(
        update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint_id)
        .values(
            status="disabled",
            disabled_reason=f"The endpoint answered 410 Gone on {at:%Y-%m-%d %H:%M:%S} UTC.",
        )
    )
    log.warning("Endpoint disabled after 410 Gone", endpoint_id=str(endpoint_id))
