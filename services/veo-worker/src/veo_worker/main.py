"""Wiring: settings in, a ConsumerService out (nothing happens at import time).

At most `WORKER_CONCURRENCY` renders run at once: that is the consumer's prefetch, and each
delivery is handled concurrently until acked.
"""

from __future__ import annotations

from prometheus_client import Counter
from shared.runtime import ConsumerService, ServiceRuntime, Subscription
from shared.settings import Settings
from shared.topology import WORKER_RENDER

from veo_worker.handlers import RenderHandler
from veo_worker.jobs import JobStore
from veo_worker.providers import build_provider
from veo_worker.runner import RenderRunner


def build(settings: Settings) -> ConsumerService:
    provider = build_provider(settings)
    concurrency = settings.worker_concurrency
    # Per render: one connection holds the job's advisory lock, one runs the short steps.
    runtime = ServiceRuntime.build("worker", settings, pool_size=2 * concurrency + 2)
    jobs = JobStore(runtime.engine, runtime.sessions, runtime.relay, provider.name)
    renders = Counter(
        "reelflow_worker_renders",
        "Render commands handled, by outcome",
        ["outcome"],
        registry=runtime.registry,
    )
    runner = RenderRunner(settings, jobs, provider, renders)
    return ConsumerService(
        runtime,
        [Subscription(WORKER_RENDER, RenderHandler(runner))],
        prefetch=concurrency,
        health_port=settings.metrics_port_worker,
    )


async def serve(settings: Settings) -> None:
    await build(settings).run_forever()
