"""Wiring: settings in, a ConsumerService out (nothing happens at import time)."""

from __future__ import annotations

from shared.consumer import IdempotentConsumer
from shared.messages import GenerationRequested, LifecycleEvent, RenderReported
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import ORCHESTRATOR_CONFIRMATIONS, ORCHESTRATOR_REPORTS, ORCHESTRATOR_REQUESTS

from orchestrator.handlers import Handlers
from orchestrator.sweeper import Sweeper


class OrchestratorService(ConsumerService):
    """The consumers, plus the sweeper that enforces deadlines and prunes the outbox/inbox."""

    def __init__(
        self, runtime: ServiceRuntime, subscriptions: list[Subscription], health_port: int
    ) -> None:
        super().__init__(runtime, subscriptions, health_port=health_port)
        self.sweeper = Sweeper(runtime.sessions, runtime.relay, runtime.settings)

    async def start(self) -> None:
        await super().start()
        self.sweeper.start()

    async def stop(self) -> None:
        await self.sweeper.stop()
        await super().stop()


def build(settings: Settings) -> OrchestratorService:
    runtime = ServiceRuntime.build("orchestrator", settings)
    handlers = Handlers(settings)
    sessions, relay = runtime.sessions, runtime.relay
    # The inbox consumer name is the queue's name: one inbox per queue.
    subscriptions = [
        Subscription(
            ORCHESTRATOR_REQUESTS,
            IdempotentConsumer(
                ORCHESTRATOR_REQUESTS.name,
                GenerationRequested,
                handlers.requested,
                sessions,
                relay,
            ),
        ),
        Subscription(
            ORCHESTRATOR_CONFIRMATIONS,
            IdempotentConsumer(
                ORCHESTRATOR_CONFIRMATIONS.name, LifecycleEvent, handlers.confirmed, sessions, relay
            ),
        ),
        Subscription(
            ORCHESTRATOR_REPORTS,
            IdempotentConsumer(
                ORCHESTRATOR_REPORTS.name, RenderReported, handlers.reported, sessions, relay
            ),
        ),
    ]
    return OrchestratorService(runtime, subscriptions, settings.metrics_port_orchestrator)


async def serve(settings: Settings) -> None:
    await build(settings).run_forever()
