"""Prometheus metrics every service shares, on its runtime's own registry.

prometheus_client rather than OpenTelemetry's metrics SDK with its Prometheus reader: that
reader registers itself on the process-global registry, while each service object here has a
registry of its own (tests run all four in one process, and every `/metrics` must show only its
service), and every service already counted on prometheus_client. Traces are OpenTelemetry's.

Generation metrics are counted when the transaction that made the change commits (a rolled
back or retried transition counts nothing): `apply_transition` notes them on the session and a
`Session.after_commit` hook hands them to the metrics the session's maker carries in its `info`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

INFO_KEY = "reelflow.metrics"
_PENDING = "reelflow.metrics.pending"
_STATUS_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)
_HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_OUTBOX_LAG = text(
    "SELECT count(*) AS n, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) AS age "
    "FROM outbox WHERE published_at IS NULL"
)


class ServiceMetrics:
    """What every service process exposes besides its own metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        Gauge("reelflow_up", "1 while the process runs", registry=registry).set(1)
        # Generations (counted by whoever commits the change: API or orchestrator).
        self.transitions = Counter(
            "reelflow_generation_transitions",
            "Generation status changes, by the status left ('new' at creation), the status "
            "entered and, for failures, the error code",
            ["from_status", "status", "error_code"],
            registry=registry,
        )
        self.time_in_status = Histogram(
            "reelflow_generation_status_seconds",
            "Time a generation spent in a status, observed when it leaves it",
            ["status"],
            buckets=_STATUS_BUCKETS,
            registry=registry,
        )
        self.spend = Counter(
            "reelflow_generation_estimated_spend_usd",
            "Estimated provider cost of confirmed generations (USD), by model",
            ["model"],
            registry=registry,
        )
        # Messaging.
        self.published = Counter(
            "reelflow_outbox_published",
            "Outbox messages this process published (confirmed by the broker), by type",
            ["type"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "reelflow_outbox_publish_failures",
            "Relay rounds that failed (broker or database away); the rows are kept",
            registry=registry,
        )
        self.outbox_lag = Gauge(
            "reelflow_outbox_lag_seconds",
            "Age of the oldest unpublished outbox row (0 when none); read at scrape",
            registry=registry,
        )
        self.outbox_unpublished = Gauge(
            "reelflow_outbox_unpublished",
            "Outbox rows not yet published; read at scrape",
            registry=registry,
        )
        self.consumed = Counter(
            "reelflow_messages_consumed",
            "Messages handled, by queue and outcome (acked, dead_lettered, requeued)",
            ["queue", "outcome"],
            registry=registry,
        )
        self.handling = Histogram(
            "reelflow_message_handling_seconds",
            "Time to handle a message, by queue",
            ["queue"],
            buckets=_HANDLING_BUCKETS,
            registry=registry,
        )
        self.queue_messages = Gauge(
            "reelflow_queue_messages",
            "Messages ready in a work queue this process consumes; read at scrape",
            ["queue"],
            registry=registry,
        )
        self.queue_consumers = Gauge(
            "reelflow_queue_consumers",
            "Consumers attached to a work queue this process consumes; read at scrape",
            ["queue"],
            registry=registry,
        )
        self.dlq_messages = Gauge(
            "reelflow_dlq_messages",
            "Messages in the dead-letter queue of a work queue this process consumes",
            ["queue"],
            registry=registry,
        )

    async def refresh(
        self, engine: AsyncEngine, channel: Any | None, queues: Iterable[tuple[str, str]]
    ) -> None:
        """Read the gauges that live elsewhere: the outbox's lag (one indexed query) and, by
        passive declares on `channel`, each (queue, dlq) pair's depth and consumers."""
        async with engine.connect() as conn:
            row = (await conn.execute(_OUTBOX_LAG)).one()
        self.outbox_unpublished.set(row.n)
        self.outbox_lag.set(float(row.age or 0))
        if channel is None:
            return
        for queue, dlq in queues:
            declared = (await channel.declare_queue(queue, passive=True)).declaration_result
            self.queue_messages.labels(queue).set(declared.message_count)
            self.queue_consumers.labels(queue).set(declared.consumer_count)
            dead = (await channel.declare_queue(dlq, passive=True)).declaration_result
            self.dlq_messages.labels(dlq).set(dead.message_count)


# -- generation metrics, counted at commit -------------------------------------------------------


def note_transition(
    session: AsyncSession | Session,
    *,
    before: str | None,
    after: str,
    seconds: float | None,
    error_code: str | None = None,
    spend: Decimal | None = None,
    model: str | None = None,
) -> None:
    """Count a status change when `session` commits (nothing if it rolls back)."""

    def apply(m: ServiceMetrics) -> None:
        m.transitions.labels(before or "new", after, error_code or "").inc()
        if before is not None and seconds is not None:
            m.time_in_status.labels(before).observe(max(0.0, seconds))
        if spend:
            m.spend.labels(model or "unknown").inc(float(spend))

    _pending(session).append(apply)


def _pending(session: AsyncSession | Session) -> list[Callable[[ServiceMetrics], None]]:
    found: list[Callable[[ServiceMetrics], None]] = session.info.setdefault(_PENDING, [])
    return found


def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    metrics = session.info.get(INFO_KEY)
    if pending and isinstance(metrics, ServiceMetrics):
        for apply in pending:
            apply(metrics)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def install_commit_hook() -> None:
    """Once per process: count noted metrics at commit, drop them at rollback."""
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_rollback", _after_rollback)


class Timer:
    """`with Timer() as t: …` then `t.seconds`."""

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.started
