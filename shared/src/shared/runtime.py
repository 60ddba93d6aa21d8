"""What every service process shares: wiring, the consumer loop, health and metrics.

`ServiceRuntime` is built by a service's wiring function from `Settings`; nothing here runs at
import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import uvicorn
from faststream import AckPolicy
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared import heap, telemetry
from shared.consumer import QueueConsumer, traced
from shared.db.engine import make_sessionmaker
from shared.db.raw import dsn
from shared.logging import get_logger
from shared.metrics import INFO_KEY, ServiceMetrics, install_commit_hook
from shared.outbox import RELAY_KEY, OutboxRelay
from shared.settings import Settings
from shared.topology import WorkQueue

log = get_logger("RUNTIME")

SCRAPE_TIMEOUT_SECONDS = 2.0
FLUSH_TIMEOUT_SECONDS = 3.0
# A pooled connection idle longer than this is checked (a round trip) before it is handed out.
IDLE_PING_SECONDS = 1.0
_IDLE_SINCE = "reelflow.idle_since"


def service_engine(settings: Settings, *, pool_size: int = 10) -> AsyncEngine:
    """`shared.db.engine.make_engine`'s engine, but liveness is checked only on connections
    that sat idle in the pool (`IDLE_PING_SECONDS`), not on every checkout: SQLAlchemy's
    `pool_pre_ping` costs three round trips (BEGIN, `;`, ROLLBACK) before every transaction,
    a third of a short transaction's. A connection back in the pool a moment ago is alive (or
    fails like any connection dropped mid-use: the error invalidates the whole pool, and the
    caller's retry gets a fresh one); one idle across a database restart is replaced."""
    engine = create_async_engine(settings.asyncpg_dsn, pool_size=pool_size, max_overflow=pool_size)
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def _checked_in(_dbapi: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _checked_out(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # new, or busy a moment ago
        try:
            dbapi.ping()
        except Exception as exc:  # the pool replaces it and tries the next one
            raise DisconnectionError(str(exc)) from exc

    return engine


@dataclass
class ServiceRuntime:
    name: str
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    relay: OutboxRelay
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: ServiceMetrics | None = None

    @classmethod
    def build(cls, name: str, settings: Settings, *, pool_size: int = 10) -> ServiceRuntime:
        """Tracing for the process (`shared.telemetry`), and the service's engine, sessions,
        relay and metrics registry."""
        telemetry.setup_telemetry(name, settings)
        registry = CollectorRegistry()
        metrics = ServiceMetrics(registry)
        install_commit_hook()
        engine = service_engine(settings, pool_size=pool_size)
        info: dict[str, Any] = {INFO_KEY: metrics}
        sessions = make_sessionmaker(engine, info=info)
        relay = OutboxRelay(sessions, settings.amqp_url, dsn(settings), metrics=metrics)
        # Every session of the service hands the outbox rows it commits to the relay, which
        # publishes them at once (`shared.outbox`): no producer has to remember `wake()`.
        info[RELAY_KEY] = relay
        return cls(name, settings, engine, sessions, relay, registry, metrics)

    async def start(self) -> None:
        await self.relay.start()

    async def close(self) -> None:
        await self.relay.stop()
        await self.engine.dispose()
        # Spans still buffered go out now; an unreachable collector holds us no longer than this
        # (the exporter's own retries, bounded by OTEL_EXPORTER_OTLP_TIMEOUT, go on in its thread).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(telemetry.flush), FLUSH_TIMEOUT_SECONDS)

    async def refresh_metrics(self, channel: Any | None, queues: list[WorkQueue]) -> None:
        """Gauges read at scrape: outbox lag, and the depth, consumers and DLQ of `queues`."""
        if self.metrics is None:
            return
        try:
            await asyncio.wait_for(
                self.metrics.refresh(self.engine, channel, [(q.name, q.dlq) for q in queues]),
                SCRAPE_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # the gauges keep their last values; /metrics still answers
            log.debug("Metrics refresh failed", error=str(exc)[:300])

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    async def database_ok(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False


@dataclass
class Subscription:
    queue: WorkQueue
    handler: Callable[..., Awaitable[None]]


class ConsumerService:
    """A process that consumes work queues and relays its outbox: `subscriptions` through
    FastStream, `direct` ones with aio-pika itself (`shared.consumer.QueueConsumer`, for hot
    queues: FastStream's per-message machinery was ~10 % of the orchestrator's CPU)."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        subscriptions: list[Subscription],
        *,
        prefetch: int = 10,
        health_port: int | None = None,
        direct: Sequence[Subscription] = (),
    ) -> None:
        self.runtime = runtime
        # Every queue served, whoever consumes it: readiness, the queue gauges, the start line.
        self.subscriptions = [*subscriptions, *direct]
        self.consumers = [
            QueueConsumer(sub.queue.name, sub.handler, prefetch=prefetch, metrics=runtime.metrics)
            for sub in direct
        ]
        self._amqp: aio_pika.abc.AbstractRobustConnection | None = None
        self.health_port = health_port
        self.broker = RabbitBroker(
            runtime.settings.amqp_url,
            default_channel=Channel(prefetch_count=prefetch),
            logger=None,
            graceful_timeout=runtime.settings.shutdown_grace_seconds,
            # Every handler takes the message itself (`traced`), handed over as it is by the
            # decoder below: no dependency injection per message (FastDepends resolved the
            # `RabbitMessage` annotation through a thread-pool hop on every delivery).
            apply_types=False,
        )
        for sub in subscriptions:
            queue = RabbitQueue(
                sub.queue.name, queue_type=QueueType.QUORUM, durable=True, declare=False
            )
            # Nack (requeue) on an unexpected error; the quorum delivery limit dead-letters.
            handler = traced(sub.queue.name, sub.handler, runtime.metrics)
            self.broker.subscriber(queue, ack_policy=AckPolicy.NACK_ON_ERROR, decoder=_the_message)(
                handler
            )
        self._server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._probe: aio_pika.abc.AbstractRobustConnection | None = None

    async def start(self) -> None:
        await self.runtime.start()  # declares the topology before subscribers attach
        await self.broker.start()
        if self.consumers:
            self._amqp = await aio_pika.connect_robust(self.runtime.settings.amqp_url)
            for consumer in self.consumers:
                await consumer.start(self._amqp)
        self._probe = await aio_pika.connect_robust(self.runtime.settings.amqp_url)
        if self.health_port is not None:
            config = uvicorn.Config(
                health_app(self.ready, self.metrics_text),
                host=self.runtime.settings.metrics_host,
                port=self.health_port,
                log_level="warning",
                lifespan="off",
                # A probe still waiting on an unreachable broker must not hold the shutdown.
                timeout_graceful_shutdown=5,
            )
            self._server = uvicorn.Server(config)
            self._server_task = asyncio.create_task(self._server.serve())
        log.info(
            "Service started",
            service=self.runtime.name,
            queues=[s.queue.name for s in self.subscriptions],
        )

    async def stop_consuming(self) -> None:
        """Take no more messages from the `direct` queues and let those taken finish (within
        SHUTDOWN_GRACE_SECONDS; what is still unacked then goes back to its queue). `stop`
        does it first; a service that must wind down more before the rest stops calls it
        itself, then `stop`."""
        for consumer in self.consumers:
            await consumer.cancel()
        for consumer in self.consumers:
            await consumer.drain(within=self.runtime.settings.shutdown_grace_seconds)
        for consumer in self.consumers:
            await consumer.close()
        if self._amqp is not None:
            await self._amqp.close()
            self._amqp = None

    async def stop(self) -> None:
        await self.stop_consuming()
        if self._server:
            self._server.should_exit = True
            if self._server_task:
                with contextlib.suppress(Exception):
                    await self._server_task
        await self.broker.stop()
        if self._probe:
            await self._probe.close()
        await self.runtime.close()
        log.info("Service stopped", service=self.runtime.name)

    async def ready(self) -> dict[str, Any]:
        """Database and broker reachable, and a consumer on every queue we serve."""
        checks: dict[str, Any] = {
            "database": await self.runtime.database_ok(),
            "outbox_relay": self.runtime.relay.healthy,
        }
        consumers: dict[str, bool] = {}
        try:
            assert self._probe is not None
            channel = await self._probe.channel()
            async with channel:
                for sub in self.subscriptions:
                    q = await channel.declare_queue(sub.queue.name, passive=True)
                    consumers[sub.queue.name] = bool(q.declaration_result.consumer_count)
            checks["broker"] = True
        except Exception:
            checks["broker"] = False
        checks["consumers"] = consumers
        checks["ok"] = bool(
            checks["database"]
            and checks["broker"]
            and checks["outbox_relay"]
            and all(consumers.values())
        )
        return checks

    async def metrics_text(self) -> bytes:
        """The exposition, with the scrape-time gauges read first."""
        channel = None
        try:
            if self._probe is not None:
                channel = await asyncio.wait_for(self._probe.channel(), SCRAPE_TIMEOUT_SECONDS)
            await self.runtime.refresh_metrics(channel, [s.queue for s in self.subscriptions])
        except Exception as exc:  # the broker is away: the gauges keep their last values
            log.debug("Metrics refresh failed", error=str(exc)[:300])
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
        return self.runtime.metrics_text()

    async def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop taking work, let in-flight handlers finish
        (FastStream waits up to SHUTDOWN_GRACE_SECONDS; what is still unacked then goes back to
        the queue for another consumer) and exit."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await self.start()
        heap.settle()
        try:
            await stopping.wait()
            log.info("Shutdown requested", service=self.runtime.name)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()


async def _the_message(message: Any) -> Any:
    """The decoder of every subscription: the handler gets the message, not a decoded body."""
    return message


def health_app(
    ready: Callable[[], Awaitable[dict[str, Any]]], exposition: Callable[[], Awaitable[bytes]]
) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = await ready()
        return JSONResponse(checks, status_code=200 if checks["ok"] else 503)

    async def metrics(_: Request) -> Response:
        return Response(await exposition(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )
