"""Wiring: settings in, a ConsumerService out (nothing happens at import time)."""

from __future__ import annotations

from shared.consumer import PlainIdempotentConsumer
from shared.messages import GenerationRequested, LifecycleEvent, RenderReported
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import ORCHESTRATOR_CONFIRMATIONS, ORCHESTRATOR_REPORTS, ORCHESTRATOR_REQUESTS

from orchestrator import sql
from orchestrator.handlers import Handlers, render_requested_with_it
from orchestrator.sweeper import Sweeper

PREFETCH = 10  # per queue, as `ConsumerService` gives FastStream's subscribers


class OrchestratorService(ConsumerService):
    """The shared runtime (outbox relay, topology, health and metrics server), the three
    queues consumed with aio-pika directly (`direct`: each message by a
    `PlainIdempotentConsumer` on a plain asyncpg pool of its own), and the sweeper that enforces
    deadlines and prunes the outbox/inbox (on the runtime's SQLAlchemy engine)."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        consumers: list[Subscription],
        health_port: int,
        pool: sql.PoolHolder,
    ) -> None:
        super().__init__(runtime, [], prefetch=PREFETCH, health_port=health_port, direct=consumers)
        self.sweeper = Sweeper(runtime.sessions, runtime.relay, runtime.settings)
        self.pool = pool

    async def start(self) -> None:
        await self.pool.open(self.runtime.settings)
        await super().start()  # the topology is declared before the consumers attach
        self.sweeper.start()

    async def stop(self) -> None:
        """Take no more messages, let those taken finish, then stop the rest."""
        await self.stop_consuming()
        await self.sweeper.stop()
        await super().stop()
        await self.pool.close()


def build(settings: Settings) -> OrchestratorService:
    runtime = ServiceRuntime.build("orchestrator", settings)
    handlers = Handlers(settings)
    pool = sql.PoolHolder()
    relay, metrics = runtime.relay, runtime.metrics
    relay.use_pool(pool.get)  # its locked path (rows held a while) locks and marks on it
    # The inbox consumer name is the queue's name: one inbox per queue.
    consumers = [
        Subscription(
            ORCHESTRATOR_REQUESTS,
            PlainIdempotentConsumer(
                ORCHESTRATOR_REQUESTS.name,
                GenerationRequested,
                handlers.requested,
                pool.get,
                relay,
                metrics,
            ),
        ),
        Subscription(
            ORCHESTRATOR_CONFIRMATIONS,
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
        Subscription(
            ORCHESTRATOR_REPORTS,
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
