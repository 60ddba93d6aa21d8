"""Wiring: settings in, a running notifier out. Nothing is built at import time."""

from __future__ import annotations

from shared.consumer import IdempotentConsumer
from shared.logging import get_logger
from shared.media import build_storage
from shared.messages import LifecycleEvent
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import NOTIFIER_DELIVERIES, NOTIFIER_EVENTS

from notifier.delivery import Deliverer, Metrics
from notifier.handlers import LifecycleHandler, with_traceparent
from notifier.sender import Sender

log = get_logger("NOTIFIER")

# Commands handled at once (each attempt cut at WEBHOOK_TIMEOUT_SECONDS). One endpoint holds at
# most WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT attempts and as many briefly waiting (see gate.py), so
# several slow endpoints together still leave room for everyone else. It is also the global
# bound on open webhook connections: the sender's pool is at least this large, so an attempt
# never waits for a connection another endpoint holds.
PREFETCH = 100


class NotifierService(ConsumerService):
    """A `ConsumerService` that also opens the HTTP sender and the media storage at start."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        subscriptions: list[Subscription],
        *,
        lifecycle: LifecycleHandler,
        sender: Sender,
        health_port: int | None,
    ) -> None:
        super().__init__(runtime, subscriptions, prefetch=PREFETCH, health_port=health_port)
        self.lifecycle = lifecycle
        self.sender = sender

    async def start(self) -> None:
        async with self.runtime.sessions() as session:
            self.lifecycle.storage = await build_storage(session, self.runtime.settings)
        await self.sender.open()
        settings = self.runtime.settings
        if settings.nextjs_url and settings.worker_api_key is None:
            log.warning("NEXTJS_URL is set without WORKER_API_KEY: its webhooks go unsigned")
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.sender.close()


def build(settings: Settings) -> NotifierService:
    runtime = ServiceRuntime.build("notifier", settings)
    lifecycle = LifecycleHandler(settings)
    events = IdempotentConsumer(
        NOTIFIER_EVENTS.name, LifecycleEvent, lifecycle, runtime.sessions, runtime.relay
    )
    sender = Sender(
        settings.webhook_timeout_seconds,
        guard_endpoints=not settings.webhook_allow_private_networks,
        max_connections=PREFETCH,
    )
    metrics = Metrics(runtime.registry)
    deliverer = Deliverer(settings, runtime.sessions, runtime.relay, sender, metrics)
    return NotifierService(
        runtime,
        [
            Subscription(NOTIFIER_EVENTS, with_traceparent(events)),
            Subscription(NOTIFIER_DELIVERIES, deliverer.on_message),
        ],
        lifecycle=lifecycle,
        sender=sender,
        health_port=settings.metrics_port_notifier,
    )


async def serve(settings: Settings) -> None:
    await build(settings).run_forever()
