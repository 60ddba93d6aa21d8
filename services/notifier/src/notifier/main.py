"""Wiring: settings in, a running notifier out. Nothing is built at import time."""

from __future__ import annotations

import aio_pika
import asyncpg
from aio_pika.abc import AbstractRobustConnection
from shared.db.raw import close_pool
from shared.logging import get_logger
from shared.media import build_storage
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import NOTIFIER_DELIVERIES, NOTIFIER_EVENTS

from notifier import sql
from notifier.delivery import Deliverer, Metrics
from notifier.intake import Intake
from notifier.sender import Sender

log = get_logger("NOTIFIER")

# The global bound on open webhook connections (each endpoint's lane holds at most
# WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT of them): room for many slow endpoints at once before a
# fast one would wait for a connection.
MAX_CONNECTIONS = 256


async def _not_consumed_through_faststream(_: object) -> None:
    raise AssertionError("the notifier consumes its queues itself (notifier.consume)")


class NotifierService(ConsumerService):
    """The shared runtime (outbox relay, topology, health and metrics server), with the two
    queues consumed in batches by the notifier itself rather than through FastStream."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        *,
        intake: Intake,
        deliverer: Deliverer,
        sender: Sender,
        health_port: int | None,
    ) -> None:
        super().__init__(runtime, [], health_port=health_port)
        # Listed after FastStream was set up without them: readiness, the queue gauges and the
        # start line name them, and `start` consumes them.
        self.subscriptions = [
            Subscription(NOTIFIER_EVENTS, _not_consumed_through_faststream),
            Subscription(NOTIFIER_DELIVERIES, _not_consumed_through_faststream),
        ]
        self.intake = intake
        self.deliverer = deliverer
        self.sender = sender
        self.pool: asyncpg.Pool | None = None
        self._amqp: AbstractRobustConnection | None = None

    async def start(self) -> None:
        settings = self.runtime.settings
        async with self.runtime.sessions() as session:
            self.intake.storage = await build_storage(session, settings)
        self.pool = await sql.open_pool(settings)
        self.deliverer.pool = self.pool
        await self.sender.open()
        if settings.nextjs_url and settings.worker_api_key is None:
            log.warning("NEXTJS_URL is set without WORKER_API_KEY: its webhooks go unsigned")
        await super().start()  # the topology is declared before the consumers attach
        self.deliverer.start()
        self.intake.consumer.batcher.start()
        self._amqp = await aio_pika.connect_robust(settings.amqp_url)
        await self.deliverer.commands.start(self._amqp)
        await self.intake.consumer.start(self._amqp)

    async def stop(self) -> None:
        """Take no more messages, settle those taken, let attempts under way finish and record
        them (within SHUTDOWN_GRACE_SECONDS), then stop the runtime."""
        grace = self.runtime.settings.shutdown_grace_seconds
        for consumer in (self.intake.consumer, self.deliverer.commands):
            await consumer.cancel()
        await self.intake.consumer.batcher.drain(within=grace)
        await self.deliverer.commands.batcher.drain(within=grace)
        await self.intake.consumer.batcher.stop()
        await self.deliverer.stop(within=grace)
        for consumer in (self.intake.consumer, self.deliverer.commands):
            await consumer.close()
        if self._amqp is not None:
            await self._amqp.close()
        await super().stop()
        await self.sender.close()
        if self.pool is not None:
            await close_pool(self.pool)


def build(settings: Settings) -> NotifierService:
    runtime = ServiceRuntime.build("notifier", settings)
    sender = Sender(
        settings.webhook_timeout_seconds,
        guard_endpoints=not settings.webhook_allow_private_networks,
        max_connections=MAX_CONNECTIONS,
    )
    metrics = Metrics(runtime.registry)
    deliverer = Deliverer(settings, runtime.relay, sender, metrics, runtime.metrics)
    runtime.relay.use_pool(deliverer.db)  # its statements on handed-over rows: on this pool too
    intake = Intake(settings, deliverer, runtime.relay, runtime.metrics)
    return NotifierService(
        runtime,
        intake=intake,
        deliverer=deliverer,
        sender=sender,
        health_port=settings.metrics_port_notifier,
    )


async def serve(settings: Settings) -> None:
    await build(settings).run_forever()
