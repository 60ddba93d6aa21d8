"""Wiring: settings in, a ConsumerService out (nothing happens at import time)."""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from shared.consumer import PlainIdempotentConsumer, QueueConsumer
from shared.messages import GenerationRequested, LifecycleEvent, RenderReported
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import ORCHESTRATOR_CONFIRMATIONS, ORCHESTRATOR_REPORTS, ORCHESTRATOR_REQUESTS

from orchestrator import sql
from orchestrator.handlers import Handlers, render_requested_with_it
from orchestrator.sweeper import Sweeper

PREFETCH = 10  # per queue, as `ConsumerService` gives FastStream's subscribers


async def _not_consumed_through_faststream(_: object) -> None:
    raise AssertionError("the orchestrator consumes its queues itself (QueueConsumer)")


class OrchestratorService(ConsumerService):
    """The shared runtime (outbox relay, topology, health and metrics server), the three
    queues consumed with aio-pika directly (`shared.consumer.QueueConsumer`, each message by a
    `PlainIdempotentConsumer` on a plain asyncpg pool of its own), and the sweeper that enforces
    deadlines and prunes the outbox/inbox (on the runtime's SQLAlchemy engine)."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        consumers: list[tuple[Subscription, PlainIdempotentConsumer[Any]]],
        health_port: int,
        pool: sql.PoolHolder,
    ) -> None:
        super().__init__(runtime, [], health_port=health_port)
        # Listed after FastStream was set up without them: readiness, the queue gauges and the
        # start line name them; `start` consumes them.
        self.subscriptions = [sub for sub, _ in consumers]
        self.consumers = [
            QueueConsumer(sub.queue.name, handler, prefetch=PREFETCH, metrics=runtime.metrics)
            for sub, handler in consumers
        ]
        self.sweeper = Sweeper(runtime.sessions, runtime.relay, runtime.settings)
        self.pool = pool
        self._amqp: AbstractRobustConnection | None = None

    async def start(self) -> None:
        await self.pool.open(self.runtime.settings)
        await super().start()  # the topology is declared before the consumers attach
        self._amqp = await aio_pika.connect_robust(self.runtime.settings.amqp_url)
        for consumer in self.consumers:
            await consumer.start(self._amqp)
        self.sweeper.start()

    async def stop(self) -> None:
        """Take no more messages, let those taken finish (within SHUTDOWN_GRACE_SECONDS; what
        is still unacked then goes back to its queue), then stop the rest."""
        for consumer in self.consumers:
            await consumer.cancel()
        for consumer in self.consumers:
            await consumer.drain(within=self.runtime.settings.shutdown_grace_seconds)
        for consumer in self.consumers:
            await consumer.close()
        if self._amqp is not None:
            await self._amqp.close()
        await self.sweeper.stop()
        await super().stop()
        await self.pool.close()


def build(settings: Settings) -> OrchestratorService:
    runtime = ServiceRuntime.build("orchestrator", settings)
    handlers = Handlers(settings)
    pool = sql.PoolHolder()
    relay, metrics = runtime.relay, runtime.metrics
    relay.use_pool(pool.get)  # marks published rows on it too
    # The inbox consumer name is the queue's name: one inbox per queue.
    consumers: list[tuple[Subscription, PlainIdempotentConsumer[Any]]] = [
        (
            Subscription(ORCHESTRATOR_REQUESTS, _not_consumed_through_faststream),
            PlainIdempotentConsumer(
                ORCHESTRATOR_REQUESTS.name,
                GenerationRequested,
                handlers.requested,
                pool.get,
                relay,
                metrics,
            ),
        ),
        (
            Subscription(ORCHESTRATOR_CONFIRMATIONS, _not_consumed_through_faststream),
            PlainIdempotentConsumer(
                ORCHESTRATOR_CONFIRMATIONS.name,
                LifecycleEvent,
                handlers.confirmed,
                pool.get,
                relay,
                metrics,
                needs_nothing=render_requested_with_it,
            ),
        ),
        (
            Subscription(ORCHESTRATOR_REPORTS, _not_consumed_through_faststream),
            PlainIdempotentConsumer(
                ORCHESTRATOR_REPORTS.name,
                RenderReported,
                handlers.reported,
                pool.get,
                relay,
                metrics,
            ),
        ),
    ]
    return OrchestratorService(runtime, consumers, settings.metrics_port_orchestrator, pool)


async def serve(settings: Settings) -> None:
    await build(settings).run_forever()
