"""Wiring: settings in, a `WorkerService` out (nothing happens at import time).

The consumer records render commands as jobs; the scheduler (`scheduler.py`) works them. One
provider per process (`VIDEO_PROVIDER`): at most `VEO_MAX_IN_FLIGHT` Veo operations are waited
on at once, or `WORKER_CONCURRENCY` local renders.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

from prometheus_client import Counter, Gauge
from shared.consumer import PlainIdempotentConsumer
from shared.media import Storage, build_storage
from shared.messages import RenderRequested
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import WORKER_RENDER

from veo_worker.flows import Flow, LocalFlow, VeoFlow
from veo_worker.handlers import RenderCommands
from veo_worker.jobs import QUEUED, RUNNING, JobStore
from veo_worker.observe import ProviderMetrics
from veo_worker.providers import build_provider
from veo_worker.providers.veo import VeoProvider, submit_slots
from veo_worker.scheduler import Scheduler
from veo_worker.steps import Finisher

PREFETCH = 20  # recording a job is one short transaction (one statement)


class StorageHolder:
    """The process's one storage client, built on first use and closed at shutdown."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime
        self._storage: Storage | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Storage:
        async with self._lock:
            if self._storage is None:
                async with self.runtime.sessions() as session:
                    self._storage = await build_storage(session, self.runtime.settings)
            return self._storage

    async def close(self) -> None:
        close = getattr(self._storage, "close", None)
        if close is not None:
            await close()
        self._storage = None


class WorkerService(ConsumerService):
    """The shared runtime (outbox relay, topology, health and metrics server), the render
    commands consumed with aio-pika directly (`shared.consumer.QueueConsumer`, each recorded
    by a `PlainIdempotentConsumer` on the job store's plain asyncpg pool), and the scheduler
    that works the jobs (on that pool too)."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        commands: RenderCommands,
        scheduler: Scheduler,
        storage: StorageHolder,
        provider: Any,
        health_port: int | None,
    ) -> None:
        store = scheduler.store
        # The inbox consumer name is the queue's name.
        self.recorder = PlainIdempotentConsumer(
            WORKER_RENDER.name,
            RenderRequested,
            commands,
            lambda: store.pool,
            runtime.relay,
            runtime.metrics,
        )
        super().__init__(
            runtime,
            [],
            prefetch=PREFETCH,
            health_port=health_port,
            direct=[Subscription(WORKER_RENDER, self.recorder)],
        )
        self.commands = commands
        self.scheduler = scheduler
        self.storage = storage
        self.provider = provider

    async def start(self) -> None:
        await self.scheduler.store.open(self.runtime.settings)
        await super().start()  # the topology is declared before the consumer attaches
        await self.scheduler.start()

    async def stop(self) -> None:
        """Take no more commands, let those taken be recorded (within SHUTDOWN_GRACE_SECONDS;
        what is still unacked then goes back to the queue), hand the jobs held back, then stop
        the rest."""
        try:
            await self.stop_consuming()
            await self.scheduler.stop()  # hands jobs back while the database is still open
        finally:
            await super().stop()
            await self.scheduler.store.close()
            await self.storage.close()
            if isinstance(self.provider, VeoProvider):
                await self.provider.aclose()

    async def ready(self) -> dict[str, Any]:
        checks = await super().ready()
        checks["scheduler"] = self.scheduler.healthy and self.scheduler.last_claim_ok
        checks["ok"] = bool(checks["ok"] and checks["scheduler"])
        return checks


def build(settings: Settings) -> WorkerService:
    provider = build_provider(settings)
    # SQLAlchemy's engine is left the storage's set-up, the readiness probe and the outbox
    # relay's safety net: every statement per command or job runs on the store's plain pool.
    runtime = ServiceRuntime.build("worker", settings, pool_size=4)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    # Connections: 8 job-step statements and up to `submit_slots` operation names at once,
    # the claims, heartbeat and outbox relay, and a command being recorded per prefetched one.
    store = JobStore(
        runtime.relay,
        provider.name,
        owner=owner,
        lease_seconds=settings.worker_lease_seconds,
        record_slots=submit_slots(settings),
        command_slots=PREFETCH,
    )
    runtime.relay.use_pool(lambda: store.pool)  # marks published rows on it too
    storage = StorageHolder(runtime)
    finisher = Finisher(storage.get, cpu_slots=settings.worker_concurrency)
    metrics = ProviderMetrics(runtime.registry)
    flow: Flow
    if isinstance(provider, VeoProvider):
        provider.client.metrics = metrics
        flow = VeoFlow(
            settings,
            store,
            provider.client,
            finisher,
            requests=asyncio.Semaphore(settings.veo_max_concurrent_requests),
            submits=asyncio.Semaphore(submit_slots(settings)),
            downloads=asyncio.Semaphore(4 * settings.worker_concurrency),
        )
        capacity, per_minute, claim_status = (
            settings.veo_max_in_flight,
            settings.veo_submissions_per_minute,
            QUEUED,  # marked `submitting` by the flow, just before it sends
        )
    else:
        flow = LocalFlow(provider, finisher, store, metrics)
        capacity, per_minute, claim_status = settings.worker_concurrency, None, RUNNING
    renders = Counter(
        "reelflow_worker_renders",
        "Render jobs ended (or handed on), by outcome",
        ["outcome"],
        registry=runtime.registry,
    )
    recorded = Counter(
        "reelflow_worker_commands",
        "Render commands recorded, by outcome",
        ["outcome"],
        registry=runtime.registry,
    )
    scheduler = Scheduler(
        store,
        flow,
        capacity=capacity,
        per_minute=per_minute,
        claim_status=claim_status,
        lease_seconds=settings.worker_lease_seconds,
        metric=renders,
    )
    in_flight = Gauge(
        "reelflow_worker_jobs_in_flight", "Jobs this process holds", registry=runtime.registry
    )
    in_flight.set_function(lambda: len(scheduler.held))
    commands = RenderCommands(store, provider, recorded, queued=scheduler.wake)
    return WorkerService(
        runtime, commands, scheduler, storage, provider, settings.metrics_port_worker
    )


async def serve(settings: Settings) -> None:
    await build(settings).run_forever()
